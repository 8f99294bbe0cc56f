// fp64 attention, forward and backward: a direct row-by-row loop in double,
// compiled once (not per ISA). It exists so torch.autograd.gradcheck can check
// the op in fp64 — not for speed; the backward runs on one thread.
#include <cmath>
#include <vector>

#include "attention/attention.h"
#include "common/parallel.h"

namespace kernkit {
namespace {

struct SeqF64 {
  int q_len, k_len, off;
  int64_t q_row0, k_row0;
};

SeqF64 seq_f64(const AttnShape& s, int b) {
  SeqF64 q;
  q.q_row0 = s.cu_q ? s.cu_q[b] : 0;
  q.k_row0 = s.cu_k ? s.cu_k[b] : 0;
  q.q_len = s.cu_q ? s.cu_q[b + 1] - s.cu_q[b] : s.Sq;
  q.k_len = s.seqused_k ? s.seqused_k[b] : (s.cu_k ? s.cu_k[b + 1] - s.cu_k[b] : s.Sk);
  q.off = q.k_len - q.q_len + s.diag_shift;
  return q;
}

bool visible(const AttnMask& m, const SeqF64& s, long i, long j) {
  if (m.right >= 0 && j > i + s.off + m.right) return false;
  return m.left < 0 || j >= i + s.off - m.left || j < m.sinks;
}

double* at(const AttnTensor& t, int b, int64_t row, int h) {
  return static_cast<double*>(const_cast<void*>(t.ptr)) + b * t.bs + row * t.rs + h * t.hs;
}

double bias_of(const AttnMask& m, const SeqF64& s, int h) {
  if (m.sigmoid_bias) return m.sigmoid_bias[h];
  return m.sigmoid_bias_default ? -std::log(double(std::max(s.k_len, 1))) : m.sigmoid_bias_value;
}

// Scores of row (b, h, i) against all keys; returns false where invisible. cap_t gets tanh(s/cap).
void row_scores(const AttnShape& sh, const AttnMask& m, const AttnTensor& q, const AttnTensor& k, int b,
                const SeqF64& s, int h, int i, std::vector<double>& sc, std::vector<double>& cap_t,
                std::vector<char>& vis) {
  const int hk = h / (sh.Hq / sh.Hkv);
  const double* qi = at(q, b, s.q_row0 + i, h);
  for (int j = 0; j < s.k_len; ++j) {
    vis[j] = visible(m, s, i, j);
    if (!vis[j]) continue;
    const double* kj = at(k, b, s.k_row0 + j, hk);
    double acc = 0;
    for (int d = 0; d < sh.D; ++d) acc += qi[d] * kj[d];
    acc *= m.scale;
    if (m.softcap > 0) {
      cap_t[j] = std::tanh(acc / m.softcap);
      acc = m.softcap * cap_t[j];
    }
    sc[j] = acc;
  }
}

// Probabilities of one row: softmax with its lse (written), or sigmoid.
void row_probs(const AttnMask& m, const SeqF64& s, double bias, std::vector<double>& sc,
               const std::vector<char>& vis, double& lse) {
  if (m.activation == AttnActivation::sigmoid) {
    for (int j = 0; j < s.k_len; ++j) sc[j] = vis[j] ? 1.0 / (1.0 + std::exp(-(sc[j] + bias))) : 0.0;
    return;
  }
  double mx = -INFINITY;
  for (int j = 0; j < s.k_len; ++j)
    if (vis[j]) mx = std::max(mx, sc[j]);
  double sum = 0;
  for (int j = 0; j < s.k_len; ++j) sum += vis[j] ? std::exp(sc[j] - mx) : 0.0;
  lse = sum > 0 ? mx + std::log(sum) : -INFINITY;
  for (int j = 0; j < s.k_len; ++j) sc[j] = (vis[j] && sum > 0) ? std::exp(sc[j] - lse) : 0.0;
}

}  // namespace

void attention_fwd_f64(const AttnFwdParams& p) {
  const AttnShape& sh = p.shape;
  const int group = sh.Hq / sh.Hkv;
  for (int b = 0; b < sh.B; ++b) {
    const SeqF64 s = seq_f64(sh, b);
    parallel_for(int64_t(sh.Hq) * s.q_len, p.threads, 16, [&](int64_t t0, int64_t t1) {
      std::vector<double> sc(s.k_len + 1), cap_t(s.k_len + 1);
      std::vector<char> vis(s.k_len + 1);
      for (int64_t t = t0; t < t1; ++t) {
        const int h = int(t / s.q_len), i = int(t % s.q_len);
        double lse = 0;
        row_scores(sh, p.mask, p.q, p.k, b, s, h, i, sc, cap_t, vis);
        row_probs(p.mask, s, bias_of(p.mask, s, h), sc, vis, lse);
        double* o = at(p.o, b, s.q_row0 + i, h);
        for (int c = 0; c < sh.Dv; ++c) o[c] = 0;
        for (int j = 0; j < s.k_len; ++j) {
          if (sc[j] == 0.0) continue;
          const double* vj = at(p.v, b, s.k_row0 + j, h / group);
          for (int c = 0; c < sh.Dv; ++c) o[c] += sc[j] * vj[c];
        }
        if (p.lse && p.mask.activation == AttnActivation::softmax)
          p.lse[b * sh.stat_bs + h * sh.stat_hs + s.q_row0 + i] = float(lse);
      }
    });
  }
}

void attention_bwd_f64(const AttnBwdParams& p) {
  const AttnShape& sh = p.shape;
  const AttnMask& m = p.mask;
  const int group = sh.Hq / sh.Hkv;
  if (p.dbias)
    for (int h = 0; h < sh.Hq; ++h) p.dbias[h] = 0;
  for (int b = 0; b < sh.B; ++b) {
    const SeqF64 s = seq_f64(sh, b);
    for (int hk = 0; hk < sh.Hkv; ++hk)
      for (int j = 0; j < s.k_len; ++j) {
        double* dk = at(p.dk, b, s.k_row0 + j, hk);
        double* dv = at(p.dv, b, s.k_row0 + j, hk);
        for (int d = 0; d < sh.D; ++d) dk[d] = 0;
        for (int c = 0; c < sh.Dv; ++c) dv[c] = 0;
      }
    std::vector<double> P(s.k_len + 1), cap_t(s.k_len + 1), dS(s.k_len + 1);
    std::vector<char> vis(s.k_len + 1);
    for (int h = 0; h < sh.Hq; ++h)
      for (int i = 0; i < s.q_len; ++i) {
        double lse = 0;
        row_scores(sh, m, p.q, p.k, b, s, h, i, P, cap_t, vis);
        row_probs(m, s, bias_of(m, s, h), P, vis, lse);  // lse recomputed in double
        // The row's statistics are recomputed in double, unless the caller's lse is not the one
        // these keys give (bitwise: the forward stores float(lse)): then the caller attended to
        // more keys than this call sees (ring attention's blocks) and its lse and delta rule.
        const int64_t stat = b * sh.stat_bs + h * sh.stat_hs + s.q_row0 + i;
        const bool external = m.activation == AttnActivation::softmax && float(lse) != p.lse[stat] &&
                              !(std::isinf(lse) && std::isinf(p.lse[stat]));
        if (external)
          for (int j = 0; j < s.k_len; ++j) P[j] = P[j] == 0.0 ? 0.0 : P[j] * std::exp(lse - double(p.lse[stat]));
        const double* go = at(p.dout, b, s.q_row0 + i, h);
        double delta = 0;  // rowsum(dO * O) = sum_j P_j (dO . v_j)
        for (int j = 0; j < s.k_len; ++j) {
          dS[j] = 0;
          if (P[j] == 0.0) continue;
          const double* vj = at(p.v, b, s.k_row0 + j, h / group);
          double dp = 0;
          for (int c = 0; c < sh.Dv; ++c) dp += go[c] * vj[c];
          dS[j] = dp;
          delta += P[j] * dp;
        }
        if (external) delta = p.delta[stat];
        double* dq = at(p.dq, b, s.q_row0 + i, h);
        for (int d = 0; d < sh.D; ++d) dq[d] = 0;
        const double* qi = at(p.q, b, s.q_row0 + i, h);
        for (int j = 0; j < s.k_len; ++j) {
          if (P[j] == 0.0) continue;
          double g = m.activation == AttnActivation::softmax ? P[j] * (dS[j] - delta) : dS[j] * P[j] * (1 - P[j]);
          if (p.dbias) p.dbias[h] += float(g);
          if (m.softcap > 0) g *= 1 - cap_t[j] * cap_t[j];
          const double* kj = at(p.k, b, s.k_row0 + j, h / group);
          double* dk = at(p.dk, b, s.k_row0 + j, h / group);
          double* dv = at(p.dv, b, s.k_row0 + j, h / group);
          for (int d = 0; d < sh.D; ++d) {
            dq[d] += g * m.scale * kj[d];
            dk[d] += g * m.scale * qi[d];
          }
          for (int c = 0; c < sh.Dv; ++c) dv[c] += P[j] * go[c];
        }
      }
  }
}

}  // namespace kernkit
