// Ternary (BitNet b1.58) and binary weight matmuls on CUDA, same packed formats as the CPU kernels
// (lowbit.h) and the same results bit for bit on the integer paths:
//  - act_quant_kernel: per-token int8 quantisation (s = 127 / max|x|, round half to even), x_q
//    zero-padded to Kp, sum of x_q, into the caller's scratch (LowbitWork).
//  - ternary_gemv_kernel (M <= kGemvMaxRows, decode): one warp per output feature streams its packed
//    row once in 16-byte loads; a 32-bit word of codes at shift 2i holds 4 consecutive weights, so
//    codes expand with one shift and mask and feed __dp4a against 4 consecutive int8 activations.
//    Codes are w + 1 (unsigned): the row's dot is corrected by -sum(x_q), as on the CPU.
//  - ternary_mma_kernel (prefill): 64x64 output tiles, 4 warps of 32x32, int8 tensor cores
//    (mma m16n8k32 s8 -> s32); x_q tiles arrive by cp.async, the weights' 2-bit codes are expanded
//    to signed int8 in registers and stored to shared memory; two stages, one barrier per 128-deep
//    step.
//  - float activations (ternary act_bits=None, binary without binarize_input): float_gemv_kernel,
//    one warp per output feature, fp32 sums; bf16/fp16 x with more rows: float_mma_kernel, weights
//    expanded to x's dtype in shared tiles feeding mma m16n8k16 (fp32 sums).
//  - binary XNOR: binarize_kernel (sign bits, beta = mean|x| summed in fp64), then xnor_kernel
//    (one warp per output feature, __popc of x xor w).
//  - quantisers: ternary_quantize (fp64 |w| row sums in a fixed order, scale, round, pack), the
//    dense dequantised weight and x_q / s (BitLinear's straight-through backward operands).
// The rescale y = float(dot) / s * scale + bias uses _rn intrinsics: nvcc would otherwise contract
// the multiply and add into an FMA and the results would differ from the CPU and the reference.
#include <type_traits>

#include "common/cuda_utils.cuh"
#include "common/ptx.cuh"
#include "lowbit/lowbit.h"

namespace kernkit {
namespace {

using cuda::load_f;
using cuda::store_cast;

constexpr int kRowThreads = 256;   // act_quant / binarize / quantiser row kernels
constexpr int kWarpsPerBlock = 8;  // GEMV-style kernels: one warp per output feature
constexpr int kGemvMaxRows = 16;   // ternary int8: up to this many activation rows stream the weights
constexpr int kTileM = 64, kTileN = 64, kTileK = 128, kMmaThreads = 128;
constexpr int kSmemRow = kTileK + 16;  // bytes per shared row: conflict-free 32-bit fragment loads

// Block-wide reduction (blockDim.x a multiple of 32, at most 1024): every thread gets the result.
// Fixed order for a given block size, so float and double sums are deterministic.
template <typename T, bool Max>
__device__ __forceinline__ T block_reduce(T v) {
  KK_SHARED(T, part, [32]);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = blockDim.x >> 5;
  v = Max ? cuda::warp_max(v) : cuda::warp_sum(v);
  if (lane == 0) part[warp] = v;
  __syncthreads();
  v = lane < warps ? part[lane] : T(0);
  v = Max ? cuda::warp_max(v) : cuda::warp_sum(v);
  __syncthreads();  // part may be reused by the next reduction
  return v;
}

// y[m][n] = v (+ bias[n]) in y's dtype; v already rescaled. The add is an explicit fp32 add.
template <typename T>
__device__ __forceinline__ void store_out(const LowbitParams& p, long long m, long long n, float v) {
  if (p.bias) v = __fadd_rn(v, p.bias[n]);
  static_cast<T*>(p.y)[m * p.N + n] = store_cast<T>(v);
}

__device__ __forceinline__ float weight_scale(const LowbitParams& p, long long n) {
  return p.scale[p.per_row_scale ? n : 0];
}

// float(dot) / s * scale, in that order, as the CPU kernel and the reference
__device__ __forceinline__ float rescale(long long dot, float s, float sw) {
  return __fmul_rn(__fdiv_rn(float(dot), s), sw);
}

// ------------------------------------------------------------------------------- int8 activations

// x_q = clamp(round(x * s), -128, 127) with s = 127 / max(max|x|, 1e-5), one block per row
template <typename T>
__device__ __forceinline__ float row_act_scale(const T* x, long long K) {
  float amax = 0.f;
  for (long long k = threadIdx.x; k < K; k += blockDim.x) amax = fmaxf(amax, fabsf(load_f(x + k)));
  amax = block_reduce<float, true>(amax);
  return __fdiv_rn(127.f, fmaxf(amax, 1e-5f));
}

__device__ __forceinline__ int quant_act(float x, float s) {
  return int(fminf(127.f, fmaxf(-128.f, rintf(__fmul_rn(x, s)))));
}

template <typename T>
__global__ void act_quant_kernel(LowbitParams p, LowbitWork w) {
  const long long m = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + m * p.x_rs;
  const float s = row_act_scale(x, p.K);
  int8_t* q = w.xq + m * p.Kp;
  int sum = 0;
  for (long long k = threadIdx.x; k < p.Kp; k += blockDim.x) {
    const int v = k < p.K ? quant_act(load_f(x + k), s) : 0;
    q[k] = int8_t(v);
    sum += v;
  }
  sum = block_reduce<int, false>(sum);
  if (threadIdx.x == 0) {
    w.s[m] = s;
    w.xsum[m] = sum;
  }
}

// One warp per output feature n, MB activation rows at a time. A lane's 16 packed bytes are half of a
// 128-weight block (bytes 16h..16h+15): word c at shift 2i holds weights 32i + 16h + 4c + 0..3.
template <typename T, int MB>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) ternary_gemv_kernel(LowbitParams p, LowbitWork w) {
  const int lane = threadIdx.x & 31;
  const long long n = (long long)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= p.N) return;  // whole warps leave; no block barrier below
  const uint4* wrow = reinterpret_cast<const uint4*>(p.packed + n * (p.Kp / 4));
  const long long chunks = p.Kp / 64;  // 16-byte chunks per row
  for (long long m0 = 0; m0 < p.M; m0 += MB) {
    int acc[MB];
#pragma unroll
    for (int a = 0; a < MB; ++a) acc[a] = 0;
    for (long long q = lane; q < chunks; q += 32) {
      const uint4 pk = __ldg(wrow + q);
      const uint32_t word[4] = {pk.x, pk.y, pk.z, pk.w};
      const long long k0 = (q >> 1) * 128 + 16 * (q & 1);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
#pragma unroll
        for (int a = 0; a < MB; ++a) {
          if (MB > 1 && m0 + a >= p.M) break;
          const uint4 xv = __ldg(reinterpret_cast<const uint4*>(w.xq + (m0 + a) * p.Kp + k0 + 32 * i));
          const int xw[4] = {int(xv.x), int(xv.y), int(xv.z), int(xv.w)};
#pragma unroll
          for (int c = 0; c < 4; ++c) acc[a] = __dp4a(int((word[c] >> (2 * i)) & 0x03030303u), xw[c], acc[a]);
        }
      }
    }
#pragma unroll
    for (int a = 0; a < MB; ++a) {
      const long long dot = cuda::warp_sum((long long)acc[a]);  // lane partials fit int32; the row may not
      const long long m = m0 + a;
      if (lane == 0 && m < p.M) store_out<T>(p, m, n, rescale(dot - w.xsum[m], w.s[m], weight_scale(p, n)));
    }
  }
}

// Signed int8 weights (code - 1) of 4 packed bytes at shift 2i: per byte (c | 0x80) - 1, then the
// top bit flipped back, so no borrow crosses bytes.
__device__ __forceinline__ uint32_t signed_codes(uint32_t word, int i) {
  return (((word >> (2 * i)) & 0x03030303u) | 0x80808080u) - 0x01010101u ^ 0x80808080u;
}

// The two tensor-core kernels' shared warp tile: a warp owns 32 x 32 outputs as 2 x 4 mma tiles of
// 16 x 8. Both mma shapes (m16n8k32 s8, m16n8k16 16-bit) take 32 bytes of k per step with the same
// byte layout of fragments, so one loader serves both: A rows wm + 16a + g (+8), bytes 4t + 16(r >> 1);
// B rows wn + 8b + g, bytes 4t + 16r; shared rows are row_bytes apart.
template <typename Acc>
__device__ __forceinline__ void zero_tile(Acc (&acc)[2][4][4]) {
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[a][b][i] = Acc(0);
}

__device__ __forceinline__ void load_fragments(const char* a_base, const char* b_base, int row_bytes, int kbyte,
                                               int wm, int wn, int g, int t, uint32_t (&af)[2][4],
                                               uint32_t (&bf)[4][2]) {
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int r = 0; r < 4; ++r)
      af[a][r] = *reinterpret_cast<const uint32_t*>(a_base + (wm + 16 * a + g + 8 * (r & 1)) * row_bytes + kbyte +
                                                    4 * t + 16 * (r >> 1));
#pragma unroll
  for (int b = 0; b < 4; ++b)
#pragma unroll
    for (int r = 0; r < 2; ++r)
      bf[b][r] = *reinterpret_cast<const uint32_t*>(b_base + (wn + 8 * b + g) * row_bytes + kbyte + 4 * t + 16 * r);
}

// out(m, n, acc) for every accumulator of the warp's tile inside the M x N output
template <typename Acc, typename Out>
__device__ __forceinline__ void store_tile(const LowbitParams& p, const Acc (&acc)[2][4][4], long long m0,
                                           long long n0, int wm, int wn, int g, int t, Out out) {
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 4; ++b)
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const long long m = m0 + wm + 16 * a + g + 8 * (i >> 1), n = n0 + wn + 8 * b + 2 * t + (i & 1);
        if (m < p.M && n < p.N) out(m, n, acc[a][b][i]);
      }
}

template <typename T>
__global__ void __launch_bounds__(kMmaThreads) ternary_mma_kernel(LowbitParams p, LowbitWork w) {
  KK_SHARED(uint4, sA, [2][kTileM * kSmemRow / 16]);
  KK_SHARED(uint4, sB, [2][kTileN * kSmemRow / 16]);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const long long m0 = (long long)blockIdx.y * kTileM, n0 = (long long)blockIdx.x * kTileN;
  const long long steps = p.Kp / kTileK, wbytes = p.Kp / 4;

  // x_q tile: 64 rows x 8 chunks of 16 bytes, 4 chunks per thread; rows past M read as zeros
  auto load_a = [&](int stage, long long kb) {
    char* base = reinterpret_cast<char*>(sA[stage]);
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const int c = tid + r * kMmaThreads, row = c >> 3, col = (c & 7) * 16;
      const bool ok = m0 + row < p.M;
      const int8_t* src = w.xq + (ok ? (m0 + row) * p.Kp + kb * kTileK + col : 0);
      ptx::cp_async_cg<16>(base + row * kSmemRow + col, src, ok ? 16 : 0);
    }
    ptx::cp_async_commit();
  };
  // weights: 64 rows x 32 packed bytes, 16 bytes per thread (rows past N: code 1, weight 0)
  const int b_row = tid >> 1, b_half = tid & 1;
  const bool b_ok = n0 + b_row < p.N;
  auto fetch_b = [&](long long kb) -> uint4 {
    if (!b_ok) return make_uint4(0x55555555u, 0x55555555u, 0x55555555u, 0x55555555u);
    return __ldg(reinterpret_cast<const uint4*>(p.packed + (n0 + b_row) * wbytes + kb * 32 + b_half * 16));
  };
  auto store_b = [&](int stage, uint4 pk) {
    char* row = reinterpret_cast<char*>(sB[stage]) + b_row * kSmemRow + b_half * 16;
#pragma unroll
    for (int i = 0; i < 4; ++i)
      *reinterpret_cast<uint4*>(row + 32 * i) = make_uint4(signed_codes(pk.x, i), signed_codes(pk.y, i),
                                                           signed_codes(pk.z, i), signed_codes(pk.w, i));
  };

  int acc[2][4][4];
  zero_tile(acc);

  load_a(0, 0);
  store_b(0, fetch_b(0));
  ptx::cp_async_wait<0>();
  __syncthreads();
  for (long long kb = 0; kb < steps; ++kb) {
    const int cur = int(kb & 1), nxt = cur ^ 1;
    const bool more = kb + 1 < steps;
    uint4 next_b = make_uint4(0, 0, 0, 0);
    if (more) {  // the other stage was last read before the previous step's barrier
      load_a(nxt, kb + 1);
      next_b = fetch_b(kb + 1);
    }
    const char* a_base = reinterpret_cast<const char*>(sA[cur]);
    const char* b_base = reinterpret_cast<const char*>(sB[cur]);
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 32) {  // 32 int8 = 32 bytes of k per mma
      uint32_t af[2][4], bf[4][2];
      load_fragments(a_base, b_base, kSmemRow, kk, wm, wn, g, t, af, bf);
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) ptx::mma_m16n8k32_s8(acc[a][b], af[a], bf[b], acc[a][b]);
    }
    if (more) store_b(nxt, next_b);
    ptx::cp_async_wait<0>();
    __syncthreads();
  }

  store_tile(p, acc, m0, n0, wm, wn, g, t, [&](long long m, long long n, int v) {
    store_out<T>(p, m, n, rescale(v, w.s[m], weight_scale(p, n)));
  });
}

// ------------------------------------------------------------------------------- float activations

// Weight k of a packed row as a float: ternary code - 1, or binary bit ? 1 : -1.
template <bool Binary>
__device__ __forceinline__ float weight_at(uint32_t word, int bit) {
  if (Binary) return ((word >> bit) & 1u) ? 1.f : -1.f;
  return float(int((word >> bit) & 3u) - 1);
}

// One warp per output feature n, 4 activation rows at a time; a lane takes 32-bit words of the packed
// row (ternary: bytes 4q..4q+3 of a block, weights 32i + 4(q % 8) + c; binary: weights 32q + bit).
template <typename T, bool Binary>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) float_gemv_kernel(LowbitParams p) {
  constexpr int MB = 4;
  const int lane = threadIdx.x & 31;
  const long long n = (long long)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= p.N) return;
  const uint32_t* wrow = reinterpret_cast<const uint32_t*>(p.packed + n * (p.Kp / (Binary ? 8 : 4)));
  const long long words = p.Kp / (Binary ? 32 : 16);
  const float sw = Binary ? p.scale[n] : weight_scale(p, n);
  for (long long m0 = 0; m0 < p.M; m0 += MB) {
    const int rows = int(p.M - m0 < MB ? p.M - m0 : MB);
    float acc[MB] = {0.f, 0.f, 0.f, 0.f};
    for (long long q = lane; q < words; q += 32) {
      const uint32_t word = __ldg(wrow + q);
#pragma unroll
      for (int e = 0; e < 32; e += Binary ? 1 : 2) {
        // ternary: e = 8c + 2i is the code's bit position (byte c, shift 2i)
        const long long k = Binary ? 32 * q + e : (q >> 3) * 128 + 32 * ((e & 7) >> 1) + 4 * (q & 7) + (e >> 3);
        if (k >= p.K) continue;
        const float wv = weight_at<Binary>(word, e);
        for (int a = 0; a < rows; ++a)
          acc[a] += wv * load_f(static_cast<const T*>(p.x) + (m0 + a) * p.x_rs + k);
      }
    }
    for (int a = 0; a < rows; ++a) {
      const float dot = cuda::warp_sum(acc[a]);
      if (lane == 0) store_out<T>(p, m0 + a, n, __fmul_rn(dot, sw));
    }
  }
}

// bf16 / fp16 activations with more than kGemvMaxRows rows: the weights expanded to x's dtype
// (-1, 0, 1 exactly) in 64 x 128 shared tiles feeding mma m16n8k16 with fp32 sums. 64 x 64 output
// tiles, 4 warps of 32 x 32; the next step's x (64 x 128) and packed weights are loaded into registers
// while the current one computes. x rows need no alignment (a 16-byte load where it is aligned and
// inside K, element loads at the edges).
constexpr int kHalfRow = kTileK + 8;  // 16-bit elements per shared row: conflict-free fragment loads

template <typename T> struct OneBits;
template <> struct OneBits<__half> { static constexpr uint32_t v = 0x3C00u; };
template <> struct OneBits<__nv_bfloat16> { static constexpr uint32_t v = 0x3F80u; };

// two weights as 16-bit values: ternary code (0, 1, 2) -> -1, 0, 1; binary bit (0, 1) -> -1, 1
template <typename T, bool Binary>
__device__ __forceinline__ uint32_t weight_bits(uint32_t c) {
  const uint32_t one = OneBits<T>::v;
  if (Binary) return c ? one : one | 0x8000u;
  return c == 1u ? 0u : (c == 2u ? one : one | 0x8000u);
}

template <typename T, bool Binary>
__global__ void __launch_bounds__(kMmaThreads) float_mma_kernel(LowbitParams p) {
  KK_SHARED(uint4, sA, [kTileM * kHalfRow / 8]);
  KK_SHARED(uint4, sB, [kTileN * kHalfRow / 8]);
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int g = lane >> 2, t = lane & 3, wm = (warp >> 1) * 32, wn = (warp & 1) * 32;
  const long long m0 = (long long)blockIdx.y * kTileM, n0 = (long long)blockIdx.x * kTileN;
  const long long steps = (p.Kp + kTileK - 1) / kTileK, wbytes = p.Kp / (Binary ? 8 : 4);
  const uint16_t* x = static_cast<const uint16_t*>(p.x);

  // x: 64 rows x 16 chunks of 8 elements, 8 chunks per thread; zeros past M and K
  uint4 a_reg[8];
  auto fetch_a = [&](long long kb) {
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int c = tid + r * kMmaThreads, row = c >> 4;
      const long long m = m0 + row, k = kb * kTileK + (c & 15) * 8;
      const uint16_t* src = x + m * p.x_rs + k;
      if (m < p.M && k + 8 <= p.K && (reinterpret_cast<uintptr_t>(src) & 15) == 0) {
        a_reg[r] = __ldg(reinterpret_cast<const uint4*>(src));
      } else {
        uint32_t h[4] = {0, 0, 0, 0};
        for (int e = 0; e < 8; ++e)
          if (m < p.M && k + e < p.K) h[e >> 1] |= uint32_t(src[e]) << (16 * (e & 1));
        a_reg[r] = make_uint4(h[0], h[1], h[2], h[3]);
      }
    }
  };
  auto store_a = [&]() {
#pragma unroll
    for (int r = 0; r < 8; ++r) {
      const int c = tid + r * kMmaThreads;
      sA[((c >> 4) * kHalfRow + (c & 15) * 8) / 8] = a_reg[r];
    }
  };
  // weights: thread (row, half) holds 16 ternary bytes (half of a block: weights 32i + 16 half + 0..15)
  // or 8 binary bytes (weights 64 half + 0..63); rows past N and bytes past the row are not read
  const int b_row = tid >> 1, b_half = tid & 1;
  const bool b_ok = n0 + b_row < p.N;
  uint4 b_reg;
  auto fetch_b = [&](long long kb) {
    b_reg = make_uint4(0, 0, 0, 0);
    if (!b_ok) return;
    const uint8_t* row = p.packed + (n0 + b_row) * wbytes;
    if (Binary) {
      const long long off = kb * 16 + b_half * 8;
      if (off < wbytes) {
        const uint2 v = __ldg(reinterpret_cast<const uint2*>(row + off));
        b_reg.x = v.x;
        b_reg.y = v.y;
      }
    } else {
      b_reg = __ldg(reinterpret_cast<const uint4*>(row + kb * 32 + b_half * 16));
    }
  };
  auto store_b = [&]() {
    uint32_t* row = reinterpret_cast<uint32_t*>(sB) + (b_row * kHalfRow) / 2;
    const uint32_t w[4] = {b_reg.x, b_reg.y, b_reg.z, b_reg.w};
    if (Binary) {
#pragma unroll
      for (int e = 0; e < 64; e += 2) {  // bit e of the 64 is weight 64 half + e
        const uint32_t word = w[e >> 5];
        row[(64 * b_half + e) / 2] = weight_bits<T, true>((word >> (e & 31)) & 1u) |
                                     weight_bits<T, true>((word >> ((e & 31) + 1)) & 1u) << 16;
      }
    } else {
#pragma unroll
      for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int c = 0; c < 16; c += 2) {  // byte c of the 16 at shift 2i is weight 32i + 16 half + c
          const uint32_t lo = (w[c >> 2] >> (8 * (c & 3) + 2 * i)) & 3u, hi = (w[c >> 2] >> (8 * (c & 3) + 8 + 2 * i)) & 3u;
          row[(32 * i + 16 * b_half + c) / 2] = weight_bits<T, false>(lo) | weight_bits<T, false>(hi) << 16;
        }
    }
  };

  float acc[2][4][4];
  zero_tile(acc);

  fetch_a(0);
  fetch_b(0);
  for (long long kb = 0; kb < steps; ++kb) {
    store_a();
    store_b();
    __syncthreads();
    if (kb + 1 < steps) {  // in flight while the tensor cores work
      fetch_a(kb + 1);
      fetch_b(kb + 1);
    }
    const char* a_base = reinterpret_cast<const char*>(sA);
    const char* b_base = reinterpret_cast<const char*>(sB);
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 16) {  // 16 elements = 32 bytes of k per mma
      uint32_t af[2][4], bf[4][2];
      load_fragments(a_base, b_base, 2 * kHalfRow, 2 * kk, wm, wn, g, t, af, bf);
#pragma unroll
      for (int a = 0; a < 2; ++a)
#pragma unroll
        for (int b = 0; b < 4; ++b) {
          if constexpr (std::is_same_v<T, __nv_bfloat16>) ptx::mma_m16n8k16_bf16(acc[a][b], af[a], bf[b], acc[a][b]);
          else ptx::mma_m16n8k16_f16(acc[a][b], af[a], bf[b], acc[a][b]);
        }
    }
    __syncthreads();  // the tiles are rewritten next step
  }

  store_tile(p, acc, m0, n0, wm, wn, g, t, [&](long long m, long long n, float v) {
    store_out<T>(p, m, n, __fmul_rn(v, Binary ? p.scale[n] : weight_scale(p, n)));
  });
}

// ------------------------------------------------------------------------------- binary XNOR

// Sign bits of row m (bit k of word k / 32 set where x >= 0; padding 0, like the packed weights) and
// beta = mean|x| summed in fp64.
template <typename T>
__global__ void binarize_kernel(LowbitParams p, LowbitWork w) {
  const long long m = blockIdx.x, words = p.Kp / 32;
  const T* x = static_cast<const T*>(p.x) + m * p.x_rs;
  double s = 0;
  for (long long q = threadIdx.x; q < words; q += blockDim.x) {
    uint32_t bits = 0;
    for (int b = 0; b < 32; ++b) {
      const long long k = 32 * q + b;
      if (k >= p.K) break;
      const float v = load_f(x + k);
      s += fabs(double(v));
      bits |= uint32_t(v >= 0.f) << b;
    }
    w.xbits[m * words + q] = bits;
  }
  s = block_reduce<double, false>(s);
  if (threadIdx.x == 0) w.beta[m] = float(s / double(p.K));
}

// y = float(K - 2 popcount(x xor w)) * beta * alpha (+ bias): padding bits are 0 in both operands.
template <typename T>
__global__ void __launch_bounds__(kWarpsPerBlock * 32) xnor_kernel(LowbitParams p, LowbitWork w) {
  const int lane = threadIdx.x & 31;
  const long long n = (long long)blockIdx.x * kWarpsPerBlock + (threadIdx.x >> 5);
  if (n >= p.N) return;
  const long long words = p.Kp / 32;
  const uint32_t* wrow = reinterpret_cast<const uint32_t*>(p.packed + n * (p.Kp / 8));
  for (long long m = 0; m < p.M; ++m) {
    const uint32_t* xrow = w.xbits + m * words;
    int pc = 0;
    for (long long q = lane; q < words; q += 32) pc += __popc(__ldg(xrow + q) ^ __ldg(wrow + q));
    pc = cuda::warp_sum(pc);
    if (lane == 0) store_out<T>(p, m, n, __fmul_rn(__fmul_rn(float(p.K - 2 * (long long)pc), w.beta[m]), p.scale[n]));
  }
}

// ------------------------------------------------------------------------------- quantisers

template <typename T>
__global__ void abs_row_sum_kernel(TernaryQuantParams p) {
  const long long n = blockIdx.x;
  const T* row = static_cast<const T*>(p.w) + n * p.w_rs;
  double s = 0;
  bool bad = false;
  for (long long k = threadIdx.x; k < p.K; k += blockDim.x) {
    const float v = load_f(row + k);
    bad |= !(fabsf(v) <= 3.402823466e38f);  // NaN or inf
    s += fabs(double(v));
  }
  s = block_reduce<double, false>(s);
  const int any_bad = block_reduce<int, false>(bad ? 1 : 0);
  if (threadIdx.x == 0) {
    p.row_sums[n] = s;
    if (any_bad) *p.nonfinite = 1;
  }
}

// scale from the row sums, rows added in order (as the CPU kernel); one thread
__global__ void absmean_scale_kernel(TernaryQuantParams p) {
  if (threadIdx.x != 0) return;
  if (p.per_row) {
    for (long long n = 0; n < p.N; ++n) p.scale[n] = fmaxf(float(p.row_sums[n] / double(p.K)), 1e-5f);
    return;
  }
  double total = 0;
  for (long long n = 0; n < p.N; ++n) total += p.row_sums[n];
  p.scale[0] = fmaxf(float(total / (double(p.N) * double(p.K))), 1e-5f);
}

// one thread per packed byte: weights 32i + j of its block, clamp(round(w / scale), -1, 1) + 1
template <typename T>
__global__ void ternary_pack_kernel(TernaryQuantParams p) {
  const long long wbytes = p.Kp / 4;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.N * wbytes) return;
  const long long n = i / wbytes, byte = i % wbytes, k0 = (byte / 32) * 128 + byte % 32;
  const float sc = p.scale[p.per_row ? n : 0];
  const T* row = static_cast<const T*>(p.w) + n * p.w_rs;
  unsigned out = 0;
#pragma unroll
  for (int s = 0; s < 4; ++s) {
    const long long k = k0 + 32 * s;
    const float c = k < p.K ? fminf(1.f, fmaxf(-1.f, rintf(__fdiv_rn(load_f(row + k), sc)))) : 0.f;
    out |= unsigned(int(c) + 1) << (2 * s);
  }
  p.packed[i] = uint8_t(out);
}

__global__ void ternary_dequant_kernel(TernaryDequantParams p) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.N * p.K) return;
  const long long n = i / p.K, k = i % p.K;
  const uint8_t byte = p.packed[n * (p.Kp / 4) + (k / 128) * 32 + k % 32];
  p.out[i] = __fmul_rn(float(int((byte >> (2 * ((k % 128) / 32))) & 3) - 1), p.scale[p.per_row ? n : 0]);
}

template <typename T>
__global__ void act_quant_dequant_kernel(ActDequantParams p) {
  const long long m = blockIdx.x;
  const T* x = static_cast<const T*>(p.x) + m * p.x_rs;
  const float s = row_act_scale(x, p.K);
  for (long long k = threadIdx.x; k < p.K; k += blockDim.x)
    p.out[m * p.K + k] = __fdiv_rn(float(quant_act(load_f(x + k), s)), s);
}

// ------------------------------------------------------------------------------- launches

template <template <typename> class K, typename... A>
void by_dtype(DType dtype, const char* what, A&&... args) {
  switch (dtype) {
    case DType::f32: return K<float>::go(args...);
    case DType::f16: return K<__half>::go(args...);
    case DType::bf16: return K<__nv_bfloat16>::go(args...);
    default: throw std::invalid_argument(std::string(what) + ": x must be float32, bfloat16 or float16");
  }
}

unsigned feature_blocks(long long N) { return cuda::blocks_for(N, kWarpsPerBlock); }
constexpr unsigned kGemvThreads = kWarpsPerBlock * 32;

template <typename T> struct TernaryInt8 {
  static void go(const LowbitParams& p, const LowbitWork& w, cudaStream_t s) {
    KK_LAUNCH(unsigned(p.M), kRowThreads, 0, s, act_quant_kernel<T>)(p, w);
    if (p.M == 1)
      KK_LAUNCH(feature_blocks(p.N), kGemvThreads, 0, s, ternary_gemv_kernel<T, 1>)(p, w);
    else if (p.M <= kGemvMaxRows)
      KK_LAUNCH(feature_blocks(p.N), kGemvThreads, 0, s, ternary_gemv_kernel<T, 4>)(p, w);
    else
      KK_LAUNCH(dim3(cuda::blocks_for(p.N, kTileN), cuda::blocks_for(p.M, kTileM)), kMmaThreads, 0, s,
                ternary_mma_kernel<T>)(p, w);
  }
};
// float activations: tensor cores for 16-bit x with more than kGemvMaxRows rows, else the GEMV
template <typename T, bool Binary>
void float_path(const LowbitParams& p, cudaStream_t s) {
  if constexpr (!std::is_same_v<T, float>) {
    if (p.M > kGemvMaxRows) {
      KK_LAUNCH(dim3(cuda::blocks_for(p.N, kTileN), cuda::blocks_for(p.M, kTileM)), kMmaThreads, 0, s,
                float_mma_kernel<T, Binary>)(p);
      return;
    }
  }
  KK_LAUNCH(feature_blocks(p.N), kGemvThreads, 0, s, float_gemv_kernel<T, Binary>)(p);
}
template <typename T> struct TernaryFloat {
  static void go(const LowbitParams& p, const LowbitWork&, cudaStream_t s) { float_path<T, false>(p, s); }
};
template <typename T> struct BinaryFloat {
  static void go(const LowbitParams& p, const LowbitWork&, cudaStream_t s) { float_path<T, true>(p, s); }
};
template <typename T> struct BinaryXnor {
  static void go(const LowbitParams& p, const LowbitWork& w, cudaStream_t s) {
    KK_LAUNCH(unsigned(p.M), kRowThreads, 0, s, binarize_kernel<T>)(p, w);
    KK_LAUNCH(feature_blocks(p.N), kGemvThreads, 0, s, xnor_kernel<T>)(p, w);
  }
};
template <typename T> struct Quantize {
  static void go(const TernaryQuantParams& p, cudaStream_t s) {
    KK_LAUNCH(unsigned(p.N), kRowThreads, 0, s, abs_row_sum_kernel<T>)(p);
    KK_LAUNCH(1, 32, 0, s, absmean_scale_kernel)(p);
    KK_LAUNCH(cuda::blocks_for(p.N * (p.Kp / 4), kRowThreads), kRowThreads, 0, s, ternary_pack_kernel<T>)(p);
  }
};
template <typename T> struct ActDequant {
  static void go(const ActDequantParams& p, cudaStream_t s) {
    KK_LAUNCH(unsigned(p.M), kRowThreads, 0, s, act_quant_dequant_kernel<T>)(p);
  }
};

}  // namespace

void ternary_linear_cuda(const LowbitParams& p, int device, intptr_t stream) {
  if (p.M == 0 || p.N == 0) return;
  cuda::DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const LowbitWork w = lowbit_work(p.work, p.M, p.Kp);
  if (p.act_bits == 8) by_dtype<TernaryInt8>(p.dtype, "ternary_linear", p, w, s);
  else by_dtype<TernaryFloat>(p.dtype, "ternary_linear", p, w, s);
  cuda::check(cudaGetLastError(), "ternary_linear launch");
}

void binary_linear_cuda(const LowbitParams& p, int device, intptr_t stream) {
  if (p.M == 0 || p.N == 0) return;
  cuda::DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const LowbitWork w = lowbit_work(p.work, p.M, p.Kp);
  if (p.binarize_input) by_dtype<BinaryXnor>(p.dtype, "binary_linear", p, w, s);
  else by_dtype<BinaryFloat>(p.dtype, "binary_linear", p, w, s);
  cuda::check(cudaGetLastError(), "binary_linear launch");
}

void ternary_quantize_cuda(const TernaryQuantParams& p, int device, intptr_t stream) {
  cuda::DeviceGuard guard(device);
  by_dtype<Quantize>(p.dtype, "ternary_quantize", p, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "ternary_quantize launch");
}

void ternary_dequant_cuda(const TernaryDequantParams& p, int device, intptr_t stream) {
  if (p.N == 0) return;
  cuda::DeviceGuard guard(device);
  KK_LAUNCH(cuda::blocks_for(p.N * p.K, kRowThreads), kRowThreads, 0, reinterpret_cast<cudaStream_t>(stream),
            ternary_dequant_kernel)(p);
  cuda::check(cudaGetLastError(), "ternary_dequant launch");
}

void act_quant_dequant_cuda(const ActDequantParams& p, int device, intptr_t stream) {
  if (p.M == 0) return;
  cuda::DeviceGuard guard(device);
  by_dtype<ActDequant>(p.dtype, "act_quant_dequant", p, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "act_quant_dequant launch");
}

}  // namespace kernkit
