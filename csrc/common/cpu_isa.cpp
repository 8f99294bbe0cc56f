#include "cpu_isa.h"

#include <atomic>
#include <stdexcept>

namespace kernkit {

const char* isa_name(CpuIsa isa) {
  switch (isa) {
    case CpuIsa::avx512: return "avx512";
    case CpuIsa::avx2: return "avx2";
    default: return "scalar";
  }
}

std::vector<std::string> compiled_isas() {
#if KK_X86
  return {"scalar", "avx2", "avx512"};
#else
  return {"scalar"};
#endif
}

CpuIsa best_supported_isa() {
#if KK_X86
  __builtin_cpu_init();
  // The avx512 objects are compiled for F/BW/VL/DQ plus BF16, VNNI and VPOPCNTDQ;
  // all must be present (Cooper Lake has BF16 and VNNI but no VPOPCNTDQ: avx2 there).
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
      __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") &&
      __builtin_cpu_supports("avx512vpopcntdq"))
    return CpuIsa::avx512;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
      __builtin_cpu_supports("f16c"))
    return CpuIsa::avx2;
#endif
  return CpuIsa::scalar;
}

static std::atomic<int>& active_level() {
  static std::atomic<int> level{int(best_supported_isa())};
  return level;
}

CpuIsa active_isa() { return CpuIsa(active_level().load(std::memory_order_relaxed)); }

void set_active_isa(const std::string& name) {
  CpuIsa wanted;
  if (name == "scalar") wanted = CpuIsa::scalar;
  else if (name == "avx2") wanted = CpuIsa::avx2;
  else if (name == "avx512") wanted = CpuIsa::avx512;
  else
    throw std::invalid_argument("KERNKIT_CPU_ISA: unknown ISA level '" + name +
                                "'; expected one of scalar, avx2, avx512");
  const CpuIsa best = best_supported_isa();
  if (int(wanted) > int(best))
    throw std::runtime_error("KERNKIT_CPU_ISA: level '" + name +
                             "' is not supported here (this CPU and build support up to '" +
                             isa_name(best) + "')");
  active_level().store(int(wanted));
}

}  // namespace kernkit
