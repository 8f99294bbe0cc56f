// h_t = a_t * h_{t-1} + b_t on CUDA: one thread per (batch, channel), walking
// time sequentially with fp32 (fp64 for fp64) state; consecutive threads take
// consecutive channels, so every time step is one coalesced row read/write.
// Memory-bound by design. With few rows and a long time axis (p.chunk > 0) time is
// cut into chunks, one thread per (row, chunk), in three passes: each chunk's
// carry (the product of its a and its end state from zero), the true start state
// of every chunk (one thread per row, walking the carries in order), and each
// chunk again from its start state, writing h. Fixed order: deterministic.
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

// Steps [s0, s1) of row (b, c) from `state`; writes h when `out`, returns the end state and the
// product of the a's in *prod (when given).
template <typename T>
__device__ typename AccOf<T>::type walk(const LinearScanParams& p, long long row, long long s0, long long s1,
                                        typename AccOf<T>::type state, bool out, typename AccOf<T>::type* prod) {
  using A = typename AccOf<T>::type;
  const long long b = row / p.C, c = row % p.C;
  const T* a = static_cast<const T*>(p.a.ptr) + b * p.a.bs + c * p.a.cs;
  const T* x = static_cast<const T*>(p.b.ptr) + b * p.b.bs + c * p.b.cs;
  T* h = static_cast<T*>(p.h) + b * p.T * p.C + c;
  A pr = A(1);
  for (long long s = s0; s < s1; ++s) {
    const long long t = p.reverse ? p.T - 1 - s : s;
    const A av = ld(a + t * p.a.ts);
    state = av * state + ld(x + t * p.b.ts);
    pr *= av;
    if (out) h[t * p.C] = st<T>(state);
  }
  if (prod) *prod = pr;
  return state;
}

// Thread i = k * rows + row takes chunk k of row (consecutive threads, consecutive channels):
// steps [s0, s1). False for threads past the last chunk.
struct Chunk {
  long long i, row, s0, s1;
};
__device__ __forceinline__ bool chunk_of(const LinearScanParams& p, long long nchunks, Chunk& c) {
  const long long rows = p.B * p.C;
  c.i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (c.i >= rows * nchunks) return false;
  c.row = c.i % rows;
  c.s0 = (c.i / rows) * p.chunk;
  c.s1 = c.s0 + p.chunk < p.T ? c.s0 + p.chunk : (long long)p.T;
  return true;
}

// Pass 1: each chunk's carry, the product of its a and its end state from zero.
template <typename T>
__global__ void chunk_carry_kernel(LinearScanParams p, long long nchunks) {
  using A = typename AccOf<T>::type;
  Chunk c;
  if (!chunk_of(p, nchunks, c)) return;
  A prod;
  const A end = walk<T>(p, c.row, c.s0, c.s1, A(0), false, &prod);
  A* carry = static_cast<A*>(p.carry);
  carry[2 * c.i] = prod;
  carry[2 * c.i + 1] = end;
}

// Pass 2, one thread per row: the start state of each chunk, in place of its product.
template <typename T>
__global__ void chunk_start_kernel(LinearScanParams p, long long nchunks) {
  using A = typename AccOf<T>::type;
  const long long rows = p.B * p.C, row = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  A state = p.h0 ? ld(static_cast<const T*>(p.h0) + row) : A(0);
  A* carry = static_cast<A*>(p.carry);
  for (long long k = 0; k < nchunks; ++k) {
    const long long i = k * rows + row;
    const A prod = carry[2 * i], end = carry[2 * i + 1];
    carry[2 * i] = state;
    state = prod * state + end;
  }
}

// Pass 3: each chunk again from its true start state, writing h.
template <typename T>
__global__ void chunk_write_kernel(LinearScanParams p, long long nchunks) {
  using A = typename AccOf<T>::type;
  Chunk c;
  if (!chunk_of(p, nchunks, c)) return;
  walk<T>(p, c.row, c.s0, c.s1, static_cast<const A*>(p.carry)[2 * c.i], true, nullptr);
}

template <typename T>
void launch_chunked(const LinearScanParams& p, cudaStream_t s) {
  const long long nchunks = (p.T + p.chunk - 1) / p.chunk, rows = p.B * p.C;
  KK_LAUNCH(cuda::blocks_for(rows * nchunks, 256), 256, 0, s, chunk_carry_kernel<T>)(p, nchunks);
  KK_LAUNCH(cuda::blocks_for(rows, 256), 256, 0, s, chunk_start_kernel<T>)(p, nchunks);
  KK_LAUNCH(cuda::blocks_for(rows * nchunks, 256), 256, 0, s, chunk_write_kernel<T>)(p, nchunks);
}

}  // namespace

void linear_scan_cuda(const LinearScanParams& p, int device, intptr_t stream) {
  if (p.B == 0 || p.T == 0 || p.C == 0) return;
  cuda::DeviceGuard guard(device);
  auto s = reinterpret_cast<cudaStream_t>(stream);
  if (p.chunk > 0 && p.chunk < p.T) {
    switch (p.dtype) {
      case DType::f32: launch_chunked<float>(p, s); break;
      case DType::f64: launch_chunked<double>(p, s); break;
      case DType::f16: launch_chunked<__half>(p, s); break;
      case DType::bf16: launch_chunked<__nv_bfloat16>(p, s); break;
    }
    cuda::check(cudaGetLastError(), "linear_scan launch");
    return;
  }
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
