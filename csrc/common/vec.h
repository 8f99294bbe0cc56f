// Vec: a float vector whose width follows the ISA this translation unit is
// compiled for (16 lanes avx512, 8 avx2, 1 scalar), with loads/stores that
// convert from/to float, bf16 and fp16. Include only from per-ISA kernel
// sources (KK_ISA_NS defined); everything here lives in that ISA's namespace.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstdlib>

#include "dtype.h"

#if !defined(KK_ISA_NS)
#error "vec.h is for per-ISA kernel sources (KK_ISA_NS must be defined)"
#endif
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
#include <immintrin.h>
#endif

namespace kernkit {
namespace KK_ISA_NS {

#if defined(KK_ISA_AVX512)
struct Vec {
  static constexpr int size = 16;
  __m512 v;
  static Vec zero() { return {_mm512_setzero_ps()}; }
  static Vec set1(float x) { return {_mm512_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm512_loadu_ps(p)}; }
  static Vec load(const bf16_t* p) {
    __m512i w = _mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    return {_mm512_castsi512_ps(_mm512_slli_epi32(w, 16))};
  }
  static Vec load(const f16_t* p) {
    return {_mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)))};
  }
  void store(float* p) const { _mm512_storeu_ps(p, v); }
  void store(bf16_t* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), (__m256i)_mm512_cvtneps_pbh(v));
  }
  void store(f16_t* p) const {
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  float sum() const { return _mm512_reduce_add_ps(v); }
  friend Vec operator+(Vec a, Vec b) { return {_mm512_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm512_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm512_mul_ps(a.v, b.v)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm512_div_ps(a.v, b.v)}; }
  // 1/a to ~1 ulp: 14-bit estimate plus one Newton step (cheaper than a divide).
  friend Vec recip(Vec a) {
    const __m512 r = _mm512_rcp14_ps(a.v);
    return {_mm512_mul_ps(r, _mm512_fnmadd_ps(a.v, r, _mm512_set1_ps(2.f)))};
  }
  friend Vec max(Vec a, Vec b) { return {_mm512_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm512_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm512_abs_ps(a.v)}; }
  // Lanes where test < limit take `below`, the others `a`.
  friend Vec select_below(Vec test, float limit, Vec below, Vec a) {
    return {_mm512_mask_mov_ps(a.v, _mm512_cmp_ps_mask(test.v, _mm512_set1_ps(limit), _CMP_LT_OQ), below.v)};
  }
  // Lanes l with base + l outside [lo, hi] become `fill`.
  friend Vec keep_range(Vec a, int base, int lo, int hi, float fill) {
    const __m512i idx = _mm512_add_epi32(_mm512_set1_epi32(base),
                                         _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
    const __mmask16 in = _mm512_cmpge_epi32_mask(idx, _mm512_set1_epi32(lo)) &
                         _mm512_cmple_epi32_mask(idx, _mm512_set1_epi32(hi));
    return {_mm512_mask_mov_ps(_mm512_set1_ps(fill), in, a.v)};
  }
  static Vec round(Vec a) { return {_mm512_roundscale_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  // the float whose bit pattern is a's shifted left by 23 (its low mantissa bits become the exponent)
  static Vec shl23(Vec a) { return {_mm512_castsi512_ps(_mm512_slli_epi32(_mm512_castps_si512(a.v), 23))}; }
  // x = m * 2^e with m in [1, 2), for finite x > 0
  static void frexp1(Vec x, Vec& m, Vec& e) {
    m = {_mm512_getmant_ps(x.v, _MM_MANT_NORM_1_2, _MM_MANT_SIGN_src)};
    e = {_mm512_getexp_ps(x.v)};
  }
  friend Vec select_gt(Vec test, Vec limit, Vec above, Vec a) {
    return {_mm512_mask_mov_ps(a.v, _mm512_cmp_ps_mask(test.v, limit.v, _CMP_GT_OQ), above.v)};
  }
};
#elif defined(KK_ISA_AVX2)
struct Vec {
  static constexpr int size = 8;
  __m256 v;
  static Vec zero() { return {_mm256_setzero_ps()}; }
  static Vec set1(float x) { return {_mm256_set1_ps(x)}; }
  static Vec load(const float* p) { return {_mm256_loadu_ps(p)}; }
  static Vec load(const bf16_t* p) {
    __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    return {_mm256_castsi256_ps(_mm256_slli_epi32(w, 16))};
  }
  static Vec load(const f16_t* p) {
    return {_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
  }
  void store(float* p) const { _mm256_storeu_ps(p, v); }
  void store(bf16_t* p) const {
    // Round to nearest even in integer arithmetic; NaN lanes become quiet NaN.
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(_mm256_add_epi32(u, _mm256_set1_epi32(0x7fff)), lsb);
    r = _mm256_srli_epi32(r, 16);
    const __m256i nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    r = _mm256_blendv_epi8(r, _mm256_set1_epi32(0x7fc0), nan);
    // pack 8 x u32 -> 8 x u16 (packus works per 128-bit lane, hence the permute)
    const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(r, r), 0x08);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
  }
  void store(f16_t* p) const {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT));
  }
  float sum() const {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
  }
  friend Vec operator+(Vec a, Vec b) { return {_mm256_add_ps(a.v, b.v)}; }
  friend Vec operator-(Vec a, Vec b) { return {_mm256_sub_ps(a.v, b.v)}; }
  friend Vec operator*(Vec a, Vec b) { return {_mm256_mul_ps(a.v, b.v)}; }
  friend Vec fma(Vec a, Vec b, Vec c) { return {_mm256_fmadd_ps(a.v, b.v, c.v)}; }
  friend Vec operator/(Vec a, Vec b) { return {_mm256_div_ps(a.v, b.v)}; }
  friend Vec recip(Vec a) {  // 12-bit estimate plus two Newton steps
    __m256 r = _mm256_rcp_ps(a.v);
    r = _mm256_mul_ps(r, _mm256_fnmadd_ps(a.v, r, _mm256_set1_ps(2.f)));
    return {_mm256_mul_ps(r, _mm256_fnmadd_ps(a.v, r, _mm256_set1_ps(2.f)))};
  }
  friend Vec max(Vec a, Vec b) { return {_mm256_max_ps(a.v, b.v)}; }
  friend Vec min(Vec a, Vec b) { return {_mm256_min_ps(a.v, b.v)}; }
  friend Vec abs(Vec a) { return {_mm256_andnot_ps(_mm256_set1_ps(-0.f), a.v)}; }
  friend Vec select_below(Vec test, float limit, Vec below, Vec a) {
    return {_mm256_blendv_ps(a.v, below.v, _mm256_cmp_ps(test.v, _mm256_set1_ps(limit), _CMP_LT_OQ))};
  }
  friend Vec keep_range(Vec a, int base, int lo, int hi, float fill) {
    const __m256i idx = _mm256_add_epi32(_mm256_set1_epi32(base), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    const __m256i out = _mm256_or_si256(_mm256_cmpgt_epi32(_mm256_set1_epi32(lo), idx),
                                        _mm256_cmpgt_epi32(idx, _mm256_set1_epi32(hi)));
    return {_mm256_blendv_ps(a.v, _mm256_set1_ps(fill), _mm256_castsi256_ps(out))};
  }
  static Vec round(Vec a) { return {_mm256_round_ps(a.v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)}; }
  static Vec shl23(Vec a) { return {_mm256_castsi256_ps(_mm256_slli_epi32(_mm256_castps_si256(a.v), 23))}; }
  static void frexp1(Vec x, Vec& m, Vec& e) {
    const __m256i bits = _mm256_castps_si256(x.v);
    e = {_mm256_cvtepi32_ps(_mm256_sub_epi32(_mm256_srli_epi32(bits, 23), _mm256_set1_epi32(127)))};
    m = {_mm256_castsi256_ps(_mm256_or_si256(_mm256_and_si256(bits, _mm256_set1_epi32(0x007fffff)),
                                             _mm256_set1_epi32(0x3f800000)))};
  }
  friend Vec select_gt(Vec test, Vec limit, Vec above, Vec a) {
    return {_mm256_blendv_ps(a.v, above.v, _mm256_cmp_ps(test.v, limit.v, _CMP_GT_OQ))};
  }
};
#else
struct Vec {
  static constexpr int size = 1;
  float v;
  static Vec zero() { return {0.f}; }
  static Vec set1(float x) { return {x}; }
  template <typename T> static Vec load(const T* p) { return {to_float(*p)}; }
  template <typename T> void store(T* p) const { *p = from_float<T>(v); }
  float sum() const { return v; }
  friend Vec operator+(Vec a, Vec b) { return {a.v + b.v}; }
  friend Vec operator-(Vec a, Vec b) { return {a.v - b.v}; }
  friend Vec operator*(Vec a, Vec b) { return {a.v * b.v}; }
  // a*b+c, not std::fma: without hardware FMA that is a slow library call.
  friend Vec fma(Vec a, Vec b, Vec c) { return {a.v * b.v + c.v}; }
  friend Vec operator/(Vec a, Vec b) { return {a.v / b.v}; }
  friend Vec recip(Vec a) { return {1.f / a.v}; }
  friend Vec max(Vec a, Vec b) { return {a.v > b.v ? a.v : b.v}; }
  friend Vec min(Vec a, Vec b) { return {a.v < b.v ? a.v : b.v}; }
  friend Vec abs(Vec a) { return {std::fabs(a.v)}; }
  friend Vec select_below(Vec test, float limit, Vec below, Vec a) { return {test.v < limit ? below.v : a.v}; }
  friend Vec keep_range(Vec a, int base, int lo, int hi, float fill) { return {base >= lo && base <= hi ? a.v : fill}; }
  friend Vec select_gt(Vec test, Vec limit, Vec above, Vec a) { return {test.v > limit.v ? above.v : a.v}; }
};
#endif

// dst[0..n) = float(src[0..n)).
template <typename T>
inline void widen(float* dst, const T* src, int64_t n) {
  int64_t i = 0;
  for (; i + Vec::size <= n; i += Vec::size) Vec::load(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = to_float(src[i]);
}

// sum_i a[i] * b[i] in fp32 with two accumulator chains.
inline float dot(const float* a, const float* b, int64_t n) {
  Vec a0 = Vec::zero(), a1 = Vec::zero();
  int64_t i = 0;
  for (; i + 2 * Vec::size <= n; i += 2 * Vec::size) {
    a0 = fma(Vec::load(a + i), Vec::load(b + i), a0);
    a1 = fma(Vec::load(a + i + Vec::size), Vec::load(b + i + Vec::size), a1);
  }
  float r = (a0 + a1).sum();
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

// 64-byte aligned scratch, freed on scope exit (a per-ISA type, like everything here).
template <typename T>
struct Buf {
  T* p;
  explicit Buf(size_t n) : p(static_cast<T*>(std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64))) {
    if (!p) std::abort();
  }
  ~Buf() { std::free(p); }
  Buf(const Buf&) = delete;
  Buf& operator=(const Buf&) = delete;
  T& operator[](size_t i) { return p[i]; }
  const T& operator[](size_t i) const { return p[i]; }
};

// exp(x) in fp32 to ~2 ulp; exactly 0 for x < -87.3 (so exp(-inf) = 0, which
// masked attention scores rely on); large x saturates at exp(88.376) (x log2 e < 127.5 keeps the
// exponent finite: above it, 1 / (1 + exp(x)) in sigmoid() would make NaN); NaN stays NaN.
inline Vec exp(Vec x) {
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  const Vec xc = min(Vec::set1(88.3762626f), max(Vec::set1(-87.3f), x));
  // n = round(x log2 e), biased, in the low mantissa bits of m (see exp2): no round/convert
  const Vec magic = Vec::set1(12582912.f + 127.f);
  const Vec m = fma(xc, Vec::set1(1.44269504088896341f), magic), n = m - magic;
  Vec r = fma(n, Vec::set1(-0.693359375f), xc);           // Cody-Waite: ln2 = hi + lo
  r = fma(n, Vec::set1(2.12194440e-4f), r);
  Vec p = Vec::set1(1.9875691500e-4f);
  p = fma(p, r, Vec::set1(1.3981999507e-3f));
  p = fma(p, r, Vec::set1(8.3334519073e-3f));
  p = fma(p, r, Vec::set1(4.1665795894e-2f));
  p = fma(p, r, Vec::set1(1.6666665459e-1f));
  p = fma(p, r, Vec::set1(5.0000001201e-1f));
  p = fma(p * r, r, r) + Vec::set1(1.f);
  return select_below(x, -87.3f, Vec::zero(), p * Vec::shl23(m));
#else
  return {std::exp(x.v)};
#endif
}

// 2^t to ~2 ulp, for kernels that fold log2(e) into a per-channel constant (exp(d * a) =
// exp2(d * (a log2 e))): ~40% fewer operations than exp(). NaN passes through.
// avx512: t = n + f with n = floor(t) and f in [0, 1) from one vreduceps (0 for infinite t), 2^f by
// a degree-6 fit (relative error 7e-9 with the fp32 coefficients), and vscalefps multiplies by 2^floor(t) exactly, with IEEE
// edges: subnormal, then 0, below -126; inf above 128. Nine instructions.
// avx2: t is clamped to [-126, 127] (max/min return their second operand for NaN), so the result is
// never 0 or inf there: at most 2^-126 * 2^0.5 where the true value underflows (negligible next to
// any O(1) term it is added to). Adding 1.5 * 2^23 + 127 rounds t to an integer n held in the sum's
// low mantissa bits, already biased, so one shift makes 2^n; 2^f for f = t - n in [-1/2, 1/2] is a
// degree-6 fit (relative error 2e-9). Both evaluate the polynomial Estrin-style for a short
// dependency chain.
inline Vec exp2(Vec t) {
#if defined(KK_ISA_AVX512)
  const Vec f{_mm512_reduce_ps(t.v, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)}, f2 = f * f;
  const Vec lo = fma(Vec::set1(0.693147004f), f, Vec::set1(1.f));
  Vec mid = fma(Vec::set1(5.54833412e-2f), f, Vec::set1(0.240229830f));
  Vec hi = fma(Vec::set1(1.24396884e-3f), f, Vec::set1(9.67884064e-3f));
  hi = fma(Vec::set1(2.17022549e-4f), f2, hi);
  mid = fma(hi, f2, mid);
  return {_mm512_scalef_ps(fma(mid, f2, lo).v, t.v)};
#elif defined(KK_ISA_AVX2)
  t = min(Vec::set1(127.f), max(Vec::set1(-126.f), t));
  const Vec magic = Vec::set1(12582912.f + 127.f);
  const Vec m = t + magic;
  const Vec f = t - (m - magic), f2 = f * f;
  const Vec lo = fma(Vec::set1(0.6931472056f), f, Vec::set1(1.0000000006f));
  Vec mid = fma(Vec::set1(5.550328998e-2f), f, Vec::set1(0.2402264661f));
  Vec hi = fma(Vec::set1(1.339986036e-3f), f, Vec::set1(9.618519534e-3f));
  hi = fma(Vec::set1(1.533757683e-4f), f2, hi);
  mid = fma(hi, f2, mid);
  return fma(mid, f2, lo) * Vec::shl23(m);
#else
  return {std::exp2(t.v)};
#endif
}

// log(x) for x > 0 (normal, finite) to ~2 ulp: mantissa in [sqrt(1/2), sqrt(2))
// and the Cephes logf polynomial.
inline Vec log(Vec x) {
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  Vec m, e;
  Vec::frexp1(x, m, e);
  const Vec big = Vec::set1(1.41421356f);
  e = select_gt(m, big, e + Vec::set1(1.f), e);
  m = select_gt(m, big, m * Vec::set1(0.5f), m);
  const Vec f = m - Vec::set1(1.f), z = f * f;
  Vec p = Vec::set1(7.0376836292e-2f);
  p = fma(p, f, Vec::set1(-1.1514610310e-1f));
  p = fma(p, f, Vec::set1(1.1676998740e-1f));
  p = fma(p, f, Vec::set1(-1.2420140846e-1f));
  p = fma(p, f, Vec::set1(1.4249322787e-1f));
  p = fma(p, f, Vec::set1(-1.6668057665e-1f));
  p = fma(p, f, Vec::set1(2.0000714765e-1f));
  p = fma(p, f, Vec::set1(-2.4999993993e-1f));
  p = fma(p, f, Vec::set1(3.3333331174e-1f));
  Vec y = f * z * p;
  y = fma(e, Vec::set1(-2.12194440e-4f), y);
  y = fma(z, Vec::set1(-0.5f), y);
  return fma(e, Vec::set1(0.693359375f), f + y);
#else
  return {std::log(x.v)};
#endif
}

// exp(-|x|) in (0, 1] to ~2 ulp by exp2: the rounding of t = -|x| log2(e) (relative error of the
// result up to |t| 2^-24) is corrected: r, the product's exact residual plus log2(e)'s own, gives
// 2^t (1 + r ln 2).
inline Vec exp_neg_abs(Vec x) {
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  // (clamped where the result underflows anyway: infinite x would make r NaN; NaN passes)
  const Vec nx = max(Vec::set1(-87.5f), Vec::zero() - abs(x)), l2e = Vec::set1(1.44269504088896341f);
  const Vec t = nx * l2e, r = fma(nx, l2e, Vec::zero() - t) + nx * Vec::set1(1.925963e-8f);
  const Vec e = exp2(t);
  return select_below(nx, -87.3f, Vec::zero(), fma(e, r * Vec::set1(0.693147181f), e));  // 0 like exp()
#else
  return {std::exp(-std::fabs(x.v))};  // (the scalar fma is unfused: the residual would be 0)
#endif
}

// sigmoid(x) given e = exp(-|x|): 1 / (1 + e) for x >= 0, e / (1 + e) below (no cancellation on
// either side).
inline Vec sigmoid_from_exp_neg_abs(Vec x, Vec e) {
  const Vec q = Vec::set1(1.f) / (Vec::set1(1.f) + e);
  return select_below(x, 0.f, e * q, q);
}

// softplus(x) = log(1 + exp(x)) = max(x, 0) + log1p(e), e = exp(-|x|). log1p(e) is 2 atanh(s) with
// s = e / (2 + e) in (0, 1/3]: 2 s (1 + s^2 P(s^2)), P a cubic fit (relative error 2e-8). No
// logarithm, no cancellation for small e (x far below 0 keeps full relative precision). With
// `sig` set, also stores sigmoid(x) (softplus' derivative) from the same e.
inline Vec softplus(Vec x, Vec* sig = nullptr) {
  const Vec e = exp_neg_abs(x), two_e = Vec::set1(2.f) + e;
  if (sig) *sig = sigmoid_from_exp_neg_abs(x, e);
  const Vec s = e / two_e, w = s * s, s2 = s + s;
  Vec p = fma(Vec::set1(0.1343375802f), w, Vec::set1(0.1411698120f));
  p = fma(p, w, Vec::set1(0.2000383525f));
  p = fma(p, w, Vec::set1(0.3333331984f));
  return max(Vec::zero(), x) + fma(s2 * w, p, s2);
}

// sigmoid(x) = 1 / (1 + exp(-x)) with one exp2 and one divide, to ~2 ulp.
inline Vec sigmoid_accurate(Vec x) { return sigmoid_from_exp_neg_abs(x, exp_neg_abs(x)); }

// tanh(x) = sign(x) * (1 - 2 / (exp(2|x|) + 1)): absolute error ~1e-7.
inline Vec tanh(Vec x) {
  const Vec e = exp(min(abs(x) * Vec::set1(2.f), Vec::set1(80.f)));
  const Vec t = Vec::set1(1.f) - Vec::set1(2.f) / (e + Vec::set1(1.f));
  return select_below(x, 0.f, Vec::zero() - t, t);
}

inline Vec sigmoid(Vec x) { return recip(Vec::set1(1.f) + exp(Vec::zero() - x)); }

#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
// The lane sums of 8 rows of 8 floats, as one vector: a horizontal-add tree (9 instructions for 8
// sums, where 8 separate reductions take ~40).
inline __m256 row_sums8(const __m256 (&r)[8]) {
  const __m256 a = _mm256_hadd_ps(_mm256_hadd_ps(r[0], r[1]), _mm256_hadd_ps(r[2], r[3]));
  const __m256 c = _mm256_hadd_ps(_mm256_hadd_ps(r[4], r[5]), _mm256_hadd_ps(r[6], r[7]));
  return _mm256_add_ps(_mm256_permute2f128_ps(a, c, 0x20), _mm256_permute2f128_ps(a, c, 0x31));
}
#endif

// out[i] = sum of the Vec::size floats of row i of M (Vec::size rows, row-major), i < Vec::size.
inline void row_sums(const float* M, float* out) {
#if defined(KK_ISA_AVX512)
  __m256 lo[8], hi[8];
  for (int i = 0; i < 8; ++i) {
    const __m512 a = _mm512_loadu_ps(M + 16 * i), b = _mm512_loadu_ps(M + 16 * (i + 8));
    lo[i] = _mm256_add_ps(_mm512_castps512_ps256(a), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(a), 1)));
    hi[i] = _mm256_add_ps(_mm512_castps512_ps256(b), _mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(b), 1)));
  }
  _mm256_storeu_ps(out, row_sums8(lo));
  _mm256_storeu_ps(out + 8, row_sums8(hi));
#elif defined(KK_ISA_AVX2)
  __m256 r[8];
  for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(M + 8 * i);
  _mm256_storeu_ps(out, row_sums8(r));
#else
  out[0] = M[0];
#endif
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
