// Small dense matmuls on fp32 scratch tiles, for kernels that work chunk by chunk
// (64 x 128 sized operands that live in L1/L2). Two engines with one interface:
//
//   F32Gemm:  fp32 FMAs, any ISA level.
//   Bf16Gemm: AVX512_BF16 pair dot products (vdpbf16ps) with fp32 accumulation; operands
//             are rounded to bf16 when they are prepared (as GPU kernels do before tensor-core dots).
//
// Use: a = e.prep_a(slot, A, lda, M, Kd); b = e.prep_b(slot, B, ldb, Kd, N);
//      e.mm(M, N, Kd, a, b, C, ldc, accumulate)   // C[M x N] (+)= A[M x Kd] . B[Kd x N]
// Matrices are row-major fp32 with leading dimensions in elements. N must be a multiple of 16
// (callers pad their tiles with zero columns); rows of A past M and of B past Kd are never read.
// Engines are constructed with a bound on every dimension (the bf16 engine keeps a few
// scratch slots so prepared operands can be reused across calls).
#pragma once
#include <algorithm>
#include <cstring>

#include "common/vec.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace gemm {

inline int round_up(int x, int m) { return (x + m - 1) / m * m; }

// dst[c][r] = src[r][c] for r < rows, c < cols (leading dimensions in elements).
inline void transpose(float* dst, int ldd, const float* src, int lds, int rows, int cols) {
  constexpr int TB = 16;
  for (int r0 = 0; r0 < rows; r0 += TB)
    for (int c0 = 0; c0 < cols; c0 += TB) {
      const int r1 = std::min(rows, r0 + TB), c1 = std::min(cols, c0 + TB);
      for (int c = c0; c < c1; ++c)
        for (int r = r0; r < r1; ++r) dst[size_t(c) * ldd + r] = src[size_t(r) * lds + c];
    }
}

#if defined(KK_ISA_AVX512)
constexpr int MR = 6, NB = 4;
#elif defined(KK_ISA_AVX2)
constexpr int MR = 4, NB = 3;
#else
constexpr int MR = 4, NB = 4;
#endif

struct MatA {
  const void* p;
  int ld;
};
struct MatB {
  const void* p;
  int ld;
};

// C[mr rows][nb vectors] (+)= A . B over Kd, fp32.
struct F32Kernel {
  using Elem = float;
  static constexpr int kLanes = Vec::size;   // output columns per vector
  template <int R, int W>
  static void block(int Kd, const float* A, int lda, const float* B, int ldb, float* C, int ldc, bool acc) {
    Vec c[R][W];
    for (int r = 0; r < R; ++r)
      for (int w = 0; w < W; ++w) c[r][w] = acc ? Vec::load(C + r * ldc + w * Vec::size) : Vec::zero();
    for (int kk = 0; kk < Kd; ++kk) {
      Vec b[W];
      for (int w = 0; w < W; ++w) b[w] = Vec::load(B + size_t(kk) * ldb + w * Vec::size);
      for (int r = 0; r < R; ++r) {
        const Vec a = Vec::set1(A[r * lda + kk]);
        for (int w = 0; w < W; ++w) c[r][w] = fma(a, b[w], c[r][w]);
      }
    }
    for (int r = 0; r < R; ++r)
      for (int w = 0; w < W; ++w) c[r][w].store(C + r * ldc + w * Vec::size);
  }
};

// Runs blk.run<R, W>(m, v) over M rows x N / Vec::size vectors, in MR x NB blocks plus
// smaller row / column tails (R and W picked at run time from small fixed sets).
template <int W, typename Blk>
inline void rows_of(int M, int v, const Blk& blk) {
  int m = 0;
  for (; m + MR <= M; m += MR) blk.template run<MR, W>(m, v);
  switch (M - m) {
    case 1: blk.template run<1, W>(m, v); break;
    case 2: blk.template run<2, W>(m, v); break;
    case 3: blk.template run<3, W>(m, v); break;
    case 4: if constexpr (MR > 4) blk.template run<(MR > 4 ? 4 : 1), W>(m, v); break;
    case 5: if constexpr (MR > 5) blk.template run<(MR > 5 ? 5 : 1), W>(m, v); break;
    default: break;
  }
}

template <typename Blk>
inline void for_tiles(int M, int N, const Blk& blk) {
  const int nv = N / Vec::size;
  int v = 0;
  for (; v + NB <= nv; v += NB) rows_of<NB>(M, v, blk);
  switch (nv - v) {
    case 1: rows_of<1>(M, v, blk); break;
    case 2: if constexpr (NB > 2) rows_of<(NB > 2 ? 2 : 1)>(M, v, blk); break;
    case 3: if constexpr (NB > 3) rows_of<(NB > 3 ? 3 : 1)>(M, v, blk); break;
    default: break;
  }
}

inline void zero_rows(float* C, int ldc, int M, int N) {
  for (int m = 0; m < M; ++m) std::memset(C + size_t(m) * ldc, 0, sizeof(float) * N);
}

// A block job for for_tiles: Kernel::block<R, W> on rows m.. and output vectors v..
template <typename Kernel>
struct BlockJob {
  int kd;   // reduction length in Kernel::Elem units (floats, or bf16 pairs)
  const typename Kernel::Elem *A, *B;
  int lda, ldb;
  float* C;
  int ldc;
  bool acc;
  template <int R, int W>
  void run(int m, int v) const {
    Kernel::template block<R, W>(kd, A + size_t(m) * lda, lda, B + v * Kernel::kLanes, ldb,
                                 C + size_t(m) * ldc + v * Kernel::kLanes, ldc, acc);
  }
};

struct F32Gemm {
  explicit F32Gemm(int = 0) {}
  MatA prep_a(int, const float* A, int lda, int, int) { return {A, lda}; }
  MatB prep_b(int, const float* B, int ldb, int, int) { return {B, ldb}; }
  void mm(int M, int N, int Kd, MatA a, MatB b, float* C, int ldc, bool acc) {
    const float* A = static_cast<const float*>(a.p);
    const float* B = static_cast<const float*>(b.p);
    if (Kd == 0) {
      if (!acc) zero_rows(C, ldc, M, N);
      return;
    }
    for_tiles(M, N, BlockJob<F32Kernel>{Kd, A, B, a.ld, b.ld, C, ldc, acc});
  }
};

#if defined(KK_ISA_AVX512)
struct Bf16Kernel {
  using Elem = uint32_t;                 // a bf16 pair
  static constexpr int kLanes = 16;
  template <int R, int W>
  static void block(int Kh, const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc, bool acc);
};

template <int R, int W>
inline void Bf16Kernel::block(int Kh, const uint32_t* A, int lda, const uint32_t* B, int ldb, float* C, int ldc,
                              bool acc) {
  __m512 c[R][W];
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) c[r][w] = acc ? _mm512_loadu_ps(C + r * ldc + w * 16) : _mm512_setzero_ps();
  for (int kp = 0; kp < Kh; ++kp) {
    __m512bh b[W];
    for (int w = 0; w < W; ++w) b[w] = (__m512bh)_mm512_loadu_si512(B + size_t(kp) * ldb + w * 16);
    for (int r = 0; r < R; ++r) {
      const __m512bh a = (__m512bh)_mm512_set1_epi32(int(A[r * lda + kp]));
      for (int w = 0; w < W; ++w) c[r][w] = _mm512_dpbf16_ps(c[r][w], a, b[w]);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int w = 0; w < W; ++w) _mm512_storeu_ps(C + r * ldc + w * 16, c[r][w]);
}

inline uint32_t bf16_pair(float lo, float hi) {
  return uint32_t(bf16_from_float(lo).bits) | (uint32_t(bf16_from_float(hi).bits) << 16);
}

// Operands rounded to bf16: A as pairs along its rows (Kd), B as pairs of its rows
// interleaved column by column (the vdpbf16ps layout).
struct Bf16Gemm {
  static constexpr int kSlots = 4;
  int cap_a, cap_b;
  Buf<uint32_t> a_buf, b_buf;
  // max_dim bounds every M, Kd and N the engine will see.
  explicit Bf16Gemm(int max_dim)
      : cap_a(max_dim * ((max_dim + 1) / 2)), cap_b(((max_dim + 1) / 2) * max_dim),
        a_buf(size_t(kSlots) * cap_a), b_buf(size_t(kSlots) * cap_b) {}
  MatA prep_a(int slot, const float* A, int lda, int M, int Kd) {
    const int kh = (Kd + 1) / 2;
    uint32_t* dst = a_buf.p + size_t(slot) * cap_a;
    for (int m = 0; m < M; ++m) {
      const float* row = A + size_t(m) * lda;
      uint32_t* out = dst + size_t(m) * kh;
      int kp = 0;
      for (; 2 * kp + 32 <= Kd; kp += 16) {
        // 32 floats -> 16 pairs: cvtne2ps_pbh(hi, lo) keeps element order lo..hi.
        const __m512bh x = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(row + 2 * kp + 16), _mm512_loadu_ps(row + 2 * kp));
        _mm512_storeu_si512(out + kp, (__m512i)x);
      }
      for (; kp < kh; ++kp) out[kp] = bf16_pair(row[2 * kp], 2 * kp + 1 < Kd ? row[2 * kp + 1] : 0.f);
    }
    return {dst, kh};
  }
  MatB prep_b(int slot, const float* B, int ldb, int Kd, int N) {
    const int kh = (Kd + 1) / 2;
    uint32_t* dst = b_buf.p + size_t(slot) * cap_b;
    const __m512i idx = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22, 6,
                                         21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
    for (int kp = 0; kp < kh; ++kp) {
      const float* r0 = B + size_t(2 * kp) * ldb;
      const float* r1 = 2 * kp + 1 < Kd ? r0 + ldb : nullptr;
      for (int n = 0; n < N; n += 16) {
        const __m512 lo = _mm512_loadu_ps(r0 + n), hi = r1 ? _mm512_loadu_ps(r1 + n) : _mm512_setzero_ps();
        // cvtne2ps_pbh(hi, lo): elements 0..15 from lo, 16..31 from hi; then interleave.
        const __m512i both = (__m512i)_mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(dst + size_t(kp) * N + n, _mm512_permutexvar_epi16(idx, both));
      }
    }
    return {dst, N};
  }
  void mm(int M, int N, int Kd, MatA a, MatB b, float* C, int ldc, bool acc) {
    const uint32_t* A = static_cast<const uint32_t*>(a.p);
    const uint32_t* B = static_cast<const uint32_t*>(b.p);
    const int kh = (Kd + 1) / 2;
    if (kh == 0) {
      if (!acc) zero_rows(C, ldc, M, N);
      return;
    }
    for_tiles(M, N, BlockJob<Bf16Kernel>{kh, A, B, a.ld, b.ld, C, ldc, acc});
  }
};
#endif

// The engine for bf16 inputs at this ISA level: vdpbf16ps where available, else fp32 FMAs.
#if defined(KK_ISA_AVX512)
using Bf16InputGemm = Bf16Gemm;
#else
using Bf16InputGemm = F32Gemm;
#endif

}  // namespace gemm
}  // namespace KK_ISA_NS
}  // namespace kernkit
