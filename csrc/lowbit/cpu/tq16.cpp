// Ternary GEMV / GEMM on the 1.6-bit "tq1.6" format (5 weights per byte, base 3), int8
// activations, on CPU, compiled per ISA level. Format (lowbit.h): q = ceil(v * 256 / 243) with
// v = sum_i c_i 3^(4-i) over the codes c_i = w + 1 of weights 320 b + 64 i + j (block b, byte j).
// Code i is then the top "digit" of q_i = 3^i q mod 256: c_i = (3 q_i) >> 8, q_(i+1) = 3 q_i mod 256.
//
// avx512: the codes are never formed. Since 256 c_i = 3 q_i - q_(i+1) exactly,
//   sum_i c_i . x_i = (3 sum_i q_i . x_i - sum_i q_(i+1) . x_i) / 256,
// two vpdpbusd (q as unsigned bytes, x_q signed) and two byte adds (q + q + q) per 64 weights,
// so the decode costs about as much as the 2-bit kernel's shift-and-mask and the GEMV stays
// memory-bound on 20% fewer bytes. avx2: the codes from two byte compares (see there). Scalar:
// the digit loop in plain C++.
// The result is the same integer dot as the 2-bit kernel's, rescaled by the same fp32 operations:
// tq1.6 and tq2 outputs are bitwise equal.
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

constexpr int64_t kBlock = kTernary16Block;  // 320 weights, 64 bytes
// int32 lanes take at most 5 x 2 dpbusd steps of 4 * 255 * 128 per block: flush to int64 every
// 2048 blocks (< 2^31 / 652800 = 3289).
constexpr int64_t kFlushBlocks = 2048;

#if defined(KK_ISA_AVX512)
inline int64_t reduce_add_64(__m512i v) {  // the 16 lanes' sum may pass 2^31
  return _mm512_reduce_add_epi64(_mm512_add_epi64(_mm512_cvtepi32_epi64(_mm512_castsi512_si256(v)),
                                                  _mm512_cvtepi32_epi64(_mm512_extracti64x4_epi64(v, 1))));
}

// acc[m][n] = sum_k code[n][k] * x_q[m][k] over the row (x rows zero-padded to nblk * 320).
template <int MB, int NB>
__attribute__((always_inline)) inline void tq16_dot_tile(const uint8_t* const* wrow, const int8_t* const* xrow,
                                                         int64_t nblk, int64_t (&out)[MB][NB]) {
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) out[a][b] = 0;
  const int64_t pf = gemv_prefetch_distance(NB, nblk * 64);
  for (int64_t b0 = 0; b0 < nblk; b0 += kFlushBlocks) {
    __m512i acc_a[MB][NB], acc_b[MB][NB];  // sum q_i . x_i and sum q_(i+1) . x_i
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) acc_a[a][b] = acc_b[a][b] = _mm512_setzero_si512();
    const int64_t b1 = std::min(nblk, b0 + kFlushBlocks);
    for (int64_t blk = b0; blk < b1; ++blk) {
      if constexpr (MB == 1)  // GEMV: the tile's rows are one contiguous run of memory, read once
        for (int b = 0; b < NB; ++b)
          _mm_prefetch(reinterpret_cast<const char*>(wrow[0] + (blk * NB + b) * 64 + pf), _MM_HINT_T0);
      __m512i q[NB];
      for (int b = 0; b < NB; ++b) q[b] = _mm512_loadu_si512(wrow[b] + blk * 64);
      for (int i = 0; i < 5; ++i) {
        __m512i qn[NB];
        for (int b = 0; b < NB; ++b) qn[b] = _mm512_add_epi8(q[b], _mm512_add_epi8(q[b], q[b]));
        for (int a = 0; a < MB; ++a) {
          const __m512i xv = _mm512_loadu_si512(xrow[a] + blk * kBlock + i * 64);
          for (int b = 0; b < NB; ++b) {
            acc_a[a][b] = _mm512_dpbusd_epi32(acc_a[a][b], q[b], xv);
            acc_b[a][b] = _mm512_dpbusd_epi32(acc_b[a][b], qn[b], xv);
          }
        }
        for (int b = 0; b < NB; ++b) q[b] = qn[b];
      }
    }
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) {
        out[a][b] += (3 * reduce_add_64(acc_a[a][b]) - reduce_add_64(acc_b[a][b])) / 256;  // exact
      }
  }
}
#elif defined(KK_ISA_AVX2)
// No unsigned-by-signed byte dot without saturation here (vpmaddubsw pairs of 255 * 128 overflow
// int16), so the codes are formed, with byte ops only. Kept as f_i = q_i ^ 0x80, the bytes still
// step as f_(i+1) = 3 f_i mod 256 (3 (q + 128) = 3 q + 128 + 256), and read as signed bytes
// f_i = q_i - 128, so code c_i = [q_i >= 86] + [q_i >= 171] = |(f_i > -43) + (f_i > 42)| over the
// compare masks (0 or -1): six byte ops per 32 weights and weight row, then a vpmaddubsw and an add
// per activation row.
template <int MB, int NB>
__attribute__((always_inline)) inline void tq16_dot_tile(const uint8_t* const* wrow, const int8_t* const* xrow,
                                                         int64_t nblk, int64_t (&out)[MB][NB]) {
  // vpmaddubsw pair sums are at most 2 * 2 * 128 = 512 in magnitude: 60 of them (6 blocks of
  // 10 steps) add up in int16 lanes, one vpmaddwd per 6 blocks moves them to int32.
  constexpr int64_t kInt16Blocks = 6;
  const __m256i flip = _mm256_set1_epi8(char(0x80)), lo = _mm256_set1_epi8(-43), hi = _mm256_set1_epi8(42);
  const __m256i ones = _mm256_set1_epi16(1), zero = _mm256_setzero_si256();
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) out[a][b] = 0;
  const int64_t pf = gemv_prefetch_distance(NB, nblk * 64);
  for (int64_t b0 = 0; b0 < nblk; b0 += kFlushBlocks) {
    __m256i acc[MB][NB];
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) acc[a][b] = zero;
    const int64_t b1 = std::min(nblk, b0 + kFlushBlocks);
    for (int64_t g = b0; g < b1; g += kInt16Blocks) {
      __m256i acc16[MB][NB];
      for (int a = 0; a < MB; ++a)
        for (int b = 0; b < NB; ++b) acc16[a][b] = zero;
      for (int64_t blk = g; blk < std::min(b1, g + kInt16Blocks); ++blk) {
        if constexpr (MB == 1)  // GEMV: the tile's rows are one contiguous run of memory, read once
          for (int b = 0; b < NB; ++b)
            _mm_prefetch(reinterpret_cast<const char*>(wrow[0] + (blk * NB + b) * 64 + pf), _MM_HINT_T0);
#pragma GCC unroll 1  // unrolled, gcc hoists the ten steps' loads and products and spills
        for (int h = 0; h < 2; ++h) {  // bytes 32 h .. 32 h + 31 of the block
          __m256i f[NB];
          for (int b = 0; b < NB; ++b)
            f[b] = _mm256_xor_si256(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[b] + blk * 64 + 32 * h)), flip);
          for (int i = 0; i < 5; ++i) {
            __m256i xv[MB];
            for (int a = 0; a < MB; ++a)
              xv[a] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xrow[a] + blk * kBlock + i * 64 + 32 * h));
            for (int b = 0; b < NB; ++b) {  // each code used at once: few live registers
              const __m256i code = _mm256_abs_epi8(_mm256_add_epi8(_mm256_cmpgt_epi8(f[b], lo), _mm256_cmpgt_epi8(f[b], hi)));
              f[b] = _mm256_add_epi8(f[b], _mm256_add_epi8(f[b], f[b]));
              for (int a = 0; a < MB; ++a) acc16[a][b] = _mm256_add_epi16(acc16[a][b], _mm256_maddubs_epi16(code, xv[a]));
            }
          }
        }
      }
      for (int a = 0; a < MB; ++a)
        for (int b = 0; b < NB; ++b) acc[a][b] = _mm256_add_epi32(acc[a][b], _mm256_madd_epi16(acc16[a][b], ones));
    }
    for (int a = 0; a < MB; ++a)  // a flush's total is below 2048 * 320 * 2 * 128 < 2^31
      for (int b = 0; b < NB; ++b) {
        const __m128i s = _mm_add_epi32(_mm256_castsi256_si128(acc[a][b]), _mm256_extracti128_si256(acc[a][b], 1));
        const __m128i s2 = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
        out[a][b] += _mm_cvtsi128_si32(_mm_add_epi32(s2, _mm_shuffle_epi32(s2, 0xb1)));
      }
  }
}
#else
template <int MB, int NB>
inline void tq16_dot_tile(const uint8_t* const* wrow, const int8_t* const* xrow, int64_t nblk,
                          int64_t (&out)[MB][NB]) {
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) out[a][b] = 0;
  for (int b = 0; b < NB; ++b)
    for (int64_t blk = 0; blk < nblk; ++blk) {
      uint8_t code[kBlock];
      for (int j = 0; j < 64; ++j) {
        unsigned q = wrow[b][blk * 64 + j];
        for (int i = 0; i < 5; ++i) {
          const unsigned t = 3 * q;
          code[i * 64 + j] = uint8_t(t >> 8);
          q = t & 255;
        }
      }
      for (int a = 0; a < MB; ++a) {
        const int8_t* x = xrow[a] + blk * kBlock;
        int32_t s = 0;  // <= 320 * 2 * 128
        for (int k = 0; k < kBlock; ++k) s += int32_t(code[k]) * x[k];
        out[a][b] += s;
      }
    }
}
#endif

template <int MB, int NB, typename T>
void tq16_tile(const LowbitParams& p, const QuantRows& xr, int64_t m0, int64_t n0) {
  const int64_t wbytes = p.Kp / 5;
  const uint8_t* wrow[NB];
  const int8_t* xrow[MB];
  for (int b = 0; b < NB; ++b) wrow[b] = p.packed + (n0 + b) * wbytes;
  for (int a = 0; a < MB; ++a) xrow[a] = xr.q.p + (m0 + a) * xr.Kx;
  int64_t acc[MB][NB];
  tq16_dot_tile<MB, NB>(wrow, xrow, p.Kp / kBlock, acc);
  store_int_dots<MB, NB, T>(p, xr, acc, m0, n0);
}

template <int MB, typename T>
void tq16_rows(const LowbitParams& p, const QuantRows& xr, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) tq16_tile<MB, 4, T>(p, xr, m0, n);
  for (; n < n1; ++n) tq16_tile<MB, 1, T>(p, xr, m0, n);
}

template <typename T>
void tq16_int8(const LowbitParams& p) {
  QuantRows xr(p.M, p.Kp);  // in weight order
  quantize_rows<T>(p, xr, [](int64_t k) { return k; });
  const int64_t groups = (p.N + 3) / 4;  // split over output features in groups of 4 rows
  parallel_for(groups, p.threads, gemv_group_grain(p), [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * 4, n1 = std::min(p.N, g1 * 4);
    int64_t m = 0;
    for (; m + 2 <= p.M; m += 2) tq16_rows<2, T>(p, xr, m, n0, n1);  // each decoded block feeds two rows
    if (m < p.M) tq16_rows<1, T>(p, xr, m, n0, n1);
  });
}

}  // namespace

void ternary16_linear_cpu(const LowbitParams& p) {
  switch (p.dtype) {
    case DType::f32: return tq16_int8<float>(p);
    case DType::bf16: return tq16_int8<bf16_t>(p);
    case DType::f16: return tq16_int8<f16_t>(p);
    default: throw std::invalid_argument("ternary_linear: x must be float32, bfloat16 or float16");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
