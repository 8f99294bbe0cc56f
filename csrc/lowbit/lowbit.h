// Ternary (BitNet b1.58) and binary weight matmuls, y = x W^T (+ bias), with
// packed weights. Formats (stable; documented in the README):
//   ternary: code = w + 1 in {0, 1, 2}, 2 bits; K padded to a multiple of 128 with
//            code 1; row n is K/128 blocks of 32 bytes; in a block, byte j bits
//            [2i, 2i+1] hold weight k = 128 * block + 32 * i + j.  (N, Kp / 4) uint8.
//   binary:  bit = 1 where w >= 0; K padded to a multiple of 64 with 0 bits; weight
//            k is bit k % 8 of byte k / 8 of its row.  (N, Kp / 8) uint8.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

constexpr int64_t kTernaryBlock = 128;  // weights per 32-byte block
constexpr int64_t kBinaryBlock = 64;    // weights per 8-byte word

struct LowbitParams {
  const void* x;          // (M, K) rows with row stride x_rs, last dim contiguous
  int64_t x_rs;
  const uint8_t* packed;  // (N, Kp / 4) ternary or (N, Kp / 8) binary
  const float* scale;     // ternary: 1 or N entries; binary: alpha, N entries
  bool per_row_scale;
  const float* bias;      // (N,) or null
  void* y;                // (M, N) contiguous, x's dtype
  int64_t M, N, K, Kp;
  int act_bits;           // ternary: 8 (int8 activations) or 0 (float activations)
  bool binarize_input;    // binary: sign activations + XNOR/popcount, else float activations
  DType dtype;            // of x and y
  int threads;
};

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, ternary_linear_cpu, (const ::kernkit::LowbitParams&))
KK_DECLARE_CPU_KERNEL(void, binary_linear_cpu, (const ::kernkit::LowbitParams&))
