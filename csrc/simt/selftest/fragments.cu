// Self-test of common/ptx.cuh: kernels that run every wrapper and capture each lane's registers,
// one-warp GEMM tiles (cp.async -> shared -> ldmatrix -> mma), and host checks of the captures
// against two independent descriptions of the fragment layouts:
//   (a) the PTX ISA fragment tables, written below as the ISA states them (groupID = lane >> 2,
//       threadID_in_group = lane % 4), and
//   (b) CuTe's published atom layouts (cute/atom/mma_traits_sm80.hpp, copy_traits_sm75.hpp),
//       transcribed as shape/stride data and evaluated by a small evaluator of our own.
// Compiles with nvcc (a GPU run gives golden fragments) and under simt (the emulator's answers).
// Keep the kernels few and untemplated: this file must compile in seconds.
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <functional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "common/cuda_launch.cuh"
#include "common/ptx.cuh"
#include "simt/selftest/fragments.h"

namespace kernkit {
namespace simt_selftest {
namespace {

// ---------------------------------------------------------------------------------------------
// ldmatrix probe geometry (kernel and host): 40 rows x 32 bytes. Data row i (= 8*matrix + row,
// i < 32) sits in image row (13i + 5) % 32, in 16-byte chunk (i >> 1) & 1; rows 32..39 are junk
// rows that the lanes which supply no address point at.
// ---------------------------------------------------------------------------------------------
constexpr int kImgRows = 40;
constexpr int kImgCols = 16;  // b16 per image row
__host__ __device__ inline int ldsm_lane_row(int lane, int num) {
  return lane < 8 * num ? (lane * 13 + 5) % 32 : 32 + (lane & 7);
}
__host__ __device__ inline int ldsm_lane_chunk(int lane, int num) { return lane < 8 * num ? (lane >> 1) & 1 : 0; }

constexpr int kMmaRegsIn = 10;  // a[4], b[2], c[4]

// ---------------------------------------------------------------------------------------------
// Kernels
// ---------------------------------------------------------------------------------------------
// One warp; per probe each lane loads its a/b/c registers, runs the mma, stores d.
__global__ void mma_probe_kernel(int kind, int probes, const uint32_t* __restrict__ in, uint32_t* __restrict__ out) {
  const int lane = threadIdx.x;
  for (int p = 0; p < probes; ++p) {
    const uint32_t* r = in + (p * 32 + lane) * kMmaRegsIn;
    uint32_t* o = out + (p * 32 + lane) * 4;
    const uint32_t a[4] = {r[0], r[1], r[2], r[3]};
    const uint32_t b[2] = {r[4], r[5]};
    if (kind == kMmaS8) {
      const int c[4] = {int(r[6]), int(r[7]), int(r[8]), int(r[9])};
      int d[4];
      ptx::mma_m16n8k32_s8(d, a, b, c);
      for (int i = 0; i < 4; ++i) o[i] = uint32_t(d[i]);
    } else {
      const float c[4] = {__uint_as_float(r[6]), __uint_as_float(r[7]), __uint_as_float(r[8]), __uint_as_float(r[9])};
      float d[4];
      if (kind == kMmaBf16) ptx::mma_m16n8k16_bf16(d, a, b, c);
      else ptx::mma_m16n8k16_f16(d, a, b, c);
      for (int i = 0; i < 4; ++i) o[i] = __float_as_uint(d[i]);
    }
  }
}

// One warp; all six ldmatrix forms on the probe image. out[(variant * 32 + lane) * 4 + reg],
// variant = 3 * trans + {x1: 0, x2: 1, x4: 2}.
__global__ void ldmatrix_probe_kernel(const uint4* __restrict__ image, uint32_t* __restrict__ out) {
  KK_SHARED(uint4, img, [kImgRows * 2]);
  const int lane = threadIdx.x;
  for (int i = lane; i < kImgRows * 2; i += 32) ptx::cp_async_cg(&img[i], &image[i]);
  ptx::cp_async_wait_all();
  __syncthreads();
  const unsigned char* base = reinterpret_cast<const unsigned char*>(img);
  const void* row1 = base + ldsm_lane_row(lane, 1) * 32 + ldsm_lane_chunk(lane, 1) * 16;
  const void* row2 = base + ldsm_lane_row(lane, 2) * 32 + ldsm_lane_chunk(lane, 2) * 16;
  const void* row4 = base + ldsm_lane_row(lane, 4) * 32 + ldsm_lane_chunk(lane, 4) * 16;
  uint32_t* o = out + lane * 4;
  uint32_t r1[1], r2[2], r4[4];
  ptx::ldmatrix_x1(r1, row1);
  o[0 * 128] = r1[0];
  ptx::ldmatrix_x2(r2, row2);
  for (int i = 0; i < 2; ++i) o[1 * 128 + i] = r2[i];
  ptx::ldmatrix_x4(r4, row4);
  for (int i = 0; i < 4; ++i) o[2 * 128 + i] = r4[i];
  ptx::ldmatrix_x1_trans(r1, row1);
  o[3 * 128] = r1[0];
  ptx::ldmatrix_x2_trans(r2, row2);
  for (int i = 0; i < 2; ++i) o[4 * 128 + i] = r2[i];
  ptx::ldmatrix_x4_trans(r4, row4);
  for (int i = 0; i < 4; ++i) o[5 * 128 + i] = r4[i];
}

// 96 threads. Threads 0..63 (warps 0, 1): cp.async into their own 48-byte slot in two groups, then
// read the slot of thread 63 - t (the other warp) after wait_group 1 + bar.sync 1 (first group)
// and after wait_group 0 + bar.sync 2 (second group). Warp 2 takes no part in those barriers.
// All threads: ex2.approx and the two packs.
__global__ void misc_kernel(const unsigned char* __restrict__ src, const float* __restrict__ vals,
                            uint32_t* __restrict__ out) {
  KK_SHARED(uint4, slots, [64 * 3]);
  const int t = threadIdx.x;
  uint32_t* o = out + t * kMiscWords;
  if (t < 64) {
    for (int k = 0; k < 3; ++k) slots[3 * t + k] = make_uint4(0xcdcdcdcdu, 0xcdcdcdcdu, 0xcdcdcdcdu, 0xcdcdcdcdu);
    unsigned char* slot = reinterpret_cast<unsigned char*>(&slots[3 * t]);
    const unsigned char* s = src + 48 * t;
    ptx::cp_async_cg(slot, s, t % 17);
    ptx::cp_async_ca<16>(slot + 16, s + 16, (t * 5) % 17);
    ptx::cp_async_commit();
    ptx::cp_async_ca<8>(slot + 32, s + 32, t % 9);
    ptx::cp_async_ca<4>(slot + 40, s + 40, t % 5);
    ptx::cp_async_commit();
    ptx::cp_async_wait<1>();
    ptx::bar_sync(1, 64);
    const uint32_t* partner = reinterpret_cast<const uint32_t*>(&slots[3 * (63 - t)]);
    for (int w = 0; w < 8; ++w) o[w] = partner[w];
    ptx::cp_async_wait<0>();
    ptx::bar_sync(2, 64);
    for (int w = 8; w < 11; ++w) o[w] = partner[w];
  }
  o[11] = __float_as_uint(ptx::ex2_approx(float(t - 48) * 0.359375f));  // exact input, no fma question
  o[12] = ptx::pack_bf16x2(vals[t % 64], vals[(t + 17) % 64]);
  o[13] = ptx::pack_f16x2(vals[t % 64], vals[(t + 17) % 64]);
}

// One warp: D(16x8) = A * B + C. A: 16 rows x 32 bytes (16x16 b16 or 16x32 s8) via ldmatrix.x4.
// B: bf16 as K x N (16 rows x 16 bytes) via ldmatrix.x2.trans; f16 / s8 as N x K (8 rows x 32 bytes)
// via ldmatrix.x2. C and D row-major 16x8 (bits), through the C/D fragment formula.
__global__ void gemm_tile_kernel(int kind, const uint4* __restrict__ a, const uint4* __restrict__ b,
                                 const uint32_t* __restrict__ c, uint32_t* __restrict__ d) {
  KK_SHARED(uint4, sa, [32]);
  KK_SHARED(uint4, sb, [16]);
  const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
  ptx::cp_async_cg(&sa[lane], &a[lane]);
  if (lane < 16) ptx::cp_async_cg(&sb[lane], &b[lane]);
  ptx::cp_async_wait_all();
  __syncthreads();
  const unsigned char* pa = reinterpret_cast<const unsigned char*>(sa);
  const unsigned char* pb = reinterpret_cast<const unsigned char*>(sb);
  uint32_t af[4], bf[2];
  ptx::ldmatrix_x4(af, pa + (lane & 15) * 32 + (lane >> 4) * 16);
  if (kind == kMmaBf16) ptx::ldmatrix_x2_trans(bf, pb + (lane & 15) * 16);
  else ptx::ldmatrix_x2(bf, pb + (lane & 7) * 32 + ((lane >> 3) & 1) * 16);
  int idx[4];
  for (int i = 0; i < 4; ++i) idx[i] = (g + 8 * (i >> 1)) * 8 + 2 * t + (i & 1);
  if (kind == kMmaS8) {
    const int cf[4] = {int(c[idx[0]]), int(c[idx[1]]), int(c[idx[2]]), int(c[idx[3]])};
    int df[4];
    ptx::mma_m16n8k32_s8(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[idx[i]] = uint32_t(df[i]);
  } else {
    const float cf[4] = {__uint_as_float(c[idx[0]]), __uint_as_float(c[idx[1]]), __uint_as_float(c[idx[2]]),
                         __uint_as_float(c[idx[3]])};
    float df[4];
    if (kind == kMmaBf16) ptx::mma_m16n8k16_bf16(df, af, bf, cf);
    else ptx::mma_m16n8k16_f16(df, af, bf, cf);
    for (int i = 0; i < 4; ++i) d[idx[i]] = __float_as_uint(df[i]);
  }
}

// ---------------------------------------------------------------------------------------------
// Host utilities
// ---------------------------------------------------------------------------------------------
void check_cuda(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string("fragments selftest: ") + what + ": " + cudaGetErrorString(e));
}

struct DevMem {
  void* p = nullptr;
  size_t bytes;
  explicit DevMem(size_t n) : bytes(n) {
    check_cuda(cudaMalloc(&p, n ? n : 1), "cudaMalloc");
    check_cuda(cudaMemset(p, 0, n), "cudaMemset");
  }
  DevMem(const void* host, size_t n) : DevMem(n) { check_cuda(cudaMemcpy(p, host, n, cudaMemcpyHostToDevice), "cudaMemcpy"); }
  ~DevMem() { cudaFree(p); }
  DevMem(const DevMem&) = delete;
  DevMem& operator=(const DevMem&) = delete;
  template <typename T> T* as() const { return static_cast<T*>(p); }
  std::vector<uint32_t> words() const {
    std::vector<uint32_t> h(bytes / 4);
    check_cuda(cudaMemcpy(h.data(), p, bytes, cudaMemcpyDeviceToHost), "cudaMemcpy");
    return h;
  }
};

void finish(const char* what) {
  check_cuda(cudaGetLastError(), what);
  check_cuda(cudaDeviceSynchronize(), what);
}

uint32_t f2u(float f) { uint32_t u; std::memcpy(&u, &f, 4); return u; }
float u2f(uint32_t u) { float f; std::memcpy(&f, &u, 4); return f; }

// Round to nearest even, written here independently of the emulated <cuda_bf16.h>/<cuda_fp16.h>.
uint16_t bf16_bits(float f) {
  uint32_t x = f2u(f);
  if ((x & 0x7fffffffu) > 0x7f800000u) return uint16_t((x >> 16) | 0x40u);
  x += 0x7fffu + ((x >> 16) & 1u);
  return uint16_t(x >> 16);
}
uint16_t f16_bits(float f) {
  const uint32_t x = f2u(f), ax = x & 0x7fffffffu;
  const uint16_t sign = uint16_t((x >> 16) & 0x8000u);
  if (ax > 0x7f800000u) return uint16_t(sign | 0x7e00u | ((ax >> 13) & 0x3ffu));
  if (ax >= 0x477ff000u) return uint16_t(sign | 0x7c00u);  // >= 65520 rounds to inf
  if (ax < 0x38800000u) {                                   // below 2^-14: a multiple of 2^-24
    const float q = std::nearbyint(std::fabs(f) * 16777216.0f);  // exact scaling, RNE
    return uint16_t(sign | uint16_t(q));
  }
  uint32_t h = (((ax >> 23) - 112u) << 10) | ((ax >> 13) & 0x3ffu);
  const uint32_t rem = ax & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1u))) ++h;
  return uint16_t(sign | h);
}
double bf16_value(uint16_t h) { return u2f(uint32_t(h) << 16); }
double f16_value(uint16_t h) {
  const int e = (h >> 10) & 0x1f, m = h & 0x3ff;
  const double s = (h & 0x8000) ? -1.0 : 1.0;
  if (e == 0x1f) return m ? NAN : s * INFINITY;
  return e ? s * std::ldexp(1024 + m, e - 25) : s * std::ldexp(m, -24);
}

struct Rng {
  uint64_t s;
  uint64_t next() {
    s += 0x9e3779b97f4a7c15ull;
    uint64_t z = s;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  int uniform(int lo, int hi) { return lo + int(next() % uint64_t(hi - lo + 1)); }
  double unit() { return double(next() >> 11) * (2.0 / 9007199254740992.0) - 1.0; }  // [-1, 1)
};

std::string fmt(const char* f, long long a = 0, long long b = 0, long long c = 0, long long d = 0,
                long long e = 0, long long g = 0) {
  char buf[256];
  std::snprintf(buf, sizeof buf, f, a, b, c, d, e, g);
  return buf;
}

// ---------------------------------------------------------------------------------------------
// Description (a): the PTX ISA fragment tables, as the ISA words them. (lane, element i) -> (row, col);
// for B the row is k and the col is n.
// ---------------------------------------------------------------------------------------------
using RC = std::pair<int, int>;

// mma.m16n8k16, .f16/.bf16 A: a0..a7.
RC ptx_a_k16(int lane, int i) {
  const int groupID = lane >> 2, tig = lane % 4;
  const int row = ((i >= 0 && i < 2) || (i >= 4 && i < 6)) ? groupID : groupID + 8;
  const int col = i < 4 ? tig * 2 + (i & 0x1) : tig * 2 + (i & 0x1) + 8;
  return {row, col};
}
// mma.m16n8k16, .f16/.bf16 B: b0..b3.
RC ptx_b_k16(int lane, int i) {
  const int groupID = lane >> 2, tig = lane % 4;
  const int row = i < 2 ? tig * 2 + (i & 0x1) : tig * 2 + (i & 0x1) + 8;
  return {row, groupID};
}
// mma.m16n8k32, .s8 A: a0..a15.
RC ptx_a_k32(int lane, int i) {
  const int groupID = lane >> 2, tig = lane % 4;
  const int row = ((i >= 0 && i < 4) || (i >= 8 && i < 12)) ? groupID : groupID + 8;
  const int col = i < 8 ? tig * 4 + (i & 0x3) : tig * 4 + (i & 0x3) + 16;
  return {row, col};
}
// mma.m16n8k32, .s8 B: b0..b7.
RC ptx_b_k32(int lane, int i) {
  const int groupID = lane >> 2, tig = lane % 4;
  const int row = i < 4 ? tig * 4 + (i & 0x3) : tig * 4 + (i & 0x3) + 16;
  return {row, groupID};
}
// C/D of both shapes, .f32/.s32: c0..c3.
RC ptx_c(int lane, int i) {
  const int groupID = lane >> 2, tig = lane % 4;
  return {i < 2 ? groupID : groupID + 8, tig * 2 + (i & 0x1)};
}

// ---------------------------------------------------------------------------------------------
// Description (b): CuTe atom layouts as data. A layout maps (thread, value) to an index through
// hierarchical shapes/strides; a linear coordinate is split over a mode list first-mode-fastest.
// MMA atoms: A -> column-major M x K index, B -> column-major N x K, C -> column-major M x N.
// ldmatrix atoms: (thread, value bit) -> bit index of the 32 x 128-bit source rows, for the source
// (rows supplied by threads) and the destination (register bits held by threads).
// ---------------------------------------------------------------------------------------------
struct Mode { int shape, stride; };
struct TV {
  std::vector<Mode> thr, val;
};
int eval_modes(const std::vector<Mode>& ms, int x) {
  int r = 0;
  for (const Mode& m : ms) {
    r += (x % m.shape) * m.stride;
    x /= m.shape;
  }
  return r;
}
int size_of(const std::vector<Mode>& ms) {
  int n = 1;
  for (const Mode& m : ms) n *= m.shape;
  return n;
}
int eval_tv(const TV& l, int t, int v) { return eval_modes(l.thr, t) + eval_modes(l.val, v); }

// mma_traits_sm80.hpp. SM80_16x8x16_F32BF16BF16F32_TN and SM80_16x8x16_F32F16F16F32_TN both take the
// layouts of SM80_16x8x16_F16F16F16F16_TN; CLayout is SM80_16x8_Row for all three atoms.
//   ALayout Shape<Shape<_4,_8>,Shape<_2,_2,_2>>, Stride<Stride<_32,_1>,Stride<_16,_8,_128>>
//   BLayout Shape<Shape<_4,_8>,Shape<_2,_2>>,    Stride<Stride<_16,_1>,Stride<_8,_64>>
//   CLayout Shape<Shape<_4,_8>,Shape<_2,_2>>,    Stride<Stride<_32,_1>,Stride<_16,_8>>
// SM80_16x8x32_S32S8S8S32_TN:
//   ALayout Shape<Shape<_4,_8>,Shape<_4,_2,_2>>, Stride<Stride<_64,_1>,Stride<_16,_8,_256>>
//   BLayout Shape<Shape<_4,_8>,Shape<_4,_2>>,    Stride<Stride<_32,_1>,Stride<_8,_128>>
const TV kCuteA_16x8x16{{{4, 32}, {8, 1}}, {{2, 16}, {2, 8}, {2, 128}}};
const TV kCuteB_16x8x16{{{4, 16}, {8, 1}}, {{2, 8}, {2, 64}}};
const TV kCuteA_16x8x32{{{4, 64}, {8, 1}}, {{4, 16}, {2, 8}, {2, 256}}};
const TV kCuteB_16x8x32{{{4, 32}, {8, 1}}, {{4, 8}, {2, 128}}};
const TV kCuteC_16x8{{{4, 32}, {8, 1}}, {{2, 16}, {2, 8}}};

// copy_traits_sm75.hpp (SrcLayout / DstLayout):
//   SM75_U32x1_LDSM_N  src ((8,4),128):((128,0),1)   dst (32,32):(32,1)
//   SM75_U32x2_LDSM_N  src ((16,2),128):((128,0),1)  dst (32,(32,2)):(32,(1,1024))
//   SM75_U32x4_LDSM_N  src (32,128):(128,1)          dst (32,(32,4)):(32,(1,1024))
//   SM75_U16x2_LDSM_T  src as U32x1                  dst ((4,8),(16,2)):((256,16),(1,128))
//   SM75_U16x4_LDSM_T  src as U32x2                  dst ((4,8),(16,2,2)):((256,16),(1,128,1024))
//   SM75_U16x8_LDSM_T  src as U32x4                  dst ((4,8),(16,2,4)):((256,16),(1,128,1024))
struct CopyAtom {
  const char* name;
  TV src, dst;
};
const CopyAtom kCuteLdsm[2][3] = {
    {{"SM75_U32x1_LDSM_N", {{{8, 128}, {4, 0}}, {{128, 1}}}, {{{32, 32}}, {{32, 1}}}},
     {"SM75_U32x2_LDSM_N", {{{16, 128}, {2, 0}}, {{128, 1}}}, {{{32, 32}}, {{32, 1}, {2, 1024}}}},
     {"SM75_U32x4_LDSM_N", {{{32, 128}}, {{128, 1}}}, {{{32, 32}}, {{32, 1}, {4, 1024}}}}},
    {{"SM75_U16x2_LDSM_T", {{{8, 128}, {4, 0}}, {{128, 1}}}, {{{4, 256}, {8, 16}}, {{16, 1}, {2, 128}}}},
     {"SM75_U16x4_LDSM_T", {{{16, 128}, {2, 0}}, {{128, 1}}}, {{{4, 256}, {8, 16}}, {{16, 1}, {2, 128}, {2, 1024}}}},
     {"SM75_U16x8_LDSM_T", {{{32, 128}}, {{128, 1}}}, {{{4, 256}, {8, 16}}, {{16, 1}, {2, 128}, {4, 1024}}}}},
};

// ---------------------------------------------------------------------------------------------
// MMA descriptions: (lane, element) -> A (m, k), B (k, n), C/D (m, n).
// ---------------------------------------------------------------------------------------------
struct MmaDesc {
  std::string name;
  int K, a_elems, b_elems, bits;  // elements per lane of A and B, bits per A/B element
  std::function<RC(int, int)> a, b, c;
};

MmaDesc ptx_desc(int kind) {
  if (kind == kMmaS8) return {"PTX ISA m16n8k32 .s8", 32, 16, 8, 8, ptx_a_k32, ptx_b_k32, ptx_c};
  return {"PTX ISA m16n8k16 .bf16/.f16", 16, 8, 4, 16, ptx_a_k16, ptx_b_k16, ptx_c};
}

MmaDesc cute_desc(int kind) {
  const bool s8 = kind == kMmaS8;
  const TV* A = s8 ? &kCuteA_16x8x32 : &kCuteA_16x8x16;
  const TV* B = s8 ? &kCuteB_16x8x32 : &kCuteB_16x8x16;
  const char* name = kind == kMmaS8    ? "CuTe SM80_16x8x32_S32S8S8S32_TN"
                     : kind == kMmaF16 ? "CuTe SM80_16x8x16_F32F16F16F32_TN"
                                       : "CuTe SM80_16x8x16_F32BF16BF16F32_TN";
  MmaDesc d{name, s8 ? 32 : 16, size_of(A->val), size_of(B->val), s8 ? 8 : 16, nullptr, nullptr, nullptr};
  d.a = [A](int l, int e) { const int i = eval_tv(*A, l, e); return RC{i % 16, i / 16}; };
  d.b = [B](int l, int e) { const int i = eval_tv(*B, l, e); return RC{i / 8, i % 8}; };  // (k, n)
  d.c = [](int l, int e) { const int i = eval_tv(kCuteC_16x8, l, e); return RC{i % 16, i / 16}; };
  return d;
}

// Checks that f maps the lanes' `elems` elements one-to-one onto a rows x cols tile.
bool bijective(const std::function<RC(int, int)>& f, int elems, int rows, int cols, std::string* why) {
  std::vector<int> seen(rows * cols, 0);
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < elems; ++e) {
      const RC rc = f(l, e);
      if (rc.first < 0 || rc.first >= rows || rc.second < 0 || rc.second >= cols) {
        *why = fmt("lane %lld element %lld maps outside the tile (%lld, %lld)", l, e, rc.first, rc.second);
        return false;
      }
      if (seen[rc.first * cols + rc.second]++) {
        *why = fmt("(%lld, %lld) is held twice (again by lane %lld element %lld)", rc.first, rc.second, l, e);
        return false;
      }
    }
  return true;
}

// ---------------------------------------------------------------------------------------------
// MMA probes: logical matrices (small integers), packed into registers with the PTX description.
// ---------------------------------------------------------------------------------------------
struct Probe {
  std::string name;
  std::vector<double> A, B, C;  // 16 x K, K x 8, 16 x 8 row-major
};

std::vector<Probe> make_probes(int kind) {
  const int K = kind == kMmaS8 ? 32 : 16;
  std::vector<Probe> ps;
  auto blank = [&](const std::string& name) {
    Probe p{name, std::vector<double>(16 * K, 0.0), std::vector<double>(K * 8, 0.0), std::vector<double>(128, 0.0)};
    return p;
  };
  Rng rng{0x5eed0000ull + uint64_t(kind)};
  if (kind != kMmaS8) {
    for (int j = 0; j < 2; ++j) {
      Probe p = blank(fmt("A[m][k]=16m+k, B[k][n]=(k==n+%lld): D=A[m][n+%lld]", 8 * j, 8 * j));
      for (int m = 0; m < 16; ++m)
        for (int k = 0; k < 16; ++k) p.A[m * 16 + k] = 16 * m + k;
      for (int n = 0; n < 8; ++n) p.B[(n + 8 * j) * 8 + n] = 1;
      ps.push_back(p);
    }
    Probe p = blank("A=I, B[k][n]=8k+n: D=B[m][n]");
    for (int m = 0; m < 16; ++m) p.A[m * 16 + m] = 1;
    for (int k = 0; k < 16; ++k)
      for (int n = 0; n < 8; ++n) p.B[k * 8 + n] = 8 * k + n;
    ps.push_back(p);
    Probe r = blank("A,B random in [-4,4], C[m][n]=8m+n-64");
    for (double& v : r.A) v = rng.uniform(-4, 4);
    for (double& v : r.B) v = rng.uniform(-4, 4);
    for (int i = 0; i < 128; ++i) r.C[i] = i - 64;
    ps.push_back(r);
  } else {
    for (int j = 0; j < 4; ++j) {
      Probe p = blank(fmt("A[m][k]=8m+k%%8-64 on k/8==%lld, B[k][n]=(k==n+%lld): D=8m+n-64", j, 8 * j));
      for (int m = 0; m < 16; ++m)
        for (int k = 8 * j; k < 8 * j + 8; ++k) p.A[m * 32 + k] = 8 * m + k % 8 - 64;
      for (int n = 0; n < 8; ++n) p.B[(n + 8 * j) * 8 + n] = 1;
      ps.push_back(p);
    }
    for (int j = 0; j < 2; ++j) {
      Probe p = blank(fmt("A[m][k]=(k==m+%lld), B[k][n]=8(k%%16)+n-64 on k/16==%lld: D=8m+n-64", 16 * j, j));
      for (int m = 0; m < 16; ++m) p.A[m * 32 + m + 16 * j] = 1;
      for (int k = 16 * j; k < 16 * j + 16; ++k)
        for (int n = 0; n < 8; ++n) p.B[k * 8 + n] = 8 * (k % 16) + n - 64;
      ps.push_back(p);
    }
    Probe r = blank("A,B random in [-128,127], C random in [-2^20,2^20]");
    for (double& v : r.A) v = rng.uniform(-128, 127);
    for (double& v : r.B) v = rng.uniform(-128, 127);
    for (double& v : r.C) v = rng.uniform(-(1 << 20), 1 << 20);
    ps.push_back(r);
    Probe w = blank("A=B=127, C=2^31-1-100000 (rows 0-7): int32 wraparound");
    for (double& v : w.A) v = 127;
    for (double& v : w.B) v = 127;
    for (int i = 0; i < 128; ++i) w.C[i] = i < 64 ? 2147483647.0 - 100000.0 : -100.0;
    ps.push_back(w);
  }
  return ps;
}

uint32_t encode_ab(int kind, double v) {
  if (kind == kMmaBf16) return bf16_bits(float(v));
  if (kind == kMmaF16) return f16_bits(float(v));
  return uint8_t(int8_t(int(v)));
}
uint32_t encode_c(int kind, double v) { return kind == kMmaS8 ? uint32_t(int32_t(int64_t(v))) : f2u(float(v)); }
double decode_ab(int kind, uint32_t bits) {
  if (kind == kMmaBf16) return bf16_value(uint16_t(bits));
  if (kind == kMmaF16) return f16_value(uint16_t(bits));
  return double(int8_t(uint8_t(bits)));
}
double decode_c(int kind, uint32_t bits) { return kind == kMmaS8 ? double(int32_t(bits)) : double(u2f(bits)); }

// Expected D registers of one probe's inputs (32 lanes x 10 words) under a description: read the
// matrices out of the registers with the description's A/B/C maps, multiply exactly (all probe values
// are small integers, so fp32 holds the result exactly; s8 wraps in int32), map D back to lanes.
bool expected_d(int kind, const MmaDesc& d, const uint32_t* in, uint32_t* out, std::string* why) {
  const int K = d.K, per = 32 / d.bits;
  if (!bijective(d.a, d.a_elems, 16, K, why) || !bijective(d.b, d.b_elems, K, 8, why) ||
      !bijective(d.c, 4, 16, 8, why))
    return false;
  std::vector<double> A(16 * K), B(K * 8), C(128);
  const uint32_t mask = d.bits == 16 ? 0xffffu : 0xffu;
  for (int l = 0; l < 32; ++l) {
    const uint32_t* r = in + l * kMmaRegsIn;
    for (int e = 0; e < d.a_elems; ++e) {
      const RC rc = d.a(l, e);
      A[rc.first * K + rc.second] = decode_ab(kind, (r[e / per] >> (d.bits * (e % per))) & mask);
    }
    for (int e = 0; e < d.b_elems; ++e) {
      const RC rc = d.b(l, e);
      B[rc.first * 8 + rc.second] = decode_ab(kind, (r[4 + e / per] >> (d.bits * (e % per))) & mask);
    }
    for (int e = 0; e < 4; ++e) {
      const RC rc = d.c(l, e);
      C[rc.first * 8 + rc.second] = decode_c(kind, r[6 + e]);
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 4; ++e) {
      const RC rc = d.c(l, e);
      const int m = rc.first, n = rc.second;
      if (kind == kMmaS8) {
        uint32_t s = uint32_t(int32_t(C[m * 8 + n]));
        for (int k = 0; k < K; ++k) s += uint32_t(int32_t(A[m * K + k] * B[k * 8 + n]));
        out[l * 4 + e] = s;
      } else {
        double s = C[m * 8 + n];
        for (int k = 0; k < K; ++k) s += A[m * K + k] * B[k * 8 + n];
        out[l * 4 + e] = f2u(float(s));
      }
    }
  return true;
}

const char* kMmaNames[3] = {"mma.m16n8k16.bf16", "mma.m16n8k16.f16", "mma.m16n8k32.s8"};

CheckResult check_mma(int kind, const std::vector<uint32_t>& cap, const MmaDesc& d) {
  CheckResult res{std::string(kMmaNames[kind]) + " vs " + d.name, true, ""};
  const int P = mma_probe_count(kind);
  if (cap.size() != size_t(P) * 128) {
    res.passed = false;
    res.detail = fmt("capture has %lld words, expected %lld", (long long)cap.size(), P * 128);
    return res;
  }
  const std::vector<uint32_t> in = mma_probe_inputs(kind);
  int bad = 0;
  for (int p = 0; p < P; ++p) {
    uint32_t exp[128];
    std::string why;
    if (!expected_d(kind, d, in.data() + p * 32 * kMmaRegsIn, exp, &why)) {
      res.passed = false;
      res.detail = "description is not a layout: " + why;
      return res;
    }
    for (int i = 0; i < 128; ++i) {
      const uint32_t got = cap[p * 128 + i];
      if (got == exp[i]) continue;
      if (bad++ == 0) {
        const RC rc = d.c(i / 4, i % 4);
        res.detail = "probe " + std::to_string(p) + " (" + mma_probe_name(kind, p) + "): " +
                     fmt("lane %lld d[%lld] (D[%lld][%lld]) ", i / 4, i % 4, rc.first, rc.second) +
                     "got " + std::to_string(decode_c(kind, got)) + " expected " + std::to_string(decode_c(kind, exp[i]));
      }
    }
  }
  res.passed = bad == 0;
  if (bad) res.detail = std::to_string(bad) + " registers differ; first: " + res.detail;
  return res;
}

// ---------------------------------------------------------------------------------------------
// ldmatrix expectations. supplied(lane, num, col) = element col of the row lane `lane` points at.
// ---------------------------------------------------------------------------------------------
uint16_t supplied(const std::vector<uint16_t>& img, int lane, int num, int col) {
  return img[ldsm_lane_row(lane, num) * kImgCols + ldsm_lane_chunk(lane, num) * 8 + col];
}

// (a) PTX ISA: lanes 8i..8i+7 give the rows of matrix i; register i of lane l holds
// {M[l/4][2(l%4)], M[l/4][2(l%4)+1]}, or with .trans {M[2(l%4)][l/4], M[2(l%4)+1][l/4]}.
std::vector<uint32_t> ldsm_expected_ptx(const std::vector<uint16_t>& img, int num, bool trans) {
  std::vector<uint32_t> out(32 * num);
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < num; ++i) {
      uint32_t v = 0;
      for (int h = 0; h < 2; ++h) {
        const int row = trans ? 2 * (l % 4) + h : l / 4, col = trans ? l / 4 : 2 * (l % 4) + h;
        v |= uint32_t(supplied(img, 8 * i + row, num, col)) << (16 * h);
      }
      out[l * num + i] = v;
    }
  return out;
}

// (b) CuTe: destination bit (lane, 32*reg + bit) -> source bit index -> (supplying thread, bit of row).
std::vector<uint32_t> ldsm_expected_cute(const std::vector<uint16_t>& img, int num, bool trans, std::string* why) {
  const CopyAtom& atom = kCuteLdsm[trans][num == 1 ? 0 : num == 2 ? 1 : 2];
  std::vector<int> src_thr(32 * 128, -1), src_bit(32 * 128, -1);
  for (int s = 0; s < size_of(atom.src.thr); ++s)
    for (int b = 0; b < size_of(atom.src.val); ++b) {
      const int idx = eval_tv(atom.src, s, b);
      if (idx < 0 || idx >= 32 * 128) { *why = std::string(atom.name) + ": source index out of range"; return {}; }
      if (src_thr[idx] < 0) src_thr[idx] = s, src_bit[idx] = b;
    }
  if (size_of(atom.dst.thr) != 32 || size_of(atom.dst.val) != 32 * num) {
    *why = std::string(atom.name) + ": destination is not 32 threads x " + std::to_string(32 * num) + " bits";
    return {};
  }
  std::vector<uint32_t> out(32 * num, 0);
  for (int l = 0; l < 32; ++l)
    for (int v = 0; v < 32 * num; ++v) {
      const int idx = eval_tv(atom.dst, l, v);
      if (idx < 0 || idx >= 32 * 128 || src_thr[idx] < 0) { *why = std::string(atom.name) + ": unsourced bit"; return {}; }
      const int s = src_thr[idx], b = src_bit[idx];
      const uint32_t bit = (supplied(img, s, num, b / 16) >> (b % 16)) & 1u;
      out[l * num + v / 32] |= bit << (v % 32);
    }
  return out;
}

CheckResult compare_words(const std::string& name, const std::vector<uint32_t>& got, const std::vector<uint32_t>& exp,
                          int regs_per_lane) {
  CheckResult r{name, true, ""};
  if (got.size() != exp.size()) {
    r.passed = false;
    r.detail = fmt("size %lld, expected %lld", (long long)got.size(), (long long)exp.size());
    return r;
  }
  int bad = 0;
  for (size_t i = 0; i < got.size(); ++i)
    if (got[i] != exp[i] && bad++ == 0)
      r.detail = fmt("lane %lld r[%lld]: got 0x%08llx expected 0x%08llx", (long long)i / regs_per_lane,
                     (long long)i % regs_per_lane, got[i], exp[i]);
  if (bad) {
    r.passed = false;
    r.detail = std::to_string(bad) + " registers differ; first: " + r.detail;
  }
  return r;
}

const char* kLdsmNames[2][3] = {{"ldmatrix.x1", "ldmatrix.x2", "ldmatrix.x4"},
                                {"ldmatrix.x1.trans", "ldmatrix.x2.trans", "ldmatrix.x4.trans"}};
int num_of(int v) { return v == 0 ? 1 : v == 1 ? 2 : 4; }

std::vector<uint32_t> run_ldmatrix_kernel() {
  const std::vector<uint16_t> img = ldmatrix_probe_image();
  DevMem d_img(img.data(), img.size() * 2), d_out(6 * 128 * 4);
  KK_LAUNCH(1, 32, 0, nullptr, ldmatrix_probe_kernel)(d_img.as<const uint4>(), d_out.as<uint32_t>());
  finish("ldmatrix_probe_kernel");
  return d_out.words();
}
std::vector<uint32_t> slice_ldmatrix(const std::vector<uint32_t>& all, int num, bool trans) {
  const int v = 3 * int(trans) + (num == 1 ? 0 : num == 2 ? 1 : 2);
  std::vector<uint32_t> out(32 * num);
  for (int l = 0; l < 32; ++l)
    for (int i = 0; i < num; ++i) out[l * num + i] = all[(v * 32 + l) * 4 + i];
  return out;
}

// ---------------------------------------------------------------------------------------------
// misc: cp.async source bytes, pack inputs, expectations.
// ---------------------------------------------------------------------------------------------
std::vector<unsigned char> misc_src() {
  std::vector<unsigned char> s(64 * 48);
  for (size_t i = 0; i < s.size(); ++i) s[i] = uint8_t((i * 37 + 11) % 255 + 1);  // never 0
  return s;
}

float misc_ex2_input(int t) { return float(t - 48) * 0.359375f; }

// ---------------------------------------------------------------------------------------------
// GEMM tiles: fixed inputs for the captures, and a plain matmul.
// ---------------------------------------------------------------------------------------------
struct GemmInputs {
  std::vector<uint16_t> a16, b16;  // bf16: B is K x N; f16: Bt is N x K
  std::vector<int8_t> a8, b8;      // s8: Bt N x K
  std::vector<float> cf;
  std::vector<int32_t> ci;
};
GemmInputs gemm_inputs(int kind) {
  Rng rng{0x6e77ull + uint64_t(kind)};
  GemmInputs in;
  if (kind == kMmaS8) {
    in.a8.resize(16 * 32), in.b8.resize(8 * 32), in.ci.resize(128);
    for (auto& v : in.a8) v = int8_t(rng.uniform(-128, 127));
    for (auto& v : in.b8) v = int8_t(rng.uniform(-128, 127));
    for (auto& v : in.ci) v = rng.uniform(-100000, 100000);
  } else {
    in.a16.resize(256), in.b16.resize(128), in.cf.resize(128);
    auto enc = [&](double v) { return kind == kMmaBf16 ? bf16_bits(float(v)) : f16_bits(float(v)); };
    for (auto& v : in.a16) v = enc(rng.unit());
    for (auto& v : in.b16) v = enc(rng.unit());
    for (auto& v : in.cf) v = float(rng.unit());
  }
  return in;
}

// Reference D (double) and the scale sum |a*b| + |c| per element for the tolerance.
void gemm_reference(int kind, const GemmInputs& in, std::vector<double>* ref, std::vector<double>* scale) {
  ref->assign(128, 0.0), scale->assign(128, 0.0);
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 8; ++n) {
      double s, sc;
      if (kind == kMmaS8) {
        s = in.ci[m * 8 + n], sc = std::fabs(s);
        for (int k = 0; k < 32; ++k) s += double(in.a8[m * 32 + k]) * in.b8[n * 32 + k];
      } else {
        s = in.cf[m * 8 + n], sc = std::fabs(s);
        for (int k = 0; k < 16; ++k) {
          const double a = decode_ab(kind, in.a16[m * 16 + k]);
          const double b = decode_ab(kind, kind == kMmaBf16 ? in.b16[k * 8 + n] : in.b16[n * 16 + k]);
          s += a * b, sc += std::fabs(a * b);
        }
      }
      (*ref)[m * 8 + n] = s, (*scale)[m * 8 + n] = sc;
    }
}

std::vector<uint32_t> run_gemm(int kind, const void* a, size_t a_bytes, const void* b, size_t b_bytes, const void* c) {
  DevMem da(a, a_bytes), db(b, b_bytes), dc(c, 128 * 4), dd(128 * 4);
  KK_LAUNCH(1, 32, 0, nullptr, gemm_tile_kernel)(kind, da.as<const uint4>(), db.as<const uint4>(),
                                                 dc.as<const uint32_t>(), dd.as<uint32_t>());
  finish("gemm_tile_kernel");
  return dd.words();
}

std::vector<uint32_t> gemm_capture(int kind) {
  const GemmInputs in = gemm_inputs(kind);
  if (kind == kMmaS8) return run_gemm(kind, in.a8.data(), 512, in.b8.data(), 256, in.ci.data());
  return run_gemm(kind, in.a16.data(), 512, in.b16.data(), 256, in.cf.data());
}

const char* kGemmNames[3] = {"gemm tile bf16 (ldmatrix.x4 + x2.trans, mma)", "gemm tile f16 (ldmatrix.x4 + x2, mma)",
                             "gemm tile s8 (ldmatrix.x4 + x2, mma)"};

// fp: |d - ref| <= 2^-20 * (sum |a*b| + |c|) + tiny (the tensor core's fp32 adder tree may truncate);
// s8: exact.
CheckResult check_gemm(int kind, const std::vector<uint32_t>& cap) {
  CheckResult r{std::string(kGemmNames[kind]) + " vs matmul", true, ""};
  if (cap.size() != 128) {
    r.passed = false;
    r.detail = "capture size " + std::to_string(cap.size());
    return r;
  }
  std::vector<double> ref, scale;
  gemm_reference(kind, gemm_inputs(kind), &ref, &scale);
  double worst = 0;
  int bad = 0;
  for (int i = 0; i < 128; ++i) {
    const double got = decode_c(kind, cap[i]);
    const double err = std::fabs(got - ref[i]);
    const double tol = kind == kMmaS8 ? 0.0 : scale[i] * 0x1p-20 + 1e-30;
    worst = std::max(worst, kind == kMmaS8 ? err : err / (scale[i] + 1e-30));
    if (!(err <= tol) && bad++ == 0)
      r.detail = fmt("D[%lld][%lld]: ", i / 8, i % 8) + "got " + std::to_string(got) + " expected " + std::to_string(ref[i]);
  }
  r.passed = bad == 0;
  char buf[96];
  std::snprintf(buf, sizeof buf, "%s %.3g", kind == kMmaS8 ? "max abs error" : "max error / sum|ab|", worst);
  r.detail = bad ? std::to_string(bad) + " elements out of tolerance; first: " + r.detail + "; " + buf : buf;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public API
// ---------------------------------------------------------------------------------------------
int mma_probe_count(int kind) { return kind == kMmaS8 ? 8 : 4; }

std::string mma_probe_name(int kind, int probe) { return make_probes(kind).at(size_t(probe)).name; }

std::vector<uint32_t> mma_probe_inputs(int kind) {
  const std::vector<Probe> ps = make_probes(kind);
  const MmaDesc d = ptx_desc(kind);
  const int per = 32 / d.bits;
  std::vector<uint32_t> in(ps.size() * 32 * kMmaRegsIn, 0);
  for (size_t p = 0; p < ps.size(); ++p)
    for (int l = 0; l < 32; ++l) {
      uint32_t* r = &in[(p * 32 + l) * kMmaRegsIn];
      for (int e = 0; e < d.a_elems; ++e) {
        const RC rc = d.a(l, e);
        r[e / per] |= encode_ab(kind, ps[p].A[rc.first * d.K + rc.second]) << (d.bits * (e % per));
      }
      for (int e = 0; e < d.b_elems; ++e) {
        const RC rc = d.b(l, e);
        r[4 + e / per] |= encode_ab(kind, ps[p].B[rc.first * 8 + rc.second]) << (d.bits * (e % per));
      }
      for (int e = 0; e < 4; ++e) {
        const RC rc = d.c(l, e);
        r[6 + e] = encode_c(kind, ps[p].C[rc.first * 8 + rc.second]);
      }
    }
  return in;
}

std::vector<uint32_t> capture_mma(int kind) {
  const std::vector<uint32_t> in = mma_probe_inputs(kind);
  const int P = mma_probe_count(kind);
  DevMem d_in(in.data(), in.size() * 4), d_out(size_t(P) * 128 * 4);
  KK_LAUNCH(1, 32, 0, nullptr, mma_probe_kernel)(kind, P, d_in.as<const uint32_t>(), d_out.as<uint32_t>());
  finish("mma_probe_kernel");
  return d_out.words();
}

std::vector<uint16_t> ldmatrix_probe_image() {
  std::vector<uint16_t> img(kImgRows * kImgCols);
  for (int r = 0; r < kImgRows; ++r)
    for (int c = 0; c < kImgCols; ++c) img[r * kImgCols + c] = uint16_t(0xd000 | (r << 4) | c);
  for (int i = 0; i < 32; ++i)  // matrix i / 8, row i % 8, through the lane that supplies it in .x4
    for (int c = 0; c < 8; ++c)
      img[ldsm_lane_row(i, 4) * kImgCols + ldsm_lane_chunk(i, 4) * 8 + c] =
          uint16_t(0x1000 | ((i / 8) << 8) | ((i % 8) << 4) | c);
  return img;
}

std::vector<uint32_t> capture_ldmatrix(int num, bool trans) {
  if (num != 1 && num != 2 && num != 4) throw std::invalid_argument("capture_ldmatrix: num must be 1, 2 or 4");
  return slice_ldmatrix(run_ldmatrix_kernel(), num, trans);
}

std::vector<float> misc_pack_inputs() {
  const float t8 = 0x1p-8f, t11 = 0x1p-11f;
  std::vector<float> v = {
      1.0f + t8, 1.0f + 3 * t8, -(1.0f + t8), -(1.0f + 3 * t8),   // bf16 ties (to even: down, up)
      1.0f + t11, 1.0f + 3 * t11, -(1.0f + t11), 1.0f + t11 + 0x1p-20f,  // f16 ties, just above a tie
      65504.0f, 65519.0f, 65520.0f, -65520.0f, 1e5f,               // f16 max, overflow to inf
      0x1p-25f, 3 * 0x1p-25f, 1e-8f, 3e-6f, -5.9604645e-8f,        // f16 subnormals and ties
      3.4028235e38f, -3.4028235e38f, 0x1p-130f, -0.0f, 0.0f, INFINITY, -INFINITY,
      1.0f / 3.0f, -2.0f / 3.0f, 3.14159265f, 1000.5f, 0.1f};
  Rng rng{0xa11ull};
  while (v.size() < 64) v.push_back(float(rng.unit() * std::ldexp(1.0, rng.uniform(-20, 20))));
  return v;
}

std::vector<uint32_t> capture_misc() {
  const std::vector<unsigned char> src = misc_src();
  const std::vector<float> vals = misc_pack_inputs();
  DevMem d_src(src.data(), src.size()), d_vals(vals.data(), vals.size() * 4),
      d_out(size_t(kMiscThreads) * kMiscWords * 4);
  KK_LAUNCH(1, kMiscThreads, 0, nullptr, misc_kernel)(d_src.as<const unsigned char>(), d_vals.as<const float>(),
                                                     d_out.as<uint32_t>());
  finish("misc_kernel");
  return d_out.words();
}

std::vector<float> gemm_tile_bf16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& b_kn,
                                  const std::vector<float>& c) {
  if (a.size() != 256 || b_kn.size() != 128 || c.size() != 128) throw std::invalid_argument("gemm_tile_bf16: sizes");
  const std::vector<uint32_t> d = run_gemm(kMmaBf16, a.data(), 512, b_kn.data(), 256, c.data());
  std::vector<float> out(128);
  for (int i = 0; i < 128; ++i) out[i] = u2f(d[i]);
  return out;
}

std::vector<float> gemm_tile_f16(const std::vector<uint16_t>& a, const std::vector<uint16_t>& bt_nk,
                                 const std::vector<float>& c) {
  if (a.size() != 256 || bt_nk.size() != 128 || c.size() != 128) throw std::invalid_argument("gemm_tile_f16: sizes");
  const std::vector<uint32_t> d = run_gemm(kMmaF16, a.data(), 512, bt_nk.data(), 256, c.data());
  std::vector<float> out(128);
  for (int i = 0; i < 128; ++i) out[i] = u2f(d[i]);
  return out;
}

std::vector<int32_t> gemm_tile_s8(const std::vector<int8_t>& a, const std::vector<int8_t>& bt_nk,
                                  const std::vector<int32_t>& c) {
  if (a.size() != 512 || bt_nk.size() != 256 || c.size() != 128) throw std::invalid_argument("gemm_tile_s8: sizes");
  const std::vector<uint32_t> d = run_gemm(kMmaS8, a.data(), 512, bt_nk.data(), 256, c.data());
  return std::vector<int32_t>(d.begin(), d.end());
}

Captures capture_all() {
  Captures c;
  for (int k = 0; k < 3; ++k) c.mma[k] = capture_mma(k);
  const std::vector<uint32_t> all = run_ldmatrix_kernel();
  for (int t = 0; t < 2; ++t)
    for (int v = 0; v < 3; ++v) c.ldsm[t][v] = slice_ldmatrix(all, num_of(v), t == 1);
  c.misc = capture_misc();
  for (int k = 0; k < 3; ++k) c.gemm[k] = gemm_capture(k);
  return c;
}

std::vector<CheckResult> check_layout_tables() {
  std::vector<CheckResult> out;
  for (int kind = 0; kind < 3; ++kind) {
    const MmaDesc p = ptx_desc(kind), c = cute_desc(kind);
    const struct { const char* op; const std::function<RC(int, int)>&fp, &fc; int elems, rows, cols; } ops[3] = {
        {"A", p.a, c.a, p.a_elems, 16, p.K}, {"B", p.b, c.b, p.b_elems, p.K, 8}, {"C/D", p.c, c.c, 4, 16, 8}};
    for (const auto& op : ops) {
      CheckResult r{std::string(kMmaNames[kind]) + " " + op.op + ": PTX ISA table == " + c.name, true, ""};
      std::string why;
      if (!bijective(op.fp, op.elems, op.rows, op.cols, &why)) r.passed = false, r.detail = "PTX: " + why;
      else if (!bijective(op.fc, op.elems, op.rows, op.cols, &why)) r.passed = false, r.detail = "CuTe: " + why;
      for (int l = 0; l < 32 && r.passed; ++l)
        for (int e = 0; e < op.elems && r.passed; ++e)
          if (op.fp(l, e) != op.fc(l, e)) {
            r.passed = false;
            r.detail = fmt("lane %lld element %lld: PTX (%lld, %lld), CuTe (%lld, %lld)", l, e, op.fp(l, e).first,
                           op.fp(l, e).second, op.fc(l, e).first, op.fc(l, e).second);
          }
      if (r.passed) r.detail = fmt("%lld lanes x %lld elements agree", 32, op.elems);
      out.push_back(r);
    }
  }
  const std::vector<uint16_t> img = ldmatrix_probe_image();
  for (int t = 0; t < 2; ++t)
    for (int v = 0; v < 3; ++v) {
      std::string why;
      const std::vector<uint32_t> cute = ldsm_expected_cute(img, num_of(v), t == 1, &why);
      CheckResult r = why.empty() ? compare_words("", ldsm_expected_ptx(img, num_of(v), t == 1), cute, num_of(v))
                                  : CheckResult{"", false, why};
      r.name = std::string(kLdsmNames[t][v]) + ": PTX ISA table == CuTe " + kCuteLdsm[t][v].name;
      out.push_back(r);
    }
  return out;
}

std::vector<CheckResult> check_captures(const Captures& cap) {
  std::vector<CheckResult> out;
  for (int kind = 0; kind < 3; ++kind) {
    out.push_back(check_mma(kind, cap.mma[kind], ptx_desc(kind)));
    out.push_back(check_mma(kind, cap.mma[kind], cute_desc(kind)));
  }
  const std::vector<uint16_t> img = ldmatrix_probe_image();
  for (int t = 0; t < 2; ++t)
    for (int v = 0; v < 3; ++v) {
      const int num = num_of(v);
      CheckResult a = compare_words("", cap.ldsm[t][v], ldsm_expected_ptx(img, num, t == 1), num);
      a.name = std::string(kLdsmNames[t][v]) + " vs PTX ISA";
      out.push_back(a);
      std::string why;
      const std::vector<uint32_t> cute = ldsm_expected_cute(img, num, t == 1, &why);
      CheckResult b = why.empty() ? compare_words("", cap.ldsm[t][v], cute, num) : CheckResult{"", false, why};
      b.name = std::string(kLdsmNames[t][v]) + " vs CuTe " + kCuteLdsm[t][v].name;
      out.push_back(b);
    }

  // misc
  const std::vector<uint32_t>& m = cap.misc;
  if (m.size() != size_t(kMiscThreads) * kMiscWords) {
    out.push_back({"misc kernel", false, "capture size " + std::to_string(m.size())});
  } else {
    const std::vector<unsigned char> src = misc_src();
    CheckResult cp{"cp.async ca4/ca8/ca16/cg16 zero-fill, wait_group 1/0, bar.sync 1/2 (64 of 96 threads)", true, ""};
    int bad = 0;
    for (int t = 0; t < kMiscThreads; ++t) {
      unsigned char exp[44] = {};
      if (t < 64) {
        const int p = 63 - t;
        const int n[4] = {p % 17, (p * 5) % 17, p % 9, p % 5}, off[4] = {0, 16, 32, 40};
        for (int k = 0; k < 4; ++k)
          for (int i = 0; i < n[k]; ++i) exp[off[k] + i] = src[48 * p + off[k] + i];
      }
      unsigned char got[44];
      std::memcpy(got, &m[t * kMiscWords], 44);
      for (int i = 0; i < 44; ++i)
        if (got[i] != exp[i] && bad++ == 0)
          cp.detail = fmt("thread %lld byte %lld of thread %lld's slot: got 0x%02llx expected 0x%02llx", t, i,
                          63 - t, got[i], exp[i]);
    }
    if (bad) cp.passed = false, cp.detail = std::to_string(bad) + " bytes differ; first: " + cp.detail;
    out.push_back(cp);

    CheckResult ex{"ex2.approx.ftz.f32 (rel. error <= 2^-21)", true, ""};
    double worst = 0;
    for (int t = 0; t < kMiscThreads; ++t) {
      const double ref = std::exp2(double(misc_ex2_input(t))), got = u2f(m[t * kMiscWords + 11]);
      const double rel = std::fabs(got - ref) / ref;
      worst = std::max(worst, rel);
      if (!(rel <= 0x1p-21) && ex.passed) {
        ex.passed = false;
        ex.detail = fmt("thread %lld: ", t) + std::to_string(got) + " vs " + std::to_string(ref) + "; ";
      }
    }
    char buf[64];
    std::snprintf(buf, sizeof buf, "max rel. error %.3g", worst);
    ex.detail += buf;
    out.push_back(ex);

    const std::vector<float> vals = misc_pack_inputs();
    for (int f16 = 0; f16 < 2; ++f16) {
      CheckResult pk{f16 ? "pack_f16x2 (cvt.rn.f16x2.f32)" : "pack_bf16x2 (cvt.rn.bf16x2.f32)", true, ""};
      for (int t = 0; t < kMiscThreads && pk.passed; ++t) {
        const float lo = vals[t % 64], hi = vals[(t + 17) % 64];
        const uint32_t exp = f16 ? (uint32_t(f16_bits(lo)) | uint32_t(f16_bits(hi)) << 16)
                                 : (uint32_t(bf16_bits(lo)) | uint32_t(bf16_bits(hi)) << 16);
        const uint32_t got = m[t * kMiscWords + 12 + f16];
        if (got != exp) {
          pk.passed = false;
          char b2[160];
          std::snprintf(b2, sizeof b2, "thread %d: pack(%.9g, %.9g) = 0x%08x, expected 0x%08x", t, lo, hi, got, exp);
          pk.detail = b2;
        }
      }
      out.push_back(pk);
    }
  }
  for (int kind = 0; kind < 3; ++kind) out.push_back(check_gemm(kind, cap.gemm[kind]));
  return out;
}

std::vector<CheckResult> compare_captures(const Captures& g, const Captures& t) {
  std::vector<CheckResult> out;
  auto bitwise = [&](const std::string& name, const std::vector<uint32_t>& a, const std::vector<uint32_t>& b,
                     int per_lane) { out.push_back(compare_words("golden " + name, b, a, per_lane)); };
  for (int k = 0; k < 3; ++k) bitwise(kMmaNames[k], g.mma[k], t.mma[k], 4);
  for (int tr = 0; tr < 2; ++tr)
    for (int v = 0; v < 3; ++v) bitwise(kLdsmNames[tr][v], g.ldsm[tr][v], t.ldsm[tr][v], num_of(v));
  {
    std::vector<uint32_t> a = g.misc, b = t.misc;  // ex2 compared separately
    CheckResult ex{"golden ex2.approx (rel. 2^-21)", a.size() == b.size(), ""};
    for (size_t i = 11; i < a.size() && i < b.size(); i += kMiscWords) {
      const double x = u2f(a[i]), y = u2f(b[i]);
      if (!(std::fabs(x - y) <= std::fabs(x) * 0x1p-21)) ex.passed = false;
      a[i] = b[i] = 0;
    }
    bitwise("cp.async / bar.sync / packs", a, b, kMiscWords);
    out.push_back(ex);
  }
  for (int k = 0; k < 3; ++k) {
    if (k == kMmaS8) {
      bitwise(kGemmNames[k], g.gemm[k], t.gemm[k], 1);
      continue;
    }
    CheckResult r{std::string("golden ") + kGemmNames[k] + " (rel. 2^-20)", g.gemm[k].size() == t.gemm[k].size(), ""};
    for (size_t i = 0; i < g.gemm[k].size() && i < t.gemm[k].size(); ++i) {
      const double x = u2f(g.gemm[k][i]), y = u2f(t.gemm[k][i]);
      if (!(std::fabs(x - y) <= (std::fabs(x) + 1.0) * 0x1p-20) && r.passed)
        r.passed = false, r.detail = fmt("element %lld: ", (long long)i) + std::to_string(x) + " vs " + std::to_string(y);
    }
    out.push_back(r);
  }
  return out;
}

std::vector<CheckResult> run_fragment_checks() {
  std::vector<CheckResult> out = check_layout_tables();
  const std::vector<CheckResult> c = check_captures(capture_all());
  out.insert(out.end(), c.begin(), c.end());
  return out;
}

}  // namespace simt_selftest
}  // namespace kernkit
