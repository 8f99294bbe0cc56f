// CPU chunked linear attention, forward. Per chunk (rows i, j < n, state S entering it):
//   O   = (scale * Q * exp(G)) S  +  A V,     A_ij = scale * sum_k q_ik k_jk exp(G_ik - G_jk), j <= i
//   S  <- exp(G_end) * S  +  (K * exp(G_end - G))^T V
// Scalar gates form A as one GEMM (Q K^T) times a C x C decay mask; vector (GLA) gates
// walk j <= i with the running product exp(G_i - G_j) = prod of per-step factors, so no
// exponent is ever positive. Columns of V are independent, so when (sequence, head)
// units cannot fill the threads they are split into V blocks (same results either way).
#include "linear_attn/cpu/chunk.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace la;

// Vector gates: A[i][j] = mult * sum_k q_i[k] k_j[k] exp(G_i[k] - G_j[k]) for j <= i < n.
void gla_scores(float* A, const float* Q, const float* Kc, const float* E, const Dims& d, int n, float mult) {
  Buf<float> run(d.Kp);
  for (int i = 0; i < n; ++i) std::memset(A + size_t(i) * d.Cp, 0, sizeof(float) * d.Cp);
  for (int j = 0; j < n; ++j) {
    std::memcpy(run.p, Kc + size_t(j) * d.Kp, sizeof(float) * d.Kp);  // k_j * exp(G_i - G_j), i = j
    for (int i = j; i < n; ++i) {
      const float* qi = Q + size_t(i) * d.Kp;
      const float* ei = E + size_t(i) * d.gld;
      Vec acc = Vec::zero();
      for (int k = 0; k < d.Kp; k += Vec::size) {
        Vec r = Vec::load(run.p + k);
        if (i > j) {
          r = r * Vec::load(ei + k);
          r.store(run.p + k);
        }
        acc = fma(Vec::load(qi + k), r, acc);
      }
      A[size_t(i) * d.Cp + j] = mult * acc.sum();
    }
  }
}

template <typename T, typename Engine>
struct FwdWorker {
  Dims d;
  Buf<float> Q, Kc, Vc, G, E, Qd, KT, A, O, S, tmp;
  Engine eng;
  FwdWorker(const LaParams& p, int vwidth, int max_dim)
      : d(p, vwidth), Q(size_t(d.C) * d.Kp), Kc(size_t(d.C) * d.Kp), Vc(size_t(d.C) * d.Vp),
        G(size_t(d.C) * d.gld), E(size_t(d.C) * d.gld), Qd(size_t(d.C) * d.Kp), KT(size_t(d.Kp) * d.Cp),
        A(size_t(d.C) * d.Cp), O(size_t(d.C) * d.Vp), S(size_t(d.Kp) * d.Vp), tmp(size_t(d.C) * d.Kp), eng(max_dim) {}

  void run(const LaParams& p, int n_seq, int h, int c0) {
    const Seq s = seq_of(p, n_seq);
    const int C = d.C, K = d.K, Kp = d.Kp, Vp = d.Vp, Cp = d.Cp;
    const int64_t state_off = (int64_t(n_seq) * p.H + h) * K * p.V;
    bool zero_state = p.h0 == nullptr;
    std::memset(S.p, 0, sizeof(float) * Kp * Vp);
    if (!zero_state)
      for (int k = 0; k < K; ++k) widen(S.p + size_t(k) * Vp, static_cast<const float*>(p.h0) + state_off + k * p.V + c0, d.V);
    for (int64_t t0 = 0; t0 < s.len; t0 += C) {
      const int n = int(std::min<int64_t>(C, s.len - t0));
      load_rows<T>(Q.p, Kp, C, p.q, s, t0, n, h, 0, K);
      load_rows<T>(Kc.p, Kp, C, p.k, s, t0, n, h, 0, K);
      load_rows<T>(Vc.p, Vp, C, p.v, s, t0, n, h, c0, d.V);
      if (p.gate != LaGate::none) gate_tile(G.p, E.p, d, p, s, t0, n, h);
      else std::memset(G.p, 0, sizeof(float) * C * d.gld);

      // Intra-chunk scores.
      if (p.gate == LaGate::vector) {
        gla_scores(A.p, Q.p, Kc.p, E.p, d, n, float(p.scale));
      } else {
        gemm::transpose(KT.p, Cp, Kc.p, Kp, C, Kp);
        eng.mm(n, Cp, K, eng.prep_a(0, Q.p, Kp, n, K), eng.prep_b(0, KT.p, Cp, K, Cp), A.p, Cp, false);
        causal_decay(A.p, Cp, G.p, d, n, float(p.scale));
      }
      // O = (scale Q exp(G)) S + A V
      const gemm::MatB vb = eng.prep_b(1, Vc.p, Vp, n, Vp);
      if (!zero_state) {
        decay_rows(Qd.p, Q.p, Kp, G.p, d, n, float(p.scale), false);
        eng.mm(n, Vp, K, eng.prep_a(1, Qd.p, Kp, n, K), eng.prep_b(2, S.p, Vp, K, Vp), O.p, Vp, false);
      }
      eng.mm(n, Vp, n, eng.prep_a(2, A.p, Cp, n, n), vb, O.p, Vp, !zero_state);
      T* o = static_cast<T*>(p.o);
      for (int i = 0; i < n; ++i) store_row(o + out_row(p, s, t0 + i, h) * p.V + c0, O.p + size_t(i) * Vp, d.V);

      // S <- exp(G_end) S + (K exp(G_end - G))^T V; skipped after the last chunk unless wanted.
      if (t0 + C >= s.len && !p.ht) break;
      if (!zero_state) decay_state(S.p, Vp, G.p, d, n);
      decayed_keys_t(KT.p, tmp.p, Kc.p, G.p, d, n);
      eng.mm(K, Vp, n, eng.prep_a(3, KT.p, Cp, K, n), vb, S.p, Vp, !zero_state);
      zero_state = false;
    }
    if (p.ht) {
      float* ht = static_cast<float*>(p.ht) + state_off;
      if (zero_state) std::memset(S.p, 0, sizeof(float) * Kp * Vp);  // empty sequence
      for (int k = 0; k < K; ++k) std::memcpy(ht + k * p.V + c0, S.p + size_t(k) * Vp, sizeof(float) * d.V);
    }
  }
};

template <typename T, typename Engine>
void fwd(const LaParams& p) {
  using Worker = FwdWorker<T, Engine>;
  const int64_t units = int64_t(p.N) * p.H;
  // Split V into blocks (>= 32 wide) only when the units cannot keep the threads busy.
  int nvb = 1;
  if (units < p.threads) nvb = int(std::min<int64_t>((p.threads + units - 1) / units, std::max(1, p.V / 32)));
  const int vw = round_up((p.V + nvb - 1) / nvb, 16);
  nvb = (p.V + vw - 1) / vw;
  run_tasks(units * nvb, p.threads, [&] { return std::make_unique<Worker>(p, std::min(vw, p.V), max_dim(p)); },
            [&](int64_t t, Worker& w) {
              const int c0 = int(t % nvb) * vw, seq = int(t / nvb / p.H), h = int(t / nvb % p.H);
              if (p.V - c0 < w.d.V) {  // the last, narrower V block
                Worker tail(p, p.V - c0, max_dim(p));
                return tail.run(p, seq, h, c0);
              }
              w.run(p, seq, h, c0);
            });
}

}  // namespace

void linear_attn_fwd_cpu(const LaParams& p) {
  switch (p.dtype) {
    case DType::f32: return fwd<float, gemm::F32Gemm>(p);
    case DType::bf16: return fwd<bf16_t, gemm::Bf16InputGemm>(p);
    case DType::f16: return fwd<f16_t, gemm::F32Gemm>(p);
    default: throw std::invalid_argument("linear_attn: unsupported dtype");
  }
}

// One token: S' = exp(g) S + k^T v, o = scale q S', in one pass over the state rows.
void linear_attn_step_cpu(const LaStepParams& p) {
  const int64_t units = int64_t(p.B) * p.H;
  parallel_for(units, p.threads, 1, [&](int64_t u0, int64_t u1) {
    Buf<float> q(p.K + Vec::size), k(p.K + Vec::size), v(round_up(p.V, Vec::size)), o(round_up(p.V, Vec::size)),
        a(p.K + Vec::size);
    for (int64_t u = u0; u < u1; ++u) {
      const int b = int(u / p.H), h = int(u % p.H);
      auto load = [&](float* dst, const void* src, int64_t off, int n) {
        switch (p.dtype) {
          case DType::f32: widen(dst, static_cast<const float*>(src) + off, n); break;
          case DType::bf16: widen(dst, static_cast<const bf16_t*>(src) + off, n); break;
          default: widen(dst, static_cast<const f16_t*>(src) + off, n); break;
        }
      };
      load(q.p, p.q, u * p.K, p.K);
      load(k.p, p.k, u * p.K, p.K);
      std::memset(v.p, 0, sizeof(float) * round_up(p.V, Vec::size));
      load(v.p, p.v, u * p.V, p.V);
      const float* g = static_cast<const float*>(p.g);
      for (int kk = 0; kk < p.K; ++kk)
        a[kk] = p.gate == LaGate::none     ? 1.f
                : p.gate == LaGate::scalar ? std::exp(g[b * p.gbs + h * p.ghs])
                                           : std::exp(g[b * p.gbs + h * p.ghs + kk]);
      std::memset(o.p, 0, sizeof(float) * round_up(p.V, Vec::size));
      const float* S = static_cast<const float*>(p.state) + u * p.K * p.V;
      float* Sn = static_cast<float*>(p.new_state) + u * p.K * p.V;
      const int vfull = p.V / Vec::size * Vec::size;
      for (int kk = 0; kk < p.K; ++kk) {
        const Vec ak = Vec::set1(a[kk]), kv = Vec::set1(k[kk]), qk = Vec::set1(q[kk] * float(p.scale));
        const float* row = S + int64_t(kk) * p.V;
        float* nrow = Sn + int64_t(kk) * p.V;
        int c = 0;
        for (; c < vfull; c += Vec::size) {
          const Vec x = fma(ak, Vec::load(row + c), kv * Vec::load(v.p + c));
          x.store(nrow + c);
          fma(qk, x, Vec::load(o.p + c)).store(o.p + c);
        }
        for (; c < p.V; ++c) {
          nrow[c] = a[kk] * row[c] + k[kk] * v[c];
          o[c] += q[kk] * float(p.scale) * nrow[c];
        }
      }
      switch (p.dtype) {
        case DType::f32: store_row(static_cast<float*>(p.o) + u * p.V, o.p, p.V); break;
        case DType::bf16: store_row(static_cast<bf16_t*>(p.o) + u * p.V, o.p, p.V); break;
        default: store_row(static_cast<f16_t*>(p.o) + u * p.V, o.p, p.V); break;
      }
    }
  });
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
