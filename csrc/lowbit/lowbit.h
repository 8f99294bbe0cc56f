// Ternary (BitNet b1.58) and binary weight matmuls, y = x W^T (+ bias), with
// packed weights. Formats (stable; documented in the README):
//   ternary: code = w + 1 in {0, 1, 2}, 2 bits; K padded to a multiple of 128 with
//            code 1; row n is K/128 blocks of 32 bytes; in a block, byte j bits
//            [2i, 2i+1] hold weight k = 128 * block + 32 * i + j.  (N, Kp / 4) uint8.
//   tq1.6:   code = w + 1, 5 per byte in base 3; K padded to a multiple of 320 with code 1;
//            row n is K/320 blocks of 64 bytes; byte j of a block holds
//            q = ceil(v * 256 / 243), v = sum_i c_i 3^(4-i), c_i the code of weight
//            k = 320 * block + 64 * i + j.  (N, Kp / 320, 64) uint8.
//   binary:  bit = 1 where w >= 0; K padded to a multiple of 64 with 0 bits; weight
//            k is bit k % 8 of byte k / 8 of its row.  (N, Kp / 8) uint8.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

constexpr int64_t kTernaryBlock = 128;  // weights per 32-byte block
constexpr int64_t kTernary16Block = 320;  // tq1.6: weights per 64-byte block
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
  void* work;             // CUDA only: lowbit_work_bytes(M, Kp) bytes of scratch on the kernels' device
};

// The CUDA kernels' per-call scratch (the caller allocates it on the device, so a call makes no
// allocation of its own): ternary int8: x_q (M, Kp) int8 zero-padded, s (M) fp32, sum x_q (M) int32;
// binary XNOR: sign bits of x (M, Kp / 32) uint32 and beta = mean|x| (M) fp32.
struct LowbitWork {
  int8_t* xq;
  float* s;
  int* xsum;
  uint32_t* xbits;
  float* beta;
};

inline int64_t lowbit_align16(int64_t b) { return (b + 15) / 16 * 16; }
inline int64_t lowbit_work_bytes(int64_t M, int64_t Kp) {
  return lowbit_align16(M * Kp) + 3 * lowbit_align16(4 * M) + lowbit_align16(M * (Kp / 8));
}
inline LowbitWork lowbit_work(void* base, int64_t M, int64_t Kp) {
  char* b = static_cast<char*>(base);
  LowbitWork w;
  w.xq = reinterpret_cast<int8_t*>(b);
  b += lowbit_align16(M * Kp);
  w.s = reinterpret_cast<float*>(b);
  b += lowbit_align16(4 * M);
  w.xsum = reinterpret_cast<int*>(b);
  b += lowbit_align16(4 * M);
  w.beta = reinterpret_cast<float*>(b);
  b += lowbit_align16(4 * M);
  w.xbits = reinterpret_cast<uint32_t*>(b);
  return w;
}

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
  double* row_sums;  // CUDA only: (N,) fp64 scratch on the device
  int* nonfinite;    // CUDA only: one int on the device, set to 1 when w holds NaN or inf
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

// CUDA kernels (csrc/lowbit/cuda/lowbit.cu): the same results as the CPU kernels, bit for bit on the
// integer paths. LowbitParams.work / TernaryQuantParams.row_sums and .nonfinite: device scratch.
void ternary_linear_cuda(const LowbitParams& p, int device, intptr_t stream);
void binary_linear_cuda(const LowbitParams& p, int device, intptr_t stream);
void ternary_quantize_cuda(const TernaryQuantParams& p, int device, intptr_t stream);
void ternary_dequant_cuda(const TernaryDequantParams& p, int device, intptr_t stream);
void act_quant_dequant_cuda(const ActDequantParams& p, int device, intptr_t stream);

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(bool, ternary_quantize_cpu, (const ::kernkit::TernaryQuantParams&))
KK_DECLARE_CPU_KERNEL(void, ternary_dequant_cpu, (const ::kernkit::TernaryDequantParams&))
KK_DECLARE_CPU_KERNEL(void, act_quant_dequant_cpu, (const ::kernkit::ActDequantParams&))
KK_DECLARE_CPU_KERNEL(void, ternary_linear_cpu, (const ::kernkit::LowbitParams&))
KK_DECLARE_CPU_KERNEL(void, ternary16_linear_cpu, (const ::kernkit::LowbitParams&))
KK_DECLARE_CPU_KERNEL(void, binary_linear_cpu, (const ::kernkit::LowbitParams&))
