// CPU instruction-set levels: what the build compiled, what this CPU runs,
// and which one kernels dispatch to (KERNKIT_CPU_ISA may force a lower one).
#pragma once
#include <string>
#include <vector>

namespace kernkit {

enum class CpuIsa : int { scalar = 0, avx2 = 1, avx512 = 2 };

const char* isa_name(CpuIsa isa);
std::vector<std::string> compiled_isas();   // levels built into this binary
CpuIsa best_supported_isa();                // best level both compiled and run by this CPU
CpuIsa active_isa();                        // level kernels use now
// Selects a level by name; throws std::invalid_argument for an unknown name
// and std::runtime_error for a level this CPU or build cannot run.
void set_active_isa(const std::string& name);

}  // namespace kernkit

// Per-ISA kernels live in namespaces kernkit::isa_scalar / isa_avx2 / isa_avx512;
// each kernel source is compiled once per level with KK_ISA_NS set to one of them.
#if defined(__x86_64__) || defined(_M_X64)
#define KK_X86 1
#define KK_DECLARE_CPU_KERNEL(ret, name, params)           \
  namespace kernkit { namespace isa_scalar { ret name params; } \
  namespace isa_avx2 { ret name params; }                     \
  namespace isa_avx512 { ret name params; } }
#define KK_CPU_KERNEL(name)                                                        \
  (::kernkit::active_isa() == ::kernkit::CpuIsa::avx512 ? &::kernkit::isa_avx512::name \
   : ::kernkit::active_isa() == ::kernkit::CpuIsa::avx2 ? &::kernkit::isa_avx2::name   \
                                                        : &::kernkit::isa_scalar::name)
#else
#define KK_DECLARE_CPU_KERNEL(ret, name, params) \
  namespace kernkit { namespace isa_scalar { ret name params; } }
#define KK_CPU_KERNEL(name) (&::kernkit::isa_scalar::name)
#endif
