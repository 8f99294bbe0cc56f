// Mamba selective scan on CPU, forward. Channels sharing B/C rows run in blocks with their states
// in vector registers (vectorised over N); dt, softplus, the D-skip and the SiLU gate are computed
// for whole rows vectorised over time. Variable B/C are transposed once per (batch, group) to
// (time, N) so that each time step reads them as vectors. The backward is in selective_scan_bwd.cpp.
#include "scan/cpu/selective_scan_common.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

// The fp32 recurrence for CH channels that share their B/C rows, with N in NV vectors (compile-time
// sizes: x and A stay in registers). The channels' independent chains overlap, and y's per-step
// reductions over N are deferred: each step leaves its C.x products as one vector in P, and every
// Vec::size steps one transposing tree sums them (row_sums), instead of a horizontal sum per step.
// A holds A log2(e) (exp2 is the cheaper exponential). dt, dbu (= dt * u) and y: CH rows of stride
// ld; x: CH x Np states in and out. `next` holds the input rows of the thread's next block: every
// Vec::size steps, the part of each row those steps cover is prefetched (into L2), so that their
// first touch after this scan does not wait on memory.
struct NextRows {
  const char* row[12] = {};
  int n = 0;
  int64_t elem = 4;  // bytes per element
};

template <int NV, int CH>
void scan_rows(const float* dt, const float* dbu, int64_t ld, const float* A, int64_t Np, const float* Bv,
               int64_t b_step, const float* Cv, int64_t c_step, int64_t L, float* x_io, float* y, float* P,
               const NextRows& next) {
  constexpr int W = Vec::size;
  Vec x[CH][NV], a[CH][NV];
  for (int c = 0; c < CH; ++c)
    for (int v = 0; v < NV; ++v) {
      x[c][v] = Vec::load(x_io + c * Np + v * W);
      a[c][v] = Vec::load(A + c * Np + v * W);
    }
  for (int64_t t0 = 0; t0 < L; t0 += W) {
    const int n = int(std::min<int64_t>(W, L - t0));
    for (int r = 0; r < next.n; ++r) __builtin_prefetch(next.row[r] + t0 * next.elem, 0, 2);  // (to L2)
    for (int i = 0; i < n; ++i) {
      const int64_t t = t0 + i;
      Vec bv[NV], cv[NV];
      for (int v = 0; v < NV; ++v) {
        bv[v] = Vec::load(Bv + t * b_step + v * W);
        cv[v] = Vec::load(Cv + t * c_step + v * W);
      }
      for (int c = 0; c < CH; ++c) {
        const Vec dtv = Vec::set1(dt[c * ld + t]), du = Vec::set1(dbu[c * ld + t]);
        Vec acc = Vec::zero();
        for (int v = 0; v < NV; ++v) {
          x[c][v] = fma(exp2(dtv * a[c][v]), x[c][v], du * bv[v]);
          acc = fma(cv[v], x[c][v], acc);
        }
        acc.store(P + (c * W + i) * W);
      }
    }
    for (int c = 0; c < CH; ++c) {
      if (n == W) row_sums(P + c * W * W, y + c * ld + t0);
      else
        for (int i = 0; i < n; ++i) y[c * ld + t0 + i] = Vec::load(P + (c * W + i) * W).sum();
    }
  }
  for (int c = 0; c < CH; ++c)
    for (int v = 0; v < NV; ++v) x[c][v].store(x_io + c * Np + v * W);
}

// Forward for fp32 accumulation with N <= 2 * Vec::size: blocks of up to kFwdChannels channels of one
// (batch, B/C group) run scan_rows together.
constexpr int64_t kFwdChannels = 4;
static_assert(3 * kFwdChannels <= int64_t(sizeof(NextRows::row) / sizeof(char*)), "u, delta and z rows of a block");
constexpr bool kFewRegisters = Vec::size == 8;  // AVX2 (16 vector registers): 2 x 2 state vectors spill

// Thread-worthy pieces of work (parallel_for's `units`, which decide whether a call stays parallel
// on a busy machine) in a call of `updates` state updates: one per 2^18, ~100 us of one core, the
// size of the attention tiles the busy-machine threshold was measured with. (Counting blocks made
// a 1.2 ms scan of 384 small blocks stay parallel there and wait out 8 ms barrier stalls.)
inline int64_t busy_units(int64_t updates) { return std::max<int64_t>(1, updates >> 18); }

template <typename T>
bool fwd_fast(const SelectiveScanParams& p) {
  const Geometry<T, float> g(p);
  const int64_t Np = g.Np, NV = g.NV, L = p.L, cpg = p.D / p.G;
  if (NV > 2) return false;
  const int64_t blocks_per_group = (cpg + kFwdChannels - 1) / kFwdChannels;
  std::unique_ptr<Buf<float>> bt, ct;
  if (p.b_var) { bt = std::make_unique<Buf<float>>(size_t(p.Bsz * p.G * L * Np)); transpose_bc<T, float>(p, p.Bm, Np, bt->p); }
  if (p.c_var) { ct = std::make_unique<Buf<float>>(size_t(p.Bsz * p.G * L * Np)); transpose_bc<T, float>(p, p.Cm, Np, ct->p); }
  // Blocks are claimed one at a time (a preempted thread leaves its share to the others). With many
  // blocks per thread, the next one is claimed before this one runs, so its rows can be prefetched
  // meanwhile (a preempted thread then holds one block more); with few, that would unbalance them.
  const int64_t nblocks = p.Bsz * p.G * blocks_per_group;
  const bool claim_ahead = nblocks >= 4 * std::max(p.threads, 1);
  TaskCounter counter;
  parallel_for(std::min<int64_t>(std::max(p.threads, 1), nblocks), p.threads, 1, [&](int64_t, int64_t) {
    constexpr int64_t CHM = kFwdChannels;
    const int64_t ld = L + 16;
    Buf<float> dt(size_t(CHM * ld)), dbu(size_t(CHM * ld)), y(size_t(CHM * ld)), z{size_t(ld)},
        vecs(size_t(Np) * (2 * CHM + 2)), P(size_t(CHM) * Vec::size * Vec::size);
    float* A = vecs.p;
    float* x = vecs.p + CHM * Np;
    float* Bi = vecs.p + 2 * CHM * Np;
    float* Ci = Bi + Np;
    auto first_channel = [&](int64_t k) {
      return k / blocks_per_group % p.G * cpg + k % blocks_per_group * kFwdChannels;
    };
    for (int64_t k = take_task(&counter), k_next; k < nblocks; k = claim_ahead ? k_next : take_task(&counter)) {
      k_next = claim_ahead ? take_task(&counter) : nblocks;
      NextRows next;
      next.elem = sizeof(T);
      if (k_next < nblocks && L * int64_t(sizeof(T)) <= 64 * 1024) {  // (long rows: the hardware prefetcher's)
        const int64_t bn = k_next / (p.G * blocks_per_group), dn = first_channel(k_next);
        const int64_t grpn = k_next / blocks_per_group % p.G;
        for (int64_t d = dn; d < std::min(dn + kFwdChannels, (grpn + 1) * cpg); ++d)
          for (const void* src : {p.u, p.delta, p.z})
            if (src) next.row[next.n++] = reinterpret_cast<const char*>(static_cast<const T*>(src) + g.row(bn, d));
      }
      const int64_t b = k / (p.G * blocks_per_group), grp = k / blocks_per_group % p.G;
      const int64_t d0 = first_channel(k);
      const int64_t nch = std::min(kFwdChannels, (grp + 1) * cpg - d0);
      for (int64_t c = 0; c < nch; ++c) {
        const int64_t d = d0 + c, r = b * p.D + d;
        dt_row<T, float>(p, b, d, dt.p + c * ld);
        const float* uc = acc_row<T, float>(static_cast<const T*>(p.u) + g.row(b, d), dbu.p + c * ld, L);
        int64_t t = 0;
        for (; t + Vec::size <= L; t += Vec::size)
          (Vec::load(dt.p + c * ld + t) * Vec::load(uc + t)).store(dbu.p + c * ld + t);
        for (; t < L; ++t) dbu[c * ld + t] = dt[c * ld + t] * uc[t];
        channel_vec(p.A, d, p.N, Np, A + c * Np);
        for (int64_t n = 0; n < p.N; ++n) A[c * Np + n] *= kLog2e;  // exp(dt A) = exp2(dt A log2 e)
        std::memset(x + c * Np, 0, sizeof(float) * Np);
        if (p.h0) std::memcpy(x + c * Np, static_cast<const float*>(p.h0) + r * p.N, sizeof(float) * p.N);
      }
      // B/C: the group's transposed rows, or the first channel's invariant vectors (per channel
      // invariant B/C differ across channels: those blocks run one channel at a time)
      const bool shared_bc = p.b_var && p.c_var;
      const float* Bv = p.b_var ? bt->p + (b * p.G + grp) * L * Np : Bi;
      const float* Cv = p.c_var ? ct->p + (b * p.G + grp) * L * Np : Ci;
      const int64_t bs = p.b_var ? Np : 0, cs = p.c_var ? Np : 0;
      auto run = [&](int64_t c0, int64_t cn) {
        if (!p.b_var) channel_vec(p.Bm, d0 + c0, p.N, Np, Bi);
        if (!p.c_var) channel_vec(p.Cm, d0 + c0, p.N, Np, Ci);
        static const NextRows kNone;
        const NextRows& nx = c0 == 0 ? next : kNone;  // (once per block)
        float *dtc = dt.p + c0 * ld, *dbc = dbu.p + c0 * ld, *yc = y.p + c0 * ld, *Ac = A + c0 * Np, *xc = x + c0 * Np;
        // (CH x NV <= 4 vectors of state: x and A stay in registers)
        if (NV == 1 && cn >= 4) return scan_rows<1, 4>(dtc, dbc, ld, Ac, Np, Bv, bs, Cv, cs, L, xc, yc, P.p, nx), 4;
        if (NV == 1 && cn >= 2) return scan_rows<1, 2>(dtc, dbc, ld, Ac, Np, Bv, bs, Cv, cs, L, xc, yc, P.p, nx), 2;
        if (NV == 1) return scan_rows<1, 1>(dtc, dbc, ld, Ac, Np, Bv, bs, Cv, cs, L, xc, yc, P.p, nx), 1;
        if (cn >= 2 && !kFewRegisters) return scan_rows<2, 2>(dtc, dbc, ld, Ac, Np, Bv, bs, Cv, cs, L, xc, yc, P.p, nx), 2;
        return scan_rows<2, 1>(dtc, dbc, ld, Ac, Np, Bv, bs, Cv, cs, L, xc, yc, P.p, nx), 1;
      };
      for (int64_t c = 0; c < nch;) c += run(c, shared_bc ? nch - c : 1);
      for (int64_t c = 0; c < nch; ++c) {
        const int64_t d = d0 + c, r = b * p.D + d;
        const float Dv = p.Dskip ? static_cast<const float*>(p.Dskip)[d] : 0.f;
        const float* uc = acc_row<T, float>(static_cast<const T*>(p.u) + g.row(b, d), dt.p + c * ld, L);  // (dt is done)
        if (p.z) silu_row(z.p, acc_row<T, float>(static_cast<const T*>(p.z) + g.row(b, d), z.p, L), L);
        finish_row<T, float>(y.p + c * ld, uc, Dv, p.z ? z.p : nullptr, static_cast<T*>(p.out) + g.row(b, d), L);
        if (p.last_state) std::memcpy(static_cast<float*>(p.last_state) + r * p.N, x + c * Np, sizeof(float) * p.N);
      }
    }
  }, busy_units(nblocks * kFwdChannels * L * Np));
  return true;
}

template <typename T, typename Acc>
void fwd(const SelectiveScanParams& p) {
  if constexpr (std::is_same_v<Acc, float>)
    if (fwd_fast<T>(p)) return;
  using V = typename Lane<Acc>::V;
  const Geometry<T, Acc> g(p);
  const int64_t Np = g.Np, NV = g.NV, L = p.L;
  std::unique_ptr<Buf<Acc>> bt, ct;
  if (p.b_var) { bt = std::make_unique<Buf<Acc>>(size_t(p.Bsz * p.G * L * Np)); transpose_bc<T, Acc>(p, p.Bm, Np, bt->p); }
  if (p.c_var) { ct = std::make_unique<Buf<Acc>>(size_t(p.Bsz * p.G * L * Np)); transpose_bc<T, Acc>(p, p.Cm, Np, ct->p); }
  parallel_for(p.Bsz * p.D, p.threads, 1, [&](int64_t r0, int64_t r1) {
    Buf<Acc> dt(size_t(L) + 16), u(size_t(L) + 16), y(size_t(L) + 16), vecs(size_t(Np) * 4);
    Acc* A = vecs.p;
    Acc* Bi = vecs.p + Np;
    Acc* Ci = vecs.p + 2 * Np;
    Acc* x0 = vecs.p + 3 * Np;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / p.D, d = r % p.D, grp = g.group_of(d);
      dt_row<T, Acc>(p, b, d, dt.p);
      widen_row<T, Acc>(u.p, static_cast<const T*>(p.u) + g.row(b, d), L);
      channel_vec(p.A, d, p.N, Np, A);
      if (!p.b_var) channel_vec(p.Bm, d, p.N, Np, Bi);
      if (!p.c_var) channel_vec(p.Cm, d, p.N, Np, Ci);
      std::memset(x0, 0, sizeof(Acc) * Np);
      if (p.h0) std::memcpy(x0, static_cast<const Acc*>(p.h0) + r * p.N, sizeof(Acc) * p.N);
      const Acc* Bt = p.b_var ? bt->p + (b * p.G + grp) * L * Np : nullptr;
      const Acc* Ct = p.c_var ? ct->p + (b * p.G + grp) * L * Np : nullptr;
      constexpr int MAXV = 256 / V::size;  // N up to 256
      V x[MAXV], av[MAXV];
      for (int64_t v = 0; v < NV; ++v) { x[v] = V::load(x0 + v * V::size); av[v] = V::load(A + v * V::size); }
      for (int64_t t = 0; t < L; ++t) {
        const V dtv = V::set1(dt[t]), dbu = V::set1(dt[t] * u[t]);
        const Acc* bn = Bt ? Bt + t * Np : Bi;
        const Acc* cn = Ct ? Ct + t * Np : Ci;
        V acc = V::zero();
        for (int64_t v = 0; v < NV; ++v) {
          x[v] = fma(exp(dtv * av[v]), x[v], dbu * V::load(bn + v * V::size));
          acc = fma(V::load(cn + v * V::size), x[v], acc);
        }
        y[t] = acc.sum();
      }
      // y += D u, then the gate; vectorised over time
      const Acc Dv = p.Dskip ? static_cast<const Acc*>(p.Dskip)[d] : Acc(0);
      if (p.z) {
        silu_row(dt.p, acc_row<T, Acc>(static_cast<const T*>(p.z) + g.row(b, d), dt.p, L), L);  // (dt is done)
      }
      finish_row<T, Acc>(y.p, u.p, Dv, p.z ? dt.p : nullptr, static_cast<T*>(p.out) + g.row(b, d), L);
      if (p.last_state)
        for (int64_t v = 0; v < NV; ++v) {
          Acc tmp[64];
          x[v].store(tmp);
          for (int64_t i = 0; i < V::size && v * V::size + i < p.N; ++i)
            static_cast<Acc*>(p.last_state)[r * p.N + v * V::size + i] = tmp[i];
        }
    }
  });
}

}  // namespace

void selective_scan_fwd_cpu(const SelectiveScanParams& p) {
  switch (p.dtype) {
    case DType::f32: return fwd<float, float>(p);
    case DType::bf16: return fwd<bf16_t, float>(p);
    case DType::f16: return fwd<f16_t, float>(p);
    case DType::f64: return fwd<double, double>(p);
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
