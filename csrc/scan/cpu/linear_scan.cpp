// h_t = a_t * h_{t-1} + b_t on CPU, vectorised over channels. Each task owns a
// (batch, channel block) and walks time sequentially; when there are too few
// such tasks to fill the threads and T is long, time is cut into chunks (their
// number depends on the shape only, so results do not depend on the thread
// count): chunk-local scans from zero give each chunk's end value and decay
// product, a short sequential pass carries the state across chunks, and a
// second scan per chunk writes h from the right carry-in.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "common/parallel.h"
#include "common/vec.h"
#include "scan/scan.h"

namespace kernkit {
namespace KK_ISA_NS {
namespace {

constexpr int64_t CB = 4 * Vec::size;  // channels per block of the time-chunked path
constexpr int64_t kWideMax = 2048;
constexpr int64_t kStreamBytes = int64_t(64) << 20;     // channels per task on the plain path (state: 8 KiB in L1)

template <typename T>
inline Vec load_op(const ScanOperand& op, int64_t b, int64_t t, int64_t c, int64_t nc, float* tmp) {
  const T* p = static_cast<const T*>(op.ptr) + b * op.bs + t * op.ts;
  if (op.cs == 0) return Vec::set1(to_float(p[0]));
  if (nc == Vec::size) return Vec::load(p + c);
  for (int64_t i = 0; i < Vec::size; ++i) tmp[i] = i < nc ? to_float(p[c + i]) : 0.f;
  return Vec::load(tmp);
}

template <typename T>
inline void store_h(T* h, int64_t c, int64_t nc, Vec v, float* tmp, bool stream) {
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    if (stream && nc == Vec::size && (reinterpret_cast<uintptr_t>(h + c) & (sizeof(Vec) - 1)) == 0) {
#if defined(KK_ISA_AVX512)
      return _mm512_stream_ps(h + c, v.v);
#else
      return _mm256_stream_ps(h + c, v.v);
#endif
    }
  }
#endif
  if (nc == Vec::size) return v.store(h + c);
  v.store(tmp);
  for (int64_t i = 0; i < nc; ++i) h[c + i] = from_float<T>(tmp[i]);
}

// Scans time steps [t0, t1) (in scan order) of channels [c0, c0 + width) from the
// state st (width floats, rounded up to whole vectors), optionally writing h and
// accumulating the product of a. Time outer, channels inner: every step reads and
// writes whole contiguous rows, which the hardware prefetchers follow (a narrow
// block per task made every step a jump of one row and ran at a third of the
// bandwidth). Each channel's arithmetic is the same whatever the width.
template <typename T>
void scan_block(const LinearScanParams& p, int64_t b, int64_t c0, int64_t width, int64_t t0, int64_t t1, float* st,
                float* prod, bool write) {
  alignas(64) float tmp[Vec::size];
  // h larger than the caches: write it with streaming stores (no read-for-ownership of
  // lines that are about to be overwritten whole: a quarter less memory traffic).
  const bool stream = write && int64_t(sizeof(T)) * p.B * p.T * p.C >= kStreamBytes;
  for (int64_t s = t0; s < t1; ++s) {
    const int64_t t = p.reverse ? p.T - 1 - s : s;
    T* h = static_cast<T*>(p.h) + (b * p.T + t) * p.C;
    for (int64_t i = 0; i < width; i += Vec::size) {
      const int64_t c = c0 + i, nc = std::min<int64_t>(Vec::size, width - i);
      const Vec a = load_op<T>(p.a, b, t, c, nc, tmp);
      const Vec v = fma(a, Vec::load(st + i), load_op<T>(p.b, b, t, c, nc, tmp));
      v.store(st + i);
      if (prod) (Vec::load(prod + i) * a).store(prod + i);
      if (write) store_h(h, c, nc, v, tmp, stream);
    }
  }
#if defined(KK_ISA_AVX512) || defined(KK_ISA_AVX2)
  if (stream) _mm_sfence();  // streaming stores are weakly ordered: publish them before the task ends
#endif
}

template <typename T>
void load_state(const LinearScanParams& p, int64_t b, int64_t c0, int64_t width, float* st) {
  const int64_t padded = (width + Vec::size - 1) / Vec::size * Vec::size;
  std::fill(st, st + padded, 0.f);
  if (p.h0) {
    const T* h0 = static_cast<const T*>(p.h0) + b * p.C;
    for (int64_t i = 0; i < width; ++i) st[i] = to_float(h0[c0 + i]);
  }
}

template <typename T>
void scan(const LinearScanParams& p) {
  const int64_t blocks = (p.C + CB - 1) / CB, units = p.B * blocks;
  // Time chunks only when the (batch, channel block) units cannot fill a machine.
  const int64_t chunks = units >= 16 ? 1 : std::max<int64_t>(1, std::min<int64_t>(32, p.T / 2048));
  const int64_t tlen = (p.T + chunks - 1) / chunks;
  if (chunks == 1) {
    // Wide tasks (whole rows where possible), narrowed until every thread has work.
    int64_t wide = std::min<int64_t>(kWideMax, (p.C + CB - 1) / CB * CB);
    while (wide > CB && p.B * ((p.C + wide - 1) / wide) < 2 * p.threads) wide = (wide / 2 + CB - 1) / CB * CB;
    const int64_t wblocks = (p.C + wide - 1) / wide;
    parallel_for(p.B * wblocks, p.threads, 1, [&](int64_t u0, int64_t u1) {
      Buf<float> st{size_t(wide)};
      for (int64_t u = u0; u < u1; ++u) {
        const int64_t b = u / wblocks, c0 = (u % wblocks) * wide, width = std::min(wide, p.C - c0);
        load_state<T>(p, b, c0, width, st.p);
        scan_block<T>(p, b, c0, width, 0, p.T, st.p, nullptr, true);
      }
    });
    return;
  }
  // ends[i] holds chunk i's end value (from zero) then, after the carry pass, its carry-in.
  Buf<float> ends(size_t(units * chunks) * CB * 2);
  float* prods = ends.p + size_t(units * chunks) * CB;
  auto width_of = [&](int64_t u) { return std::min(CB, p.C - (u % blocks) * CB); };
  parallel_for(units * chunks, p.threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t u = i / chunks, k = i % chunks, b = u / blocks, c0 = (u % blocks) * CB;
      float* st = ends.p + i * CB;
      float* pr = prods + i * CB;
      std::fill(st, st + CB, 0.f);
      std::fill(pr, pr + CB, 1.f);
      scan_block<T>(p, b, c0, width_of(u), k * tlen, std::min(p.T, (k + 1) * tlen), st, pr, false);
    }
  });
  parallel_for(units, p.threads, 1, [&](int64_t u0, int64_t u1) {
    alignas(64) float carry[CB] = {};  // lanes past a narrow last block stay defined
    for (int64_t u = u0; u < u1; ++u) {
      load_state<T>(p, u / blocks, (u % blocks) * CB, width_of(u), carry);
      for (int64_t k = 0; k < chunks; ++k) {
        float* e = ends.p + (u * chunks + k) * CB;
        const float* pr = prods + (u * chunks + k) * CB;
        for (int64_t i = 0; i < CB; i += Vec::size) {
          const Vec next = fma(Vec::load(pr + i), Vec::load(carry + i), Vec::load(e + i));
          Vec::load(carry + i).store(e + i);  // e now holds the carry-in of chunk k
          next.store(carry + i);
        }
      }
    }
  });
  parallel_for(units * chunks, p.threads, 1, [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) {
      const int64_t u = i / chunks, k = i % chunks, b = u / blocks, c0 = (u % blocks) * CB;
      scan_block<T>(p, b, c0, width_of(u), k * tlen, std::min(p.T, (k + 1) * tlen), ends.p + i * CB, nullptr, true);
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
