// BitNet b1.58 quantisers in one or two passes over memory, for BitLinear
// training steps (where torch's chain of abs/mean/div/round/clamp/pack or
// amax/mul/round/clamp/div ops costs as much as the int8 GEMM itself) and for
// ternary_quantize. Every float operation is the reference's, in its order
// (true divisions, round half to even), so codes and dequantised values match
// it exactly given the same scale; the absmean scale is summed in fp64.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "common/parallel.h"
#include "common/vec.h"
#include "lowbit/cpu/quant.h"
#include "lowbit/lowbit.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

// sum |w| of one row, accumulated in fp64 (the reference's mean is an fp64 mean
// rounded once to fp32; fp32 partial sums would drift from it in the last bits).
double abs_sum(const float* w, int64_t K) {
  int64_t k = 0;
  double total = 0;
#if defined(KK_ISA_AVX512)
  __m512d a0 = _mm512_setzero_pd(), a1 = _mm512_setzero_pd();
  for (; k + 16 <= K; k += 16) {
    const __m512 v = _mm512_abs_ps(_mm512_loadu_ps(w + k));
    a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  }
  total = _mm512_reduce_add_pd(_mm512_add_pd(a0, a1));
#elif defined(KK_ISA_AVX2)
  const __m256 sign = _mm256_set1_ps(-0.f);
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();
  for (; k + 8 <= K; k += 8) {
    const __m256 v = _mm256_andnot_ps(sign, _mm256_loadu_ps(w + k));
    a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  alignas(32) double l[4];
  _mm256_store_pd(l, _mm256_add_pd(a0, a1));
  total = (l[0] + l[1]) + (l[2] + l[3]);
#endif
  for (; k < K; ++k) total += std::fabs(double(w[k]));
  return total;
}

// v[0..n) <- clamp(round(v / d), lo, hi), round half to even.
void round_clamp_div(float* v, int64_t n, float d, float lo, float hi) {
  int64_t i = 0;
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  const Vec vd = Vec::set1(d), vlo = Vec::set1(lo), vhi = Vec::set1(hi);
  for (; i + Vec::size <= n; i += Vec::size) min(max(Vec::round(Vec::load(v + i) / vd), vlo), vhi).store(v + i);
#endif
  for (; i < n; ++i) v[i] = std::min(hi, std::max(lo, std::nearbyint(v[i] / d)));
}

template <typename T>
bool ternary_quantize_t(const TernaryQuantParams& p) {
  const int64_t wbytes = p.Kp / 4;
  Buf<double> sums(size_t(p.N));
  parallel_for(p.N, p.threads, 16, [&](int64_t n0, int64_t n1) {
    Buf<float> row(size_t(p.K) + 64);
    for (int64_t n = n0; n < n1; ++n) {
      widen(row.p, static_cast<const T*>(p.w) + n * p.w_rs, p.K);
      sums[n] = abs_sum(row.p, p.K);
    }
  });
  double total = 0;  // in row order: deterministic
  for (int64_t n = 0; n < p.N; ++n) total += sums[n];
  if (!std::isfinite(total)) return false;
  if (p.per_row)
    for (int64_t n = 0; n < p.N; ++n) p.scale[n] = std::max(float(sums[n] / double(p.K)), 1e-5f);
  else
    p.scale[0] = std::max(float(total / (double(p.N) * double(p.K))), 1e-5f);

  parallel_for(p.N, p.threads, 16, [&](int64_t n0, int64_t n1) {
    Buf<float> q(size_t(p.Kp) + 64);
    for (int64_t n = n0; n < n1; ++n) {
      widen(q.p, static_cast<const T*>(p.w) + n * p.w_rs, p.K);
      round_clamp_div(q.p, p.K, p.scale[p.per_row ? n : 0], -1.f, 1.f);
      std::fill(q.p + p.K, q.p + p.Kp, 0.f);  // padding: w = 0
      uint8_t* out = p.packed + n * wbytes;
      for (int64_t b = 0; b < p.Kp / 128; ++b) {
        const float* c = q.p + b * 128;
        for (int j = 0; j < 32; ++j)
          out[b * 32 + j] = uint8_t(int(c[j] + 1.f) | int(c[32 + j] + 1.f) << 2 | int(c[64 + j] + 1.f) << 4 |
                                    int(c[96 + j] + 1.f) << 6);
      }
    }
  });
  return true;
}

template <typename T>
void act_quant_dequant_t(const ActDequantParams& p) {
  parallel_for(p.M, p.threads, 4, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) {
      float* out = p.out + m * p.K;
      widen(out, static_cast<const T*>(p.x) + m * p.x_rs, p.K);
      const float s = act_scale(out, p.K);
      // x_q = clamp(round(x * s), -128, 127), then x_q / s (a true division, as the reference)
      int64_t k = 0;
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
      const Vec vs = Vec::set1(s), lo = Vec::set1(-128.f), hi = Vec::set1(127.f);
      for (; k + Vec::size <= p.K; k += Vec::size)
        (min(max(Vec::round(Vec::load(out + k) * vs), lo), hi) / vs).store(out + k);
#endif
      for (; k < p.K; ++k) out[k] = std::min(127.f, std::max(-128.f, std::nearbyint(out[k] * s))) / s;
    }
  });
}

}  // namespace

bool ternary_quantize_cpu(const TernaryQuantParams& p) {
  switch (p.dtype) {
    case DType::f32: return ternary_quantize_t<float>(p);
    case DType::bf16: return ternary_quantize_t<bf16_t>(p);
    case DType::f16: return ternary_quantize_t<f16_t>(p);
    default: throw std::invalid_argument("ternary_quantize: w must be float32, bfloat16 or float16");
  }
}

void ternary_dequant_cpu(const TernaryDequantParams& p) {
  const int64_t wbytes = p.Kp / 4;
  parallel_for(p.N, p.threads, 16, [&](int64_t n0, int64_t n1) {
    Buf<float> row(size_t(p.Kp));
    for (int64_t n = n0; n < n1; ++n) {
      expand_ternary(p.packed + n * wbytes, p.Kp, row.p);
      const float s = p.scale[p.per_row ? n : 0];
      float* out = p.out + n * p.K;
      for (int64_t k = 0; k < p.K; ++k) out[k] = row[k] * s;
    }
  });
}

void act_quant_dequant_cpu(const ActDequantParams& p) {
  switch (p.dtype) {
    case DType::f32: return act_quant_dequant_t<float>(p);
    case DType::bf16: return act_quant_dequant_t<bf16_t>(p);
    case DType::f16: return act_quant_dequant_t<f16_t>(p);
    default: throw std::invalid_argument("act_quant_dequant: x must be float32, bfloat16 or float16");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
