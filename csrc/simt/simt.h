// simt: kernkit's CUDA kernels compiled by the host C++ compiler and run on the CPU, one fiber per
// CUDA thread. This header is pre-included (-include) in every emulated translation unit; the
// replacement <cuda_runtime.h>, <cuda_fp16.h> and <cuda_bf16.h> in csrc/simt/include include it too.
// It provides the CUDA C++ device dialect (keywords, built-in variables, vector types, intrinsics,
// barriers, warp collectives, atomics) on top of the runtime in runtime.cpp, which runs blocks on
// OS worker threads and checks barrier use, data races, shared-memory bounds and initialisation.
//
// Call sites: every barrier and collective takes the caller's file and line through default
// arguments (__builtin_FILE/__builtin_LINE evaluate at the call site), so reports name the line
// of kernel code, not this header.
#pragma once
#define KK_SIMT 1

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>
#include <vector>

// ---------------------------------------------------------------------------------------------
// Keywords
// ---------------------------------------------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __constant__ static
#define __align__(n) alignas(n)
#define __grid_constant__
// Shared memory must be declared with KK_SHARED / KK_DYNAMIC_SHARED (common/cuda_launch.cuh) so the
// emulator can give each block its own copy and check bounds and initialisation.
#define __shared__ KK_SHARED_macro_required_for_shared_memory_under_simt
#define KK_SITE_ARGS const char *kk_file = __builtin_FILE(), int kk_line = __builtin_LINE()

// ---------------------------------------------------------------------------------------------
// Built-in variables and vector types
// ---------------------------------------------------------------------------------------------
struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
  constexpr dim3(uint3 v) : x(v.x), y(v.y), z(v.z) {}
  constexpr operator uint3() const { return uint3{x, y, z}; }
};

namespace kk_simt {
uint3 thread_idx();
uint3 block_idx();
dim3 block_dim();
dim3 grid_dim();
}  // namespace kk_simt

#define threadIdx (::kk_simt::thread_idx())
#define blockIdx (::kk_simt::block_idx())
#define blockDim (::kk_simt::block_dim())
#define gridDim (::kk_simt::grid_dim())
#define warpSize 32

#define KK_VEC2(T, N, A) struct alignas(A) N##2 { T x, y; }; \
  inline N##2 make_##N##2(T x, T y) { return N##2{x, y}; }
#define KK_VEC4(T, N, A) struct alignas(A) N##4 { T x, y, z, w; }; \
  inline N##4 make_##N##4(T x, T y, T z, T w) { return N##4{x, y, z, w}; }
KK_VEC2(float, float, 8) KK_VEC4(float, float, 16)
KK_VEC2(int, int, 8) KK_VEC4(int, int, 16)
KK_VEC2(unsigned, uint, 8) KK_VEC4(unsigned, uint, 16)
KK_VEC2(double, double, 16) KK_VEC4(double, double, 16)
KK_VEC2(short, short, 4) KK_VEC4(short, short, 8)
KK_VEC2(unsigned short, ushort, 4) KK_VEC4(unsigned short, ushort, 8)
KK_VEC2(signed char, char, 2) KK_VEC4(signed char, char, 4)
KK_VEC2(unsigned char, uchar, 2) KK_VEC4(unsigned char, uchar, 4)
KK_VEC2(long long, longlong, 16) KK_VEC2(unsigned long long, ulonglong, 16)
#undef KK_VEC2
#undef KK_VEC4
inline uint3 make_uint3(unsigned x, unsigned y, unsigned z) { return uint3{x, y, z}; }

// ---------------------------------------------------------------------------------------------
// Runtime interface (runtime.cpp)
// ---------------------------------------------------------------------------------------------
namespace kk_simt {

// Block barriers. id 0 with count 0 is __syncthreads (every thread of the block).
void barrier(int id, int count, const char* file, int line);
int barrier_reduce(int kind, int pred, const char* file, int line);  // __syncthreads_count/and/or

// A warp collective: every lane named in `mask` calls it with the same `what` (the intrinsic) and
// mask; when the last one arrives, `fn` runs once with every participant's in/out pointers
// (indexed by lane; null for lanes outside the mask) and then all of them continue. Inside `fn`,
// note_lane_access() reports the memory a lane's part of the collective touches (ldmatrix rows).
struct Lanes {
  const void* in[32];
  void* out[32];
};
using WarpFn = void (*)(const Lanes& lanes, unsigned mask);
void warp_collective(const char* what, unsigned mask, WarpFn fn, const void* in, void* out, const char* file, int line);
void note_lane_access(int lane, const void* p, size_t bytes, bool write);
// Memory touched by the calling thread outside instrumented code (cp.async, atomics).
void note_access(const void* p, size_t bytes, bool write, const char* file, int line);
unsigned lane_id();
unsigned active_mask();  // lanes of the calling warp that have not exited

// cp.async: queued per thread, performed when a wait_group makes them visible (the latest moment
// a GPU may complete them), so a read before the wait sees stale or uninitialised shared memory.
void cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line);
void cp_async_commit();
void cp_async_wait(int pending_groups_allowed);

// Shared memory. Each KK_SHARED declaration site has a slot; the first thread of a block to reach
// it reserves the block's copy in the worker's arena (redzones between arrays).
struct SharedSlot {
  unsigned long long block_gen = 0;
  void* ptr = nullptr;
};
void* shared_alloc(SharedSlot& slot, size_t bytes, size_t align, const char* file, int line);
void* dynamic_shared();

// Atomics (out of line: they really are atomic across worker threads, and stay uninstrumented).
enum AtomicOp : int { kAdd, kSub, kMax, kMin, kExch, kCas, kAnd, kOr, kXor, kInc, kDec };
template <typename T> T atomic_rmw(T* p, int op, T v, T cmp, const char* file, int line);

[[noreturn]] void fail_user(const char* kind, const char* msg, const char* file, int line);
void yield_point();  // a scheduling point (used by __nanosleep); also polls the watchdog

// Launch
struct LaunchSpec {
  const char* name;     // the kernel as written at the launch site, e.g. "k<T, 4>"
  const char* context;  // __PRETTY_FUNCTION__ there, whose "[with T = float]" names the instance
  const char* file;
  int line;
  dim3 grid, block;
  size_t smem;
  const void* kernel;           // identity for cudaFuncSetAttribute
  void (*run)(const void* bound);
  const void* bound;            // the kernel and its argument copies
};
void launch(const LaunchSpec& spec);
void set_max_dynamic_smem(const void* kernel, int bytes);

template <typename... P>
struct BoundKernel {
  void (*kernel)(P...);
  std::tuple<std::decay_t<P>...> args;
  static void run(const void* self) {
    const BoundKernel* b = static_cast<const BoundKernel*>(self);
    std::tuple<std::decay_t<P>...> copy = b->args;  // each thread gets its own parameter copies
    std::apply(b->kernel, copy);
  }
};

template <typename... P>
struct PendingLaunch {
  LaunchSpec spec;
  void (*kernel)(P...);
  template <typename... A>
  void operator()(A&&... a) const {
    BoundKernel<P...> b{kernel, std::tuple<std::decay_t<P>...>(std::forward<A>(a)...)};
    LaunchSpec s = spec;
    s.kernel = reinterpret_cast<const void*>(kernel);
    s.run = &BoundKernel<P...>::run;
    s.bound = &b;
    launch(s);
  }
};

template <typename... P>
PendingLaunch<P...> make_launch(const LaunchSpec& spec, void (*k)(P...)) { return PendingLaunch<P...>{spec, k}; }

}  // namespace kk_simt

// ---------------------------------------------------------------------------------------------
// Barriers, warp collectives
// ---------------------------------------------------------------------------------------------
inline void __syncthreads(KK_SITE_ARGS) { ::kk_simt::barrier(0, 0, kk_file, kk_line); }
inline int __syncthreads_count(int p, KK_SITE_ARGS) { return ::kk_simt::barrier_reduce(0, p, kk_file, kk_line); }
inline int __syncthreads_and(int p, KK_SITE_ARGS) { return ::kk_simt::barrier_reduce(1, p, kk_file, kk_line); }
inline int __syncthreads_or(int p, KK_SITE_ARGS) { return ::kk_simt::barrier_reduce(2, p, kk_file, kk_line); }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline void __threadfence_system() {}
inline unsigned __activemask() { return ::kk_simt::active_mask(); }
inline void __nanosleep(unsigned) { ::kk_simt::yield_point(); }

namespace kk_simt {
struct ShflIn {
  unsigned long long v;
  int kind, arg, width;
};
void shfl_fn(const Lanes& l, unsigned mask);
struct VoteIn { int kind; unsigned long long v; };
void vote_fn(const Lanes& l, unsigned mask);
inline void syncwarp_fn(const Lanes&, unsigned) {}

template <typename T>
T shfl(unsigned mask, T var, int kind, int arg, int width, const char* what, const char* file, int line) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffles move at most 8 bytes");
  ShflIn in{0, kind, arg, width};
  std::memcpy(&in.v, &var, sizeof(T));
  unsigned long long out = 0;
  warp_collective(what, mask, &shfl_fn, &in, &out, file, line);
  T r;
  std::memcpy(&r, &out, sizeof(T));
  return r;
}
inline unsigned long long vote(unsigned mask, int kind, unsigned long long v, const char* what, const char* file,
                               int line) {
  VoteIn in{kind, v};
  unsigned long long out = 0;
  warp_collective(what, mask, &vote_fn, &in, &out, file, line);
  return out;
}
enum { kShflIdx, kShflUp, kShflDown, kShflXor };
enum { kVoteAll, kVoteAny, kVoteBallot, kVoteMatchAny, kVoteMatchAll, kRedAdd, kRedMin, kRedMax, kRedAnd, kRedOr,
       kRedXor, kRedMinU, kRedMaxU };
template <typename T> unsigned long long bits(T v) {
  unsigned long long b = 0;
  std::memcpy(&b, &v, sizeof(T));
  return b;
}
}  // namespace kk_simt

inline void __syncwarp(unsigned mask = 0xffffffffu, KK_SITE_ARGS) {
  ::kk_simt::warp_collective("__syncwarp", mask, &::kk_simt::syncwarp_fn, nullptr, nullptr, kk_file, kk_line);
}
template <typename T> T __shfl_sync(unsigned m, T v, int src, int w = 32, KK_SITE_ARGS) {
  return ::kk_simt::shfl(m, v, ::kk_simt::kShflIdx, src, w, "__shfl_sync", kk_file, kk_line);
}
template <typename T> T __shfl_up_sync(unsigned m, T v, unsigned d, int w = 32, KK_SITE_ARGS) {
  return ::kk_simt::shfl(m, v, ::kk_simt::kShflUp, int(d), w, "__shfl_up_sync", kk_file, kk_line);
}
template <typename T> T __shfl_down_sync(unsigned m, T v, unsigned d, int w = 32, KK_SITE_ARGS) {
  return ::kk_simt::shfl(m, v, ::kk_simt::kShflDown, int(d), w, "__shfl_down_sync", kk_file, kk_line);
}
template <typename T> T __shfl_xor_sync(unsigned m, T v, int x, int w = 32, KK_SITE_ARGS) {
  return ::kk_simt::shfl(m, v, ::kk_simt::kShflXor, x, w, "__shfl_xor_sync", kk_file, kk_line);
}
inline int __all_sync(unsigned m, int p, KK_SITE_ARGS) {
  return int(::kk_simt::vote(m, ::kk_simt::kVoteAll, p != 0, "__all_sync", kk_file, kk_line));
}
inline int __any_sync(unsigned m, int p, KK_SITE_ARGS) {
  return int(::kk_simt::vote(m, ::kk_simt::kVoteAny, p != 0, "__any_sync", kk_file, kk_line));
}
inline unsigned __ballot_sync(unsigned m, int p, KK_SITE_ARGS) {
  return unsigned(::kk_simt::vote(m, ::kk_simt::kVoteBallot, p != 0, "__ballot_sync", kk_file, kk_line));
}
template <typename T> unsigned __match_any_sync(unsigned m, T v, KK_SITE_ARGS) {
  return unsigned(::kk_simt::vote(m, ::kk_simt::kVoteMatchAny, ::kk_simt::bits(v), "__match_any_sync", kk_file, kk_line));
}
template <typename T> unsigned __match_all_sync(unsigned m, T v, int* pred, KK_SITE_ARGS) {
  const unsigned r = unsigned(::kk_simt::vote(m, ::kk_simt::kVoteMatchAll, ::kk_simt::bits(v), "__match_all_sync",
                                              kk_file, kk_line));
  *pred = r != 0;
  return r;
}
#define KK_SIMT_REDUCE(name, kind, T)                                                                   \
  inline T name(unsigned m, T v, KK_SITE_ARGS) {                                                        \
    return T(::kk_simt::vote(m, kind, (unsigned long long)(long long)v, #name, kk_file, kk_line));      \
  }
KK_SIMT_REDUCE(__reduce_add_sync, ::kk_simt::kRedAdd, unsigned)
KK_SIMT_REDUCE(__reduce_add_sync, ::kk_simt::kRedAdd, int)
KK_SIMT_REDUCE(__reduce_min_sync, ::kk_simt::kRedMin, int)
KK_SIMT_REDUCE(__reduce_max_sync, ::kk_simt::kRedMax, int)
KK_SIMT_REDUCE(__reduce_min_sync, ::kk_simt::kRedMinU, unsigned)
KK_SIMT_REDUCE(__reduce_max_sync, ::kk_simt::kRedMaxU, unsigned)
KK_SIMT_REDUCE(__reduce_and_sync, ::kk_simt::kRedAnd, unsigned)
KK_SIMT_REDUCE(__reduce_or_sync, ::kk_simt::kRedOr, unsigned)
KK_SIMT_REDUCE(__reduce_xor_sync, ::kk_simt::kRedXor, unsigned)
#undef KK_SIMT_REDUCE

// ---------------------------------------------------------------------------------------------
// Atomics
// ---------------------------------------------------------------------------------------------
#define KK_SIMT_ATOMIC(name, op, T)                                                               \
  inline T name(T* p, T v, KK_SITE_ARGS) { return ::kk_simt::atomic_rmw<T>(p, op, v, static_cast<T>(0), kk_file, kk_line); }
#define KK_SIMT_ATOMIC_INT(name, op) \
  KK_SIMT_ATOMIC(name, op, int) KK_SIMT_ATOMIC(name, op, unsigned) KK_SIMT_ATOMIC(name, op, unsigned long long)
KK_SIMT_ATOMIC_INT(atomicAdd, ::kk_simt::kAdd)
KK_SIMT_ATOMIC(atomicAdd, ::kk_simt::kAdd, float)
KK_SIMT_ATOMIC(atomicAdd, ::kk_simt::kAdd, double)
KK_SIMT_ATOMIC(atomicSub, ::kk_simt::kSub, int)
KK_SIMT_ATOMIC(atomicSub, ::kk_simt::kSub, unsigned)
KK_SIMT_ATOMIC_INT(atomicMax, ::kk_simt::kMax)
KK_SIMT_ATOMIC(atomicMax, ::kk_simt::kMax, long long)
KK_SIMT_ATOMIC_INT(atomicMin, ::kk_simt::kMin)
KK_SIMT_ATOMIC(atomicMin, ::kk_simt::kMin, long long)
KK_SIMT_ATOMIC_INT(atomicExch, ::kk_simt::kExch)
KK_SIMT_ATOMIC(atomicExch, ::kk_simt::kExch, float)
KK_SIMT_ATOMIC_INT(atomicAnd, ::kk_simt::kAnd)
KK_SIMT_ATOMIC_INT(atomicOr, ::kk_simt::kOr)
KK_SIMT_ATOMIC_INT(atomicXor, ::kk_simt::kXor)
KK_SIMT_ATOMIC(atomicInc, ::kk_simt::kInc, unsigned)
KK_SIMT_ATOMIC(atomicDec, ::kk_simt::kDec, unsigned)
#undef KK_SIMT_ATOMIC_INT
#undef KK_SIMT_ATOMIC
#define KK_SIMT_CAS(T) \
  inline T atomicCAS(T* p, T cmp, T v, KK_SITE_ARGS) { return ::kk_simt::atomic_rmw<T>(p, ::kk_simt::kCas, v, cmp, kk_file, kk_line); }
KK_SIMT_CAS(int)
KK_SIMT_CAS(unsigned)
KK_SIMT_CAS(unsigned long long)
KK_SIMT_CAS(unsigned short)
#undef KK_SIMT_CAS

// ---------------------------------------------------------------------------------------------
// Math and bit intrinsics (device functions CUDA code calls unqualified)
// ---------------------------------------------------------------------------------------------
using std::abs;
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) { using C = std::common_type_t<A, B>; return C(b) < C(a) ? C(b) : C(a); }
template <typename A, typename B, typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) { using C = std::common_type_t<A, B>; return C(a) < C(b) ? C(b) : C(a); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / std::sqrt(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : (x < 0.0f ? 0.0f : (x > 1.0f ? 1.0f : x)); }
inline float __fmaf_rn(float a, float b, float c) { return std::fma(a, b, c); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline int __float2int_rn(float x) { return int(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return int(x); }
inline int __float2int_rd(float x) { return int(std::floor(x)); }
inline int __float2int_ru(float x) { return int(std::ceil(x)); }
inline unsigned __float2uint_rn(float x) { return unsigned(std::nearbyint(x)); }
inline float __int2float_rn(int x) { return float(x); }
inline float __uint2float_rn(unsigned x) { return float(x); }
inline float __double2float_rn(double x) { return float(x); }
inline int __float_as_int(float x) { int i; std::memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; std::memcpy(&i, &x, 4); return i; }
inline float __int_as_float(int i) { float x; std::memcpy(&x, &i, 4); return x; }
inline float __uint_as_float(unsigned i) { float x; std::memcpy(&x, &i, 4); return x; }
inline long long __double_as_longlong(double x) { long long i; std::memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long i) { double x; std::memcpy(&x, &i, 8); return x; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll((unsigned long long)x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  x = ((x >> 8) & 0x00ff00ffu) | ((x & 0x00ff00ffu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __byte_perm(unsigned x, unsigned y, unsigned s) {
  const unsigned long long v = (unsigned long long)y << 32 | x;
  unsigned r = 0;
  for (int i = 0; i < 4; ++i) r |= unsigned((v >> (8 * ((s >> (4 * i)) & 7))) & 0xff) << (8 * i);
  return r;
}
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) c += int(static_cast<signed char>(a >> (8 * i))) * int(static_cast<signed char>(b >> (8 * i)));
  return c;
}
inline unsigned __dp4a(unsigned a, unsigned b, unsigned c) {
  for (int i = 0; i < 4; ++i) c += ((a >> (8 * i)) & 0xff) * ((b >> (8 * i)) & 0xff);
  return c;
}
inline unsigned __funnelshift_l(unsigned lo, unsigned hi, unsigned s) {
  const unsigned long long v = (unsigned long long)hi << 32 | lo;
  return unsigned((v << (s & 31)) >> 32);
}
inline unsigned __funnelshift_r(unsigned lo, unsigned hi, unsigned s) {
  const unsigned long long v = (unsigned long long)hi << 32 | lo;
  return unsigned(v >> (s & 31));
}
inline unsigned __umulhi(unsigned a, unsigned b) { return unsigned(((unsigned long long)a * b) >> 32); }
inline int __mulhi(int a, int b) { return int(((long long)a * b) >> 32); }
inline int __mul24(int a, int b) { return (a << 8 >> 8) * (b << 8 >> 8); }
template <typename T> inline T __ldg(const T* p) { return *p; }
template <typename T> inline T __ldcs(const T* p) { return *p; }
template <typename T> inline T __ldcg(const T* p) { return *p; }
template <typename T> inline void __stcs(T* p, T v) { *p = v; }
template <typename T> inline void __stcg(T* p, T v) { *p = v; }
long long clock64();
