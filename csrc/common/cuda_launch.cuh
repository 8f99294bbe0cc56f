// The two spellings that differ between the nvcc build and the simt build (csrc/simt): kernel
// launches and shared-memory declarations. Kernel code uses only these macros, so one source
// compiles in both.
//
//   KK_LAUNCH(grid, block, smem_bytes, stream, kernel<T>)(args...);
//   KK_SHARED(float, tile, [64][65]);          // __shared__ float tile[64][65];
//   KK_DYNAMIC_SHARED(float, buf);             // extern __shared__ float buf[]; (smem_bytes of the launch)
#pragma once

#ifdef KK_SIMT
#define KK_LAUNCH(grid, block, smem, stream, ...)                                                       \
  ::kk_simt::make_launch(::kk_simt::LaunchSpec{#__VA_ARGS__, __PRETTY_FUNCTION__, __FILE__, __LINE__, dim3(grid), dim3(block), \
                                               size_t(smem), nullptr, nullptr, nullptr},               \
                         &__VA_ARGS__)
#define KK_SHARED(T, name, dims)                                                                   \
  static thread_local ::kk_simt::SharedSlot name##_kk_slot;                                        \
  T(&name) dims = *static_cast<T(*) dims>(                                                         \
      ::kk_simt::shared_alloc(name##_kk_slot, sizeof(T dims), alignof(T), __FILE__, __LINE__))
#define KK_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::kk_simt::dynamic_shared())
#else
#define KK_LAUNCH(grid, block, smem, stream, ...) __VA_ARGS__<<<grid, block, smem, stream>>>
#define KK_SHARED(T, name, dims) __shared__ T name dims
#define KK_DYNAMIC_SHARED(T, name)                        \
  extern __shared__ __align__(16) unsigned char kk_dynamic_smem_[]; \
  T* name = reinterpret_cast<T*>(kk_dynamic_smem_)
#endif
