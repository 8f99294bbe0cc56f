// Recurrences along time: the generic first-order linear scan
// h_t = a_t * h_{t-1} + b_t, Mamba's selective scan, and the causal depthwise
// conv1d that precedes it in Mamba blocks. Plain parameter structs filled by
// module.cpp; see python/kernkit/scan.py for the semantics.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

// (B, T, C) views with element strides; a channel stride is 0 (broadcast) or 1.
struct ScanOperand {
  const void* ptr;
  int64_t bs, ts, cs;
};

struct LinearScanParams {
  ScanOperand a, b;
  void* h;             // (B, T, C) contiguous output
  const void* h0;      // (B, C) contiguous initial state, or null (zeros)
  int64_t B, T, C;
  bool reverse;        // scan from t = T-1 down to 0
  DType dtype;
  int threads;
  // CUDA, few channels and long T: time in chunks of `chunk` steps (0: one thread walks a whole
  // row), with `carry` a workspace of 2 * B * C * ceil(T / chunk) fp32 (fp64 for fp64) values.
  int64_t chunk = 0;
  void* carry = nullptr;
};

struct CausalConvParams {
  const void* x;        // (B, D, L) contiguous
  const void* w;        // (D, W) contiguous
  const void* bias;     // (D,) or null
  const void* init;     // (B, D, W-1) or null: the W-1 inputs before x
  void* y;              // (B, D, L)
  void* final_state;    // (B, D, W-1) or null
  int64_t B, D, L, W;
  bool silu;
  DType dtype;
  int threads;
  DType wdtype;             // w and bias (and dw, dbias): dtype, or f32 with 16-bit x (fp32 sums)
  const int32_t* seq_idx;   // (B, L) or null: ext position j feeds output t only if seq_idx matches
  // Entries per row of init and final_state: 0 means W-1; more for causal_conv1d_update's rolling
  // state (S >= W-1: ext = [init (S) | x], outputs read its last W-1+L entries, final = its last S).
  int64_t state_len = 0;
};

inline int64_t conv_state_len(const CausalConvParams& p) { return p.state_len ? p.state_len : p.W - 1; }

struct CausalConvBwdParams {
  CausalConvParams fwd;    // y / final_state unused
  const void* dy;          // (B, D, L)
  const void* dfinal;      // (B, D, W-1) or null
  void* dx;                // (B, D, L)
  void* dw;                // (D, W)
  void* dbias;             // (D,) or null
  void* dinit;             // (B, D, W-1) or null
};

// Mamba's selective scan, per (batch b, channel d), state x of N entries:
//   dt_t = softplus?(delta_t + delta_bias);  x_t = exp(dt_t A) * x_{t-1} + dt_t u_t B_t
//   y_t = C_t . x_t + D u_t;  out_t = y_t * silu(z_t) (if z)
// u, delta, z, out and variable B/C are in `dtype`; A, D, delta_bias, initial and
// last states and time-invariant B/C are in the accumulation type (fp64 for fp64
// inputs, else fp32).
struct SelectiveScanParams {
  const void *u, *delta, *z;   // (B, D, L) contiguous; z may be null
  const void *Bm, *Cm;         // variable: (B, G, N, L) contiguous; invariant: (D, N)
  bool b_var, c_var;
  int64_t G;                   // groups of channels sharing variable B/C
  const void* A;               // (D, N)
  const void* Dskip;           // (D,) or null
  const void* delta_bias;      // (D,) or null
  bool softplus;
  const void* h0;              // (B, D, N) or null
  void* out;                   // (B, D, L)
  void* last_state;            // (B, D, N) or null
  int64_t Bsz, D, N, L;
  DType dtype;
  int threads;
};

struct SelectiveScanBwdParams {
  SelectiveScanParams fwd;     // out / last_state unused
  const void* dout;            // (B, D, L)
  const void* dlast;           // (B, D, N) or null
  void *du, *ddelta, *dz;      // like u (dz null without z)
  void *dA;                    // (D, N)
  void *dB, *dC;               // like B / C
  void *dD, *ddelta_bias;      // (D,) or null
  void* dh0;                   // (B, D, N) or null
  float* work;                 // CUDA only: ss_cuda_work_floats(...) floats of device scratch
};

// CUDA selective scan geometry: P threads per channel (the N states spread over them, J <= 2 each),
// Dt channels per 128-thread block, Dt dividing the channels of one B/C group (a block never spans
// two groups, so the per-block dB/dC partials belong to one group).
struct SsCudaGeometry {
  int P, J, Dt;
  int64_t tiles, chunks;  // blocks per batch row (D / Dt); 8-step chunks of L (checkpoints)
};
constexpr int kSsThreads = 128, kSsChunk = 8;
inline SsCudaGeometry ss_cuda_geometry(int64_t D, int64_t N, int64_t G, int64_t L) {
  int P = 1;
  while (P < N && P < kSsThreads) P *= 2;
  const int J = int((N + P - 1) / P);
  const int64_t per_group = D / G;
  int Dt = kSsThreads / P;
  while (Dt > 1 && per_group % Dt) --Dt;
  return SsCudaGeometry{P, J, Dt, D / Dt, (L + kSsChunk - 1) / kSsChunk};
}
// Scratch of the CUDA backward (floats): state checkpoints (B, D, N, chunks); per-batch partials of
// dA, invariant dB / dC (B, D, N each) and dD, ddelta_bias (B, D); per-block partials of variable
// dB / dC (B, tiles, N, L each). Reduced in a fixed order by a second kernel: deterministic.
inline int64_t ss_cuda_work_floats(int64_t Bsz, int64_t D, int64_t N, int64_t L, int64_t G, bool b_var,
                                   bool c_var) {
  const SsCudaGeometry g = ss_cuda_geometry(D, N, G, L);
  return Bsz * D * N * (g.chunks + 3) + 2 * Bsz * D + (int64_t(b_var) + int64_t(c_var)) * Bsz * g.tiles * N * L;
}


}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, selective_scan_fwd_cpu, (const ::kernkit::SelectiveScanParams&))
KK_DECLARE_CPU_KERNEL(void, selective_scan_bwd_cpu, (const ::kernkit::SelectiveScanBwdParams&))
KK_DECLARE_CPU_KERNEL(void, linear_scan_cpu, (const ::kernkit::LinearScanParams&))
KK_DECLARE_CPU_KERNEL(void, causal_conv1d_fwd_cpu, (const ::kernkit::CausalConvParams&))
KK_DECLARE_CPU_KERNEL(void, causal_conv1d_bwd_cpu, (const ::kernkit::CausalConvBwdParams&))
// The forward kernels read each row of init whole before writing that row of final_state, so
// the two may be one buffer (causal_conv1d_update's in-place state); the CUDA forward may not:
// causal_conv1d_update_cuda is its in-place form (one thread per row).

namespace kernkit {
void linear_scan_cuda(const LinearScanParams& p, int device, intptr_t stream);
void causal_conv1d_fwd_cuda(const CausalConvParams& p, int device, intptr_t stream);
void causal_conv1d_bwd_cuda(const CausalConvBwdParams& p, int device, intptr_t stream);
void causal_conv1d_update_cuda(const CausalConvParams& p, int device, intptr_t stream);
void selective_scan_fwd_cuda(const SelectiveScanParams& p, int device, intptr_t stream);
void selective_scan_bwd_cuda(const SelectiveScanBwdParams& p, int device, intptr_t stream);

// The exact path (compiled once, plain loops, double sums) for fp64 inputs (gradcheck).
void causal_conv1d_fwd_exact(const CausalConvParams& p);
void causal_conv1d_bwd_exact(const CausalConvBwdParams& p);
}  // namespace kernkit
