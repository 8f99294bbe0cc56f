// RMSNorm CUDA kernels. Forward and dx: one warp per row, fp32 (fp64 for fp64
// inputs) accumulation, two passes over the row (the second hits L1/L2).
// dw: column strips summed over fixed row blocks into a workspace, then over the
// blocks in order — deterministic, no atomics.
#include "common/cuda_utils.cuh"
#include "norm/rms_norm.h"

namespace kernkit {
namespace {

constexpr int kWarpsPerBlock = 8;

template <typename T> using Acc = cuda::AccOf<T>;
using cuda::ld;
using cuda::st;

template <typename T, typename W>
__device__ __forceinline__ typename Acc<T>::type weight(const W* w, long long i) {
  using A = typename Acc<T>::type;
  return w ? A(ld(w + i)) : A(1);
}

template <typename T, typename W>
__global__ void rms_norm_fwd_kernel(const T* __restrict__ x, const W* __restrict__ w, T* __restrict__ y,
                                    typename Acc<T>::type* __restrict__ rstd_out, long long rows, long long D,
                                    float eps) {
  using A = typename Acc<T>::type;
  const long long row = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + row * D;
  A ss = 0;
  for (long long i = lane; i < D; i += 32) { const A v = ld(xr + i); ss += v * v; }
  ss = cuda::warp_sum(ss);
  const A rstd = A(1) / sqrt(ss / A(D) + A(eps));
  if (lane == 0) rstd_out[row] = rstd;
  T* yr = y + row * D;
  for (long long i = lane; i < D; i += 32) yr[i] = st<T>(ld(xr + i) * rstd * weight<T>(w, i));
}

template <typename T, typename W>
__global__ void rms_norm_dx_kernel(const T* __restrict__ dy, const T* __restrict__ x, const W* __restrict__ w,
                                   const typename Acc<T>::type* __restrict__ rstd_in, T* __restrict__ dx,
                                   long long rows, long long D) {
  using A = typename Acc<T>::type;
  const long long row = (long long)blockIdx.x * kWarpsPerBlock + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= rows) return;
  const T* xr = x + row * D;
  const T* gr = dy + row * D;
  A dot = 0;
  for (long long i = lane; i < D; i += 32) dot += ld(gr + i) * weight<T>(w, i) * ld(xr + i);
  dot = cuda::warp_sum(dot);
  const A rstd = rstd_in[row];
  const A c = dot * rstd * rstd * rstd / A(D);
  T* dxr = dx + row * D;
  for (long long i = lane; i < D; i += 32)
    dxr[i] = st<T>(ld(gr + i) * weight<T>(w, i) * rstd - c * ld(xr + i));
}

// grid (ceil(D/32), nblk), block (32, 8): partial[b][j] = sum over block b's rows of dy*x*rstd.
template <typename T>
__global__ void rms_norm_dw_partial_kernel(const T* __restrict__ dy, const T* __restrict__ x,
                                           const typename Acc<T>::type* __restrict__ rstd_in,
                                           typename Acc<T>::type* __restrict__ partial, long long rows, long long D,
                                           long long rows_per_blk) {
  using A = typename Acc<T>::type;
  KK_SHARED(A, sm, [8][33]);
  const long long j = (long long)blockIdx.x * 32 + threadIdx.x;
  const long long r0 = (long long)blockIdx.y * rows_per_blk;
  const long long r1 = min(rows, r0 + rows_per_blk);
  A acc = 0;
  if (j < D) {
    for (long long r = r0 + threadIdx.y; r < r1; r += 8) acc += ld(dy + r * D + j) * ld(x + r * D + j) * rstd_in[r];
  }
  sm[threadIdx.y][threadIdx.x] = acc;
  __syncthreads();
  if (threadIdx.y == 0 && j < D) {
    A s = 0;
    for (int k = 0; k < 8; ++k) s += sm[k][threadIdx.x];
    partial[blockIdx.y * D + j] = s;
  }
}

template <typename T, typename W>
__global__ void rms_norm_dw_reduce_kernel(const typename Acc<T>::type* partial, W* dw, long long nblk, long long D) {
  using A = typename Acc<T>::type;
  const long long j = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (j >= D) return;
  A s = 0;
  for (long long b = 0; b < nblk; ++b) s += partial[b * D + j];
  if constexpr (sizeof(W) == 8) dw[j] = s;
  else dw[j] = cuda::store_cast<W>(float(s));
}

template <typename T, typename W>
void fwd(const RmsNormFwdParams& p, cudaStream_t s) {
  KK_LAUNCH(cuda::blocks_for(p.rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, s, rms_norm_fwd_kernel<T, W>)(
      static_cast<const T*>(p.x), static_cast<const W*>(p.w), static_cast<T*>(p.y),
      static_cast<typename Acc<T>::type*>(p.rstd), p.rows, p.dim, p.eps);
}

template <typename T, typename W>
void bwd(const RmsNormBwdParams& p, cudaStream_t s) {
  using A = typename Acc<T>::type;
  const A* rstd = static_cast<const A*>(p.rstd);
  KK_LAUNCH(cuda::blocks_for(p.rows, kWarpsPerBlock), 32 * kWarpsPerBlock, 0, s, rms_norm_dx_kernel<T, W>)(
      static_cast<const T*>(p.dy), static_cast<const T*>(p.x), static_cast<const W*>(p.w), rstd,
      static_cast<T*>(p.dx), p.rows, p.dim);
  if (!p.dw) return;
  const long long nblk = rms_norm_dw_blocks(p.rows);
  const long long rows_per_blk = (p.rows + nblk - 1) / nblk;
  A* partial = static_cast<A*>(p.dw_partial);
  KK_LAUNCH(dim3(cuda::blocks_for(p.dim, 32), unsigned(nblk)), dim3(32, 8), 0, s, rms_norm_dw_partial_kernel<T>)(
      static_cast<const T*>(p.dy), static_cast<const T*>(p.x), rstd, partial, p.rows, p.dim, rows_per_blk);
  KK_LAUNCH(cuda::blocks_for(p.dim, 256), 256, 0, s, rms_norm_dw_reduce_kernel<T, W>)(partial, static_cast<W*>(p.dw), nblk, p.dim);
}

template <template <typename, typename> class Fn, typename P>
void dispatch(const P& p, cudaStream_t s) {
  const bool same = p.wdtype == p.dtype || p.w == nullptr;
  switch (p.dtype) {
    case DType::f64: if (same) return Fn<double, double>::run(p, s); break;
    case DType::f32: return Fn<float, float>::run(p, s);
    case DType::bf16: return same ? Fn<__nv_bfloat16, __nv_bfloat16>::run(p, s) : Fn<__nv_bfloat16, float>::run(p, s);
    case DType::f16: return same ? Fn<__half, __half>::run(p, s) : Fn<__half, float>::run(p, s);
  }
  throw std::invalid_argument("rms_norm: unsupported dtype combination");
}

template <typename T, typename W> struct Fwd { static void run(const RmsNormFwdParams& p, cudaStream_t s) { fwd<T, W>(p, s); } };
template <typename T, typename W> struct Bwd { static void run(const RmsNormBwdParams& p, cudaStream_t s) { bwd<T, W>(p, s); } };

}  // namespace

void rms_norm_fwd_cuda(const RmsNormFwdParams& p, int device, intptr_t stream) {
  if (p.rows == 0) return;
  cuda::DeviceGuard guard(device);
  dispatch<Fwd>(p, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "rms_norm forward launch");
}

void rms_norm_bwd_cuda(const RmsNormBwdParams& p, int device, intptr_t stream) {
  if (p.rows == 0) return;
  cuda::DeviceGuard guard(device);
  dispatch<Bwd>(p, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "rms_norm backward launch");
}

}  // namespace kernkit
