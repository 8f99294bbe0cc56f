// linear_attn_step on CUDA: one decode token, S_new = diag(exp(g)) S + k^T v, o = scale q . S_new.
// One block per (batch, head); thread j owns column j of the (K, V) state (coalesced rows of the
// row-major state), walking its K entries in order: every state element is read once and written
// once (in place when new_state == state). q, k and the decays sit in shared memory. fp32 state,
// q/k/v in fp32/bf16/fp16. The sign of g is not checked here (that would synchronise each step).
#include "common/cuda_utils.cuh"
#include "linear_attn/linear_attn.h"

namespace kernkit {
namespace {

using cuda::load_f;
using cuda::store_cast;

constexpr int kMaxK = 256;

template <typename T>
__global__ void la_step_kernel(LaStepParams p) {
  KK_SHARED(float, qs, [kMaxK]);
  KK_SHARED(float, ks, [kMaxK]);
  KK_SHARED(float, as, [kMaxK]);
  const long long u = blockIdx.x, b = u / p.H, h = u % p.H;
  const T* q = static_cast<const T*>(p.q) + u * p.K;
  const T* k = static_cast<const T*>(p.k) + u * p.K;
  const float* g = static_cast<const float*>(p.g);
  for (int i = threadIdx.x; i < p.K; i += blockDim.x) {
    qs[i] = float(p.scale) * load_f(q + i);
    ks[i] = load_f(k + i);
    as[i] = p.gate == LaGate::none     ? 1.f
            : p.gate == LaGate::scalar ? expf(g[b * p.gbs + h * p.ghs])
                                       : expf(g[b * p.gbs + h * p.ghs + i]);
  }
  __syncthreads();
  const size_t sz = size_t(p.K) * p.V;
  const float* S = static_cast<const float*>(p.state) + u * sz;
  float* Sn = static_cast<float*>(p.new_state) + u * sz;
  for (int j = threadIdx.x; j < p.V; j += blockDim.x) {
    const float vj = load_f(static_cast<const T*>(p.v) + u * p.V + j);
    float o = 0.f;
    for (int i = 0; i < p.K; ++i) {
      const float s = fmaf(as[i], S[size_t(i) * p.V + j], ks[i] * vj);
      Sn[size_t(i) * p.V + j] = s;
      o = fmaf(qs[i], s, o);
    }
    static_cast<T*>(p.o)[u * p.V + j] = store_cast<T>(o);
  }
}

}  // namespace

void linear_attn_step_cuda(const LaStepParams& p, int device, intptr_t stream) {
  if (p.B == 0) return;
  cuda::DeviceGuard guard(device);
  const auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned blocks = unsigned(p.B) * unsigned(p.H), threads = p.V >= 128 ? 128u : (p.V > 32 ? 64u : 32u);
  switch (p.dtype) {
    case DType::f32: KK_LAUNCH(blocks, threads, 0, s, la_step_kernel<float>)(p); break;
    case DType::f16: KK_LAUNCH(blocks, threads, 0, s, la_step_kernel<__half>)(p); break;
    case DType::bf16: KK_LAUNCH(blocks, threads, 0, s, la_step_kernel<__nv_bfloat16>)(p); break;
    default: throw std::invalid_argument("linear_attn_step on CUDA: q must be float32, bfloat16 or float16");
  }
  cuda::check(cudaGetLastError(), "linear_attn_step launch");
}

}  // namespace kernkit
