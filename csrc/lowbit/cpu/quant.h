// Pieces shared by the low-bit matmuls (lowbit.cpp) and the quantisers for
// BitLinear training (quantize.cpp). Per-ISA: its definitions land in
// kernkit::KK_ISA_NS, like those of the sources that include it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/vec.h"
#include "lowbit/lowbit.h"

namespace kernkit {
namespace KK_ISA_NS {

inline float absmax(const float* x, int64_t n) {
  Vec m = Vec::zero();
  int64_t i = 0;
  for (; i + Vec::size <= n; i += Vec::size) m = max(m, abs(Vec::load(x + i)));
  alignas(64) float lanes[Vec::size];
  m.store(lanes);
  float r = 0.f;
  for (int j = 0; j < Vec::size; ++j) r = std::max(r, lanes[j]);
  for (; i < n; ++i) r = std::max(r, std::fabs(x[i]));
  return r;
}

// BitNet's per-token int8 scale s = 127 / max|x| (max clamped below at 1e-5), a true
// division as in the reference; x_q = clamp(round(x * s), -128, 127).
inline float act_scale(const float* x, int64_t n) { return 127.f / std::max(absmax(x, n), 1e-5f); }

// One activation row (widened to fp32) to int8 with scale s; the run of 32 weights from k0 goes to
// dst(k0) (runs of 32 stay contiguous in every kernel's arrangement). Returns sum(x_q).
template <typename Dst>
inline int64_t quantize_act_row(const float* xf, int64_t K, float s, Dst dst) {
  int64_t sum = 0;
  for (int64_t k0 = 0; k0 < K; k0 += 32) {
    const int64_t n = std::min<int64_t>(32, K - k0);
    int8_t* d = dst(k0);
    for (int64_t i = 0; i < n; ++i) {
      const float v = std::nearbyint(xf[k0 + i] * s);
      const int iv = int(std::min(127.f, std::max(-128.f, v)));
      d[i] = int8_t(iv);
      sum += iv;
    }
  }
  return sum;
}

// y[m, n] = v (+ bias[n]) in y's dtype.
template <typename T>
inline void store_out(const LowbitParams& p, int64_t m, int64_t n, float v) {
  if (p.bias) v += p.bias[n];
  static_cast<T*>(p.y)[m * p.N + n] = from_float<T>(v);
}

// Groups of 4 output rows per thread, at least: a second thread pays off from about
// 2^20 weight-activation products per thread (measured, M = 1, K = 2560: N = 512
// ran 0.8x slower on two threads than on one, N = 1024 1.2x faster), so smaller
// products run on the calling thread alone.
inline int64_t gemv_group_grain(const LowbitParams& p) {
  constexpr int64_t kMinProducts = int64_t(1) << 20;
  return std::max<int64_t>(1, kMinProducts / (4 * std::max<int64_t>(p.Kp, 1) * std::max<int64_t>(p.M, 1)));
}

// Expands one packed ternary row to fp32 {-1, 0, 1} (Kp entries).
inline void expand_ternary(const uint8_t* w, int64_t Kp, float* out) {
  for (int64_t q = 0; q < Kp / 128; ++q)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 32; ++j) out[q * 128 + 32 * i + j] = float(int((w[q * 32 + j] >> (2 * i)) & 3) - 1);
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
