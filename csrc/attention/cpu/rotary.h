// Rotary position embedding of (B, S, H, D) rows, as flash_attn_with_kvcache applies it to q and
// the new keys (flash-attn's rotary_cos / rotary_sin): fp32 arithmetic, one rounding to the
// output dtype. Decode-sized work (a few rows per call), so plain C++ compiled once.
#pragma once
#include <cstdint>

#include "common/dtype.h"

namespace kernkit {

struct RotaryParams {
  const void* x;          // (B, S, H, D), element strides xs (batch, row, head), last dim contiguous
  int64_t xs[3];
  void* out;              // same layout rules; may be a cache: rows start at starts[b] then
  int64_t os[3];
  const int32_t* starts;  // (B,) position of row 0 of each batch entry (null: 0)
  bool out_at_starts;     // out row of (b, s) is starts[b] + s (appending into a cache), else s
  bool same_position;     // every row of entry b at position starts[b] (flash-attn: non-causal q)
  const float* cos;       // (positions, rd / 2), contiguous
  const float* sin;
  int64_t B, S, H, D, rd;
  bool interleaved;       // pairs (2i, 2i+1) rotate (GPT-J); else (i, i + rd/2) (GPT-NeoX, rotate-half)
  DType dtype;            // of x and out: f32, bf16 or f16
};

void rotary_cpu(const RotaryParams& p);

}  // namespace kernkit
