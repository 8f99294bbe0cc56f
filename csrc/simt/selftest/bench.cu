// Kernels that measure what simt costs (python -m benchmarks --only simt) and a FlashAttention-2
// style block that exercises every tensor-core wrapper the way an attention kernel does: cp.async
// tile loads, ldmatrix / ldmatrix.trans, mma m16n8k16 bf16, quad shuffles and an online softmax
// in exp2. Its output is checked against torch in kernkit.testing.simt_selftest().
// Compiled only into kernkit._simt.
#include <stdexcept>
#include <string>

#include "common/cuda_utils.cuh"
#include "common/ptx.cuh"
#include "simt/selftest/selftest.h"

namespace kernkit {
namespace simt_selftest {
namespace {

__global__ void barrier_loop(int n) {
  for (int i = 0; i < n; ++i) __syncthreads();
}

__global__ void shfl_loop(float* out, int n) {
  float v = float(threadIdx.x);
  for (int i = 0; i < n; ++i) v += __shfl_xor_sync(0xffffffffu, v, 1 + (i & 15));
  out[threadIdx.x] = v;
}

__global__ void mma_loop(float* out, int n) {
  uint32_t a[4] = {0x3f803f80u, 0x3f803f80u, 0x3f803f80u, 0x3f803f80u}, b[2] = {0x3f803f80u, 0x3f803f80u};
  float c[4] = {0.f, 0.f, 0.f, 0.f};
  for (int i = 0; i < n; ++i) ptx::mma_m16n8k16_bf16(c, a, b, c);
  out[threadIdx.x] = c[0] + c[1] + c[2] + c[3];
}

__global__ void ldmatrix_loop(uint32_t* out, int n) {
  KK_SHARED(__nv_bfloat16, tile, [32][8]);
  for (int c = 0; c < 8; ++c) tile[threadIdx.x][c] = __float2bfloat16_rn(float(threadIdx.x + c));
  __syncwarp();
  uint32_t acc = 0, r[4];
  for (int i = 0; i < n; ++i) {
    ptx::ldmatrix_x4(r, &tile[threadIdx.x][0]);
    acc += r[0] ^ r[1] ^ r[2] ^ r[3];
  }
  out[threadIdx.x] = acc;
}

__global__ void memory_loop(float* buf, int n) {
  volatile float* p = buf + threadIdx.x;  // every iteration really loads and stores
  for (int i = 0; i < n; ++i) p[0] = p[0] * 0.5f + 1.f;
}

// One block of FlashAttention-2's forward: 64 query rows (16 per warp), head dim 64, KV tiles of 64
// keys; O = softmax(Q K^T * scale) V with fp32 accumulators, written as fp32.
constexpr int kRows = 64, kDim = 64, kPad = 72;  // padded smem rows (144 B: 16-byte aligned)

__device__ __forceinline__ void load_tile(__nv_bfloat16 (*dst)[kPad], const __nv_bfloat16* src) {
  for (int c = threadIdx.x; c < kRows * kDim / 8; c += blockDim.x) {  // 16-byte chunks
    const int r = c / (kDim / 8), col = (c % (kDim / 8)) * 8;
    ptx::cp_async_cg<16>(&dst[r][col], src + r * kDim + col);
  }
}

__global__ void __launch_bounds__(128) attention_block(const __nv_bfloat16* q, const __nv_bfloat16* k,
                                                       const __nv_bfloat16* v, float* o, int n_tiles,
                                                       float scale_log2) {
  KK_SHARED(__nv_bfloat16, sq, [kRows][kPad]);
  KK_SHARED(__nv_bfloat16, sk, [kRows][kPad]);
  KK_SHARED(__nv_bfloat16, sv, [kRows][kPad]);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  load_tile(sq, q);
  ptx::cp_async_commit();
  uint32_t qa[4][4];  // A fragments of this warp's 16 rows, 4 k-steps of 16
  float acc[8][4] = {};  // O: 8 n-tiles of 8 dims
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.f, 0.f};  // rows g and g + 8
  for (int tile = 0; tile < n_tiles; ++tile) {
    load_tile(sk, k + tile * kRows * kDim);
    load_tile(sv, v + tile * kRows * kDim);
    ptx::cp_async_commit();
    ptx::cp_async_wait<0>();
    __syncthreads();
    if (tile == 0)
      for (int s = 0; s < 4; ++s) ptx::ldmatrix_x4(qa[s], &sq[warp * 16 + lane % 16][s * 16 + (lane / 16) * 8]);
    float sc[8][4];  // S = Q K^T: 8 n-tiles of 8 keys
    for (int j = 0; j < 8; ++j) {
      sc[j][0] = sc[j][1] = sc[j][2] = sc[j][3] = 0.f;
      for (int s = 0; s < 4; ++s) {
        uint32_t kb[2];
        ptx::ldmatrix_x2(kb, &sk[j * 8 + lane % 8][s * 16 + ((lane / 8) % 2) * 8]);
        ptx::mma_m16n8k16_bf16(sc[j], qa[s], kb, sc[j]);
      }
    }
    // online softmax in base 2, per row (g, g + 8); a row's 4 values sit in the lanes of a quad
    for (int h = 0; h < 2; ++h) {
      float mx = m[h];
      for (int j = 0; j < 8; ++j) mx = fmaxf(mx, fmaxf(sc[j][2 * h], sc[j][2 * h + 1]) * scale_log2);
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
      mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
      const float corr = ptx::ex2_approx(m[h] - mx);
      m[h] = mx;
      l[h] *= corr;
      for (int n = 0; n < 8; ++n) { acc[n][2 * h] *= corr; acc[n][2 * h + 1] *= corr; }
      for (int j = 0; j < 8; ++j)
        for (int e = 2 * h; e < 2 * h + 2; ++e) {
          sc[j][e] = ptx::ex2_approx(sc[j][e] * scale_log2 - mx);
          l[h] += sc[j][e];
        }
    }
    // O += P V: P from the score registers (bf16), V through ldmatrix.trans
    for (int s = 0; s < 4; ++s) {
      const uint32_t pa[4] = {ptx::pack_bf16x2(sc[2 * s][0], sc[2 * s][1]), ptx::pack_bf16x2(sc[2 * s][2], sc[2 * s][3]),
                              ptx::pack_bf16x2(sc[2 * s + 1][0], sc[2 * s + 1][1]),
                              ptx::pack_bf16x2(sc[2 * s + 1][2], sc[2 * s + 1][3])};
      for (int n = 0; n < 8; ++n) {
        uint32_t vb[2];
        ptx::ldmatrix_x2_trans(vb, &sv[s * 16 + lane % 16][n * 8]);
        ptx::mma_m16n8k16_bf16(acc[n], pa, vb, acc[n]);
      }
    }
    __syncthreads();  // every warp is done with sk / sv before the next tile lands there
  }
  for (int h = 0; h < 2; ++h) {
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 1);
    l[h] += __shfl_xor_sync(0xffffffffu, l[h], 2);
  }
  for (int n = 0; n < 8; ++n)
    for (int e = 0; e < 4; ++e) {
      const int row = warp * 16 + g + (e / 2) * 8, col = n * 8 + 2 * t + (e % 2);
      o[row * kDim + col] = acc[n][e] / l[e / 2];
    }
}

}  // namespace

void run_bench(const std::string& kind, int n, int threads, void* buf) {
  if (kind == "barrier") KK_LAUNCH(1, threads, 0, nullptr, barrier_loop)(n);
  else if (kind == "shfl") KK_LAUNCH(1, 32, 0, nullptr, shfl_loop)(static_cast<float*>(buf), n);
  else if (kind == "mma") KK_LAUNCH(1, 32, 0, nullptr, mma_loop)(static_cast<float*>(buf), n);
  else if (kind == "ldmatrix") KK_LAUNCH(1, 32, 0, nullptr, ldmatrix_loop)(static_cast<uint32_t*>(buf), n);
  else if (kind == "memory") KK_LAUNCH(1, threads, 0, nullptr, memory_loop)(static_cast<float*>(buf), n);
  else throw std::invalid_argument("run_bench: unknown kind " + kind);
}

void run_attention_block(const void* q, const void* k, const void* v, float* o, int n_tiles, float scale) {
  KK_LAUNCH(1, 128, 0, nullptr, attention_block)(static_cast<const __nv_bfloat16*>(q),
                                                 static_cast<const __nv_bfloat16*>(k),
                                                 static_cast<const __nv_bfloat16*>(v), o, n_tiles,
                                                 scale * 1.4426950408889634f);
}

}  // namespace simt_selftest
}  // namespace kernkit
