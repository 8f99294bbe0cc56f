// Small CUDA helpers shared by the op families' .cu files.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <stdexcept>
#include <string>

#include "common/cuda_launch.cuh"
#include "common/dtype.h"

namespace kernkit {
namespace cuda {

inline void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)
    throw std::runtime_error(std::string("kernkit CUDA error in ") + what + ": " + cudaGetErrorString(err));
}

// Makes `device` current for the scope (kernels launch on the tensors' device).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device) {
    check(cudaGetDevice(&prev_), "cudaGetDevice");
    if (prev_ != device) check(cudaSetDevice(device), "cudaSetDevice");
  }
  ~DeviceGuard() {
    int cur = -1;
    if (cudaGetDevice(&cur) == cudaSuccess && cur != prev_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
};

// Device-side conversions to/from fp32 for the storage types used in kernels.
__device__ __forceinline__ float load_f(const float* p) { return *p; }
__device__ __forceinline__ float load_f(const double* p) { return float(*p); }
__device__ __forceinline__ float load_f(const __half* p) { return __half2float(*p); }
__device__ __forceinline__ float load_f(const __nv_bfloat16* p) { return __bfloat162float(*p); }

template <typename T> __device__ __forceinline__ T store_cast(float x);
template <> __device__ __forceinline__ float store_cast<float>(float x) { return x; }
template <> __device__ __forceinline__ __half store_cast<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 store_cast<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Accumulation type of a storage type (fp64 stays fp64, everything else fp32), and
// loads/stores that convert through it.
template <typename T> struct AccOf { using type = float; };
template <> struct AccOf<double> { using type = double; };
template <typename T> __device__ __forceinline__ typename AccOf<T>::type ld(const T* p) { return load_f(p); }
__device__ __forceinline__ double ld(const double* p) { return *p; }
template <typename T> __device__ __forceinline__ T st(typename AccOf<T>::type v) { return store_cast<T>(v); }
template <> __device__ __forceinline__ double st<double>(double v) { return v; }

template <typename T>
__device__ __forceinline__ T warp_sum(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

template <typename T>
__device__ __forceinline__ T warp_max(T v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

inline unsigned blocks_for(long long n, int per_block) { return unsigned((n + per_block - 1) / per_block); }

}  // namespace cuda
}  // namespace kernkit
