// RMSNorm over the last dimension: y = x / sqrt(mean(x^2) + eps) * w.
// Plain parameter structs filled by module.cpp from raw pointers; the CPU and
// CUDA kernels read nothing else.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

struct RmsNormFwdParams {
  const void* x;   // (rows, dim), dtype
  const void* w;   // (dim,), wdtype, or null for no weight
  void* y;         // (rows, dim), dtype
  void* rstd;      // (rows,) saved for backward: fp64 for fp64 inputs, else fp32
  int64_t rows, dim;
  float eps;
  DType dtype, wdtype;
  int threads;     // CPU only
};

struct RmsNormBwdParams {
  const void* dy;       // (rows, dim), dtype
  const void* x;        // (rows, dim), dtype
  const void* w;        // (dim,), wdtype, or null
  const void* rstd;     // (rows,) from the forward
  void* dx;             // (rows, dim), dtype
  void* dw;             // (dim,), wdtype, or null when no weight gradient is wanted
  void* dw_partial;     // (rms_norm_dw_blocks(rows), dim) workspace when dw is set:
                        // fp64 for fp64 inputs, else fp32
  int64_t rows, dim;
  DType dtype, wdtype;
  int threads;          // CPU only
};

// fp64 inputs accumulate (and save rstd) in fp64, everything else in fp32.
// The weight gradient is summed over rows in this many fixed row blocks, then
// over blocks in order: the result does not depend on the thread count.
inline int64_t rms_norm_dw_blocks(int64_t rows) {
  const int64_t b = (rows + 31) / 32;
  return b < 1 ? 1 : (b > 256 ? 256 : b);
}

void rms_norm_fwd_cuda(const RmsNormFwdParams& p, int device, intptr_t stream);
void rms_norm_bwd_cuda(const RmsNormBwdParams& p, int device, intptr_t stream);

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, rms_norm_fwd_cpu, (const ::kernkit::RmsNormFwdParams&))
KK_DECLARE_CPU_KERNEL(void, rms_norm_bwd_cpu, (const ::kernkit::RmsNormBwdParams&))
