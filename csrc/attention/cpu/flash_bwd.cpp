// CPU flash-attention backward, recomputing scores from the saved log-sum-exp.
// Two passes, both parallel and free of races, so gradients are bitwise
// reproducible for any thread count: pass 1 owns a key tile and sums dK, dV over
// the query rows that see it; pass 2 owns a query tile and sums dQ over its keys.
// As in the forward, an fp32 engine serves every level and dtype and an
// AVX512_BF16 engine takes bf16 inputs at the avx512 level (P and dS are rounded
// to bf16 for their matmuls, as GPU flash kernels do; accumulation is fp32).
#include <memory>

#include "attention/cpu/tiles.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace attn;

// Engine-independent per-worker state.
struct BwdState {
  int Dp, Dvp;  // feature widths padded for tile_acc_n (multiples of NR * Vec::size and 16)
  Buf<float> st, tanh_, dpt, acc_k, acc_v, lse, delta, bias, tmp;
  BwdState(int D, int Dv)
      : Dp(round_up(D, NR * 16)), Dvp(round_up(Dv, NR * 16)), st(size_t(BK) * BQ), tanh_(size_t(BK) * BQ),
        dpt(size_t(BK) * BQ), acc_k(size_t(std::max(BK, BQ)) * round_up(D, NR * 16)),
        acc_v(size_t(BK) * round_up(Dv, NR * 16)), lse(BQ), delta(BQ), bias(BQ), tmp(size_t(std::max(D, Dv)) + 16) {}
};

// fp32 engine. As in the forward, what a pass reads many times is packed once per worker and head
// (HeadCache): pass 2 (a query tile's keys) keeps the head's K/V rows, pass 1 (a key tile's query
// rows) the head's packed q / dout tiles, each filled on first use; too large a head is packed per tile.
template <typename T>
struct F32BwdEngine {
  static constexpr bool scaled_q = true;  // q packed pre-multiplied by the scale
  int D, Dv, Dp, Dvp;
  Buf<float> qt, qn, dot_, don, kb, vb;
  // the tiles in use (the buffers above or the head caches)
  const float *qtp = nullptr, *qnp = nullptr, *dotp = nullptr, *donp = nullptr, *kt = nullptr, *vt = nullptr;
  PackedHeadKV<T> head;          // pass 2's K/V rows (Dp / Dvp wide)
  std::vector<float> head_rows;  // pass 1's q/dout tiles (row_tile floats each), which `rows` says
  HeadCache rows;
  bool cache_keys = false;  // pass 2 (pass 1 loads each key tile once)
  F32BwdEngine(int D_, int Dv_, const BwdState& w)
      : D(D_), Dv(Dv_), Dp(w.Dp), Dvp(w.Dvp), qt(size_t(D_) * BQ), qn(size_t(BQ) * w.Dp), dot_(size_t(Dv_) * BQ),
        don(size_t(BQ) * w.Dvp), kb(size_t(BK) * w.Dp), vb(size_t(BK) * w.Dvp) {}
  size_t row_tile() const { return size_t(D + Dv) * BQ + size_t(BQ) * (Dp + Dvp); }
  // Packs q and dout of rows [r0, r0 + BQ); `natural` (pass 1) also packs the copies dK/dV need.
  void pack_rows(const AttnBwdParams& p, const Seq& s, int hkv, int group, int r0, bool natural, float* tmp) {
    const size_t slots = size_t(s.q_len * group + BQ - 1) / BQ, tile = row_tile();
    float *a = qt.p, *b = qn.p, *c = dot_.p, *d = don.p;
    bool fill = true;
    if (natural && rows.use(s, hkv, int64_t(slots * tile * sizeof(float)), slots)) {
      if (head_rows.size() < slots * tile) head_rows.resize(slots * tile);
      a = head_rows.data() + size_t(r0 / BQ) * tile;
      c = a + size_t(D) * BQ, b = c + size_t(Dv) * BQ, d = b + size_t(BQ) * Dp;
      fill = !rows.packed[r0 / BQ];
      rows.packed[r0 / BQ] = 1;
    }
    if (fill) {
      pack_rows_t<T>(a, natural ? b : nullptr, Dp, p.q, s, hkv, group, r0, D, p.mask.scale, tmp);
      pack_rows_t<T>(c, natural ? d : nullptr, Dvp, p.dout, s, hkv, group, r0, Dv, 1.f, tmp);
    }
    qtp = a, qnp = b, dotp = c, donp = d;
  }
  void load_keys(const AttnBwdParams& p, const Seq& s, int hkv, int j0, int nk) {
    if (cache_keys && head.load(p.k, p.v, s, hkv, j0, nk, D, Dp, Dv, Dvp, kt, vt)) return;
    load_tile<T>(kb.p, Dp, p.k, s, hkv, j0, nk, D);
    load_tile<T>(vb.p, Dvp, p.v, s, hkv, j0, nk, Dv);
    kt = kb.p, vt = vb.p;
  }
  void scores(float* st, float* dpt, int nkr) {
    tile_scores(st, kt, Dp, qtp, D, nkr);
    tile_scores(dpt, vt, Dvp, dotp, Dv, nkr);
  }
  void acc_dkdv(float* acc_k, float* acc_v, const float* P, const float* dS, int nk) {
    tile_acc_n(acc_v, P, donp, Dvp, round_up(nk, 4));   // dV += P^T dO
    tile_acc_n(acc_k, dS, qnp, Dp, round_up(nk, 4));    // dK += dS^T (scale q)
  }
  void acc_dq(float* dqt, const float* dS, int nk) { tile_acc_t(dqt, kt, Dp, round_up(D, CR), dS, nk); }
};

#if defined(KK_ISA_AVX512)
// bf16 engine. As the fp32 engine, it packs what a pass reads many times once per worker and head:
// pass 1 (a key tile's query rows) the q / dout pair tiles (packing a row tile anew for every key
// tile that sees it cost ~20% of a causal fwd + bwd), pass 2 (a query tile's keys) the K/V tiles.
struct Bf16BwdEngine {
  static constexpr bool scaled_q = false;
  bool cache_keys = false;  // pass 2 (pass 1 loads each key tile once)
  int D, Dv, Dp, Dvp, Dh, Dvh;
  Buf<uint32_t> qp, dop, qr, dor, kp, dsp;
  Buf<uint16_t> kb, vb, p16, ds16;
  // the row tiles in use (the buffers above or the head cache)
  const uint32_t *qpp = nullptr, *dopp = nullptr, *qrp = nullptr, *dorp = nullptr;
  std::vector<uint32_t> head_rows;  // pass 1's row tiles (row_tile() words each), which `rows` says
  HeadCache rows;
  PackedHeadKeysBf16 head;  // pass 2's key tiles
  const uint16_t *kt = nullptr, *vt = nullptr;
  const uint32_t* kpt = nullptr;
  Bf16BwdEngine(int D_, int Dv_, const BwdState& w)
      : D(D_), Dv(Dv_), Dp(w.Dp), Dvp(w.Dvp), Dh((D_ + 1) / 2), Dvh((Dv_ + 1) / 2), qp(size_t(Dh) * BQ),
        dop(size_t(Dvh) * BQ), qr(size_t(BQ / 2) * w.Dp), dor(size_t(BQ / 2) * w.Dvp), kp(size_t(BK / 2) * w.Dp),
        dsp(size_t(BK / 2) * BQ), kb(size_t(BK) * w.Dp), vb(size_t(BK) * w.Dvp), p16(size_t(BK) * BQ),
        ds16(size_t(BK) * BQ) {}
  size_t row_tile() const { return size_t(Dh + Dvh) * BQ + size_t(BQ / 2) * (Dp + Dvp); }
  void pack_rows(const AttnBwdParams& p, const Seq& s, int hkv, int group, int r0, bool natural, float*) {
    const size_t slots = size_t(s.q_len * group + BQ - 1) / BQ, tile = row_tile();
    uint32_t *a = qp.p, *b = dop.p, *c = qr.p, *d = dor.p;
    bool fill = true;
    if (natural && rows.use(s, hkv, int64_t(slots * tile * sizeof(uint32_t)), slots)) {
      if (head_rows.size() < slots * tile) head_rows.resize(slots * tile);
      a = head_rows.data() + size_t(r0 / BQ) * tile;
      b = a + size_t(Dh) * BQ, c = b + size_t(Dvh) * BQ, d = c + size_t(BQ / 2) * Dp;
      fill = !rows.packed[r0 / BQ];
      rows.packed[r0 / BQ] = 1;
    }
    if (fill) {
      pack_rows_pairs(a, Dh, p.q, s, hkv, group, r0, D);
      pack_rows_pairs(b, Dvh, p.dout, s, hkv, group, r0, Dv);
      if (natural) {
        pack_row_pairs(c, Dp, p.q, s, hkv, group, r0, D);
        pack_row_pairs(d, Dvp, p.dout, s, hkv, group, r0, Dv);
      }
    }
    qpp = a, dopp = b, qrp = c, dorp = d;
  }
  void load_keys(const AttnBwdParams& p, const Seq& s, int hkv, int j0, int nk) {
    if (cache_keys && head.load(p.k, p.v, s, hkv, j0, nk, D, Dp, Dv, Dvp, kt, vt, kpt)) return;
    load_tile_bf16(kb.p, Dp, p.k, s, hkv, j0, nk, D);
    load_tile_bf16(vb.p, Dvp, p.v, s, hkv, j0, nk, Dv);
    pair_tile_rows(kp.p, kb.p, Dp, nk);
    kt = kb.p, vt = vb.p, kpt = kp.p;
  }
  void scores(float* st, float* dpt, int nkr) {
    tile_scores_bf16(st, kt, Dp, qpp, Dh, nkr);
    tile_scores_bf16(dpt, vt, Dvp, dopp, Dvh, nkr);
  }
  void acc_dkdv(float* acc_k, float* acc_v, const float* P, const float* dS, int nk) {
    const int nkr = round_up(nk, 4);
    tile_to_bf16(p16.p, P, nkr);
    tile_to_bf16(ds16.p, dS, nkr);
    tile_acc_n_bf16(acc_v, p16.p, dorp, Dvp, nkr);   // dV += P^T dO
    tile_acc_n_bf16(acc_k, ds16.p, qrp, Dp, nkr);    // dK += dS^T q (scaled on store)
  }
  void acc_dq(float* dqt, float* dS, int nk) {
    pack_prob_pairs(dsp.p, dS, nk);
    tile_acc_t_bf16(dqt, kpt, Dp, round_up(D, CR), dsp.p, (nk + 1) / 2);
  }
};
#endif

// Loads the per-row softmax statistics (or sigmoid biases) of rows [r0, r0 + BQ).
void load_row_stats(const AttnBwdParams& p, const Seq& s, int hkv, int group, int r0, BwdState& w) {
  const AttnShape& sh = p.shape;
  if (p.mask.activation == AttnActivation::sigmoid) {
    sigmoid_bias_lanes(w.bias.p, p.mask, s, hkv, group, r0);
    return;
  }
  const int rows = s.q_len * group;
  for (int rr = 0; rr < BQ; ++rr) {
    const int r = r0 + rr;
    float lse = INFINITY, delta = 0.f;  // +inf: padding rows and rows that saw nothing get P = 0
    if (r < rows) {
      const int64_t at = s.b * sh.stat_bs + (hkv * group + r % group) * sh.stat_hs + s.q_row0 + r / group;
      if (p.lse[at] != kNegInf) lse = p.lse[at];
      delta = p.delta[at];
    }
    w.lse[rr] = lse;
    w.delta[rr] = delta;
  }
}

// For the key tile at j0 and the packed rows at r0: st <- P, dpt <- dS (gradient
// w.r.t. the scaled, pre-softcap scores); rows nk.. of both are zeroed. With
// bias_grad set, adds each row's gradient w.r.t. the sigmoid bias (taken before
// the softcap factor: the bias is added after the cap).
template <typename Engine>
void probs_and_dscores(const AttnBwdParams& p, const Seq& s, int group, int j0, int r0, int nk, BwdState& w,
                       Engine& e, float* bias_grad) {
  const AttnMask& mk = p.mask;
  const bool softmax = mk.activation == AttnActivation::softmax, cap = mk.softcap > 0.f;
  const int nkr = round_up(nk, JR);
  e.scores(w.st.p, w.dpt.p, nkr);
  cap_and_mask(w.st.p, cap ? w.tanh_.p : nullptr, mk, s, group, j0, r0, nk, kNegInf,
               Engine::scaled_q ? 1.f : mk.scale);
  for (int jj = 0; jj < nk; ++jj)
    for (int v = 0; v < QV; ++v) {
      const int o = jj * BQ + v * Vec::size;
      Vec P, dS;
      const Vec x = Vec::load(w.st.p + o), dP = Vec::load(w.dpt.p + o);
      if (softmax) {
        P = exp(x - Vec::load(w.lse.p + v * Vec::size));
        dS = P * (dP - Vec::load(w.delta.p + v * Vec::size));
      } else {
        // masked scores are -inf: force P to exactly 0 there
        P = select_below(x, -3.0e38f, Vec::zero(), sigmoid(x + Vec::load(w.bias.p + v * Vec::size)));
        dS = dP * P * (Vec::set1(1.f) - P);
        if (bias_grad) (Vec::load(bias_grad + v * Vec::size) + dS).store(bias_grad + v * Vec::size);
      }
      if (cap) {
        const Vec t = Vec::load(w.tanh_.p + o);
        dS = dS * (Vec::set1(1.f) - t * t);
      }
      P.store(w.st.p + o);
      dS.store(w.dpt.p + o);
    }
  for (int jj = nk; jj < nkr; ++jj)
    for (int rr = 0; rr < BQ; ++rr) w.st[jj * BQ + rr] = w.dpt[jj * BQ + rr] = 0.f;
}

// Pass 1: dK, dV of one key tile.
template <typename T, typename Engine>
void dkdv_tile(const AttnBwdParams& p, const Seq& s, int hkv, int kb, BwdState& w, Engine& e) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv, j0 = kb * BK, nk = std::min(BK, s.k_len - j0);
  e.load_keys(p, s, hkv, j0, nk);
  std::memset(w.acc_k.p, 0, sizeof(float) * BK * w.Dp);
  std::memset(w.acc_v.p, 0, sizeof(float) * BK * w.Dvp);
  int rlo = INT_MAX, rhi = -1;
  for (int jj = 0; jj < nk; ++jj) {
    int lo, hi;
    visible_rows(p.mask, s, group, j0 + jj, lo, hi);
    if (lo <= hi) { rlo = std::min(rlo, lo); rhi = std::max(rhi, hi); }
  }
  for (int r0 = rhi >= rlo ? rlo / BQ * BQ : 1; r0 <= rhi; r0 += BQ) {
    e.pack_rows(p, s, hkv, group, r0, true, w.tmp.p);
    load_row_stats(p, s, hkv, group, r0, w);
    probs_and_dscores(p, s, group, j0, r0, nk, w, e, nullptr);
    e.acc_dkdv(w.acc_k.p, w.acc_v.p, w.st.p, w.dpt.p, nk);
  }
  const float kscale = Engine::scaled_q ? 1.f : p.mask.scale;
  for (int jj = 0; jj < nk; ++jj) {
    float* ak = w.acc_k.p + jj * w.Dp;
    if (kscale != 1.f)
      for (int d = 0; d < sh.D; ++d) ak[d] *= kscale;
    store_row(elem<T>(p.dk, s, j0 + jj, s.k_row0, hkv), ak, sh.D);
    store_row(elem<T>(p.dv, s, j0 + jj, s.k_row0, hkv), w.acc_v.p + jj * w.Dvp, sh.Dv);
  }
}

// Pass 2: dQ of one query tile (and its share of the sigmoid-bias gradient).
template <typename T, typename Engine>
void dq_tile(const AttnBwdParams& p, const Seq& s, int hkv, int r0, BwdState& w, Engine& e, float* dbias_part) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv, r1 = std::min(r0 + BQ, s.q_len * group);
  e.pack_rows(p, s, hkv, group, r0, false, w.tmp.p);
  load_row_stats(p, s, hkv, group, r0, w);
  float* dqt = w.acc_k.p;  // round_up(D, CR) x BQ
  std::memset(dqt, 0, sizeof(float) * w.Dp * BQ);
  alignas(64) float lane_bias_grad[BQ] = {};
  for_each_key_tile(key_span(p.mask, s, group, r0, r1), [&](int j0, int nk) {
    e.load_keys(p, s, hkv, j0, nk);
    probs_and_dscores(p, s, group, j0, r0, nk, w, e, dbias_part ? lane_bias_grad : nullptr);
    e.acc_dq(dqt, w.dpt.p, nk);  // dQ^T += K^T dS
  });
  for (int r = r0; r < r1; ++r) {
    const int rr = r - r0, h = hkv * group + r % group;
    for (int d = 0; d < sh.D; ++d) w.tmp[d] = dqt[size_t(d) * BQ + rr] * p.mask.scale;
    store_row(elem<T>(p.dq, s, r / group, s.q_row0, h), w.tmp.p, sh.D);
    if (dbias_part) dbias_part[r % group] += lane_bias_grad[rr];
  }
}

template <typename T, typename Engine>
void bwd(const AttnBwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv;
  struct Worker {
    BwdState state;
    Engine engine;
    Worker(int D, int Dv) : state(D, Dv), engine(D, Dv, state) {}
  };
  auto scratch = [&] { return std::make_unique<Worker>(sh.D, sh.Dv); };

  TaskMap kmap(sh.B, [&](int b) { return int64_t(sh.Hkv) * ((seq_of(sh, b).k_len + BK - 1) / BK); });
  run_tasks(kmap.total(), p.threads, scratch, [&](int64_t t, Worker& w) {
    int b;
    int64_t local;
    kmap.locate(t, b, local);
    const Seq s = seq_of(sh, b);
    const int64_t tiles = (s.k_len + BK - 1) / BK;
    dkdv_tile<T>(p, s, int(local / tiles), int(local % tiles), w.state, w.engine);
  });

  auto row_tiles = [&](const Seq& s) { return (int64_t(s.q_len) * group + BQ - 1) / BQ; };
  TaskMap qmap(sh.B, [&](int b) { return int64_t(sh.Hkv) * row_tiles(seq_of(sh, b)); });
  const int64_t nq = qmap.total();
  // Sigmoid-bias gradient: one partial per (task, head in group), summed in task order.
  Buf<float> part(p.dbias ? size_t(std::max<int64_t>(nq, 1)) * group : 1);
  if (p.dbias) std::memset(part.p, 0, sizeof(float) * nq * group);
  run_tasks(nq, p.threads, scratch, [&](int64_t t, Worker& w) {
    w.engine.cache_keys = true;  // a query tile reads every key tile of its head
    int b;
    int64_t local;
    qmap.locate(t, b, local);
    const Seq s = seq_of(sh, b);
    const int64_t tiles = row_tiles(s);
    dq_tile<T>(p, s, int(local / tiles), int(local % tiles) * BQ, w.state, w.engine,
               p.dbias ? part.p + t * group : nullptr);
  });
  if (p.dbias) {
    for (int h = 0; h < sh.Hq; ++h) p.dbias[h] = 0.f;
    for (int64_t t = 0; t < nq; ++t) {
      int b;
      int64_t local;
      qmap.locate(t, b, local);
      const int hkv = int(local / row_tiles(seq_of(sh, b)));
      for (int g = 0; g < group; ++g) p.dbias[hkv * group + g] += part[t * group + g];
    }
  }
}

}  // namespace

void attention_bwd_cpu(const AttnBwdParams& p) {
  switch (p.dtype) {
    case DType::f32: return bwd<float, F32BwdEngine<float>>(p);
#if defined(KK_ISA_AVX512)
    case DType::bf16: return bwd<bf16_t, Bf16BwdEngine>(p);
#else
    case DType::bf16: return bwd<bf16_t, F32BwdEngine<bf16_t>>(p);
#endif
    case DType::f16: return bwd<f16_t, F32BwdEngine<f16_t>>(p);
    default: throw std::invalid_argument("flash_attn backward: unsupported dtype");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
