// CPU flash-attention backward, recomputing scores from the saved log-sum-exp.
// Two passes, both parallel and free of races, so gradients are bitwise
// reproducible for any thread count: pass 1 owns a key tile and sums dK, dV over
// the query rows that see it; pass 2 owns a query tile and sums dQ over its keys.
#include <memory>

#include "attention/cpu/tiles.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace attn;

struct BwdScratch {
  int Dp, Dvp;  // feature widths padded for the tile kernels
  Buf<float> qt, qn, dot_, don, kb, vb, st, tanh_, dpt, acc_k, acc_v, lse, delta, bias, tmp;
  BwdScratch(int D, int Dv)
      : Dp(round_up(D, NR * Vec::size)), Dvp(round_up(Dv, NR * Vec::size)),
        qt(size_t(D) * BQ), qn(size_t(BQ) * Dp), dot_(size_t(Dv) * BQ), don(size_t(BQ) * Dvp),
        kb(size_t(BK) * Dp), vb(size_t(BK) * Dvp), st(size_t(BK) * BQ), tanh_(size_t(BK) * BQ),
        dpt(size_t(BK) * BQ), acc_k(size_t(std::max(BK * Dp, Dp * BQ))), acc_v(size_t(BK) * Dvp),
        lse(BQ), delta(BQ), bias(BQ), tmp(size_t(std::max(D, Dv)) + 16) {}
};

// Loads the per-row softmax statistics (or sigmoid biases) of rows [r0, r0 + BQ).
void load_row_stats(const AttnBwdParams& p, const Seq& s, int hkv, int group, int r0, BwdScratch& w) {
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

// For the key tile at j0 and query rows at r0 (stats and packed Q/dO loaded):
// st <- P, dpt <- dS (gradient w.r.t. the scaled, pre-softcap scores). With
// bias_grad set, adds each row's gradient w.r.t. the sigmoid bias (taken before
// the softcap factor: the bias is added after the cap).
template <typename T>
void probs_and_dscores(const AttnBwdParams& p, const Seq& s, int group, int j0, int r0, int nk, BwdScratch& w,
                       float* bias_grad = nullptr) {
  const AttnMask& mk = p.mask;
  const bool softmax = mk.activation == AttnActivation::softmax, cap = mk.softcap > 0.f;
  const int nkr = round_up(nk, JR);
  tile_scores(w.st.p, w.kb.p, w.Dp, w.qt.p, p.shape.D, nkr);
  cap_and_mask(w.st.p, cap ? w.tanh_.p : nullptr, mk, s, group, j0, r0, nk, kNegInf);
  tile_scores(w.dpt.p, w.vb.p, w.Dvp, w.dot_.p, p.shape.Dv, nkr);
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

template <typename T>
void pack_dout(const AttnBwdParams& p, const Seq& s, int hkv, int group, int r0, BwdScratch& w) {
  pack_rows_t<T>(w.dot_.p, w.don.p, w.Dvp, p.dout, s, hkv, group, r0, p.shape.Dv, 1.f, w.tmp.p);
}

// Pass 1: dK, dV of one key tile.
template <typename T>
void dkdv_tile(const AttnBwdParams& p, const Seq& s, int hkv, int kb, BwdScratch& w) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv, j0 = kb * BK, nk = std::min(BK, s.k_len - j0);
  load_tile<T>(w.kb.p, w.Dp, p.k, s, hkv, j0, nk, sh.D);
  load_tile<T>(w.vb.p, w.Dvp, p.v, s, hkv, j0, nk, sh.Dv);
  std::memset(w.acc_k.p, 0, sizeof(float) * BK * w.Dp);
  std::memset(w.acc_v.p, 0, sizeof(float) * BK * w.Dvp);
  int rlo = INT_MAX, rhi = -1;
  for (int jj = 0; jj < nk; ++jj) {
    int lo, hi;
    visible_rows(p.mask, s, group, j0 + jj, lo, hi);
    if (lo <= hi) { rlo = std::min(rlo, lo); rhi = std::max(rhi, hi); }
  }
  const int nkr = round_up(nk, 4);
  for (int r0 = rlo >= 0 && rhi >= rlo ? rlo / BQ * BQ : 1; r0 <= rhi; r0 += BQ) {
    pack_rows_t<T>(w.qt.p, w.qn.p, w.Dp, p.q, s, hkv, group, r0, sh.D, p.mask.scale, w.tmp.p);
    pack_dout<T>(p, s, hkv, group, r0, w);
    load_row_stats(p, s, hkv, group, r0, w);
    probs_and_dscores<T>(p, s, group, j0, r0, nk, w);
    tile_acc_n(w.acc_v.p, w.st.p, w.don.p, w.Dvp, nkr);   // dV += P^T dO
    tile_acc_n(w.acc_k.p, w.dpt.p, w.qn.p, w.Dp, nkr);    // dK += dS^T (scale Q)
  }
  for (int jj = 0; jj < nk; ++jj) {
    store_row(elem<T>(p.dk, s, j0 + jj, s.k_row0, hkv), w.acc_k.p + jj * w.Dp, sh.D);
    store_row(elem<T>(p.dv, s, j0 + jj, s.k_row0, hkv), w.acc_v.p + jj * w.Dvp, sh.Dv);
  }
}

// Pass 2: dQ of one query tile (and its share of the sigmoid-bias gradient).
template <typename T>
void dq_tile(const AttnBwdParams& p, const Seq& s, int hkv, int r0, BwdScratch& w, float* dbias_part) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv, r1 = std::min(r0 + BQ, s.q_len * group);
  pack_rows_t<T>(w.qt.p, nullptr, 0, p.q, s, hkv, group, r0, sh.D, p.mask.scale, w.tmp.p);
  pack_dout<T>(p, s, hkv, group, r0, w);
  load_row_stats(p, s, hkv, group, r0, w);
  float* dqt = w.acc_k.p;  // Dp x BQ
  std::memset(dqt, 0, sizeof(float) * w.Dp * BQ);
  alignas(64) float lane_bias_grad[BQ] = {};
  for_each_key_tile(key_span(p.mask, s, group, r0, r1), [&](int kb) {
    const int j0 = kb * BK, nk = std::min(BK, s.k_len - j0);
    load_tile<T>(w.kb.p, w.Dp, p.k, s, hkv, j0, nk, sh.D);
    load_tile<T>(w.vb.p, w.Dvp, p.v, s, hkv, j0, nk, sh.Dv);
    probs_and_dscores<T>(p, s, group, j0, r0, nk, w, dbias_part ? lane_bias_grad : nullptr);
    tile_acc_t(dqt, w.kb.p, w.Dp, round_up(sh.D, CR), w.dpt.p, nk);  // dQ^T += K^T dS
  });
  for (int r = r0; r < r1; ++r) {
    const int rr = r - r0, h = hkv * group + r % group;
    for (int d = 0; d < sh.D; ++d) w.tmp[d] = dqt[size_t(d) * BQ + rr] * p.mask.scale;
    store_row(elem<T>(p.dq, s, r / group, s.q_row0, h), w.tmp.p, sh.D);
    if (dbias_part) dbias_part[r % group] += lane_bias_grad[rr];
  }
}

template <typename T>
void bwd(const AttnBwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv;
  auto scratch = [&] { return std::make_unique<BwdScratch>(sh.D, sh.Dv); };

  TaskMap kmap(sh.B, [&](int b) { return int64_t(sh.Hkv) * ((seq_of(sh, b).k_len + BK - 1) / BK); });
  run_tasks(kmap.total(), p.threads, scratch, [&](int64_t t, BwdScratch& w) {
    int b;
    int64_t local;
    kmap.locate(t, b, local);
    const Seq s = seq_of(sh, b);
    const int64_t tiles = (s.k_len + BK - 1) / BK;
    dkdv_tile<T>(p, s, int(local / tiles), int(local % tiles), w);
  });

  TaskMap qmap(sh.B, [&](int b) {
    return int64_t(sh.Hkv) * ((int64_t(seq_of(sh, b).q_len) * group + BQ - 1) / BQ);
  });
  const int64_t nq = qmap.total();
  // Sigmoid-bias gradient: one partial per (task, head in group), summed in task order.
  Buf<float> part(p.dbias ? size_t(std::max<int64_t>(nq, 1)) * group : 1);
  if (p.dbias) std::memset(part.p, 0, sizeof(float) * nq * group);
  run_tasks(nq, p.threads, scratch, [&](int64_t t, BwdScratch& w) {
    int b;
    int64_t local;
    qmap.locate(t, b, local);
    const Seq s = seq_of(sh, b);
    const int64_t tiles = (int64_t(s.q_len) * group + BQ - 1) / BQ;
    dq_tile<T>(p, s, int(local / tiles), int(local % tiles) * BQ, w, p.dbias ? part.p + t * group : nullptr);
  });
  if (p.dbias) {
    for (int h = 0; h < sh.Hq; ++h) p.dbias[h] = 0.f;
    for (int64_t t = 0; t < nq; ++t) {
      int b;
      int64_t local;
      qmap.locate(t, b, local);
      const Seq s = seq_of(sh, b);
      const int64_t tiles = (int64_t(s.q_len) * group + BQ - 1) / BQ;
      const int hkv = int(local / tiles);
      for (int g = 0; g < group; ++g) p.dbias[hkv * group + g] += part[t * group + g];
    }
  }
}

}  // namespace

void attention_bwd_cpu(const AttnBwdParams& p) {
  switch (p.dtype) {
    case DType::f32: return bwd<float>(p);
    case DType::bf16: return bwd<bf16_t>(p);
    case DType::f16: return bwd<f16_t>(p);
    default: throw std::invalid_argument("flash_attn backward: unsupported dtype");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
