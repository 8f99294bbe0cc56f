// Dtype codes shared with python/kernkit/_native.py, and bit-exact scalar
// conversions for the 16-bit float formats.
#pragma once
#include <cstdint>
#include <cstring>

namespace kernkit {

// Keep in sync with _DTYPE_CODES in python/kernkit/_native.py.
enum class DType : int { f32 = 0, f64 = 1, f16 = 2, bf16 = 3 };

// Storage-only wrappers so that bf16 and fp16 pointers are distinct types.
struct bf16_t { uint16_t bits; };
struct f16_t { uint16_t bits; };

// `static inline` everywhere below: these headers are compiled into several
// per-ISA objects, and internal linkage keeps one ISA's code from being
// merged into another's by the linker.
static inline float bits_to_float(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }
static inline uint32_t float_to_bits(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }

static inline float to_float(float x) { return x; }
static inline float to_float(bf16_t x) { return bits_to_float(uint32_t(x.bits) << 16); }

static inline float to_float(f16_t h) {
  const uint32_t sign = uint32_t(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1f;
  uint32_t man = h.bits & 0x3ffu;
  if (exp == 0x1f) return bits_to_float(sign | 0x7f800000u | (man << 13));  // inf / nan
  if (exp != 0) return bits_to_float(sign | ((exp + 112) << 23) | (man << 13));
  if (man == 0) return bits_to_float(sign);
  // subnormal half: value = man * 2^-24, exact in float
  float f = float(man) * (1.0f / 16777216.0f);
  return sign ? -f : f;
}

// Round to nearest even, NaN stays NaN (as c10::BFloat16).
static inline bf16_t bf16_from_float(float f) {
  uint32_t u = float_to_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return bf16_t{uint16_t((u >> 16) | 0x40u)};
  u += 0x7fffu + ((u >> 16) & 1u);
  return bf16_t{uint16_t(u >> 16)};
}

// Round to nearest even, overflow to inf, subnormals kept (as IEEE / c10::Half).
static inline f16_t f16_from_float(float f) {
  const uint32_t u = float_to_bits(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return f16_t{uint16_t(sign | 0x7e00u)};
  if (a >= 0x477ff000u) return f16_t{uint16_t(sign | 0x7c00u)};  // rounds to >= 65520: inf
  if (a < 0x38800000u) {  // below the smallest normal half (2^-14): subnormal or zero
    // Adding 0.5f aligns the half subnormal grid to float's mantissa LSBs and
    // lets the FPU do the round-to-nearest-even.
    const float r = bits_to_float(a) + 0.5f;
    return f16_t{uint16_t(sign | uint16_t(float_to_bits(r) - 0x3f000000u))};
  }
  uint32_t m = a + 0xc8000fffu + ((a >> 13) & 1u);  // rebias exponent (-112 << 23) and round
  return f16_t{uint16_t(sign | uint16_t(m >> 13))};
}

template <typename T> static inline T from_float(float x);
template <> inline float from_float<float>(float x) { return x; }
template <> inline bf16_t from_float<bf16_t>(float x) { return bf16_from_float(x); }
template <> inline f16_t from_float<f16_t>(float x) { return f16_from_float(x); }


}  // namespace kernkit
