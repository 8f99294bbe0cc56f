// Pieces shared by the low-bit matmuls (lowbit.cpp) and the quantisers for
// BitLinear training (quantize.cpp). Per-ISA: its definitions land in
// kernkit::KK_ISA_NS, like those of the sources that include it.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/parallel.h"
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

// GEMV: one prefetch stream through the tile's rows as if they were one row (they are adjacent in
// memory), a line per 64 bytes consumed. Per-row streams 1 KiB ahead reached 13-16 GB/s from memory
// (avx2 and avx512, 6912 x 2560 and 2560 x 6912), this ~20-32 (2 threads; read bandwidth ~30-33).
// T1/NTA hints, two distances or 2-row tiles on avx512 were no better.
// The tile reads its NB rows in step (row b at b * row_bytes + pos), so the stream runs NB - 1 rows
// plus 4 KiB ahead: with only 4 KiB, a long row's last row of the tile was read before the stream
// reached it (K 6912: ~16 GB/s cold, 25-28 with the row offset; K 2560 unchanged).
constexpr int64_t kLinearPrefetch = 4096;
inline int64_t gemv_prefetch_distance(int nb, int64_t row_bytes) { return kLinearPrefetch + (nb - 1) * row_bytes; }

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

// Per-token int8 activations of the integer kernels: x_q (M rows of Kx, laid out by the kernel's
// `at(k)`, zeros elsewhere), s = 127 / max|x| and sum(x_q) per row.
struct QuantRows {
  Buf<int8_t> q;
  Buf<float> s;
  Buf<int64_t> sum;
  int64_t Kx;
  QuantRows(int64_t M, int64_t Kx_) : q(size_t(M * Kx_)), s(size_t(M)), sum(size_t(M)), Kx(Kx_) {}
};

template <typename T, typename At>
void quantize_rows(const LowbitParams& p, QuantRows& qr, At at) {
  parallel_for(p.M, p.threads, 4, [&](int64_t m0, int64_t m1) {
    Buf<float> xf(size_t(p.K) + 64);
    for (int64_t m = m0; m < m1; ++m) {
      widen(xf.p, static_cast<const T*>(p.x) + m * p.x_rs, p.K);
      const float s = act_scale(xf.p, p.K);
      int8_t* q = qr.q.p + m * qr.Kx;
      std::memset(q, 0, size_t(qr.Kx));
      qr.s[m] = s;
      qr.sum[m] = quantize_act_row(xf.p, p.K, s, [&](int64_t k0) { return q + at(k0); });
    }
  });
}

// y[m0 + a, n0 + b] = (acc[a][b] - sum(x_q)) / s * scale (+ bias): the integer kernels' rescale
// (codes are w + 1), one formula for every packing so their outputs agree bit for bit.
template <int MB, int NB, typename T>
inline void store_int_dots(const LowbitParams& p, const QuantRows& qr, const int64_t (&acc)[MB][NB], int64_t m0,
                           int64_t n0) {
#if defined(KK_ISA_AVX512)
  if constexpr (NB == 4) {  // the same float operations, in the same order, four outputs at a time
    const __m128 sw = p.per_row_scale ? _mm_loadu_ps(p.scale + n0) : _mm_set1_ps(p.scale[0]);
    for (int a = 0; a < MB; ++a) {
      const __m256i dot = _mm256_sub_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(acc[a])),
                                           _mm256_set1_epi64x(qr.sum[m0 + a]));
      __m128 v = _mm_mul_ps(_mm_div_ps(_mm256_cvtepi64_ps(dot), _mm_set1_ps(qr.s[m0 + a])), sw);
      if (p.bias) v = _mm_add_ps(v, _mm_loadu_ps(p.bias + n0));
      alignas(16) float f[4];
      _mm_store_ps(f, v);
      T* y = static_cast<T*>(p.y) + (m0 + a) * p.N + n0;
      for (int b = 0; b < 4; ++b) y[b] = from_float<T>(f[b]);
    }
    return;
  }
#endif
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) {
      const float sw = p.scale[p.per_row_scale ? n0 + b : 0];
      store_out<T>(p, m0 + a, n0 + b, float(acc[a][b] - qr.sum[m0 + a]) / qr.s[m0 + a] * sw);
    }
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
