// CPU flash-attention forward: blocked online softmax (or sigmoid) over key
// tiles, never materialising more than a BK x BQ score tile; fully masked key
// tiles are skipped, so windowed cost grows with the window, not with S^2.
#include <memory>

#include "attention/cpu/tiles.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace attn;

struct FwdScratch {
  int D, Dv, Dvp;
  Buf<float> qt, kb, vb, st, ot, m, l, bias, tmp;
  FwdScratch(int D_, int Dv_)
      : D(D_), Dv(Dv_), Dvp(round_up(Dv_, CR)),
        qt(size_t(D_) * BQ), kb(size_t(BK) * D_), vb(size_t(BK) * round_up(Dv_, CR)), st(size_t(BK) * BQ),
        ot(size_t(round_up(Dv_, CR)) * BQ), m(BQ), l(BQ), bias(BQ), tmp(size_t(std::max(D_, Dv_)) + 16) {}
};

template <typename T>
void fwd_tile(const AttnFwdParams& p, const Seq& s, int hkv, int r0, FwdScratch& w) {
  const AttnShape& sh = p.shape;
  const AttnMask& mk = p.mask;
  const int group = sh.Hq / sh.Hkv, D = sh.D, Dv = sh.Dv, Dvp = w.Dvp;
  const bool softmax = mk.activation == AttnActivation::softmax;
  const int r1 = std::min(r0 + BQ, s.q_len * group);

  pack_rows_t<T>(w.qt.p, nullptr, 0, p.q, s, hkv, group, r0, D, mk.scale, w.tmp.p);
  std::memset(w.ot.p, 0, sizeof(float) * Dvp * BQ);
  for (int rr = 0; rr < BQ; ++rr) { w.m[rr] = kNegInf; w.l[rr] = 0.f; }
  if (!softmax) sigmoid_bias_lanes(w.bias.p, mk, s, hkv, group, r0);

  for_each_key_tile(key_span(mk, s, group, r0, r1), [&](int kb) {
    const int j0 = kb * BK, nk = std::min(BK, s.k_len - j0);
    load_tile<T>(w.kb.p, D, p.k, s, hkv, j0, nk, D);
    load_tile<T>(w.vb.p, Dvp, p.v, s, hkv, j0, nk, Dv);
    tile_scores(w.st.p, w.kb.p, D, w.qt.p, D, round_up(nk, JR));
    if (softmax) {
      cap_and_mask(w.st.p, nullptr, mk, s, group, j0, r0, nk, kNegInf);
      for (int v = 0; v < QV; ++v) {
        const int o = v * Vec::size;
        Vec mx = Vec::set1(kNegInf);
        for (int jj = 0; jj < nk; ++jj) mx = max(mx, Vec::load(w.st.p + jj * BQ + o));
        const Vec m_old = Vec::load(w.m.p + o), m_new = max(m_old, mx);
        // Rows with nothing visible yet keep m = -inf; subtract 0 instead so exp gives 0, not NaN.
        const Vec m_use = select_below(m_new, -3.0e38f, Vec::zero(), m_new);
        const Vec alpha = exp(m_old - m_use);
        Vec sum = Vec::zero();
        for (int jj = 0; jj < nk; ++jj) {
          const Vec e = exp(Vec::load(w.st.p + jj * BQ + o) - m_use);
          e.store(w.st.p + jj * BQ + o);
          sum = sum + e;
        }
        fma(Vec::load(w.l.p + o), alpha, sum).store(w.l.p + o);
        m_new.store(w.m.p + o);
        for (int c = 0; c < Dv; ++c) (Vec::load(w.ot.p + c * BQ + o) * alpha).store(w.ot.p + c * BQ + o);
      }
    } else {
      cap_and_mask(w.st.p, nullptr, mk, s, group, j0, r0, nk, kNegInf);
      for (int jj = 0; jj < nk; ++jj)
        for (int v = 0; v < QV; ++v) {
          float* q = w.st.p + jj * BQ + v * Vec::size;
          const Vec x = Vec::load(q);  // masked scores are -inf: P must be exactly 0 there
          select_below(x, -3.0e38f, Vec::zero(), sigmoid(x + Vec::load(w.bias.p + v * Vec::size))).store(q);
        }
    }
    tile_acc_t(w.ot.p, w.vb.p, Dvp, Dvp, w.st.p, nk);
  });

  const int rows = r1 - r0;
  for (int rr = 0; rr < rows; ++rr) {
    const int r = r0 + rr, i = r / group, h = hkv * group + r % group;
    float inv = 1.f;
    if (softmax) {
      const float l = w.l[rr];
      inv = l > 0.f ? 1.f / l : 0.f;
      if (p.lse) p.lse[s.b * sh.stat_bs + h * sh.stat_hs + s.q_row0 + i] = l > 0.f ? w.m[rr] + std::log(l) : kNegInf;
    }
    for (int c = 0; c < Dv; ++c) w.tmp[c] = w.ot[size_t(c) * BQ + rr] * inv;
    store_row(elem<T>(p.o, s, i, s.q_row0, h), w.tmp.p, Dv);
  }
}

template <typename T>
void fwd(const AttnFwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv;
  TaskMap map(sh.B, [&](int b) {
    const Seq s = seq_of(sh, b);
    return int64_t(sh.Hkv) * ((int64_t(s.q_len) * group + BQ - 1) / BQ);
  });
  run_tasks(map.total(), p.threads, [&] { return std::make_unique<FwdScratch>(sh.D, sh.Dv); },
            [&](int64_t t, FwdScratch& w) {
              int b;
              int64_t local;
              map.locate(t, b, local);
              const Seq s = seq_of(sh, b);
              const int64_t tiles = (int64_t(s.q_len) * group + BQ - 1) / BQ;
              fwd_tile<T>(p, s, int(local / tiles), int(local % tiles) * BQ, w);
            });
}

}  // namespace

void attention_fwd_cpu(const AttnFwdParams& p) {
  switch (p.dtype) {
    case DType::f32: return fwd<float>(p);
    case DType::bf16: return fwd<bf16_t>(p);
    case DType::f16: return fwd<f16_t>(p);
    default: throw std::invalid_argument("flash_attn: unsupported dtype");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
