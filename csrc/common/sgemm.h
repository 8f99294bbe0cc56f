// C (M x N, row stride ldc) = A (M x K) . B (K x N) in fp32; A and B with any
// element strides (a transposed operand is just swapped strides).
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"

namespace kernkit {

struct SgemmParams {
  const float* A;
  int64_t a_rs, a_cs;
  const float* B;
  int64_t b_rs, b_cs;
  float* C;
  int64_t ldc;
  int64_t M, N, K;
  int threads;
};

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, sgemm_cpu, (const ::kernkit::SgemmParams&))
