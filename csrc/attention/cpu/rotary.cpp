#include "attention/cpu/rotary.h"

#include <stdexcept>

namespace kernkit {
namespace {

template <typename T>
void rotate_rows(const RotaryParams& p) {
  const int64_t half = p.rd / 2;
  for (int64_t b = 0; b < p.B; ++b) {
    const int64_t start = p.starts ? p.starts[b] : 0;
    for (int64_t s = 0; s < p.S; ++s) {
      const int64_t pos = start + (p.same_position ? 0 : s);
      const float* c = p.cos + pos * half;
      const float* sn = p.sin + pos * half;
      const int64_t orow = p.out_at_starts ? start + s : s;
      for (int64_t h = 0; h < p.H; ++h) {
        const T* x = static_cast<const T*>(p.x) + b * p.xs[0] + s * p.xs[1] + h * p.xs[2];
        T* o = static_cast<T*>(p.out) + b * p.os[0] + orow * p.os[1] + h * p.os[2];
        for (int64_t i = 0; i < half; ++i) {
          const int64_t i0 = p.interleaved ? 2 * i : i, i1 = p.interleaved ? 2 * i + 1 : i + half;
          const float x0 = to_float(x[i0]), x1 = to_float(x[i1]);
          o[i0] = from_float<T>(x0 * c[i] - x1 * sn[i]);
          o[i1] = from_float<T>(x1 * c[i] + x0 * sn[i]);
        }
        for (int64_t i = p.rd; i < p.D; ++i) o[i] = x[i];  // features past rotary_dim pass through
      }
    }
  }
}

}  // namespace

void rotary_cpu(const RotaryParams& p) {
  switch (p.dtype) {
    case DType::f32: return rotate_rows<float>(p);
    case DType::bf16: return rotate_rows<bf16_t>(p);
    case DType::f16: return rotate_rows<f16_t>(p);
    default: throw std::invalid_argument("rotary: x must be float32, bfloat16 or float16");
  }
}

}  // namespace kernkit
