// CPU flash-attention forward: blocked online softmax (or sigmoid) over key
// tiles, never materialising more than a BK x BQ score tile; fully masked key
// tiles are skipped, so windowed cost grows with the window, not with S^2.
// Two engines compute the two matmuls of a tile: fp32 FMAs (every ISA level and
// dtype) and, for bf16 inputs at the avx512 level, AVX512_BF16 pair dot products.
#include <memory>

#include "attention/cpu/tiles.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace attn;

constexpr float kLog2eF = 1.44269504088896341f, kLn2F = 0.693147180559945309f;

// Shared per-worker state: score tile, output accumulator, softmax statistics.
struct FwdState {
  int Dvp;
  Buf<float> st, ot, m, l, bias, tmp;
  FwdState(int D, int Dv)
      : Dvp(round_up(Dv, CR)), st(size_t(BK) * BQ), ot(size_t(round_up(Dv, CR)) * BQ), m(BQ), l(BQ), bias(BQ),
        tmp(size_t(std::max(D, Dv)) + 16) {}
};

// fp32 engine: K/V widened to fp32, q pre-scaled. The K/V rows of the head in use are packed once
// per worker (PackedHeadKV) and every query tile of that head reads them there; heads too large for
// that are copied tile by tile.
template <typename T>
struct F32Engine {
  static constexpr float post_scale_of(float) { return 1.f; }
  static constexpr bool has_fused_sigmoid = false;
  void sigmoid_tile(const AttnFwdParams&, const Seq&, int, int, int, int, int, const float*, float*) {}
  Buf<float> qt, kb, vb;
  int D, Dv, Dvp;
  PackedHeadKV<T> head;
  const float *kt = nullptr, *vt = nullptr;  // the K/V rows of the current tile
  F32Engine(int D_, int Dv_)
      : qt(size_t(D_) * BQ), kb(size_t(BK) * D_), vb(size_t(BK) * round_up(Dv_, CR)), D(D_), Dv(Dv_),
        Dvp(round_up(Dv_, CR)) {}
  void pack_q(const AttnFwdParams& p, const Seq& s, int hkv, int group, int r0, float* tmp) {
    pack_rows_t<T>(qt.p, nullptr, 0, p.q, s, hkv, group, r0, D, p.mask.scale, tmp);
  }
  void scores(const AttnFwdParams& p, const Seq& s, int hkv, int j0, int nk, float* st) {
    if (!head.load(p.k, p.v, s, hkv, j0, nk, D, D, Dv, Dvp, kt, vt)) {
      load_tile<T>(kb.p, D, p.k, s, hkv, j0, nk, D);
      load_tile<T>(vb.p, Dvp, p.v, s, hkv, j0, nk, Dv);
      kt = kb.p, vt = vb.p;
    }
    tile_scores(st, kt, D, qt.p, D, round_up(nk, JR));
  }
  void accumulate(float* ot, float* st, int nk) { tile_acc_t(ot, vt, Dvp, Dvp, st, nk); }
};

#if defined(KK_ISA_AVX512)
// bf16 engine: bf16 operands straight from the inputs (q unscaled; the scale is
// applied to the fp32 scores), probabilities rounded to bf16 for P.V as GPU
// flash kernels do; fp32 accumulation throughout.
struct Bf16Engine {
  static float post_scale_of(float scale) { return scale; }
  int D, Dv, Dh, ldk, ldv, Dvp;
  Buf<uint32_t> qp, vp, pp;
  Buf<uint16_t> kb, vb;
  Bf16Engine(int D_, int Dv_)
      : D(D_), Dv(Dv_), Dh((D_ + 1) / 2), ldk(round_up(D_, 32)), ldv(round_up(Dv_, 32)), Dvp(round_up(Dv_, CR)),
        qp(size_t((D_ + 1) / 2) * BQ), vp(size_t(BK / 2) * round_up(Dv_, 32)), pp(size_t(BK / 2) * BQ),
        kb(size_t(BK) * round_up(D_, 32)), vb(size_t(BK) * round_up(Dv_, 32)) {}
  void pack_q(const AttnFwdParams& p, const Seq& s, int hkv, int group, int r0, float*) {
    pack_rows_pairs(qp.p, Dh, p.q, s, hkv, group, r0, D);
  }
  PackedHeadKVBf16 head;
  const uint16_t* kt = nullptr;  // the K rows and V pairs of the current tile
  const uint32_t* vt = nullptr;
  void load_kv(const AttnFwdParams& p, const Seq& s, int hkv, int j0, int nk) {
    if (head.load(p.k, p.v, s, hkv, j0, nk, D, ldk, Dv, ldv, kt, vt)) return;
    load_tile_bf16(kb.p, ldk, p.k, s, hkv, j0, nk, D);
    load_tile_bf16(vb.p, ldv, p.v, s, hkv, j0, nk, Dv);
    pair_tile_rows(vp.p, vb.p, ldv, nk);
    kt = kb.p, vt = vp.p;
  }
  void scores(const AttnFwdParams& p, const Seq& s, int hkv, int j0, int nk, float* st) {
    load_kv(p, s, hkv, j0, nk);
    tile_scores_bf16(st, kt, ldk, qp.p, Dh, round_up(nk, JR));
  }
  void accumulate(float* ot, float* st, int nk) {
    pack_prob_pairs(pp.p, st, nk);
    tile_acc_t_bf16(ot, vt, ldv, Dvp, pp.p, (nk + 1) / 2);
  }
  // Sigmoid's own inner loop: no row statistics, so probabilities are made in
  // registers straight from the score accumulators and stored as bf16 pairs
  // (no fp32 score tile, no separate packing pass), then P.V.
  static constexpr bool has_fused_sigmoid = true;
  void sigmoid_tile(const AttnFwdParams& p, const Seq& s, int hkv, int group, int j0, int r0, int nk,
                    const float* bias, float* ot) {
    load_kv(p, s, hkv, j0, nk);
    const AttnMask& mk = p.mask;
    const bool full = tile_fully_visible(mk, s, group, j0, r0, nk), cap = mk.softcap > 0.f;
    const Vec sc = Vec::set1(mk.scale), c = Vec::set1(mk.softcap), inv_c = Vec::set1(cap ? 1.f / mk.softcap : 0.f);
    const Vec b[QV] = {Vec::load(bias), Vec::load(bias + 16)};
    tile_scores_bf16_with(kt, ldk, qp.p, Dh, round_up(nk, JR), [&](int jr, __m512 (&acc)[JR][QV]) {
      __m256i half[JR][QV];
      for (int r = 0; r < JR; ++r) {
        const int jj = jr + r;
        int lo = 0, hi = INT_MAX;
        if (jj >= nk) hi = -1;
        else if (!full) visible_rows(mk, s, group, j0 + jj, lo, hi);
        for (int v = 0; v < QV; ++v) {
          Vec z;
          if (cap) z = c * tanh(Vec{acc[r][v]} * sc * inv_c) + b[v];
          else z = fma(Vec{acc[r][v]}, sc, b[v]);
          Vec P{sigmoid_bf16(z.v)};
          if (!full || jj >= nk) P = keep_range(P, r0 + v * 16, lo, hi, 0.f);
          half[r][v] = (__m256i)_mm512_cvtneps_pbh(P.v);
        }
      }
      for (int r = 0; r < JR; r += 2)
        for (int v = 0; v < QV; ++v)
          _mm512_storeu_si512(pp.p + ((jr + r) / 2) * BQ + v * 16, interleave_halves(half[r][v], half[r + 1][v]));
    });
    tile_acc_t_bf16(ot, vt, ldv, Dvp, pp.p, (nk + 1) / 2);
  }
};
#endif

template <typename T, typename Engine>
void fwd_tile(const AttnFwdParams& p, const Seq& s, int hkv, int r0, FwdState& w, Engine& e) {
  const AttnShape& sh = p.shape;
  const AttnMask& mk = p.mask;
  const int group = sh.Hq / sh.Hkv, Dv = sh.Dv;
  const bool softmax = mk.activation == AttnActivation::softmax;
  const int r1 = std::min(r0 + BQ, s.q_len * group);

  e.pack_q(p, s, hkv, group, r0, w.tmp.p);
  std::memset(w.ot.p, 0, sizeof(float) * w.Dvp * BQ);
  for (int rr = 0; rr < BQ; ++rr) { w.m[rr] = kNegInf; w.l[rr] = 0.f; }
  if (!softmax) sigmoid_bias_lanes(w.bias.p, mk, s, hkv, group, r0);

  for_each_key_tile(key_span(mk, s, group, r0, r1), [&](int j0, int nk) {
    if (!softmax && Engine::has_fused_sigmoid) {
      e.sigmoid_tile(p, s, hkv, group, j0, r0, nk, w.bias.p, w.ot.p);
      return;
    }
    e.scores(p, s, hkv, j0, nk, w.st.p);
    // Scores still to be multiplied by `sc` (the bf16 engine leaves q unscaled): the
    // scale folds into the activation's FMA unless softcap or a mask needs a pass first.
    float sc = Engine::post_scale_of(mk.scale);
    if (mk.softcap > 0.f || !tile_fully_visible(mk, s, group, j0, r0, nk)) {
      cap_and_mask(w.st.p, nullptr, mk, s, group, j0, r0, nk, kNegInf, sc);
      sc = 1.f;
    }
    const Vec vsc = Vec::set1(sc);
    if (softmax) {
      // in base 2 (m is kept in units of log2): exp2 costs ~30% fewer operations than exp; below
      // 2^-126 a probability is exactly 0 as exp() made it (masked scores are -inf)
      const Vec vsc2 = Vec::set1(sc * kLog2eF);
      auto exp2_or_0 = [](Vec t) { return select_below(t, -126.f, Vec::zero(), exp2(t)); };
      for (int v = 0; v < QV; ++v) {
        const int o = v * Vec::size;
        Vec mx = Vec::set1(kNegInf);
        for (int jj = 0; jj < nk; ++jj) mx = max(mx, Vec::load(w.st.p + jj * BQ + o));
        const Vec m_old = Vec::load(w.m.p + o), m_new = max(m_old, mx * vsc2);  // sc > 0
        // Rows with nothing visible yet keep m = -inf; subtract 0 instead so exp gives 0, not NaN.
        const Vec m_use = select_below(m_new, -3.0e38f, Vec::zero(), m_new);
        const Vec alpha = exp2_or_0(m_old - m_use);
        Vec sum = Vec::zero();
        for (int jj = 0; jj < nk; ++jj) {
          const Vec x = exp2_or_0(fma(Vec::load(w.st.p + jj * BQ + o), vsc2, Vec::zero() - m_use));
          x.store(w.st.p + jj * BQ + o);
          sum = sum + x;
        }
        fma(Vec::load(w.l.p + o), alpha, sum).store(w.l.p + o);
        m_new.store(w.m.p + o);
        for (int c = 0; c < Dv; ++c) (Vec::load(w.ot.p + c * BQ + o) * alpha).store(w.ot.p + c * BQ + o);
      }
    } else {
      for (int jj = 0; jj < nk; ++jj)
        for (int v = 0; v < QV; ++v) {
          float* q = w.st.p + jj * BQ + v * Vec::size;
          const Vec x = Vec::load(q);  // masked scores are -inf: P must be exactly 0 there
          select_below(x, -3.0e38f, Vec::zero(), sigmoid(fma(x, vsc, Vec::load(w.bias.p + v * Vec::size)))).store(q);
        }
    }
    e.accumulate(w.ot.p, w.st.p, nk);
  });

  for (int rr = 0; rr < r1 - r0; ++rr) {
    const int r = r0 + rr, i = r / group, h = hkv * group + r % group;
    float inv = 1.f;
    if (softmax) {
      const float l = w.l[rr];
      inv = l > 0.f ? 1.f / l : 0.f;
      if (p.lse) p.lse[s.b * sh.stat_bs + h * sh.stat_hs + s.q_row0 + i] = l > 0.f ? w.m[rr] * kLn2F + std::log(l) : kNegInf;
    }
    for (int c = 0; c < Dv; ++c) w.tmp[c] = w.ot[size_t(c) * BQ + rr] * inv;
    store_row(elem<T>(p.o, s, i, s.q_row0, h), w.tmp.p, Dv);
  }
}

template <typename T, typename Engine>
void fwd(const AttnFwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv;
  auto row_tiles = [&](const Seq& s) { return (int64_t(s.q_len) * group + BQ - 1) / BQ; };
  TaskMap map(sh.B, [&](int b) { return int64_t(sh.Hkv) * row_tiles(seq_of(sh, b)); });
  struct Worker {
    FwdState state;
    Engine engine;
    Worker(int D, int Dv) : state(D, Dv), engine(D, Dv) {}
  };
  run_tasks(map.total(), p.threads, [&] { return std::make_unique<Worker>(sh.D, sh.Dv); },
            [&](int64_t t, Worker& w) {
              int b;
              int64_t local;
              map.locate(t, b, local);
              const Seq s = seq_of(sh, b);
              const int64_t tiles = row_tiles(s);
              fwd_tile<T>(p, s, int(local / tiles), int(local % tiles) * BQ, w.state, w.engine);
            });
}

}  // namespace

void attention_fwd_cpu(const AttnFwdParams& p) {
  if (int64_t(p.shape.Sq) * (p.shape.Hq / p.shape.Hkv) <= kMaxDecodeRows) return decode_fwd(p);
  switch (p.dtype) {
    case DType::f32: return fwd<float, F32Engine<float>>(p);
#if defined(KK_ISA_AVX512)
    case DType::bf16: return fwd<bf16_t, Bf16Engine>(p);
#else
    case DType::bf16: return fwd<bf16_t, F32Engine<bf16_t>>(p);
#endif
    case DType::f16: return fwd<f16_t, F32Engine<f16_t>>(p);
    default: throw std::invalid_argument("flash_attn: unsupported dtype");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
