// simt: the pure math behind common/ptx.cuh's emulated tensor-core instructions, as whole-warp
// functions (all 32 lanes' registers in, all 32 lanes' registers out). No fiber runtime, no CUDA
// headers: ptx.cuh's KK_SIMT branch wraps these in kk_simt::warp_collective, and they can be
// unit-tested on their own.
//
// Fragment layouts follow the PTX ISA tables ("Matrix Fragments for mma.m16n8k16 / m16n8k32" and
// "ldmatrix"), with groupID = lane >> 2 and threadID_in_group = lane % 4. Element e of a lane's
// fragment is packed low-first: 16-bit elements e = 2*reg + half, 8-bit elements e = 4*reg + byte.
// These formulas are cross-checked against CuTe's MMA/copy atom layouts and, on a GPU, against
// captured per-lane registers by csrc/simt/selftest/fragments.cu.
//
// Numerics: mma products are exact in double (bf16/f16 have at most 11 significant bits) and the
// K products plus the accumulator are summed in double and rounded once to float. The tensor
// core's adder tree rounds/truncates differently in the last bits, so compare fp results with a
// tolerance. The s8 mma is exact: int32 accumulation with two's-complement wraparound.
#pragma once

#include <cstdint>
#include <cstring>

namespace kk_simt {
namespace emul {

// ---------------------------------------------------------------------------------------------
// Fragment formulas: (lane, element) -> (row, col) of the fragment's matrix.
// ---------------------------------------------------------------------------------------------
// m16n8k16, A (16x16, row-major MxK), 8 x 16-bit elements per lane in a[0..3].
constexpr int m16n8k16_a_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 1) & 1); }
constexpr int m16n8k16_a_col(int lane, int e) { return 2 * (lane & 3) + (e & 1) + 8 * (e >> 2); }
// m16n8k16, B (16x8, KxN; row = k, col = n), 4 x 16-bit elements per lane in b[0..1].
constexpr int m16n8k16_b_row(int lane, int e) { return 2 * (lane & 3) + (e & 1) + 8 * (e >> 1); }
constexpr int m16n8k16_b_col(int lane, int /*e*/) { return lane >> 2; }
// m16n8k32 (8-bit), A (16x32, MxK), 16 x 8-bit elements per lane in a[0..3].
constexpr int m16n8k32_a_row(int lane, int e) { return (lane >> 2) + 8 * ((e >> 2) & 1); }
constexpr int m16n8k32_a_col(int lane, int e) { return 4 * (lane & 3) + (e & 3) + 16 * (e >> 3); }
// m16n8k32 (8-bit), B (32x8, KxN), 8 x 8-bit elements per lane in b[0..1].
constexpr int m16n8k32_b_row(int lane, int e) { return 4 * (lane & 3) + (e & 3) + 16 * (e >> 2); }
constexpr int m16n8k32_b_col(int lane, int /*e*/) { return lane >> 2; }
// C/D of both shapes (16x8, MxN), 4 x 32-bit elements per lane in c[0..3] / d[0..3].
constexpr int m16n8_c_row(int lane, int e) { return (lane >> 2) + 8 * (e >> 1); }
constexpr int m16n8_c_col(int lane, int e) { return 2 * (lane & 3) + (e & 1); }

// ---------------------------------------------------------------------------------------------
// Scalar conversions (bit patterns -> value), exact.
// ---------------------------------------------------------------------------------------------
inline float bf16_bits_to_float(uint16_t h) {
  const uint32_t u = uint32_t(h) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline float f16_bits_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  uint32_t man = h & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (man << 13);  // inf / NaN (payload kept)
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (man << 13);
  } else if (man == 0) {
    u = sign;
  } else {  // subnormal: normalise
    int e = 113;
    while (!(man & 0x400u)) { man <<= 1; --e; }
    u = sign | (uint32_t(e) << 23) | ((man & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

inline uint16_t half_of(uint32_t r, int h) { return uint16_t(r >> (16 * h)); }
inline int8_t byte_of(uint32_t r, int b) { return int8_t(uint8_t(r >> (8 * b))); }

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 over the whole warp.
// ---------------------------------------------------------------------------------------------
template <float (*ToFloat)(uint16_t)>
inline void mma_m16n8k16_f32(const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4],
                             float d[32][4]) {
  double A[16][16], B[16][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int e = 0; e < 8; ++e)
      A[m16n8k16_a_row(lane, e)][m16n8k16_a_col(lane, e)] = ToFloat(half_of(a[lane][e >> 1], e & 1));
    for (int e = 0; e < 4; ++e)
      B[m16n8k16_b_row(lane, e)][m16n8k16_b_col(lane, e)] = ToFloat(half_of(b[lane][e >> 1], e & 1));
    for (int e = 0; e < 4; ++e) C[m16n8_c_row(lane, e)][m16n8_c_col(lane, e)] = c[lane][e];
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) {
      const int m = m16n8_c_row(lane, e), n = m16n8_c_col(lane, e);
      double s = C[m][n];
      for (int k = 0; k < 16; ++k) s += A[m][k] * B[k][n];
      d[lane][e] = float(s);
    }
}

inline void mma_m16n8k16_bf16(const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4],
                              float d[32][4]) {
  mma_m16n8k16_f32<&bf16_bits_to_float>(a, b, c, d);
}
inline void mma_m16n8k16_f16(const uint32_t a[32][4], const uint32_t b[32][2], const float c[32][4],
                             float d[32][4]) {
  mma_m16n8k16_f32<&f16_bits_to_float>(a, b, c, d);
}

// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 over the whole warp (wrapping int32).
// ---------------------------------------------------------------------------------------------
inline void mma_m16n8k32_s8(const uint32_t a[32][4], const uint32_t b[32][2], const int32_t c[32][4],
                            int32_t d[32][4]) {
  int32_t A[16][32], B[32][8], C[16][8];
  for (int lane = 0; lane < 32; ++lane) {
    for (int e = 0; e < 16; ++e) A[m16n8k32_a_row(lane, e)][m16n8k32_a_col(lane, e)] = byte_of(a[lane][e >> 2], e & 3);
    for (int e = 0; e < 8; ++e) B[m16n8k32_b_row(lane, e)][m16n8k32_b_col(lane, e)] = byte_of(b[lane][e >> 2], e & 3);
    for (int e = 0; e < 4; ++e) C[m16n8_c_row(lane, e)][m16n8_c_col(lane, e)] = c[lane][e];
  }
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < 4; ++e) {
      const int m = m16n8_c_row(lane, e), n = m16n8_c_col(lane, e);
      uint32_t s = uint32_t(C[m][n]);  // unsigned: wraparound is defined
      for (int k = 0; k < 32; ++k) s += uint32_t(A[m][k] * B[k][n]);
      d[lane][e] = int32_t(s);
    }
}

// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16 over the whole warp.
// rows[l] is lane l's row address; lanes 8*i .. 8*i+7 supply rows 0..7 of matrix i (i < num), the
// other lanes' addresses are ignored. Each row is 8 x b16 = 16 contiguous bytes.
//   plain:  out[l][i] = { M_i[l/4][2*(l%4)], M_i[l/4][2*(l%4)+1] }          (low half first)
//   .trans: out[l][i] = { M_i[2*(l%4)][l/4], M_i[2*(l%4)+1][l/4] }
// out[l][i] for i >= num is left untouched.
// ---------------------------------------------------------------------------------------------
inline uint16_t ldsm_elem(const void* const rows[32], int matrix, int row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const unsigned char*>(rows[8 * matrix + row]) + 2 * col, 2);
  return v;
}

inline void ldmatrix(int num, bool trans, const void* const rows[32], uint32_t out[32][4]) {
  for (int lane = 0; lane < 32; ++lane) {
    const int g = lane >> 2, t = lane & 3;
    for (int i = 0; i < num; ++i) {
      uint16_t lo, hi;
      if (!trans) {
        lo = ldsm_elem(rows, i, g, 2 * t);
        hi = ldsm_elem(rows, i, g, 2 * t + 1);
      } else {
        lo = ldsm_elem(rows, i, 2 * t, g);
        hi = ldsm_elem(rows, i, 2 * t + 1, g);
      }
      out[lane][i] = uint32_t(lo) | (uint32_t(hi) << 16);
    }
  }
}

}  // namespace emul
}  // namespace kk_simt
