// Ternary and binary weight matmuls on CPU, compiled per ISA level.
//  - ternary, int8 activations: per-row absmax quantisation (round half to even,
//    clamp [-128, 127]), then exact integer dot products of the 2-bit codes
//    (w + 1, unsigned) with x_q (signed), corrected by -sum(x_q). avx512:
//    vpdpbusd (VNNI); avx2: vpmaddubsw + vpmaddwd (the pair sums are at most
//    2 * 2 * 128 = 512, so the int16 step cannot saturate) into int32 lanes;
//    int32 lanes are flushed to int64 every 2^20 weights, so no K overflows.
//  - float activations (ternary act_bits=None, binary without binarize_input):
//    each weight row is expanded once to fp32 {-1, 0, 1} and dotted with every
//    activation row.
//  - binary with binarize_input: sign bits of x, XNOR via XOR + popcount
//    (avx512: vpopcntq).
// Work is split over output features, so every thread streams its own weights.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>

#include "common/parallel.h"
#include "common/sgemm.h"
#include "common/vec.h"
#include "lowbit/cpu/quant.h"
#include "lowbit/lowbit.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

#if defined(KK_ISA_AVX512)
constexpr int64_t kXChunk = 256;  // x_q arranged for two 32-byte blocks per 64-byte register
#else
constexpr int64_t kXChunk = 128;
#endif
constexpr int64_t kFlushChunks = 4096;  // chunks between int32 -> int64 flushes (<= 2^20 weights)

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// ----------------------------------------------------------------------------- int8 activations

// Offset of weight k in the arranged row: avx512 pairs block 2c (low half) with
// 2c+1 (high half) so that one 64-byte code register serves both.
inline int64_t arranged(int64_t k) {
#if defined(KK_ISA_AVX512)
  const int64_t c = k / 256, kk = k % 256, half = kk / 128, jj = kk % 128;
  return c * 256 + (jj / 32) * 64 + half * 32 + jj % 32;
#else
  return k;
#endif
}

#if defined(KK_ISA_AVX512)
// Lane sums of four int32 vectors, in lanes 0..3 (pairwise unpack-and-add
// instead of four separate horizontal reductions).
inline __m128i reduce4(__m512i a0, __m512i a1, __m512i a2, __m512i a3) {
  const __m512i a01 = _mm512_add_epi32(_mm512_unpacklo_epi32(a0, a1), _mm512_unpackhi_epi32(a0, a1));
  const __m512i a23 = _mm512_add_epi32(_mm512_unpacklo_epi32(a2, a3), _mm512_unpackhi_epi32(a2, a3));
  const __m512i s = _mm512_add_epi32(_mm512_unpacklo_epi64(a01, a23), _mm512_unpackhi_epi64(a01, a23));
  const __m256i h = _mm256_add_epi32(_mm512_castsi512_si256(s), _mm512_extracti64x4_epi64(s, 1));
  return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

// One 256-weight chunk (blocks 2c, 2c+1) of an MB x NB tile. The codes are
// shifted and masked straight from memory, so only the accumulators, NB codes,
// one activation register and the mask live in registers (and the loop body has
// no branch: gcc kept the accumulators in memory when the tail test was inside).
// Half: the row ends after block 2c; its high 32 bytes are not read (zero codes).
template <int MB, int NB, bool Half>
__attribute__((always_inline)) inline void dot_chunk(__m512i (&acc)[MB][NB], const uint8_t* const* wrow,
                                                     const int8_t* const* xrow, int64_t c, __m512i lo2, int64_t pf) {
  if constexpr (MB == 1)  // GEMV: the tile's NB rows are one contiguous run of memory, read once
    for (int i = 0; i < NB; ++i)
      _mm_prefetch(reinterpret_cast<const char*>(wrow[0] + c * NB * 64 + i * 64 + pf), _MM_HINT_T0);
  for (int j = 0; j < 4; ++j) {
    __m512i code[NB];
    for (int b = 0; b < NB; ++b) {
      const __m512i pk = Half ? _mm512_maskz_loadu_epi8(0xffffffffull, wrow[b] + c * 64)
                              : _mm512_loadu_si512(wrow[b] + c * 64);
      code[b] = _mm512_and_si512(_mm512_srli_epi16(pk, 2 * j), lo2);
    }
    for (int a = 0; a < MB; ++a) {
      const __m512i xv = _mm512_loadu_si512(xrow[a] + c * 256 + j * 64);
      for (int b = 0; b < NB; ++b) acc[a][b] = _mm512_dpbusd_epi32(acc[a][b], code[b], xv);
    }
  }
}
#endif

// acc[m][n] = sum_k code[n][k] * x_q[m][k] for MB x NB rows (wrow: packed rows).
template <int MB, int NB>
__attribute__((always_inline)) inline void int_dot_tile(const uint8_t* const* wrow, const int8_t* const* xrow, int64_t Kp, int64_t (&out)[MB][NB]) {
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) out[a][b] = 0;
  [[maybe_unused]] const int64_t pf = gemv_prefetch_distance(NB, Kp / 4);
#if defined(KK_ISA_AVX512)
  const int64_t nblk = Kp / 128, nfull = nblk / 2, nchunk = (nblk + 1) / 2;
  const __m512i lo2 = _mm512_set1_epi8(3);
  for (int64_t c0 = 0; c0 < nchunk; c0 += kFlushChunks) {
    __m512i acc[MB][NB];
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) acc[a][b] = _mm512_setzero_si512();
    const int64_t c1 = std::min(nchunk, c0 + kFlushChunks);
    for (int64_t c = c0; c < std::min(c1, nfull); ++c) dot_chunk<MB, NB, false>(acc, wrow, xrow, c, lo2, pf);
    if (c1 > nfull) dot_chunk<MB, NB, true>(acc, wrow, xrow, nfull, lo2, pf);
    for (int a = 0; a < MB; ++a) {
      if constexpr (NB == 4) {  // one transposing reduction for the row's four sums
        const __m256i sums = _mm256_cvtepi32_epi64(reduce4(acc[a][0], acc[a][1], acc[a][2], acc[a][3]));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(out[a]),
                            _mm256_add_epi64(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(out[a])), sums));
      } else {
        for (int b = 0; b < NB; ++b) out[a][b] += _mm512_reduce_add_epi32(acc[a][b]);
      }
    }
  }
#elif defined(KK_ISA_AVX2)
  // vpmaddubsw pair sums are at most 2 * 2 * 128 = 512 in magnitude, so 32 of them (8 blocks of
  // 4 steps) add up in int16 lanes without overflow; one vpmaddwd per 8 blocks moves them to int32
  // (a third fewer instructions per 32 weights than widening every step).
  constexpr int64_t kInt16Blocks = 8;
  const int64_t nblk = Kp / 128;
  const __m256i lo2 = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1);
  for (int64_t q0 = 0; q0 < nblk; q0 += kFlushChunks) {
    __m256i acc[MB][NB];
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) acc[a][b] = _mm256_setzero_si256();
    const int64_t q1 = std::min(nblk, q0 + kFlushChunks);
    for (int64_t g = q0; g < q1; g += kInt16Blocks) {
      __m256i acc16[MB][NB];
      for (int a = 0; a < MB; ++a)
        for (int b = 0; b < NB; ++b) acc16[a][b] = _mm256_setzero_si256();
      for (int64_t q = g; q < std::min(q1, g + kInt16Blocks); ++q) {
        if constexpr (MB == 1)  // GEMV: the tile's rows are one contiguous run of memory, read once
          for (int i = 0; i < (NB * 32 + 63) / 64; ++i)
            _mm_prefetch(reinterpret_cast<const char*>(wrow[0] + q * NB * 32 + i * 64 + pf), _MM_HINT_T0);
        for (int j = 0; j < 4; ++j) {  // codes shifted and masked straight from memory (few registers)
          __m256i code[NB];
          for (int b = 0; b < NB; ++b)
            code[b] = _mm256_and_si256(
                _mm256_srli_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(wrow[b] + q * 32)), 2 * j), lo2);
          for (int a = 0; a < MB; ++a) {
            const __m256i xv = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(xrow[a] + q * 128 + j * 32));
            for (int b = 0; b < NB; ++b) acc16[a][b] = _mm256_add_epi16(acc16[a][b], _mm256_maddubs_epi16(code[b], xv));
          }
        }
      }
      for (int a = 0; a < MB; ++a)
        for (int b = 0; b < NB; ++b) acc[a][b] = _mm256_add_epi32(acc[a][b], _mm256_madd_epi16(acc16[a][b], ones));
    }
    // Lane sums in int32 (a flush's total is below 2^28), pairs of outputs per hadd chain: at
    // K = 2560 a GEMV row is only 20 blocks, so a long reduction would cost a fifth of the loop.
    for (int a = 0; a < MB; ++a) {
      int b = 0;
      for (; b + 2 <= NB; b += 2) {
        const __m256i h = _mm256_hadd_epi32(acc[a][b], acc[a][b + 1]);
        const __m256i hh = _mm256_hadd_epi32(h, h);
        const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(hh), _mm256_extracti128_si256(hh, 1));
        out[a][b] += _mm_cvtsi128_si32(t);
        out[a][b + 1] += _mm_extract_epi32(t, 1);
      }
      if (b < NB) {
        const __m256i h = _mm256_hadd_epi32(acc[a][b], acc[a][b]);
        const __m256i hh = _mm256_hadd_epi32(h, h);
        const __m128i t = _mm_add_epi32(_mm256_castsi256_si128(hh), _mm256_extracti128_si256(hh, 1));
        out[a][b] += _mm_cvtsi128_si32(t);
      }
    }
  }
#else
  for (int64_t q = 0; q < Kp / 128; ++q)
    for (int j = 0; j < 32; ++j)
      for (int i = 0; i < 4; ++i) {
        const int64_t k = q * 128 + 32 * i + j;
        for (int b = 0; b < NB; ++b) {
          const int code = (wrow[b][q * 32 + j] >> (2 * i)) & 3;
          for (int a = 0; a < MB; ++a) out[a][b] += code * xrow[a][k];
        }
      }
#endif
}

template <int MB, int NB, typename T>
void int8_tile(const LowbitParams& p, const QuantRows& qr, int64_t m0, int64_t n0) {
  const int64_t wbytes = p.Kp / 4;
  const uint8_t* wrow[NB];
  const int8_t* xrow[MB];
  for (int b = 0; b < NB; ++b) wrow[b] = p.packed + (n0 + b) * wbytes;
  for (int a = 0; a < MB; ++a) xrow[a] = qr.q.p + (m0 + a) * qr.Kx;
  int64_t acc[MB][NB];
  int_dot_tile<MB, NB>(wrow, xrow, p.Kp, acc);
  store_int_dots<MB, NB, T>(p, qr, acc, m0, n0);
}

// Output rows per tile. GEMV on avx2 takes two: with four, the four interleaved weight streams ran
// ~40% slower from memory (and from L3) than two, measured at 6912 x 2560.
#if defined(KK_ISA_AVX2) && !defined(KK_ISA_AVX512)
constexpr int kGemvCols = 2;
#else
constexpr int kGemvCols = 4;
#endif

template <typename T, int MB>
void int8_rows(const LowbitParams& p, const QuantRows& qr, int64_t m0, int64_t n0, int64_t n1) {
  constexpr int NB = MB == 1 ? kGemvCols : 4;
  int64_t n = n0;
  for (; n + NB <= n1; n += NB) int8_tile<MB, NB, T>(p, qr, m0, n);
  for (; n < n1; ++n) int8_tile<MB, 1, T>(p, qr, m0, n);
}

// Activation rows per tile: each decoded weight register feeds kRowsPerTile
// multiply-adds. 4 x 4 tiles fill the 32 avx512 registers without spills (gcc
// spills 6 x 4); avx2 has 16 registers, so 2 x 4.
#if defined(KK_ISA_AVX512)
constexpr int kRowsPerTile = 4;
#else
constexpr int kRowsPerTile = 2;
#endif

template <typename T>
void int8_all_rows(const LowbitParams& p, const QuantRows& qr, int64_t n0, int64_t n1) {
  int64_t m = 0;
  for (; m + kRowsPerTile <= p.M; m += kRowsPerTile) int8_rows<T, kRowsPerTile>(p, qr, m, n0, n1);
  switch (p.M - m) {
    case 0: return;
    case 3: return int8_rows<T, 3>(p, qr, m, n0, n1);
    case 2: return int8_rows<T, 2>(p, qr, m, n0, n1);
    default: return int8_rows<T, 1>(p, qr, m, n0, n1);
  }
}

template <typename T>
void ternary_int8(const LowbitParams& p) {
  QuantRows qr(p.M, round_up(p.Kp, kXChunk));
  quantize_rows<T>(p, qr, arranged);
  // split over output features in groups of 4 rows
  const int64_t groups = (p.N + 3) / 4;
  parallel_for(groups, p.threads, gemv_group_grain(p), [&](int64_t g0, int64_t g1) {
    int8_all_rows<T>(p, qr, g0 * 4, std::min(p.N, g1 * 4));
  });
}

// ----------------------------------------------------------------------------- float activations

// Expands one binary row to fp32 {-1, 1} (Kp entries, a multiple of 64).
inline void expand_binary(const uint8_t* w, int64_t Kp, float* out) {
#if defined(KK_ISA_AVX512)
  const __m512 one = _mm512_set1_ps(1.f), neg = _mm512_set1_ps(-1.f);
  for (int64_t k = 0; k < Kp; k += 16) {  // 16 bits of the row are a lane mask
    const __mmask16 m = __mmask16(w[k / 8] | (w[k / 8 + 1] << 8));
    _mm512_storeu_ps(out + k, _mm512_mask_blend_ps(m, neg, one));
  }
#elif defined(KK_ISA_AVX2)
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256 one = _mm256_set1_ps(1.f), neg = _mm256_set1_ps(-1.f);
  for (int64_t k = 0; k < Kp; k += 8) {
    const __m256i set = _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(w[k / 8]), bit), bit);
    _mm256_storeu_ps(out + k, _mm256_blendv_ps(neg, one, _mm256_castsi256_ps(set)));
  }
#else
  for (int64_t k = 0; k < Kp; ++k) out[k] = (w[k >> 3] >> (k & 7)) & 1 ? 1.f : -1.f;
#endif
}

template <bool Binary>
void expand_row(const LowbitParams& p, int64_t n, float* out) {
  if (Binary) expand_binary(p.packed + n * (p.Kp / 8), p.Kp, out);
  else expand_ternary(p.packed + n * (p.Kp / 4), p.Kp, out);
}

// Activation rows from which the float paths expand panels of weight rows and run
// them through the fp32 GEMM (below: one dot product per output).
constexpr int64_t kGemmRows = 64;
constexpr int64_t kPanelRows = 128;

template <typename T, bool Binary>
void float_path(const LowbitParams& p) {
  Buf<float> xf(size_t(p.M * p.K) + 64);
  parallel_for(p.M, p.threads, 16, [&](int64_t m0, int64_t m1) {
    for (int64_t m = m0; m < m1; ++m) widen(xf.p + m * p.K, static_cast<const T*>(p.x) + m * p.x_rs, p.K);
  });
  auto sw = [&](int64_t n) { return p.scale[(Binary || p.per_row_scale) ? n : 0]; };
  if (p.M >= kGemmRows) {
    const int64_t panels = (p.N + kPanelRows - 1) / kPanelRows;
    parallel_for(panels, p.threads, 1, [&](int64_t g0, int64_t g1) {
      Buf<float> w(size_t(kPanelRows * p.Kp)), c(size_t(p.M * kPanelRows));
      for (int64_t g = g0; g < g1; ++g) {
        const int64_t n0 = g * kPanelRows, rows = std::min(kPanelRows, p.N - n0);
        for (int64_t r = 0; r < rows; ++r) expand_row<Binary>(p, n0 + r, w.p + r * p.Kp);
        // c (M x rows) = x (M x K) . panel^T: the panel's rows are the columns of B
        sgemm_cpu(SgemmParams{xf.p, p.K, 1, w.p, 1, p.Kp, c.p, rows, p.M, rows, p.K, 1});
        for (int64_t m = 0; m < p.M; ++m)
          for (int64_t r = 0; r < rows; ++r) store_out<T>(p, m, n0 + r, c[m * rows + r] * sw(n0 + r));
      }
    });
    return;
  }
  parallel_for(p.N, p.threads, 4, [&](int64_t n0, int64_t n1) {
    Buf<float> w(size_t(p.Kp) + 64);
    for (int64_t n = n0; n < n1; ++n) {
      expand_row<Binary>(p, n, w.p);
      for (int64_t m = 0; m < p.M; ++m) store_out<T>(p, m, n, dot(w.p, xf.p + m * p.K, p.K) * sw(n));
    }
  });
}

// ----------------------------------------------------------------------------- binary XNOR

#if defined(KK_ISA_AVX512)
// One step of 8 words (512 weights) of an XNOR tile; m masks the words that exist.
template <int MB, int NB, bool Masked>
__attribute__((always_inline)) inline void xnor_step(__m512i (&acc)[MB][NB], const uint64_t* const* x,
                                                     const uint64_t* const* w, int64_t i, __mmask8 m) {
  __m512i wv[NB];
  for (int b = 0; b < NB; ++b) wv[b] = Masked ? _mm512_maskz_loadu_epi64(m, w[b] + i) : _mm512_loadu_si512(w[b] + i);
  for (int a = 0; a < MB; ++a) {
    const __m512i xv = Masked ? _mm512_maskz_loadu_epi64(m, x[a] + i) : _mm512_loadu_si512(x[a] + i);
    for (int b = 0; b < NB; ++b) acc[a][b] = _mm512_add_epi64(acc[a][b], _mm512_popcnt_epi64(_mm512_xor_si512(xv, wv[b])));
  }
}
#endif

// Popcounts of x_a xor w_b for MB activation rows and NB weight rows at once
// (each loaded word serves several pairs).
template <int MB, int NB>
void xnor_tile(const uint64_t* const* x, const uint64_t* const* w, int64_t words, int64_t (&pc)[MB][NB]) {
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) pc[a][b] = 0;
  int64_t i = 0;
#if defined(KK_ISA_AVX512)
  __m512i acc[MB][NB];
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) acc[a][b] = _mm512_setzero_si512();
  // full steps without a branch in the loop (gcc keeps the accumulators in registers then)
  for (; i + 8 <= words; i += 8) xnor_step<MB, NB, false>(acc, x, w, i, 0xff);
  if (i < words) xnor_step<MB, NB, true>(acc, x, w, i, __mmask8((1u << (words - i)) - 1));
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b) pc[a][b] = _mm512_reduce_add_epi64(acc[a][b]);
#else
  for (; i < words; ++i)
    for (int a = 0; a < MB; ++a)
      for (int b = 0; b < NB; ++b) pc[a][b] += __builtin_popcountll(x[a][i] ^ w[b][i]);
#endif
}

template <typename T, int MB, int NB>
void xnor_block(const LowbitParams& p, const uint64_t* xb, const float* beta, int64_t m0, int64_t n0) {
  const int64_t words = p.Kp / 64;
  const uint64_t* x[MB];
  const uint64_t* w[NB];
  for (int a = 0; a < MB; ++a) x[a] = xb + (m0 + a) * words;
  for (int b = 0; b < NB; ++b) w[b] = reinterpret_cast<const uint64_t*>(p.packed + (n0 + b) * (p.Kp / 8));
  int64_t pc[MB][NB];
  xnor_tile<MB, NB>(x, w, words, pc);
  for (int a = 0; a < MB; ++a)
    for (int b = 0; b < NB; ++b)  // padding bits are 0 in both operands: only real bits can disagree
      store_out<T>(p, m0 + a, n0 + b, float(p.K - 2 * pc[a][b]) * beta[m0 + a] * p.scale[n0 + b]);
}

template <typename T, int MB>
void xnor_rows(const LowbitParams& p, const uint64_t* xb, const float* beta, int64_t m0, int64_t n0, int64_t n1) {
  int64_t n = n0;
  for (; n + 4 <= n1; n += 4) xnor_block<T, MB, 4>(p, xb, beta, m0, n);
  for (; n < n1; ++n) xnor_block<T, MB, 1>(p, xb, beta, m0, n);
}

template <typename T>
void binary_xnor(const LowbitParams& p) {
  const int64_t words = p.Kp / 64;
  Buf<uint64_t> xb(size_t(p.M * words) + 8);
  Buf<float> beta(size_t(p.M));
  parallel_for(p.M, p.threads, 4, [&](int64_t m0, int64_t m1) {
    Buf<float> xf(size_t(p.K) + 64);
    for (int64_t m = m0; m < m1; ++m) {
      widen(xf.p, static_cast<const T*>(p.x) + m * p.x_rs, p.K);
      uint64_t* bits = xb.p + m * words;
      std::memset(bits, 0, sizeof(uint64_t) * words);
      double s = 0;
      for (int64_t k = 0; k < p.K; ++k) {
        s += std::fabs(xf[k]);
        if (xf[k] >= 0.f) bits[k >> 6] |= uint64_t(1) << (k & 63);
      }
      beta[m] = float(s / double(p.K));
    }
  });
  const int64_t groups = (p.N + 3) / 4;
  parallel_for(groups, p.threads, gemv_group_grain(p), [&](int64_t g0, int64_t g1) {
    const int64_t n0 = g0 * 4, n1 = std::min(p.N, g1 * 4);
    int64_t m = 0;
    for (; m + 4 <= p.M; m += 4) xnor_rows<T, 4>(p, xb.p, beta.p, m, n0, n1);
    for (; m < p.M; ++m) xnor_rows<T, 1>(p, xb.p, beta.p, m, n0, n1);
  });
}

template <template <typename> class Fn>
void by_dtype(const LowbitParams& p) {
  switch (p.dtype) {
    case DType::f32: return Fn<float>::run(p);
    case DType::bf16: return Fn<bf16_t>::run(p);
    case DType::f16: return Fn<f16_t>::run(p);
    default: throw std::invalid_argument("low-bit linear: x must be float32, bfloat16 or float16");
  }
}

template <typename T> struct TernaryRun {
  static void run(const LowbitParams& p) { p.act_bits == 8 ? ternary_int8<T>(p) : float_path<T, false>(p); }
};
template <typename T> struct BinaryRun {
  static void run(const LowbitParams& p) { p.binarize_input ? binary_xnor<T>(p) : float_path<T, true>(p); }
};

}  // namespace

void ternary_linear_cpu(const LowbitParams& p) { by_dtype<TernaryRun>(p); }
void binary_linear_cpu(const LowbitParams& p) { by_dtype<BinaryRun>(p); }

}  // namespace KK_ISA_NS
}  // namespace kernkit
