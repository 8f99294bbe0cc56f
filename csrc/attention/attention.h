// Fused attention (softmax or sigmoid) with bottom-right causal masks, windows,
// sinks, softcap, GQA/MQA, varlen and kvcache lengths. Plain parameter structs
// filled by module.cpp; see python/kernkit/attention.py for the semantics.
#pragma once
#include <cstdint>

#include "common/cpu_isa.h"
#include "common/dtype.h"

namespace kernkit {

// A (batch, seq, head, dim) tensor with a contiguous last dimension; strides in
// elements. Varlen tensors are (total, head, dim) with batch stride 0.
struct AttnTensor {
  const void* ptr;
  int64_t bs, rs, hs;
};

struct AttnShape {
  int B, Hq, Hkv, D, Dv;
  int Sq, Sk;                  // per-sequence lengths (maxima when varlen)
  const int32_t* cu_q;         // varlen: sequence b is rows cu_q[b]..cu_q[b+1] (B+1 entries), or null
  const int32_t* cu_k;
  const int32_t* seqused_k;    // kvcache: keys in use per batch entry (B entries), or null
  // Per-row statistics (lse, delta): element b*stat_bs + h*stat_hs + row, where row is
  // the global row for varlen (stat_bs = 0) and the in-sequence row otherwise.
  int64_t stat_bs, stat_hs;
  // Added to every sequence's diagonal offset off = Sk - Sq (the mask compares key j with
  // i + off). Ring attention uses it to put a block of keys at its global position
  // relative to the queries; the public API always passes 0.
  int diag_shift = 0;
};

enum class AttnActivation : int { softmax = 0, sigmoid = 1 };

struct AttnMask {
  float scale;                 // multiplies q.k
  float softcap;               // > 0: s = softcap * tanh(s / softcap)
  int left, right;             // window around the bottom-right diagonal; -1 = unbounded
  int sinks;                   // keys [0, sinks) ignore the left bound
  AttnActivation activation;
  const float* sigmoid_bias;   // per query head (Hq,), or null
  float sigmoid_bias_value;    // used when sigmoid_bias is null and !sigmoid_bias_default
  bool sigmoid_bias_default;   // bias = -log(number of keys of the sequence)
};

struct AttnFwdParams {
  AttnShape shape;
  AttnMask mask;
  AttnTensor q, k, v, o;       // o.ptr is written
  float* lse;                  // softmax only (may be null)
  DType dtype;
  int threads;
};

struct AttnBwdParams {
  AttnShape shape;
  AttnMask mask;
  AttnTensor q, k, v, dout;
  AttnTensor dq, dk, dv;       // written
  const float* lse;            // softmax: from the forward
  const float* delta;          // softmax: rowsum(dout * out), same layout as lse
  float* dbias;                // sigmoid with a per-head bias that needs a gradient: (Hq,), else null
  DType dtype;
  int threads;
  float* work = nullptr;       // CUDA with dbias: attn_cuda_bwd_work_floats zeroed floats (per-block partials)
};

// Query rows per block of the CUDA tensor-core kernels; the scratch the CUDA backward needs for
// dbias (a partial per block of at least kAttnCudaMinRows query rows, the fp32 kernels' block).
constexpr int kAttnCudaRows = 64, kAttnCudaMinRows = 8;
inline int64_t attn_cuda_bwd_work_floats(int64_t B, int64_t Hq, int64_t Sq) {
  return B * Hq * ((Sq + kAttnCudaMinRows - 1) / kAttnCudaMinRows);
}

}  // namespace kernkit

KK_DECLARE_CPU_KERNEL(void, attention_fwd_cpu, (const ::kernkit::AttnFwdParams&))
KK_DECLARE_CPU_KERNEL(void, attention_bwd_cpu, (const ::kernkit::AttnBwdParams&))

namespace kernkit {
// fp64 path (compiled once, plain loops): exists for gradcheck.
void attention_fwd_f64(const AttnFwdParams& p);
void attention_bwd_f64(const AttnBwdParams& p);

// CUDA (device >= 0) or simt: fp32/bf16/fp16, head dims up to 256.
void attention_fwd_cuda(const AttnFwdParams& p, int device, intptr_t stream);
void attention_bwd_cuda(const AttnBwdParams& p, int device, intptr_t stream);
}  // namespace kernkit
