// fp64 linear attention: plain token loops (no chunking), for gradcheck. The backward
// keeps a state checkpoint every kBlock tokens and recomputes the states of one block
// at a time, and differentiates the gate directly: dg_t = exp(g_t) * sum_v dS_t * S_{t-1}.
#include <cmath>
#include <cstring>
#include <vector>

#include "common/parallel.h"
#include "linear_attn/linear_attn.h"

namespace kernkit {
namespace {

constexpr int64_t kBlock = 64;

struct Unit {
  int b;
  int64_t row0, len;
};

Unit unit_of(const LaParams& p, int n) {
  if (p.cu_seqlens) return {0, p.cu_seqlens[n], int64_t(p.cu_seqlens[n + 1]) - p.cu_seqlens[n]};
  return {n, 0, p.T};
}

const double* row(const LaTensor& t, const Unit& u, int64_t r, int h) {
  return static_cast<const double*>(t.ptr) + u.b * t.bs + (u.row0 + r) * t.ts + h * t.hs;
}

int64_t out_row(const LaParams& p, const Unit& u, int64_t r, int h) { return (int64_t(u.b) * p.T + u.row0 + r) * p.H + h; }

// Per-key decay factors exp(g) of row r.
void decay_of(const LaParams& p, const Unit& u, int64_t r, int h, double* a) {
  const double* g = static_cast<const double*>(p.g);
  for (int k = 0; k < p.K; ++k) {
    if (p.gate == LaGate::none) a[k] = 1.0;
    else if (p.gate == LaGate::scalar) a[k] = std::exp(g[u.b * p.gbs + (u.row0 + r) * p.gts + h * p.ghs]);
    else a[k] = std::exp(g[u.b * p.gbs + (u.row0 + r) * p.gts + h * p.ghs + k]);
  }
}

// S <- diag(a) S + k v^T for row r.
void step(const LaParams& p, const Unit& u, int64_t r, int h, double* S, double* a) {
  decay_of(p, u, r, h, a);
  const double *k = row(p.k, u, r, h), *v = row(p.v, u, r, h);
  for (int i = 0; i < p.K; ++i)
    for (int j = 0; j < p.V; ++j) S[i * p.V + j] = a[i] * S[i * p.V + j] + k[i] * v[j];
}

void load_state(const LaParams& p, int n, int h, double* S) {
  const size_t sz = size_t(p.K) * p.V;
  if (p.h0) std::memcpy(S, static_cast<const double*>(p.h0) + (size_t(n) * p.H + h) * sz, sizeof(double) * sz);
  else std::memset(S, 0, sizeof(double) * sz);
}

}  // namespace

void linear_attn_fwd_f64(const LaParams& p) {
  parallel_for(int64_t(p.N) * p.H, p.threads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> S(size_t(p.K) * p.V), a(p.K);
    for (int64_t t = t0; t < t1; ++t) {
      const int n = int(t / p.H), h = int(t % p.H);
      const Unit u = unit_of(p, n);
      load_state(p, n, h, S.data());
      for (int64_t r = 0; r < u.len; ++r) {
        step(p, u, r, h, S.data(), a.data());
        const double* q = row(p.q, u, r, h);
        double* o = static_cast<double*>(p.o) + out_row(p, u, r, h) * p.V;
        for (int j = 0; j < p.V; ++j) {
          double acc = 0;
          for (int i = 0; i < p.K; ++i) acc += q[i] * S[i * p.V + j];
          o[j] = p.scale * acc;
        }
      }
      if (p.ht) std::memcpy(static_cast<double*>(p.ht) + (size_t(n) * p.H + h) * S.size(), S.data(), sizeof(double) * S.size());
    }
  });
}

void linear_attn_bwd_f64(const LaBwdParams& bp) {
  const LaParams& p = bp.fwd;
  const size_t sz = size_t(p.K) * p.V;
  parallel_for(int64_t(p.N) * p.H, p.threads, 1, [&](int64_t t0, int64_t t1) {
    std::vector<double> S(sz), dS(sz), a(p.K), block((kBlock + 1) * sz), ckpt;
    for (int64_t t = t0; t < t1; ++t) {
      const int n = int(t / p.H), h = int(t % p.H);
      const Unit u = unit_of(p, n);
      const int64_t nb = (u.len + kBlock - 1) / kBlock;
      ckpt.assign(sz * std::max<int64_t>(nb, 1), 0.0);
      load_state(p, n, h, S.data());
      for (int64_t r = 0; r < u.len; ++r) {
        if (r % kBlock == 0) std::memcpy(ckpt.data() + sz * (r / kBlock), S.data(), sizeof(double) * sz);
        step(p, u, r, h, S.data(), a.data());
      }
      if (bp.dht) std::memcpy(dS.data(), static_cast<const double*>(bp.dht) + (size_t(n) * p.H + h) * sz, sizeof(double) * sz);
      else std::fill(dS.begin(), dS.end(), 0.0);
      for (int64_t bi = nb - 1; bi >= 0; --bi) {
        const int64_t r0 = bi * kBlock, r1 = std::min(u.len, r0 + kBlock);
        std::memcpy(block.data(), ckpt.data() + sz * bi, sizeof(double) * sz);  // block[i] = S before row r0+i
        for (int64_t r = r0; r < r1; ++r) {
          std::memcpy(block.data() + sz * (r - r0 + 1), block.data() + sz * (r - r0), sizeof(double) * sz);
          step(p, u, r, h, block.data() + sz * (r - r0 + 1), a.data());
        }
        for (int64_t r = r1 - 1; r >= r0; --r) {
          const double* St = block.data() + sz * (r - r0 + 1);
          const double* Sp = block.data() + sz * (r - r0);
          const double *q = row(p.q, u, r, h), *k = row(p.k, u, r, h), *v = row(p.v, u, r, h);
          const int64_t orow = out_row(p, u, r, h);
          const double* dout = static_cast<const double*>(bp.dout) + orow * p.V;
          double* dq = static_cast<double*>(bp.dq) + orow * p.K;
          double* dk = static_cast<double*>(bp.dk) + orow * p.K;
          double* dv = static_cast<double*>(bp.dv) + orow * p.V;
          for (int i = 0; i < p.K; ++i) {
            double acc = 0;
            for (int j = 0; j < p.V; ++j) {
              dS[i * p.V + j] += p.scale * q[i] * dout[j];
              acc += St[i * p.V + j] * dout[j];
            }
            dq[i] = p.scale * acc;
          }
          for (int i = 0; i < p.K; ++i) {
            double acc = 0;
            for (int j = 0; j < p.V; ++j) acc += dS[i * p.V + j] * v[j];
            dk[i] = acc;
          }
          for (int j = 0; j < p.V; ++j) {
            double acc = 0;
            for (int i = 0; i < p.K; ++i) acc += dS[i * p.V + j] * k[i];
            dv[j] = acc;
          }
          decay_of(p, u, r, h, a.data());
          double gsum = 0;
          for (int i = 0; i < p.K; ++i) {
            double acc = 0;
            for (int j = 0; j < p.V; ++j) {
              acc += dS[i * p.V + j] * Sp[i * p.V + j];
              dS[i * p.V + j] *= a[i];
            }
            acc *= a[i];
            if (bp.dg && p.gate == LaGate::vector) static_cast<double*>(bp.dg)[orow * p.K + i] = acc;
            gsum += acc;
          }
          if (bp.dg && p.gate == LaGate::scalar) static_cast<double*>(bp.dg)[orow] = gsum;
        }
      }
      if (bp.dh0) std::memcpy(static_cast<double*>(bp.dh0) + (size_t(n) * p.H + h) * sz, dS.data(), sizeof(double) * sz);
    }
  });
}

void linear_attn_step_f64(const LaStepParams& p) {
  const size_t sz = size_t(p.K) * p.V;
  const double* g = static_cast<const double*>(p.g);
  for (int64_t u = 0; u < int64_t(p.B) * p.H; ++u) {
    const int b = int(u / p.H), h = int(u % p.H);
    const double *q = static_cast<const double*>(p.q) + u * p.K, *k = static_cast<const double*>(p.k) + u * p.K;
    const double* v = static_cast<const double*>(p.v) + u * p.V;
    const double* S = static_cast<const double*>(p.state) + u * sz;
    double* Sn = static_cast<double*>(p.new_state) + u * sz;
    double* o = static_cast<double*>(p.o) + u * p.V;
    for (int j = 0; j < p.V; ++j) o[j] = 0;
    for (int i = 0; i < p.K; ++i) {
      const double a = p.gate == LaGate::none     ? 1.0
                       : p.gate == LaGate::scalar ? std::exp(g[b * p.gbs + h * p.ghs])
                                                  : std::exp(g[b * p.gbs + h * p.ghs + i]);
      for (int j = 0; j < p.V; ++j) {
        Sn[i * p.V + j] = a * S[i * p.V + j] + k[i] * v[j];
        o[j] += p.scale * q[i] * Sn[i * p.V + j];
      }
    }
  }
}

}  // namespace kernkit
