// simt's stand-in for <cuda_bf16.h>: __nv_bfloat16 / __nv_bfloat162 and their intrinsics, in plain
// C++17 on the core in cuda_fp16.h (kk_simt::fp). Numerics follow the CUDA toolkit's host code:
//  * float -> bf16 rounds exactly in all four modes; every NaN becomes the canonical 0x7fff;
//  * bf16 -> float is the plain 16-bit shift (NaN payload and sign kept, as the toolkit does);
//  * double -> bf16 and integer -> bf16 are rounded once (no double rounding through float);
//  * + - * / in fp32 rounded once, __hfma rounded once (sm_80 fma.rn.bf16), elementary functions in
//    double rounded once.
#pragma once
#include "simt/simt.h"

#include "cuda_fp16.h"

struct alignas(2) __nv_bfloat16_raw {
  unsigned short x;
};
struct alignas(4) __nv_bfloat162_raw {
  unsigned short x;
  unsigned short y;
};

struct alignas(2) __nv_bfloat16 {
  unsigned short __x;  // protected in CUDA; public here (see __half)

  __nv_bfloat16() = default;
  constexpr __nv_bfloat16(const __nv_bfloat16_raw& r) : __x(r.x) {}
  __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) { __x = r.x; return *this; }
  volatile __nv_bfloat16& operator=(const __nv_bfloat16_raw& r) volatile { __x = r.x; return *this; }
  volatile __nv_bfloat16& operator=(const volatile __nv_bfloat16_raw& r) volatile { __x = r.x; return *this; }
  constexpr operator __nv_bfloat16_raw() const { return __nv_bfloat16_raw{__x}; }
  operator __nv_bfloat16_raw() const volatile { return __nv_bfloat16_raw{__x}; }
  explicit __nv_bfloat16(const __half h) : __x(::kk_simt::fp::f32_to_bf16(__half2float(h))) {}
  KK_SIMT_FP16_CLASS_CONVERSIONS(__nv_bfloat16, ::kk_simt::fp::bf16_to_f32, ::kk_simt::fp::f32_to_bf16, 7, 8)
};

struct alignas(4) __nv_bfloat162 {
  __nv_bfloat16 x;
  __nv_bfloat16 y;
  __nv_bfloat162() = default;
  constexpr __nv_bfloat162(const __nv_bfloat16& a, const __nv_bfloat16& b) : x(a), y(b) {}
  constexpr __nv_bfloat162(const __nv_bfloat162_raw& r) : x(__nv_bfloat16_raw{r.x}), y(__nv_bfloat16_raw{r.y}) {}
  __nv_bfloat162& operator=(const __nv_bfloat162_raw& r) {
    x = __nv_bfloat16_raw{r.x};
    y = __nv_bfloat16_raw{r.y};
    return *this;
  }
  constexpr operator __nv_bfloat162_raw() const {
    return __nv_bfloat162_raw{static_cast<__nv_bfloat16_raw>(x).x, static_cast<__nv_bfloat16_raw>(y).x};
  }
};

typedef __nv_bfloat16 nv_bfloat16;
typedef __nv_bfloat162 nv_bfloat162;

static_assert(sizeof(__nv_bfloat16) == 2 && alignof(__nv_bfloat16) == 2, "__nv_bfloat16 layout");
static_assert(sizeof(__nv_bfloat162) == 4 && alignof(__nv_bfloat162) == 4, "__nv_bfloat162 layout");
static_assert(std::is_trivially_copyable<__nv_bfloat16>::value && std::is_trivially_copyable<__nv_bfloat162>::value,
              "__nv_bfloat16 must be trivially copyable");
static_assert(std::is_trivially_default_constructible<__nv_bfloat16>::value &&
                  std::is_trivially_default_constructible<__nv_bfloat162>::value,
              "__nv_bfloat16 default construction must be trivial");
static_assert(std::is_standard_layout<__nv_bfloat16>::value && std::is_standard_layout<__nv_bfloat162>::value,
              "layout");

// Declared in cuda_fp16.h (explicit, like CUDA's): half from bf16, rounded to nearest even.
inline __half::__half(const __nv_bfloat16 f) : __x(::kk_simt::fp::f32_to_f16(::kk_simt::fp::bf16_to_f32(f.__x))) {}

namespace kk_simt {
namespace fp {
template <> struct Fmt<__nv_bfloat16> {
  static constexpr int kM = 7, kE = 8;
  static constexpr unsigned short kOne = 0x3f80u;
  static unsigned short bits(__nv_bfloat16 h) { return static_cast<__nv_bfloat16_raw>(h).x; }
  static __nv_bfloat16 make(unsigned short b) { return __nv_bfloat16(__nv_bfloat16_raw{b}); }
  static float to_f32(__nv_bfloat16 h) { return bf16_to_f32(bits(h)); }
};
}  // namespace fp
}  // namespace kk_simt

KK_SIMT_FP_COMMON(__nv_bfloat16, __nv_bfloat162)

// ---------------------------------------------------------------------------------------------
// __nv_bfloat16 conversions and data movement
// ---------------------------------------------------------------------------------------------
inline __nv_bfloat16 __float2bfloat16(const float a) { return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::f32_to_bf16(a)}); }
inline __nv_bfloat16 __float2bfloat16_rn(const float a) { return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::f32_to_bf16(a)}); }
inline __nv_bfloat16 __float2bfloat16_rz(const float a) {
  return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::f32_to_bf16(a, ::kk_simt::fp::kRZ)});
}
inline __nv_bfloat16 __float2bfloat16_rd(const float a) {
  return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::f32_to_bf16(a, ::kk_simt::fp::kRD)});
}
inline __nv_bfloat16 __float2bfloat16_ru(const float a) {
  return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::f32_to_bf16(a, ::kk_simt::fp::kRU)});
}
inline __nv_bfloat16 __double2bfloat16(const double a) { return __nv_bfloat16(__nv_bfloat16_raw{::kk_simt::fp::round_f64<7, 8>(a)}); }
inline float __bfloat162float(const __nv_bfloat16 a) { return ::kk_simt::fp::bf16_to_f32(static_cast<__nv_bfloat16_raw>(a).x); }
inline __nv_bfloat162 __float2bfloat162_rn(const float a) { const __nv_bfloat16 h = __float2bfloat16_rn(a); return __nv_bfloat162(h, h); }
inline __nv_bfloat162 __floats2bfloat162_rn(const float a, const float b) {
  return __nv_bfloat162(__float2bfloat16_rn(a), __float2bfloat16_rn(b));
}
inline __nv_bfloat162 __float22bfloat162_rn(const float2 a) { return __floats2bfloat162_rn(a.x, a.y); }
inline float2 __bfloat1622float2(const __nv_bfloat162 a) { return make_float2(__bfloat162float(a.x), __bfloat162float(a.y)); }
inline float __low2float(const __nv_bfloat162 a) { return __bfloat162float(a.x); }
inline float __high2float(const __nv_bfloat162 a) { return __bfloat162float(a.y); }
inline __nv_bfloat16 __low2bfloat16(const __nv_bfloat162 a) { return a.x; }
inline __nv_bfloat16 __high2bfloat16(const __nv_bfloat162 a) { return a.y; }
inline __nv_bfloat162 __low2bfloat162(const __nv_bfloat162 a) { return __nv_bfloat162(a.x, a.x); }
inline __nv_bfloat162 __high2bfloat162(const __nv_bfloat162 a) { return __nv_bfloat162(a.y, a.y); }
inline __nv_bfloat162 __halves2bfloat162(const __nv_bfloat16 a, const __nv_bfloat16 b) { return __nv_bfloat162(a, b); }
inline __nv_bfloat162 __bfloat162bfloat162(const __nv_bfloat16 a) { return __nv_bfloat162(a, a); }
inline __nv_bfloat162 __lows2bfloat162(const __nv_bfloat162 a, const __nv_bfloat162 b) { return __nv_bfloat162(a.x, b.x); }
inline __nv_bfloat162 __highs2bfloat162(const __nv_bfloat162 a, const __nv_bfloat162 b) { return __nv_bfloat162(a.y, b.y); }
inline __nv_bfloat162 make_bfloat162(const __nv_bfloat16 x, const __nv_bfloat16 y) { return __nv_bfloat162(x, y); }

inline short __bfloat16_as_short(const __nv_bfloat16 h) { return static_cast<short>(static_cast<__nv_bfloat16_raw>(h).x); }
inline unsigned short __bfloat16_as_ushort(const __nv_bfloat16 h) { return static_cast<__nv_bfloat16_raw>(h).x; }
inline __nv_bfloat16 __short_as_bfloat16(const short i) { return __nv_bfloat16(__nv_bfloat16_raw{static_cast<unsigned short>(i)}); }
inline __nv_bfloat16 __ushort_as_bfloat16(const unsigned short i) { return __nv_bfloat16(__nv_bfloat16_raw{i}); }

KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162int, int)
KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162uint, unsigned int)
KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162short, short)
KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162ushort, unsigned short)
KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162ll, long long)
KK_SIMT_FP_TO_INT(__nv_bfloat16, __bfloat162ull, unsigned long long)
inline signed char __bfloat162char_rz(const __nv_bfloat16 h) { return static_cast<signed char>(h); }
inline unsigned char __bfloat162uchar_rz(const __nv_bfloat16 h) { return static_cast<unsigned char>(h); }
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __int2bfloat16, int)
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __uint2bfloat16, unsigned int)
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __short2bfloat16, short)
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __ushort2bfloat16, unsigned short)
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __ll2bfloat16, long long)
KK_SIMT_FP_FROM_INT(__nv_bfloat16, __ull2bfloat16, unsigned long long)

#define CUDART_INF_BF16 __ushort_as_bfloat16((unsigned short)0x7F80U)
#define CUDART_NAN_BF16 __ushort_as_bfloat16((unsigned short)0x7FFFU)
#define CUDART_MIN_DENORM_BF16 __ushort_as_bfloat16((unsigned short)0x0001U)
#define CUDART_MAX_NORMAL_BF16 __ushort_as_bfloat16((unsigned short)0x7F7FU)
#define CUDART_NEG_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x8000U)
#define CUDART_ZERO_BF16 __ushort_as_bfloat16((unsigned short)0x0000U)
#define CUDART_ONE_BF16 __ushort_as_bfloat16((unsigned short)0x3F80U)
