// CPU attention forward for few query rows per KV head (decode: Sq * group
// small). The tile kernels vectorise over query rows and would leave most lanes
// idle here; this path vectorises along the head dimension instead. A task owns
// a chunk of keys for all KV heads, so it streams one contiguous stretch of the
// (batch, seq, head, dim) cache, and reads every K/V row once for all the query
// rows of its head. The chunking comes from the shape only (results do not
// depend on the thread count); partial outputs merge through their log-sum-exps.
#include <memory>
#include <type_traits>
#include <vector>

#include "attention/cpu/tiles.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace attn {
namespace {

constexpr int kChunkKeys = 512;   // keys per split
constexpr int KB = 16;            // keys per softmax step
constexpr int kPrefetchBlocks = 1;  // how many key blocks ahead the L2 prefetch runs
constexpr int64_t kPrefetchMinBytes = int64_t(1) << 19;  // K/V bytes of a chunk below which it is skipped
constexpr int64_t kSplitHeadsMinBytes = int64_t(1) << 17;  // K/V bytes of a call below which heads stay together
// Stands in for the missing keys of a short block: 512 bf16/f16 or fp32 elements (D <= 512).
alignas(64) const uint16_t kZeroRow[1024] = {};

struct DecodeWorker {
  // per (kv head, row): q (scaled), output accumulator, m, l, bias; one key block of K/V; scores
  int rows, D, Dv, Dvp;
  Buf<float> q, o, m, l, bias, k, v, s;
  std::vector<const void*> qrow;   // per (kv head, row): the unscaled input row (bf16 path)
  Buf<uint32_t> vp;                // bf16 path: the block's V as (key 2i, key 2i+1) pairs, (KB/2) x Dvp
  DecodeWorker(int rows, int D, int Dv)
      : rows(rows), D(D), Dv(Dv), Dvp(round_up(Dv, Vec::size)), q(size_t(rows) * D), o(size_t(rows) * round_up(Dv, Vec::size)), m(rows),
        l(rows), bias(rows), k(size_t(KB) * D), v(size_t(KB) * round_up(Dv, Vec::size)), s(KB), qrow(rows),
        vp(size_t(KB / 2) * round_up(Dv, Vec::size)) {}
};

// This thread's worker, kept between calls of the same geometry: a decode step at a small cache
// is a few microseconds of arithmetic, and a dozen allocations per call were a sizeable part of it.
DecodeWorker& thread_worker(int rows, int D, int Dv) {
  thread_local std::unique_ptr<DecodeWorker> w;
  if (!w || w->rows != rows || w->D != D || w->Dv != Dv) w = std::make_unique<DecodeWorker>(rows, D, Dv);
  return *w;
}

#if defined(KK_ISA_AVX512)
// bf16 caches at the avx512 level: q.k straight from the bf16 rows with vdpbf16ps (bf16
// elements are already pairs along the head dimension, and the products are exact with fp32
// accumulation), 16 keys at a time, then one transposing reduction for the 16 dot products
// instead of 16 horizontal sums. K is never widened into a buffer.
constexpr bool kBf16Dots = true;

// lane j of the result = horizontal sum of a[j]
inline __m512 hsum16(const __m512 (&a)[KB]) {
  __m512 c[8], d[4];
  for (int i = 0; i < 8; ++i)   // fold 512 -> 256 bits: chunks 0,1 = a[2i], chunks 2,3 = a[2i+1]
    c[i] = _mm512_add_ps(_mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0x44),
                         _mm512_shuffle_f32x4(a[2 * i], a[2 * i + 1], 0xEE));
  for (int m = 0; m < 4; ++m)   // fold to 128 bits: chunk k of d[m] = a[4m + k]
    d[m] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], 0x88),
                         _mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], 0xDD));
  const __m512 s01 = _mm512_add_ps(_mm512_unpacklo_ps(d[0], d[1]), _mm512_unpackhi_ps(d[0], d[1]));
  const __m512 s23 = _mm512_add_ps(_mm512_unpacklo_ps(d[2], d[3]), _mm512_unpackhi_ps(d[2], d[3]));
  const __m512 r = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))),
                                 _mm512_castpd_ps(_mm512_unpackhi_pd(_mm512_castps_pd(s01), _mm512_castps_pd(s23))));
  // lane 4k + m of r holds a[4m + k]
  return _mm512_permutexvar_ps(_mm512_set_epi32(15, 11, 7, 3, 14, 10, 6, 2, 13, 9, 5, 1, 12, 8, 4, 0), r);
}

// sr[j] = scale * (q . k_j) for the KB key rows (rows past the block point at zeros).
inline void scores_bf16(float* sr, const uint16_t* q, const uint16_t* const (&krow)[KB], int D, float scale) {
  __m512 acc[KB];
  for (int j = 0; j < KB; ++j) acc[j] = _mm512_setzero_ps();
  for (int c = 0; c < D; c += 32) {
    const __mmask32 m = c + 32 <= D ? ~__mmask32(0) : (__mmask32(1) << (D - c)) - 1;
    const __m512bh qv = (__m512bh)_mm512_maskz_loadu_epi16(m, q + c);
    for (int j = 0; j < KB; ++j)
      acc[j] = _mm512_dpbf16_ps(acc[j], qv, (__m512bh)_mm512_maskz_loadu_epi16(m, krow[j] + c));
  }
  _mm512_storeu_ps(sr, _mm512_mul_ps(hsum16(acc), _mm512_set1_ps(scale)));
}

// vp[i][c] = (v_{2i}[c], v_{2i+1}[c]) for the block's KB rows, c < Dvp (zeros past Dv).
inline void pair_v_rows(uint32_t* vp, const uint16_t* const (&vrow)[KB], int Dv, int Dvp) {
  const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                       23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  for (int i = 0; i < KB / 2; ++i)
    for (int c = 0; c < Dvp; c += 16) {
      const __mmask16 m = c + 16 <= Dv ? __mmask16(0xFFFF) : __mmask16((1u << std::max(0, Dv - c)) - 1);
      const __m256i a = _mm256_maskz_loadu_epi16(m, vrow[2 * i] + c), b = _mm256_maskz_loadu_epi16(m, vrow[2 * i + 1] + c);
      _mm512_storeu_si512(vp + size_t(i) * Dvp + c,
                          _mm512_permutexvar_epi16(idx, _mm512_inserti64x4(_mm512_castsi256_si512(a), b, 1)));
    }
}

// o = o * alpha + p . V with p rounded to bf16 pairs (as the tile path and GPU kernels do).
inline void scale_and_accumulate_bf16(float* o, float alpha, const float* p, const uint32_t* vp, int Dvp) {
  alignas(32) uint32_t pp[KB / 2];
  _mm256_store_si256(reinterpret_cast<__m256i*>(pp), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(p)));
  const __m512 va = _mm512_set1_ps(alpha);
  constexpr int NV = 4;
  int c = 0;
  for (; c + NV * 16 <= Dvp; c += NV * 16) {
    __m512 acc[NV];
    for (int u = 0; u < NV; ++u) acc[u] = _mm512_mul_ps(_mm512_loadu_ps(o + c + 16 * u), va);
    for (int i = 0; i < KB / 2; ++i) {
      const __m512bh pi = (__m512bh)_mm512_set1_epi32(int(pp[i]));
      for (int u = 0; u < NV; ++u)
        acc[u] = _mm512_dpbf16_ps(acc[u], pi, (__m512bh)_mm512_loadu_si512(vp + size_t(i) * Dvp + c + 16 * u));
    }
    for (int u = 0; u < NV; ++u) _mm512_storeu_ps(o + c + 16 * u, acc[u]);
  }
  for (; c < Dvp; c += 16) {
    __m512 acc = _mm512_mul_ps(_mm512_loadu_ps(o + c), va);
    for (int i = 0; i < KB / 2; ++i)
      acc = _mm512_dpbf16_ps(acc, (__m512bh)_mm512_set1_epi32(int(pp[i])),
                             (__m512bh)_mm512_loadu_si512(vp + size_t(i) * Dvp + c));
    _mm512_storeu_ps(o + c, acc);
  }
}
#else
constexpr bool kBf16Dots = false;
#endif

template <typename T>
inline void prefetch_row(const T* row, int n) {
  const char* c = reinterpret_cast<const char*>(row);
  for (int off = 0; off < int(n * sizeof(T)); off += 64) __builtin_prefetch(c + off, 0, 2);
}

// sr[j] = q . k_j for the KB fp32 key rows (rows past the block point at zeros), D a multiple of
// the vector width: the KB accumulators are reduced together (one transposing add tree per 8 or
// 16 keys) instead of KB separate horizontal sums, which cost as much as the dot products.
inline void scores_f32(float* sr, const float* q, const float* const (&krow)[KB], int D) {
#if defined(KK_ISA_AVX512)
  __m512 acc[KB];
  for (int j = 0; j < KB; ++j) acc[j] = _mm512_setzero_ps();
  for (int c = 0; c < D; c += 16) {
    const __m512 qv = _mm512_loadu_ps(q + c);
    for (int j = 0; j < KB; ++j) acc[j] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(krow[j] + c), acc[j]);
  }
  _mm512_storeu_ps(sr, hsum16(acc));
#elif defined(KK_ISA_AVX2)
  for (int g = 0; g < KB; g += 8) {
    __m256 acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = _mm256_setzero_ps();
    for (int c = 0; c < D; c += 8) {
      const __m256 qv = _mm256_loadu_ps(q + c);
      for (int j = 0; j < 8; ++j) acc[j] = _mm256_fmadd_ps(qv, _mm256_loadu_ps(krow[g + j] + c), acc[j]);
    }
    // hadd pairs: lane l of h2 (per 128-bit half) sums a quarter of acc[l] or acc[4 + l]
    const __m256 h01 = _mm256_hadd_ps(acc[0], acc[1]), h23 = _mm256_hadd_ps(acc[2], acc[3]);
    const __m256 h45 = _mm256_hadd_ps(acc[4], acc[5]), h67 = _mm256_hadd_ps(acc[6], acc[7]);
    const __m256 a = _mm256_hadd_ps(h01, h23), b = _mm256_hadd_ps(h45, h67);  // a: keys 0-3 per half
    const __m256 lo = _mm256_permute2f128_ps(a, b, 0x20), hi = _mm256_permute2f128_ps(a, b, 0x31);
    _mm256_storeu_ps(sr + g, _mm256_add_ps(lo, hi));
  }
#else
  for (int j = 0; j < KB; ++j) sr[j] = dot(q, krow[j], D);
#endif
}

// o[0..Dv) = o * alpha + sum_{j<nk} p[j] * vrow[j][0..Dv), a few vectors at a time in registers; Dv a
// multiple of the vector width (fp32 cache rows read in place, or the block buffer's padded rows).
inline void scale_and_accumulate_rows(float* o, float alpha, const float* p, const float* const (&vrow)[KB], int Dv,
                                      int nk) {
  constexpr int NV = 4;
  const Vec va = Vec::set1(alpha);
  int c = 0;
  for (; c + NV * Vec::size <= Dv; c += NV * Vec::size) {
    Vec acc[NV];
    for (int u = 0; u < NV; ++u) acc[u] = Vec::load(o + c + u * Vec::size) * va;
    for (int j = 0; j < nk; ++j) {
      const Vec pj = Vec::set1(p[j]);
      for (int u = 0; u < NV; ++u) acc[u] = fma(pj, Vec::load(vrow[j] + c + u * Vec::size), acc[u]);
    }
    for (int u = 0; u < NV; ++u) acc[u].store(o + c + u * Vec::size);
  }
  for (; c < Dv; c += Vec::size) {
    Vec acc = Vec::load(o + c) * va;
    for (int j = 0; j < nk; ++j) acc = fma(Vec::set1(p[j]), Vec::load(vrow[j] + c), acc);
    acc.store(o + c);
  }
}

// Partial results of every (kv head in [h0, h1), row) over the keys in up to two ranges
// [ranges[2i], ranges[2i+1]): the unnormalised output, running max m and sum l
// (softmax), written to part[Hkv x Rs x (Dv + 2)] (this range's heads).
template <typename T>
void decode_chunk(const AttnFwdParams& p, const Seq& s, const int (&ranges)[4], int h0, int h1, DecodeWorker& w,
                  float* part) {
  const AttnShape& sh = p.shape;
  const AttnMask& mk = p.mask;
  // R rows of this sequence per KV head; buffers and partials are laid out with the batch's
  // maximum, Rs = Sq * group, per head (varlen sequences may have fewer rows).
  const int group = sh.Hq / sh.Hkv, R = s.q_len * group, Rs = sh.Sq * group, D = sh.D, Dv = sh.Dv, Dvp = w.Dvp;
  const bool softmax = mk.activation == AttnActivation::softmax, cap = mk.softcap > 0.f;
  constexpr bool bf16_dots = kBf16Dots && std::is_same<T, bf16_t>::value;
  // fp32 caches whose rows are whole vectors are read in place (no copy into the block buffers)
  const bool in_place = std::is_same<T, float>::value && D % Vec::size == 0 && Dv % Vec::size == 0;
  // other blocks are widened into w.k; scores then come from the same transposed reduction
  const bool f32_scores = !bf16_dots && D % Vec::size == 0;
  for (int hkv = h0; hkv < h1; ++hkv)
    for (int r = 0; r < R; ++r) {
      const int x = hkv * Rs + r, h = hkv * group + r % group;
      const T* qr = elem<const T>(p.q, s, r / group, s.q_row0, h);
      if (bf16_dots) {   // used as it is; the scale multiplies the scores
        w.qrow[x] = qr;
      } else {
        load_row(w.q.p + size_t(x) * D, qr, D, D);
        for (int d = 0; d < D; ++d) w.q[size_t(x) * D + d] *= mk.scale;
      }
      w.bias[x] = softmax ? 0.f : sigmoid_bias_of(mk, s, h);
      w.m[x] = kNegInf;
      w.l[x] = 0.f;
    }
  std::memset(w.o.p + size_t(h0) * Rs * Dvp, 0, sizeof(float) * (h1 - h0) * Rs * Dvp);
  float* sr = w.s.p;
  // Software prefetch only for a chunk whose K/V rows outgrow L2: a prefetch per 64 bytes costs as
  // much as the arithmetic of a query row, and a small cache is read from L2/L3 anyway.
  const int64_t chunk_keys = int64_t(ranges[1] - ranges[0]) + (ranges[3] - ranges[2]);
  const bool prefetch = chunk_keys * (h1 - h0) * (D + Dv) * int64_t(sizeof(T)) > kPrefetchMinBytes;
  for (int rg = 0; rg < 2; ++rg)
    for (int j0 = ranges[2 * rg]; j0 < ranges[2 * rg + 1]; j0 += KB) {
      const int nk = std::min(KB, ranges[2 * rg + 1] - j0);
      const bool full = tile_fully_visible(mk, s, group, j0, 0, nk);
      const int next_end = prefetch ? std::min(ranges[2 * rg + 1], j0 + (kPrefetchBlocks + 1) * KB) : 0;
      for (int hkv = h0; hkv < h1; ++hkv) {
        // The (key, head) rows are scattered (head-interleaved layout): fetch the
        // next block's rows of this head into L2 while this one is computed.
        for (int j = std::max(j0 + KB, next_end - KB); j < next_end; ++j) {
          prefetch_row(elem<const T>(p.k, s, j, s.k_row0, hkv), D);
          prefetch_row(elem<const T>(p.v, s, j, s.k_row0, hkv), Dv);
        }
        const uint16_t *krow[KB], *vrow[KB];
        const float *kf[KB], *vf[KB];
        const T* const k0 = elem<const T>(p.k, s, j0, s.k_row0, hkv);  // then one row stride per key
        const T* const v0 = elem<const T>(p.v, s, j0, s.k_row0, hkv);
        for (int jj = 0; jj < nk; ++jj) {
          const T *kj = k0 + jj * p.k.rs, *vj = v0 + jj * p.v.rs;
          if (in_place) {
            kf[jj] = reinterpret_cast<const float*>(kj);
            vf[jj] = reinterpret_cast<const float*>(vj);
          } else if (bf16_dots) {
            krow[jj] = reinterpret_cast<const uint16_t*>(kj);
            vrow[jj] = reinterpret_cast<const uint16_t*>(vj);
          } else {
            load_row(w.k.p + jj * D, kj, D, D);
            load_row(w.v.p + jj * Dvp, vj, Dv, Dvp);
            vf[jj] = w.v.p + jj * Dvp;
          }
        }
        for (int jj = nk; jj < KB; ++jj) krow[jj] = vrow[jj] = kZeroRow;
        if (f32_scores)  // zero rows past nk (kZeroRow holds 512 floats); their scores become -inf
          for (int jj = 0; jj < KB; ++jj)
            kf[jj] = jj >= nk ? reinterpret_cast<const float*>(kZeroRow) : in_place ? kf[jj] : w.k.p + jj * D;
#if defined(KK_ISA_AVX512)
        if (bf16_dots) pair_v_rows(w.vp.p, vrow, Dv, Dvp);
#endif
        for (int r = 0; r < R; ++r) {
          const int x = hkv * Rs + r;
#if defined(KK_ISA_AVX512)
          if (bf16_dots)
            scores_bf16(sr, static_cast<const uint16_t*>(w.qrow[x]), krow, D, mk.scale);
          else
#endif
            if (f32_scores)
              scores_f32(sr, w.q.p + size_t(x) * D, kf, D);
            else
              for (int jj = 0; jj < nk; ++jj) sr[jj] = dot(w.q.p + size_t(x) * D, w.k.p + jj * D, D);
          for (int jj = nk; jj < KB; ++jj) sr[jj] = kNegInf;
          if (cap)
            for (int jj = 0; jj < nk; ++jj) sr[jj] = mk.softcap * std::tanh(sr[jj] / mk.softcap);
          if (!full)
            for (int jj = 0; jj < nk; ++jj) {
              int rlo, rhi;
              visible_rows(mk, s, group, j0 + jj, rlo, rhi);
              if (r < rlo || r > rhi) sr[jj] = kNegInf;
            }
          float alpha = 1.f;
          if (softmax) {
            float mnew = w.m[x];
            for (int jj = 0; jj < nk; ++jj) mnew = std::max(mnew, sr[jj]);
            const float m_use = mnew == kNegInf ? 0.f : mnew;
            alpha = mnew == w.m[x] ? 1.f : std::exp(w.m[x] - m_use);  // (exp(0) is 1: no call)
            Vec sum = Vec::zero();
            for (int jj = 0; jj < KB; jj += Vec::size) {
              const Vec e = exp(Vec::load(sr + jj) - Vec::set1(m_use));
              e.store(sr + jj);
              sum = sum + e;
            }
            w.l[x] = w.l[x] * alpha + sum.sum();
            w.m[x] = mnew;
          } else {
            for (int jj = 0; jj < KB; jj += Vec::size) {
              const Vec v = Vec::load(sr + jj);
              select_below(v, -3.0e38f, Vec::zero(), sigmoid(v + Vec::set1(w.bias[x]))).store(sr + jj);
            }
          }
#if defined(KK_ISA_AVX512)
          if (bf16_dots)
            scale_and_accumulate_bf16(w.o.p + size_t(x) * Dvp, alpha, sr, w.vp.p, Dvp);
          else
#endif
            scale_and_accumulate_rows(w.o.p + size_t(x) * Dvp, alpha, sr, vf, Dvp, nk);  // in place: Dvp == Dv
        }
      }
    }
  for (int hkv = h0; hkv < h1; ++hkv)
    for (int r = 0; r < R; ++r) {   // rows past R keep the caller's empty partials
      const int x = hkv * Rs + r;
      float* out = part + size_t(x) * (Dv + 2);
      std::memcpy(out, w.o.p + size_t(x) * Dvp, sizeof(float) * Dv);
      out[Dv] = w.m[x];
      out[Dv + 1] = w.l[x];
    }
}

template <typename T>
void decode(const AttnFwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv, Dv = sh.Dv, R = sh.Sq * group;
  const bool softmax = p.mask.activation == AttnActivation::softmax;
  const size_t head_stride = size_t(R) * (Dv + 2), task_stride = head_stride * sh.Hkv;
  auto splits = [&](const Seq& s) { return std::max(1, (s.k_len + kChunkKeys - 1) / kChunkKeys); };
  TaskMap map(sh.B, [&](int b) { return int64_t(splits(seq_of(sh, b))); });
  const int64_t nparts = map.total();
  // Fewer key chunks than threads (a short cache): the KV heads are split into groups too, when the
  // K/V to read pays for starting the pool. Which task runs a head does not change its arithmetic.
  int64_t keys = 0;
  for (int b = 0; b < sh.B; ++b) keys += seq_of(sh, b).k_len;
  const bool split_heads = nparts < p.threads && keys * sh.Hkv * (sh.D + Dv) * int64_t(sizeof(T)) >= kSplitHeadsMinBytes;
  const int groups = split_heads ? int(std::min<int64_t>(sh.Hkv, (p.threads + nparts - 1) / nparts)) : 1;
  thread_local std::vector<float> part_store;  // the caller's, reused between calls (see thread_worker)
  if (part_store.size() < size_t(nparts) * task_stride) part_store.resize(size_t(nparts) * task_stride);
  float* const parts = part_store.data();
  run_tasks(nparts * groups, p.threads, [&] { return &thread_worker(sh.Hkv * R, sh.D, Dv); },
            [&](int64_t t, DecodeWorker& w) {
              int b;
              int64_t split;
              map.locate(t / groups, b, split);
              const int g = int(t % groups), h0 = g * sh.Hkv / groups, h1 = (g + 1) * sh.Hkv / groups;
              const Seq s = seq_of(sh, b);
              float* part = parts + size_t(t / groups) * task_stride;
              for (size_t x = h0 * head_stride; x < h1 * head_stride; x += Dv + 2) {  // empty partials
                std::memset(part + x, 0, sizeof(float) * Dv);
                part[x + Dv] = kNegInf;
                part[x + Dv + 1] = 0.f;
              }
              if (s.q_len == 0) return;
              // Only keys some row may see: the sinks, then the window band (each once).
              const KeySpan ks = key_span(p.mask, s, group, 0, s.q_len * group);
              const int jbeg = int(split) * kChunkKeys, jend = std::min(s.k_len, jbeg + kChunkKeys);
              const int sink_end = std::min(jend, ks.sink_hi + 1);
              const int band_lo = std::max(std::max(jbeg, ks.jlo), sink_end), band_hi = std::min(jend, ks.jhi + 1);
              const int ranges[4] = {jbeg, std::max(jbeg, sink_end), band_lo, std::max(band_lo, band_hi)};
              decode_chunk<T>(p, s, ranges, h0, h1, w, part);
            });
  // Merge each (batch, kv head)'s splits in split order and write its rows (on one thread when
  // that is a few microseconds of work: waking the pool would cost more).
  const int merge_threads = size_t(nparts) * task_stride < (size_t(1) << 16) ? 1 : p.threads;
  parallel_for(int64_t(sh.B) * sh.Hkv, merge_threads, 1, [&](int64_t t0, int64_t t1) {
    alignas(64) float acc[kMaxDecodeRows * (512 + 2)];   // head_stride floats (D <= 512)
    alignas(64) float tmp[512];
    for (int64_t t = t0; t < t1; ++t) {
      const int b = int(t / sh.Hkv), hkv = int(t % sh.Hkv);
      const Seq s = seq_of(sh, b);
      float* first = parts + size_t(map.start[b]) * task_stride + hkv * head_stride;
      // a single split is already the result (the buffer is this call's)
      const int nsplit = splits(s);
      float* merged = nsplit == 1 ? first : acc;
      if (nsplit > 1) std::memcpy(acc, first, sizeof(float) * head_stride);
      for (int sp = 1; sp < nsplit; ++sp) merge_partial(acc, first + sp * task_stride, R, Dv, softmax);
      for (int r = 0; r < s.q_len * group; ++r) {
        const float* a = merged + size_t(r) * (Dv + 2);
        const int i = r / group, h = hkv * group + r % group;
        const float l = a[Dv + 1];
        const float inv = softmax ? (l > 0.f ? 1.f / l : 0.f) : 1.f;
        for (int c = 0; c < Dv; ++c) tmp[c] = a[c] * inv;
        store_row(elem<T>(p.o, s, i, s.q_row0, h), tmp, Dv);
        if (softmax && p.lse)
          p.lse[s.b * sh.stat_bs + h * sh.stat_hs + s.q_row0 + i] = l > 0.f ? a[Dv] + std::log(l) : kNegInf;
      }
    }
  });
}

}  // namespace

void decode_fwd(const AttnFwdParams& p) {
  switch (p.dtype) {
    case DType::f32: return decode<float>(p);
    case DType::bf16: return decode<bf16_t>(p);
    case DType::f16: return decode<f16_t>(p);
    default: throw std::invalid_argument("flash_attn: unsupported dtype");
  }
}

}  // namespace attn
}  // namespace KK_ISA_NS
}  // namespace kernkit
