// Mamba's selective scan on CUDA (fp32 / bf16 / fp16 inputs, fp32 state), deterministic.
//
// Layout (ss_cuda_geometry): a 128-thread block takes Dt channels of one batch row; each channel's N
// states are spread over P threads (J <= 2 states each), so every thread walks time sequentially for
// its own (channel, state) pairs: no scan across threads is needed, and B*D*N threads run in parallel
// (Mamba: B*D*16). Time is cut into 8-step chunks. Per chunk each thread writes its contribution
// C_t . h_t to shared memory, and after a barrier the N contributions of every (channel, step) are
// summed in a fixed order, then D*u and the SiLU gate are applied.
//
// Backward: one pass forward stores the states at every chunk start (scratch); then chunks in reverse:
// recompute the chunk's states into shared memory, compute y, dy and dz per step, run the reverse
// recurrence g_t = C_t dy_t + a_{t+1} g_{t+1} per (channel, state), and sum the per-state terms of du
// and ddelta (over states) and of variable dB / dC (over the block's channels) in a fixed order.
// Sums over the batch (dA, dD, ddelta_bias, invariant dB / dC) and over a group's blocks (variable
// dB / dC) are partials in the scratch, reduced by a second kernel in a fixed order: no atomics, the
// same bits on every run.
#include "common/cuda_utils.cuh"
#include "scan/scan.h"

namespace kernkit {
namespace {

using cuda::ld;
using cuda::st;

constexpr int kT = kSsThreads, kC = kSsChunk;

// log(1 + e^x) in the overflow-free form (x > 20: x, as the CPU kernels; the branch-free form also keeps
// ptxas from spilling around a slow-path call)
__device__ __forceinline__ float softplus(float x) { return fmaxf(x, 0.f) + log1pf(expf(-fabsf(x))); }
__device__ __forceinline__ float sigmoid(float x) { return 1.f / (1.f + expf(-x)); }

// The per-thread view of the geometry: channel d of batch row b, states n = j + P*s.
struct Lane {
  long long b, d, g;  // g: the B/C group of d
  int dl, j;
  bool active;
  bool has[2];
  long long n[2];
};

__device__ __forceinline__ Lane lane_of(const SelectiveScanParams& p, const SsCudaGeometry& geo) {
  Lane l;
  l.dl = threadIdx.x / geo.P;
  l.j = threadIdx.x % geo.P;
  l.active = l.dl < geo.Dt;
  l.b = blockIdx.y;
  l.d = (long long)blockIdx.x * geo.Dt + (l.active ? l.dl : 0);
  l.g = l.d / (p.D / p.G);
#pragma unroll
  for (int s = 0; s < 2; ++s) {
    l.n[s] = l.j + (long long)geo.P * s;
    l.has[s] = l.active && s < geo.J && l.n[s] < p.N;
  }
  return l;
}

// dt = delta + bias, softplus'ed if asked; *pre gets the value before the softplus
template <typename T>
__device__ __forceinline__ float dt_at(const SelectiveScanParams& p, long long idx, long long d, float* pre = nullptr) {
  float x = ld(static_cast<const T*>(p.delta) + idx);
  if (p.delta_bias) x += static_cast<const float*>(p.delta_bias)[d];
  if (pre) *pre = x;
  return p.softplus ? softplus(x) : x;
}

// B or C entry n at time t: variable (B, G, N, L) in u's dtype, or invariant (D, N) fp32
template <typename T>
__device__ __forceinline__ float bc_at(const SelectiveScanParams& p, const void* m, bool var, const Lane& l,
                                       long long n, long long t) {
  if (var) return ld(static_cast<const T*>(m) + ((l.b * p.G + l.g) * p.N + n) * p.L + t);
  return static_cast<const float*>(m)[l.d * p.N + n];
}

template <typename T>
__global__ void __launch_bounds__(kT) ss_fwd_kernel(SelectiveScanParams p, SsCudaGeometry geo) {
  KK_SHARED(float, part, [kC][kT]);
  const Lane l = lane_of(p, geo);
  const int tid = threadIdx.x;
  const float* A = static_cast<const float*>(p.A);
  float h[2] = {0.f, 0.f}, a[2] = {0.f, 0.f};
#pragma unroll
  for (int s = 0; s < 2; ++s)
    if (l.has[s]) {
      a[s] = A[l.d * p.N + l.n[s]];
      if (p.h0) h[s] = static_cast<const float*>(p.h0)[(l.b * p.D + l.d) * p.N + l.n[s]];
    }
  const long long row = (l.b * p.D + l.d) * p.L;
  for (long long t0 = 0; t0 < p.L; t0 += kC) {
    const int steps = int(p.L - t0 < kC ? p.L - t0 : kC);
    for (int tt = 0; tt < steps; ++tt) {
      float c = 0.f;
      if (l.active) {
        const long long t = t0 + tt;
        const float dt = dt_at<T>(p, row + t, l.d), dbu = dt * ld(static_cast<const T*>(p.u) + row + t);
#pragma unroll
        for (int s = 0; s < 2; ++s)
          if (l.has[s]) {
            h[s] = fmaf(expf(dt * a[s]), h[s], dbu * bc_at<T>(p, p.Bm, p.b_var, l, l.n[s], t));
            c += bc_at<T>(p, p.Cm, p.c_var, l, l.n[s], t) * h[s];
          }
      }
      part[tt][tid] = c;
    }
    __syncthreads();
    for (int r = tid; r < geo.Dt * steps; r += kT) {
      const int rdl = r / steps, tt = r % steps;
      float y = 0.f;
      for (int q = 0; q < geo.P; ++q) y += part[tt][rdl * geo.P + q];
      const long long rd = (long long)blockIdx.x * geo.Dt + rdl, idx = (l.b * p.D + rd) * p.L + t0 + tt;
      if (p.Dskip) y += static_cast<const float*>(p.Dskip)[rd] * ld(static_cast<const T*>(p.u) + idx);
      if (p.z) {
        const float zz = ld(static_cast<const T*>(p.z) + idx);
        y *= zz * sigmoid(zz);
      }
      static_cast<T*>(p.out)[idx] = st<T>(y);
    }
    __syncthreads();  // part is rewritten by the next chunk
  }
  if (p.last_state)
#pragma unroll
    for (int s = 0; s < 2; ++s)
      if (l.has[s]) static_cast<float*>(p.last_state)[(l.b * p.D + l.d) * p.N + l.n[s]] = h[s];
}

// Scratch views (ss_cuda_work_floats)
struct SsWork {
  float *ck, *pA, *pB, *pC, *pD, *pbias, *pBvar, *pCvar;
};

inline SsWork ss_work(const SelectiveScanBwdParams& q, const SsCudaGeometry& geo) {
  const SelectiveScanParams& p = q.fwd;
  const long long bdn = p.Bsz * p.D * p.N, var = p.Bsz * geo.tiles * p.N * p.L;
  SsWork w;
  w.ck = q.work;
  w.pA = w.ck + bdn * geo.chunks;
  w.pB = w.pA + bdn;
  w.pC = w.pB + bdn;
  w.pD = w.pC + bdn;
  w.pbias = w.pD + p.Bsz * p.D;
  w.pBvar = w.pbias + p.Bsz * p.D;
  w.pCvar = w.pBvar + (p.b_var ? var : 0);
  return w;
}

template <typename T>
__global__ void __launch_bounds__(kT) ss_bwd_kernel(SelectiveScanBwdParams q, SsCudaGeometry geo, SsWork w) {
  const SelectiveScanParams& p = q.fwd;
  KK_SHARED(float, part, [kC][kT]);      // C . h per thread, then du terms
  KK_SHARED(float, ddpart, [kC][kT]);    // ddelta terms
  KK_SHARED(float, hbuf, [kC][2][kT]);   // the chunk's states
  KK_SHARED(float, bpart, [kC][2][kT]);  // variable dB terms
  KK_SHARED(float, cpart, [kC][2][kT]);  // variable dC terms
  KK_SHARED(float, dyb, [kC][kT]);       // dy per (step, channel of the block)
  KK_SHARED(float, dDc, [kC][kT]);       // dy * u
  KK_SHARED(float, ddb, [kC][kT]);       // ddelta (for the bias gradient)
  const Lane l = lane_of(p, geo);
  const int tid = threadIdx.x;
  const float* A = static_cast<const float*>(p.A);
  const long long row = (l.b * p.D + l.d) * p.L, state = (l.b * p.D + l.d) * p.N;
  float a[2] = {0.f, 0.f}, h[2] = {0.f, 0.f};
#pragma unroll
  for (int s = 0; s < 2; ++s)
    if (l.has[s]) {
      a[s] = A[l.d * p.N + l.n[s]];
      if (p.h0) h[s] = static_cast<const float*>(p.h0)[state + l.n[s]];
    }
  // states at every chunk start
  for (long long c = 0; c < geo.chunks; ++c) {
#pragma unroll
    for (int s = 0; s < 2; ++s)
      if (l.has[s]) w.ck[(state + l.n[s]) * geo.chunks + c] = h[s];
    if (!l.active) continue;
    for (long long t = c * kC; t < p.L && t < (c + 1) * kC; ++t) {
      const float dt = dt_at<T>(p, row + t, l.d), dbu = dt * ld(static_cast<const T*>(p.u) + row + t);
#pragma unroll
      for (int s = 0; s < 2; ++s)
        if (l.has[s]) h[s] = fmaf(expf(dt * a[s]), h[s], dbu * bc_at<T>(p, p.Bm, p.b_var, l, l.n[s], t));
    }
  }
  float carry[2] = {0.f, 0.f}, dA[2] = {0.f, 0.f}, dBi[2] = {0.f, 0.f}, dCi[2] = {0.f, 0.f};
  if (q.dlast)
#pragma unroll
    for (int s = 0; s < 2; ++s)
      if (l.has[s]) carry[s] = static_cast<const float*>(q.dlast)[state + l.n[s]];
  float dD_acc = 0.f, dbias_acc = 0.f;  // owned by threads tid < Dt (channel tid of the block)
  const T* u = static_cast<const T*>(p.u);
  for (long long c = geo.chunks - 1; c >= 0; --c) {
    const long long t0 = c * kC;
    const int steps = int(p.L - t0 < kC ? p.L - t0 : kC);
    float hck[2];
    // 1. the chunk's states again, and C . h per step
#pragma unroll
    for (int s = 0; s < 2; ++s) hck[s] = h[s] = l.has[s] ? w.ck[(state + l.n[s]) * geo.chunks + c] : 0.f;
    for (int tt = 0; tt < steps; ++tt) {
      float cy = 0.f;
      if (l.active) {
        const long long t = t0 + tt;
        const float dt = dt_at<T>(p, row + t, l.d), dbu = dt * ld(u + row + t);
#pragma unroll
        for (int s = 0; s < 2; ++s)
          if (l.has[s]) {
            h[s] = fmaf(expf(dt * a[s]), h[s], dbu * bc_at<T>(p, p.Bm, p.b_var, l, l.n[s], t));
            cy += bc_at<T>(p, p.Cm, p.c_var, l, l.n[s], t) * h[s];
          }
      }
#pragma unroll
      for (int s = 0; s < 2; ++s) hbuf[tt][s][tid] = h[s];
      part[tt][tid] = cy;
    }
    __syncthreads();
    // 2. y, then dy and dz per (channel, step)
    for (int r = tid; r < geo.Dt * steps; r += kT) {
      const int rdl = r / steps, tt = r % steps;
      float y = 0.f;
      for (int k = 0; k < geo.P; ++k) y += part[tt][rdl * geo.P + k];
      const long long rd = (long long)blockIdx.x * geo.Dt + rdl, idx = (l.b * p.D + rd) * p.L + t0 + tt;
      const float uu = ld(u + idx);
      if (p.Dskip) y += static_cast<const float*>(p.Dskip)[rd] * uu;
      float dy = ld(static_cast<const T*>(q.dout) + idx);
      if (p.z) {
        const float zz = ld(static_cast<const T*>(p.z) + idx), sg = sigmoid(zz);
        static_cast<T*>(q.dz)[idx] = st<T>(dy * y * sg * (1.f + zz * (1.f - sg)));
        dy *= zz * sg;
      }
      dyb[tt][rdl] = dy;
      dDc[tt][rdl] = dy * uu;
    }
    __syncthreads();
    // 3. the reverse recurrence, per (channel, state)
    for (int tt = steps - 1; tt >= 0; --tt) {
      float du_c = 0.f, dd_c = 0.f;
      if (l.active) {
        const long long t = t0 + tt;
        const float dt = dt_at<T>(p, row + t, l.d), uu = ld(u + row + t), dy = dyb[tt][l.dl];
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          float db = 0.f, dc = 0.f;
          if (l.has[s]) {
            const float hprev = tt > 0 ? hbuf[tt - 1][s][tid] : hck[s], ea = expf(dt * a[s]);
            const float Bn = bc_at<T>(p, p.Bm, p.b_var, l, l.n[s], t), Cn = bc_at<T>(p, p.Cm, p.c_var, l, l.n[s], t);
            const float gq = Cn * dy + carry[s];
            dA[s] += gq * ea * dt * hprev;
            dd_c += gq * (a[s] * ea * hprev + Bn * uu);
            du_c += gq * dt * Bn;
            db = gq * dt * uu;
            dc = dy * hbuf[tt][s][tid];
            carry[s] = ea * gq;
          }
          if (p.b_var) bpart[tt][s][tid] = db;
          else dBi[s] += db;
          if (p.c_var) cpart[tt][s][tid] = dc;
          else dCi[s] += dc;
        }
      } else {
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          if (p.b_var) bpart[tt][s][tid] = 0.f;
          if (p.c_var) cpart[tt][s][tid] = 0.f;
        }
      }
      part[tt][tid] = du_c;
      ddpart[tt][tid] = dd_c;
    }
    __syncthreads();
    // 4. du and ddelta (sums over states), variable dB / dC (sums over the block's channels)
    for (int r = tid; r < geo.Dt * steps; r += kT) {
      const int rdl = r / steps, tt = r % steps;
      float du = 0.f, dd = 0.f;
      for (int k = 0; k < geo.P; ++k) {
        du += part[tt][rdl * geo.P + k];
        dd += ddpart[tt][rdl * geo.P + k];
      }
      const long long rd = (long long)blockIdx.x * geo.Dt + rdl, idx = (l.b * p.D + rd) * p.L + t0 + tt;
      if (p.Dskip) du += static_cast<const float*>(p.Dskip)[rd] * dyb[tt][rdl];
      if (p.softplus) {
        float pre;
        dt_at<T>(p, idx, rd, &pre);
        dd *= sigmoid(pre);
      }
      static_cast<T*>(q.du)[idx] = st<T>(du);
      static_cast<T*>(q.ddelta)[idx] = st<T>(dd);
      ddb[tt][rdl] = dd;
    }
    if (p.b_var || p.c_var)
      for (int r = tid; r < p.N * steps; r += kT) {
        const int n = r / steps, tt = r % steps, s = n / geo.P, k = n % geo.P;
        float db = 0.f, dc = 0.f;
        for (int dl = 0; dl < geo.Dt; ++dl) {
          if (p.b_var) db += bpart[tt][s][dl * geo.P + k];
          if (p.c_var) dc += cpart[tt][s][dl * geo.P + k];
        }
        const long long o = ((l.b * geo.tiles + blockIdx.x) * p.N + n) * p.L + t0 + tt;
        if (p.b_var) w.pBvar[o] = db;
        if (p.c_var) w.pCvar[o] = dc;
      }
    __syncthreads();
    // 5. per-channel sums over time, in step order
    if (tid < geo.Dt)
      for (int tt = steps - 1; tt >= 0; --tt) {
        dD_acc += dDc[tt][tid];
        dbias_acc += ddb[tt][tid];
      }
    __syncthreads();  // the buffers are rewritten by the next chunk
  }
#pragma unroll
  for (int s = 0; s < 2; ++s)
    if (l.has[s]) {
      const long long i = state + l.n[s];
      if (q.dh0) static_cast<float*>(q.dh0)[i] = carry[s];
      w.pA[i] = dA[s];
      w.pB[i] = dBi[s];
      w.pC[i] = dCi[s];
    }
  if (tid < geo.Dt) {
    const long long i = l.b * p.D + (long long)blockIdx.x * geo.Dt + tid;
    w.pD[i] = dD_acc;
    w.pbias[i] = dbias_acc;
  }
}

// out[i] = sum over the batch of part[b * n + i], b in order
__global__ void sum_over_batch_kernel(const float* part, float* out, long long n, long long batches) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  float s = 0.f;
  for (long long b = 0; b < batches; ++b) s += part[b * n + i];
  out[i] = s;
}

// variable dB / dC (B, G, N, L): the partials of group g's blocks, in block order
template <typename T>
__global__ void sum_over_tiles_kernel(const float* part, T* out, long long Bsz, long long G, long long N, long long L,
                                      long long tiles) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= Bsz * G * N * L) return;
  const long long t = i % L, n = (i / L) % N, g = (i / (L * N)) % G, b = i / (L * N * G), per = tiles / G;
  float s = 0.f;
  for (long long k = g * per; k < (g + 1) * per; ++k) s += part[((b * tiles + k) * N + n) * L + t];
  out[i] = st<T>(s);
}

template <template <typename> class K, typename P>
void by_dtype(const P& p, DType dtype, cudaStream_t s) {
  switch (dtype) {
    case DType::f32: return K<float>::go(p, s);
    case DType::f16: return K<__half>::go(p, s);
    case DType::bf16: return K<__nv_bfloat16>::go(p, s);
    default: throw std::invalid_argument("selective_scan on CUDA: u must be float32, bfloat16 or float16");
  }
}

template <typename T> struct Fwd {
  static void go(const SelectiveScanParams& p, cudaStream_t s) {
    const SsCudaGeometry geo = ss_cuda_geometry(p.D, p.N, p.G, p.L);
    KK_LAUNCH(dim3(unsigned(geo.tiles), unsigned(p.Bsz)), kT, 0, s, ss_fwd_kernel<T>)(p, geo);
  }
};

template <typename T> struct Bwd {
  static void go(const SelectiveScanBwdParams& q, cudaStream_t s) {
    const SelectiveScanParams& p = q.fwd;
    const SsCudaGeometry geo = ss_cuda_geometry(p.D, p.N, p.G, p.L);
    const SsWork w = ss_work(q, geo);
    if (p.Bsz > 0) KK_LAUNCH(dim3(unsigned(geo.tiles), unsigned(p.Bsz)), kT, 0, s, ss_bwd_kernel<T>)(q, geo, w);
    const long long dn = p.D * p.N;
    auto batch_sum = [&](const float* part, void* out, long long n) {
      if (out) KK_LAUNCH(cuda::blocks_for(n, 256), 256, 0, s, sum_over_batch_kernel)(part, static_cast<float*>(out), n, p.Bsz);
    };
    batch_sum(w.pA, q.dA, dn);
    if (!p.b_var) batch_sum(w.pB, q.dB, dn);
    if (!p.c_var) batch_sum(w.pC, q.dC, dn);
    batch_sum(w.pD, q.dD, p.D);
    batch_sum(w.pbias, q.ddelta_bias, p.D);
    const long long nvar = p.Bsz * p.G * p.N * p.L;
    if (p.b_var && nvar)
      KK_LAUNCH(cuda::blocks_for(nvar, 256), 256, 0, s, sum_over_tiles_kernel<T>)(w.pBvar, static_cast<T*>(q.dB), p.Bsz,
                                                                                  p.G, p.N, p.L, geo.tiles);
    if (p.c_var && nvar)
      KK_LAUNCH(cuda::blocks_for(nvar, 256), 256, 0, s, sum_over_tiles_kernel<T>)(w.pCvar, static_cast<T*>(q.dC), p.Bsz,
                                                                                  p.G, p.N, p.L, geo.tiles);
  }
};

}  // namespace

void selective_scan_fwd_cuda(const SelectiveScanParams& p, int device, intptr_t stream) {
  if (p.Bsz == 0 || p.D == 0) return;
  cuda::DeviceGuard guard(device);
  by_dtype<Fwd>(p, p.dtype, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "selective_scan forward launch");
}

void selective_scan_bwd_cuda(const SelectiveScanBwdParams& q, int device, intptr_t stream) {
  if (q.fwd.D == 0) return;
  cuda::DeviceGuard guard(device);
  by_dtype<Bwd>(q, q.fwd.dtype, reinterpret_cast<cudaStream_t>(stream));
  cuda::check(cudaGetLastError(), "selective_scan backward launch");
}

}  // namespace kernkit
