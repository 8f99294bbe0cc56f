// Mask geometry shared by the CUDA attention kernels: per-sequence lengths and offsets, the
// visibility rule, and which key tiles a block of query rows must visit (window plus sinks, so
// the work grows with window + sinks, not with the sequence length).
#pragma once
#include "attention/attention.h"
#include "common/cuda_utils.cuh"

namespace kernkit {
namespace attn {

struct Seq {
  int q_len, k_len, off;     // off: the diagonal (key i + off sits on query i's diagonal)
  long long q_row0, k_row0;  // first row of the sequence (varlen), else 0
};

__device__ __forceinline__ Seq seq_of(const AttnShape& s, int b) {
  Seq q;
  q.q_row0 = s.cu_q ? s.cu_q[b] : 0;
  q.k_row0 = s.cu_k ? s.cu_k[b] : 0;
  q.q_len = s.cu_q ? s.cu_q[b + 1] - s.cu_q[b] : s.Sq;
  // (kvcache: seqused_k is not range-checked on the host for CUDA tensors; clamp to the cache)
  q.k_len = s.seqused_k ? max(0, min(s.seqused_k[b], s.Sk)) : (s.cu_k ? s.cu_k[b + 1] - s.cu_k[b] : s.Sk);
  q.off = q.k_len - q.q_len + s.diag_shift;
  return q;
}

// Query i sees key j (0 <= j < k_len): inside the window around its diagonal, or a sink key that
// the right bound still allows.
__device__ __forceinline__ bool visible(const AttnMask& m, int off, int i, int j) {
  if (m.right >= 0 && j > i + off + m.right) return false;
  return m.left < 0 || j >= i + off - m.left || j < m.sinks;
}

// Sigmoid attention's bias for query head h: per-head tensor, a value, or -log(keys).
__device__ __forceinline__ float sigmoid_bias(const AttnMask& m, int k_len, int h) {
  if (m.sigmoid_bias) return m.sigmoid_bias[h];
  return m.sigmoid_bias_default ? -logf(float(k_len > 1 ? k_len : 1)) : m.sigmoid_bias_value;
}

// The key tiles (of `tile` keys) that query rows [r0, r1] can see: first the sink tiles, then the
// window's tiles; tile(n) maps the n-th visited tile to its index.
struct KeyTiles {
  int n_sink, win_start, count;
  __device__ __forceinline__ int tile(int n) const { return n < n_sink ? n : win_start + (n - n_sink); }
};

__device__ __forceinline__ KeyTiles key_tiles(const AttnMask& m, const Seq& s, int r0, int r1, int tile) {
  long long hi = s.k_len;
  if (m.right >= 0) hi = min(hi, (long long)r1 + s.off + m.right + 1);
  if (hi < 0) hi = 0;
  long long lo = 0;
  if (m.left >= 0) lo = max(0LL, (long long)r0 + s.off - m.left);
  if (lo > hi) lo = hi;
  const int sink_end = m.left >= 0 ? int(min((long long)m.sinks, lo)) : 0;  // sinks past lo are in the window
  KeyTiles t;
  t.n_sink = (sink_end + tile - 1) / tile;
  const int t_hi = int((hi + tile - 1) / tile);
  t.win_start = max(int(lo / tile), t.n_sink);
  t.count = t.n_sink + max(0, t_hi - t.win_start);
  return t;
}

// Whether every key of [j0, j0 + tile) is visible to every query row of [r0, r1] (no per-element
// mask needed).
__device__ __forceinline__ bool tile_unmasked(const AttnMask& m, const Seq& s, int r0, int r1, int j0, int tile) {
  if (j0 + tile > s.k_len) return false;
  if (m.right >= 0 && j0 + tile - 1 > r0 + s.off + m.right) return false;
  return m.left < 0 || j0 >= r1 + s.off - m.left || j0 + tile <= m.sinks;
}

}  // namespace attn
}  // namespace kernkit
