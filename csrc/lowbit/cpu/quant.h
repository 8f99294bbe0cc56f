// Pieces shared by the low-bit matmuls (lowbit.cpp) and the quantisers for
// BitLinear training (quantize.cpp). Per-ISA: its definitions land in
// kernkit::KK_ISA_NS, like those of the sources that include it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>

#include "common/vec.h"

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

// Expands one packed ternary row to fp32 {-1, 0, 1} (Kp entries).
inline void expand_ternary(const uint8_t* w, int64_t Kp, float* out) {
  for (int64_t q = 0; q < Kp / 128; ++q)
    for (int i = 0; i < 4; ++i)
      for (int j = 0; j < 32; ++j) out[q * 128 + 32 * i + j] = float(int((w[q * 32 + j] >> (2 * i)) & 3) - 1);
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
