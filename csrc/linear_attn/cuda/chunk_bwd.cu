// CUDA chunked linear attention, backward. Four launches, no atomics (reruns are bitwise equal):
//   1. states (chunk_fwd.cu): the state S entering each chunk, recomputed.
//   2. states in reverse with (Q scale exp(G), dO): dS, the gradient of the state leaving each
//      chunk, and dh0.
//   3. out (chunk_fwd.cu) with q and k swapped: dV = A^T dO + (K exp(G_end - G)) dS.
//   4. dqdk, a block per (chunk, sequence, head) looping over 64-column blocks of K:
//        dQ = dA_m K + scale exp(G) (dO S^T)          dA = scale dO V^T, causal (decayed: scalar gates)
//        dK = dA_m^T Q + exp(G_end - G) (V dS^T)
//      and the log-gate gradient in the CPU kernel's cancellation-free form (chunk_bwd.cpp):
//        dg_t = sum_{i>=t} (q_i.dq_i - k_i.dk_i^intra) + exp(G_end) <dS, S> + sum_{j<t} k_j.dk_j^inter
//      (per key dim for vector gates; scalar gates take the intra part as row minus column sums of
//      A * dA off the diagonal, where the diagonal cancels exactly).
#include "linear_attn/cuda/chunk_common.cuh"

namespace kernkit {
namespace la_cuda {
namespace {

constexpr int kThreads = 128;

struct DqdkArgs {
  LaBwdParams bp;
  LaTensor dout;
};

template <typename T>
__global__ void __launch_bounds__(kThreads) la_dqdk_kernel(DqdkArgs a) {
  KK_DYNAMIC_SHARED(float, smem);
  float* T0 = smem;               // dO, then Q, then (vector gates) q.dq - k.dk^intra
  float* T1 = smem + kTile;       // V, then K, then prefix sums
  float* T2 = smem + 2 * kTile;   // S block, then cumulative gates
  float* T3 = smem + 3 * kTile;   // dS block, then A * dA (scalar) or k.dk^inter (vector)
  float* dAs = smem + 4 * kTile;  // the chunk's masked dA
  float* rterm = dAs + kTile;     // scalar gates: per-row q.dq - k.dk^intra, k.dk^inter, base partials
  float* pre = rterm + kMaxChunk;
  float* base = pre + kMaxChunk;
  const LaBwdParams& bp = a.bp;
  const LaParams& p = bp.fwd;
  const ChunkRef ref = chunk_of_block(p);
  const Seq s = ref.s;
  const int c = ref.c, h = ref.h;
  const int C = p.chunk;
  if (c >= chunks_of(s, C)) return;
  const long long t0 = (long long)c * C;
  const int rows = min(C, int(s.len - t0));
  const int tid = threadIdx.x, w = tid >> 5, rb = 16 * w, lane = tid & 31;
  const bool active = rb < rows;
  const bool vec = p.gate == LaGate::vector, scalar = p.gate != LaGate::none && !vec, want_dg = bp.dg != nullptr;
  const float scale = float(p.scale);
  const Gates G{T2, p.gate};
  const long long KV = (long long)p.K * p.V, st_off = ((s.chunk0 + c) * p.H + h) * KV;
  const float* S0 = bp.fwd.states + st_off;
  const float* dS = bp.dstates + st_off;

  // dA = scale dO V^T (causal); scalar gates also need A = Q K^T for the gate gradient
  float P[8][4], A[8][4];
  zero(P);
  zero(A);
  for (int v0 = 0; v0 < p.V; v0 += kBlk) {
    if (v0) __syncthreads();
    stage_input<T>(T0, a.dout, s, t0, rows, h, C, v0, p.V);
    stage_input<T>(T1, p.v, s, t0, rows, h, C, v0, p.V);
    __syncthreads();
    if (active)
      warp_gemm<T, 8>(P, (min(kBlk, p.V - v0) + 15) & ~15, 0, 2 * w + 2,
                      [&](int r, int k) { return T0[(rb + r) * kLd + k]; },
                      [&](int k, int j) { return T1[j * kLd + k]; });
  }
  if (scalar && want_dg)
    for (int k0 = 0; k0 < p.K; k0 += kBlk) {
      __syncthreads();
      stage_input<T>(T0, p.q, s, t0, rows, h, C, k0, p.K);
      stage_input<T>(T1, p.k, s, t0, rows, h, C, k0, p.K);
      __syncthreads();
      if (active)
        warp_gemm<T, 8>(A, (min(kBlk, p.K - k0) + 15) & ~15, 0, 2 * w + 2,
                        [&](int r, int k) { return T0[(rb + r) * kLd + k]; },
                        [&](int k, int j) { return T1[j * kLd + k]; });
    }
  __syncthreads();
  stage_gates(T2, p, s, t0, rows, h, C, 0);  // scalar gates: column 0, the same for every key block
  __syncthreads();
  for_each_acc<8>([&](int nt, int e, int r, int j) {
    const int i = rb + r;
    const bool in = active && j <= i && i < rows;
    const float d = scalar && in ? expf(G(i, 0) - G(j, 0)) : 1.f;
    dAs[i * kLd + j] = in ? scale * P[nt][e] * d : 0.f;
    if (scalar && want_dg) T3[i * kLd + j] = (in && j < i) ? scale * A[nt][e] * d * P[nt][e] : 0.f;
  });
  __syncthreads();
  if (scalar && want_dg)
    for (int i = tid; i < C; i += blockDim.x) {
      float r = 0.f;
      for (int j = 0; j < i; ++j) r += T3[i * kLd + j];
      for (int i2 = i + 1; i2 < rows; ++i2) r -= T3[i2 * kLd + i];
      rterm[i] = r;
      pre[i] = 0.f;
    }

  T* dq = static_cast<T*>(bp.dq);
  T* dk = static_cast<T*>(bp.dk);
  float* dg = static_cast<float*>(bp.dg);
  double base_sum = 0.0;  // thread k (< 64), scalar gates: its key dims' <dS, S> over all blocks
  for (int k0 = 0; k0 < p.K; k0 += kBlk) {
    const int kw = min(kBlk, p.K - k0);
    float DQ[8][4], DK[8][4];
    zero(DQ);
    zero(DK);
    double bacc = 0.0;  // thread k: <dS_k, S_k> for key dim k0 + k
    for (int v0 = 0; v0 < p.V; v0 += kBlk) {
      __syncthreads();
      stage_input<T>(T0, a.dout, s, t0, rows, h, C, v0, p.V);
      stage_input<T>(T1, p.v, s, t0, rows, h, C, v0, p.V);
      stage_state(T2, S0, p.K, p.V, k0, v0);
      stage_state(T3, dS, p.K, p.V, k0, v0);
      __syncthreads();
      const int nk = (min(kBlk, p.V - v0) + 15) & ~15;
      if (active) {
        state_gemm<T, 8>(DQ, nk, [&](int r, int k) { return T0[(rb + r) * kLd + k]; },
                         [&](int k, int cc) { return T2[cc * kLd + k]; });
        state_gemm<T, 8>(DK, nk, [&](int r, int k) { return T1[(rb + r) * kLd + k]; },
                         [&](int k, int cc) { return T3[cc * kLd + k]; });
      }
      if (want_dg && tid < kBlk)
        for (int cc = 0; cc < kBlk; ++cc) bacc += double(T3[tid * kLd + cc]) * T2[tid * kLd + cc];
    }
    __syncthreads();
    stage_input<T>(T0, p.q, s, t0, rows, h, C, k0, p.K);
    stage_input<T>(T1, p.k, s, t0, rows, h, C, k0, p.K);
    stage_gates(T2, p, s, t0, rows, h, C, k0);
    __syncthreads();
    // inter-chunk parts and their gate terms
    float rq[2] = {0.f, 0.f}, rk[2] = {0.f, 0.f};
    for_each_acc<8>([&](int nt, int e, int r, int kk) {
      const int i = rb + r;
      if (i >= rows) return;  // (zero accumulators: no products for these rows)
      DQ[nt][e] *= scale * expf(G(i, kk));
      DK[nt][e] *= expf(G(rows - 1, kk) - G(i, kk));
      if (!want_dg) return;
      const float kdk = T1[i * kLd + kk] * DK[nt][e];
      if (vec) {
        T3[i * kLd + kk] = kdk;
      } else {
        rq[e >> 1] += T0[i * kLd + kk] * DQ[nt][e];
        rk[e >> 1] += kdk;
      }
    });
    if (scalar && want_dg) {
#pragma unroll
      for (int x = 0; x < 2; ++x) {
        rq[x] += __shfl_xor_sync(0xffffffffu, rq[x], 1);
        rq[x] += __shfl_xor_sync(0xffffffffu, rq[x], 2);
        rk[x] += __shfl_xor_sync(0xffffffffu, rk[x], 1);
        rk[x] += __shfl_xor_sync(0xffffffffu, rk[x], 2);
      }
      if ((lane & 3) == 0)
        for (int x = 0; x < 2; ++x) {
          const int i = rb + (lane >> 2) + 8 * x;
          if (i >= rows) continue;
          rterm[i] += rq[x];
          pre[i] += rk[x];
        }
    }
    if (want_dg && tid < kBlk) {
      if (vec) base[tid] = float(bacc * exp(double(G(rows - 1, tid))));
      else base_sum += bacc;
    }
    // intra-chunk parts
    if (active) {
      if (!vec) {
        warp_gemm<T, 8>(DQ, C, 0, 8, [&](int r, int j) { return dAs[(rb + r) * kLd + j]; },
                        [&](int j, int kk) { return T1[j * kLd + kk]; });
        warp_gemm<T, 8>(DK, C, 0, 8, [&](int r, int i) { return dAs[i * kLd + rb + r]; },
                        [&](int i, int kk) { return T0[i * kLd + kk]; });
      } else {
        // vector gates: earlier / later 16-row blocks on tensor cores through a reference row r
        // (the first row of the later block: both decay factors <= 1), the diagonal block in fp32
        float X[8][4];
        if (w > 0) {  // dq_i += exp(G_i - G_r) sum_{j < r} dA_ij k_j exp(G_r - G_j), r = rb
          zero(X);
          warp_gemm<T, 8>(X, rb, 0, 8, [&](int r, int j) { return dAs[(rb + r) * kLd + j]; },
                          [&](int j, int kk) { return T1[j * kLd + kk] * expf(T2[rb * kLd + kk] - T2[j * kLd + kk]); });
          for_each_acc<8>([&](int nt, int e, int r, int kk) {
            DQ[nt][e] += X[nt][e] * expf(T2[(rb + r) * kLd + kk] - T2[rb * kLd + kk]);
          });
        }
        for (int b = w + 1; b < C / 16 && 16 * b < rows; ++b) {  // dk_j over the queries of block b
          const int r0 = 16 * b;
          zero(X);
          warp_gemm<T, 8>(
              X, 16, 0, 8, [&](int r, int ii) { return dAs[(r0 + ii) * kLd + rb + r]; },
              [&](int ii, int kk) { return T0[(r0 + ii) * kLd + kk] * expf(T2[(r0 + ii) * kLd + kk] - T2[r0 * kLd + kk]); });
          for_each_acc<8>([&](int nt, int e, int r, int kk) {
            DK[nt][e] += X[nt][e] * expf(T2[r0 * kLd + kk] - T2[(rb + r) * kLd + kk]);
          });
        }
        for_each_acc<8>([&](int nt, int e, int r, int kk) {
          const int i = rb + r;
          if (i >= rows || kk >= kw) return;
          const float gi = T2[i * kLd + kk];
          float sq = DQ[nt][e], sk = DK[nt][e];
          for (int j = rb; j <= i; ++j)
            sq = fmaf(dAs[i * kLd + j] * T1[j * kLd + kk], expf(gi - T2[j * kLd + kk]), sq);
          for (int i2 = i; i2 < min(rb + 16, rows); ++i2)
            sk = fmaf(dAs[i2 * kLd + i] * T0[i2 * kLd + kk], expf(T2[i2 * kLd + kk] - gi), sk);
          DQ[nt][e] = sq;
          DK[nt][e] = sk;
        });
      }
    }
    for_each_acc<8>([&](int nt, int e, int r, int kk) {
      const int i = rb + r;
      if (i >= rows || kk >= kw) return;
      const long long o = out_row(p, s, t0 + i, h) * p.K + k0 + kk;
      dq[o] = store_cast<T>(DQ[nt][e]);
      dk[o] = store_cast<T>(DK[nt][e]);
    });
    if (vec && want_dg) {
      __syncthreads();  // every warp is done reading Q and K
      for_each_acc<8>([&](int nt, int e, int r, int kk) {
        const int i = rb + r;
        if (i < rows)
          T0[i * kLd + kk] = T0[i * kLd + kk] * DQ[nt][e] - T1[i * kLd + kk] * DK[nt][e] + T3[i * kLd + kk];
      });
      __syncthreads();
      for (int kk = tid; kk < kw; kk += blockDim.x) {
        double acc = 0.0;
        for (int i = 0; i < rows; ++i) {
          T1[i * kLd + kk] = float(acc);
          acc += T3[i * kLd + kk];
        }
        acc = base[kk];
        for (int i = rows - 1; i >= 0; --i) {
          acc += T0[i * kLd + kk];
          dg[out_row(p, s, t0 + i, h) * p.K + k0 + kk] = float(acc + T1[i * kLd + kk]);
        }
      }
    }
  }
  if (scalar && want_dg) {
    if (tid < kBlk) base[tid] = float(base_sum);
    __syncthreads();
    if (tid == 0) {
      double b = 0.0;
      for (int k = 0; k < kBlk; ++k) b += base[k];
      b *= exp(double(G(rows - 1, 0)));
      double prefix = 0.0;
      for (int i = 0; i < rows; ++i) {
        const float x = pre[i];
        pre[i] = float(prefix);
        prefix += x;
      }
      double run = b;
      for (int i = rows - 1; i >= 0; --i) {
        run += rterm[i];
        dg[out_row(p, s, t0 + i, h)] = float(run + pre[i]);
      }
    }
  }
}

constexpr size_t kDqdkSmem = (5 * kTile + 3 * kMaxChunk) * sizeof(float);
static_assert(kDqdkSmem <= attn::tc::kMaxSmem, "la_dqdk_kernel exceeds 99 KB of shared memory");

template <typename T>
void linear_attn_bwd_t(const LaBwdParams& bp, cudaStream_t s) {
  const LaParams& p = bp.fwd;
  const LaTensor dout = contiguous_bthx(bp.dout, p, p.V);
  launch_states<T>(p, p.k, p.v, static_cast<const float*>(p.h0), p.states, nullptr, false, s);
  launch_states<T>(p, p.q, dout, static_cast<const float*>(bp.dht), bp.dstates, static_cast<float*>(bp.dh0), true,
                   s);
  if (p.total_chunks == 0) return;  // every sequence empty: only dh0
  launch_out<T>(p, p.k, p.q, dout, bp.dstates, bp.dv, true, s);
  const dim3 grid(unsigned(p.total_chunks * p.H));
  attn::tc::allow_smem(la_dqdk_kernel<T>, kDqdkSmem);
  KK_LAUNCH(grid, kThreads, kDqdkSmem, s, la_dqdk_kernel<T>)(DqdkArgs{bp, dout});
  cuda::check(cudaGetLastError(), "linear_attn backward launch");
}

}  // namespace
}  // namespace la_cuda

void linear_attn_bwd_cuda(const LaBwdParams& p, int device, intptr_t stream) {
  la_cuda::check_cuda_problem(p.fwd, "linear_attn backward");
  if (!p.dstates) throw std::invalid_argument("linear_attn backward: CUDA scratch missing");
  if (p.fwd.N == 0) return;
  cuda::DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.fwd.dtype) {
    case DType::f32: return la_cuda::linear_attn_bwd_t<float>(p, s);
    case DType::f16: return la_cuda::linear_attn_bwd_t<__half>(p, s);
    case DType::bf16: return la_cuda::linear_attn_bwd_t<__nv_bfloat16>(p, s);
    default: throw std::invalid_argument("linear_attn backward on CUDA: q must be float32, bfloat16 or float16");
  }
}

}  // namespace kernkit
