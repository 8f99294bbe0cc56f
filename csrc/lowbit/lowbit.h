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

// BitNet absmean ternary quantisation + packing of w (N, K): scale = mean|w| per
// tensor (1 entry) or per row (N), clamped below at 1e-5; codes round(w / scale)
// clamped to [-1, 1]. The kernel returns false (and writes nothing) if w holds
// NaN or inf.
struct TernaryQuantParams {
  const void* w;  // rows with stride w_rs, last dim contiguous
  int64_t w_rs;
  uint8_t* packed;  // (N, Kp / 4)
  float* scale;
  bool per_row;
  int64_t N, K, Kp;
  DType dtype;
  int threads;
};

// out (N, K) fp32 = (code - 1) * scale: the packed weights as a dense matrix.
struct TernaryDequantParams {
  const uint8_t* packed;
  const float* scale;
  bool per_row;
  float* out;
  int64_t N, K, Kp;
  int threads;
};

// out (M, K) fp32 = x_q / s with s = 127 / max|x| per row and x_q = clamp(round(x * s)):
// the activations the int8 kernel multiplies, dequantised (BitLinear's dW operand).
struct ActDequantParams {
  const void* x;  // rows with stride x_rs, last dim contiguous
  int64_t x_rs;
  float* out;
  int64_t M, K;
  DType dtype;
  int threads;
};

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(bool, ternary_quantize_cpu, (const ::kernkit::TernaryQuantParams&))
KK_DECLARE_CPU_KERNEL(void, ternary_dequant_cpu, (const ::kernkit::TernaryDequantParams&))
KK_DECLARE_CPU_KERNEL(void, act_quant_dequant_cpu, (const ::kernkit::ActDequantParams&))
KK_DECLARE_CPU_KERNEL(void, ternary_linear_cpu, (const ::kernkit::LowbitParams&))
KK_DECLARE_CPU_KERNEL(void, binary_linear_cpu, (const ::kernkit::LowbitParams&))
