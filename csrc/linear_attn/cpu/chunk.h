// Building blocks of the CPU chunked linear-attention kernels (compiled per ISA).
//
// A unit of work is one (sequence, head) pair walking its chunks in order with the
// K x V state in fp32. Within a chunk of C rows, G_i is the cumulative log decay
// from the chunk start to row i (per key dim for vector gates), so every factor the
// kernels form is exp of a non-positive number: exp(G_i), exp(G_i - G_j) for j <= i,
// exp(G_end - G_j). Tiles are fp32 row-major with widths padded to 16 (zero filled),
// which is what gemm.h needs.
#pragma once
#include <algorithm>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <vector>

#include "common/gemm.h"
#include "common/parallel.h"
#include "common/vec.h"
#include "linear_attn/linear_attn.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace la {

using gemm::round_up;

struct Seq {
  int b;          // batch index used to address tensors
  int64_t row0;   // first row of the sequence in its batch entry
  int len;
};

inline Seq seq_of(const LaParams& p, int n) {
  if (p.cu_seqlens) return {0, p.cu_seqlens[n], p.cu_seqlens[n + 1] - p.cu_seqlens[n]};
  return {n, 0, p.T};
}

// Tile sizes of one problem: chunk C, padded widths (multiples of 16).
struct Dims {
  int C, Cp, K, Kp, V, Vp, gld;  // gld: columns of the cumulative gate tile (1 or Kp)
  Dims(const LaParams& p, int vwidth)
      : C(p.chunk), Cp(round_up(p.chunk, 16)), K(p.K), Kp(round_up(p.K, 16)), V(vwidth), Vp(round_up(vwidth, 16)),
        gld(p.gate == LaGate::vector ? round_up(p.K, 16) : 1) {}
};

template <typename T>
inline const T* row_ptr(const LaTensor& t, const Seq& s, int64_t r, int h) {
  return static_cast<const T*>(t.ptr) + s.b * t.bs + (s.row0 + r) * t.ts + h * t.hs;
}

// Bound on every GEMM dimension of a problem (what the engines size their scratch for).
inline int max_dim(const LaParams& p) {
  return std::max({round_up(p.chunk, 16), round_up(p.K, 16), round_up(p.V, 16)});
}

// Offset of (sequence row r, head h) in a contiguous (B, T, H, X) tensor.
inline int64_t out_row(const LaParams& p, const Seq& s, int64_t r, int h) {
  return (int64_t(s.b) * p.T + s.row0 + r) * p.H + h;
}

// dst[i][0..width) = x[t0+i][c0..c0+width) as fp32 for i < n; zeros elsewhere in [C][ld).
template <typename T>
inline void load_rows(float* dst, int ld, int C, const LaTensor& t, const Seq& s, int64_t t0, int n, int h, int c0,
                      int width) {
  for (int i = 0; i < C; ++i) {
    float* d = dst + size_t(i) * ld;
    if (i < n) {
      widen(d, row_ptr<T>(t, s, t0 + i, h) + c0, width);
      std::memset(d + width, 0, sizeof(float) * (ld - width));
    } else {
      std::memset(d, 0, sizeof(float) * ld);
    }
  }
}

template <typename T>
inline void store_row(T* dst, const float* src, int n) {
  int i = 0;
  for (; i + Vec::size <= n; i += Vec::size) Vec::load(src + i).store(dst + i);
  for (; i < n; ++i) dst[i] = from_float<T>(src[i]);
}

// G[i][..] = sum of g over rows t0..t0+i (rows past n repeat row n-1); also
// E[i][..] = exp(g_{t0+i}) for vector gates (the per-step factors).
inline void gate_tile(float* G, float* E, const Dims& d, const LaParams& p, const Seq& s, int64_t t0, int n, int h) {
  const float* g = static_cast<const float*>(p.g);
  if (p.gate == LaGate::scalar) {
    float acc = 0.f;
    for (int i = 0; i < d.C; ++i) {
      if (i < n) acc += g[s.b * p.gbs + (s.row0 + t0 + i) * p.gts + h * p.ghs];
      G[i] = acc;
    }
    return;
  }
  for (int i = 0; i < d.C; ++i) {
    float* Gi = G + size_t(i) * d.gld;
    float* Ei = E + size_t(i) * d.gld;
    if (i >= n) {
      std::memcpy(Gi, Gi - d.gld, sizeof(float) * d.gld);
      for (int k = 0; k < d.gld; ++k) Ei[k] = 1.f;
      continue;
    }
    const float* gi = g + s.b * p.gbs + (s.row0 + t0 + i) * p.gts + h * p.ghs;
    widen(Ei, gi, d.K);
    for (int k = d.K; k < d.gld; ++k) Ei[k] = 0.f;
    for (int k = 0; k < d.gld; k += Vec::size) {
      const Vec x = Vec::load(Ei + k);
      (i ? Vec::load(Gi - d.gld + k) + x : x).store(Gi + k);
      exp(x).store(Ei + k);
    }
  }
}

// dst[i][k] = x[i][k] * mult * exp(G[i][k] - G[ref][k]) (ref < 0: exp(G[i][k]); ref = end: relative
// to the chunk's last row, i.e. exp(G_end - G_i) when `from_end`), for rows i < n; other rows zero.
inline void decay_rows(float* dst, const float* x, int ld, const float* G, const Dims& d, int n, float mult,
                       bool from_end) {
  const float* Gend = G + size_t(n - 1) * d.gld;
  for (int i = 0; i < d.C; ++i) {
    float* o = dst + size_t(i) * ld;
    if (i >= n) {
      std::memset(o, 0, sizeof(float) * ld);
      continue;
    }
    const float* Gi = G + size_t(i) * d.gld;
    const float* xi = x + size_t(i) * ld;
    if (d.gld == 1) {
      const Vec f = Vec::set1(mult * std::exp(from_end ? Gend[0] - Gi[0] : Gi[0]));
      for (int k = 0; k < ld; k += Vec::size) (Vec::load(xi + k) * f).store(o + k);
    } else {
      const Vec m = Vec::set1(mult);
      for (int k = 0; k < ld; k += Vec::size) {
        const Vec e = from_end ? Vec::load(Gend + k) - Vec::load(Gi + k) : Vec::load(Gi + k);
        (Vec::load(xi + k) * exp(e) * m).store(o + k);
      }
    }
  }
}

// S[k][..] *= exp(G_end[k]) over K rows (one factor for scalar gates).
inline void decay_state(float* S, int lds, const float* G, const Dims& d, int n) {
  const float* Gend = G + size_t(n - 1) * d.gld;
  for (int k = 0; k < d.K; ++k) {
    const Vec f = Vec::set1(std::exp(Gend[d.gld == 1 ? 0 : k]));
    float* row = S + size_t(k) * lds;
    for (int c = 0; c < lds; c += Vec::size) (Vec::load(row + c) * f).store(row + c);
  }
}

// Scalar gates: A[i][j] *= mult * exp(G_i - G_j) for j <= i < n, else 0 (for j < Cp).
inline void causal_decay(float* A, int lda, const float* G, const Dims& d, int n, float mult) {
  for (int i = 0; i < n; ++i) {
    float* a = A + size_t(i) * lda;
    const float gi = G[i];
    int j = 0;
    for (; j + Vec::size <= i + 1; j += Vec::size)
      (Vec::load(a + j) * exp(Vec::set1(gi) - Vec::load(G + j)) * Vec::set1(mult)).store(a + j);
    for (; j <= i; ++j) a[j] *= mult * std::exp(gi - G[j]);
    for (; j < d.Cp; ++j) a[j] = 0.f;
  }
}

// The transposed, decayed keys of a chunk: KdT[k][j] = k_j[k] * exp(G_end[k] - G_j[k]), j < n.
inline void decayed_keys_t(float* KdT, float* tmp, const float* Kc, const float* G, const Dims& d, int n) {
  decay_rows(tmp, Kc, d.Kp, G, d, n, 1.f, true);
  gemm::transpose(KdT, d.Cp, tmp, d.Kp, d.C, d.Kp);
}

}  // namespace la
}  // namespace KK_ISA_NS
}  // namespace kernkit
