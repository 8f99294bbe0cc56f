// h_t = a_t * h_{t-1} + b_t on CUDA: one thread per (batch, channel), walking
// time sequentially with fp32 (fp64 for fp64) state; consecutive threads take
// consecutive channels, so every time step is one coalesced row read/write.
// Memory-bound by design; a chunked block scan for few channels and long T is
// the planned next step.
#include "common/cuda_utils.cuh"
#include "scan/scan.h"

namespace kernkit {
namespace {

using cuda::AccOf;
using cuda::ld;
using cuda::st;

template <typename T>
__global__ void linear_scan_kernel(LinearScanParams p) {
  using A = typename AccOf<T>::type;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= p.B * p.C) return;
  const long long b = i / p.C, c = i % p.C;
  const T* a = static_cast<const T*>(p.a.ptr) + b * p.a.bs + c * p.a.cs;
  const T* x = static_cast<const T*>(p.b.ptr) + b * p.b.bs + c * p.b.cs;
  T* h = static_cast<T*>(p.h) + b * p.T * p.C + c;
  A state = p.h0 ? ld(static_cast<const T*>(p.h0) + b * p.C + c) : A(0);
  for (long long s = 0; s < p.T; ++s) {
    const long long t = p.reverse ? p.T - 1 - s : s;
    state = ld(a + t * p.a.ts) * state + ld(x + t * p.b.ts);
    h[t * p.C] = st<T>(state);
  }
}

}  // namespace

void linear_scan_cuda(const LinearScanParams& p, int device, intptr_t stream) {
  if (p.B == 0 || p.T == 0 || p.C == 0) return;
  cuda::DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  const unsigned blocks = cuda::blocks_for(p.B * p.C, 256);
  switch (p.dtype) {
    case DType::f32: KK_LAUNCH(blocks, 256, 0, s, linear_scan_kernel<float>)(p); break;
    case DType::f64: KK_LAUNCH(blocks, 256, 0, s, linear_scan_kernel<double>)(p); break;
    case DType::f16: KK_LAUNCH(blocks, 256, 0, s, linear_scan_kernel<__half>)(p); break;
    case DType::bf16: KK_LAUNCH(blocks, 256, 0, s, linear_scan_kernel<__nv_bfloat16>)(p); break;
  }
  cuda::check(cudaGetLastError(), "linear_scan launch");
}

}  // namespace kernkit
