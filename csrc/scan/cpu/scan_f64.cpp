// fp64 versions of the scan-family ops as plain loops, compiled once (not per
// ISA): they exist so torch.autograd.gradcheck can check the ops in fp64.
#include <cmath>
#include <vector>

#include "common/parallel.h"
#include "scan/scan.h"

namespace kernkit {

void causal_conv1d_fwd_f64(const CausalConvParams& p) {
  const int64_t W = p.W, W1 = W - 1, L = p.L;
  const double* x = static_cast<const double*>(p.x);
  const double* w = static_cast<const double*>(p.w);
  const double* init = static_cast<const double*>(p.init);
  parallel_for(p.B * p.D, p.threads, 1, [&](int64_t r0, int64_t r1) {
    std::vector<double> ext(L + W1);
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t d = r % p.D;
      for (int64_t i = 0; i < W1; ++i) ext[i] = init ? init[r * W1 + i] : 0.0;
      for (int64_t t = 0; t < L; ++t) ext[W1 + t] = x[r * L + t];
      for (int64_t t = 0; t < L; ++t) {
        double acc = p.bias ? static_cast<const double*>(p.bias)[d] : 0.0;
        for (int64_t k = 0; k < W; ++k) acc += w[d * W + k] * ext[t + k];
        if (p.silu) acc = acc / (1.0 + std::exp(-acc));
        static_cast<double*>(p.y)[r * L + t] = acc;
      }
      if (p.final_state)
        for (int64_t i = 0; i < W1; ++i) static_cast<double*>(p.final_state)[r * W1 + i] = ext[L + i];
    }
  });
}

void causal_conv1d_bwd_f64(const CausalConvBwdParams& q) {
  const CausalConvParams& p = q.fwd;
  const int64_t W = p.W, W1 = W - 1, L = p.L, E = L + W1;
  const double* x = static_cast<const double*>(p.x);
  const double* w = static_cast<const double*>(p.w);
  const double* init = static_cast<const double*>(p.init);
  const double* dy = static_cast<const double*>(q.dy);
  parallel_for(p.D, p.threads, 1, [&](int64_t d0, int64_t d1) {
    std::vector<double> ext(E), g(L), dext(E);
    for (int64_t d = d0; d < d1; ++d) {
      std::vector<double> dw(W, 0.0);
      double dbias = 0;
      for (int64_t b = 0; b < p.B; ++b) {
        const int64_t r = b * p.D + d;
        for (int64_t i = 0; i < W1; ++i) ext[i] = init ? init[r * W1 + i] : 0.0;
        for (int64_t t = 0; t < L; ++t) ext[W1 + t] = x[r * L + t];
        for (int64_t t = 0; t < L; ++t) {
          double gt = dy[r * L + t];
          if (p.silu) {
            double pre = p.bias ? static_cast<const double*>(p.bias)[d] : 0.0;
            for (int64_t k = 0; k < W; ++k) pre += w[d * W + k] * ext[t + k];
            const double s = 1.0 / (1.0 + std::exp(-pre));
            gt *= s * (1.0 + pre * (1.0 - s));
          }
          g[t] = gt;
          dbias += gt;
          for (int64_t k = 0; k < W; ++k) dw[k] += gt * ext[t + k];
        }
        for (int64_t j = 0; j < E; ++j) {
          double acc = 0;
          for (int64_t k = 0; k < W; ++k)
            if (j - k >= 0 && j - k < L) acc += w[d * W + k] * g[j - k];
          dext[j] = acc;
        }
        if (q.dfinal)
          for (int64_t i = 0; i < W1; ++i) dext[L + i] += static_cast<const double*>(q.dfinal)[r * W1 + i];
        for (int64_t t = 0; t < L; ++t) static_cast<double*>(q.dx)[r * L + t] = dext[W1 + t];
        if (q.dinit)
          for (int64_t i = 0; i < W1; ++i) static_cast<double*>(q.dinit)[r * W1 + i] = dext[i];
      }
      for (int64_t k = 0; k < W; ++k) static_cast<double*>(q.dw)[d * W + k] = dw[k];
      if (q.dbias) static_cast<double*>(q.dbias)[d] = dbias;
    }
  });
}

}  // namespace kernkit
