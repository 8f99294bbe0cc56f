// Large fp32 matmuls, C = A . B, for the straight-through backward of BitLinear
// (dX = dY . W_q, dW = dY^T . X_q): torch's CPU mm (MKL) runs its AVX2 code on
// AMD cores and reaches ~40% of the fp32 FMA peak here; a plain blocked GEMM with
// AVX-512 FMAs does ~2x better. Classic structure: B in Kc x NR panels, A in
// MR x Kc panels (both k-major, zero padded), an MR x NR register tile, strides
// of A and B arbitrary (transposes are free: the packing reads them).
#include <algorithm>
#include <cstring>

#include "common/parallel.h"
#include "common/sgemm.h"
#include "common/vec.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

#if defined(KK_ISA_AVX512)
constexpr int MR = 6, NV = 4;  // 24 accumulators + 4 B vectors + 1 broadcast of 32 registers
#elif defined(KK_ISA_AVX2)
constexpr int MR = 6, NV = 2;  // 12 + 2 + 1 of 16
#else
constexpr int MR = 4, NV = 4;
#endif
constexpr int NR = NV * Vec::size;
constexpr int64_t KC = 256;       // reduction slice: an A panel (MR x KC) stays in L1
constexpr int64_t MC = 16 * MR;   // A block (MC x KC) in L2

// C[rows][cols] (+)= A panel . B panel over kc (rows <= MR, cols <= NR).
void tile(int64_t kc, const float* a, const float* b, float* C, int64_t ldc, int rows, int cols, bool acc) {
  Vec t[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) t[r][v] = Vec::zero();
  for (int64_t k = 0; k < kc; ++k) {
    Vec bv[NV];
    for (int v = 0; v < NV; ++v) bv[v] = Vec::load(b + k * NR + v * Vec::size);
    for (int r = 0; r < MR; ++r) {
      const Vec av = Vec::set1(a[k * MR + r]);
      for (int v = 0; v < NV; ++v) t[r][v] = fma(av, bv[v], t[r][v]);
    }
  }
  if (rows == MR && cols == NR) {
    for (int r = 0; r < MR; ++r)
      for (int v = 0; v < NV; ++v) {
        float* c = C + r * ldc + v * Vec::size;
        (acc ? t[r][v] + Vec::load(c) : t[r][v]).store(c);
      }
    return;
  }
  alignas(64) float buf[MR * NR];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) t[r][v].store(buf + r * NR + v * Vec::size);
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) C[r * ldc + c] = (acc ? C[r * ldc + c] : 0.f) + buf[r * NR + c];
}

// dst[k][0..NR) per panel of NR columns: B[k0 + k][n0 + panel * NR + c], zero past n1.
void pack_b(const SgemmParams& p, int64_t k0, int64_t kc, int64_t n0, int64_t n1, float* dst) {
  for (int64_t j = n0; j < n1; j += NR) {
    const int cols = int(std::min<int64_t>(NR, n1 - j));
    for (int64_t k = 0; k < kc; ++k, dst += NR) {
      const float* src = p.B + (k0 + k) * p.b_rs + j * p.b_cs;
      if (p.b_cs == 1) std::memcpy(dst, src, sizeof(float) * cols);
      else
        for (int c = 0; c < cols; ++c) dst[c] = src[c * p.b_cs];
      std::fill(dst + cols, dst + NR, 0.f);
    }
  }
}

// dst[k][0..MR) per panel of MR rows: A[m0 + panel * MR + r][k0 + k], zero past m1.
void pack_a(const SgemmParams& p, int64_t k0, int64_t kc, int64_t m0, int64_t m1, float* dst) {
  for (int64_t i = m0; i < m1; i += MR, dst += kc * MR) {
    const int rows = int(std::min<int64_t>(MR, m1 - i));
    for (int r = 0; r < MR; ++r) {
      if (r >= rows) {
        for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = 0.f;
        continue;
      }
      const float* src = p.A + (i + r) * p.a_rs + k0 * p.a_cs;
      for (int64_t k = 0; k < kc; ++k) dst[k * MR + r] = src[k * p.a_cs];
    }
  }
}

// C[m0:m1, n0:n1] = A[m0:m1, :] . B[:, n0:n1]
void sgemm_block(const SgemmParams& p, int64_t m0, int64_t m1, int64_t n0, int64_t n1) {
  const int64_t npanels = (n1 - n0 + NR - 1) / NR;
  Buf<float> bp(size_t(KC * npanels * NR)), ap(size_t(KC * MC));
  for (int64_t k0 = 0; k0 < p.K; k0 += KC) {
    const int64_t kc = std::min(KC, p.K - k0);
    pack_b(p, k0, kc, n0, n1, bp.p);
    for (int64_t i0 = m0; i0 < m1; i0 += MC) {
      const int64_t i1 = std::min(m1, i0 + MC);
      pack_a(p, k0, kc, i0, i1, ap.p);
      for (int64_t i = i0; i < i1; i += MR) {  // an A panel stays in L1 while B panels stream from L2
        const float* a = ap.p + (i - i0) / MR * kc * MR;
        for (int64_t j = n0; j < n1; j += NR)
          tile(kc, a, bp.p + (j - n0) / NR * kc * NR, p.C + i * p.ldc + j, p.ldc, int(std::min<int64_t>(MR, i1 - i)),
               int(std::min<int64_t>(NR, n1 - j)), k0 > 0);
      }
    }
  }
}

}  // namespace

void sgemm_cpu(const SgemmParams& p) {
  if (p.M == 0 || p.N == 0) return;
  if (p.K == 0) {
    for (int64_t m = 0; m < p.M; ++m) std::fill(p.C + m * p.ldc, p.C + m * p.ldc + p.N, 0.f);
    return;
  }
  // One slab of columns (or rows, when C is tall) per thread: each packs its own B.
  const int64_t npan = (p.N + NR - 1) / NR, mpan = (p.M + MR - 1) / MR;
  if (npan >= mpan || npan >= 2 * p.threads) {
    parallel_for(npan, p.threads, 1, [&](int64_t j0, int64_t j1) {
      sgemm_block(p, 0, p.M, j0 * NR, std::min(p.N, j1 * NR));
    });
  } else {
    parallel_for(mpan, p.threads, 1, [&](int64_t i0, int64_t i1) {
      sgemm_block(p, i0 * MR, std::min(p.M, i1 * MR), 0, p.N);
    });
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
