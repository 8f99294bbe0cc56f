// fp64 versions of the scan-family ops as plain loops, compiled once (not per ISA): they exist so
// torch.autograd.gradcheck can check the ops (seq_idx included) in fp64.
#include <cmath>
#include <stdexcept>
#include <vector>

#include "common/dtype.h"
#include "common/parallel.h"
#include "scan/scan.h"

namespace kernkit {

namespace {

inline double get(const double* p, int64_t i) { return p[i]; }
inline void put(double* p, int64_t i, double v) { p[i] = v; }

// Whether ext position e (= input t' + W - 1) feeds output t of batch row b: always without seq_idx,
// else only positions inside x with output t's sequence index.
inline bool keep(const CausalConvParams& p, int64_t b, int64_t t, int64_t e) {
  if (!p.seq_idx) return true;
  const int64_t src = e - (p.W - 1);
  return src >= 0 && p.seq_idx[b * p.L + src] == p.seq_idx[b * p.L + t];
}

template <typename T, typename Wt>
void conv_fwd(const CausalConvParams& p) {
  const int64_t W = p.W, W1 = W - 1, L = p.L, S = conv_state_len(p);
  const T* x = static_cast<const T*>(p.x);
  const Wt* w = static_cast<const Wt*>(p.w);
  const T* init = static_cast<const T*>(p.init);
  parallel_for(p.B * p.D, p.threads, 1, [&](int64_t r0, int64_t r1) {
    std::vector<double> ext(L + S);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / p.D, d = r % p.D;
      for (int64_t i = 0; i < S; ++i) ext[i] = init ? get(init, r * S + i) : 0.0;  // before final_state is written
      for (int64_t t = 0; t < L; ++t) ext[S + t] = get(x, r * L + t);
      const double* e = ext.data() + (S - W1);
      for (int64_t t = 0; t < L; ++t) {
        double acc = p.bias ? get(static_cast<const Wt*>(p.bias), d) : 0.0;
        for (int64_t k = 0; k < W; ++k)
          if (keep(p, b, t, t + k)) acc += get(w, d * W + k) * e[t + k];
        if (p.silu) acc = acc / (1.0 + std::exp(-acc));
        put(static_cast<T*>(p.y), r * L + t, acc);
      }
      if (p.final_state)
        for (int64_t i = 0; i < S; ++i) put(static_cast<T*>(p.final_state), r * S + i, ext[L + i]);
    }
  });
}

template <typename T, typename Wt>
void conv_bwd(const CausalConvBwdParams& q) {
  const CausalConvParams& p = q.fwd;
  const int64_t W = p.W, W1 = W - 1, L = p.L, E = L + W1;
  const T* x = static_cast<const T*>(p.x);
  const Wt* w = static_cast<const Wt*>(p.w);
  const T* init = static_cast<const T*>(p.init);
  const T* dy = static_cast<const T*>(q.dy);
  parallel_for(p.D, p.threads, 1, [&](int64_t d0, int64_t d1) {
    std::vector<double> ext(E), g(L), dext(E);
    for (int64_t d = d0; d < d1; ++d) {
      std::vector<double> dw(W, 0.0);
      double dbias = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        const int64_t r = b * p.D + d;
        for (int64_t i = 0; i < W1; ++i) ext[i] = init ? get(init, r * W1 + i) : 0.0;
        for (int64_t t = 0; t < L; ++t) ext[W1 + t] = get(x, r * L + t);
        for (int64_t t = 0; t < L; ++t) {
          double gt = get(dy, r * L + t);
          if (p.silu) {
            double pre = p.bias ? get(static_cast<const Wt*>(p.bias), d) : 0.0;
            for (int64_t k = 0; k < W; ++k)
              if (keep(p, b, t, t + k)) pre += get(w, d * W + k) * ext[t + k];
            const double s = 1.0 / (1.0 + std::exp(-pre));
            gt *= s * (1.0 + pre * (1.0 - s));
          }
          g[t] = gt;
          dbias += gt;
          for (int64_t k = 0; k < W; ++k)
            if (keep(p, b, t, t + k)) dw[k] += gt * ext[t + k];
        }
        for (int64_t j = 0; j < E; ++j) {  // dext[j] = sum_k w[k] g[j - k]
          double acc = 0;
          for (int64_t k = 0; k < W; ++k)
            if (j - k >= 0 && j - k < L && keep(p, b, j - k, j)) acc += get(w, d * W + k) * g[j - k];
          dext[j] = acc;
        }
        if (q.dfinal)
          for (int64_t i = 0; i < W1; ++i) dext[L + i] += get(static_cast<const T*>(q.dfinal), r * W1 + i);
        for (int64_t t = 0; t < L; ++t) put(static_cast<T*>(q.dx), r * L + t, dext[W1 + t]);
        if (q.dinit)
          for (int64_t i = 0; i < W1; ++i) put(static_cast<T*>(q.dinit), r * W1 + i, dext[i]);
      }
      for (int64_t k = 0; k < W; ++k) put(static_cast<Wt*>(q.dw), d * W + k, dw[k]);
      if (q.dbias) put(static_cast<Wt*>(q.dbias), d, dbias);
    }
  });
}

}  // namespace

void causal_conv1d_fwd_exact(const CausalConvParams& p) {
  if (p.dtype != DType::f64 || p.wdtype != DType::f64) throw std::invalid_argument("causal_conv1d: exact path is fp64");
  conv_fwd<double, double>(p);
}
void causal_conv1d_bwd_exact(const CausalConvBwdParams& p) {
  if (p.fwd.dtype != DType::f64 || p.fwd.wdtype != DType::f64)
    throw std::invalid_argument("causal_conv1d: exact path is fp64");
  conv_bwd<double, double>(p);
}

}  // namespace kernkit
