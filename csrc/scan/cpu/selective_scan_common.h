// Helpers shared by the CPU selective scan's forward (selective_scan.cpp) and backward
// (selective_scan_bwd.cpp): per-row preparation over time (dt with softplus, SiLU gate, skip),
// B/C transposes, and the fp64 lane type of the reference-precision path. Per-ISA: include only
// from kernel sources (KK_ISA_NS defined); everything lives in an anonymous namespace.
#pragma once
#include <algorithm>
#include <cstring>
#include <memory>

#include "common/parallel.h"
#include "common/vec.h"
#include "scan/scan.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

// Lane<float> is the ISA's Vec; Lane<double> a one-lane double twin (fp64 path).
template <typename Acc> struct Lane;
template <> struct Lane<float> { using V = Vec; };
struct DVec {
  static constexpr int size = 1;
  double v;
  static DVec zero() { return {0.0}; }
  static DVec set1(double x) { return {x}; }
  static DVec load(const double* p) { return {*p}; }
  void store(double* p) const { *p = v; }
  double sum() const { return v; }
  friend DVec operator+(DVec a, DVec b) { return {a.v + b.v}; }
  friend DVec operator-(DVec a, DVec b) { return {a.v - b.v}; }
  friend DVec operator*(DVec a, DVec b) { return {a.v * b.v}; }
  friend DVec fma(DVec a, DVec b, DVec c) { return {a.v * b.v + c.v}; }
};
template <> struct Lane<double> { using V = DVec; };
inline DVec exp(DVec x) { return {std::exp(x.v)}; }
inline DVec sigmoid(DVec x) { return {1.0 / (1.0 + std::exp(-x.v))}; }
inline DVec softplus(DVec x, DVec* sig = nullptr) {  // (like Vec's: sig <- sigmoid(x) if set)
  if (sig) *sig = sigmoid(x);
  return {x.v > 20.0 ? x.v : std::log1p(std::exp(x.v))};
}
inline DVec sigmoid_accurate(DVec x) { return sigmoid(x); }

template <typename T, typename Acc> inline Acc cvt(T x) { return Acc(to_float(x)); }
template <> inline double cvt<double, double>(double x) { return x; }
template <typename T, typename Acc> inline T back(Acc x) { return from_float<T>(float(x)); }
template <> inline double back<double, double>(double x) { return x; }

// row[t] = acc(src[t]) for t < n, vectorised where the lane width allows.
template <typename T, typename Acc>
inline void widen_row(Acc* dst, const T* src, int64_t n) {
  int64_t i = 0;
  if constexpr (std::is_same_v<Acc, float>)
    for (; i + Vec::size <= n; i += Vec::size) Vec::load(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = cvt<T, Acc>(src[i]);
}

// src's n values as Acc: src itself when T is Acc (no copy: gcc turns a copy loop into memmove,
// which cost ~15% of the fp32 forward), else widened into buf.
template <typename T, typename Acc>
inline const Acc* acc_row(const T* src, Acc* buf, int64_t n) {
  if constexpr (std::is_same_v<T, Acc>) {
    return src;
  } else {
    widen_row<T, Acc>(buf, src, n);
    return buf;
  }
}

constexpr int64_t kChunk = 256;  // generic backward's checkpoint interval (time steps)
constexpr float kLog2e = 1.44269504088896341f;  // exp(dt A) = exp2(dt A log2 e)

// z[t] <- silu(src[t]) and, with s set, s[t] <- sigmoid(src[t]) (src may be z).
template <typename Acc>
void silu_row(Acc* z, const Acc* src, int64_t L, Acc* s = nullptr) {
  using V = typename Lane<Acc>::V;
  int64_t t = 0;
  for (; t + V::size <= L; t += V::size) {
    const V zv = V::load(src + t), sg = sigmoid_accurate(zv);
    if (s) sg.store(s + t);
    (zv * sg).store(z + t);
  }
  for (; t < L; ++t) {
    const Acc x = src[t], sg = Acc(1) / (Acc(1) + Acc(std::exp(double(-x))));
    if (s) s[t] = sg;
    z[t] = x * sg;
  }
}

// out[t] = (y[t] + D u[t]) * gate[t] (gate null: 1), converted to T.
template <typename T, typename Acc>
void finish_row(const Acc* y, const Acc* u, Acc Dv, const Acc* gate, T* out, int64_t L) {
  using V = typename Lane<Acc>::V;
  int64_t t = 0;
  if constexpr (std::is_same_v<Acc, float>)
    for (; t + V::size <= L; t += V::size) {
      V r = fma(V::set1(Dv), V::load(u + t), V::load(y + t));
      if (gate) r = r * V::load(gate + t);
      r.store(out + t);
    }
  for (; t < L; ++t) out[t] = back<T, Acc>((y[t] + Dv * u[t]) * (gate ? gate[t] : Acc(1)));
}

template <typename T, typename Acc>
struct Geometry {
  using V = typename Lane<Acc>::V;
  const SelectiveScanParams& p;
  int64_t Np, NV;  // N padded to the lane width, vectors per state
  explicit Geometry(const SelectiveScanParams& p_) : p(p_) {
    Np = (p.N + V::size - 1) / V::size * V::size;
    NV = Np / V::size;
  }
  int64_t group_of(int64_t d) const { return d / (p.D / p.G); }
  int64_t row(int64_t b, int64_t d) const { return (b * p.D + d) * p.L; }
};

// Variable B or C of each (batch, group) as (time, Np) rows, zero padded.
template <typename T, typename Acc>
void transpose_bc(const SelectiveScanParams& p, const void* src, int64_t Np, Acc* dst) {
  parallel_for(p.Bsz * p.G, p.threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const T* s = static_cast<const T*>(src) + i * p.N * p.L;
      Acc* d = dst + i * p.L * Np;
      std::memset(d, 0, sizeof(Acc) * p.L * Np);
      for (int64_t n = 0; n < p.N; ++n)
        for (int64_t t = 0; t < p.L; ++t) d[t * Np + n] = cvt<T, Acc>(s[n * p.L + t]);
    }
  });
}

// Per-channel vectors A, and invariant B/C, padded to Np.
template <typename Acc>
void channel_vec(const void* src, int64_t d, int64_t N, int64_t Np, Acc* out) {
  std::memset(out, 0, sizeof(Acc) * Np);
  std::memcpy(out, static_cast<const Acc*>(src) + d * N, sizeof(Acc) * N);
}

// dt row for channel (b, d): delta + bias, softplus'ed if asked; with `sig`, also
// sigmoid(delta + bias), the softplus derivative, from the same exponential.
template <typename T, typename Acc>
void dt_row(const SelectiveScanParams& p, int64_t b, int64_t d, Acc* dt, Acc* sig = nullptr) {
  using V = typename Lane<Acc>::V;
  const Geometry<T, Acc> g(p);
  const Acc* src = acc_row<T, Acc>(static_cast<const T*>(p.delta) + g.row(b, d), dt, p.L);
  const Acc bias = p.delta_bias ? static_cast<const Acc*>(p.delta_bias)[d] : Acc(0);
  int64_t t = 0;
  for (; t + V::size <= p.L; t += V::size) {
    V x = V::load(src + t) + V::set1(bias);
    if (p.softplus) {
      V sg;
      x = softplus(x, sig ? &sg : nullptr);
      if (sig) sg.store(sig + t);
    }
    x.store(dt + t);
  }
  for (; t < p.L; ++t) {
    Acc x = src[t] + bias;
    if (p.softplus && sig) sig[t] = Acc(1) / (Acc(1) + Acc(std::exp(double(-x))));
    if (p.softplus) x = x > Acc(20) ? x : Acc(std::log1p(std::exp(double(x))));
    dt[t] = x;
  }
}

}  // namespace
}  // namespace KK_ISA_NS
}  // namespace kernkit
