// Causal depthwise conv1d on CUDA. Forward: one thread per output (row, t), plus
// the W-1 final-state entries. Weights and bias are in x's dtype or fp32 (p.wdtype);
// with seq_idx, an input feeds an output only when their sequence indices match. Backward: dx/dinit one thread per extended input,
// recomputing the few pre-activations it needs; dweight/dbias one block per
// channel, summed over (batch, time) with a fixed-order shared-memory tree
// (deterministic, no atomics).
#include "common/cuda_utils.cuh"
#include "scan/scan.h"

namespace kernkit {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxW = 64;

using cuda::AccOf;
using cuda::ld;
using cuda::st;

// ext(j) = [init | x](j) of row r, j in [0, L + W - 1)
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type ext_at(const CausalConvParams& p, long long r, long long j) {
  using A = typename AccOf<T>::type;
  const long long W1 = p.W - 1;
  if (j < W1) return p.init ? ld(static_cast<const T*>(p.init) + r * W1 + j) : A(0);
  return ld(static_cast<const T*>(p.x) + r * p.L + (j - W1));
}

// weight / bias element i: x's dtype, or fp32 next to 16-bit x
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type wt_at(const CausalConvParams& p, const void* base, long long i) {
  using A = typename AccOf<T>::type;
  return p.wdtype == DType::f32 ? A(static_cast<const float*>(base)[i]) : A(ld(static_cast<const T*>(base) + i));
}

// Whether ext position e feeds output t of row r (seq_idx: inputs of output t's sequence only).
__device__ __forceinline__ bool keep(const CausalConvParams& p, long long r, long long t, long long e) {
  if (!p.seq_idx) return true;
  const long long b = r / p.D, src = e - (p.W - 1);
  return src >= 0 && p.seq_idx[b * p.L + src] == p.seq_idx[b * p.L + t];
}

template <typename T>
__device__ __forceinline__ typename AccOf<T>::type pre_at(const CausalConvParams& p, long long r, long long t) {
  using A = typename AccOf<T>::type;
  const long long d = r % p.D;
  A acc = p.bias ? wt_at<T>(p, p.bias, d) : A(0);
  for (long long k = 0; k < p.W; ++k)
    if (keep(p, r, t, t + k)) acc += wt_at<T>(p, p.w, d * p.W + k) * ext_at<T>(p, r, t + k);
  return acc;
}

template <typename A>
__device__ __forceinline__ A sigm(A x) { return A(1) / (A(1) + exp(-x)); }

template <typename T>
__global__ void conv_fwd_kernel(CausalConvParams p) {
  using A = typename AccOf<T>::type;
  const long long W1 = p.W - 1, per_row = p.L + W1;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B * p.D * per_row) return;
  const long long r = i / per_row, t = i % per_row;
  if (t < p.L) {
    A y = pre_at<T>(p, r, t);
    if (p.silu) y = y * sigm(y);
    static_cast<T*>(p.y)[r * p.L + t] = st<T>(y);
  } else if (p.final_state) {
    static_cast<T*>(p.final_state)[r * W1 + (t - p.L)] = st<T>(ext_at<T>(p, r, p.L + (t - p.L)));
  }
}

// causal_conv1d_update: init and final_state are one (B, D, S) buffer, so one thread owns a row:
// it computes the L outputs from the state's last W-1 entries and x, then shifts the state
// left by L in place (entry i takes ext(L + i), read before it is overwritten when L + i < S).
template <typename T>
__global__ void conv_update_kernel(CausalConvParams p) {
  using A = typename AccOf<T>::type;
  const long long r = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (r >= p.B * p.D) return;
  const long long d = r % p.D, W1 = p.W - 1, S = p.state_len;
  T* state = static_cast<T*>(p.final_state) + r * S;
  const T* x = static_cast<const T*>(p.x) + r * p.L;
  auto ext = [&](long long j) { return j < S ? ld(state + j) : ld(x + (j - S)); };
  for (long long t = 0; t < p.L; ++t) {
    A acc = p.bias ? wt_at<T>(p, p.bias, d) : A(0);
    for (long long k = 0; k < p.W; ++k) acc += wt_at<T>(p, p.w, d * p.W + k) * ext(S - W1 + t + k);
    if (p.silu) acc = acc * sigm(acc);
    static_cast<T*>(p.y)[r * p.L + t] = st<T>(acc);
  }
  for (long long i = 0; i < S; ++i) state[i] = i + p.L < S ? state[i + p.L] : x[i + p.L - S];
}

// g(t) = dL/dpre at (row, t)
template <typename T>
__device__ __forceinline__ typename AccOf<T>::type grad_pre(const CausalConvBwdParams& q, long long r, long long t) {
  using A = typename AccOf<T>::type;
  A g = ld(static_cast<const T*>(q.dy) + r * q.fwd.L + t);
  if (q.fwd.silu) {
    const A x = pre_at<T>(q.fwd, r, t), s = sigm(x);
    g *= s * (A(1) + x * (A(1) - s));
  }
  return g;
}

template <typename T>
__global__ void conv_dx_kernel(CausalConvBwdParams q) {
  using A = typename AccOf<T>::type;
  const CausalConvParams& p = q.fwd;
  const long long W1 = p.W - 1, E = p.L + W1;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B * p.D * E) return;
  const long long r = i / E, j = i % E, d = r % p.D;
  A acc = 0;  // dext[j] = sum_k w[k] g[j - k]
  for (long long k = 0; k < p.W; ++k) {
    const long long t = j - k;
    if (t >= 0 && t < p.L && keep(p, r, t, j)) acc += wt_at<T>(p, p.w, d * p.W + k) * grad_pre<T>(q, r, t);
  }
  if (j >= p.L && q.dfinal) acc += ld(static_cast<const T*>(q.dfinal) + r * W1 + (j - p.L));
  if (j >= W1) static_cast<T*>(q.dx)[r * p.L + (j - W1)] = st<T>(acc);
  else if (q.dinit) static_cast<T*>(q.dinit)[r * W1 + j] = st<T>(acc);
}

// Block sum of each thread's v into out (weight or bias entry i), fixed-order tree.
template <typename T, typename A>
__device__ __forceinline__ void dw_store(const CausalConvBwdParams& q, A* red, A v, void* out, long long i) {
  red[threadIdx.x] = v;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) red[threadIdx.x] += red[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0 && out) {
    if (q.fwd.wdtype == DType::f32) static_cast<float*>(out)[i] = float(red[0]);
    else static_cast<T*>(out)[i] = st<T>(red[0]);
  }
  __syncthreads();
}

// dweight / dbias of channel d: taps in register accumulators, kTaps at a time (a fixed-size,
// fully unrolled array stays in registers; the old acc[kMaxW + 1] lived in local memory). Each
// thread's sums run over the same (batch, time) order in every pass, so the result does not
// depend on how many passes the width needs.
constexpr int kTaps = 4;

template <typename T>
__global__ void conv_dw_kernel(CausalConvBwdParams q) {
  using A = typename AccOf<T>::type;
  const CausalConvParams& p = q.fwd;
  KK_SHARED(A, red, [kThreads]);
  const long long d = blockIdx.x;
  for (int k0 = 0; k0 <= p.W; k0 += kTaps) {  // tap W stands for the bias
    A acc[kTaps];
#pragma unroll
    for (int j = 0; j < kTaps; ++j) acc[j] = 0;
    for (long long i = threadIdx.x; i < p.B * p.L; i += blockDim.x) {
      const long long b = i / p.L, t = i % p.L, r = b * p.D + d;
      const A g = grad_pre<T>(q, r, t);
#pragma unroll
      for (int j = 0; j < kTaps; ++j) {
        const int k = k0 + j;
        if (k < p.W) {
          if (keep(p, r, t, t + k)) acc[j] += g * ext_at<T>(p, r, t + k);
        } else if (k == p.W) {
          acc[j] += g;
        }
      }
    }
#pragma unroll
    for (int j = 0; j < kTaps; ++j) {
      const int k = k0 + j;
      if (k > p.W) break;
      dw_store<T>(q, red, acc[j], k < p.W ? q.dw : q.dbias, k < p.W ? d * p.W + k : d);
    }
  }
}

template <template <typename> class K, typename P>
void launch(const P& p, DType dtype, unsigned blocks, cudaStream_t s) {
  switch (dtype) {
    case DType::f32: K<float>::go(p, blocks, s); break;
    case DType::f64: K<double>::go(p, blocks, s); break;
    case DType::f16: K<__half>::go(p, blocks, s); break;
    case DType::bf16: K<__nv_bfloat16>::go(p, blocks, s); break;
  }
}
template <typename T> struct Fwd { static void go(const CausalConvParams& p, unsigned n, cudaStream_t s) { KK_LAUNCH(n, kThreads, 0, s, conv_fwd_kernel<T>)(p); } };
template <typename T> struct Update { static void go(const CausalConvParams& p, unsigned n, cudaStream_t s) { KK_LAUNCH(n, kThreads, 0, s, conv_update_kernel<T>)(p); } };
template <typename T> struct Dx { static void go(const CausalConvBwdParams& p, unsigned n, cudaStream_t s) { KK_LAUNCH(n, kThreads, 0, s, conv_dx_kernel<T>)(p); } };
template <typename T> struct Dw { static void go(const CausalConvBwdParams& p, unsigned n, cudaStream_t s) { KK_LAUNCH(n, kThreads, 0, s, conv_dw_kernel<T>)(p); } };

}  // namespace

void causal_conv1d_fwd_cuda(const CausalConvParams& p, int device, intptr_t stream) {
  if (p.B == 0 || p.D == 0) return;
  cuda::DeviceGuard guard(device);
  launch<Fwd>(p, p.dtype, cuda::blocks_for(p.B * p.D * (p.L + p.W - 1), kThreads), reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "causal_conv1d forward launch");
}

void causal_conv1d_update_cuda(const CausalConvParams& p, int device, intptr_t stream) {
  if (p.B == 0 || p.D == 0) return;
  cuda::DeviceGuard guard(device);
  launch<Update>(p, p.dtype, cuda::blocks_for(p.B * p.D, kThreads), reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "causal_conv1d_update launch");
}

void causal_conv1d_bwd_cuda(const CausalConvBwdParams& q, int device, intptr_t stream) {
  const CausalConvParams& p = q.fwd;
  if (p.D == 0) return;
  cuda::DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (p.B > 0) launch<Dx>(q, p.dtype, cuda::blocks_for(p.B * p.D * (p.L + p.W - 1), kThreads), s);
  launch<Dw>(q, p.dtype, unsigned(p.D), s);
  cuda::check(cudaGetLastError(), "causal_conv1d backward launch");
}

}  // namespace kernkit
