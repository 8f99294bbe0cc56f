// Attention forward on CUDA.
//
// bf16/fp16: FlashAttention-2's structure on tensor cores. A block takes 64 query rows of one
// (batch, head), 4 warps of 16 rows each; key/value tiles of 64 rows stream through shared memory by
// cp.async (V of tile n loads while S = Q K^T of tile n is computed, K of tile n+1 while O += P V
// runs, so each buffer is single and two barriers per tile suffice). mma.m16n8k16 with fp32 sums,
// fragments by ldmatrix (.trans for V), online softmax in base 2 with the scale folded in, row
// statistics reduced across the quad by shuffles; the output goes through shared memory for 16-byte
// stores. Head dims are padded to a config of 64, 128 or 256 (columns past the real D/Dv are zero
// and their mma steps skipped). Sigmoid attention uses the same loop without max or sum.
// fp32: an exact non-tensor-core kernel (a warp per query row), documented as the slow path.
//
// Only the key tiles a block can see are visited (sinks + window, attn_common.cuh); per-element
// masks are applied only on tiles that are not fully visible.
#include <algorithm>
#include <cmath>

#include "attention/cuda/attn_common.cuh"
#include "attention/cuda/tc_common.cuh"

namespace kernkit {
namespace {

using attn::Seq;

using namespace attn::tc;

constexpr int kRows = 64, kKeys = 64;

struct TcArgs {
  AttnFwdParams p;
  Operand q, k, v;
  bool o_aligned;
  int group;    // Hq / Hkv
  int n_split;  // split-KV: blocks per query tile, each over its share of the key tiles (1 = off)
  float* part;  // split-KV partials: outputs [split][b][row][h][Dv], then lse [split][b][row][h]
};

// Where split `split`'s partial for (b, row, h) lives (row < Sq, the per-sequence row).
__device__ __forceinline__ long long part_slot(const AttnShape& s, int split, int b, int row, int h) {
  return ((long long)(split * s.B + b) * s.Sq + row) * s.Hq + h;
}

template <int Dp>
constexpr size_t fwd_smem_bytes() { return size_t(kRows + 2 * kKeys) * stride<Dp>() * 2; }
static_assert(fwd_smem_bytes<256>() <= kMaxSmem, "forward tile must fit 99 KB (sm_86/sm_89)");

template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads) flash_fwd_tc_kernel(TcArgs a) {
  constexpr int S = stride<Dp>(), NT = kKeys / 8, DT = Dp / 8, KS = Dp / 16;
  constexpr bool kQInRegs = Dp <= 128;  // (256: Q fragments from shared memory, registers go to O)
  const AttnFwdParams& p = a.p;
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / a.group;
  const Seq sq = attn::seq_of(p.shape, b);
  const int split = blockIdx.x % a.n_split, m0 = (blockIdx.x / a.n_split) * kRows;
  if (m0 >= sq.q_len) return;  // the whole block leaves before any barrier
  const int r1 = min(m0 + kRows, sq.q_len) - 1;
  const int D = p.shape.D, Dv = p.shape.Dv;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, g = lane >> 2, t = lane & 3;

  KK_DYNAMIC_SHARED(uint16_t, smem);
  uint16_t* sQ = smem;
  uint16_t* sK = sQ + kRows * S;
  uint16_t* sV = sK + kKeys * S;
  uint16_t* q_rows = sQ + warp * 16 * S;  // this warp's rows

  const attn::KeyTiles tiles = attn::key_tiles(m, sq, m0, r1, kKeys);
  const int per_split = (tiles.count + a.n_split - 1) / a.n_split;
  const int n_begin = min(tiles.count, split * per_split), n_end = min(tiles.count, n_begin + per_split);
  const bool softmax = m.activation == AttnActivation::softmax;
  const bool capped = m.softcap > 0.f;
  // s2 = log2(e) * score: scale (and softcap) folded into one multiply where possible
  const float qk_mul = capped ? m.scale / m.softcap : m.scale * kLog2e;
  const float cap2 = m.softcap * kLog2e;
  const float b2 = softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h) * kLog2e;
  const float bias2[2] = {b2, b2};

  float o[DT][4];
  zero(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  const int qrow0 = m0 + warp * 16 + g;  // this thread's rows: qrow0 and qrow0 + 8

  if (n_end > n_begin) {
    const int j0 = tiles.tile(n_begin) * kKeys;
    load_tile<Dp, kRows>(sQ, a.q, b, sq.q_row0 + m0, h, sq.q_len - m0, D);
    load_tile<Dp, kKeys>(sK, a.k, b, sq.k_row0 + j0, hk, sq.k_len - j0, D);
    ptx::cp_async_commit();
  }
  uint32_t qf[kQInRegs ? KS : 1][4];

  for (int n = n_begin; n < n_end; ++n) {
    const int j0 = tiles.tile(n) * kKeys;
    ptx::cp_async_wait<0>();
    __syncthreads();  // K(n) (and Q) have landed; every warp is done with V(n-1)
    if constexpr (kQInRegs) {
      if (n == n_begin) {
#pragma unroll
        for (int kk = 0; kk < KS; ++kk) load_a<S>(qf[kk], q_rows, kk);
      }
    }
    load_tile<Dp, kKeys>(sV, a.v, b, sq.k_row0 + j0, hk, sq.k_len - j0, Dv);
    ptx::cp_async_commit();

    // S = Q K^T for this warp's 16 rows x 64 keys
    float s[NT][4];
    zero(s);
    if constexpr (kQInRegs) {
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        if (kk * 16 >= D) break;
        mma_abt_step<T, NT, S>(s, qf[kk], sK, kk);
      }
    } else {
      mma_abt<T, NT, KS, S>(s, q_rows, sK, D);
    }

    // scores in base 2, masks, then probabilities in place
    const bool full = attn::tile_unmasked(m, sq, m0, r1, j0, kKeys);
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[i][e] * qk_mul;
        if (capped) x = cap2 * tanhf(x);
        if (!full) {
          const int row = qrow0 + 8 * (e >> 1), key = j0 + i * 8 + 2 * t + (e & 1);
          if (key >= sq.k_len || !attn::visible(m, sq.off, row, key)) x = -INFINITY;
        }
        s[i][e] = x;
      }
    scores_to_probs(s, softmax, bias2, row_max, row_sum, o);

    ptx::cp_async_wait<0>();
    __syncthreads();  // V(n) has landed; every warp is done with K(n)
    if (n + 1 < n_end) {
      const int jn = tiles.tile(n + 1) * kKeys;
      load_tile<Dp, kKeys>(sK, a.k, b, sq.k_row0 + jn, hk, sq.k_len - jn, D);
      ptx::cp_async_commit();
    }
    mma_pb<T, kKeys / 16, DT, S>(o, s, sV, Dv);  // O += P V
  }

  // epilogue: normalise, lse, then this warp's 16 rows through its own rows of sQ (or, split, fp32
  // partials straight from the fragments)
  float inv[2] = {1.f, 1.f}, lse[2] = {-INFINITY, -INFINITY};
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    if (!softmax) continue;
    const float l = quad_sum(row_sum[r]);
    inv[r] = l > 0.f ? 1.f / l : 0.f;
    lse[r] = l > 0.f ? (row_max[r] + log2f(l)) * kLn2 : -INFINITY;
    const int row = qrow0 + 8 * r;
    if (p.lse && a.n_split == 1 && t == 0 && row < sq.q_len)
      p.lse[b * p.shape.stat_bs + h * p.shape.stat_hs + sq.q_row0 + row] = lse[r];
  }
  if (a.n_split > 1) {
    const long long lse_base = (long long)a.n_split * p.shape.B * p.shape.Sq * p.shape.Hq * Dv;
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const int row = qrow0 + 8 * r;
      if (row >= sq.q_len) continue;
      const long long slot = part_slot(p.shape, split, b, row, h);
      if (t == 0) a.part[lse_base + slot] = lse[r];
#pragma unroll
      for (int i = 0; i < DT; ++i)
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int col = i * 8 + 2 * t + e;
          if (col < Dv) a.part[slot * Dv + col] = o[i][2 * r + e] * inv[r];
        }
    }
    return;
  }
  const int w0 = m0 + warp * 16, rows = min(16, sq.q_len - w0);
  uint16_t* out = static_cast<uint16_t*>(const_cast<void*>(p.o.ptr)) + b * p.o.bs + h * p.o.hs +
                  (sq.q_row0 + w0) * p.o.rs;
  if (rows > 0) store_rows<T, DT, S>(o, inv, q_rows, out, p.o.rs, rows, rows, Dv, a.o_aligned);
}

// ------------------------------------------------------------------------------- fp32 (exact)

constexpr int kF32Warps = 8, kF32Keys = 32, kF32MaxCols = 256 / 32;

// A warp per query row (8 consecutive rows of one (batch, head) per block); key/value tiles of 32
// rows in shared memory. Lane j scores key j of the tile; lane c owns output columns c + 32 i.
__global__ void __launch_bounds__(kF32Warps * 32) flash_fwd_f32_kernel(AttnFwdParams p, int group, int Dp) {
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, h = blockIdx.y, hk = h / group;
  const Seq sq = attn::seq_of(p.shape, b);
  const int m0 = blockIdx.x * kF32Warps;
  if (m0 >= sq.q_len) return;
  const int r1 = min(m0 + kF32Warps, sq.q_len) - 1;
  const int D = p.shape.D, Dv = p.shape.Dv, lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row = m0 + warp;
  KK_DYNAMIC_SHARED(float, smem);
  float* sQ = smem;                      // [8][Dp]
  float* sK = sQ + kF32Warps * Dp;       // [32][Dp + 1]
  float* sV = sK + kF32Keys * (Dp + 1);  // [32][Dp]
  const float* q = static_cast<const float*>(p.q.ptr) + b * p.q.bs + h * p.q.hs;
  const float* k = static_cast<const float*>(p.k.ptr) + b * p.k.bs + hk * p.k.hs;
  const float* v = static_cast<const float*>(p.v.ptr) + b * p.v.bs + hk * p.v.hs;
  for (int d = lane; d < D; d += 32) sQ[warp * Dp + d] = row < sq.q_len ? q[(sq.q_row0 + row) * p.q.rs + d] : 0.f;

  const attn::KeyTiles tiles = attn::key_tiles(m, sq, m0, r1, kF32Keys);
  const bool softmax = m.activation == AttnActivation::softmax;
  const float bias = softmax ? 0.f : attn::sigmoid_bias(m, sq.k_len, h);
  float o[kF32MaxCols] = {};
  float mx = -INFINITY, l = 0.f;
  for (int n = 0; n < tiles.count; ++n) {
    const int j0 = tiles.tile(n) * kF32Keys;
    __syncthreads();  // everyone is done with the previous tile
    for (int e = threadIdx.x; e < kF32Keys * Dp; e += blockDim.x) {
      const int j = e / Dp, d = e % Dp;
      const bool in = j0 + j < sq.k_len;
      const long long kr = (sq.k_row0 + j0 + j);
      if (d < D) sK[j * (Dp + 1) + d] = in ? k[kr * p.k.rs + d] : 0.f;
      if (d < Dv) sV[j * Dp + d] = in ? v[kr * p.v.rs + d] : 0.f;
    }
    __syncthreads();
    const int key = j0 + lane;
    float x = 0.f;
    for (int d = 0; d < D; ++d) x = fmaf(sQ[warp * Dp + d], sK[lane * (Dp + 1) + d], x);
    x *= m.scale;
    if (m.softcap > 0.f) x = m.softcap * tanhf(x / m.softcap);
    const bool vis = row < sq.q_len && key < sq.k_len && attn::visible(m, sq.off, row, key);
    float pr;
    if (softmax) {
      x = vis ? x : -INFINITY;
      const float mn = fmaxf(mx, cuda::warp_max(x));
      const float base = mn == -INFINITY ? 0.f : mn;
      const float alpha = expf(mx - base);
      pr = expf(x - base);
      l = l * alpha + cuda::warp_sum(pr);
      mx = mn;
#pragma unroll
      for (int i = 0; i < kF32MaxCols; ++i) o[i] *= alpha;
    } else {
      pr = vis ? 1.f / (1.f + expf(-(x + bias))) : 0.f;
    }
    for (int j = 0; j < kF32Keys; ++j) {
      const float pj = __shfl_sync(0xffffffffu, pr, j);
#pragma unroll
      for (int i = 0; i < kF32MaxCols; ++i)
        if (lane + 32 * i < Dv) o[i] = fmaf(pj, sV[j * Dp + lane + 32 * i], o[i]);
    }
  }
  if (row >= sq.q_len) return;
  const float inv = !softmax ? 1.f : l > 0.f ? 1.f / l : 0.f;
  float* out = static_cast<float*>(const_cast<void*>(p.o.ptr)) + b * p.o.bs + h * p.o.hs + (sq.q_row0 + row) * p.o.rs;
#pragma unroll
  for (int i = 0; i < kF32MaxCols; ++i)
    if (lane + 32 * i < Dv) out[lane + 32 * i] = o[i] * inv;
  if (softmax && p.lse && lane == 0)
    p.lse[b * p.shape.stat_bs + h * p.shape.stat_hs + sq.q_row0 + row] = l > 0.f ? mx + logf(l) : -INFINITY;
}

// ------------------------------------------------------------------------------- decode

// Decode (Sq * group <= 16): the query rows of a GQA group are packed into one 16-row tile (row r =
// query r / group of head hk * group + r % group), so K/V are read once per kv head, not once per
// query head, and the tensor cores compute 16 rows instead of a 64-row tile with one real row. The
// 4 warps share the Q tile and take every 4th 32-key tile each (own K/V buffers, warp-level
// cp.async waits); their partial (max, sum, O) are merged through shared memory at the end.
// (keys per warp tile: 16 at head dim 256, so the block stays within 99 KB of shared memory)
constexpr int kDecRows = 16;
template <int Dp>
constexpr int dec_keys() { return Dp == 256 ? 16 : 32; }

template <int Dp>
constexpr size_t dec_smem_bytes() { return size_t(kDecRows + kWarps * 2 * dec_keys<Dp>()) * stride<Dp>() * 2; }
static_assert(dec_smem_bytes<256>() <= kMaxSmem && dec_smem_bytes<128>() <= kMaxSmem, "decode must fit 99 KB");
static_assert(size_t(kWarps * kDecRows) * (256 * 4 + 8) <= size_t(kWarps * 2 * dec_keys<256>()) * stride<256>() * 2,
              "the warp merge's fp32 scratch must fit in the K/V buffers");

template <typename T, int Dp>
__global__ void __launch_bounds__(kThreads) flash_decode_kernel(TcArgs a) {
  constexpr int S = stride<Dp>(), kDecKeys = dec_keys<Dp>(), NT = kDecKeys / 8, DT = Dp / 8, KS = Dp / 16;
  const AttnFwdParams& p = a.p;
  const AttnMask& m = p.mask;
  const int b = blockIdx.z, hk = blockIdx.y, split = blockIdx.x, group = a.group;
  const Seq sq = attn::seq_of(p.shape, b);
  const int rows = sq.q_len * group;
  if (rows <= 0) return;
  const int D = p.shape.D, Dv = p.shape.Dv;
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5, g = lane >> 2, t = lane & 3;
  KK_DYNAMIC_SHARED(uint16_t, smem);
  uint16_t* sQ = smem;
  uint16_t* sKV = sQ + kDecRows * S;
  uint16_t* sK = sKV + warp * 2 * kDecKeys * S;  // this warp's buffers
  uint16_t* sV = sK + kDecKeys * S;

  for (int c = tid; c < kDecRows * (Dp / 8); c += kThreads) {  // packed Q rows, zeros past the data
    const int r = c / (Dp / 8), col = (c % (Dp / 8)) * 8;
    uint16_t* dst = sQ + r * S + col;
    const bool in = r < rows && col < D;
    const uint16_t* src = a.q.base + b * a.q.bs + (sq.q_row0 + (in ? r / group : 0)) * a.q.rs +
                          (hk * group + (in ? r % group : 0)) * a.q.hs + col;
    if (a.q.aligned) {
      ptx::cp_async_cg<16>(dst, in ? src : a.q.base, in ? 16 : 0);
    } else {
      for (int e = 0; e < 8; ++e) dst[e] = in && col + e < D ? src[e] : uint16_t(0);
    }
  }
  ptx::cp_async_wait_all();
  __syncthreads();

  const attn::KeyTiles tiles = attn::key_tiles(m, sq, 0, sq.q_len - 1, kDecKeys);
  const int per_split = (tiles.count + a.n_split - 1) / a.n_split;
  const int n_begin = min(tiles.count, split * per_split), n_end = min(tiles.count, n_begin + per_split);
  const bool softmax = m.activation == AttnActivation::softmax, capped = m.softcap > 0.f;
  const float qk_mul = capped ? m.scale / m.softcap : m.scale * kLog2e, cap2 = m.softcap * kLog2e;
  int qi[2];
  float bias2[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int pr = g + 8 * r;
    qi[r] = pr / group;
    bias2[r] = softmax || pr >= rows ? 0.f : attn::sigmoid_bias(m, sq.k_len, hk * group + pr % group) * kLog2e;
  }
  constexpr bool kQInRegs = Dp <= 128;
  uint32_t qf[kQInRegs ? KS : 1][4];
  if constexpr (kQInRegs) {
#pragma unroll
    for (int kk = 0; kk < KS; ++kk) load_a<S>(qf[kk], sQ, kk);
  }
  float o[DT][4];
  zero(o);
  float row_max[2] = {-INFINITY, -INFINITY}, row_sum[2] = {0.f, 0.f};
  for (int n = n_begin + warp; n < n_end; n += kWarps) {
    const int j0 = tiles.tile(n) * kDecKeys;
    load_tile<Dp, kDecKeys>(sK, a.k, b, sq.k_row0 + j0, hk, sq.k_len - j0, D, lane, 32);
    load_tile<Dp, kDecKeys>(sV, a.v, b, sq.k_row0 + j0, hk, sq.k_len - j0, Dv, lane, 32);
    ptx::cp_async_wait_all();
    __syncwarp();  // the tiles are this warp's alone
    float s[NT][4];
    zero(s);
    if constexpr (kQInRegs) {
#pragma unroll
      for (int kk = 0; kk < KS; ++kk) {
        if (kk * 16 >= D) break;
        mma_abt_step<T, NT, S>(s, qf[kk], sK, kk);
      }
    } else {
      mma_abt<T, NT, KS, S>(s, sQ, sK, D);
    }
    const bool full = attn::tile_unmasked(m, sq, 0, sq.q_len - 1, j0, kDecKeys);
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        float x = s[i][e] * qk_mul;
        if (capped) x = cap2 * tanhf(x);
        const int key = j0 + i * 8 + 2 * t + (e & 1);
        if (!full && (key >= sq.k_len || !attn::visible(m, sq.off, qi[e >> 1], key))) x = -INFINITY;
        s[i][e] = x;
      }
    scores_to_probs(s, softmax, bias2, row_max, row_sum, o);
    mma_pb<T, kDecKeys / 16, DT, S>(o, s, sV, Dv);
    __syncwarp();  // every lane is done with the tiles before the next loads overwrite them
  }

  // merge the 4 warps' partials (the K/V buffers become fp32 scratch), then write
  float l[2];
#pragma unroll
  for (int r = 0; r < 2; ++r) l[r] = quad_sum(row_sum[r]);
  __syncthreads();
  float* cmax = reinterpret_cast<float*>(sKV);  // [warp][row]
  float* csum = cmax + kWarps * kDecRows;
  float* co = csum + kWarps * kDecRows;         // [warp][row][Dp]
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    const int pr = g + 8 * r;
    if (t == 0) {
      cmax[warp * kDecRows + pr] = row_max[r];
      csum[warp * kDecRows + pr] = l[r];
    }
#pragma unroll
    for (int i = 0; i < DT; ++i)
#pragma unroll
      for (int e = 0; e < 2; ++e) co[(warp * kDecRows + pr) * Dp + i * 8 + 2 * t + e] = o[i][2 * r + e];
  }
  __syncthreads();
  const long long lse_base = (long long)a.n_split * p.shape.B * p.shape.Sq * p.shape.Hq * Dv;
  for (int idx = tid; idx < rows * Dv; idx += kThreads) {
    const int pr = idx / Dv, c = idx % Dv, i = pr / group, h = hk * group + pr % group;
    float acc = 0.f, lse = -INFINITY;
    if (softmax) {
      float mx = -INFINITY;
      for (int w = 0; w < kWarps; ++w) mx = fmaxf(mx, cmax[w * kDecRows + pr]);
      const float base = mx == -INFINITY ? 0.f : mx;
      float total = 0.f;
      for (int w = 0; w < kWarps; ++w) {
        const float wt = ptx::ex2_approx(cmax[w * kDecRows + pr] - base);
        total += csum[w * kDecRows + pr] * wt;
        acc += co[(w * kDecRows + pr) * Dp + c] * wt;
      }
      acc = total > 0.f ? acc / total : 0.f;
      lse = total > 0.f ? (mx + log2f(total)) * kLn2 : -INFINITY;
    } else {
      for (int w = 0; w < kWarps; ++w) acc += co[(w * kDecRows + pr) * Dp + c];
    }
    if (a.n_split > 1) {
      const long long slot = part_slot(p.shape, split, b, i, h);
      a.part[slot * Dv + c] = acc;
      if (c == 0) a.part[lse_base + slot] = lse;
    } else {
      T* out = static_cast<T*>(const_cast<void*>(p.o.ptr)) + b * p.o.bs + (sq.q_row0 + i) * p.o.rs + h * p.o.hs;
      out[c] = cuda::store_cast<T>(acc);
      if (softmax && p.lse && c == 0) p.lse[b * p.shape.stat_bs + h * p.shape.stat_hs + sq.q_row0 + i] = lse;
    }
  }
}

// ------------------------------------------------------------------------------- split-KV combine

// One warp per (b, row, h): softmax partials weighted by exp(lse_s - lse) (lse = logsumexp of the
// splits' lse, -inf when no split saw a key), sigmoid partials summed; splits in order.
template <typename T>
__global__ void __launch_bounds__(128) split_combine_kernel(AttnFwdParams p, int n_split, const float* part) {
  const AttnShape& s = p.shape;
  const long long w = (long long)blockIdx.x * 4 + (threadIdx.x >> 5);
  if (w >= (long long)s.B * s.Sq * s.Hq) return;
  const int lane = threadIdx.x & 31, h = int(w % s.Hq), row = int(w / s.Hq % s.Sq), b = int(w / s.Hq / s.Sq);
  const Seq sq = attn::seq_of(s, b);
  if (row >= sq.q_len) return;
  const bool softmax = p.mask.activation == AttnActivation::softmax;
  const long long lse_base = (long long)n_split * s.B * s.Sq * s.Hq * s.Dv;
  float mx = -INFINITY;
  if (softmax)
    for (int i = lane; i < n_split; i += 32) mx = fmaxf(mx, part[lse_base + part_slot(s, i, b, row, h)]);
  mx = cuda::warp_max(mx);
  float total = 0.f;  // sum of the weights (every lane the same, splits in order)
  if (softmax && mx != -INFINITY)
    for (int i = 0; i < n_split; ++i) total += expf(part[lse_base + part_slot(s, i, b, row, h)] - mx);
  T* out = static_cast<T*>(const_cast<void*>(p.o.ptr)) + b * p.o.bs + (sq.q_row0 + row) * p.o.rs + h * p.o.hs;
  for (int c = lane; c < s.Dv; c += 32) {
    float acc = 0.f;
    for (int i = 0; i < n_split; ++i) {
      const long long slot = part_slot(s, i, b, row, h);
      const float wgt = !softmax ? 1.f : mx == -INFINITY ? 0.f : expf(part[lse_base + slot] - mx) / total;
      acc = fmaf(wgt, part[slot * s.Dv + c], acc);
    }
    out[c] = cuda::store_cast<T>(acc);
  }
  if (softmax && p.lse && lane == 0)
    p.lse[b * s.stat_bs + h * s.stat_hs + sq.q_row0 + row] = mx == -INFINITY ? -INFINITY : mx + logf(total);
}

// Split-KV (flash-decoding) when the blocks alone leave the GPU mostly idle (decode: one block per
// head) and there are enough key tiles to share: about two blocks per SM, at least `min_tiles` key
// tiles per split, at most 64 splits.
int split_count(long long blocks, int key_tiles, int min_tiles) {
  int dev = 0, sms = 0;
  if (cudaGetDevice(&dev) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev) != cudaSuccess || sms <= 0)
    sms = 108;
  if (blocks >= sms || key_tiles < 2 * min_tiles) return 1;
  const long long want = (2LL * sms + blocks - 1) / blocks;
  return int(std::max(1LL, std::min({want, (long long)key_tiles / min_tiles, 64LL})));
}

// ------------------------------------------------------------------------------- launch

// The tiled kernel, or the packed-GQA decode kernel when all query rows of a kv head fit one 16-row
// tile; either with split-KV partials merged by split_combine_kernel.
template <typename T, int Dp>
void launch_tc(const AttnFwdParams& p, cudaStream_t stream) {
  const AttnShape& s = p.shape;
  const int group = s.Hq / s.Hkv;
  const bool decode = (long long)s.Sq * group <= kDecRows;
  TcArgs a{p, operand(p.q, s.D), operand(p.k, s.D), operand(p.v, s.Dv), operand(p.o, s.Dv).aligned, group, 1,
           nullptr};
  a.n_split = decode ? split_count((long long)s.Hkv * s.B, (s.Sk + dec_keys<Dp>() - 1) / dec_keys<Dp>(), 2 * kWarps)
                     : split_count((long long)cuda::blocks_for(s.Sq, kRows) * s.Hq * s.B, (s.Sk + kKeys - 1) / kKeys, 2);
  const long long slots = (long long)s.B * s.Sq * s.Hq;
  if (decode) allow_smem(flash_decode_kernel<T, Dp>, dec_smem_bytes<Dp>());  // (before the scratch: may throw)
  else allow_smem(flash_fwd_tc_kernel<T, Dp>, fwd_smem_bytes<Dp>());
  if (a.n_split > 1)
    cuda::check(cudaMallocAsync(reinterpret_cast<void**>(&a.part), size_t(a.n_split) * slots * (s.Dv + 1) * sizeof(float),
                                stream), "flash_attn split-KV scratch");
  if (decode) {
    KK_LAUNCH(dim3(a.n_split, s.Hkv, s.B), kThreads, dec_smem_bytes<Dp>(), stream, flash_decode_kernel<T, Dp>)(a);
  } else {
    KK_LAUNCH(dim3(cuda::blocks_for(s.Sq, kRows) * a.n_split, s.Hq, s.B), kThreads, fwd_smem_bytes<Dp>(), stream,
              flash_fwd_tc_kernel<T, Dp>)(a);
  }
  if (a.n_split > 1) {
    KK_LAUNCH(cuda::blocks_for(slots, 4), 128, 0, stream, split_combine_kernel<T>)(p, a.n_split, a.part);
    cuda::check(cudaFreeAsync(a.part, stream), "flash_attn split-KV scratch");
  }
}


}  // namespace

void attention_fwd_cuda(const AttnFwdParams& params, int device, intptr_t stream) {
  if (params.shape.B == 0 || params.shape.Sq == 0) return;
  run_entry(
      params, device, stream,
      [](auto tag, auto dp, const AttnFwdParams& p, cudaStream_t st) {
        launch_tc<typename decltype(tag)::type, decltype(dp)::value>(p, st);
      },
      [](const AttnFwdParams& p, cudaStream_t st) {
        const AttnShape& s = p.shape;
        const int Dp = ((s.D > s.Dv ? s.D : s.Dv) + 31) / 32 * 32;
        const size_t smem = size_t(kF32Warps * Dp + kF32Keys * (Dp + 1) + kF32Keys * Dp) * sizeof(float);
        allow_smem(flash_fwd_f32_kernel, smem);
        const dim3 grid(cuda::blocks_for(s.Sq, kF32Warps), s.Hq, s.B);
        KK_LAUNCH(grid, kF32Warps * 32, smem, st, flash_fwd_f32_kernel)(p, s.Hq / s.Hkv, Dp);
      },
      [](const AttnFwdParams&, cudaStream_t) { cuda::check(cudaGetLastError(), "flash_attn forward launch"); });
}

}  // namespace kernkit
