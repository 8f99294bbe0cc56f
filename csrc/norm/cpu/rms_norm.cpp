// RMSNorm CPU kernels, compiled once per ISA level (see CMakeLists.txt).
// One pass accumulates sum(x^2) in fp32 vectors, a second scales; bf16/fp16
// inputs are widened to fp32 in registers. fp64 runs a plain double loop
// (it exists for gradcheck, not speed).
#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "common/parallel.h"
#include "common/vec.h"
#include "norm/rms_norm.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

constexpr int64_t kGrainElems = 16384;  // a thread's share is at least this many elements

inline int64_t row_grain(int64_t dim) { return std::max<int64_t>(1, kGrainElems / std::max<int64_t>(dim, 1)); }

template <typename W> inline float weight_at(const W* w, int64_t i) { return w ? to_float(w[i]) : 1.f; }
template <typename W> inline Vec weight_vec(const W* w, int64_t i) { return w ? Vec::load(w + i) : Vec::set1(1.f); }
inline double weight_at(const double* w, int64_t i) { return w ? w[i] : 1.0; }

template <typename T, typename W>
void fwd_row(const RmsNormFwdParams& p, int64_t r) {
  const int64_t D = p.dim;
  const W* w = static_cast<const W*>(p.w);
  const T* x = static_cast<const T*>(p.x) + r * D;
  T* y = static_cast<T*>(p.y) + r * D;
  Vec a0 = Vec::zero(), a1 = Vec::zero();  // two chains hide FMA latency
  int64_t i = 0;
  for (; i + 2 * Vec::size <= D; i += 2 * Vec::size) {
    const Vec v0 = Vec::load(x + i), v1 = Vec::load(x + i + Vec::size);
    a0 = fma(v0, v0, a0);
    a1 = fma(v1, v1, a1);
  }
  for (; i + Vec::size <= D; i += Vec::size) { const Vec v = Vec::load(x + i); a0 = fma(v, v, a0); }
  float ss = (a0 + a1).sum();
  for (; i < D; ++i) ss += to_float(x[i]) * to_float(x[i]);
  const float rstd = 1.f / std::sqrt(ss / float(D) + p.eps);
  static_cast<float*>(p.rstd)[r] = rstd;
  const Vec vr = Vec::set1(rstd);
  for (i = 0; i + Vec::size <= D; i += Vec::size) (Vec::load(x + i) * vr * weight_vec(w, i)).store(y + i);
  for (; i < D; ++i) y[i] = from_float<T>(to_float(x[i]) * rstd * weight_at(w, i));
}

template <typename T, typename W>
void fwd_row_f64(const RmsNormFwdParams& p, int64_t r) {
  const int64_t D = p.dim;
  const double* w = static_cast<const double*>(p.w);
  const double* x = static_cast<const double*>(p.x) + r * D;
  double* y = static_cast<double*>(p.y) + r * D;
  double ss = 0;
  for (int64_t i = 0; i < D; ++i) ss += x[i] * x[i];
  const double rstd = 1.0 / std::sqrt(ss / double(D) + double(p.eps));
  static_cast<double*>(p.rstd)[r] = rstd;
  for (int64_t i = 0; i < D; ++i) y[i] = x[i] * rstd * weight_at(w, i);
}

// Backward of one row: dx = rstd*(dy*w) - x * rstd^3 * mean(dy*w*x); dwp += dy*x*rstd.
template <typename T, typename W>
void bwd_row(const RmsNormBwdParams& p, int64_t r, float* dwp) {
  const int64_t D = p.dim;
  const W* w = static_cast<const W*>(p.w);
  const T* x = static_cast<const T*>(p.x) + r * D;
  const T* dy = static_cast<const T*>(p.dy) + r * D;
  T* dx = static_cast<T*>(p.dx) + r * D;
  const float rstd = static_cast<const float*>(p.rstd)[r];
  Vec acc = Vec::zero();
  int64_t i = 0;
  for (; i + Vec::size <= D; i += Vec::size) acc = fma(Vec::load(dy + i) * weight_vec(w, i), Vec::load(x + i), acc);
  float dot = acc.sum();
  for (; i < D; ++i) dot += to_float(dy[i]) * weight_at(w, i) * to_float(x[i]);
  const float c = dot * rstd * rstd * rstd / float(D);
  const Vec vr = Vec::set1(rstd), vc = Vec::set1(c);
  for (i = 0; i + Vec::size <= D; i += Vec::size) {
    const Vec g = Vec::load(dy + i), xv = Vec::load(x + i);
    (g * weight_vec(w, i) * vr - vc * xv).store(dx + i);
    if (dwp) fma(g * xv, vr, Vec::load(dwp + i)).store(dwp + i);
  }
  for (; i < D; ++i) {
    const float g = to_float(dy[i]), xv = to_float(x[i]);
    dx[i] = from_float<T>(g * weight_at(w, i) * rstd - c * xv);
    if (dwp) dwp[i] += g * xv * rstd;
  }
}

template <typename T, typename W>
void bwd_row_f64(const RmsNormBwdParams& p, int64_t r, double* dwp) {
  const int64_t D = p.dim;
  const double* w = static_cast<const double*>(p.w);
  const double* x = static_cast<const double*>(p.x) + r * D;
  const double* dy = static_cast<const double*>(p.dy) + r * D;
  double* dx = static_cast<double*>(p.dx) + r * D;
  const double rstd = static_cast<const double*>(p.rstd)[r];
  double dot = 0;
  for (int64_t i = 0; i < D; ++i) dot += dy[i] * weight_at(w, i) * x[i];
  const double c = dot * rstd * rstd * rstd / double(D);
  for (int64_t i = 0; i < D; ++i) {
    dx[i] = dy[i] * weight_at(w, i) * rstd - c * x[i];
    if (dwp) dwp[i] += dy[i] * x[i] * rstd;
  }
}

template <typename T, typename W, bool F64>
void fwd(const RmsNormFwdParams& p) {
  parallel_for(p.rows, p.threads, row_grain(p.dim), [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      if constexpr (F64) fwd_row_f64<T, W>(p, r);
      else fwd_row<T, W>(p, r);
    }
  });
}

template <typename T, typename W, bool F64>
void bwd(const RmsNormBwdParams& p) {
  using Acc = std::conditional_t<F64, double, float>;
  const int64_t D = p.dim;
  Acc* partial = p.dw ? static_cast<Acc*>(p.dw_partial) : nullptr;
  const int64_t nblk = rms_norm_dw_blocks(p.rows);
  const int64_t rows_per_blk = (p.rows + nblk - 1) / nblk;
  const int64_t blk_grain = std::max<int64_t>(1, row_grain(D) / rows_per_blk);
  parallel_for(nblk, p.threads, blk_grain, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      Acc* dwp = partial ? partial + b * D : nullptr;
      if (dwp) std::fill(dwp, dwp + D, Acc(0));
      const int64_t r1 = std::min(p.rows, (b + 1) * rows_per_blk);
      for (int64_t r = b * rows_per_blk; r < r1; ++r) {
        if constexpr (F64) bwd_row_f64<T, W>(p, r, dwp);
        else bwd_row<T, W>(p, r, dwp);
      }
    }
  });
  if (!partial) return;
  W* dw = static_cast<W*>(p.dw);
  parallel_for(D, p.threads, std::max<int64_t>(64, kGrainElems / nblk), [&](int64_t c0, int64_t c1) {
    for (int64_t j = c0; j < c1; ++j) {
      Acc s = 0;
      for (int64_t b = 0; b < nblk; ++b) s += partial[b * D + j];
      if constexpr (F64) dw[j] = W(s);
      else dw[j] = from_float<W>(s);
    }
  });
}

// Calls Fn<T, W, is_f64>(p) for the (input, weight) dtype pair; the weight is
// either the input's dtype or fp32 (mixed precision).
template <template <typename, typename, bool> class Fn, typename P>
void dispatch(const P& p) {
  const bool same = p.wdtype == p.dtype || p.w == nullptr;
  switch (p.dtype) {
    case DType::f64:
      if (!same) break;
      return Fn<double, double, true>::run(p);
    case DType::f32:
      return Fn<float, float, false>::run(p);
    case DType::bf16:
      return same ? Fn<bf16_t, bf16_t, false>::run(p) : Fn<bf16_t, float, false>::run(p);
    case DType::f16:
      return same ? Fn<f16_t, f16_t, false>::run(p) : Fn<f16_t, float, false>::run(p);
  }
  throw std::invalid_argument("rms_norm: unsupported dtype combination");
}

template <typename T, typename W, bool F64> struct Fwd { static void run(const RmsNormFwdParams& p) { fwd<T, W, F64>(p); } };
template <typename T, typename W, bool F64> struct Bwd { static void run(const RmsNormBwdParams& p) { bwd<T, W, F64>(p); } };

}  // namespace

void rms_norm_fwd_cpu(const RmsNormFwdParams& p) { dispatch<Fwd>(p); }
void rms_norm_bwd_cpu(const RmsNormBwdParams& p) { dispatch<Bwd>(p); }

}  // namespace KK_ISA_NS
}  // namespace kernkit
