// Attention backward on CUDA, recomputing the probabilities from the forward's lse (softmax) or
// from the scores (sigmoid). Deterministic by construction (no atomics; every sum has a fixed order):
// dQ and dK/dV come from two kernels instead of FA2's one kernel with atomic dQ adds.
//
// bf16/fp16 on tensor cores (tc_common.cuh):
//  - dq kernel, a block per 64 query rows of one (batch, head), like the forward: for each visible
//    key tile S = Q K^T and dP = dO V^T, dS = P (dP - delta) (sigmoid: dP P (1 - P)), dQ += dS K.
//    Sigmoid's per-head bias gradient is summed here: one partial per block, reduced in order.
//  - dkdv kernel, a block per 64 keys of one (batch, kv head), a warp per 16 keys: for each query
//    head of the group and each visible 32-row query step, S^T = K Q^T, dP^T = V dO^T, then
//    dV += P^T dO and dK += dS^T Q, so GQA sums over the group in registers. For head dim 256 the
//    two accumulators do not fit together: the kernel runs twice, once for dV and once for dK.
// fp32: the same two passes with a warp per query row / per key row (exact, slow path).
#include <cmath>

#include "attention/cuda/attn_common.cuh"
#include "attention/cuda/tc_common.cuh"

namespace kernkit {
namespace {

using attn::Seq;
using namespace attn::tc;

constexpr int kRows = kAttnCudaRows;  // dq kernel: query rows per block
constexpr int kKeyRows = 64;          // dkdv kernel: keys per block
template <int Dp>
constexpr int q_step() { return Dp == 256 ? 16 : 32; }  // dkdv kernel: query rows per step (99 KB at 256)
// (__launch_bounds__(kThreads, 1) below: with one block as the target ptxas stops trimming registers
// to an occupancy step, which spilled 40 bytes in the 64/128 configs)

struct BwdArgs {
  AttnBwdParams p;
  Operand q, k, v, dout;
  bool dq_aligned, dk_aligned, dv_aligned;
  int group;  // Hq / Hkv
};

// The score pieces both kernels need: base-2 score from a raw q.k, and the chain factor of the
// softcap (d score / d (scale q.k) = 1 - tanh^2).
struct ScoreMath {
  bool softmax, capped;
  float qk_mul, cap2;
  __device__ explicit ScoreMath(const AttnMask& m)
      : softmax(m.activation == AttnActivation::softmax), capped(m.softcap > 0.f),
        qk_mul(capped ? m.scale / m.softcap : m.scale * kLog2e), cap2(m.softcap * kLog2e) {}
  // base-2 score; th gets tanh(.) when capped (for grad_factor)
  __device__ __forceinline__ float score2(float raw, float& th) const {
    const float x = raw * qk_mul;
    if (!capped) return x;
    th = tanhf(x);
    return cap2 * th;
  }
  // dS (w.r.t. the score) -> w.r.t. scale * q.k
  __device__ __forceinline__ float grad_factor(float th) const { return capped ? 1.f - th * th : 1.f; }
};

// A row's base-2 lse (+inf for rows that saw nothing or lie past the sequence: their P is 0) and delta.
__device__ __forceinline__ void row_stats(const AttnBwdParams& p, const Seq& sq, int b, int h, int row, float& lse2,
                                          float& delta) {
  lse2 = INFINITY;
  delta = 0.f;
  if (p.mask.activation != AttnActivation::softmax || row >= sq.q_len) return;
  const long long i = b * p.shape.stat_bs + h * p.shape.stat_hs + sq.q_row0 + row;
  const float l = p.lse[i];
  if (l != -INFINITY) lse2 = l * kLog2e;
  delta = p.delta[i];
}

// P and dS of one score (base 2): softmax P = 2^(s - lse), dS = P (dP - delta); sigmoid P =
// 1 / (1 + 2^-(s + b)), dS = dP P (1 - P). Invisible: both 0.
__device__ __forceinline__ void prob_and_grad(const ScoreMath& sm, bool vis, float s2, float lse2, float delta,
                                              float bias2, float dp, float& pr, float& ds) {
  if (!vis) {
    pr = ds = 0.f;
    return;
  }
  if (sm.softmax) {
    pr = ptx::ex2_approx(s2 - lse2);
    ds = pr * (dp - delta);
  } else {
    pr = 1.f / (1.f + ptx::ex2_approx(-(s2 + bias2)));
    ds = dp * pr * (1.f - pr);
  }
}

// --------------------------------------------------------------------------------------- dQ

template <int Dp>
constexpr int dq_keys() { return Dp == 256 ? 32 : 64; }  // (256: fewer score registers beside dQ)

template <int Dp>
constexpr size_t dq_smem_bytes() { return size_t(2 * kRows + 2 * dq_keys<Dp>()) * stride<Dp>() * 2; }

template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads, 1) flash_bwd_dq_kernel(BwdArgs a) {
  constexpr int S = stride<Dp>(), KB = dq_keys<Dp>(), NT = KB / 8, DT = Dp / 8, KS = Dp / 16;
  const AttnBwdParams& p = a.p;
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / a.group;
  const Seq sq = attn::seq_of(p.shape, b);
  const int m0 = blockIdx.x * kRows;
  if (m0 >= sq.q_len) return;
  const int r1 = min(m0 + kRows, sq.q_len) - 1;
  const int D = p.shape.D, Dv = p.shape.Dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;
  KK_DYNAMIC_SHARED(uint16_t, smem);
  uint16_t* sQ = smem;
  uint16_t* sdO = sQ + kRows * S;
  uint16_t* sK = sdO + kRows * S;
  uint16_t* sV = sK + KB * S;
  uint16_t* q_rows = sQ + warp * 16 * S;
  uint16_t* do_rows = sdO + warp * 16 * S;

  const ScoreMath sm(m);
  const float bias2 = sm.softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h) * kLog2e;
  const attn::KeyTiles tiles = attn::key_tiles(m, sq, m0, r1, KB);
  const int qrow0 = m0 + warp * 16 + g;
  float lse2[2], delta[2];
  row_stats(p, sq, b, h, qrow0, lse2[0], delta[0]);
  row_stats(p, sq, b, h, qrow0 + 8, lse2[1], delta[1]);
  if (tiles.count > 0) {
    load_tile<Dp, kRows>(sQ, a.q, b, sq.q_row0 + m0, h, sq.q_len - m0, D);
    load_tile<Dp, kRows>(sdO, a.dout, b, sq.q_row0 + m0, h, sq.q_len - m0, Dv);
  }
  float dq[DT][4];
  zero(dq);
  float bias_grad = 0.f;
  for (int n = 0; n < tiles.count; ++n) {
    const int j0 = tiles.tile(n) * KB;
    __syncthreads();  // every warp is done with the previous K/V tile
    load_tile<Dp, KB>(sK, a.k, b, sq.k_row0 + j0, hk, sq.k_len - j0, D);
    load_tile<Dp, KB>(sV, a.v, b, sq.k_row0 + j0, hk, sq.k_len - j0, Dv);
    ptx::cp_async_wait_all();
    __syncthreads();
    float s[NT][4], dp[NT][4];
    zero(s);
    zero(dp);
    mma_abt<T, NT, KS, S>(s, q_rows, sK, D);     // S = Q K^T
    mma_abt<T, NT, KS, S>(dp, do_rows, sV, Dv);  // dP = dO V^T
    const bool full = attn::tile_unmasked(m, sq, m0, r1, j0, KB);
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = e >> 1, row = qrow0 + 8 * r, key = j0 + i * 8 + 2 * t + (e & 1);
        const bool vis = full || (key < sq.k_len && attn::visible(m, sq.off, row, key));
        float th = 0.f, pr, ds;
        const float s2 = sm.score2(s[i][e], th);
        prob_and_grad(sm, vis, s2, lse2[r], delta[r], bias2, dp[i][e], pr, ds);
        bias_grad += ds;  // (rows past the sequence have dO = 0, so ds = 0)
        s[i][e] = ds * sm.grad_factor(th);
      }
    mma_pb<T, KB / 16, DT, S>(dq, s, sK, D);  // dQ += dS K
  }
  const float mul[2] = {m.scale, m.scale};
  const int w0 = m0 + warp * 16, rows = min(16, sq.q_len - w0);
  uint16_t* dst = static_cast<uint16_t*>(const_cast<void*>(p.dq.ptr)) + b * p.dq.bs + h * p.dq.hs +
                  (sq.q_row0 + w0) * p.dq.rs;
  if (rows > 0) store_rows<T, DT, S>(dq, mul, q_rows, dst, p.dq.rs, rows, rows, D, a.dq_aligned);
  if (p.work) {  // sigmoid bias gradient: this block's partial, summed in a fixed order
    float* part = reinterpret_cast<float*>(sK);  // (dynamic smem: a static array would pass 99 KB at 256)
    bias_grad = cuda::warp_sum(bias_grad);
    __syncthreads();  // every warp is done with sK
    if (lane == 0) part[warp] = bias_grad;
    __syncthreads();
    if (threadIdx.x == 0)
      p.work[((long long)b * p.shape.Hq + h) * gridDim.x + blockIdx.x] = ((part[0] + part[1]) + part[2]) + part[3];
  }
}

// --------------------------------------------------------------------------------------- dK, dV

enum DkdvPart : int { kDkDv = 0, kDvOnly = 1, kDkOnly = 2 };

template <int Dp>
constexpr size_t dkdv_smem_bytes() {
  return size_t(2 * kKeyRows + 2 * q_step<Dp>()) * stride<Dp>() * 2 + 2 * q_step<Dp>() * sizeof(float);
}
static_assert(dkdv_smem_bytes<256>() <= kMaxSmem && dq_smem_bytes<256>() <= kMaxSmem, "backward must fit 99 KB");

// The query rows that can see some key of [j0, j1] (j1 < k_len): [i_lo, i_hi], empty if i_lo > i_hi.
__device__ __forceinline__ void query_range(const AttnMask& m, const Seq& sq, int j0, int j1, int& i_lo, int& i_hi) {
  i_lo = 0;
  i_hi = sq.q_len - 1;
  if (m.right >= 0) i_lo = max(0, j0 - sq.off - m.right);
  if (m.left >= 0 && j0 >= m.sinks) i_hi = min(i_hi, j1 - sq.off + m.left);  // (a sink key: every row)
}

template <typename T, int Dp, int Part>
__global__ void __launch_bounds__(kThreads, 1) flash_bwd_dkdv_kernel(BwdArgs a) {
  constexpr int S = stride<Dp>(), kQStep = q_step<Dp>(), NQ = kQStep / 8, DT = Dp / 8, KS = Dp / 16;
  constexpr bool kDV = Part != kDkOnly, kDK = Part != kDvOnly;
  const AttnBwdParams& p = a.p;
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, hk = blockIdx.y;
  const Seq sq = attn::seq_of(p.shape, b);
  const int j0 = blockIdx.x * kKeyRows;
  const int valid = min(kKeyRows, sq.k_len - j0);  // keys with data; rows past them up to `limit` get zeros
  const int limit = min(kKeyRows, (p.shape.cu_k ? sq.k_len : p.shape.Sk) - j0);
  if (limit <= 0) return;
  const int D = p.shape.D, Dv = p.shape.Dv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  KK_DYNAMIC_SHARED(uint16_t, smem);
  uint16_t* sK = smem;
  uint16_t* sV = sK + kKeyRows * S;
  uint16_t* sQ = sV + kKeyRows * S;
  uint16_t* sdO = sQ + kQStep * S;
  float* sL = reinterpret_cast<float*>(sdO + kQStep * S);
  float* sD = sL + kQStep;
  uint16_t* k_rows = sK + warp * 16 * S;
  uint16_t* v_rows = sV + warp * 16 * S;

  const ScoreMath sm(m);
  int i_lo = 0, i_hi = -1;
  if (valid > 0) query_range(m, sq, j0, j0 + valid - 1, i_lo, i_hi);
  const int t_lo = i_lo / kQStep, t_hi = i_hi < i_lo ? t_lo - 1 : i_hi / kQStep;
  if (t_hi >= t_lo) {
    load_tile<Dp, kKeyRows>(sK, a.k, b, sq.k_row0 + j0, hk, valid, D);
    load_tile<Dp, kKeyRows>(sV, a.v, b, sq.k_row0 + j0, hk, valid, Dv);
  }
  float dk[kDK ? DT : 1][4], dv[kDV ? DT : 1][4];
  zero(dk);
  zero(dv);
  const int krow0 = j0 + warp * 16 + g;
  for (int gi = 0; gi < a.group; ++gi) {
    const int h = hk * a.group + gi;
    const float bias2 = sm.softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h) * kLog2e;
    for (int qt = t_lo; qt <= t_hi; ++qt) {
      const int i0 = qt * kQStep;
      __syncthreads();  // every warp is done with the previous query step
      load_tile<Dp, kQStep>(sQ, a.q, b, sq.q_row0 + i0, h, sq.q_len - i0, D);
      load_tile<Dp, kQStep>(sdO, a.dout, b, sq.q_row0 + i0, h, sq.q_len - i0, Dv);
      if (tid < kQStep) row_stats(p, sq, b, h, i0 + tid, sL[tid], sD[tid]);
      ptx::cp_async_wait_all();
      __syncthreads();
      float st[NQ][4], dpt[NQ][4];
      zero(st);
      zero(dpt);
      mma_abt<T, NQ, KS, S>(st, k_rows, sQ, D);                    // S^T = K Q^T
      if constexpr (kDK) mma_abt<T, NQ, KS, S>(dpt, v_rows, sdO, Dv);  // dP^T = V dO^T
      const bool full = attn::tile_unmasked(m, sq, i0, min(i0 + kQStep, sq.q_len) - 1, j0, kKeyRows);
#pragma unroll
      for (int i = 0; i < NQ; ++i)
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = krow0 + 8 * (e >> 1), c = i * 8 + 2 * t + (e & 1), row = i0 + c;
          const bool vis = full || (key < sq.k_len && attn::visible(m, sq.off, row, key));
          float th = 0.f, pr, ds;
          const float s2 = sm.score2(st[i][e], th);
          prob_and_grad(sm, vis, s2, sL[c], sD[c], bias2, dpt[i][e], pr, ds);
          st[i][e] = pr;
          dpt[i][e] = ds * sm.grad_factor(th);
        }
      if constexpr (kDV) mma_pb<T, kQStep / 16, DT, S>(dv, st, sdO, Dv);  // dV += P^T dO
      if constexpr (kDK) mma_pb<T, kQStep / 16, DT, S>(dk, dpt, sQ, D);   // dK += dS^T Q
    }
  }
  const int w0 = warp * 16, wvalid = max(0, min(16, valid - w0)), wlimit = max(0, min(16, limit - w0));
  const long long row = sq.k_row0 + j0 + w0;
  if constexpr (kDK) {
    const float mul[2] = {m.scale, m.scale};
    uint16_t* dst = static_cast<uint16_t*>(const_cast<void*>(p.dk.ptr)) + b * p.dk.bs + hk * p.dk.hs + row * p.dk.rs;
    store_rows<T, DT, S>(dk, mul, k_rows, dst, p.dk.rs, wvalid, wlimit, D, a.dk_aligned);
  }
  if constexpr (kDV) {
    const float mul[2] = {1.f, 1.f};
    uint16_t* dst = static_cast<uint16_t*>(const_cast<void*>(p.dv.ptr)) + b * p.dv.bs + hk * p.dv.hs + row * p.dv.rs;
    store_rows<T, DT, S>(dv, mul, v_rows, dst, p.dv.rs, wvalid, wlimit, Dv, a.dv_aligned);
  }
}

// --------------------------------------------------------------------------------------- fp32

constexpr int kF32Warps = kAttnCudaMinRows, kF32Tile = 32, kF32MaxCols = 256 / 32;

template <typename T>
__device__ __forceinline__ T* at(const AttnTensor& t, int b, long long row, int h) {
  return static_cast<T*>(const_cast<void*>(t.ptr)) + b * t.bs + row * t.rs + h * t.hs;
}

// dQ: a warp per query row (8 rows per block), key/value tiles of 32 in shared memory; lane j takes
// key j of the tile, lane c owns columns c + 32 i of dq.
__global__ void __launch_bounds__(kF32Warps * 32) flash_bwd_dq_f32_kernel(AttnBwdParams p, int group, int Dp) {
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / group;
  const Seq sq = attn::seq_of(p.shape, b);
  const int m0 = blockIdx.x * kF32Warps;
  if (m0 >= sq.q_len) return;
  const int r1 = min(m0 + kF32Warps, sq.q_len) - 1;
  const int D = p.shape.D, Dv = p.shape.Dv, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, row = m0 + warp;
  KK_DYNAMIC_SHARED(float, smem);
  float* sQ = smem;                       // [8][Dp]
  float* sdO = sQ + kF32Warps * Dp;       // [8][Dp]
  float* sK = sdO + kF32Warps * Dp;       // [32][Dp + 1]
  float* sV = sK + kF32Tile * (Dp + 1);   // [32][Dp + 1]
  const bool in_row = row < sq.q_len;
  for (int d = lane; d < D; d += 32) sQ[warp * Dp + d] = in_row ? at<const float>(p.q, b, sq.q_row0 + row, h)[d] : 0.f;
  for (int d = lane; d < Dv; d += 32)
    sdO[warp * Dp + d] = in_row ? at<const float>(p.dout, b, sq.q_row0 + row, h)[d] : 0.f;
  const ScoreMath sm(m);
  const float bias = sm.softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h) * kLog2e;
  float lse2, delta;
  row_stats(p, sq, b, h, row, lse2, delta);
  const attn::KeyTiles tiles = attn::key_tiles(m, sq, m0, r1, kF32Tile);
  float dq[kF32MaxCols] = {};
  float bias_grad = 0.f;
  for (int n = 0; n < tiles.count; ++n) {
    const int j0 = tiles.tile(n) * kF32Tile;
    __syncthreads();
    for (int e = threadIdx.x; e < kF32Tile * Dp; e += blockDim.x) {
      const int j = e / Dp, d = e % Dp;
      const bool in = j0 + j < sq.k_len;
      if (d < D) sK[j * (Dp + 1) + d] = in ? at<const float>(p.k, b, sq.k_row0 + j0 + j, hk)[d] : 0.f;
      if (d < Dv) sV[j * (Dp + 1) + d] = in ? at<const float>(p.v, b, sq.k_row0 + j0 + j, hk)[d] : 0.f;
    }
    __syncthreads();
    const int key = j0 + lane;
    float s = 0.f, dp = 0.f;
    for (int d = 0; d < D; ++d) s = fmaf(sQ[warp * Dp + d], sK[lane * (Dp + 1) + d], s);
    for (int d = 0; d < Dv; ++d) dp = fmaf(sdO[warp * Dp + d], sV[lane * (Dp + 1) + d], dp);
    const bool vis = in_row && key < sq.k_len && attn::visible(m, sq.off, row, key);
    float th = 0.f, pr, ds;
    prob_and_grad(sm, vis, sm.score2(s, th), lse2, delta, bias, dp, pr, ds);
    bias_grad += ds;
    ds *= sm.grad_factor(th);
    for (int j = 0; j < kF32Tile; ++j) {
      const float dj = __shfl_sync(0xffffffffu, ds, j);
#pragma unroll
      for (int i = 0; i < kF32MaxCols; ++i)
        if (lane + 32 * i < D) dq[i] = fmaf(dj, sK[j * (Dp + 1) + lane + 32 * i], dq[i]);
    }
  }
  if (p.work) {
    KK_SHARED(float, part, [kF32Warps]);
    bias_grad = cuda::warp_sum(bias_grad);
    if (lane == 0) part[warp] = bias_grad;
    __syncthreads();
    if (threadIdx.x == 0) {
      float sum = 0.f;
      for (int w = 0; w < kF32Warps; ++w) sum += part[w];
      p.work[((long long)b * p.shape.Hq + h) * gridDim.x + blockIdx.x] = sum;
    }
  }
  if (!in_row) return;
  float* out = at<float>(p.dq, b, sq.q_row0 + row, h);
#pragma unroll
  for (int i = 0; i < kF32MaxCols; ++i)
    if (lane + 32 * i < D) out[lane + 32 * i] = dq[i] * m.scale;
}

// dK, dV: a warp per key row (8 keys per block of one kv head), query/dO tiles of 32 rows of each
// head of the group; lane i takes query i of the tile, lane c owns columns c + 32 i.
__global__ void __launch_bounds__(kF32Warps * 32) flash_bwd_dkdv_f32_kernel(AttnBwdParams p, int group, int Dp) {
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, hk = blockIdx.y;
  const Seq sq = attn::seq_of(p.shape, b);
  const int j0 = blockIdx.x * kF32Warps;
  const int valid = min(kF32Warps, sq.k_len - j0), limit = min(kF32Warps, (p.shape.cu_k ? sq.k_len : p.shape.Sk) - j0);
  if (limit <= 0) return;
  const int D = p.shape.D, Dv = p.shape.Dv, lane = threadIdx.x & 31, warp = threadIdx.x >> 5, key = j0 + warp;
  KK_DYNAMIC_SHARED(float, smem);
  float* sK = smem;                        // [8][Dp]
  float* sV = sK + kF32Warps * Dp;         // [8][Dp]
  float* sQ = sV + kF32Warps * Dp;         // [32][Dp + 1]
  float* sdO = sQ + kF32Tile * (Dp + 1);   // [32][Dp + 1]
  float* sL = sdO + kF32Tile * (Dp + 1);   // [32]
  float* sD = sL + kF32Tile;               // [32]
  const bool in_key = key < sq.k_len;
  for (int d = lane; d < D; d += 32) sK[warp * Dp + d] = in_key ? at<const float>(p.k, b, sq.k_row0 + key, hk)[d] : 0.f;
  for (int d = lane; d < Dv; d += 32) sV[warp * Dp + d] = in_key ? at<const float>(p.v, b, sq.k_row0 + key, hk)[d] : 0.f;
  const ScoreMath sm(m);
  int i_lo = 0, i_hi = -1;
  if (valid > 0) query_range(m, sq, j0, j0 + valid - 1, i_lo, i_hi);
  const int t_lo = i_lo / kF32Tile, t_hi = i_hi < i_lo ? t_lo - 1 : i_hi / kF32Tile;
  float dk[kF32MaxCols] = {}, dv[kF32MaxCols] = {};
  for (int gi = 0; gi < group; ++gi) {
    const int h = hk * group + gi;
    const float bias = sm.softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h) * kLog2e;
    for (int qt = t_lo; qt <= t_hi; ++qt) {
      const int i0 = qt * kF32Tile;
      __syncthreads();
      for (int e = threadIdx.x; e < kF32Tile * Dp; e += blockDim.x) {
        const int i = e / Dp, d = e % Dp;
        const bool in = i0 + i < sq.q_len;
        if (d < D) sQ[i * (Dp + 1) + d] = in ? at<const float>(p.q, b, sq.q_row0 + i0 + i, h)[d] : 0.f;
        if (d < Dv) sdO[i * (Dp + 1) + d] = in ? at<const float>(p.dout, b, sq.q_row0 + i0 + i, h)[d] : 0.f;
      }
      if (threadIdx.x < kF32Tile) row_stats(p, sq, b, h, i0 + threadIdx.x, sL[threadIdx.x], sD[threadIdx.x]);
      __syncthreads();
      const int row = i0 + lane;
      float s = 0.f, dp = 0.f;
      for (int d = 0; d < D; ++d) s = fmaf(sK[warp * Dp + d], sQ[lane * (Dp + 1) + d], s);
      for (int d = 0; d < Dv; ++d) dp = fmaf(sV[warp * Dp + d], sdO[lane * (Dp + 1) + d], dp);
      const bool vis = in_key && row < sq.q_len && attn::visible(m, sq.off, row, key);
      float th = 0.f, pr, ds;
      prob_and_grad(sm, vis, sm.score2(s, th), sL[lane], sD[lane], bias, dp, pr, ds);
      ds *= sm.grad_factor(th);
      for (int i = 0; i < kF32Tile; ++i) {
        const float pi = __shfl_sync(0xffffffffu, pr, i), di = __shfl_sync(0xffffffffu, ds, i);
#pragma unroll
        for (int c = 0; c < kF32MaxCols; ++c) {
          if (lane + 32 * c < Dv) dv[c] = fmaf(pi, sdO[i * (Dp + 1) + lane + 32 * c], dv[c]);
          if (lane + 32 * c < D) dk[c] = fmaf(di, sQ[i * (Dp + 1) + lane + 32 * c], dk[c]);
        }
      }
    }
  }
  if (warp >= limit) return;
  float* dkr = at<float>(p.dk, b, sq.k_row0 + key, hk);
  float* dvr = at<float>(p.dv, b, sq.k_row0 + key, hk);
#pragma unroll
  for (int c = 0; c < kF32MaxCols; ++c) {
    if (lane + 32 * c < D) dkr[lane + 32 * c] = in_key ? dk[c] * m.scale : 0.f;
    if (lane + 32 * c < Dv) dvr[lane + 32 * c] = in_key ? dv[c] : 0.f;
  }
}

// dbias[h] = the blocks' partials, summed over batch and blocks in order.
__global__ void dbias_reduce_kernel(const float* work, float* dbias, int B, int Hq, int blocks) {
  const int h = blockIdx.x * blockDim.x + threadIdx.x;
  if (h >= Hq) return;
  float sum = 0.f;
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < blocks; ++i) sum += work[((long long)b * Hq + h) * blocks + i];
  dbias[h] = sum;
}

// --------------------------------------------------------------------------------------- launch

template <typename T, int Dp>
void launch_tc(const AttnBwdParams& p, cudaStream_t stream) {
  const AttnShape& s = p.shape;
  BwdArgs a{p, operand(p.q, s.D), operand(p.k, s.D), operand(p.v, s.Dv), operand(p.dout, s.Dv),
            operand(p.dq, s.D).aligned, operand(p.dk, s.D).aligned, operand(p.dv, s.Dv).aligned, s.Hq / s.Hkv};
  allow_smem(flash_bwd_dq_kernel<T, Dp>, dq_smem_bytes<Dp>());
  KK_LAUNCH(dim3(cuda::blocks_for(s.Sq, kRows), s.Hq, s.B), kThreads, dq_smem_bytes<Dp>(), stream,
            flash_bwd_dq_kernel<T, Dp>)(a);
  const dim3 grid(cuda::blocks_for(s.Sk, kKeyRows), s.Hkv, s.B);
  const size_t smem = dkdv_smem_bytes<Dp>();
  if constexpr (Dp == 256) {  // dV and dK accumulators do not fit in registers together
    allow_smem(flash_bwd_dkdv_kernel<T, Dp, kDvOnly>, smem);
    allow_smem(flash_bwd_dkdv_kernel<T, Dp, kDkOnly>, smem);
    KK_LAUNCH(grid, kThreads, smem, stream, flash_bwd_dkdv_kernel<T, Dp, kDvOnly>)(a);
    KK_LAUNCH(grid, kThreads, smem, stream, flash_bwd_dkdv_kernel<T, Dp, kDkOnly>)(a);
  } else {
    allow_smem(flash_bwd_dkdv_kernel<T, Dp, kDkDv>, smem);
    KK_LAUNCH(grid, kThreads, smem, stream, flash_bwd_dkdv_kernel<T, Dp, kDkDv>)(a);
  }
}


void launch_f32(const AttnBwdParams& p, cudaStream_t stream) {
  const AttnShape& s = p.shape;
  const int Dp = ((s.D > s.Dv ? s.D : s.Dv) + 31) / 32 * 32, group = s.Hq / s.Hkv;
  const size_t smem = size_t(2 * kF32Warps * Dp + 2 * kF32Tile * (Dp + 1) + 2 * kF32Tile) * sizeof(float);
  allow_smem(flash_bwd_dq_f32_kernel, smem);
  allow_smem(flash_bwd_dkdv_f32_kernel, smem);
  KK_LAUNCH(dim3(cuda::blocks_for(s.Sq, kF32Warps), s.Hq, s.B), kF32Warps * 32, smem, stream,
            flash_bwd_dq_f32_kernel)(p, group, Dp);
  KK_LAUNCH(dim3(cuda::blocks_for(s.Sk, kF32Warps), s.Hkv, s.B), kF32Warps * 32, smem, stream,
            flash_bwd_dkdv_f32_kernel)(p, group, Dp);
}

}  // namespace

void attention_bwd_cuda(const AttnBwdParams& params, int device, intptr_t stream) {
  if (params.shape.B == 0) return;
  if (params.dbias && !params.work) throw std::invalid_argument("flash_attn backward: dbias needs the work buffer");
  run_entry(
      params, device, stream,
      [](auto tag, auto dp, const AttnBwdParams& p, cudaStream_t st) {
        launch_tc<typename decltype(tag)::type, decltype(dp)::value>(p, st);
      },
      [](const AttnBwdParams& p, cudaStream_t st) { launch_f32(p, st); },
      [](const AttnBwdParams& p, cudaStream_t st) {
        const AttnShape& s = p.shape;
        if (p.dbias) {
          const int blocks =
              p.dtype == DType::f32 ? int(cuda::blocks_for(s.Sq, kF32Warps)) : int(cuda::blocks_for(s.Sq, kRows));
          KK_LAUNCH(cuda::blocks_for(s.Hq, 128), 128, 0, st, dbias_reduce_kernel)(p.work, p.dbias, s.B, s.Hq, blocks);
        }
        cuda::check(cudaGetLastError(), "flash_attn backward launch");
      });
}

}  // namespace kernkit
