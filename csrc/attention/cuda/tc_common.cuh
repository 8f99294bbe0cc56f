// Tensor-core building blocks of the bf16/fp16 attention kernels (forward and backward): shared
// tiles of rows x Dp 16-bit elements (row stride Dp + 8: conflict-free ldmatrix), their loads by
// cp.async, the two warp-level products the kernels are made of, and the epilogue that writes a
// warp's 16 rows with 16-byte stores. Every kernel runs 4 warps; a warp owns 16 rows of its tile.
//
// Fragment notation as ptx.cuh: g = lane >> 2, t = lane & 3; an accumulator c[i] of an 8-column
// n-tile holds row g + 8 * (i >> 1), column 2t + (i & 1).
#pragma once
#include <type_traits>

#include "attention/attention.h"
#include "common/cuda_utils.cuh"
#include "common/ptx.cuh"

namespace kernkit {
namespace attn {
namespace tc {

constexpr int kWarps = 4, kThreads = kWarps * 32;
constexpr size_t kMaxSmem = 101376;  // dynamic shared memory a block may opt into on sm_86 / sm_89 (99 KB)
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

template <int Dp>
constexpr int stride() { return Dp + 8; }

// A (batch, row, head) operand in 16-bit elements; 16-byte transfers only when every row is aligned.
struct Operand {
  const uint16_t* base;
  long long bs, rs, hs;
  bool aligned;
};

inline Operand operand(const AttnTensor& t, int d) {
  const bool al = (reinterpret_cast<uintptr_t>(t.ptr) & 15) == 0 && t.bs % 8 == 0 && t.rs % 8 == 0 &&
                  t.hs % 8 == 0 && d % 8 == 0;
  return Operand{static_cast<const uint16_t*>(t.ptr), t.bs, t.rs, t.hs, al};
}

// Rows [row0, row0 + R) of an operand at (b, h) into a shared R x Dp tile: columns >= d and rows
// >= valid are zero. cp.async where the rows are aligned, else plain loads; either way the data is
// there after the caller's cp_async_wait + barrier.
// (tid / nthreads: the threads sharing the load, by default the whole block)
template <int Dp, int R>
__device__ __forceinline__ void load_tile(uint16_t* dst, const Operand& src, long long b, long long row0, int h,
                                          int valid, int d, int tid = threadIdx.x, int nthreads = kThreads) {
  constexpr int kStride = stride<Dp>(), kChunks = Dp / 8;
  const uint16_t* base = src.base + b * src.bs + row0 * src.rs + h * src.hs;
  for (int c = tid; c < R * kChunks; c += nthreads) {
    const int r = c / kChunks, col = (c % kChunks) * 8;
    uint16_t* s = dst + r * kStride + col;
    const uint16_t* g = base + r * src.rs + col;
    const bool in = r < valid && col < d;
    if (src.aligned) {
      ptx::cp_async_cg<16>(s, in ? g : src.base, in ? 16 : 0);
    } else {
      unsigned long long lo = 0, hi = 0;  // (no indexed array: that would live in local memory)
      if (in)
        for (int e = 0; e < 8 && col + e < d; ++e) {
          const unsigned long long x = (unsigned long long)g[e] << (16 * (e & 3));
          if (e < 4) lo |= x;
          else hi |= x;
        }
      *reinterpret_cast<uint4*>(s) = make_uint4(uint32_t(lo), uint32_t(lo >> 32), uint32_t(hi), uint32_t(hi >> 32));
    }
  }
}

template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) ptx::mma_m16n8k16_bf16(d, a, b, d);
  else ptx::mma_m16n8k16_f16(d, a, b, d);
}

template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __nv_bfloat16>::value) return ptx::pack_bf16x2(lo, hi);
  else return ptx::pack_f16x2(lo, hi);
}

__device__ __forceinline__ float quad_max(float v) {
  v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
  return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
__device__ __forceinline__ float quad_sum(float v) {
  v += __shfl_xor_sync(0xffffffffu, v, 1);
  return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

// Turns one tile of base-2 scores s (masked: -inf) of this thread's two rows into probabilities.
// Softmax: online, relative to the running row max; row_sum and the output rows o are rescaled to
// the new max (a row that has seen nothing yet keeps max -inf and base 0, so no inf - inf).
// Sigmoid: 1 / (1 + 2^-(s + bias2[row])), no max, no sum (masked: 0).
template <int NT, int DT>
__device__ __forceinline__ void scores_to_probs(float (&s)[NT][4], bool softmax, const float (&bias2)[2],
                                                float (&row_max)[2], float (&row_sum)[2], float (&o)[DT][4]) {
  if (!softmax) {
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int e = 0; e < 4; ++e)  // (masked stays 0 even for an infinite bias)
        s[i][e] = s[i][e] == -INFINITY ? 0.f : 1.f / (1.f + ptx::ex2_approx(-(s[i][e] + bias2[e >> 1])));
    return;
  }
#pragma unroll
  for (int r = 0; r < 2; ++r) {
    float mx = row_max[r];
#pragma unroll
    for (int i = 0; i < NT; ++i) mx = fmaxf(mx, fmaxf(s[i][2 * r], s[i][2 * r + 1]));
    mx = quad_max(mx);
    const float base = mx == -INFINITY ? 0.f : mx;
    const float alpha = ptx::ex2_approx(row_max[r] - base);
    row_max[r] = mx;
    float sum = 0.f;
#pragma unroll
    for (int i = 0; i < NT; ++i)
#pragma unroll
      for (int e = 2 * r; e < 2 * r + 2; ++e) {
        s[i][e] = ptx::ex2_approx(s[i][e] - base);
        sum += s[i][e];
      }
    row_sum[r] = row_sum[r] * alpha + sum;
#pragma unroll
    for (int i = 0; i < DT; ++i) {
      o[i][2 * r] *= alpha;
      o[i][2 * r + 1] *= alpha;
    }
  }
}

template <int N>
__device__ __forceinline__ void zero(float (&acc)[N][4]) {
#pragma unroll
  for (int i = 0; i < N; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.f;
}

// A fragment of this warp's 16 rows at a_rows (shared, row stride S), k step kk (16 columns).
template <int S>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const uint16_t* a_rows, int kk) {
  const int lane = threadIdx.x & 31;
  ptx::ldmatrix_x4(a, a_rows + (lane & 15) * S + (lane >> 4) * 8 + kk * 16);
}

// acc (16 x 8N) += A (16 x 16) * B^T for one k step: B is 8N rows at b_rows (row = output column).
template <typename T, int N, int S>
__device__ __forceinline__ void mma_abt_step(float (&acc)[N][4], const uint32_t (&a)[4], const uint16_t* b_rows,
                                             int kk) {
  const int lane = threadIdx.x & 31;
  const uint16_t* b_lane = b_rows + ((lane >> 4) * 8 + (lane & 7)) * S + ((lane >> 3) & 1) * 8 + kk * 16;
#pragma unroll
  for (int np = 0; np < N / 2; ++np) {
    uint32_t kb[4];
    ptx::ldmatrix_x4(kb, b_lane + np * 16 * S);
    const uint32_t b0[2] = {kb[0], kb[1]}, b1[2] = {kb[2], kb[3]};
    mma<T>(acc[2 * np], a, b0);
    mma<T>(acc[2 * np + 1], a, b1);
  }
}

// acc (16 x 8N) += A B^T with A this warp's 16 rows at a_rows, B 8N rows at b_rows, both KS*16 wide
// in shared memory (row stride S); k steps at or past k_end hold zero padding and are skipped.
template <typename T, int N, int KS, int S>
__device__ __forceinline__ void mma_abt(float (&acc)[N][4], const uint16_t* a_rows, const uint16_t* b_rows,
                                        int k_end) {
#pragma unroll
  for (int kk = 0; kk < KS; ++kk) {
    if (kk * 16 >= k_end) break;
    uint32_t a[4];
    load_a<S>(a, a_rows, kk);
    mma_abt_step<T, N, S>(acc, a, b_rows, kk);
  }
}

// acc (16 x 8M) += P B, P (16 x 16KC) given as accumulator fragments p[2KC][4] (rounded to T),
// B 16KC rows at b_rows (row = k) by ldmatrix.trans; output n-tile pairs at or past n_end skipped.
template <typename T, int KC, int M, int S>
__device__ __forceinline__ void mma_pb(float (&acc)[M][4], const float (&p)[2 * KC][4], const uint16_t* b_rows,
                                       int n_end) {
  const int lane = threadIdx.x & 31;
  const uint16_t* b_lane = b_rows + (((lane >> 3) & 1) * 8 + (lane & 7)) * S + (lane >> 4) * 8;
#pragma unroll
  for (int kc = 0; kc < KC; ++kc) {
    const uint32_t pa[4] = {pack2<T>(p[2 * kc][0], p[2 * kc][1]), pack2<T>(p[2 * kc][2], p[2 * kc][3]),
                            pack2<T>(p[2 * kc + 1][0], p[2 * kc + 1][1]), pack2<T>(p[2 * kc + 1][2], p[2 * kc + 1][3])};
#pragma unroll
    for (int dp = 0; dp < M / 2; ++dp) {
      if (dp * 16 >= n_end) break;
      uint32_t vb[4];
      ptx::ldmatrix_x4_trans(vb, b_lane + kc * 16 * S + dp * 16);
      const uint32_t b0[2] = {vb[0], vb[1]}, b1[2] = {vb[2], vb[3]};
      mma<T>(acc[2 * dp], pa, b0);
      mma<T>(acc[2 * dp + 1], pa, b1);
    }
  }
}

// Writes this warp's 16 rows of acc, row r scaled by mul[r] (r = 0: row g, 1: row g + 8), as T to
// dst rows [0, limit) x columns [0, cols): rows >= valid are written as zeros. Staged in `stage`
// (this warp's own 16 shared rows, stride S; no other warp may use them) for 16-byte stores.
template <typename T, int DT, int S>
__device__ __forceinline__ void store_rows(const float (&acc)[DT][4], const float (&mul)[2], uint16_t* stage,
                                           uint16_t* dst, long long rs, int valid, int limit, int cols,
                                           bool aligned) {
  const int lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  __syncwarp();
#pragma unroll
  for (int i = 0; i < DT; ++i)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const bool in = g + 8 * r < valid;
      *reinterpret_cast<uint32_t*>(stage + (g + 8 * r) * S + i * 8 + 2 * t) =
          pack2<T>(in ? acc[i][2 * r] * mul[r] : 0.f, in ? acc[i][2 * r + 1] * mul[r] : 0.f);
    }
  __syncwarp();
  for (int c = lane; c < 16 * DT; c += 32) {
    const int r = c / DT, col = (c % DT) * 8;
    if (r >= limit || col >= cols) continue;
    const uint16_t* s = stage + r * S + col;
    uint16_t* d = dst + r * rs + col;
    if (aligned) *reinterpret_cast<uint4*>(d) = *reinterpret_cast<const uint4*>(s);
    else
      for (int e = 0; e < 8 && col + e < cols; ++e) d[e] = s[e];
  }
}

// ---------------------------------------------------------------------------------------- host

template <typename K>
void allow_smem(K kernel, size_t bytes) {
  cuda::check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
              "flash_attn dynamic shared memory");
}

// Grids are (tiles, heads, batch): y and z are limited to 65535.
inline void check_grid(const AttnShape& s) {
  if (s.B > 65535 || s.Hq > 65535)
    throw std::invalid_argument("flash_attn: the CUDA kernels take at most 65535 sequences and 65535 heads per call");
}

// A window bound beyond every (query, key) distance is unbounded: replacing it by -1 keeps the
// kernels' int arithmetic (i + off + right) from overflowing for huge bounds.
template <typename P>
P with_clamped_window(P p) {
  const long long reach = (long long)p.shape.Sk + p.shape.Sq + (p.shape.diag_shift < 0 ? -1LL : 1LL) * p.shape.diag_shift;
  if (p.mask.left > reach) p.mask.left = -1;
  if (p.mask.right > reach) p.mask.right = -1;
  return p;
}

// Calls f(std::integral_constant<int, Dp>) with the head-dim config (64, 128 or 256) that holds d.
template <typename F>
void with_head_dim_config(int d, F&& f) {
  if (d <= 64) f(std::integral_constant<int, 64>());
  else if (d <= 128) f(std::integral_constant<int, 128>());
  else f(std::integral_constant<int, 256>());
}

template <typename T>
struct TypeTag {
  using type = T;
};

// What the forward and backward entry points share: the head-dim limit and grid checks, the device,
// the clamped window, and the dispatch: tc(TypeTag<T>, integral_constant<Dp>, p, stream) for
// bf16/fp16, f32(p, stream) for fp32; then then(p, stream), still on the device.
template <typename P, typename Tc, typename F32, typename Then>
void run_entry(const P& params, int device, intptr_t stream, Tc&& tc, F32&& f32, Then&& then) {
  const AttnShape& s = params.shape;
  if (s.D > 256 || s.Dv > 256) throw std::invalid_argument("flash_attn: CUDA kernels take head dims up to 256");
  check_grid(s);
  cuda::DeviceGuard guard(device);
  cudaStream_t st = reinterpret_cast<cudaStream_t>(stream);
  const P p = with_clamped_window(params);
  const int dmax = s.D > s.Dv ? s.D : s.Dv;
  switch (p.dtype) {
    case DType::bf16: with_head_dim_config(dmax, [&](auto dp) { tc(TypeTag<__nv_bfloat16>(), dp, p, st); }); break;
    case DType::f16: with_head_dim_config(dmax, [&](auto dp) { tc(TypeTag<__half>(), dp, p, st); }); break;
    case DType::f32: f32(p, st); break;
    default: throw std::invalid_argument("flash_attn: the CUDA kernels take fp32, bf16 or fp16 (fp64 runs on the CPU)");
  }
  then(p, st);
}

}  // namespace tc
}  // namespace attn
}  // namespace kernkit
