// simt's stand-in for <cuda_fp16.h>: the __half / __half2 types and the intrinsics device code uses,
// in plain C++17 for the host compiler (no inline asm, no target intrinsics).
//
// Numerics follow the CUDA toolkit's host implementation bit for bit:
//  * float -> half rounds exactly (all four modes), overflows to inf (or the largest finite value
//    for directed modes), and turns every NaN into the canonical 0x7fff;
//  * half -> float is exact, every NaN becomes 0x7fffffff (the toolkit drops sign and payload);
//  * + - * / are done in fp32 and rounded once to half (exactly what a correctly rounded half op
//    gives, since fp32 has more than 2*11+2 bits); NaN results are 0x7fff;
//  * __hfma rounds a*b+c exactly once (sm_80 fma.rn.f16 semantics);
//  * hexp/hlog/hsqrt/... are computed in double and rounded once, i.e. correctly rounded (the GPU
//    uses fp32 approximations, with fix-up tables for half, so it can differ in the last bit);
//  * conversions work on bit patterns only, so a process-wide FTZ/DAZ mode (e.g. set by a library
//    built with -ffast-math) cannot change them; fp32 arithmetic on subnormals would still flush.
// The class interface mirrors CUDA's host-compiler one: implicit conversions from float, double and
// every integer type, to float, every integer type (round toward zero, saturating) and bool. As with
// CUDA, mixed expressions such as `h * 2.0f` or `acc += h` are ambiguous; convert explicitly.
// cuda_bf16.h builds on the same core (kk_simt::fp) for __nv_bfloat16.
#pragma once
#include "simt/simt.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

struct alignas(2) __half_raw {
  unsigned short x;
};
struct alignas(4) __half2_raw {
  unsigned short x;
  unsigned short y;
};

struct __half;
struct __half2;
struct __nv_bfloat16;

// ---------------------------------------------------------------------------------------------
// Core: exact rounding to 16-bit binary formats (M stored mantissa bits, E exponent bits)
// ---------------------------------------------------------------------------------------------
namespace kk_simt {
namespace fp {

enum Mode : int { kRN = 0, kRZ = 1, kRD = 2, kRU = 3 };

inline std::uint32_t f32_bits(float f) { std::uint32_t u; std::memcpy(&u, &f, 4); return u; }
inline float f32_from(std::uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
inline std::uint64_t f64_bits(double d) { std::uint64_t u; std::memcpy(&u, &d, 8); return u; }

// Rounds the finite nonzero value sig * 2^(e-52), sig in [2^52, 2^53), to the 16-bit format.
// `tail` (RN only) says where the exact value lies relative to that value when it is itself an
// already-rounded double: +1 farther from zero, -1 closer to zero, 0 exactly it. It only matters when
// the value sits exactly halfway between two 16-bit values (a double is off from the exact result by
// far less than half a 16-bit ulp, so it cannot be on the other side of any other boundary).
template <int M, int E>
inline unsigned short round_sig(bool neg, int e, std::uint64_t sig, Mode mode, int tail) {
  constexpr int kBias = (1 << (E - 1)) - 1;
  constexpr std::uint64_t kInf = std::uint64_t((1u << E) - 1u) << M;
  std::uint64_t mag = 0, rem = 0, half = 1;  // truncated magnitude; discarded part vs. half an ulp
  if (e > kBias) {
    mag = kInf - 1, rem = 3, half = 2;  // |x| >= 2^(bias+1): past the overflow threshold in any mode
  } else if (e >= 1 - kBias) {
    constexpr int sh = 52 - M;
    mag = (std::uint64_t(e + kBias - 1) << M) + (sig >> sh);  // the implicit bit bumps the exponent
    rem = sig & ((std::uint64_t(1) << sh) - 1);
    half = std::uint64_t(1) << (sh - 1);
  } else {
    const int sh = 52 - M + (1 - kBias) - e;  // subnormal result: grid 2^(1-bias-M)
    if (sh > 54) {
      rem = 1, half = 2;  // below half the smallest subnormal
    } else {
      mag = sig >> sh;
      rem = sig & ((std::uint64_t(1) << sh) - 1);
      half = std::uint64_t(1) << (sh - 1);
    }
  }
  bool up = false;
  switch (mode) {
    case kRN: up = rem > half || (rem == half && (tail > 0 || (tail == 0 && (mag & 1u) != 0))); break;
    case kRZ: up = false; break;
    case kRD: up = neg && rem != 0; break;
    case kRU: up = !neg && rem != 0; break;
  }
  return static_cast<unsigned short>((neg ? 0x8000u : 0u) | (mag + (up ? 1u : 0u)));
}

// Rounds a double to the 16-bit format (bit manipulation only, so FTZ/DAZ modes cannot interfere).
// Every NaN gives the canonical 0x7fff.
template <int M, int E>
inline unsigned short round_f64(double d, Mode mode = kRN, int tail = 0) {
  constexpr std::uint64_t kInf = std::uint64_t((1u << E) - 1u) << M;
  const std::uint64_t u = f64_bits(d);
  const bool neg = (u >> 63) != 0;
  const std::uint64_t a = u & 0x7fffffffffffffffULL;
  if (a > 0x7ff0000000000000ULL) return 0x7fffu;
  if (a == 0x7ff0000000000000ULL || a == 0) return static_cast<unsigned short>((neg ? 0x8000u : 0u) | (a ? kInf : 0));
  if (a < 0x0010000000000000ULL) return round_sig<M, E>(neg, -1100, std::uint64_t(1) << 52, mode, 0);  // subnormal: tiny
  return round_sig<M, E>(neg, int(a >> 52) - 1023, (a & 0x000fffffffffffffULL) | 0x0010000000000000ULL, mode, tail);
}

// Rounds a float to the 16-bit format from its bits alone.
template <int M, int E>
inline unsigned short round_f32(float f, Mode mode = kRN) {
  constexpr std::uint64_t kInf = std::uint64_t((1u << E) - 1u) << M;
  const std::uint32_t u = f32_bits(f);
  const bool neg = (u >> 31) != 0;
  const std::uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return 0x7fffu;
  if (a == 0x7f800000u || a == 0) return static_cast<unsigned short>((neg ? 0x8000u : 0u) | (a ? kInf : 0));
  if (a >= 0x00800000u)
    return round_sig<M, E>(neg, int(a >> 23) - 127, std::uint64_t((a & 0x7fffffu) | 0x800000u) << 29, mode, 0);
  const int top = 31 - __builtin_clz(a);  // float subnormal: a * 2^-149, normalise
  return round_sig<M, E>(neg, top - 149, std::uint64_t(a) << (52 - top), mode, 0);
}

// float -> double without the FPU (exact; immune to DAZ).
inline double widen(float f) {
  const std::uint32_t u = f32_bits(f);
  const std::uint64_t sign = std::uint64_t(u >> 31) << 63;
  const std::uint32_t a = u & 0x7fffffffu;
  std::uint64_t r;
  if (a >= 0x7f800000u) r = sign | 0x7ff0000000000000ULL | (std::uint64_t(a & 0x7fffffu) << 29);
  else if (a >= 0x00800000u) r = sign | (std::uint64_t((a >> 23) + 896u) << 52) | (std::uint64_t(a & 0x7fffffu) << 29);
  else if (a == 0) r = sign;
  else {
    const int top = 31 - __builtin_clz(a);
    r = sign | (std::uint64_t(top - 149 + 1023) << 52) | ((std::uint64_t(a) << (52 - top)) & 0x000fffffffffffffULL);
  }
  double d;
  std::memcpy(&d, &r, 8);
  return d;
}

// 64-bit integer magnitude to double, rounded to odd (sticky) so a second rounding to <= 51 bits is exact.
inline double u64_to_f64_odd(std::uint64_t m) {
  if (m < (std::uint64_t(1) << 53)) return double(m);
  const int k = 11 - __builtin_clzll(m);  // bit length - 53
  std::uint64_t top = m >> k;
  if ((m & ((std::uint64_t(1) << k) - 1)) != 0) top |= 1u;
  return std::ldexp(double(top), k);
}

template <int M, int E, typename I>
inline unsigned short round_int(I v, Mode mode) {
  if constexpr (sizeof(I) <= 4) {
    return round_f64<M, E>(double(v), mode);
  } else {
    bool neg = false;
    std::uint64_t mag = static_cast<std::uint64_t>(v);
    if constexpr (std::is_signed<I>::value) {
      neg = v < 0;
      if (neg) mag = std::uint64_t(0) - mag;
    }
    const double d = u64_to_f64_odd(mag);
    return round_f64<M, E>(neg ? -d : d, mode);
  }
}

// a*b+c rounded once: the product of two <= 24-bit values is exact in double, and TwoSum recovers
// the rounding error of the double addition, which breaks a tie the double sum may have landed on.
template <int M, int E>
inline unsigned short fma_round(float a, float b, float c) {
  const double p = widen(a) * widen(b);
  const double dc = widen(c);
  const double s = p + dc;
  if (!std::isfinite(s)) return round_f64<M, E>(s);
  const double bb = s - p;
  const double t = (p - (s - bb)) + (dc - bb);
  const int tail = t == 0.0 ? 0 : ((t > 0.0) == (s > 0.0) ? 1 : -1);
  return round_f64<M, E>(s, kRN, tail);
}

inline unsigned short f32_to_f16(float f, Mode mode = kRN) { return round_f32<10, 5>(f, mode); }
inline unsigned short f32_to_bf16(float f, Mode mode = kRN) { return round_f32<7, 8>(f, mode); }

inline float f16_to_f32(unsigned short h) {
  const std::uint32_t sign = std::uint32_t(h & 0x8000u) << 16;
  const std::uint32_t e = (h >> 10) & 0x1fu;
  const std::uint32_t m = h & 0x3ffu;
  if (e == 0x1fu) return f32_from(m != 0 ? 0x7fffffffu : (sign | 0x7f800000u));
  if (e == 0) return f32_from(sign | f32_bits(float(m) * 0x1p-24f));  // exact; m == 0 gives +0
  return f32_from(sign | ((e + 112u) << 23) | (m << 13));
}
inline float bf16_to_f32(unsigned short h) { return f32_from(std::uint32_t(h) << 16); }

// Round a float holding an integral-or-not 16-bit value to an integral float (exact, no FP env use).
inline float round_integral(float f, Mode mode) {
  if (!(std::fabs(f) < 8388608.0f)) return f;  // NaN, inf, or already integral
  const float fl = std::floor(f);
  switch (mode) {
    case kRZ: return std::trunc(f);
    case kRD: return fl;
    case kRU: return std::ceil(f);
    case kRN: {
      const float d = f - fl;  // exact
      if (d > 0.5f || (d == 0.5f && std::fmod(fl, 2.0f) != 0.0f)) return fl + 1.0f;
      return fl;
    }
  }
  return f;
}

// Float -> integer as the CUDA conversions do: saturating, NaN gives `nan_value`.
template <typename I>
inline I to_int(float f, Mode mode, I nan_value) {
  if (f != f) return nan_value;
  const float r = round_integral(f, mode);
  const double hi = double(std::numeric_limits<I>::max());
  const double lo = double(std::numeric_limits<I>::min());
  if (double(r) >= hi) return std::numeric_limits<I>::max();
  if (double(r) <= lo) return std::numeric_limits<I>::min();
  return static_cast<I>(r);
}
template <typename I> inline I to_int_nan_value() {
  if constexpr (sizeof(I) == 8) return static_cast<I>(0x8000000000000000ULL);
  return I(0);
}

// Per-type glue, specialised for __half here and __nv_bfloat16 in cuda_bf16.h.
template <typename T> struct Fmt;

}  // namespace fp
}  // namespace kk_simt

// ---------------------------------------------------------------------------------------------
// __half, __half2
// ---------------------------------------------------------------------------------------------
#define KK_SIMT_FP16_CLASS_CONVERSIONS(T, TO_F32, FROM_F32, M, E)                                       \
  T(const float f) : __x(FROM_F32(f)) {}                                                               \
  T(const double f) : __x(::kk_simt::fp::round_f64<M, E>(f)) {}                                        \
  T(const short v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}                    \
  T(const unsigned short v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}           \
  T(const int v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}                      \
  T(const unsigned int v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}             \
  T(const long v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}                     \
  T(const unsigned long v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}            \
  T(const long long v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}                \
  T(const unsigned long long v) : __x(::kk_simt::fp::round_int<M, E>(v, ::kk_simt::fp::kRN)) {}       \
  operator float() const { return TO_F32(__x); }                                                       \
  template <typename I> I kk_to_int() const {                                                          \
    return ::kk_simt::fp::to_int<I>(TO_F32(__x), ::kk_simt::fp::kRZ, ::kk_simt::fp::to_int_nan_value<I>()); \
  }                                                                                                    \
  operator signed char() const { return kk_to_int<signed char>(); }                                    \
  operator unsigned char() const { return kk_to_int<unsigned char>(); }                                \
  operator char() const {                                                                              \
    return std::is_signed<char>::value ? char(kk_to_int<signed char>()) : char(kk_to_int<unsigned char>()); \
  }                                                                                                    \
  operator short() const { return kk_to_int<short>(); }                                                \
  operator unsigned short() const { return kk_to_int<unsigned short>(); }                              \
  operator int() const { return kk_to_int<int>(); }                                                    \
  operator unsigned int() const { return kk_to_int<unsigned int>(); }                                  \
  operator long() const { return kk_to_int<long>(); }                                                  \
  operator unsigned long() const { return kk_to_int<unsigned long>(); }                                \
  operator long long() const { return kk_to_int<long long>(); }                                        \
  operator unsigned long long() const { return kk_to_int<unsigned long long>(); }                      \
  constexpr operator bool() const { return (__x & 0x7fffu) != 0; }

struct alignas(2) __half {
  // CUDA keeps __x protected; it is public here so that memcpy into a __half (simt's shuffles and
  // atomics, user code) does not trip GCC's -Wclass-memaccess.
  unsigned short __x;

  __half() = default;
  constexpr __half(const __half_raw& r) : __x(r.x) {}
  __half& operator=(const __half_raw& r) { __x = r.x; return *this; }
  volatile __half& operator=(const __half_raw& r) volatile { __x = r.x; return *this; }
  volatile __half& operator=(const volatile __half_raw& r) volatile { __x = r.x; return *this; }
  constexpr operator __half_raw() const { return __half_raw{__x}; }
  operator __half_raw() const volatile { return __half_raw{__x}; }
  explicit __half(const __nv_bfloat16 f);  // defined in cuda_bf16.h
  KK_SIMT_FP16_CLASS_CONVERSIONS(__half, ::kk_simt::fp::f16_to_f32, ::kk_simt::fp::f32_to_f16, 10, 5)
};

struct alignas(4) __half2 {
  __half x;
  __half y;
  __half2() = default;
  constexpr __half2(const __half& a, const __half& b) : x(a), y(b) {}
  constexpr __half2(const __half2_raw& r) : x(__half_raw{r.x}), y(__half_raw{r.y}) {}
  __half2& operator=(const __half2_raw& r) { x = __half_raw{r.x}; y = __half_raw{r.y}; return *this; }
  constexpr operator __half2_raw() const {
    return __half2_raw{static_cast<__half_raw>(x).x, static_cast<__half_raw>(y).x};
  }
};

typedef __half half;
typedef __half2 half2;

static_assert(sizeof(__half) == 2 && alignof(__half) == 2, "__half layout");
static_assert(sizeof(__half2) == 4 && alignof(__half2) == 4, "__half2 layout");
static_assert(std::is_trivially_copyable<__half>::value && std::is_trivially_copyable<__half2>::value,
              "__half must be trivially copyable");
static_assert(std::is_trivially_default_constructible<__half>::value &&
                  std::is_trivially_default_constructible<__half2>::value,
              "__half default construction must be trivial");
static_assert(std::is_standard_layout<__half>::value && std::is_standard_layout<__half2>::value, "layout");

namespace kk_simt {
namespace fp {
template <> struct Fmt<__half> {
  static constexpr int kM = 10, kE = 5;
  static constexpr unsigned short kOne = 0x3c00u;
  static unsigned short bits(__half h) { return static_cast<__half_raw>(h).x; }
  static __half make(unsigned short b) { return __half(__half_raw{b}); }
  static float to_f32(__half h) { return f16_to_f32(bits(h)); }
};

// Generic implementations over a 16-bit type T (Fmt<T>) and its pair type T2 (.x, .y).
template <typename T> inline T from_f32(float f, Mode m = kRN) {
  return Fmt<T>::make(round_f32<Fmt<T>::kM, Fmt<T>::kE>(f, m));
}
template <typename T> inline float f(T h) { return Fmt<T>::to_f32(h); }
template <typename T> inline bool isnan16(T h) {
  const unsigned short a = Fmt<T>::bits(h) & 0x7fffu;
  return a > (((1u << Fmt<T>::kE) - 1u) << Fmt<T>::kM);
}
template <typename T> inline int isinf16(T h) {
  constexpr unsigned short inf = ((1u << Fmt<T>::kE) - 1u) << Fmt<T>::kM;
  const unsigned short b = Fmt<T>::bits(h);
  return b == inf ? 1 : (b == (inf | 0x8000u) ? -1 : 0);
}
template <typename T> inline T fma16(T a, T b, T c) {
  return Fmt<T>::make(fma_round<Fmt<T>::kM, Fmt<T>::kE>(f(a), f(b), f(c)));
}
template <typename T> inline T neg16(T a) {
  return isnan16(a) ? Fmt<T>::make(0x7fffu) : Fmt<T>::make(Fmt<T>::bits(a) ^ 0x8000u);
}
template <typename T> inline T abs16(T a) {
  return isnan16(a) ? Fmt<T>::make(0x7fffu) : Fmt<T>::make(Fmt<T>::bits(a) & 0x7fffu);
}
// IEEE maxNum/minNum (a NaN operand loses; two NaNs give the canonical NaN; +0 > -0).
template <typename T> inline T max16(T a, T b) {
  const bool na = isnan16(a), nb = isnan16(b);
  if (na && nb) return Fmt<T>::make(0x7fffu);
  if (na) return b;
  if (nb) return a;
  const float fa = f(a), fb = f(b);
  if (fa == fb) return (Fmt<T>::bits(a) > Fmt<T>::bits(b)) ? b : a;  // picks +0 over -0
  return fa > fb ? a : b;
}
template <typename T> inline T min16(T a, T b) {
  const bool na = isnan16(a), nb = isnan16(b);
  if (na && nb) return Fmt<T>::make(0x7fffu);
  if (na) return b;
  if (nb) return a;
  const float fa = f(a), fb = f(b);
  if (fa == fb) return (Fmt<T>::bits(a) > Fmt<T>::bits(b)) ? a : b;  // picks -0 over +0
  return fa < fb ? a : b;
}
template <typename T> inline T max16_nan(T a, T b) {
  if (isnan16(a) || isnan16(b)) return Fmt<T>::make(0x7fffu);
  return f(a) >= f(b) ? a : b;
}
template <typename T> inline T min16_nan(T a, T b) {
  if (isnan16(a) || isnan16(b)) return Fmt<T>::make(0x7fffu);
  return f(a) <= f(b) ? a : b;
}
template <typename T> inline T sat16(T a) {  // clamp to [0, 1]; NaN -> 0
  return min16(max16(a, Fmt<T>::make(0)), Fmt<T>::make(Fmt<T>::kOne));
}
template <typename T> inline T relu16(T a) { return max16_nan(a, Fmt<T>::make(0)); }
// Elementary functions: double precision, rounded once to T.
template <typename T, typename F> inline T math16(T a, F fn) {
  return Fmt<T>::make(round_f64<Fmt<T>::kM, Fmt<T>::kE>(fn(widen(f(a)))));
}
template <typename T> inline T integral16(T a, Mode m) {
  if (isnan16(a)) return Fmt<T>::make(0x7fffu);
  return Fmt<T>::make(static_cast<unsigned short>(
      (Fmt<T>::bits(a) & 0x8000u) | (Fmt<T>::bits(from_f32<T>(round_integral(f(a), m))) & 0x7fffu)));
}
// Atomic read-modify-write of a 16-bit or 2x16-bit value through atomicCAS.
template <typename T, typename W, typename Op>
inline T atomic_update(T* p, T v, Op op, const char* file, int line) {
  static_assert(sizeof(T) == sizeof(W), "atomic word size");
  W* q = reinterpret_cast<W*>(p);
  W old = atomicCAS(q, W(0), W(0), file, line);  // reads the current value (writes 0 only over 0)
  for (;;) {
    T cur, next;
    std::memcpy(&cur, &old, sizeof(W));
    next = op(cur, v);
    W want;
    std::memcpy(&want, &next, sizeof(W));
    const W seen = atomicCAS(q, old, want, file, line);
    if (seen == old) return cur;
    old = seen;
  }
}
}  // namespace fp
}  // namespace kk_simt

// ---------------------------------------------------------------------------------------------
// Functions shared by __half and __nv_bfloat16 (the bf16 overloads are generated in cuda_bf16.h)
// ---------------------------------------------------------------------------------------------
#define KK_SIMT_FP_BIN(T, name, expr) \
  inline T name(const T a, const T b) { namespace fp = ::kk_simt::fp; return expr; }
#define KK_SIMT_FP_CMP(T, name, expr) \
  inline bool name(const T a, const T b) { const float x = ::kk_simt::fp::f(a), y = ::kk_simt::fp::f(b); return expr; }
#define KK_SIMT_FP_CMP2(T, T2, name, bname, mname, scalar)                                       \
  inline T2 name(const T2 a, const T2 b) {                                                       \
    const unsigned short one = ::kk_simt::fp::Fmt<T>::kOne;                                     \
    return T2(::kk_simt::fp::Fmt<T>::make(scalar(a.x, b.x) ? one : 0),                          \
              ::kk_simt::fp::Fmt<T>::make(scalar(a.y, b.y) ? one : 0));                          \
  }                                                                                              \
  inline unsigned mname(const T2 a, const T2 b) {                                                \
    return (scalar(a.x, b.x) ? 0xffffu : 0u) | (scalar(a.y, b.y) ? 0xffff0000u : 0u);           \
  }                                                                                              \
  inline bool bname(const T2 a, const T2 b) { return scalar(a.x, b.x) && scalar(a.y, b.y); }
#define KK_SIMT_FP_UN(T, T2, name, name2, expr)                 \
  inline T name(const T a) { namespace fp = ::kk_simt::fp; return expr; } \
  inline T2 name2(const T2 v) { return T2(name(v.x), name(v.y)); }
#define KK_SIMT_FP_MATH(T, T2, name, name2, fn)                                                   \
  inline T name(const T a) { return ::kk_simt::fp::math16(a, [](double d) { return fn; }); }      \
  inline T2 name2(const T2 v) { return T2(name(v.x), name(v.y)); }

#define KK_SIMT_FP_COMMON(T, T2)                                                                  \
  KK_SIMT_FP_BIN(T, __hadd, fp::from_f32<T>(fp::f(a) + fp::f(b)))                                 \
  KK_SIMT_FP_BIN(T, __hsub, fp::from_f32<T>(fp::f(a) - fp::f(b)))                                 \
  KK_SIMT_FP_BIN(T, __hmul, fp::from_f32<T>(fp::f(a) * fp::f(b)))                                 \
  KK_SIMT_FP_BIN(T, __hdiv, fp::from_f32<T>(fp::f(a) / fp::f(b)))                                 \
  KK_SIMT_FP_BIN(T, __hadd_rn, __hadd(a, b))                                                      \
  KK_SIMT_FP_BIN(T, __hsub_rn, __hsub(a, b))                                                      \
  KK_SIMT_FP_BIN(T, __hmul_rn, __hmul(a, b))                                                      \
  KK_SIMT_FP_BIN(T, __hadd_sat, fp::sat16(__hadd(a, b)))                                          \
  KK_SIMT_FP_BIN(T, __hsub_sat, fp::sat16(__hsub(a, b)))                                          \
  KK_SIMT_FP_BIN(T, __hmul_sat, fp::sat16(__hmul(a, b)))                                          \
  KK_SIMT_FP_BIN(T, __hmax, fp::max16(a, b))                                                      \
  KK_SIMT_FP_BIN(T, __hmin, fp::min16(a, b))                                                      \
  KK_SIMT_FP_BIN(T, __hmax_nan, fp::max16_nan(a, b))                                              \
  KK_SIMT_FP_BIN(T, __hmin_nan, fp::min16_nan(a, b))                                              \
  inline T __hfma(const T a, const T b, const T c) { return ::kk_simt::fp::fma16(a, b, c); }      \
  inline T __hfma_sat(const T a, const T b, const T c) { return ::kk_simt::fp::sat16(__hfma(a, b, c)); } \
  inline T __hfma_relu(const T a, const T b, const T c) { return ::kk_simt::fp::relu16(__hfma(a, b, c)); } \
  inline T __hneg(const T a) { return ::kk_simt::fp::neg16(a); }                                  \
  inline T __habs(const T a) { return ::kk_simt::fp::abs16(a); }                                  \
  inline bool __hisnan(const T a) { return ::kk_simt::fp::isnan16(a); }                           \
  inline int __hisinf(const T a) { return ::kk_simt::fp::isinf16(a); }                            \
  KK_SIMT_FP_CMP(T, __heq, x == y)                                                                \
  KK_SIMT_FP_CMP(T, __hne, x < y || x > y)                                                        \
  KK_SIMT_FP_CMP(T, __hlt, x < y)                                                                 \
  KK_SIMT_FP_CMP(T, __hle, x <= y)                                                                \
  KK_SIMT_FP_CMP(T, __hgt, x > y)                                                                 \
  KK_SIMT_FP_CMP(T, __hge, x >= y)                                                                \
  KK_SIMT_FP_CMP(T, __hequ, !(x < y || x > y))                                                    \
  KK_SIMT_FP_CMP(T, __hneu, !(x == y))                                                            \
  KK_SIMT_FP_CMP(T, __hltu, !(x >= y))                                                            \
  KK_SIMT_FP_CMP(T, __hleu, !(x > y))                                                             \
  KK_SIMT_FP_CMP(T, __hgtu, !(x <= y))                                                            \
  KK_SIMT_FP_CMP(T, __hgeu, !(x < y))                                                             \
  inline T2 __hadd2(const T2 a, const T2 b) { return T2(__hadd(a.x, b.x), __hadd(a.y, b.y)); }    \
  inline T2 __hsub2(const T2 a, const T2 b) { return T2(__hsub(a.x, b.x), __hsub(a.y, b.y)); }    \
  inline T2 __hmul2(const T2 a, const T2 b) { return T2(__hmul(a.x, b.x), __hmul(a.y, b.y)); }    \
  inline T2 __h2div(const T2 a, const T2 b) { return T2(__hdiv(a.x, b.x), __hdiv(a.y, b.y)); }    \
  inline T2 __hadd2_rn(const T2 a, const T2 b) { return __hadd2(a, b); }                          \
  inline T2 __hsub2_rn(const T2 a, const T2 b) { return __hsub2(a, b); }                          \
  inline T2 __hmul2_rn(const T2 a, const T2 b) { return __hmul2(a, b); }                          \
  inline T2 __hadd2_sat(const T2 a, const T2 b) { return T2(__hadd_sat(a.x, b.x), __hadd_sat(a.y, b.y)); } \
  inline T2 __hsub2_sat(const T2 a, const T2 b) { return T2(__hsub_sat(a.x, b.x), __hsub_sat(a.y, b.y)); } \
  inline T2 __hmul2_sat(const T2 a, const T2 b) { return T2(__hmul_sat(a.x, b.x), __hmul_sat(a.y, b.y)); } \
  inline T2 __hfma2(const T2 a, const T2 b, const T2 c) { return T2(__hfma(a.x, b.x, c.x), __hfma(a.y, b.y, c.y)); } \
  inline T2 __hfma2_sat(const T2 a, const T2 b, const T2 c) {                                     \
    return T2(__hfma_sat(a.x, b.x, c.x), __hfma_sat(a.y, b.y, c.y));                              \
  }                                                                                               \
  inline T2 __hfma2_relu(const T2 a, const T2 b, const T2 c) {                                    \
    return T2(__hfma_relu(a.x, b.x, c.x), __hfma_relu(a.y, b.y, c.y));                            \
  }                                                                                               \
  inline T2 __hneg2(const T2 a) { return T2(__hneg(a.x), __hneg(a.y)); }                          \
  inline T2 __habs2(const T2 a) { return T2(__habs(a.x), __habs(a.y)); }                          \
  inline T2 __hmax2(const T2 a, const T2 b) { return T2(__hmax(a.x, b.x), __hmax(a.y, b.y)); }    \
  inline T2 __hmin2(const T2 a, const T2 b) { return T2(__hmin(a.x, b.x), __hmin(a.y, b.y)); }    \
  inline T2 __hmax2_nan(const T2 a, const T2 b) { return T2(__hmax_nan(a.x, b.x), __hmax_nan(a.y, b.y)); } \
  inline T2 __hmin2_nan(const T2 a, const T2 b) { return T2(__hmin_nan(a.x, b.x), __hmin_nan(a.y, b.y)); } \
  inline T2 __hisnan2(const T2 a) {                                                               \
    const unsigned short one = ::kk_simt::fp::Fmt<T>::kOne;                                      \
    return T2(::kk_simt::fp::Fmt<T>::make(__hisnan(a.x) ? one : 0),                              \
              ::kk_simt::fp::Fmt<T>::make(__hisnan(a.y) ? one : 0));                              \
  }                                                                                               \
  KK_SIMT_FP_CMP2(T, T2, __heq2, __hbeq2, __heq2_mask, __heq)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hne2, __hbne2, __hne2_mask, __hne)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hlt2, __hblt2, __hlt2_mask, __hlt)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hle2, __hble2, __hle2_mask, __hle)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hgt2, __hbgt2, __hgt2_mask, __hgt)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hge2, __hbge2, __hge2_mask, __hge)                                     \
  KK_SIMT_FP_CMP2(T, T2, __hequ2, __hbequ2, __hequ2_mask, __hequ)                                 \
  KK_SIMT_FP_CMP2(T, T2, __hneu2, __hbneu2, __hneu2_mask, __hneu)                                 \
  KK_SIMT_FP_CMP2(T, T2, __hltu2, __hbltu2, __hltu2_mask, __hltu)                                 \
  KK_SIMT_FP_CMP2(T, T2, __hleu2, __hbleu2, __hleu2_mask, __hleu)                                 \
  KK_SIMT_FP_CMP2(T, T2, __hgtu2, __hbgtu2, __hgtu2_mask, __hgtu)                                 \
  KK_SIMT_FP_CMP2(T, T2, __hgeu2, __hbgeu2, __hgeu2_mask, __hgeu)                                 \
  KK_SIMT_FP_MATH(T, T2, hsqrt, h2sqrt, std::sqrt(d))                                             \
  KK_SIMT_FP_MATH(T, T2, hrsqrt, h2rsqrt, 1.0 / std::sqrt(d))                                     \
  KK_SIMT_FP_MATH(T, T2, hrcp, h2rcp, 1.0 / d)                                                    \
  KK_SIMT_FP_MATH(T, T2, hexp, h2exp, std::exp(d))                                                \
  KK_SIMT_FP_MATH(T, T2, hexp2, h2exp2, std::exp2(d))                                             \
  KK_SIMT_FP_MATH(T, T2, hexp10, h2exp10, std::pow(10.0, d))                                      \
  KK_SIMT_FP_MATH(T, T2, hlog, h2log, std::log(d))                                                \
  KK_SIMT_FP_MATH(T, T2, hlog2, h2log2, std::log2(d))                                             \
  KK_SIMT_FP_MATH(T, T2, hlog10, h2log10, std::log10(d))                                          \
  KK_SIMT_FP_MATH(T, T2, hsin, h2sin, std::sin(d))                                                \
  KK_SIMT_FP_MATH(T, T2, hcos, h2cos, std::cos(d))                                                \
  KK_SIMT_FP_MATH(T, T2, htanh, h2tanh, std::tanh(d))                                             \
  KK_SIMT_FP_UN(T, T2, hfloor, h2floor, fp::integral16(a, fp::kRD))                               \
  KK_SIMT_FP_UN(T, T2, hceil, h2ceil, fp::integral16(a, fp::kRU))                                 \
  KK_SIMT_FP_UN(T, T2, htrunc, h2trunc, fp::integral16(a, fp::kRZ))                               \
  KK_SIMT_FP_UN(T, T2, hrint, h2rint, fp::integral16(a, fp::kRN))                                 \
  inline T2 __lowhigh2highlow(const T2 a) { return T2(a.y, a.x); }                                \
  /* operators */                                                                                 \
  inline T operator+(const T& a, const T& b) { return __hadd(a, b); }                             \
  inline T operator-(const T& a, const T& b) { return __hsub(a, b); }                             \
  inline T operator*(const T& a, const T& b) { return __hmul(a, b); }                             \
  inline T operator/(const T& a, const T& b) { return __hdiv(a, b); }                             \
  inline T& operator+=(T& a, const T& b) { a = __hadd(a, b); return a; }                          \
  inline T& operator-=(T& a, const T& b) { a = __hsub(a, b); return a; }                          \
  inline T& operator*=(T& a, const T& b) { a = __hmul(a, b); return a; }                          \
  inline T& operator/=(T& a, const T& b) { a = __hdiv(a, b); return a; }                          \
  inline T& operator++(T& a) { a = __hadd(a, ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::Fmt<T>::kOne)); return a; } \
  inline T& operator--(T& a) { a = __hsub(a, ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::Fmt<T>::kOne)); return a; } \
  inline T operator++(T& a, int) { const T r = a; ++a; return r; }                                \
  inline T operator--(T& a, int) { const T r = a; --a; return r; }                                \
  inline T operator+(const T& a) { return a; }                                                    \
  inline T operator-(const T& a) { return __hneg(a); }                                            \
  inline bool operator==(const T& a, const T& b) { return __heq(a, b); }                          \
  inline bool operator!=(const T& a, const T& b) { return __hneu(a, b); }                         \
  inline bool operator<(const T& a, const T& b) { return __hlt(a, b); }                           \
  inline bool operator<=(const T& a, const T& b) { return __hle(a, b); }                          \
  inline bool operator>(const T& a, const T& b) { return __hgt(a, b); }                           \
  inline bool operator>=(const T& a, const T& b) { return __hge(a, b); }                          \
  inline T2 operator+(const T2& a, const T2& b) { return __hadd2(a, b); }                         \
  inline T2 operator-(const T2& a, const T2& b) { return __hsub2(a, b); }                         \
  inline T2 operator*(const T2& a, const T2& b) { return __hmul2(a, b); }                         \
  inline T2 operator/(const T2& a, const T2& b) { return __h2div(a, b); }                         \
  inline T2& operator+=(T2& a, const T2& b) { a = __hadd2(a, b); return a; }                      \
  inline T2& operator-=(T2& a, const T2& b) { a = __hsub2(a, b); return a; }                      \
  inline T2& operator*=(T2& a, const T2& b) { a = __hmul2(a, b); return a; }                      \
  inline T2& operator/=(T2& a, const T2& b) { a = __h2div(a, b); return a; }                      \
  inline T2& operator++(T2& a) { ++a.x; ++a.y; return a; }                                        \
  inline T2& operator--(T2& a) { --a.x; --a.y; return a; }                                        \
  inline T2 operator++(T2& a, int) { const T2 r = a; ++a; return r; }                             \
  inline T2 operator--(T2& a, int) { const T2 r = a; --a; return r; }                             \
  inline T2 operator+(const T2& a) { return a; }                                                  \
  inline T2 operator-(const T2& a) { return __hneg2(a); }                                         \
  inline bool operator==(const T2& a, const T2& b) { return __hbeq2(a, b); }                      \
  inline bool operator!=(const T2& a, const T2& b) { return __hbneu2(a, b); }                     \
  inline bool operator<(const T2& a, const T2& b) { return __hblt2(a, b); }                       \
  inline bool operator<=(const T2& a, const T2& b) { return __hble2(a, b); }                      \
  inline bool operator>(const T2& a, const T2& b) { return __hbgt2(a, b); }                       \
  inline bool operator>=(const T2& a, const T2& b) { return __hbge2(a, b); }                      \
  /* atomics (through atomicCAS; CUDA's are single instructions) */                               \
  inline T atomicAdd(T* p, T v, KK_SITE_ARGS) {                                                   \
    return ::kk_simt::fp::atomic_update<T, unsigned short>(                                      \
        p, v, [](T a, T b) { return __hadd(a, b); }, kk_file, kk_line);                           \
  }                                                                                               \
  inline T2 atomicAdd(T2* p, T2 v, KK_SITE_ARGS) {                                                \
    return ::kk_simt::fp::atomic_update<T2, unsigned>(                                           \
        p, v, [](T2 a, T2 b) { return __hadd2(a, b); }, kk_file, kk_line);                        \
  }

// Integer conversions: NAME##_rn/_rz/_rd/_ru for to-integer (PREFIX2INT) and from-integer.
#define KK_SIMT_FP_TO_INT(T, name, I)                                                                        \
  inline I name##_rn(const T h) { return ::kk_simt::fp::to_int<I>(::kk_simt::fp::f(h), ::kk_simt::fp::kRN, ::kk_simt::fp::to_int_nan_value<I>()); } \
  inline I name##_rz(const T h) { return ::kk_simt::fp::to_int<I>(::kk_simt::fp::f(h), ::kk_simt::fp::kRZ, ::kk_simt::fp::to_int_nan_value<I>()); } \
  inline I name##_rd(const T h) { return ::kk_simt::fp::to_int<I>(::kk_simt::fp::f(h), ::kk_simt::fp::kRD, ::kk_simt::fp::to_int_nan_value<I>()); } \
  inline I name##_ru(const T h) { return ::kk_simt::fp::to_int<I>(::kk_simt::fp::f(h), ::kk_simt::fp::kRU, ::kk_simt::fp::to_int_nan_value<I>()); }
#define KK_SIMT_FP_FROM_INT(T, name, I)                                                                     \
  inline T name##_rn(const I i) { return ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::round_int<::kk_simt::fp::Fmt<T>::kM, ::kk_simt::fp::Fmt<T>::kE>(i, ::kk_simt::fp::kRN)); } \
  inline T name##_rz(const I i) { return ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::round_int<::kk_simt::fp::Fmt<T>::kM, ::kk_simt::fp::Fmt<T>::kE>(i, ::kk_simt::fp::kRZ)); } \
  inline T name##_rd(const I i) { return ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::round_int<::kk_simt::fp::Fmt<T>::kM, ::kk_simt::fp::Fmt<T>::kE>(i, ::kk_simt::fp::kRD)); } \
  inline T name##_ru(const I i) { return ::kk_simt::fp::Fmt<T>::make(::kk_simt::fp::round_int<::kk_simt::fp::Fmt<T>::kM, ::kk_simt::fp::Fmt<T>::kE>(i, ::kk_simt::fp::kRU)); }

KK_SIMT_FP_COMMON(__half, __half2)

// ---------------------------------------------------------------------------------------------
// __half conversions and data movement
// ---------------------------------------------------------------------------------------------
inline __half __float2half(const float a) { return __half(__half_raw{::kk_simt::fp::f32_to_f16(a)}); }
inline __half __float2half_rn(const float a) { return __half(__half_raw{::kk_simt::fp::f32_to_f16(a)}); }
inline __half __float2half_rz(const float a) { return __half(__half_raw{::kk_simt::fp::f32_to_f16(a, ::kk_simt::fp::kRZ)}); }
inline __half __float2half_rd(const float a) { return __half(__half_raw{::kk_simt::fp::f32_to_f16(a, ::kk_simt::fp::kRD)}); }
inline __half __float2half_ru(const float a) { return __half(__half_raw{::kk_simt::fp::f32_to_f16(a, ::kk_simt::fp::kRU)}); }
inline __half __double2half(const double a) { return __half(__half_raw{::kk_simt::fp::round_f64<10, 5>(a)}); }
inline float __half2float(const __half a) { return ::kk_simt::fp::f16_to_f32(static_cast<__half_raw>(a).x); }
inline __half2 __float2half2_rn(const float a) { const __half h = __float2half_rn(a); return __half2(h, h); }
inline __half2 __floats2half2_rn(const float a, const float b) { return __half2(__float2half_rn(a), __float2half_rn(b)); }
inline __half2 __float22half2_rn(const float2 a) { return __floats2half2_rn(a.x, a.y); }
inline float2 __half22float2(const __half2 a) { return make_float2(__half2float(a.x), __half2float(a.y)); }
inline float __low2float(const __half2 a) { return __half2float(a.x); }
inline float __high2float(const __half2 a) { return __half2float(a.y); }
inline __half __low2half(const __half2 a) { return a.x; }
inline __half __high2half(const __half2 a) { return a.y; }
inline __half2 __low2half2(const __half2 a) { return __half2(a.x, a.x); }
inline __half2 __high2half2(const __half2 a) { return __half2(a.y, a.y); }
inline __half2 __halves2half2(const __half a, const __half b) { return __half2(a, b); }
inline __half2 __half2half2(const __half a) { return __half2(a, a); }
inline __half2 __lows2half2(const __half2 a, const __half2 b) { return __half2(a.x, b.x); }
inline __half2 __highs2half2(const __half2 a, const __half2 b) { return __half2(a.y, b.y); }
inline __half2 make_half2(const __half x, const __half y) { return __half2(x, y); }

inline short __half_as_short(const __half h) { return static_cast<short>(static_cast<__half_raw>(h).x); }
inline unsigned short __half_as_ushort(const __half h) { return static_cast<__half_raw>(h).x; }
inline __half __short_as_half(const short i) { return __half(__half_raw{static_cast<unsigned short>(i)}); }
inline __half __ushort_as_half(const unsigned short i) { return __half(__half_raw{i}); }

KK_SIMT_FP_TO_INT(__half, __half2int, int)
KK_SIMT_FP_TO_INT(__half, __half2uint, unsigned int)
KK_SIMT_FP_TO_INT(__half, __half2short, short)
KK_SIMT_FP_TO_INT(__half, __half2ushort, unsigned short)
KK_SIMT_FP_TO_INT(__half, __half2ll, long long)
KK_SIMT_FP_TO_INT(__half, __half2ull, unsigned long long)
inline signed char __half2char_rz(const __half h) { return static_cast<signed char>(h); }
inline unsigned char __half2uchar_rz(const __half h) { return static_cast<unsigned char>(h); }
KK_SIMT_FP_FROM_INT(__half, __int2half, int)
KK_SIMT_FP_FROM_INT(__half, __uint2half, unsigned int)
KK_SIMT_FP_FROM_INT(__half, __short2half, short)
KK_SIMT_FP_FROM_INT(__half, __ushort2half, unsigned short)
KK_SIMT_FP_FROM_INT(__half, __ll2half, long long)
KK_SIMT_FP_FROM_INT(__half, __ull2half, unsigned long long)

#define CUDART_INF_FP16 __ushort_as_half((unsigned short)0x7C00U)
#define CUDART_NAN_FP16 __ushort_as_half((unsigned short)0x7FFFU)
#define CUDART_MIN_DENORM_FP16 __ushort_as_half((unsigned short)0x0001U)
#define CUDART_MAX_NORMAL_FP16 __ushort_as_half((unsigned short)0x7BFFU)
#define CUDART_NEG_ZERO_FP16 __ushort_as_half((unsigned short)0x8000U)
#define CUDART_ZERO_FP16 __ushort_as_half((unsigned short)0x0000U)
#define CUDART_ONE_FP16 __ushort_as_half((unsigned short)0x3C00U)
