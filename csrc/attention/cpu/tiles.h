// Building blocks of the CPU flash-attention kernels (forward and backward),
// compiled per ISA level. The kernels work in a transposed layout: a tile of
// scores is S^T[key j][row r], vectorised over BQ query rows, so the online
// softmax statistics (one per row) are plain vector ops and neither K nor V is
// ever transposed. Rows are (query i, head g of the KV group) pairs ordered
// r = i * group + g: all query heads sharing a KV head share the K/V tiles, and
// the rows one key may see stay a contiguous range.
#pragma once
#include <climits>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <vector>

#include "attention/attention.h"
#include "common/parallel.h"
#include "common/vec.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace attn {

#if defined(KK_ISA_AVX512)
constexpr int QV = 2, JR = 8, CR = 8, NR = 4;
#elif defined(KK_ISA_AVX2)
constexpr int QV = 2, JR = 4, CR = 4, NR = 2;
#else
constexpr int QV = 8, JR = 4, CR = 4, NR = 4;
#endif
constexpr int BQ = QV * Vec::size;   // query rows per tile
constexpr int BK = 64;               // keys per tile
constexpr float kNegInf = -INFINITY;

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// One sequence of the batch: lengths, global row offsets (varlen), diagonal offset.
struct Seq {
  int b, q_len, k_len, off;
  int64_t q_row0, k_row0;
};

inline Seq seq_of(const AttnShape& s, int b) {
  Seq q;
  q.b = b;
  q.q_row0 = s.cu_q ? s.cu_q[b] : 0;
  q.k_row0 = s.cu_k ? s.cu_k[b] : 0;
  q.q_len = s.cu_q ? s.cu_q[b + 1] - s.cu_q[b] : s.Sq;
  q.k_len = s.cu_k ? s.cu_k[b + 1] - s.cu_k[b] : s.Sk;
  if (s.seqused_k) q.k_len = s.seqused_k[b];
  q.off = q.k_len - q.q_len + s.diag_shift;
  return q;
}

template <typename T>
inline T* elem(const AttnTensor& t, const Seq& s, int64_t row, int64_t row0, int h) {
  return static_cast<T*>(const_cast<void*>(t.ptr)) + s.b * t.bs + (row0 + row) * t.rs + h * t.hs;
}

// Query rows that key j may see, as the row range [rlo, rhi] (empty if rlo > rhi).
inline void visible_rows(const AttnMask& m, const Seq& s, int group, int j, int& rlo, int& rhi) {
  if (j >= s.k_len) { rlo = 1; rhi = 0; return; }
  long ilo = 0, ihi = s.q_len - 1;
  if (m.right >= 0) ilo = std::max<long>(ilo, long(j) - s.off - m.right);     // j <= i + off + right
  if (m.left >= 0 && j >= m.sinks) ihi = std::min<long>(ihi, long(j) - s.off + m.left);  // j >= i + off - left
  if (ilo > ihi) { rlo = 1; rhi = 0; return; }
  rlo = int(ilo * group);
  rhi = int(ihi * group + group - 1);
}

// Whether every key of the tile [j0, j0 + nk) is visible to every real row of [r0, r0 + BQ).
inline bool tile_fully_visible(const AttnMask& m, const Seq& s, int group, int j0, int r0, int nk) {
  const int r_last = std::min(r0 + BQ, s.q_len * group) - 1;
  for (int jj = 0; jj < nk; ++jj) {
    int lo, hi;
    visible_rows(m, s, group, j0 + jj, lo, hi);
    if (lo > r0 || hi < r_last) return false;
  }
  return true;
}

// Key range [jlo, jhi] and sink range [0, sink_hi] visible to query rows [r0, r1).
struct KeySpan { int sink_hi, jlo, jhi; };

inline KeySpan key_span(const AttnMask& m, const Seq& s, int group, int r0, int r1) {
  const long i0 = r0 / group, i1 = (r1 - 1) / group;
  long jlo = 0, jhi = s.k_len - 1;
  if (m.left >= 0) jlo = std::max<long>(0, i0 + s.off - m.left);
  if (m.right >= 0) jhi = std::min<long>(jhi, i1 + s.off + m.right);
  const long sink_hi = std::min<long>(std::min<long>(m.sinks, s.k_len) - 1, jhi);
  return {int(sink_hi), int(jlo), int(jhi)};
}

// Calls f(j0, nk) for key tiles [j0, j0 + nk), nk <= BK, covering exactly the sink
// range and then the window band visible to some row of [r0, r1), in order and each
// key once. Tiles start where the visible keys start (not at multiples of BK), so a
// window or a handful of sinks does not drag in a whole tile of masked keys.
template <typename F>
inline void for_each_key_tile(const KeySpan& ks, const F& f) {
  const int sink_end = ks.sink_hi + 1;  // 0 when there are no sinks
  for (int j0 = 0; j0 < sink_end; j0 += BK) f(j0, std::min(BK, sink_end - j0));
  const int band_end = ks.jhi + 1;
  for (int j0 = std::max(ks.jlo, sink_end); j0 < band_end; j0 += BK) f(j0, std::min(BK, band_end - j0));
}

// dst[0..n) = float(src[0..n)), then zeros up to `padded`.
template <typename T>
inline void load_row(float* dst, const T* src, int n, int padded) {
  widen(dst, src, n);
  for (int i = n; i < padded; ++i) dst[i] = 0.f;
}

template <typename T>
inline void store_row(T* dst, const float* src, int n) {
  int i = 0;
  for (; i + Vec::size <= n; i += Vec::size) Vec::load(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// Loads keys [j0, j0 + n) of one KV head into a BK x ld fp32 tile (zero rows after).
template <typename T>
inline void load_tile(float* dst, int ld, const AttnTensor& t, const Seq& s, int h, int j0, int n, int width) {
  for (int jj = 0; jj < BK; ++jj) {
    if (jj < n) load_row(dst + jj * ld, elem<const T>(t, s, j0 + jj, s.k_row0, h), width, ld);
    else std::memset(dst + jj * ld, 0, sizeof(float) * ld);
  }
}

// Which pieces (key blocks, row tiles) of one (batch, kv head)'s packed rows a worker holds. The
// engines pack what their loops read many times once per head instead of once per tile pair:
// copying a tile out of the head-interleaved layout for every pair cost about as much as the two
// products (AVX2, 1k-token forward). Engines are a worker's, made per call: nothing outlives it.
struct HeadCache {
  static constexpr int64_t kMaxBytes = int64_t(16) << 20;  // larger heads are packed per tile
  std::vector<char> packed;
  int b = -1, h = -1;
  // Whether head (s.b, hkv) may be cached in `bytes`; forgets the old head's pieces on a change.
  bool use(const Seq& s, int hkv, int64_t bytes, size_t pieces) {
    if (bytes > kMaxBytes) return false;
    if (b != s.b || h != hkv) {
      packed.assign(pieces, 0);
      b = s.b, h = hkv;
    }
    return true;
  }
};

// The K/V rows of one head widened to fp32, ldk / ldv floats apart, packed in blocks of BK keys on
// first use (rows past k_len are zeros; JR rows of slack: tile reads reach j0 + round_up(nk, JR)).
template <typename T>
struct PackedHeadKV {
  std::vector<float> k, v;
  HeadCache blocks;
  // Points kt / vt at rows j0.. of head (s.b, hkv), packing the blocks [j0, j0 + nk) touches;
  // false (nothing done) when the head is too large.
  bool load(const AttnTensor& kin, const AttnTensor& vin, const Seq& s, int hkv, int j0, int nk, int D, int ldk,
            int Dv, int ldv, const float*& kt, const float*& vt) {
    const size_t rows = size_t(round_up(s.k_len, BK)) + JR;
    if (!blocks.use(s, hkv, int64_t(rows * (ldk + ldv) * sizeof(float)), rows / BK + 1)) return false;
    if (k.size() < rows * ldk) k.assign(rows * ldk, 0.f);
    if (v.size() < rows * ldv) v.assign(rows * ldv, 0.f);
    for (int blk = j0 / BK; blk * BK < j0 + nk; ++blk)
      if (!blocks.packed[blk]) {
        const int n = std::min(BK, s.k_len - blk * BK);
        load_tile<T>(k.data() + size_t(blk) * BK * ldk, ldk, kin, s, hkv, blk * BK, n, D);
        load_tile<T>(v.data() + size_t(blk) * BK * ldv, ldv, vin, s, hkv, blk * BK, n, Dv);
        blocks.packed[blk] = 1;
      }
    kt = k.data() + size_t(j0) * ldk;
    vt = v.data() + size_t(j0) * ldv;
    return true;
  }
};

// C[j][0..BQ) = sum_{d<D} A[j][d] * Bt[d][0..BQ) for j < nrows (rounded up to JR).
inline void tile_scores(float* C, const float* A, int lda, const float* Bt, int D, int nrows) {
  for (int j0 = 0; j0 < nrows; j0 += JR) {
    Vec acc[JR][QV];
    for (int r = 0; r < JR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = Vec::zero();
    const float* a = A + j0 * lda;
    for (int d = 0; d < D; ++d) {
      Vec b[QV];
      for (int v = 0; v < QV; ++v) b[v] = Vec::load(Bt + d * BQ + v * Vec::size);
      for (int r = 0; r < JR; ++r) {
        const Vec ar = Vec::set1(a[r * lda + d]);
        for (int v = 0; v < QV; ++v) acc[r][v] = fma(ar, b[v], acc[r][v]);
      }
    }
    for (int r = 0; r < JR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v].store(C + (j0 + r) * BQ + v * Vec::size);
  }
}

// Ct[c][0..BQ) += sum_{j<nk} A[j][c] * Pt[j][0..BQ) for c < ncols (ncols a multiple of CR).
inline void tile_acc_t(float* Ct, const float* A, int lda, int ncols, const float* Pt, int nk) {
  for (int c0 = 0; c0 < ncols; c0 += CR) {
    Vec acc[CR][QV];
    for (int r = 0; r < CR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = Vec::load(Ct + (c0 + r) * BQ + v * Vec::size);
    for (int j = 0; j < nk; ++j) {
      Vec p[QV];
      for (int v = 0; v < QV; ++v) p[v] = Vec::load(Pt + j * BQ + v * Vec::size);
      const float* a = A + j * lda + c0;
      for (int r = 0; r < CR; ++r) {
        const Vec ar = Vec::set1(a[r]);
        for (int v = 0; v < QV; ++v) acc[r][v] = fma(ar, p[v], acc[r][v]);
      }
    }
    for (int r = 0; r < CR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v].store(Ct + (c0 + r) * BQ + v * Vec::size);
  }
}

// C[j][0..ncols) += sum_{r<BQ} Pt[j][r] * B[r][0..ncols) for j < nk (rounded up to 4);
// ncols a multiple of NR * Vec::size, ldc = ldb = ncols.
inline void tile_acc_n(float* C, const float* Pt, const float* B, int ncols, int nk) {
  constexpr int JB = 4;
  for (int j0 = 0; j0 < nk; j0 += JB) {
    for (int c0 = 0; c0 < ncols; c0 += NR * Vec::size) {
      Vec acc[JB][NR];
      for (int r = 0; r < JB; ++r)
        for (int v = 0; v < NR; ++v) acc[r][v] = Vec::load(C + (j0 + r) * ncols + c0 + v * Vec::size);
      for (int i = 0; i < BQ; ++i) {
        Vec b[NR];
        for (int v = 0; v < NR; ++v) b[v] = Vec::load(B + i * ncols + c0 + v * Vec::size);
        for (int r = 0; r < JB; ++r) {
          const Vec p = Vec::set1(Pt[(j0 + r) * BQ + i]);
          for (int v = 0; v < NR; ++v) acc[r][v] = fma(p, b[v], acc[r][v]);
        }
      }
      for (int r = 0; r < JB; ++r)
        for (int v = 0; v < NR; ++v) acc[r][v].store(C + (j0 + r) * ncols + c0 + v * Vec::size);
    }
  }
}

// Scale (when the scores were computed from unscaled q), softcap (keeping tanh
// for the backward when `tanh_out` is set) and the mask,
// applied to a BK x BQ score tile whose rows start at key j0 and columns at row r0.
// Invisible scores become `fill`.
inline void cap_and_mask(float* St, float* tanh_out, const AttnMask& m, const Seq& s, int group, int j0, int r0,
                         int nk, float fill, float post_scale = 1.f) {
  const bool cap = m.softcap > 0.f, rescale = post_scale != 1.f;
  if (!cap && !rescale && tile_fully_visible(m, s, group, j0, r0, nk)) return;
  const Vec ps = Vec::set1(post_scale);
  const Vec c = Vec::set1(m.softcap), inv_c = Vec::set1(cap ? 1.f / m.softcap : 0.f);
  for (int jj = 0; jj < nk; ++jj) {
    int rlo, rhi;
    visible_rows(m, s, group, j0 + jj, rlo, rhi);
    for (int v = 0; v < QV; ++v) {
      float* p = St + jj * BQ + v * Vec::size;
      Vec x = Vec::load(p);
      if (rescale) x = x * ps;
      if (cap) {
        const Vec t = tanh(x * inv_c);
        if (tanh_out) t.store(tanh_out + jj * BQ + v * Vec::size);
        x = c * t;
      }
      keep_range(x, r0 + v * Vec::size, rlo, rhi, fill).store(p);
    }
  }
}

inline float sigmoid_bias_of(const AttnMask& m, const Seq& s, int h) {
  return m.sigmoid_bias ? m.sigmoid_bias[h]
         : m.sigmoid_bias_default ? -std::log(float(std::max(s.k_len, 1)))
                                  : m.sigmoid_bias_value;
}

// Per-row sigmoid bias (rows of one tile may belong to different heads).
inline void sigmoid_bias_lanes(float* out, const AttnMask& m, const Seq& s, int hkv, int group, int r0) {
  for (int rr = 0; rr < BQ; ++rr) out[rr] = sigmoid_bias_of(m, s, hkv * group + (r0 + rr) % group);
}

// Merges partial attention results over disjoint key sets, R rows of
// [unnormalised output (Dv), running max m, sum l]: b is folded into a.
inline void merge_partial(float* a, const float* b, int R, int Dv, bool softmax) {
  for (int r = 0; r < R; ++r) {
    float* x = a + size_t(r) * (Dv + 2);
    const float* y = b + size_t(r) * (Dv + 2);
    float ea = 1.f, eb = 1.f;
    if (softmax) {
      const float m = std::max(x[Dv], y[Dv]);
      if (m == kNegInf) continue;
      ea = std::exp(x[Dv] - m);
      eb = std::exp(y[Dv] - m);
      x[Dv] = m;
      x[Dv + 1] = ea * x[Dv + 1] + eb * y[Dv + 1];
    }
    for (int c = 0; c < Dv; ++c) x[c] = ea * x[c] + eb * y[c];
  }
}

void decode_fwd(const AttnFwdParams& p);  // flash_decode.cpp
constexpr int kMaxDecodeRows = 8;         // Sq * group at or below this: decode path

// Qt[d][rr] = scale * q[row r0+rr][d] (zeros past the sequence); optional natural
// copy Qn[rr][0..ldn) for the backward.
template <typename T>
inline void pack_rows_t(float* Qt, float* Qn, int ldn, const AttnTensor& t, const Seq& s, int hkv, int group,
                        int r0, int D, float scale, float* tmp) {
  const int rows = s.q_len * group;
  for (int rr = 0; rr < BQ; ++rr) {
    const int r = r0 + rr;
    if (r < rows) {
      load_row(tmp, elem<const T>(t, s, r / group, s.q_row0, hkv * group + r % group), D, D);
      for (int d = 0; d < D; ++d) tmp[d] *= scale;
    } else {
      std::memset(tmp, 0, sizeof(float) * D);
    }
    for (int d = 0; d < D; ++d) Qt[d * BQ + rr] = tmp[d];
    if (Qn) {
      std::memcpy(Qn + rr * ldn, tmp, sizeof(float) * D);
      std::memset(Qn + rr * ldn + D, 0, sizeof(float) * (ldn - D));
    }
  }
}

// Prefix sums of per-sequence task counts, so a flat task index maps to (b, local).
struct TaskMap {
  Buf<int64_t> start;
  int B;
  template <typename Count>
  TaskMap(int B_, const Count& count) : start(size_t(B_) + 1), B(B_) {
    start[0] = 0;
    for (int b = 0; b < B; ++b) start[b + 1] = start[b] + count(b);
  }
  int64_t total() { return start[B]; }
  void locate(int64_t t, int& b, int64_t& local) {
    int lo = 0, hi = B - 1;  // last b with start[b] <= t
    while (lo < hi) {
      const int mid = (lo + hi + 1) / 2;
      if (start[mid] <= t) lo = mid; else hi = mid - 1;
    }
    b = lo;
    local = t - start[lo];
  }
};

#if defined(KK_ISA_AVX512)
// ---------------------------------------------------------------------------
// bf16 tiles (AVX512_BF16): vdpbf16ps multiplies bf16 *pairs* and adds both
// products into an fp32 lane, so operands are laid out as pairs along the
// reduction axis. Pair arrays are uint32 (two bf16) so one element = one pair.

// 16 pairs (a[c], b[c]) from two vectors of 16 bf16.
inline __m512i interleave_halves(__m256i a, __m256i b) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1));
}

inline __m512i interleave16(const uint16_t* a, const uint16_t* b) {
  return interleave_halves(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(a)),
                           _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b)));
}

// Two fp32 rows of 16 lanes -> 16 bf16 pairs (round to nearest even).
inline __m512i pack_pair_rows(const float* r0, const float* r1) {
  return interleave_halves((__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r0)),
                           (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(r1)));
}

// Pairs over rows: Rp[rp][c] = (x[r0+2rp][c], x[r0+2rp+1][c]) for c < ld (a multiple of 16),
// zeros past the width and past the last row.
inline void pack_row_pairs(uint32_t* Rp, int ld, const AttnTensor& t, const Seq& s, int hkv, int group, int r0,
                           int width) {
  const int rows = s.q_len * group;
  auto row = [&](int r) -> const uint16_t* {
    if (r >= rows) return nullptr;
    return reinterpret_cast<const uint16_t*>(elem<const bf16_t>(t, s, r / group, s.q_row0, hkv * group + r % group));
  };
  for (int rp = 0; rp < BQ / 2; ++rp) {
    const uint16_t* a = row(r0 + 2 * rp);
    const uint16_t* b = row(r0 + 2 * rp + 1);
    for (int c = 0; c < ld; c += 16) {
      const int n = std::max(0, std::min(16, width - c));
      const __mmask16 m = n >= 16 ? __mmask16(0xffff) : __mmask16((1u << n) - 1);
      const __m256i va = a ? _mm256_maskz_loadu_epi16(m, a + c) : _mm256_setzero_si256();
      const __m256i vb = b ? _mm256_maskz_loadu_epi16(m, b + c) : _mm256_setzero_si256();
      _mm512_storeu_si512(Rp + rp * ld + c, interleave_halves(va, vb));
    }
  }
}

// fp32 BK x BQ tile rows [0, nk) -> bf16, same layout (pairs along rows r are adjacent).
inline void tile_to_bf16(uint16_t* dst, const float* src, int nk) {
  for (int i = 0; i < nk * BQ; i += 16)
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(src + i)));
}

// C[j][0..ncols) += sum_rp P[j][2rp..2rp+1] . Bp[rp][0..ncols) for j < nk (rounded up to 4);
// P is bf16 [BK][BQ], Bp pairs over rows [BQ/2][ncols], ncols a multiple of NR * 16.
inline void tile_acc_n_bf16(float* C, const uint16_t* P, const uint32_t* Bp, int ncols, int nk) {
  constexpr int JB = 4;
  for (int j0 = 0; j0 < nk; j0 += JB)
    for (int c0 = 0; c0 < ncols; c0 += NR * 16) {
      __m512 acc[JB][NR];
      for (int r = 0; r < JB; ++r)
        for (int v = 0; v < NR; ++v) acc[r][v] = _mm512_loadu_ps(C + (j0 + r) * ncols + c0 + v * 16);
      for (int rp = 0; rp < BQ / 2; ++rp) {
        __m512bh b[NR];
        for (int v = 0; v < NR; ++v) b[v] = (__m512bh)_mm512_loadu_si512(Bp + rp * ncols + c0 + v * 16);
        for (int r = 0; r < JB; ++r) {
          uint32_t pair;
          std::memcpy(&pair, P + (j0 + r) * BQ + 2 * rp, 4);
          const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
          for (int v = 0; v < NR; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
        }
      }
      for (int r = 0; r < JB; ++r)
        for (int v = 0; v < NR; ++v) _mm512_storeu_ps(C + (j0 + r) * ncols + c0 + v * 16, acc[r][v]);
    }
}

// Qp[p][rr] = (q[r][2p], q[r][2p+1]) for the BQ rows at r0 (unscaled; zeros past the end).
inline void pack_rows_pairs(uint32_t* Qp, int Dh, const AttnTensor& t, const Seq& s, int hkv, int group, int r0,
                            int D) {
  const int rows = s.q_len * group;
  for (int rr = 0; rr < BQ; ++rr) {
    const int r = r0 + rr;
    if (r >= rows) {
      for (int p = 0; p < Dh; ++p) Qp[p * BQ + rr] = 0;
      continue;
    }
    const uint16_t* q = reinterpret_cast<const uint16_t*>(elem<const bf16_t>(t, s, r / group, s.q_row0, hkv * group + r % group));
    for (int p = 0; p < Dh; ++p) {
      const uint32_t lo = q[2 * p], hi = 2 * p + 1 < D ? q[2 * p + 1] : 0;
      Qp[p * BQ + rr] = lo | (hi << 16);
    }
  }
}

// Keys [j0, j0 + n) as bf16 rows of width ld (a multiple of 32, zero padded; zero rows after).
inline void load_tile_bf16(uint16_t* dst, int ld, const AttnTensor& t, const Seq& s, int h, int j0, int n,
                           int width) {
  for (int jj = 0; jj < BK; ++jj) {
    uint16_t* d = dst + jj * ld;
    if (jj >= n) { std::memset(d, 0, 2 * size_t(ld)); continue; }
    const uint16_t* src = reinterpret_cast<const uint16_t*>(elem<const bf16_t>(t, s, j0 + jj, s.k_row0, h));
    for (int c = 0; c < ld; c += 32) {
      const int n = std::min(32, width - c);
      const __mmask32 m = n >= 32 ? __mmask32(0xffffffffu) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1);
      _mm512_storeu_si512(d + c, _mm512_maskz_loadu_epi16(m, src + c));
    }
  }
}

// Values as pairs over keys: Vp[jp][c] = (V[2jp][c], V[2jp+1][c]), ld columns (multiple of 16).
inline void pair_tile_rows(uint32_t* Vp, const uint16_t* V, int ld, int nk) {
  for (int jp = 0; jp < (nk + 1) / 2; ++jp) {
    const uint16_t* a = V + (2 * jp) * ld;
    const uint16_t* b = V + (2 * jp + 1) * ld;  // a zero row when 2jp+1 == nk (tiles are zero padded)
    for (int c = 0; c < ld; c += 16) _mm512_storeu_si512(Vp + jp * ld + c, interleave16(a + c, b + c));
  }
}

// For each group of JR keys at j0: acc[r][v] = sum_p Kb[j0+r][2p..2p+1] . Qp[p][16v..16v+16),
// handed to epilogue(j0, acc) (nrows a multiple of JR).
template <typename Epilogue>
inline void tile_scores_bf16_with(const uint16_t* Kb, int ldk, const uint32_t* Qp, int Dh, int nrows,
                                  const Epilogue& epilogue) {
  for (int j0 = 0; j0 < nrows; j0 += JR) {
    __m512 acc[JR][QV];
    for (int r = 0; r < JR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = _mm512_setzero_ps();
    for (int p = 0; p < Dh; ++p) {
      __m512bh b[QV];
      for (int v = 0; v < QV; ++v) b[v] = (__m512bh)_mm512_loadu_si512(Qp + p * BQ + v * 16);
      for (int r = 0; r < JR; ++r) {
        uint32_t pair;
        std::memcpy(&pair, Kb + (j0 + r) * ldk + 2 * p, 4);
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(pair));
        for (int v = 0; v < QV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, b[v]);
      }
    }
    epilogue(j0, acc);
  }
}

// St[j][0..BQ) = sum_p Kb[j][2p..2p+1] . Qp[p][0..BQ) for j < nrows (a multiple of JR).
inline void tile_scores_bf16(float* St, const uint16_t* Kb, int ldk, const uint32_t* Qp, int Dh, int nrows) {
  tile_scores_bf16_with(Kb, ldk, Qp, Dh, nrows, [&](int j0, __m512 (&acc)[JR][QV]) {
    for (int r = 0; r < JR; ++r)
      for (int v = 0; v < QV; ++v) _mm512_storeu_ps(St + (j0 + r) * BQ + v * 16, acc[r][v]);
  });
}

// Ct[c][0..BQ) += sum_jp Ap[jp][c] . Pp[jp][0..BQ) for c < ncols (a multiple of CR).
inline void tile_acc_t_bf16(float* Ct, const uint32_t* Ap, int lda, int ncols, const uint32_t* Pp, int npairs) {
  for (int c0 = 0; c0 < ncols; c0 += CR) {
    __m512 acc[CR][QV];
    for (int r = 0; r < CR; ++r)
      for (int v = 0; v < QV; ++v) acc[r][v] = _mm512_loadu_ps(Ct + (c0 + r) * BQ + v * 16);
    for (int jp = 0; jp < npairs; ++jp) {
      __m512bh p[QV];
      for (int v = 0; v < QV; ++v) p[v] = (__m512bh)_mm512_loadu_si512(Pp + jp * BQ + v * 16);
      for (int r = 0; r < CR; ++r) {
        const __m512bh a = (__m512bh)_mm512_set1_epi32(int(Ap[jp * lda + c0 + r]));
        for (int v = 0; v < QV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], a, p[v]);
      }
    }
    for (int r = 0; r < CR; ++r)
      for (int v = 0; v < QV; ++v) _mm512_storeu_ps(Ct + (c0 + r) * BQ + v * 16, acc[r][v]);
  }
}

// sigmoid(z) to ~1e-4 relative error, for probabilities about to be rounded to
// bf16: z clamped to +-30 (where sigmoid is 0/1 to fp32 precision) so exp needs
// no overflow handling; degree-3 exp polynomial scaled by 2^n with vscalefps;
// the 14-bit reciprocal estimate without a Newton step.
inline __m512 sigmoid_bf16(__m512 z) {
  const __m512 t = _mm512_min_ps(_mm512_max_ps(z, _mm512_set1_ps(-30.f)), _mm512_set1_ps(30.f));
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(t, _mm512_set1_ps(-1.44269504f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693147181f), _mm512_sub_ps(_mm512_setzero_ps(), t));
  __m512 p = _mm512_fmadd_ps(_mm512_set1_ps(1.f / 6.f), r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.f));
  return _mm512_rcp14_ps(_mm512_add_ps(_mm512_scalef_ps(p, n), _mm512_set1_ps(1.f)));
}

// Score rows [0, nk) of an fp32 BK x BQ tile as pairs over keys (row nk.. treated as zero).
inline void pack_prob_pairs(uint32_t* Pp, float* St, int nk) {
  if (nk % 2) std::memset(St + nk * BQ, 0, sizeof(float) * BQ);
  for (int jp = 0; jp < (nk + 1) / 2; ++jp)
    for (int v = 0; v < QV; ++v)
      _mm512_storeu_si512(Pp + jp * BQ + v * 16,
                          pack_pair_rows(St + (2 * jp) * BQ + v * 16, St + (2 * jp + 1) * BQ + v * 16));
}

// The bf16 engine's PackedHeadKV: K rows as they come (ldk bf16 apart) and V as key pairs
// (pair_tile_rows, ldv pairs apart), packed in blocks of BK keys on first use. Reading K/V rows
// straight from a (B, S, H, D) input every query tile cost ~20% of the forward (strided rows,
// a cache and TLB miss each). Tiles must start at an even key (pairs); others are not served.
struct PackedHeadKVBf16 {
  std::vector<uint16_t> k, tmp;
  std::vector<uint32_t> vp;
  HeadCache blocks;
  bool load(const AttnTensor& kin, const AttnTensor& vin, const Seq& s, int hkv, int j0, int nk, int D, int ldk,
            int Dv, int ldv, const uint16_t*& kt, const uint32_t*& vt) {
    if (j0 % 2) return false;
    const size_t rows = size_t(round_up(s.k_len, BK)) + JR + 2;
    if (!blocks.use(s, hkv, int64_t(rows * (ldk + ldv) * 2), rows / BK + 1)) return false;
    if (k.size() < rows * ldk) k.assign(rows * ldk, 0);
    if (vp.size() < rows / 2 * ldv) vp.assign(rows / 2 * ldv, 0);
    if (tmp.size() < size_t(BK) * ldv) tmp.assign(size_t(BK) * ldv, 0);
    for (int blk = j0 / BK; blk * BK < j0 + nk; ++blk)
      if (!blocks.packed[blk]) {
        const int n = std::min(BK, s.k_len - blk * BK);
        load_tile_bf16(k.data() + size_t(blk) * BK * ldk, ldk, kin, s, hkv, blk * BK, n, D);
        load_tile_bf16(tmp.data(), ldv, vin, s, hkv, blk * BK, n, Dv);
        pair_tile_rows(vp.data() + size_t(blk) * (BK / 2) * ldv, tmp.data(), ldv, BK);
        blocks.packed[blk] = 1;
      }
    kt = k.data() + size_t(j0) * ldk;
    vt = vp.data() + size_t(j0 / 2) * ldv;
    return true;
  }
};

// The bf16 backward's pass 2 (a query tile reads every key tile of its head): K and V rows as bf16
// (ldk / ldv wide) and K as pairs over keys, packed in blocks of BK keys on first use, so that each
// key tile is loaded and paired once per worker and head rather than once per query tile. As in
// the forward's caches, a tile that ends inside a block reads the keys after it (real rows, not the
// per-tile path's zeros) where P / dS are zero, so they add nothing (unless such a masked key holds
// inf or NaN).
struct PackedHeadKeysBf16 {
  std::vector<uint16_t> k, v;
  std::vector<uint32_t> kp;
  HeadCache blocks;
  bool load(const AttnTensor& kin, const AttnTensor& vin, const Seq& s, int hkv, int j0, int nk, int D, int ldk,
            int Dv, int ldv, const uint16_t*& kt, const uint16_t*& vt, const uint32_t*& kpt) {
    if (j0 % 2) return false;
    const size_t rows = size_t(round_up(s.k_len, BK)) + JR + 2;
    if (!blocks.use(s, hkv, int64_t(rows * (2 * ldk + ldv) * 2), rows / BK + 1)) return false;
    if (k.size() < rows * ldk) k.assign(rows * ldk, 0);
    if (v.size() < rows * ldv) v.assign(rows * ldv, 0);
    if (kp.size() < rows / 2 * ldk) kp.assign(rows / 2 * ldk, 0);
    for (int blk = j0 / BK; blk * BK < j0 + nk; ++blk)
      if (!blocks.packed[blk]) {
        const int n = std::min(BK, s.k_len - blk * BK);
        uint16_t* kblk = k.data() + size_t(blk) * BK * ldk;
        load_tile_bf16(kblk, ldk, kin, s, hkv, blk * BK, n, D);
        load_tile_bf16(v.data() + size_t(blk) * BK * ldv, ldv, vin, s, hkv, blk * BK, n, Dv);
        pair_tile_rows(kp.data() + size_t(blk) * (BK / 2) * ldk, kblk, ldk, BK);
        blocks.packed[blk] = 1;
      }
    kt = k.data() + size_t(j0) * ldk;
    vt = v.data() + size_t(j0) * ldv;
    kpt = kp.data() + size_t(j0 / 2) * ldk;
    return true;
  }
};
#endif  // KK_ISA_AVX512

}  // namespace attn
}  // namespace KK_ISA_NS
}  // namespace kernkit
