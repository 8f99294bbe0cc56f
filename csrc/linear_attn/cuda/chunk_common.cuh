// Building blocks of the CUDA chunked linear-attention kernels (chunk_fwd.cu, chunk_bwd.cu).
//
// A block works on one chunk (C <= 64 rows) of one (sequence, head), or walks the chunks of one
// (sequence, head) for the state recurrence. Operand tiles are staged in shared memory as fp32
// (64 columns: a block of K or V), so gates and decays are applied in fp32 before a product rounds
// its operands. Products are warp-level: a warp owns 16 output rows and n-tiles of 8 columns in
// the m16n8k16 accumulator layout (ptx.cuh: row g + 8 * (i >> 1), column 2t + (i & 1)).
// bf16/fp16 inputs run them on tensor cores (fragments built from the fp32 tiles, rounded to the
// input type, fp32 sums); fp32 inputs compute the same accumulator elements with fp32 FMAs.
//
// Gates: G(i) is the cumulative log decay from the chunk start through row i (per key dim for
// vector gates), so every factor formed is exp of a non-positive number, as on the CPU.
#pragma once
#include <type_traits>

#include "attention/cuda/tc_common.cuh"  // mma / pack2 / allow_smem / kMaxSmem
#include "common/cuda_utils.cuh"
#include "linear_attn/linear_attn.h"

namespace kernkit {
namespace la_cuda {

using cuda::load_f;
using cuda::store_cast;

constexpr int kMaxChunk = 64;   // chunk rows on CUDA (larger chunk_size values run as 64)
constexpr int kBlk = 64;        // columns of a K or V block
constexpr int kLd = kBlk + 4;   // row stride of an fp32 tile (floats)
constexpr int kTile = kMaxChunk * kLd;  // floats of one C x 64 (or 64 x 64) tile

// One sequence of a (possibly packed) batch.
struct Seq {
  int b;         // batch index addressing the tensors
  long long row0;  // first row in that batch entry
  int len;
  long long chunk0;  // index of its first chunk in the per-chunk state scratch
};

__device__ __forceinline__ Seq seq_of(const LaParams& p, int n) {
  if (p.cu_seqlens) {
    const int a = p.cu_seqlens[n], e = p.cu_seqlens[n + 1];
    return {0, a, e - a, p.chunk_off[n]};
  }
  return {n, 0, p.T, (long long)n * p.max_chunks};
}

__device__ __forceinline__ int chunks_of(const Seq& s, int C) { return (s.len + C - 1) / C; }

// The (chunk, head) a block of a per-chunk kernel works on: blockIdx.x = chunk * H + head over all
// chunks of all sequences (no empty blocks for packed sequences of unequal lengths).
struct ChunkRef {
  Seq s;
  int c, h;
};

__device__ __forceinline__ ChunkRef chunk_of_block(const LaParams& p) {
  const long long u = blockIdx.x, id = u / p.H;
  const int n = p.cu_seqlens ? p.chunk_seq[id] : int(id / p.max_chunks);
  const Seq s = seq_of(p, n);
  return {s, int(id - s.chunk0), int(u % p.H)};
}

// Element offset of (sequence row r, head h) in a contiguous (B, T, H, X) tensor, in rows of X.
__device__ __forceinline__ long long out_row(const LaParams& p, const Seq& s, long long r, int h) {
  return ((long long)s.b * p.T + s.row0 + r) * p.H + h;
}

// dst[i][c] = src row (t0 + i), column (c0 + c) as fp32 for i < n, c < width - c0; zeros elsewhere
// in the C x kBlk tile. `row_stride` in elements.
template <typename T>
__device__ __forceinline__ void stage_rows(float* dst, const T* base, long long row_stride, int n, int C, int c0,
                                           int width) {
  for (int e = threadIdx.x; e < C * kBlk; e += blockDim.x) {
    const int i = e / kBlk, c = e % kBlk;
    dst[i * kLd + c] = (i < n && c0 + c < width) ? load_f(base + i * row_stride + c0 + c) : 0.f;
  }
}

// Rows [t0, t0 + n) of a LaTensor at head h, columns c0..c0 + 64.
template <typename T>
__device__ __forceinline__ void stage_input(float* dst, const LaTensor& t, const Seq& s, long long t0, int n, int h,
                                            int C, int c0, int width) {
  const T* base = static_cast<const T*>(t.ptr) + s.b * t.bs + (s.row0 + t0) * t.ts + h * t.hs;
  stage_rows(dst, base, t.ts, n, C, c0, width);
}

// The 64 x 64 block (rows k0.., columns v0..) of a (K, V) fp32 state; zeros outside.
__device__ __forceinline__ void stage_state(float* dst, const float* S, int K, int V, int k0, int v0) {
  for (int e = threadIdx.x; e < kBlk * kBlk; e += blockDim.x) {
    const int r = e / kBlk, c = e % kBlk;
    dst[r * kLd + c] = (k0 + r < K && v0 + c < V) ? S[(long long)(k0 + r) * V + v0 + c] : 0.f;
  }
}

// Cumulative gates of a chunk into Gs ([C][kLd]): vector gates G[i][c] for key dims k0 + c (zero
// past K); scalar and per-head gates in column 0. Rows >= n repeat row n - 1 (so padded rows stay
// finite and non-positive relative to valid ones). Nothing for ungated problems. The raw gates load
// in parallel, then one thread per column sums down the rows in shared memory (a barrier inside:
// call from uniform control flow).
__device__ __forceinline__ void stage_gates(float* Gs, const LaParams& p, const Seq& s, long long t0, int n, int h,
                                            int C, int k0) {
  if (p.gate == LaGate::none) return;
  const float* g = static_cast<const float*>(p.g);
  const bool vec = p.gate == LaGate::vector;
  const int cols = vec ? kBlk : 1;
  for (int e = threadIdx.x; e < C * cols; e += blockDim.x) {
    const int i = e / cols, c = e % cols;
    Gs[i * kLd + c] = (i < n && (!vec || k0 + c < p.K))
                          ? g[s.b * p.gbs + (s.row0 + t0 + i) * p.gts + h * p.ghs + (vec ? k0 + c : 0)]
                          : 0.f;
  }
  __syncthreads();
  for (int c = threadIdx.x; c < cols; c += blockDim.x) {
    float acc = 0.f;
    for (int i = 0; i < C; ++i) {
      if (i < n) acc += Gs[i * kLd + c];
      Gs[i * kLd + c] = acc;
    }
  }
}

// G(i, c) from a staged gate tile (0 for ungated problems).
struct Gates {
  const float* Gs;
  LaGate gate;
  __device__ __forceinline__ float operator()(int i, int c) const {
    return gate == LaGate::none ? 0.f : Gs[i * kLd + (gate == LaGate::vector ? c : 0)];
  }
};

// x rounded to T and back.
template <typename T>
__device__ __forceinline__ float rounded(float x) {
  const T r = store_cast<T>(x);
  return load_f(&r);
}

// A warp's 16 x (8 * NT) accumulator tile += sum over k < nk of fa(r, k) * fb(k, c), for the
// n-tiles [nt0, nt1) (warp-uniform bounds; nk a multiple of 16). r is the row within the warp's
// 16, c the accumulator column (8 * nt + column in the n-tile). T = float: fp32 FMAs in k order;
// else m16n8k16 in T. SplitA / SplitB (tensor cores): that operand's values as a rounded part plus
// the rounded rest: ~16 mantissa bits for an fp32 operand (two products; three when both split,
// lo x lo dropped).
template <typename T, int NT, bool SplitA = false, bool SplitB = false, typename FA, typename FB>
__device__ __forceinline__ void warp_gemm(float (&acc)[NT][4], int nk, int nt0, int nt1, FA fa, FB fb) {
  if (nt0 >= nt1) return;
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  if constexpr (std::is_same<T, float>::value) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt) {
      if (nt < nt0 || nt >= nt1) continue;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int r = g + 8 * (e >> 1), c = 8 * nt + 2 * t + (e & 1);
        float s = acc[nt][e];
        for (int k = 0; k < nk; ++k) s = fmaf(fa(r, k), fb(k, c), s);
        acc[nt][e] = s;
      }
    }
  } else {
    using attn::tc::pack2;
    for (int k0 = 0; k0 < nk; k0 += 16) {
      const int ka = k0 + 2 * t;
      const float x[8] = {fa(g, ka), fa(g, ka + 1), fa(g + 8, ka), fa(g + 8, ka + 1),
                          fa(g, ka + 8), fa(g, ka + 9), fa(g + 8, ka + 8), fa(g + 8, ka + 9)};
      uint32_t a[4], lo[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        a[i] = pack2<T>(x[2 * i], x[2 * i + 1]);
        if constexpr (SplitA)
          lo[i] = pack2<T>(x[2 * i] - rounded<T>(x[2 * i]), x[2 * i + 1] - rounded<T>(x[2 * i + 1]));
      }
#pragma unroll
      for (int nt = 0; nt < NT; ++nt) {
        if (nt < nt0 || nt >= nt1) continue;
        const int c = 8 * nt + g;
        const float y[4] = {fb(ka, c), fb(ka + 1, c), fb(ka + 8, c), fb(ka + 9, c)};
        const uint32_t b[2] = {pack2<T>(y[0], y[1]), pack2<T>(y[2], y[3])};
        attn::tc::mma<T>(acc[nt], a, b);
        if constexpr (SplitA) attn::tc::mma<T>(acc[nt], lo, b);
        if constexpr (SplitB) {
          const uint32_t blo[2] = {pack2<T>(y[0] - rounded<T>(y[0]), y[1] - rounded<T>(y[1])),
                                   pack2<T>(y[2] - rounded<T>(y[2]), y[3] - rounded<T>(y[3]))};
          attn::tc::mma<T>(acc[nt], a, blo);
        }
      }
    }
  }
}

// Products with an fp32 state (or state gradient) as fb: fp16 cannot hold a long sequence's state
// (it overflows at 65504), so fp16 inputs run these in bf16 with both operands split (fp32 range,
// better than fp16 rounding); bf16 rounds the state once as fla does; fp32 stays fp32.
template <typename T, int NT, typename FA, typename FB>
__device__ __forceinline__ void state_gemm(float (&acc)[NT][4], int nk, FA fa, FB fb) {
  if constexpr (std::is_same<T, __half>::value) warp_gemm<__nv_bfloat16, NT, true, true>(acc, nk, 0, NT, fa, fb);
  else warp_gemm<T, NT>(acc, nk, 0, NT, fa, fb);
}

// Calls f(nt, e, r, c) for each accumulator element of the warp (r: row within its 16 rows).
template <int NT, typename F>
__device__ __forceinline__ void for_each_acc(F f) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) f(nt, e, g + 8 * (e >> 1), 8 * nt + 2 * t + (e & 1));
}

template <int NT>
__device__ __forceinline__ void zero(float (&acc)[NT][4]) {
#pragma unroll
  for (int nt = 0; nt < NT; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
}

// Chunk size, (sequence, head) count and scratch checks of the CUDA entry points.
void check_cuda_problem(const LaParams& p, const char* fn);

// A contiguous (B, T, H, X) tensor as a LaTensor (dO, outputs).
inline LaTensor contiguous_bthx(const void* ptr, const LaParams& p, int X) {
  return LaTensor{ptr, (long long)p.T * p.H * X, (long long)p.H * X, X};
}

// Launchers of chunk_fwd.cu that the backward reuses (stream-ordered).
// The chunk-state recurrence: forward (x = k, y = v: the state entering each chunk) or reverse
// (x = q, y = dO: the gradient of the state leaving each chunk), from `init` (null: zeros) into
// `states` ((chunks, H, K, V) fp32), and the state after the walk into `final_out` (or null).
template <typename T>
void launch_states(const LaParams& p, const LaTensor& x, const LaTensor& y, const float* init, float* states,
                   float* final_out, bool reverse, cudaStream_t s);
// out[i] = f(row i) . M  +  sum_j A_ij y_j per chunk: the forward output (rows = q, cols = k,
// y = v, M = states) or dV (rows = k, cols = q, y = dO, M = state gradients, A transposed).
template <typename T>
void launch_out(const LaParams& p, const LaTensor& rows, const LaTensor& cols, const LaTensor& y,
                const float* states, void* out, bool dv, cudaStream_t s);

}  // namespace la_cuda
}  // namespace kernkit
