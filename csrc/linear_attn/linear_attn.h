// Chunked linear attention with a log-space decay gate (linear attention, RetNet,
// Lightning attention, simple GLA, GLA):
//   S_t = diag(exp(g_t)) S_{t-1} + k_t^T v_t,     o_t = scale * q_t S_t
// Plain parameter structs filled by module.cpp; see python/kernkit/linear_attn.py.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

// A (batch, time, head, dim) tensor with a contiguous last dim; strides in elements.
// Varlen tensors are (1, total, head, dim): sequence n covers rows cu[n]..cu[n+1].
struct LaTensor {
  const void* ptr;
  int64_t bs, ts, hs;
};

enum class LaGate : int { none = 0, scalar = 1, vector = 2 };

struct LaParams {
  LaTensor q, k, v;
  void* o;                     // (B, T, H, V) contiguous, input dtype
  // Log decay in the accumulation type (fp32, or fp64 for fp64 inputs), with strides
  // (batch, time, head); a per-head constant has bs = ts = 0. Vector gates have a
  // contiguous last dim of K.
  LaGate gate;
  const void* g;
  int64_t gbs, gts, ghs;
  const void* h0;              // (N, H, K, V) contiguous accumulation type, or null (zeros)
  void* ht;                    // (N, H, K, V) final states, or null
  const int32_t* cu_seqlens;   // N + 1 offsets, or null (then N = B sequences of length T)
  int N, T, H, K, V;           // N sequences; T = rows per batch entry (total rows when varlen)
  double scale;                // double so that the fp64 path is exact
  int chunk;
  DType dtype;
  int threads;
  // CUDA only: scratch for the state entering each chunk, (total_chunks, H, K, V) fp32. Chunks are
  // numbered sequence by sequence: without varlen chunk c of sequence n is n * max_chunks + c; with
  // varlen chunk_off holds each sequence's first chunk (N + 1 offsets) and chunk_seq the sequence of
  // every chunk (total_chunks entries).
  float* states;
  const int32_t* chunk_off;
  const int32_t* chunk_seq;
  int max_chunks, total_chunks;
};

struct LaBwdParams {
  LaParams fwd;                // o / ht unused
  const void* dout;            // (B, T, H, V) contiguous, input dtype
  const void* dht;             // (N, H, K, V) accumulation type, or null
  void *dq, *dk, *dv;          // like q, k, v, contiguous, input dtype
  void* dg;                    // per-step log-gate gradient, accumulation type: (B, T, H) for scalar
                               // gates, (B, T, H, K) for vector gates (contiguous); null: not needed
  void* dh0;                   // (N, H, K, V) accumulation type, or null
  float* dstates;              // CUDA only: scratch like fwd.states for the state gradients
};

// One decode step for B single tokens: q, k (B, H, K), v (B, H, V), state (B, H, K, V) contiguous,
// gate like LaParams with strides (batch, -, head).
struct LaStepParams {
  const void *q, *k, *v;
  LaGate gate;
  const void* g;
  int64_t gbs, ghs;
  const void* state;
  void* o;                     // (B, H, V)
  void* new_state;             // (B, H, K, V)
  int B, H, K, V;
  double scale;
  DType dtype;
  int threads;
};

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, linear_attn_fwd_cpu, (const ::kernkit::LaParams&))
KK_DECLARE_CPU_KERNEL(void, linear_attn_bwd_cpu, (const ::kernkit::LaBwdParams&))
KK_DECLARE_CPU_KERNEL(void, linear_attn_step_cpu, (const ::kernkit::LaStepParams&))

namespace kernkit {
// CUDA decode step (csrc/linear_attn/cuda/linear_attn_step.cu): fp32 state, K <= 256.
void linear_attn_step_cuda(const LaStepParams& p, int device, intptr_t stream);
// CUDA chunked kernels (csrc/linear_attn/cuda/chunk_fwd.cu, chunk_bwd.cu): fp32/bf16/fp16 inputs,
// chunks of 16..64 rows, scratch allocated by the caller.
void linear_attn_fwd_cuda(const LaParams& p, int device, intptr_t stream);
void linear_attn_bwd_cuda(const LaBwdParams& p, int device, intptr_t stream);
}  // namespace kernkit

namespace kernkit {
// fp64 paths (compiled once, token loops): exist for gradcheck.
void linear_attn_fwd_f64(const LaParams& p);
void linear_attn_bwd_f64(const LaBwdParams& p);
void linear_attn_step_f64(const LaStepParams& p);
}  // namespace kernkit
