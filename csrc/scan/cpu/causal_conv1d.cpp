// Causal depthwise conv1d on CPU: y[t] = bias + sum_k w[k] * ext[t + k], where
// ext = [initial state (W-1 inputs) | x] of one (batch, channel) row, optional
// SiLU (and, with seq_idx, only inputs of output t's sequence). Vectorised along time over an fp32 copy of ext; parallel over rows.
// The backward recomputes the pre-activation, and sums the weight and bias
// gradients per channel over (batch, time) in a fixed order (one task per
// channel): deterministic for any thread count.
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "common/parallel.h"
#include "common/vec.h"
#include "scan/scan.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

constexpr int kMaxW = 64;

// ext = [init | x] for row (b, d) as fp32: S + L entries (S = conv_state_len(p)) + padding.
template <typename T>
void load_ext(const CausalConvParams& p, int64_t b, int64_t d, float* ext) {
  const int64_t S = conv_state_len(p);
  if (p.init) widen(ext, static_cast<const T*>(p.init) + (b * p.D + d) * S, S);
  else std::memset(ext, 0, sizeof(float) * S);
  widen(ext + S, static_cast<const T*>(p.x) + (b * p.D + d) * p.L, p.L);
  std::memset(ext + S + p.L, 0, sizeof(float) * 2 * Vec::size);
}

// pre[t] = bias + sum_k w[k] ext[t + k] for t < L (pre has L + Vec::size room).
inline void conv_row(const float* ext, const float* w, int64_t W, float bias, int64_t L, float* pre) {
  for (int64_t t = 0; t < L; t += Vec::size) {
    Vec acc = Vec::set1(bias);
    for (int64_t k = 0; k < W; ++k) acc = fma(Vec::set1(w[k]), Vec::load(ext + t + k), acc);
    acc.store(pre + t);
  }
}

// Weights and bias have x's dtype T, or are fp32 next to 16-bit x (p.wdtype).
template <typename T>
void load_weights(const CausalConvParams& p, int64_t d, float* w) {
  if (p.wdtype == DType::f32) std::memcpy(w, static_cast<const float*>(p.w) + d * p.W, sizeof(float) * p.W);
  else widen(w, static_cast<const T*>(p.w) + d * p.W, p.W);
}
template <typename T>
float load_bias(const CausalConvParams& p, int64_t d) {
  if (!p.bias) return 0.f;
  return p.wdtype == DType::f32 ? static_cast<const float*>(p.bias)[d] : to_float(static_cast<const T*>(p.bias)[d]);
}
template <typename T>
void store_weight_grad(const CausalConvParams& p, void* out, int64_t i, double v) {
  if (p.wdtype == DType::f32) static_cast<float*>(out)[i] = float(v);
  else static_cast<T*>(out)[i] = from_float<T>(float(v));
}

// seq_idx (packed sequences): ext position t + k feeds output t only if input t + k - (W-1) has
// output t's sequence index. The rows are convolved unmasked; only outputs within W-1 positions
// after a change of index have masked pairs, and these are corrected here (few per sequence).
inline bool masked(const int32_t* s, int64_t t, int64_t k, int64_t W1) {
  const int64_t src = t + k - W1;
  return src >= 0 && s[src] != s[t];
}
inline bool has_masked(const int32_t* s, int64_t t, int64_t W1) {
  for (int64_t k = 0; k < W1; ++k)
    if (masked(s, t, k, W1)) return true;
  return false;
}
// pre[t] recomputed with the mask where any pair is masked.
inline void fix_pre(const int32_t* s, const float* ext, const float* w, int64_t W, float bias, int64_t L, float* pre) {
  for (int64_t t = 0; t < L; ++t) {
    if (!has_masked(s, t, W - 1)) continue;
    float acc = bias;
    for (int64_t k = 0; k < W; ++k)
      if (!masked(s, t, k, W - 1)) acc += w[k] * ext[t + k];
    pre[t] = acc;
  }
}


template <typename T>
void fwd(const CausalConvParams& p) {
  const int64_t W = p.W, W1 = W - 1, L = p.L, S = conv_state_len(p);
  parallel_for(p.B * p.D, p.threads, std::max<int64_t>(1, 8192 / std::max<int64_t>(L, 1)), [&](int64_t r0, int64_t r1) {
    Buf<float> ext(size_t(S + L + 3 * Vec::size)), pre(size_t(L + Vec::size));
    float w[kMaxW];
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t b = r / p.D, d = r % p.D;
      load_ext<T>(p, b, d, ext.p);  // the whole row of init first: final_state may be the same buffer
      load_weights<T>(p, d, w);
      const float bias = load_bias<T>(p, d);
      const float* window = ext.p + (S - W1);  // the last W-1 state entries, then x
      conv_row(window, w, W, bias, L, pre.p);
      if (p.seq_idx) fix_pre(p.seq_idx + b * L, window, w, W, bias, L, pre.p);
      if (p.silu)
        for (int64_t t = 0; t < L; t += Vec::size) {
          const Vec x = Vec::load(pre.p + t);
          (x * sigmoid_accurate(x)).store(pre.p + t);
        }
      T* y = static_cast<T*>(p.y) + r * L;
      int64_t t = 0;
      for (; t + Vec::size <= L; t += Vec::size) Vec::load(pre.p + t).store(y + t);
      for (; t < L; ++t) y[t] = from_float<T>(pre[t]);
      if (p.final_state) {
        T* f = static_cast<T*>(p.final_state) + r * S;
        for (int64_t i = 0; i < S; ++i) f[i] = from_float<T>(ext[L + i]);
      }
    }
  });
}

template <typename T>
void bwd(const CausalConvBwdParams& q) {
  const CausalConvParams& p = q.fwd;
  const int64_t W = p.W, W1 = W - 1, L = p.L, E = L + W1;
  parallel_for(p.D, p.threads, 1, [&](int64_t d0, int64_t d1) {
    Buf<float> ext(size_t(E + 2 * Vec::size)), g(size_t(L + 2 * W + 2 * Vec::size)), dext(size_t(E + Vec::size));
    float w[kMaxW];
    double dw[kMaxW];
    for (int64_t d = d0; d < d1; ++d) {
      load_weights<T>(p, d, w);
      const float bias = load_bias<T>(p, d);
      std::fill(dw, dw + W, 0.0);
      double dbias = 0.0;
      for (int64_t b = 0; b < p.B; ++b) {
        const int64_t r = b * p.D + d;
        load_ext<T>(p, b, d, ext.p);
        // g = dL/dpre, stored at offset W1 with W1 zeros on both sides so that
        // dext[j] = sum_k w[k] g[j - k] is a plain correlation.
        float* gp = g.p + W1;
        std::memset(g.p, 0, sizeof(float) * W1);
        widen(gp, static_cast<const T*>(q.dy) + r * L, L);
        std::memset(gp + L, 0, sizeof(float) * (W1 + Vec::size));
        const int32_t* seq = p.seq_idx ? p.seq_idx + b * L : nullptr;
        if (p.silu) {
          conv_row(ext.p, w, W, bias, L, dext.p);  // dext as scratch for the pre-activation
          if (seq) fix_pre(seq, ext.p, w, W, bias, L, dext.p);
          for (int64_t t = 0; t < L; t += Vec::size) {
            const Vec x = Vec::load(dext.p + t), s = sigmoid_accurate(x);
            (Vec::load(gp + t) * s * (Vec::set1(1.f) + x * (Vec::set1(1.f) - s))).store(gp + t);
          }
          std::memset(gp + L, 0, sizeof(float) * (W1 + Vec::size));
        }
        for (int64_t t = 0; t < L; ++t) dbias += gp[t];
        for (int64_t k = 0; k < W; ++k) {
          Vec acc = Vec::zero();
          int64_t t = 0;
          for (; t + Vec::size <= L; t += Vec::size) acc = fma(Vec::load(gp + t), Vec::load(ext.p + t + k), acc);
          float s = acc.sum();
          for (; t < L; ++t) s += gp[t] * ext[t + k];
          dw[k] += s;
        }
        // dext[j] = sum_k w[k] g[j - k], j in [0, E)
        for (int64_t j = 0; j < E; j += Vec::size) {
          Vec acc = Vec::zero();
          for (int64_t k = 0; k < W; ++k) acc = fma(Vec::set1(w[k]), Vec::load(g.p + W1 + j - k), acc);
          acc.store(dext.p + j);
        }
        if (seq)  // take the masked pairs back out of dw and dext
          for (int64_t t = 0; t < L; ++t) {
            if (!has_masked(seq, t, W1)) continue;
            for (int64_t k = 0; k < W1; ++k)
              if (masked(seq, t, k, W1)) {
                dw[k] -= double(gp[t]) * double(ext[t + k]);
                dext[t + k] -= w[k] * gp[t];
              }
          }
        if (q.dfinal) {
          const T* df = static_cast<const T*>(q.dfinal) + r * W1;
          for (int64_t i = 0; i < W1; ++i) dext[L + i] += to_float(df[i]);
        }
        T* dx = static_cast<T*>(q.dx) + r * L;
        for (int64_t t = 0; t < L; ++t) dx[t] = from_float<T>(dext[W1 + t]);
        if (q.dinit) {
          T* di = static_cast<T*>(q.dinit) + r * W1;
          for (int64_t i = 0; i < W1; ++i) di[i] = from_float<T>(dext[i]);
        }
      }
      for (int64_t k = 0; k < W; ++k) store_weight_grad<T>(p, q.dw, d * W + k, dw[k]);
      if (q.dbias) store_weight_grad<T>(p, q.dbias, d, dbias);
    }
  });
}

}  // namespace

void causal_conv1d_fwd_cpu(const CausalConvParams& p) {
  switch (p.dtype) {
    case DType::f32: return fwd<float>(p);
    case DType::bf16: return fwd<bf16_t>(p);
    case DType::f16: return fwd<f16_t>(p);
    default: throw std::invalid_argument("causal_conv1d: fp64 runs the exact path");
  }
}

void causal_conv1d_bwd_cpu(const CausalConvBwdParams& p) {
  switch (p.fwd.dtype) {
    case DType::f32: return bwd<float>(p);
    case DType::bf16: return bwd<bf16_t>(p);
    case DType::f16: return bwd<f16_t>(p);
    default: throw std::invalid_argument("causal_conv1d: fp64 runs the exact path");
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
