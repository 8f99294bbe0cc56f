// kernkit's one wrapper header for inline PTX (namespace kernkit::ptx). Kernels use these and
// never write asm themselves, so the simt build (csrc/simt, KK_SIMT) can swap every instruction
// for an emulated twin:
//   nvcc:  inline PTX (sm_80+; everything here also assembles for sm_90a).
//   simt:  calls into the fiber runtime (simt/simt.h). mma and ldmatrix are warp collectives whose
//          math lives in simt/ptx_emul.h; cp.async and bar.sync go to the runtime, which checks them.
// The emulated wrappers take a trailing KK_SITE_ARGS pack (default arguments), so every report
// names the kernel line that called the wrapper. Declare your own such wrappers with KK_PTX_SITE
// (after other parameters) or KK_PTX_SITE0 (no other parameters).
//
// Fragment notation: g = groupID = lane >> 2, t = threadID_in_group = lane % 4. 16-bit elements
// are packed low half first (element 2r in bits 0..15 of register r); 8-bit elements low byte first.
#pragma once

#include <cstdint>

#ifdef KK_SIMT
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdio>
#include <cstring>

#include "simt/ptx_emul.h"
#define KK_PTX_SITE , KK_SITE_ARGS
#define KK_PTX_SITE0 KK_SITE_ARGS
#else
#define KK_PTX_SITE
#define KK_PTX_SITE0
#endif

namespace kernkit {
namespace ptx {

#ifdef KK_SIMT
// ---------------------------------------------------------------------------------------------
// simt plumbing (warp-collective bodies). Not part of the API.
// ---------------------------------------------------------------------------------------------
namespace detail {

struct MmaF32In { uint32_t a[4], b[2]; float c[4]; };
struct MmaS32In { uint32_t a[4], b[2]; int32_t c[4]; };

template <int Kind>  // 0: bf16, 1: f16
inline void mma_f32_fn(const ::kk_simt::Lanes& l, unsigned) {
  uint32_t a[32][4], b[32][2];
  float c[32][4], d[32][4];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaF32In* in = static_cast<const MmaF32In*>(l.in[lane]);
    std::memcpy(a[lane], in->a, sizeof a[lane]);
    std::memcpy(b[lane], in->b, sizeof b[lane]);
    std::memcpy(c[lane], in->c, sizeof c[lane]);
  }
  if (Kind == 0) ::kk_simt::emul::mma_m16n8k16_bf16(a, b, c, d);
  else ::kk_simt::emul::mma_m16n8k16_f16(a, b, c, d);
  for (int lane = 0; lane < 32; ++lane) std::memcpy(l.out[lane], d[lane], sizeof d[lane]);
}

inline void mma_s8_fn(const ::kk_simt::Lanes& l, unsigned) {
  uint32_t a[32][4], b[32][2];
  int32_t c[32][4], d[32][4];
  for (int lane = 0; lane < 32; ++lane) {
    const MmaS32In* in = static_cast<const MmaS32In*>(l.in[lane]);
    std::memcpy(a[lane], in->a, sizeof a[lane]);
    std::memcpy(b[lane], in->b, sizeof b[lane]);
    std::memcpy(c[lane], in->c, sizeof c[lane]);
  }
  ::kk_simt::emul::mma_m16n8k32_s8(a, b, c, d);
  for (int lane = 0; lane < 32; ++lane) std::memcpy(l.out[lane], d[lane], sizeof d[lane]);
}

// in: the lane's row address (const void*); out: uint32_t[N].
template <int N, bool Trans>
inline void ldmatrix_fn(const ::kk_simt::Lanes& l, unsigned) {
  const void* rows[32];
  for (int lane = 0; lane < 32; ++lane) rows[lane] = nullptr;
  for (int lane = 0; lane < 8 * N; ++lane) {
    rows[lane] = *static_cast<const void* const*>(l.in[lane]);
    ::kk_simt::note_lane_access(lane, rows[lane], 16, false);
  }
  uint32_t out[32][4] = {};
  ::kk_simt::emul::ldmatrix(N, Trans, rows, out);
  for (int lane = 0; lane < 32; ++lane) std::memcpy(l.out[lane], out[lane], N * sizeof(uint32_t));
}

// One lane's part of an emulated mma: its a/b/c registers in, its d registers out (d may alias c).
template <typename In, typename Acc>
inline void emulate_mma(const char* what, ::kk_simt::WarpFn fn, Acc (&d)[4], const uint32_t (&a)[4],
                        const uint32_t (&b)[2], const Acc (&c)[4], const char* file, int line) {
  In in;
  std::memcpy(in.a, a, sizeof in.a);
  std::memcpy(in.b, b, sizeof in.b);
  std::memcpy(in.c, c, sizeof in.c);
  Acc out[4];
  ::kk_simt::warp_collective(what, 0xffffffffu, fn, &in, out, file, line);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

template <int N, bool Trans>
inline void ldmatrix(uint32_t (&r)[N], const void* row, const char* file, int line) {
  static_assert(N == 1 || N == 2 || N == 4, "ldmatrix loads 1, 2 or 4 matrices");
  static const char* const names[2][3] = {
      {"ldmatrix.x1", "ldmatrix.x2", "ldmatrix.x4"},
      {"ldmatrix.x1.trans", "ldmatrix.x2.trans", "ldmatrix.x4.trans"}};
  const char* what = names[Trans][N == 1 ? 0 : N == 2 ? 1 : 2];
  const unsigned lane = ::kk_simt::lane_id();
  if (lane < 8u * N && (reinterpret_cast<uintptr_t>(row) & 15u) != 0) {
    char msg[160];
    std::snprintf(msg, sizeof msg, "%s: lane %u's row address %p is not 16-byte aligned", what, lane, row);
    ::kk_simt::fail_user("misaligned ldmatrix", msg, file, line);
  }
  uint32_t out[N];
  ::kk_simt::warp_collective(what, 0xffffffffu, &ldmatrix_fn<N, Trans>, &row, out, file, line);
  for (int i = 0; i < N; ++i) r[i] = out[i];
}

template <int Bytes>
inline void cp_async(const char* what, void* dst, const void* src, int src_bytes, const char* file, int line) {
  const bool bad_size = src_bytes < 0 || src_bytes > Bytes;
  const bool misaligned = (reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) & (Bytes - 1);
  if (bad_size || misaligned) {
    char msg[200];
    if (bad_size)
      std::snprintf(msg, sizeof msg, "%s: src_bytes %d outside [0, %d]", what, src_bytes, Bytes);
    else
      std::snprintf(msg, sizeof msg, "%s: dst %p / src %p not %d-byte aligned", what, dst, src, Bytes);
    ::kk_simt::fail_user("invalid cp.async", msg, file, line);
  }
  ::kk_simt::cp_async(dst, src, Bytes, src_bytes, file, line);
}

}  // namespace detail
#else
namespace detail {
// Shared-window address of a generic pointer to shared memory (what .shared operands take).
__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
}  // namespace detail
#endif

// ---------------------------------------------------------------------------------------------
// Tensor-core mma (whole warp, converged, mask 0xffffffff). d may alias c (d = a*b + d).
// ---------------------------------------------------------------------------------------------
// mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32   (D 16x8 = A 16x16 * B 16x8 + C)
//   a[r] = {A[g + 8*(r&1)][2t + 8*(r>>1)], ...+1}; b[r] = {B[2t + 8r][g], B[2t+1 + 8r][g]};
//   c[i], d[i] = C[g + 8*(i>>1)][2t + (i&1)].
// Emulated: products summed in double, rounded once to float (the tensor core differs in the last bits).
__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4] KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::emulate_mma<detail::MmaF32In>("mma.m16n8k16.bf16", &detail::mma_f32_fn<0>, d, a, b, c, kk_file, kk_line);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}

// mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32: same fragments as the bf16 form.
__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4] KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::emulate_mma<detail::MmaF32In>("mma.m16n8k16.f16", &detail::mma_f32_fn<1>, d, a, b, c, kk_file, kk_line);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#endif
}

// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32   (D 16x8 = A 16x32 * B 32x8 + C, int32 wraps)
//   a[r] = bytes A[g + 8*(r&1)][4t + 16*(r>>1) + 0..3]; b[r] = bytes B[4t + 16r + 0..3][g];
//   c[i], d[i] = C[g + 8*(i>>1)][2t + (i&1)].
__device__ __forceinline__ void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                const int (&c)[4] KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::emulate_mma<detail::MmaS32In>("mma.m16n8k32.s8", &detail::mma_s8_fn, d, a, b, c, kk_file, kk_line);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%10,%11,%12,%13};\n"
      : "=r"(d[0]), "=r"(d[1]), "=r"(d[2]), "=r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "r"(c[0]), "r"(c[1]), "r"(c[2]),
        "r"(c[3]));
#endif
}

// ---------------------------------------------------------------------------------------------
// ldmatrix (whole warp, converged). Every lane passes its own row address (16-byte aligned shared
// memory); lanes 8i..8i+7 supply rows 0..7 of matrix i, the other lanes' addresses are ignored.
// No "memory" clobber (as in CUTLASS): the barrier that must separate the stores from the
// ldmatrix already orders them.
// ---------------------------------------------------------------------------------------------
// ldmatrix.sync.aligned.m8n8.x1.shared.b16: r[0] = {M0[g][2t], M0[g][2t+1]}; rows from lanes 0-7.
__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<1, false>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(detail::smem_addr(smem_row)));
#endif
}
// ldmatrix.sync.aligned.m8n8.x2.shared.b16: r[i] = {Mi[g][2t], Mi[g][2t+1]}; rows from lanes 0-15.
__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<2, false>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_addr(smem_row)));
#endif
}
// ldmatrix.sync.aligned.m8n8.x4.shared.b16: r[i] = {Mi[g][2t], Mi[g][2t+1]}; rows from lanes 0-31.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<4, false>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_addr(smem_row)));
#endif
}
// ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16: r[0] = {M0[2t][g], M0[2t+1][g]}; rows from lanes 0-7.
__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<1, true>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n"
               : "=r"(r[0])
               : "r"(detail::smem_addr(smem_row)));
#endif
}
// ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16: r[i] = {Mi[2t][g], Mi[2t+1][g]}; rows from lanes 0-15.
__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<2, true>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
               : "=r"(r[0]), "=r"(r[1])
               : "r"(detail::smem_addr(smem_row)));
#endif
}
// ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16: r[i] = {Mi[2t][g], Mi[2t+1][g]}; rows from lanes 0-31.
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row KK_PTX_SITE) {
#ifdef KK_SIMT
  detail::ldmatrix<4, true>(r, smem_row, kk_file, kk_line);
#else
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(detail::smem_addr(smem_row)));
#endif
}

// ---------------------------------------------------------------------------------------------
// cp.async (global -> shared, asynchronous, per thread). Copies src_bytes bytes and zero-fills the
// rest of the Bytes-byte destination; src_bytes = 0 reads nothing and writes zeros (a predicated-off
// load). dst and src must be Bytes-aligned. The data is guaranteed in shared memory only after a
// cp_async_wait that covers its group; other threads see it after a barrier that follows that wait.
// ---------------------------------------------------------------------------------------------
// cp.async.ca.shared.global [dst], [src], Bytes, src_bytes;   (Bytes = 4, 8 or 16; caches in L1)
template <int Bytes>
__device__ __forceinline__ void cp_async_ca(void* smem_dst, const void* gmem_src, int src_bytes = Bytes KK_PTX_SITE) {
  static_assert(Bytes == 4 || Bytes == 8 || Bytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#ifdef KK_SIMT
  detail::cp_async<Bytes>("cp.async.ca", smem_dst, gmem_src, src_bytes, kk_file, kk_line);
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(detail::smem_addr(smem_dst)), "l"(gmem_src),
               "n"(Bytes), "r"(src_bytes)
               : "memory");
#endif
}
// cp.async.cg.shared.global [dst], [src], 16, src_bytes;   (.cg: L2 only; PTX allows 16 bytes only)
template <int Bytes = 16>
__device__ __forceinline__ void cp_async_cg(void* smem_dst, const void* gmem_src, int src_bytes = Bytes KK_PTX_SITE) {
  static_assert(Bytes == 16, "cp.async.cg copies 16 bytes only");
#ifdef KK_SIMT
  detail::cp_async<Bytes>("cp.async.cg", smem_dst, gmem_src, src_bytes, kk_file, kk_line);
#else
  asm volatile("cp.async.cg.shared.global [%0], [%1], %2, %3;\n" ::"r"(detail::smem_addr(smem_dst)), "l"(gmem_src),
               "n"(Bytes), "r"(src_bytes)
               : "memory");
#endif
}
// cp.async.commit_group: closes the calling thread's current group of cp.async.
__device__ __forceinline__ void cp_async_commit(KK_PTX_SITE0) {
#ifdef KK_SIMT
  (void)kk_file, (void)kk_line;
  ::kk_simt::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// cp.async.wait_group N: waits until at most N of the calling thread's committed groups are pending.
template <int N>
__device__ __forceinline__ void cp_async_wait(KK_PTX_SITE0) {
  static_assert(N >= 0 && N <= 7, "cp.async.wait_group takes 0..7");
#ifdef KK_SIMT
  (void)kk_file, (void)kk_line;
  ::kk_simt::cp_async_wait(N);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
#endif
}
// cp.async.wait_all: commits the open group, then waits for all of them (= commit; wait_group 0).
__device__ __forceinline__ void cp_async_wait_all(KK_PTX_SITE0) {
#ifdef KK_SIMT
  (void)kk_file, (void)kk_line;
  ::kk_simt::cp_async_commit();
  ::kk_simt::cp_async_wait(0);
#else
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// ---------------------------------------------------------------------------------------------
// Named barrier and math
// ---------------------------------------------------------------------------------------------
// bar.sync id, count: waits for `count` threads (a multiple of 32, whole warps) at barrier id
// (0..15; id 0 is the one __syncthreads uses). Also a memory barrier among the participants.
__device__ __forceinline__ void bar_sync(int id, int count KK_PTX_SITE) {
#ifdef KK_SIMT
  ::kk_simt::barrier(id, count, kk_file, kk_line);
#else
  asm volatile("bar.sync %0, %1;\n" ::"r"(id), "r"(count) : "memory");
#endif
}

// ex2.approx.ftz.f32: 2^x, ~2 ulp, subnormal inputs/results flushed to zero.
// Emulated as exp2f (more accurate than the GPU) with subnormal results flushed.
__device__ __forceinline__ float ex2_approx(float x) {
#ifdef KK_SIMT
  const float y = std::exp2(x);
  return std::fabs(y) < 1.17549435e-38f ? 0.0f : y;
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

// cvt.rn.bf16x2.f32: {lo, hi} rounded to nearest even, lo in bits 0..15 (the first element).
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#ifdef KK_SIMT
  const __nv_bfloat16 l = __float2bfloat16_rn(lo), h = __float2bfloat16_rn(hi);
  uint16_t lb, hb;
  std::memcpy(&lb, &l, 2);
  std::memcpy(&hb, &h, 2);
  return uint32_t(lb) | (uint32_t(hb) << 16);
#else
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));  // first source -> upper half
  return r;
#endif
}

// cvt.rn.f16x2.f32: {lo, hi} rounded to nearest even (overflow -> inf), lo in bits 0..15.
__device__ __forceinline__ uint32_t pack_f16x2(float lo, float hi) {
#ifdef KK_SIMT
  const __half l = __float2half_rn(lo), h = __float2half_rn(hi);
  uint16_t lb, hb;
  std::memcpy(&lb, &l, 2);
  std::memcpy(&hb, &h, 2);
  return uint32_t(lb) | (uint32_t(hb) << 16);
#else
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#endif
}

}  // namespace ptx
}  // namespace kernkit
