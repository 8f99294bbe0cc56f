// h_t = a_t * h_{t-1} + b_t on CPU, vectorised over channels. Each task owns a
// (batch, channel block) and walks time sequentially; when there are too few
// such tasks to fill the threads and T is long, time is cut into chunks (their
// number depends on the shape only, so results do not depend on the thread
// count): chunk-local scans from zero give each chunk's end value and decay
// product, a short sequential pass carries the state across chunks, and a
// second scan per chunk writes h from the right carry-in.
#include <algorithm>
#include <cstring>

#include "common/parallel.h"
#include "common/vec.h"
#include "scan/scan.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

constexpr int64_t CB = 4 * Vec::size;  // channels per block
constexpr int NV = 4;                  // vectors per block

template <typename T>
inline Vec load_op(const ScanOperand& op, int64_t b, int64_t t, int64_t c, int64_t nc, float* tmp) {
  const T* p = static_cast<const T*>(op.ptr) + b * op.bs + t * op.ts;
  if (op.cs == 0) return Vec::set1(to_float(p[0]));
  if (nc == Vec::size) return Vec::load(p + c);
  for (int64_t i = 0; i < Vec::size; ++i) tmp[i] = i < nc ? to_float(p[c + i]) : 0.f;
  return Vec::load(tmp);
}

template <typename T>
inline void store_h(T* h, int64_t c, int64_t nc, Vec v, float* tmp) {
  if (nc == Vec::size) return v.store(h + c);
  v.store(tmp);
  for (int64_t i = 0; i < nc; ++i) h[c + i] = from_float<T>(tmp[i]);
}

// Scans time steps [t0, t1) (in scan order) of one channel block from state `st`
// (NV vectors), optionally writing h, optionally accumulating the product of a.
template <typename T>
void scan_block(const LinearScanParams& p, int64_t b, int64_t c0, int64_t t0, int64_t t1, Vec* st, Vec* prod,
                bool write) {
  alignas(64) float tmp[Vec::size];
  const int64_t ncb = std::min(CB, p.C - c0);
  for (int64_t s = t0; s < t1; ++s) {
    const int64_t t = p.reverse ? p.T - 1 - s : s;
    T* h = static_cast<T*>(p.h) + (b * p.T + t) * p.C;
    for (int v = 0; v < NV; ++v) {
      const int64_t c = c0 + v * Vec::size, nc = std::min<int64_t>(Vec::size, ncb - v * Vec::size);
      if (nc <= 0) break;
      const Vec a = load_op<T>(p.a, b, t, c, nc, tmp);
      st[v] = fma(a, st[v], load_op<T>(p.b, b, t, c, nc, tmp));
      if (prod) prod[v] = prod[v] * a;
      if (write) store_h(h, c, nc, st[v], tmp);
    }
  }
}

template <typename T>
void load_state(const LinearScanParams& p, int64_t b, int64_t c0, Vec* st) {
  alignas(64) float tmp[NV * Vec::size] = {};
  if (p.h0) {
    const T* h0 = static_cast<const T*>(p.h0) + b * p.C;
    for (int64_t i = 0; i < CB && c0 + i < p.C; ++i) tmp[i] = to_float(h0[c0 + i]);
  }
  for (int v = 0; v < NV; ++v) st[v] = Vec::load(tmp + v * Vec::size);
}

template <typename T>
void scan(const LinearScanParams& p) {
  const int64_t blocks = (p.C + CB - 1) / CB, units = p.B * blocks;
  // Time chunks only when the (batch, channel block) units cannot fill a machine.
  const int64_t chunks = units >= 16 ? 1 : std::max<int64_t>(1, std::min<int64_t>(32, p.T / 2048));
  const int64_t tlen = (p.T + chunks - 1) / chunks;
  if (chunks == 1) {
    parallel_for(units, p.threads, 1, [&](int64_t u0, int64_t u1) {
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = u / blocks, c0 = (u % blocks) * CB;
        Vec st[NV];
        load_state<T>(p, b, c0, st);
        scan_block<T>(p, b, c0, 0, p.T, st, nullptr, true);
      }
    });
    return;
  }
  // carry[u][k] holds chunk k's end value (from zero) then, after the carry pass, its carry-in.
  Buf<float> ends(size_t(units * chunks) * CB * 2);
  float* prods = ends.p + size_t(units * chunks) * CB;
  parallel_for(units * chunks, p.threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t u = i / chunks, k = i % chunks, b = u / blocks, c0 = (u % blocks) * CB;
      Vec st[NV], pr[NV];
      for (int v = 0; v < NV; ++v) { st[v] = Vec::zero(); pr[v] = Vec::set1(1.f); }
      scan_block<T>(p, b, c0, k * tlen, std::min(p.T, (k + 1) * tlen), st, pr, false);
      for (int v = 0; v < NV; ++v) {
        st[v].store(ends.p + i * CB + v * Vec::size);
        pr[v].store(prods + i * CB + v * Vec::size);
      }
    }
  });
  parallel_for(units, p.threads, 1, [&](int64_t u0, int64_t u1) {
    for (int64_t u = u0; u < u1; ++u) {
      Vec carry[NV];
      load_state<T>(p, u / blocks, (u % blocks) * CB, carry);
      for (int64_t k = 0; k < chunks; ++k) {
        float* e = ends.p + (u * chunks + k) * CB;
        const float* pr = prods + (u * chunks + k) * CB;
        for (int v = 0; v < NV; ++v) {
          const Vec next = fma(Vec::load(pr + v * Vec::size), carry[v], Vec::load(e + v * Vec::size));
          carry[v].store(e + v * Vec::size);  // e now holds the carry-in of chunk k
          carry[v] = next;
        }
      }
    }
  });
  parallel_for(units * chunks, p.threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t u = i / chunks, k = i % chunks, b = u / blocks, c0 = (u % blocks) * CB;
      Vec st[NV];
      for (int v = 0; v < NV; ++v) st[v] = Vec::load(ends.p + i * CB + v * Vec::size);
      scan_block<T>(p, b, c0, k * tlen, std::min(p.T, (k + 1) * tlen), st, nullptr, true);
    }
  });
}

// fp64: plain loops (gradcheck), same chunk-free sequential order.
void scan_f64(const LinearScanParams& p) {
  parallel_for(p.B * p.C, p.threads, 64, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t b = i / p.C, c = i % p.C;
      double st = p.h0 ? static_cast<const double*>(p.h0)[b * p.C + c] : 0.0;
      for (int64_t s = 0; s < p.T; ++s) {
        const int64_t t = p.reverse ? p.T - 1 - s : s;
        const double a = static_cast<const double*>(p.a.ptr)[b * p.a.bs + t * p.a.ts + c * p.a.cs];
        const double x = static_cast<const double*>(p.b.ptr)[b * p.b.bs + t * p.b.ts + c * p.b.cs];
        st = a * st + x;
        static_cast<double*>(p.h)[(b * p.T + t) * p.C + c] = st;
      }
    }
  });
}

}  // namespace

void linear_scan_cpu(const LinearScanParams& p) {
  switch (p.dtype) {
    case DType::f32: return scan<float>(p);
    case DType::bf16: return scan<bf16_t>(p);
    case DType::f16: return scan<f16_t>(p);
    case DType::f64: return scan_f64(p);
  }
}

}  // namespace KK_ISA_NS
}  // namespace kernkit
