// CPU chunked linear attention, backward. Per (sequence, head): one forward sweep
// recomputes the state entering every chunk (kept instead of stored by the forward),
// then a reverse sweep carries dS (the gradient of the state leaving a chunk):
//   dq  = dA_m K + scale exp(G) * (dO S^T)            dA = dO V^T, masked/decayed like A
//   dk  = dA_m^T Q + exp(G_end - G) * (V dS^T)
//   dv  = A_m^T dO + (K exp(G_end - G)) dS
//   dS <- exp(G_end) dS + (scale Q exp(G))^T dO
// Log-gate gradients: d/dG_t = q_t.dq_t - k_t.dk_t (elementwise per key dim for vector
// gates) summed from the end of each chunk, which adds <dS_end, S_end>; no exponent of a
// positive number is needed here either.
#include "linear_attn/cpu/chunk.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

using namespace la;

// Vector gates, intra-chunk: A[i][j] = mult sum_k q_ik k_jk P_k, P = exp(G_i - G_j) (j <= i), and
// with dA (already scaled) dq_i += sum_j dA_ij k_j * P, dk_j += sum_i dA_ij q_i * P.
void gla_intra_bwd(float* A, float* dQ, float* dK, const float* Q, const float* Kc, const float* dA, const float* E,
                   const Dims& d, int n, float mult) {
  Buf<float> P(d.Kp), dk(d.Kp);
  for (int i = 0; i < n; ++i) std::memset(A + size_t(i) * d.Cp, 0, sizeof(float) * d.Cp);
  for (int j = 0; j < n; ++j) {
    const float* kj = Kc + size_t(j) * d.Kp;
    for (int k = 0; k < d.Kp; ++k) { P[k] = 1.f; dk[k] = 0.f; }
    for (int i = j; i < n; ++i) {
      const float* qi = Q + size_t(i) * d.Kp;
      const float* ei = E + size_t(i) * d.gld;
      float* dqi = dQ + size_t(i) * d.Kp;
      const Vec da = Vec::set1(dA[size_t(i) * d.Cp + j]);
      Vec acc = Vec::zero();
      for (int k = 0; k < d.Kp; k += Vec::size) {
        Vec pk = Vec::load(P.p + k);
        if (i > j) {
          pk = pk * Vec::load(ei + k);
          pk.store(P.p + k);
        }
        const Vec kp = Vec::load(kj + k) * pk, qp = Vec::load(qi + k) * pk;
        acc = fma(Vec::load(qi + k), kp, acc);
        fma(da, kp, Vec::load(dqi + k)).store(dqi + k);
        fma(da, qp, Vec::load(dk.p + k)).store(dk.p + k);
      }
      A[size_t(i) * d.Cp + j] = mult * acc.sum();
    }
    float* dkj = dK + size_t(j) * d.Kp;
    for (int k = 0; k < d.Kp; k += Vec::size) (Vec::load(dkj + k) + Vec::load(dk.p + k)).store(dkj + k);
  }
}

// x[i][k] += f_i[k] * y[i][k] with f = mult * exp(G_i) (from_end: exp(G_end - G_i)), rows < n.
void add_decayed(float* x, const float* y, int ld, const float* G, const Dims& d, int n, float mult, bool from_end,
                 float* tmp) {
  decay_rows(tmp, y, ld, G, d, n, mult, from_end);
  for (int i = 0; i < n; ++i)
    for (int k = 0; k < ld; k += Vec::size)
      (Vec::load(x + size_t(i) * ld + k) + Vec::load(tmp + size_t(i) * ld + k)).store(x + size_t(i) * ld + k);
}

template <typename T, typename Engine>
struct BwdWorker {
  Dims d;
  Buf<float> Q, Kc, Vc, dO, G, E, A, dA, AT, KT, VT, ST, dST, Kd, Qd, dQ, dK, dV, tmpk, dS, S, r, col, pre;
  std::vector<float> states;  // state entering each chunk, [chunk][Kp][Vp]
  Engine eng;
  BwdWorker(const LaParams& p, int max_dim)
      : d(p, p.V), Q(size_t(d.C) * d.Kp), Kc(size_t(d.C) * d.Kp), Vc(size_t(d.C) * d.Vp), dO(size_t(d.C) * d.Vp),
        G(size_t(d.C) * d.gld), E(size_t(d.C) * d.gld), A(size_t(d.Cp) * d.Cp), dA(size_t(d.Cp) * d.Cp),
        AT(size_t(d.Cp) * d.Cp), KT(size_t(d.Kp) * d.Cp), VT(size_t(d.Vp) * d.Cp), ST(size_t(d.Vp) * d.Kp),
        dST(size_t(d.Vp) * d.Kp), Kd(size_t(d.C) * d.Kp), Qd(size_t(d.C) * d.Kp), dQ(size_t(d.C) * d.Kp),
        dK(size_t(d.C) * d.Kp), dV(size_t(d.C) * d.Vp), tmpk(size_t(d.C) * d.Kp),
        dS(size_t(d.Kp) * d.Vp), S(size_t(d.Kp) * d.Vp), r(d.Cp), col(d.Cp), pre(size_t(d.Cp) * d.Kp), eng(max_dim) {}

  void load_chunk(const LaParams& p, const Seq& s, int64_t t0, int n, int h) {
    load_rows<T>(Q.p, d.Kp, d.C, p.q, s, t0, n, h, 0, d.K);
    load_rows<T>(Kc.p, d.Kp, d.C, p.k, s, t0, n, h, 0, d.K);
    load_rows<T>(Vc.p, d.Vp, d.C, p.v, s, t0, n, h, 0, d.V);
    if (p.gate != LaGate::none) gate_tile(G.p, E.p, d, p, s, t0, n, h);
    else std::memset(G.p, 0, sizeof(float) * d.C * d.gld);
  }

  // Scalar gates: the intra-chunk part of d/dG_t = q_t.dq_t - k_t.dk_t, as the row sum minus the
  // column sum of M = A * (dO V^T) off the diagonal (the diagonal cancels exactly; as q.dq - k.dk
  // it would only cancel to rounding, which sums over T for per-head gates). Into r[0..n).
  void intra_gate_terms(int n) {
    const int Cp = d.Cp;
    for (int j = 0; j < Cp; ++j) col[j] = 0.f;
    for (int i = 0; i < n; ++i) {
      const float *a = A.p + size_t(i) * Cp, *da = dA.p + size_t(i) * Cp;
      Vec rs = Vec::zero();
      int j = 0;
      for (; j + Vec::size <= i; j += Vec::size) {
        const Vec m = Vec::load(a + j) * Vec::load(da + j);
        rs = rs + m;
        (Vec::load(col.p + j) + m).store(col.p + j);
      }
      float rsum = rs.sum();
      for (; j < i; ++j) {
        const float m = a[j] * da[j];
        rsum += m;
        col[j] += m;
      }
      r[i] = rsum;
    }
    for (int i = 0; i < n; ++i) r[i] -= col[i];
  }

  void run(const LaBwdParams& bp, int n_seq, int h) {
    const LaParams& p = bp.fwd;
    const Seq s = seq_of(p, n_seq);
    const int C = d.C, K = d.K, V = d.V, Kp = d.Kp, Vp = d.Vp, Cp = d.Cp;
    const int nc = int((s.len + C - 1) / C);
    const int64_t state_off = (int64_t(n_seq) * p.H + h) * K * V;
    const size_t ssz = size_t(Kp) * Vp;

    // Forward sweep: the state entering each chunk.
    states.assign(ssz * std::max(nc, 1), 0.f);
    std::memset(S.p, 0, sizeof(float) * ssz);
    if (p.h0)
      for (int k = 0; k < K; ++k) widen(S.p + size_t(k) * Vp, static_cast<const float*>(p.h0) + state_off + k * V, V);
    for (int c = 0; c < nc; ++c) {
      std::memcpy(states.data() + ssz * c, S.p, sizeof(float) * ssz);
      if (c == nc - 1) break;
      const int64_t t0 = int64_t(c) * C;
      const int n = int(std::min<int64_t>(C, s.len - t0));
      load_chunk(p, s, t0, n, h);
      decay_state(S.p, Vp, G.p, d, n);
      decayed_keys_t(KT.p, tmpk.p, Kc.p, G.p, d, n);
      eng.mm(K, Vp, n, eng.prep_a(0, KT.p, Cp, K, n), eng.prep_b(0, Vc.p, Vp, n, Vp), S.p, Vp, true);
    }

    // dG: within a chunk, d/dG_i sums to the log-gate gradient of row t over i >= t; the chunk's last
    // row also carries <dS_end, S_end> (the state leaving the chunk and its gradient). Chunk-local
    // sums avoid a sequence-long one, whose terms cancel heavily (T x <dS_T, S_T> against the k.dk).
    const bool vec = p.gate == LaGate::vector;
    const int gw = vec ? K : 1;
    std::vector<double> run_dg(gw, 0.0);
    std::memset(dS.p, 0, sizeof(float) * ssz);
    if (bp.dht) {
      const float* dht = static_cast<const float*>(bp.dht) + state_off;
      for (int k = 0; k < K; ++k)
        for (int v = 0; v < V; ++v) dS[size_t(k) * Vp + v] = dht[k * V + v];
    }

    T* dq_out = static_cast<T*>(bp.dq);
    T* dk_out = static_cast<T*>(bp.dk);
    T* dv_out = static_cast<T*>(bp.dv);
    for (int c = nc - 1; c >= 0; --c) {
      const int64_t t0 = int64_t(c) * C;
      const int n = int(std::min<int64_t>(C, s.len - t0));
      load_chunk(p, s, t0, n, h);
      std::memset(dO.p, 0, sizeof(float) * C * Vp);
      for (int i = 0; i < n; ++i)
        widen(dO.p + size_t(i) * Vp, static_cast<const T*>(bp.dout) + out_row(p, s, t0 + i, h) * V, V);
      const float* S0 = states.data() + ssz * c;
      if (bp.dg) {  // base = exp(G_end) <dS, S0>, per key dim for vector gates
        std::fill(run_dg.begin(), run_dg.end(), 0.0);
        const float* Gend = G.p + size_t(n - 1) * d.gld;
        for (int k = 0; k < K; ++k) {
          double acc = 0;
          for (int v = 0; v < V; ++v) acc += double(dS[size_t(k) * Vp + v]) * S0[size_t(k) * Vp + v];
          run_dg[!vec ? 0 : k] += acc * std::exp(double(Gend[!vec ? 0 : k]));
        }
      }
      // dA = scale dO V^T; A = scale Q K^T (both decayed and causal for scalar gates).
      gemm::transpose(VT.p, Cp, Vc.p, Vp, C, Vp);
      eng.mm(n, Cp, V, eng.prep_a(0, dO.p, Vp, n, V), eng.prep_b(0, VT.p, Cp, V, Cp), dA.p, Cp, false);
      std::memset(dQ.p, 0, sizeof(float) * C * Kp);
      if (p.gate == LaGate::vector) {
        for (int i = 0; i < n; ++i)
          for (int j = 0; j < Cp; ++j) dA[size_t(i) * Cp + j] *= float(p.scale);
        std::memset(dK.p, 0, sizeof(float) * C * Kp);
        gla_intra_bwd(A.p, dQ.p, dK.p, Q.p, Kc.p, dA.p, E.p, d, n, float(p.scale));
      } else {
        gemm::transpose(KT.p, Cp, Kc.p, Kp, C, Kp);
        eng.mm(n, Cp, K, eng.prep_a(1, Q.p, Kp, n, K), eng.prep_b(1, KT.p, Cp, K, Cp), A.p, Cp, false);
        causal_decay(A.p, Cp, G.p, d, n, float(p.scale));
        if (bp.dg) intra_gate_terms(n);
        causal_decay(dA.p, Cp, G.p, d, n, float(p.scale));
        eng.mm(n, Kp, n, eng.prep_a(2, dA.p, Cp, n, n), eng.prep_b(2, Kc.p, Kp, n, Kp), dQ.p, Kp, false);
        gemm::transpose(AT.p, Cp, dA.p, Cp, n, Cp);  // dA^T: [j][i]
        eng.mm(n, Kp, n, eng.prep_a(3, AT.p, Cp, n, n), eng.prep_b(3, Q.p, Kp, n, Kp), dK.p, Kp, false);
      }
      // dv = A^T dO + Kd dS
      gemm::transpose(AT.p, Cp, A.p, Cp, n, Cp);
      const gemm::MatB dob = eng.prep_b(0, dO.p, Vp, n, Vp);
      eng.mm(n, Vp, n, eng.prep_a(0, AT.p, Cp, n, n), dob, dV.p, Vp, false);
      decay_rows(Kd.p, Kc.p, Kp, G.p, d, n, 1.f, true);
      eng.mm(n, Vp, K, eng.prep_a(1, Kd.p, Kp, n, K), eng.prep_b(1, dS.p, Vp, K, Vp), dV.p, Vp, true);
      // dq += scale exp(G) (dO S0^T);  dk += exp(G_end - G) (V dS^T)
      gemm::transpose(ST.p, Kp, S0, Vp, Kp, Vp);
      eng.mm(n, Kp, V, eng.prep_a(2, dO.p, Vp, n, V), eng.prep_b(2, ST.p, Kp, V, Kp), tmpk.p, Kp, false);
      add_decayed(dQ.p, tmpk.p, Kp, G.p, d, n, float(p.scale), false, Qd.p);
      if (bp.dg && !vec)  // + q_t . dq_t (inter-chunk part)
        for (int i = 0; i < n; ++i) r[i] += float(p.scale) * std::exp(G[i]) * dot(Q.p + size_t(i) * Kp, tmpk.p + size_t(i) * Kp, K);
      gemm::transpose(dST.p, Kp, dS.p, Vp, Kp, Vp);
      eng.mm(n, Kp, V, eng.prep_a(3, Vc.p, Vp, n, V), eng.prep_b(3, dST.p, Kp, V, Kp), tmpk.p, Kp, false);
      add_decayed(dK.p, tmpk.p, Kp, G.p, d, n, 1.f, true, Qd.p);
      if (bp.dg)  // k_t . dk_t, inter-chunk part (Qd holds exp(G_end - G) * (V dS^T) here)
        for (int i = 0; i < n; ++i) {
          const float *ki = Kc.p + size_t(i) * Kp, *di = Qd.p + size_t(i) * Kp;
          if (!vec) pre[i] = dot(ki, di, K);
          else for (int k = 0; k < K; ++k) pre[size_t(i) * Kp + k] = ki[k] * di[k];
        }
      // dS <- exp(G_end) dS + (scale Q exp(G))^T dO
      decay_state(dS.p, Vp, G.p, d, n);
      decay_rows(Qd.p, Q.p, Kp, G.p, d, n, float(p.scale), false);
      gemm::transpose(KT.p, Cp, Qd.p, Kp, C, Kp);
      eng.mm(K, Vp, n, eng.prep_a(0, KT.p, Cp, K, n), dob, dS.p, Vp, true);

      // dg_t = sum_{i>=t} (q_i.dq_i - k_i.dk_i^intra) + base + sum_{j<t} k_j.dk_j^inter: the form that
      // needs no cancellation (as <dS_end, S_end> - sum_{j>=t} k_j.dk_j^inter would).
      if (bp.dg) {
        std::vector<double> prefix(size_t(n) * gw), accp(gw, 0.0);
        for (int i = 0; i < n; ++i)
          for (int k = 0; k < gw; ++k) {
            prefix[size_t(i) * gw + k] = accp[k];
            accp[k] += pre[!vec ? i : size_t(i) * Kp + k];
          }
        float* dg = static_cast<float*>(bp.dg);
        for (int i = n - 1; i >= 0; --i) {
          const int64_t row = out_row(p, s, t0 + i, h);
          const float *qi = Q.p + size_t(i) * Kp, *ki = Kc.p + size_t(i) * Kp;
          const float *dqi = dQ.p + size_t(i) * Kp, *dki = dK.p + size_t(i) * Kp;
          if (!vec) {
            run_dg[0] += r[i];
            dg[row] = float(run_dg[0] + prefix[i]);
          } else {
            for (int k = 0; k < K; ++k) {
              run_dg[k] += double(qi[k]) * dqi[k] - double(ki[k]) * dki[k] + pre[size_t(i) * Kp + k];
              dg[row * K + k] = float(run_dg[k] + prefix[size_t(i) * gw + k]);
            }
          }
        }
      }
      for (int i = n - 1; i >= 0; --i) {
        const int64_t row = out_row(p, s, t0 + i, h);
        const float *dqi = dQ.p + size_t(i) * Kp, *dki = dK.p + size_t(i) * Kp;
        store_row(dq_out + row * K, dqi, K);
        store_row(dk_out + row * K, dki, K);
        store_row(dv_out + row * V, dV.p + size_t(i) * Vp, V);
      }
    }
    if (bp.dh0) {
      float* dh0 = static_cast<float*>(bp.dh0) + state_off;
      for (int k = 0; k < K; ++k) std::memcpy(dh0 + k * V, dS.p + size_t(k) * Vp, sizeof(float) * V);
    }
  }
};

template <typename T, typename Engine>
void bwd(const LaBwdParams& bp) {
  const LaParams& p = bp.fwd;
  using Worker = BwdWorker<T, Engine>;
  run_tasks(int64_t(p.N) * p.H, p.threads, [&] { return std::make_unique<Worker>(p, max_dim(p)); },
            [&](int64_t t, Worker& w) { w.run(bp, int(t / p.H), int(t % p.H)); });
}

}  // namespace

void linear_attn_bwd_cpu(const LaBwdParams& p) {
  switch (p.fwd.dtype) {
    case DType::f32: return bwd<float, gemm::F32Gemm>(p);
    case DType::bf16: return bwd<bf16_t, gemm::Bf16InputGemm>(p);
    case DType::f16: return bwd<f16_t, gemm::F32Gemm>(p);
    default: throw std::invalid_argument("linear_attn: unsupported dtype");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
