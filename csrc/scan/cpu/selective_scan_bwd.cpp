// Mamba selective scan on CPU, backward. The states are recomputed from checkpoints (memory
// O(N * L / chunk) per task) and the reverse recurrence runs per channel; every cross-channel or
// cross-batch sum goes through fixed partial buffers reduced in order, so gradients are
// deterministic for any thread count.
#include "scan/cpu/selective_scan_common.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

// ---- Backward fast path: fp32 accumulation, N in at most two vectors ----
// Per channel: the states are recomputed from checkpoints (every kBwdChunk steps; one chunk
// covers L <= 2048 at N = 16, so the checkpoint pass only runs for longer sequences), keeping each
// chunk's step factors e_t = exp(dt_t A) and states in scratch so that the reverse pass does no
// exponentials. The reverse pass keeps dx and the per-channel sums (dA, invariant dB/dC) in
// registers; its two per-step reductions over N (for ddelta and du) are stored as vectors and
// summed Vec::size steps at a time by one transposing tree.
constexpr int64_t kBwdScratchBytes = int64_t(256) << 10;

struct BwdScratch {
  int64_t Np, chunk, nck;
  Buf<float> dt, sigpre, u, dbu, geff, dout, zsilu, zsig, y, ddt, du, ckpt, xs, es, P1, P2, sums;
  BwdScratch(int64_t L, int64_t Np_)
      : Np(Np_), chunk(std::max<int64_t>(256, kBwdScratchBytes / (Np_ * 8) / 64 * 64)),
        nck((L + chunk - 1) / chunk), dt(size_t(L) + 16), sigpre(size_t(L) + 16), u(size_t(L) + 16),
        dbu(size_t(L) + 16), geff(size_t(L) + 16), dout(size_t(L) + 16), zsilu(size_t(L) + 16), zsig(size_t(L) + 16),
        y(size_t(L) + 16), ddt(size_t(L) + 16), du(size_t(L) + 16), ckpt(size_t(nck + 1) * Np_),
        xs(size_t(chunk + 1) * Np_), es(size_t(chunk) * Np_), P1(size_t(Vec::size) * Vec::size),
        P2(size_t(Vec::size) * Vec::size), sums(size_t(2) * Vec::size) {}
};

// The recurrence over steps [t0, t1) from state x (NV vectors), A2 = A log2(e). With es/xs set,
// stores e_t (row t - t0 of es) and the state after step t (row t - t0 + 1 of xs).
template <int NV>
inline void advance(const float* dt, const float* dbu, const float* A2, const float* Bv, int64_t b_step,
                    int64_t t0, int64_t t1, Vec (&x)[NV], float* es, float* xs, int64_t Np) {
  constexpr int W = Vec::size;
  Vec a[NV];
  for (int v = 0; v < NV; ++v) a[v] = Vec::load(A2 + v * W);
  for (int64_t t = t0; t < t1; ++t) {
    const Vec dtv = Vec::set1(dt[t]), du = Vec::set1(dbu[t]);
    for (int v = 0; v < NV; ++v) {
      const Vec e = exp2(dtv * a[v]);
      x[v] = fma(e, x[v], du * Vec::load(Bv + t * b_step + v * W));
      if (es) {
        e.store(es + (t - t0) * Np + v * W);
        x[v].store(xs + (t - t0 + 1) * Np + v * W);
      }
    }
  }
}

template <typename T, int NV>
void channel_bwd_fast(const SelectiveScanBwdParams& q, int64_t b, int64_t d, const float* Bt, const float* Ct,
                      float* dBt, float* dCt, BwdScratch& s, float* dA_out, float* dB_out, float* dC_out,
                      float& dD_out, float& dbias_out) {
  constexpr int W = Vec::size;
  const SelectiveScanParams& p = q.fwd;
  const Geometry<T, float> g(p);
  const int64_t Np = s.Np, L = p.L, N = p.N, r = b * p.D + d, row = g.row(b, d);
  const bool gated = p.z != nullptr;
  // per-channel vectors: A, A log2(e), invariant B and C
  alignas(64) float A[NV * W], A2[NV * W], Bi[NV * W], Ci[NV * W];
  channel_vec(p.A, d, N, NV * W, A);
  for (int n = 0; n < NV * W; ++n) A2[n] = A[n] * kLog2e;
  if (!p.b_var) channel_vec(p.Bm, d, N, NV * W, Bi);
  if (!p.c_var) channel_vec(p.Cm, d, N, NV * W, Ci);
  const float* Bv = Bt ? Bt : Bi;
  const float* Cv = Ct ? Ct : Ci;
  const int64_t bs = Bt ? Np : 0, cs = Ct ? Np : 0;
  // rows over time
  float *dt = s.dt.p, *dbu = s.dbu.p, *geff = s.geff.p;
  dt_row<T, float>(p, b, d, dt, s.sigpre.p);
  const float* u = acc_row<T, float>(static_cast<const T*>(p.u) + row, s.u.p, L);
  const float* dout = acc_row<T, float>(static_cast<const T*>(q.dout) + row, s.dout.p, L);
  int64_t t = 0;
  for (; t + W <= L; t += W) (Vec::load(dt + t) * Vec::load(u + t)).store(dbu + t);
  for (; t < L; ++t) dbu[t] = dt[t] * u[t];
  if (gated) {  // out = y silu(z): the scan sees dout silu(z)
    silu_row(s.zsilu.p, acc_row<T, float>(static_cast<const T*>(p.z) + row, s.zsilu.p, L), L, s.zsig.p);
    for (t = 0; t + W <= L; t += W) (Vec::load(dout + t) * Vec::load(s.zsilu.p + t)).store(geff + t);
    for (; t < L; ++t) geff[t] = dout[t] * s.zsilu[t];
  } else {
    if (L > 0) std::memcpy(geff, dout, sizeof(float) * L);  // (dout may be null when L is 0)
  }
  const float Dv = p.Dskip ? static_cast<const float*>(p.Dskip)[d] : 0.f;
  // checkpoints: the state before each chunk
  Vec x[NV];
  {
    alignas(64) float x0[NV * W] = {};
    if (p.h0) std::memcpy(x0, static_cast<const float*>(p.h0) + r * N, sizeof(float) * N);
    for (int v = 0; v < NV; ++v) x[v] = Vec::load(x0 + v * W);
  }
  for (int64_t c = 0; c < s.nck; ++c) {
    for (int v = 0; v < NV; ++v) x[v].store(s.ckpt.p + c * Np + v * W);
    if (c + 1 < s.nck) advance<NV>(dt, dbu, A2, Bv, bs, c * s.chunk, (c + 1) * s.chunk, x, nullptr, nullptr, Np);
  }
  // reverse pass
  Vec dx[NV], dA[NV], dBs[NV], dCs[NV];
  {
    alignas(64) float tmp[NV * W] = {};
    if (q.dlast) std::memcpy(tmp, static_cast<const float*>(q.dlast) + r * N, sizeof(float) * N);
    for (int v = 0; v < NV; ++v) {
      dx[v] = Vec::load(tmp + v * W);
      dA[v] = dBs[v] = dCs[v] = Vec::zero();
    }
  }
  T* dz = gated ? static_cast<T*>(q.dz) + row : nullptr;
  for (int64_t c = s.nck - 1; c >= 0; --c) {
    const int64_t t0 = c * s.chunk, t1 = std::min(L, t0 + s.chunk);
    for (int v = 0; v < NV; ++v) {
      x[v] = Vec::load(s.ckpt.p + c * Np + v * W);
      x[v].store(s.xs.p + v * W);
    }
    advance<NV>(dt, dbu, A2, Bv, bs, t0, t1, x, s.es.p, s.xs.p, Np);
    if (gated) {  // dz = dout (y + D u) silu'(z), silu' = s + silu (1 - s); y = C x_t, W steps per tree
      for (int64_t tb = t0; tb < t1; tb += W) {
        const int n = int(std::min<int64_t>(W, t1 - tb));
        for (int i = 0; i < W; ++i) {
          Vec acc = Vec::zero();
          if (i < n)
            for (int v = 0; v < NV; ++v)
              acc = fma(Vec::load(Cv + (tb + i) * cs + v * W), Vec::load(s.xs.p + (tb + i - t0 + 1) * Np + v * W), acc);
          acc.store(s.P1.p + i * W);
        }
        row_sums(s.P1.p, s.y.p + tb);
      }
      for (t = t0; t + W <= t1; t += W) {
        const Vec sg = Vec::load(s.zsig.p + t), y = fma(Vec::set1(Dv), Vec::load(u + t), Vec::load(s.y.p + t));
        (Vec::load(dout + t) * y * fma(Vec::load(s.zsilu.p + t), Vec::set1(1.f) - sg, sg)).store(dz + t);
      }
      for (; t < t1; ++t) {
        const float sg = s.zsig[t], y = s.y[t] + Dv * u[t];
        dz[t] = back<T, float>(dout[t] * y * (s.zsilu[t] * (1.f - sg) + sg));
      }
    }
    for (int64_t tb = t0 + (t1 - 1 - t0) / W * W; tb >= t0; tb -= W) {
      const int n = int(std::min<int64_t>(W, t1 - tb));
      for (int i = n; i < W; ++i) {
        Vec::zero().store(s.P1.p + i * W);
        Vec::zero().store(s.P2.p + i * W);
      }
      for (int i = n - 1; i >= 0; --i) {
        const int64_t tt = tb + i, k = tt - t0;
        const Vec gv = Vec::set1(geff[tt]), dtv = Vec::set1(dt[tt]), dbuv = Vec::set1(dbu[tt]);
        Vec s1 = Vec::zero(), s2 = Vec::zero();
        for (int v = 0; v < NV; ++v) {
          const int64_t o = v * W;
          const Vec xt = Vec::load(s.xs.p + (k + 1) * Np + o), cv = Vec::load(Cv + tt * cs + o);
          const Vec bv = Vec::load(Bv + tt * bs + o);
          if (dCt) fma(gv, xt, Vec::load(dCt + tt * Np + o)).store(dCt + tt * Np + o);
          else dCs[v] = fma(gv, xt, dCs[v]);
          dx[v] = fma(gv, cv, dx[v]);                // dL/dx_t
          s2 = fma(dx[v], bv, s2);
          if (dBt) fma(dx[v], dbuv, Vec::load(dBt + tt * Np + o)).store(dBt + tt * Np + o);
          else dBs[v] = fma(dx[v], dbuv, dBs[v]);
          dx[v] = dx[v] * Vec::load(s.es.p + k * Np + o);  // dL/dx_{t-1} (and dL/de_t = dx_t x_{t-1})
          const Vec dde = dx[v] * Vec::load(s.xs.p + k * Np + o);  // dL/de_t * e_t
          s1 = fma(dde, Vec::load(A + o), s1);
          dA[v] = fma(dde, dtv, dA[v]);
        }
        s1.store(s.P1.p + i * W);
        s2.store(s.P2.p + i * W);
      }
      row_sums(s.P1.p, s.sums.p);
      row_sums(s.P2.p, s.sums.p + W);
      for (int i = 0; i < n; ++i) {  // ddt = sum dde A + u sum dx B, du = g D + dt sum dx B
        const int64_t tt = tb + i;
        s.ddt[tt] = s.sums[i] + u[tt] * s.sums[W + i];
        s.du[tt] = geff[tt] * Dv + dt[tt] * s.sums[W + i];
      }
    }
  }
  // outputs of this channel
  T* duo = static_cast<T*>(q.du) + row;
  T* ddo = static_cast<T*>(q.ddelta) + row;
  if (p.softplus)  // d softplus(pre) = sigmoid(pre)
    for (t = 0; t + W <= L; t += W) (Vec::load(s.ddt.p + t) * Vec::load(s.sigpre.p + t)).store(s.ddt.p + t);
  float dbias = 0, dDsum = 0;
  Vec vb = Vec::zero(), vd = Vec::zero();
  for (t = 0; t + W <= L; t += W) {
    const Vec dd = Vec::load(s.ddt.p + t);
    dd.store(ddo + t);
    Vec::load(s.du.p + t).store(duo + t);
    vb = vb + dd;
    vd = fma(Vec::load(geff + t), Vec::load(u + t), vd);
  }
  for (; t < L; ++t) {
    const float dd = p.softplus ? s.ddt[t] * s.sigpre[t] : s.ddt[t];
    ddo[t] = back<T, float>(dd);
    duo[t] = back<T, float>(s.du[t]);
    dbias += dd;
    dDsum += geff[t] * u[t];
  }
  dD_out = dDsum + vd.sum();
  dbias_out = dbias + vb.sum();
  alignas(64) float tmp[NV * W];
  for (int v = 0; v < NV; ++v) dx[v].store(tmp + v * W);
  if (q.dh0) std::memcpy(static_cast<float*>(q.dh0) + r * N, tmp, sizeof(float) * N);
  for (int v = 0; v < NV; ++v) {
    dA[v].store(dA_out + v * W);
    dBs[v].store(dB_out + v * W);
    dCs[v].store(dC_out + v * W);
  }
}

template <typename T, typename Acc>
void bwd(const SelectiveScanBwdParams& q) {
  using V = typename Lane<Acc>::V;
  const SelectiveScanParams& p = q.fwd;
  const Geometry<T, Acc> g(p);
  const int64_t Np = g.Np, NV = g.NV, L = p.L, N = p.N, D = p.D;
  // Channel blocks that never straddle a group: variable-B/C gradients are summed
  // per block, then over the group's blocks in order (deterministic for any thread count).
  // Up to 32 blocks (parallelism), fewer for long sequences so that the (block, time, N)
  // partials stay within ~256 MB or 4x the dB output: the count depends on shapes only.
  const int64_t cpg = D / p.G, var_row = p.Bsz * p.G * L * g.Np;
  const int64_t mem_blocks = std::max<int64_t>(4, (int64_t(64) << 20) / std::max<int64_t>(var_row, 1));
  const int64_t bpg = std::max<int64_t>(1, std::min({cpg, 32 / std::min<int64_t>(p.G, 32), mem_blocks}));
  const int64_t per_blk = (cpg + bpg - 1) / bpg, nblk = p.G * bpg;
  std::unique_ptr<Buf<Acc>> bt, ct, dbt, dct;
  const size_t var_size = size_t(p.Bsz * p.G * L * Np);
  if (p.b_var) { bt = std::make_unique<Buf<Acc>>(var_size); transpose_bc<T, Acc>(p, p.Bm, Np, bt->p); }
  if (p.c_var) { ct = std::make_unique<Buf<Acc>>(var_size); transpose_bc<T, Acc>(p, p.Cm, Np, ct->p); }
  // partial gradients: variable B/C per (batch, channel block) as (time, Np); per-(batch, channel)
  // partials of the parameters shared across the batch
  const size_t blk_size = size_t(p.Bsz * nblk * L * Np);
  if (p.b_var) dbt = std::make_unique<Buf<Acc>>(blk_size);
  if (p.c_var) dct = std::make_unique<Buf<Acc>>(blk_size);
  Buf<Acc> dA_part(size_t(p.Bsz * D * Np)), dB_part(size_t(p.Bsz * D * Np)), dC_part(size_t(p.Bsz * D * Np));
  Buf<Acc> dD_part(size_t(p.Bsz * D)), dbias_part(size_t(p.Bsz * D));

  constexpr bool kFast = std::is_same_v<Acc, float>;
  const bool fast = kFast && NV <= 2;
  TaskCounter counter;  // (batch, block) tasks claimed one at a time
  parallel_for(std::min<int64_t>(std::max(p.threads, 1), p.Bsz * nblk), p.threads, 1, [&](int64_t, int64_t) {
    std::unique_ptr<BwdScratch> fs;
    if (fast) fs = std::make_unique<BwdScratch>(L, Np);
    const int64_t nck = (L + kChunk - 1) / kChunk;
    Buf<Acc> dt(size_t(L) + 16), u(size_t(L) + 16), vecs(size_t(Np) * 8), ckpt(size_t(nck + 1) * Np),
        xs(size_t(kChunk + 1) * Np), das(size_t(kChunk) * Np), ddt(size_t(L) + 16), du(size_t(L) + 16),
        zsilu(size_t(L) + 16), zsig(size_t(L) + 16);
    for (int64_t k; (k = take_task(&counter)) < p.Bsz * nblk;) {
      const int64_t b = k / nblk, blk = k % nblk;
      Acc* dBt = dbt ? dbt->p + (b * nblk + blk) * L * Np : nullptr;
      Acc* dCt = dct ? dct->p + (b * nblk + blk) * L * Np : nullptr;
      if (dBt) std::memset(dBt, 0, sizeof(Acc) * L * Np);
      if (dCt) std::memset(dCt, 0, sizeof(Acc) * L * Np);
      const int64_t dbeg = (blk / bpg) * cpg + (blk % bpg) * per_blk;
      const int64_t dend = std::min((blk / bpg + 1) * cpg, dbeg + per_blk);
      for (int64_t d = dbeg; d < dend; ++d) {
        const int64_t r = b * D + d, grp = g.group_of(d);
        if constexpr (kFast)
          if (fast) {
            const float* Bt = p.b_var ? bt->p + (b * p.G + grp) * L * Np : nullptr;
            const float* Ct = p.c_var ? ct->p + (b * p.G + grp) * L * Np : nullptr;
            auto run = NV == 1 ? channel_bwd_fast<T, 1> : channel_bwd_fast<T, 2>;
            run(q, b, d, Bt, Ct, dBt, dCt, *fs, dA_part.p + r * Np, dB_part.p + r * Np, dC_part.p + r * Np,
                dD_part[r], dbias_part[r]);
            continue;
          }
        Acc* A = vecs.p;
        Acc* Bi = vecs.p + Np;
        Acc* Ci = vecs.p + 2 * Np;
        Acc* dAacc = vecs.p + 3 * Np;
        Acc* dBi = vecs.p + 4 * Np;
        Acc* dCi = vecs.p + 5 * Np;
        Acc* dx_out = vecs.p + 6 * Np;
        dt_row<T, Acc>(p, b, d, dt.p);
        widen_row<T, Acc>(u.p, static_cast<const T*>(p.u) + g.row(b, d), L);
        channel_vec(p.A, d, N, Np, A);
        if (!p.b_var) channel_vec(p.Bm, d, N, Np, Bi);
        if (!p.c_var) channel_vec(p.Cm, d, N, Np, Ci);
        std::memset(dAacc, 0, sizeof(Acc) * Np * 4);  // dA, dB, dC (invariant), dx_out
        const Acc* Bt = p.b_var ? bt->p + (b * p.G + grp) * L * Np : nullptr;
        const Acc* Ct = p.c_var ? ct->p + (b * p.G + grp) * L * Np : nullptr;
        auto bvec = [&](int64_t t) { return Bt ? Bt + t * Np : Bi; };
        auto cvec = [&](int64_t t) { return Ct ? Ct + t * Np : Ci; };
        // checkpoints: the state before each chunk
        std::memset(ckpt.p, 0, sizeof(Acc) * Np);
        if (p.h0) std::memcpy(ckpt.p, static_cast<const Acc*>(p.h0) + r * N, sizeof(Acc) * N);
        constexpr int MAXV = 256 / V::size;
        V x[MAXV], av[MAXV];
        for (int64_t v = 0; v < NV; ++v) { x[v] = V::load(ckpt.p + v * V::size); av[v] = V::load(A + v * V::size); }
        for (int64_t c = 0; c < nck; ++c) {
          for (int64_t v = 0; v < NV; ++v) x[v].store(ckpt.p + c * Np + v * V::size);
          for (int64_t t = c * kChunk; t < std::min(L, (c + 1) * kChunk); ++t) {
            const V dtv = V::set1(dt[t]), dbu = V::set1(dt[t] * u[t]);
            for (int64_t v = 0; v < NV; ++v)
              x[v] = fma(exp(dtv * av[v]), x[v], dbu * V::load(bvec(t) + v * V::size));
          }
        }
        // reverse pass
        const Acc Dv = p.Dskip ? static_cast<const Acc*>(p.Dskip)[d] : Acc(0);
        const bool gated = p.z != nullptr;
        if (gated) {
          widen_row<T, Acc>(zsilu.p, static_cast<const T*>(p.z) + g.row(b, d), L);
          silu_row(zsilu.p, zsilu.p, L, zsig.p);
        }
        const T* dout = static_cast<const T*>(q.dout) + g.row(b, d);
        V dx[MAXV];
        for (int64_t v = 0; v < NV; ++v) dx[v] = V::zero();
        if (q.dlast) {
          Acc tmp[256] = {};
          std::memcpy(tmp, static_cast<const Acc*>(q.dlast) + r * N, sizeof(Acc) * N);
          for (int64_t v = 0; v < NV; ++v) dx[v] = V::load(tmp + v * V::size);
        }
        Acc dDsum = 0;
        for (int64_t c = nck - 1; c >= 0; --c) {
          const int64_t t0 = c * kChunk, t1 = std::min(L, t0 + kChunk);
          // recompute states x_{t0-1} .. x_{t1-1}: xs[i] = state after step t0 + i - 1
          for (int64_t v = 0; v < NV; ++v) x[v] = V::load(ckpt.p + c * Np + v * V::size);
          for (int64_t v = 0; v < NV; ++v) x[v].store(xs.p + v * V::size);
          for (int64_t t = t0; t < t1; ++t) {
            const V dtv = V::set1(dt[t]), dbu = V::set1(dt[t] * u[t]);
            for (int64_t v = 0; v < NV; ++v) {
              const V e = exp(dtv * av[v]);
              e.store(das.p + (t - t0) * Np + v * V::size);
              x[v] = fma(e, x[v], dbu * V::load(bvec(t) + v * V::size));
              x[v].store(xs.p + (t - t0 + 1) * Np + v * V::size);
            }
          }
          for (int64_t t = t1 - 1; t >= t0; --t) {
            const Acc* xt = xs.p + (t - t0 + 1) * Np;
            const Acc* xp = xs.p + (t - t0) * Np;
            const Acc* bn = bvec(t);
            const Acc* cn = cvec(t);
            Acc gt = cvt<T, Acc>(dout[t]);
            if (gated) {  // out = y * silu(z): dz = g y silu'(z), silu' = s (1 + z (1 - s)) = s + silu (1 - s)
              V yv = V::zero();
              for (int64_t v = 0; v < NV; ++v) yv = fma(V::load(cn + v * V::size), V::load(xt + v * V::size), yv);
              const Acc y = yv.sum() + Dv * u[t], s = zsig[t], sl = zsilu[t];
              static_cast<T*>(q.dz)[g.row(b, d) + t] = back<T, Acc>(gt * y * (s + sl * (Acc(1) - s)));
              gt *= sl;
            }
            dDsum += gt * u[t];
            const V gv = V::set1(gt), dtv = V::set1(dt[t]), uv = V::set1(u[t]);
            V ddt_acc = V::zero(), du_acc = V::zero();
            for (int64_t v = 0; v < NV; ++v) {
              const int64_t o = v * V::size;
              const V xv = V::load(xt + o), xpv = V::load(xp + o), bv = V::load(bn + o), cv = V::load(cn + o);
              // dC_t += g x_t
              if (dCt) fma(gv, xv, V::load(dCt + t * Np + o)).store(dCt + t * Np + o);
              else fma(gv, xv, V::load(dCi + o)).store(dCi + o);
              dx[v] = fma(gv, cv, dx[v]);
              const V dA_t = V::load(das.p + (t - t0) * Np + o);
              const V d_dA = dx[v] * xpv * dA_t;           // d(exp(dt A)) * exp(dt A)
              ddt_acc = fma(d_dA, av[v], ddt_acc);
              ddt_acc = fma(dx[v] * bv, uv, ddt_acc);
              fma(d_dA, dtv, V::load(dAacc + o)).store(dAacc + o);
              du_acc = fma(dx[v], bv, du_acc);
              const V dbv = dx[v] * dtv * uv;
              if (dBt) (V::load(dBt + t * Np + o) + dbv).store(dBt + t * Np + o);
              else (V::load(dBi + o) + dbv).store(dBi + o);
              dx[v] = dx[v] * dA_t;
            }
            ddt[t] = ddt_acc.sum();
            du[t] = gt * Dv + dt[t] * du_acc.sum();
          }
        }
        // outputs of this channel
        T* duo = static_cast<T*>(q.du) + g.row(b, d);
        T* ddo = static_cast<T*>(q.ddelta) + g.row(b, d);
        const T* delta = static_cast<const T*>(p.delta) + g.row(b, d);
        const Acc bias = p.delta_bias ? static_cast<const Acc*>(p.delta_bias)[d] : Acc(0);
        if (p.softplus) {  // d softplus(pre) = sigmoid(pre)
          widen_row<T, Acc>(zsig.p, delta, L);
          for (int64_t t = 0; t < L; ++t) zsig[t] += bias;
          silu_row(zsig.p, zsig.p, L, zsilu.p);  // zsilu <- sigmoid(pre)
        }
        Acc dbias = 0;
        for (int64_t t = 0; t < L; ++t) {
          const Acc dd = p.softplus ? ddt[t] * zsilu[t] : ddt[t];
          ddo[t] = back<T, Acc>(dd);
          duo[t] = back<T, Acc>(du[t]);
          dbias += dd;
        }
        dD_part[r] = dDsum;
        dbias_part[r] = dbias;
        for (int64_t v = 0; v < NV; ++v) dx[v].store(dx_out + v * V::size);
        if (q.dh0) std::memcpy(static_cast<Acc*>(q.dh0) + r * N, dx_out, sizeof(Acc) * N);
        std::memcpy(dA_part.p + r * Np, dAacc, sizeof(Acc) * Np);
        std::memcpy(dB_part.p + r * Np, dBi, sizeof(Acc) * Np);
        std::memcpy(dC_part.p + r * Np, dCi, sizeof(Acc) * Np);
      }
    }
  }, p.Bsz * nblk);

  // Reductions in a fixed order. Per-channel parameters: sum over the batch.
  parallel_for(D, p.threads, 16, [&](int64_t d0, int64_t d1) {
    for (int64_t d = d0; d < d1; ++d) {
      for (int64_t n = 0; n < N; ++n) {
        Acc a = 0, bsum = 0, csum = 0;
        for (int64_t b = 0; b < p.Bsz; ++b) {
          a += dA_part[(b * D + d) * Np + n];
          bsum += dB_part[(b * D + d) * Np + n];
          csum += dC_part[(b * D + d) * Np + n];
        }
        static_cast<Acc*>(q.dA)[d * N + n] = a;
        if (!p.b_var) static_cast<Acc*>(q.dB)[d * N + n] = bsum;
        if (!p.c_var) static_cast<Acc*>(q.dC)[d * N + n] = csum;
      }
      Acc dd = 0, db = 0;
      for (int64_t b = 0; b < p.Bsz; ++b) { dd += dD_part[b * D + d]; db += dbias_part[b * D + d]; }
      if (q.dD) static_cast<Acc*>(q.dD)[d] = dd;
      if (q.ddelta_bias) static_cast<Acc*>(q.ddelta_bias)[d] = db;
    }
  });
  // Variable B/C: sum the channel blocks of each group, in block order, into (B, G, N, L), in tiles
  // of kTile steps (each block's tile is contiguous) spread over the threads.
  auto reduce_var = [&](Buf<Acc>* part, void* out) {
    constexpr int64_t kTile = 64;
    const int64_t tiles = (L + kTile - 1) / kTile;
    parallel_for(p.Bsz * p.G * tiles, p.threads, 1, [&](int64_t i0, int64_t i1) {
      Buf<Acc> acc(size_t(kTile * Np));
      for (int64_t i = i0; i < i1; ++i) {
        const int64_t bg = i / tiles, b = bg / p.G, grp = bg % p.G, t0 = i % tiles * kTile;
        const int64_t nt = std::min(kTile, L - t0);
        std::memset(acc.p, 0, sizeof(Acc) * nt * Np);
        for (int64_t blk = grp * bpg; blk < (grp + 1) * bpg; ++blk) {
          const Acc* src = part->p + ((b * nblk + blk) * L + t0) * Np;
          for (int64_t j = 0; j < nt * Np; ++j) acc[j] += src[j];
        }
        T* o = static_cast<T*>(out) + bg * N * L + t0;
        for (int64_t n = 0; n < N; ++n)
          for (int64_t t = 0; t < nt; ++t) o[n * L + t] = back<T, Acc>(acc[t * Np + n]);
      }
    });
  };
  if (p.b_var) reduce_var(dbt.get(), q.dB);
  if (p.c_var) reduce_var(dct.get(), q.dC);
}

}  // namespace

void selective_scan_bwd_cpu(const SelectiveScanBwdParams& p) {
  switch (p.fwd.dtype) {
    case DType::f32: return bwd<float, float>(p);
    case DType::bf16: return bwd<bf16_t, float>(p);
    case DType::f16: return bwd<f16_t, float>(p);
    case DType::f64: return bwd<double, double>(p);
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
