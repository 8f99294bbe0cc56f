// Host API of csrc/simt/selftest/fragments.cu: kernels that exercise every wrapper in
// common/ptx.cuh and capture each lane's registers, plus checks of those captures against two
// independent descriptions of the fragment layouts (the PTX ISA tables as formulas, and CuTe's
// published MMA/ldmatrix atom layouts as data).
//
// The same functions run on a GPU (nvcc build) and under simt (emulated build), so captures from a
// real GPU are golden fragments for the emulator: compare them with compare_captures().
// No CUDA types appear here; include it from plain C++.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace kernkit {
namespace simt_selftest {

enum MmaKind : int { kMmaBf16 = 0, kMmaF16 = 1, kMmaS8 = 2 };

// mma probes: fixed inputs whose values encode matrix positions (small integers, exact in
// bf16/f16/int8) plus a random-integer and (s8) an int32-wraparound probe.
int mma_probe_count(int kind);
std::string mma_probe_name(int kind, int probe);
std::vector<uint32_t> mma_probe_inputs(int kind);  // [probe][lane][10]: a[0..3], b[0..1], c[0..3] (bits)

// Captures: the registers each lane ends up with.
std::vector<uint32_t> capture_mma(int kind);  // [probe][lane][4]: d[0..3] (float or int32 bits)
inline std::vector<uint32_t> capture_mma_bf16() { return capture_mma(kMmaBf16); }
inline std::vector<uint32_t> capture_mma_f16() { return capture_mma(kMmaF16); }
inline std::vector<uint32_t> capture_mma_s8() { return capture_mma(kMmaS8); }

// ldmatrix probe: a shared-memory image of 40 rows x 16 b16; element (matrix q, row j, col c) of the
// four 8x8 probe matrices holds 0x1000 | q<<8 | j<<4 | c, rows scattered over the image; the lanes that
// do not supply rows point at junk rows (0xDxxx), which must never show up.
std::vector<uint16_t> ldmatrix_probe_image();
std::vector<uint32_t> capture_ldmatrix(int num, bool trans);  // [lane][num]
inline std::vector<uint32_t> capture_ldmatrix_x1() { return capture_ldmatrix(1, false); }
inline std::vector<uint32_t> capture_ldmatrix_x2() { return capture_ldmatrix(2, false); }
inline std::vector<uint32_t> capture_ldmatrix_x4() { return capture_ldmatrix(4, false); }
inline std::vector<uint32_t> capture_ldmatrix_x1_trans() { return capture_ldmatrix(1, true); }
inline std::vector<uint32_t> capture_ldmatrix_x2_trans() { return capture_ldmatrix(2, true); }
inline std::vector<uint32_t> capture_ldmatrix_x4_trans() { return capture_ldmatrix(4, true); }

// cp.async (ca 4/8/16, cg 16, zero-fill, two groups, wait_group 1/0) + bar.sync 1/2 over 2 of 3 warps,
// ex2.approx, pack_bf16x2, pack_f16x2: [thread 0..95][kMiscWords].
constexpr int kMiscThreads = 96;
constexpr int kMiscWords = 14;
std::vector<float> misc_pack_inputs();  // the 64 floats the pack tests round (ties, overflow, subnormals)
std::vector<uint32_t> capture_misc();

// One-warp GEMM tiles, D(16x8) = A * B + C, row-major host arrays:
//   bf16: A 16x16, B 16x8 (K x N; loaded with ldmatrix.x2.trans), C 16x8
//   f16:  A 16x16, Bt 8x16 (N x K; ldmatrix.x2), C 16x8
//   s8:   A 16x32, Bt 8x32 (N x K; ldmatrix.x2), C 16x8 int32
// A is loaded with ldmatrix.x4; tiles reach shared memory through cp.async.
std::vector<float> gemm_tile_bf16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b_kn,
                                  const std::vector<float>& c);
std::vector<float> gemm_tile_f16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& bt_nk,
                                 const std::vector<float>& c);
std::vector<int32_t> gemm_tile_s8(const std::vector<int8_t>& a, const std::vector<int8_t>& bt_nk,
                                  const std::vector<int32_t>& c);

struct Captures {
  std::vector<uint32_t> mma[3];      // by MmaKind
  std::vector<uint32_t> ldsm[2][3];  // [trans][x1, x2, x4]
  std::vector<uint32_t> misc;
  std::vector<uint32_t> gemm[3];     // D bits of the GEMM tiles for the fixed inputs of gemm_inputs()
};
Captures capture_all();

struct CheckResult {
  std::string name;
  bool passed;
  std::string detail;
};
// Checks captures against the PTX ISA formulas and the CuTe layouts (mma, ldmatrix), against the
// documented semantics (cp.async, bar.sync, ex2, packs), and the GEMM tiles against a plain matmul.
std::vector<CheckResult> check_captures(const Captures& c);
// The PTX ISA formulas vs the CuTe atom layouts, table against table (no kernels run).
std::vector<CheckResult> check_layout_tables();
// Golden comparison of two captures (e.g. a GPU's and the emulator's): bitwise, except fp GEMM
// results and ex2 (tolerance: the emulator sums in fp64 and uses exp2f).
std::vector<CheckResult> compare_captures(const Captures& golden, const Captures& test);
// check_layout_tables() + check_captures(capture_all()).
std::vector<CheckResult> run_fragment_checks();

}  // namespace simt_selftest
}  // namespace kernkit
