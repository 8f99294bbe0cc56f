// CUDA chunked linear attention, forward (and the two kernels the backward reuses):
//   1. states: a block per (sequence, head, 64 x 64 block of the K x V state) walks the chunks in
//      order, storing the state entering each chunk (fp32 scratch) and applying
//      S <- exp(G_end) S + (K exp(G_end - G))^T V. Run in reverse with (Q scale exp(G), dO) it
//      gives the state gradients the backward needs.
//   2. out: a block per (chunk, sequence, head, 64 columns of V), all chunks in parallel:
//      O = (scale Q exp(G)) S + A V, A_ij = scale q_i.k_j exp(G_i - G_j) for j <= i. The same
//      kernel with the roles of q and k swapped and A transposed gives dV = Kd dS + A^T dO.
// Scalar gates decay A elementwise after a tensor-core Q K^T. Vector (GLA) gates: a per-key-dim
// decay does not factor out of the sum, so A is formed per pair of 16-row blocks relative to the
// later block's first row (tensor cores; every exponent <= 0), the diagonal blocks in fp32 loops.
#include "linear_attn/cuda/chunk_common.cuh"

namespace kernkit {
namespace la_cuda {
namespace {

constexpr int kThreads = 128;  // 4 warps x 16 rows: a 64-row state block, or up to 64 chunk rows

struct StateArgs {
  LaParams p;
  LaTensor x, y;
  const float* init;
  float* states;
  float* final_out;
};

template <typename T, bool Rev>
__global__ void __launch_bounds__(kThreads, 1) la_states_kernel(StateArgs a) {
  KK_DYNAMIC_SHARED(float, smem);
  float* Xs = smem;
  float* Ys = smem + kTile;
  float* Gs = smem + 2 * kTile;
  const LaParams& p = a.p;
  const int nvb = (p.V + kBlk - 1) / kBlk;
  const int k0 = int(blockIdx.y) / nvb * kBlk, v0 = int(blockIdx.y) % nvb * kBlk;
  const int n = int(blockIdx.x / p.H), h = int(blockIdx.x % p.H);
  const Seq s = seq_of(p, n);
  const int C = p.chunk, nc = chunks_of(s, C);
  const int rb = 16 * int(threadIdx.x >> 5);  // this warp's state rows: k0 + rb ..
  const long long KV = (long long)p.K * p.V, unit = (long long)n * p.H + h;
  const float scale = float(p.scale);
  const Gates G{Gs, p.gate};

  float S[8][4];
  for_each_acc<8>([&](int nt, int e, int r, int c) {
    const int kk = k0 + rb + r, vv = v0 + c;
    S[nt][e] = (a.init && kk < p.K && vv < p.V) ? a.init[unit * KV + (long long)kk * p.V + vv] : 0.f;
  });
  for (int step = 0; step < nc; ++step) {
    const int c = Rev ? nc - 1 - step : step;
    const long long t0 = (long long)c * C;
    const int rows = min(C, int(s.len - t0));
    float* st = a.states + ((s.chunk0 + c) * p.H + h) * KV;
    for_each_acc<8>([&](int nt, int e, int r, int cc) {
      const int kk = k0 + rb + r, vv = v0 + cc;
      if (kk < p.K && vv < p.V) st[(long long)kk * p.V + vv] = S[nt][e];
    });
    if (!Rev && step == nc - 1 && !a.final_out) break;  // the state after the last chunk is not wanted
    __syncthreads();  // the previous chunk's tiles are consumed
    stage_input<T>(Xs, a.x, s, t0, rows, h, C, k0, p.K);
    stage_input<T>(Ys, a.y, s, t0, rows, h, C, v0, p.V);
    stage_gates(Gs, p, s, t0, rows, h, C, k0);
    __syncthreads();
    for_each_acc<8>([&](int nt, int e, int r, int) { S[nt][e] *= expf(G(rows - 1, rb + r)); });
    warp_gemm<T, 8, true>(  // decayed keys (queries) split: the state sums stay at fp32 accuracy
        S, C, 0, 8,
        [&](int r, int j) {
          const int kk = rb + r;
          const float x = Xs[j * kLd + kk];
          return Rev ? x * scale * expf(G(j, kk)) : x * expf(G(rows - 1, kk) - G(j, kk));
        },
        [&](int j, int cc) { return Ys[j * kLd + cc]; });
  }
  if (a.final_out)
    for_each_acc<8>([&](int nt, int e, int r, int c) {
      const int kk = k0 + rb + r, vv = v0 + c;
      if (kk < p.K && vv < p.V) a.final_out[unit * KV + (long long)kk * p.V + vv] = S[nt][e];
    });
}

struct OutArgs {
  LaParams p;
  LaTensor rows, cols, y;
  const float* states;
  void* out;  // contiguous (B, T, H, V)
};

template <typename T, bool Dv>
__global__ void __launch_bounds__(kThreads) la_out_kernel(OutArgs a) {
  KK_DYNAMIC_SHARED(float, smem);
  float* Rs = smem;               // row operand (q; k for dV), 64 key dims
  float* Cs = smem + kTile;       // column operand (k; q for dV)
  float* Gs = smem + 2 * kTile;   // cumulative gates
  float* Ms = smem + 3 * kTile;   // 64 x 64 block of the state (or its gradient)
  float* As = Rs;                 // after the K loop: the chunk's masked scores
  float* Ys = Cs;                 // and the V (dO) block they multiply
  const LaParams& p = a.p;
  const ChunkRef ref = chunk_of_block(p);
  const Seq s = ref.s;
  const int c = ref.c, h = ref.h, v0 = blockIdx.y * kBlk;
  const int C = p.chunk;
  if (c >= chunks_of(s, C)) return;
  const long long t0 = (long long)c * C;
  const int rows = min(C, int(s.len - t0));
  const int w = threadIdx.x >> 5, rb = 16 * w;
  const bool active = rb < rows;  // warps past the chunk's last row have nothing to compute
  const bool vec = p.gate == LaGate::vector;
  const float scale = float(p.scale);
  const Gates G{Gs, p.gate};
  const float* M = a.states + ((s.chunk0 + c) * p.H + h) * (long long)p.K * p.V;
  // A's causal n-tiles: columns <= this warp's rows (forward), >= them (dV)
  const int nt0 = Dv ? 2 * w : 0, nt1 = Dv ? C / 8 : 2 * w + 2;

  float A[8][4], O[8][4];
  zero(A);
  zero(O);
  for (int k0 = 0; k0 < p.K; k0 += kBlk) {
    if (k0) __syncthreads();
    stage_input<T>(Rs, a.rows, s, t0, rows, h, C, k0, p.K);
    stage_input<T>(Cs, a.cols, s, t0, rows, h, C, k0, p.K);
    stage_gates(Gs, p, s, t0, rows, h, C, k0);
    stage_state(Ms, M, p.K, p.V, k0, v0);
    __syncthreads();
    if (!active) continue;
    const int kw = min(kBlk, p.K - k0), nk = (kw + 15) & ~15;
    if (!vec) {
      warp_gemm<T, 8>(A, nk, nt0, nt1, [&](int r, int k) { return Rs[(rb + r) * kLd + k]; },
                      [&](int k, int j) { return Cs[j * kLd + k]; });
    } else {
      // Vector gates: off the diagonal 16-row blocks on tensor cores through the first row r of the
      // later block, exp(G_late - G_early) = exp(G_late - G_r) exp(G_r - G_early), both factors <= 1;
      // the diagonal blocks in exact fp32.
      if (!Dv) {
        warp_gemm<T, 8>(
            A, nk, 0, 2 * w,
            [&](int r, int k) { return Rs[(rb + r) * kLd + k] * expf(Gs[(rb + r) * kLd + k] - Gs[rb * kLd + k]); },
            [&](int k, int j) { return Cs[j * kLd + k] * expf(Gs[rb * kLd + k] - Gs[j * kLd + k]); });
      } else {
        for (int b = w + 1; b < C / 16 && 16 * b < rows; ++b) {
          const int r0 = 16 * b;
          warp_gemm<T, 8>(
              A, nk, 2 * b, 2 * b + 2,
              [&](int r, int k) { return Rs[(rb + r) * kLd + k] * expf(Gs[r0 * kLd + k] - Gs[(rb + r) * kLd + k]); },
              [&](int k, int i) { return Cs[i * kLd + k] * expf(Gs[i * kLd + k] - Gs[r0 * kLd + k]); });
        }
      }
      for_each_acc<8>([&](int nt, int e, int r, int j) {
        const int i = rb + r, late = Dv ? j : i, early = Dv ? i : j;
        if (nt < 2 * w || nt >= 2 * w + 2 || late < early || late >= rows) return;
        float sum = A[nt][e];
        for (int k = 0; k < kw; ++k)
          sum = fmaf(Rs[i * kLd + k] * Cs[j * kLd + k], expf(Gs[late * kLd + k] - Gs[early * kLd + k]), sum);
        A[nt][e] = sum;
      });
    }
    state_gemm<T, 8>(
        O, nk,
        [&](int r, int k) {
          const int i = rb + r;
          const float x = Rs[i * kLd + k];
          return Dv ? x * expf(G(rows - 1, k) - G(i, k)) : x * scale * expf(G(i, k));
        },
        [&](int k, int cc) { return Ms[k * kLd + cc]; });
  }
  __syncthreads();
  for_each_acc<8>([&](int nt, int e, int r, int j) {
    const int i = rb + r, late = Dv ? j : i, early = Dv ? i : j;
    const bool in = active && late >= early && late < rows;
    As[i * kLd + j] = in ? scale * A[nt][e] * (vec ? 1.f : expf(G(late, 0) - G(early, 0))) : 0.f;
  });
  stage_input<T>(Ys, a.y, s, t0, rows, h, C, v0, p.V);
  __syncthreads();
  if (!active) return;
  warp_gemm<T, 8>(O, C, 0, 8, [&](int r, int j) { return As[(rb + r) * kLd + j]; },
                  [&](int j, int cc) { return Ys[j * kLd + cc]; });
  T* out = static_cast<T*>(a.out);
  for_each_acc<8>([&](int nt, int e, int r, int cc) {
    const int i = rb + r, vv = v0 + cc;
    if (i < rows && vv < p.V) out[out_row(p, s, t0 + i, h) * p.V + vv] = store_cast<T>(O[nt][e]);
  });
}

constexpr size_t kStatesSmem = 3 * kTile * sizeof(float), kOutSmem = 4 * kTile * sizeof(float);
static_assert(kOutSmem <= attn::tc::kMaxSmem, "la_out_kernel exceeds 99 KB of shared memory");

template <typename T>
void linear_attn_fwd_t(const LaParams& p, cudaStream_t s) {
  launch_states<T>(p, p.k, p.v, static_cast<const float*>(p.h0), p.states, static_cast<float*>(p.ht), false, s);
  launch_out<T>(p, p.q, p.k, p.v, p.states, p.o, false, s);
}

}  // namespace

template <typename T>
void launch_states(const LaParams& p, const LaTensor& x, const LaTensor& y, const float* init, float* states,
                   float* final_out, bool reverse, cudaStream_t s) {
  const dim3 grid(unsigned(p.N * p.H), unsigned((p.K + kBlk - 1) / kBlk * ((p.V + kBlk - 1) / kBlk)));
  const StateArgs a{p, x, y, init, states, final_out};
  if (reverse) {
    attn::tc::allow_smem(la_states_kernel<T, true>, kStatesSmem);
    KK_LAUNCH(grid, kThreads, kStatesSmem, s, la_states_kernel<T, true>)(a);
  } else {
    attn::tc::allow_smem(la_states_kernel<T, false>, kStatesSmem);
    KK_LAUNCH(grid, kThreads, kStatesSmem, s, la_states_kernel<T, false>)(a);
  }
  cuda::check(cudaGetLastError(), "linear_attn states launch");
}

template <typename T>
void launch_out(const LaParams& p, const LaTensor& rows, const LaTensor& cols, const LaTensor& y,
                const float* states, void* out, bool dv, cudaStream_t s) {
  if (p.total_chunks == 0) return;  // every sequence empty
  const dim3 grid(unsigned(p.total_chunks * p.H), unsigned((p.V + kBlk - 1) / kBlk));
  const OutArgs a{p, rows, cols, y, states, out};
  if (dv) {
    attn::tc::allow_smem(la_out_kernel<T, true>, kOutSmem);
    KK_LAUNCH(grid, kThreads, kOutSmem, s, la_out_kernel<T, true>)(a);
  } else {
    attn::tc::allow_smem(la_out_kernel<T, false>, kOutSmem);
    KK_LAUNCH(grid, kThreads, kOutSmem, s, la_out_kernel<T, false>)(a);
  }
  cuda::check(cudaGetLastError(), "linear_attn output launch");
}

#define KK_LA_INSTANTIATE(T)                                                                                   \
  template void launch_states<T>(const LaParams&, const LaTensor&, const LaTensor&, const float*, float*, float*, \
                                 bool, cudaStream_t);                                                           \
  template void launch_out<T>(const LaParams&, const LaTensor&, const LaTensor&, const LaTensor&, const float*,   \
                              void*, bool, cudaStream_t);
KK_LA_INSTANTIATE(float)
KK_LA_INSTANTIATE(__half)
KK_LA_INSTANTIATE(__nv_bfloat16)
#undef KK_LA_INSTANTIATE

// Checks shared by the forward and backward entry points.
void check_cuda_problem(const LaParams& p, const char* fn) {
  if (p.chunk < 16 || p.chunk > kMaxChunk || p.chunk % 16)
    throw std::invalid_argument(std::string(fn) + ": the CUDA kernels take chunks of 16, 32, 48 or 64 rows");
  if ((long long)p.total_chunks * p.H > 2147483647LL)
    throw std::invalid_argument(std::string(fn) + ": the CUDA kernels take at most 2^31 - 1 (chunk, head) pairs");
  const bool plan_ok = p.cu_seqlens ? (p.chunk_off && p.chunk_seq && p.total_chunks >= 0)
                                    : (p.max_chunks == (p.T + p.chunk - 1) / p.chunk &&
                                       (long long)p.total_chunks == (long long)p.N * p.max_chunks);
  if (!p.states || !plan_ok) throw std::invalid_argument(std::string(fn) + ": CUDA chunk plan or scratch missing");
}

}  // namespace la_cuda

void linear_attn_fwd_cuda(const LaParams& p, int device, intptr_t stream) {
  la_cuda::check_cuda_problem(p, "linear_attn");
  if (p.N == 0) return;
  cuda::DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  switch (p.dtype) {
    case DType::f32: return la_cuda::linear_attn_fwd_t<float>(p, s);
    case DType::f16: return la_cuda::linear_attn_fwd_t<__half>(p, s);
    case DType::bf16: return la_cuda::linear_attn_fwd_t<__nv_bfloat16>(p, s);
    default: throw std::invalid_argument("linear_attn on CUDA: q must be float32, bfloat16 or float16");
  }
}

}  // namespace kernkit
