// kernkit._C: thin pybind11 functions over raw pointers. No torch headers: the
// Python side allocates and validates tensors, then passes data_ptr()s, sizes,
// dtype codes, a thread count and (for CUDA) the device and stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <array>
#include <cmath>
#include <cstring>
#include <vector>

#ifdef __linux__
#include <sys/mman.h>
#endif

#include "common/check.h"
#include "common/cuda_entry.h"
#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "attention/attention.h"
#include "attention/cpu/rotary.h"
#include "linear_attn/linear_attn.h"
#include "lowbit/lowbit.h"
#include "common/sgemm.h"
#include "norm/rms_norm.h"
#include "scan/scan.h"

#ifdef KK_WITH_CUDA
#include <cuda_runtime.h>
#endif

namespace py = pybind11;
using namespace kernkit;

namespace {

template <typename T = void>
T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

bool cuda_compiled() {
#ifdef KK_WITH_CUDA
  return true;
#else
  return false;
#endif
}

// The simt backend's entry points, handed over by kernkit._simt (attach_simt) when it is loaded.
const CudaEntryPoints* g_simt_entry = nullptr;

void attach_simt(py::capsule table) {
  if (std::string(table.name() ? table.name() : "") != kSimtCapsuleName)
    throw std::invalid_argument("attach_simt: not a kernkit._simt entry-point table");
  g_simt_entry = static_cast<const CudaEntryPoints*>(table.get_pointer());
}

#ifdef KK_WITH_CUDA
const CudaEntryPoints kNativeEntry = {
#define KK_ENTRY_INIT(name, Params) &name,
    KK_CUDA_ENTRY_POINTS(KK_ENTRY_INIT)
#undef KK_ENTRY_INIT
};
#endif

void require_cuda(int device) {
  if (device == kSimtDevice) {
    if (!g_simt_entry)
      throw std::runtime_error("kernkit's simt backend is not loaded (use kernkit.testing.simt(); it needs a build "
                               "with KERNKIT_BUILD_SIMT on)");
    return;
  }
  if (device >= 0 && !cuda_compiled())
    throw std::runtime_error("kernkit was built without CUDA kernels (no nvcc at build time, or "
                             "KERNKIT_BUILD_CUDA=0); CUDA tensors are not supported by this build");
}

// Runs a CUDA entry point: the nvcc-compiled kernel on a GPU, or its simt build on the CPU.
template <typename P>
using EntryFn = void (*)(const P&, int, intptr_t);
template <typename P>
void run_cuda(EntryFn<P> CudaEntryPoints::*fn, const P& p, int device, intptr_t stream) {
  if (device == kSimtDevice) return (g_simt_entry->*fn)(p, 0, stream);
#ifdef KK_WITH_CUDA
  (kNativeEntry.*fn)(p, device, stream);
#else
  (void)fn; (void)p; (void)stream;
  throw std::logic_error("no CUDA kernels in this build");
#endif
}

// Families whose CUDA kernels do not exist yet (the Python side rejects CUDA tensors first).
void require_cpu(int device, const char* fn) {
  if (device != kCpuDevice)
    throw std::runtime_error(std::string(fn) + ": CUDA kernels are not implemented yet (CPU only for now)");
}

// Asks the kernel to back a fresh output buffer with 2 MiB pages before anything
// touches it. A large torch.empty is a new mmap on every call (torch's CPU allocator
// does not cache), and first-touch faults on 4 KiB pages cost more than the kernels
// writing the data (64 MiB: ~17 ms of faults vs ~2 ms of writes here). A hint only:
// whole 2 MiB pages inside the buffer, errors ignored; no-op off Linux.
void advise_huge_pages(uintptr_t p, int64_t bytes) {
#if defined(__linux__) && defined(MADV_HUGEPAGE)
  constexpr uintptr_t kHuge = uintptr_t(2) << 20;
  const uintptr_t a = (p + kHuge - 1) & ~(kHuge - 1), e = (p + uintptr_t(bytes)) & ~(kHuge - 1);
  if (p && bytes > 0 && e > a) (void)madvise(reinterpret_cast<void*>(a), e - a, MADV_HUGEPAGE);
#endif
}

py::dict info() {
  py::dict d;
  d["version"] = KK_VERSION;
  d["isa_compiled"] = compiled_isas();
  d["isa_supported"] = isa_name(best_supported_isa());
  d["isa_selected"] = isa_name(active_isa());
#if KK_X86
  __builtin_cpu_init();
  d["cpu_vendor"] = __builtin_cpu_is("intel") ? "intel" : __builtin_cpu_is("amd") ? "amd" : "other";
#else
  d["cpu_vendor"] = "other";
#endif
  d["thread_backend"] = thread_backend();
  d["adaptive_threads"] = adaptive_threads();
  d["cuda_compiled"] = cuda_compiled();
#ifdef KK_WITH_CUDA
  d["cuda_archs"] = KK_CUDA_ARCHS;
  d["cuda_runtime"] = CUDART_VERSION;
#else
  d["cuda_archs"] = "";
  d["cuda_runtime"] = 0;
#endif
  return d;
}

void rms_norm_fwd(uintptr_t x, uintptr_t w, uintptr_t y, uintptr_t rstd, int64_t rows, int64_t dim,
                  double eps, int dtype, int wdtype, int threads, int device, intptr_t stream) {
  RmsNormFwdParams p{ptr(x), ptr(w), ptr(y), ptr(rstd), rows, dim, float(eps),
                     dtype_from_code(dtype, "x"), dtype_from_code(wdtype, "weight"), threads};
  require(rows >= 0 && dim >= 0, "rms_norm: negative size");
  if (rows == 0 || dim == 0) return;
  require(x && y && rstd, "rms_norm: null data pointer");
  require(!w || p.wdtype == p.dtype || (p.wdtype == DType::f32 && p.dtype != DType::f64),
          "rms_norm: weight dtype must match x or be float32");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::rms_norm_fwd_cuda, p, device, stream);
  else KK_CPU_KERNEL(rms_norm_fwd_cpu)(p);
}

void rms_norm_bwd(uintptr_t dy, uintptr_t x, uintptr_t w, uintptr_t rstd, uintptr_t dx, uintptr_t dw,
                  uintptr_t dw_partial, int64_t rows, int64_t dim, int dtype, int wdtype, int threads,
                  int device, intptr_t stream) {
  RmsNormBwdParams p{ptr(dy), ptr(x), ptr(w), ptr(rstd), ptr(dx), ptr(dw), ptr(dw_partial), rows, dim,
                     dtype_from_code(dtype, "x"), dtype_from_code(wdtype, "weight"), threads};
  require(rows >= 0 && dim >= 0, "rms_norm_backward: negative size");
  if (rows == 0 || dim == 0) return;
  require(dy && x && rstd && dx, "rms_norm_backward: null data pointer");
  require(!dw || (w && dw_partial), "rms_norm_backward: dw needs weight and workspace");
  require(!w || p.wdtype == p.dtype || (p.wdtype == DType::f32 && p.dtype != DType::f64),
          "rms_norm_backward: weight dtype must match x or be float32");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::rms_norm_bwd_cuda, p, device, stream);
  else KK_CPU_KERNEL(rms_norm_bwd_cpu)(p);
}

using Strides = std::array<int64_t, 3>;  // (batch, row, head) in elements

AttnTensor attn_tensor(uintptr_t p, const Strides& st) { return AttnTensor{ptr(p), st[0], st[1], st[2]}; }

// dims = (B, Hq, Hkv, D, Dv, Sq, Sk, diag_shift)
AttnShape attn_shape(const std::array<int, 8>& dims, uintptr_t cu_q, uintptr_t cu_k, uintptr_t seqused_k,
                     const std::array<int64_t, 2>& stat_strides) {
  AttnShape s{dims[0], dims[1], dims[2], dims[3], dims[4], dims[5], dims[6], ptr<const int32_t>(cu_q),
              ptr<const int32_t>(cu_k), ptr<const int32_t>(seqused_k), stat_strides[0], stat_strides[1], dims[7]};
  require(s.B >= 0 && s.Sq >= 0 && s.Sk >= 0, "flash_attn: negative size");
  require(s.Hq > 0 && s.Hkv > 0 && s.Hq % s.Hkv == 0, "flash_attn: Hq must be a positive multiple of Hkv");
  require(s.D >= 1 && s.D <= 512 && s.Dv >= 1 && s.Dv <= 512, "flash_attn: head dims must be in [1, 512]");
  require((s.cu_q == nullptr) == (s.cu_k == nullptr), "flash_attn: cu_seqlens_q and cu_seqlens_k go together");
  return s;
}

AttnMask attn_mask(double scale, double softcap, int left, int right, int sinks, int activation, uintptr_t bias,
                   double bias_value, bool bias_default) {
  require(left >= -1 && right >= -1 && sinks >= 0, "flash_attn: window bounds must be >= -1 and sinks >= 0");
  require(activation == 0 || activation == 1, "flash_attn: activation code must be 0 (softmax) or 1 (sigmoid)");
  require(softcap >= 0, "flash_attn: softcap must be >= 0");
  return AttnMask{float(scale), float(softcap), left, right, sinks, AttnActivation(activation),
                  ptr<const float>(bias), float(bias_value), bias_default};
}

// flash_attn_with_kvcache's lean decode call (CPU, B = len(starts) <= 16; the caller has checked
// shapes, dtypes, that rows [starts[b], starts[b] + n_new) lie inside the caches and every rotary
// position inside the tables) in one native step: the new keys (rotated when cos/sin are given) and
// values go into the caches, q is rotated into a scratch copy, then attention over starts[b] + n_new keys.
// Strides are the tensors' own four (elements; the last must be 1). dims = (Sq, Hq, Hkv, D, Dv, cap, n_new).
using Strides4 = std::array<int64_t, 4>;
void kvcache_decode(uintptr_t q, Strides4 qs4, uintptr_t kc, Strides4 kcs4, uintptr_t vc, Strides4 vcs4, uintptr_t k,
                    Strides4 ks4, uintptr_t v, Strides4 vs4, uintptr_t out, Strides4 os4,
                    const std::vector<int64_t>& starts, std::array<int, 7> dims, bool causal, uintptr_t cos,
                    uintptr_t sin, int rd, bool interleaved, int dtype, int threads) {
  const int B = int(starts.size()), Sq = dims[0], Hq = dims[1], Hkv = dims[2], D = dims[3], Dv = dims[4],
            cap = dims[5], n_new = dims[6];
  require(B >= 1 && B <= 16 && Sq >= 1 && n_new >= 0, "flash_attn_with_kvcache: bad decode geometry");
  for (const Strides4* s : {&qs4, &kcs4, &vcs4, &ks4, &vs4, &os4})
    require((*s)[3] == 1, "flash_attn_with_kvcache: the native decode step needs unit last strides");
  const DType dt = dtype_from_code(dtype, "q");
  require(dt != DType::f64, "flash_attn_with_kvcache: the native decode step takes fp32/bf16/fp16");
  const int64_t elem = dt == DType::f32 ? 4 : 2;
  std::array<int32_t, 16> st{}, used{};
  for (int b = 0; b < B; ++b) {
    require(starts[b] >= 0 && starts[b] + n_new <= cap, "flash_attn_with_kvcache: cache_seqlens out of range");
    st[b] = int32_t(starts[b]);
  }
  auto three = [](const Strides4& s) { return Strides{s[0], s[1], s[2]}; };
  const Strides qs = three(qs4), kcs = three(kcs4), vcs = three(vcs4), ks = three(ks4), vs = three(vs4),
                os = three(os4);
  std::vector<char> qrot;
  Strides qst = qs;
  py::gil_scoped_release nogil;
  auto rotate = [&](uintptr_t x, const Strides& xs, void* o, const Strides& ostr, bool at_starts, bool same_pos, int S,
                    int H) {
    rotary_cpu(RotaryParams{ptr<const void>(x), {xs[0], xs[1], xs[2]}, o, {ostr[0], ostr[1], ostr[2]}, st.data(),
                            at_starts, same_pos, ptr<const float>(cos), ptr<const float>(sin), B, S, H, D, rd,
                            interleaved, dt});
  };
  auto append = [&](uintptr_t dst, const Strides& ds, uintptr_t src, const Strides& ss, int b, int d) {
    for (int i = 0; i < n_new; ++i)
      for (int h = 0; h < Hkv; ++h)
        std::memcpy(ptr<char>(dst) + elem * (b * ds[0] + (st[b] + i) * ds[1] + h * ds[2]),
                    ptr<const char>(src) + elem * (b * ss[0] + i * ss[1] + h * ss[2]), size_t(elem * d));
  };
  if (n_new && cos) rotate(k, ks, ptr<void>(kc), kcs, true, false, n_new, Hkv);  // keys rotated into the cache
  for (int b = 0; b < B; ++b) {
    if (n_new && !cos) append(kc, kcs, k, ks, b, D);
    if (n_new) append(vc, vcs, v, vs, b, Dv);
    used[b] = st[b] + n_new;
  }
  if (cos) {  // q at cache_seqlens + i if causal, else all at cache_seqlens (flash-attn's rule)
    qrot.resize(size_t(B) * Sq * Hq * D * elem);
    qst = {int64_t(Sq) * Hq * D, int64_t(Hq) * D, D};
    rotate(q, qs, qrot.data(), qst, false, !causal, Sq, Hq);
    q = reinterpret_cast<uintptr_t>(qrot.data());
  }
  AttnFwdParams p{attn_shape({B, Hq, Hkv, D, Dv, Sq, cap, 0}, 0, 0, reinterpret_cast<uintptr_t>(used.data()),
                             {int64_t(Hq) * Sq, Sq}),
                  attn_mask(std::pow(double(D), -0.5), 0.0, -1, causal ? 0 : -1, 0, 0, 0, 0.0, false),  // = D ** -0.5
                  attn_tensor(q, qst), attn_tensor(kc, kcs), attn_tensor(vc, vcs), attn_tensor(out, os), nullptr, dt,
                  threads};
  KK_CPU_KERNEL(attention_fwd_cpu)(p);
}

void attention_fwd(uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t o,
                   Strides os, uintptr_t lse, std::array<int64_t, 2> stat_strides, std::array<int, 8> dims,
                   uintptr_t cu_q, uintptr_t cu_k, uintptr_t seqused_k, double scale, double softcap, int left,
                   int right, int sinks, int activation, uintptr_t bias, double bias_value, bool bias_default,
                   int dtype, int threads, int device, intptr_t stream) {
  AttnFwdParams p{attn_shape(dims, cu_q, cu_k, seqused_k, stat_strides),
                  attn_mask(scale, softcap, left, right, sinks, activation, bias, bias_value, bias_default),
                  attn_tensor(q, qs), attn_tensor(k, ks), attn_tensor(v, vs), attn_tensor(o, os),
                  ptr<float>(lse), dtype_from_code(dtype, "q"), threads};
  if (p.shape.B == 0) return;
  require(q && k && v && o, "flash_attn: null data pointer");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.dtype != DType::f64, "flash_attn: float64 runs on the CPU only (the CUDA kernels take fp32/bf16/fp16)");
    require(p.shape.D <= 256 && p.shape.Dv <= 256, "flash_attn: the CUDA kernels take head dims up to 256");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::attention_fwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  if (p.dtype == DType::f64) attention_fwd_f64(p);
  else KK_CPU_KERNEL(attention_fwd_cpu)(p);
}

void attention_bwd(uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t dout,
                   Strides dos, uintptr_t dq, Strides dqs, uintptr_t dk, Strides dks, uintptr_t dv, Strides dvs,
                   uintptr_t lse, uintptr_t delta, std::array<int64_t, 2> stat_strides, std::array<int, 8> dims,
                   uintptr_t cu_q, uintptr_t cu_k, uintptr_t seqused_k, double scale, double softcap, int left,
                   int right, int sinks, int activation, uintptr_t bias, double bias_value, bool bias_default,
                   uintptr_t dbias, int dtype, int threads, int device, intptr_t stream, uintptr_t work) {
  AttnBwdParams p{attn_shape(dims, cu_q, cu_k, seqused_k, stat_strides),
                  attn_mask(scale, softcap, left, right, sinks, activation, bias, bias_value, bias_default),
                  attn_tensor(q, qs), attn_tensor(k, ks), attn_tensor(v, vs), attn_tensor(dout, dos),
                  attn_tensor(dq, dqs), attn_tensor(dk, dks), attn_tensor(dv, dvs), ptr<const float>(lse),
                  ptr<const float>(delta), ptr<float>(dbias), dtype_from_code(dtype, "q"), threads};
  if (p.shape.B == 0) return;
  require(q && k && v && dout && dq && dk && dv, "flash_attn_backward: null data pointer");
  require(p.mask.activation == AttnActivation::sigmoid || (lse && delta),
          "flash_attn_backward: softmax needs lse and delta");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.dtype != DType::f64, "flash_attn: float64 runs on the CPU only (the CUDA kernels take fp32/bf16/fp16)");
    require(p.shape.D <= 256 && p.shape.Dv <= 256, "flash_attn: the CUDA kernels take head dims up to 256");
    require(!dbias || work, "flash_attn_backward: the CUDA kernels need a zeroed work buffer for the bias gradient "
                            "(attention_bwd_work_floats)");
    p.work = ptr<float>(work);
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::attention_bwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  if (p.dtype == DType::f64) attention_bwd_f64(p);
  else KK_CPU_KERNEL(attention_bwd_cpu)(p);
}

ScanOperand scan_operand(uintptr_t p, const Strides& st) {
  require(st[2] == 0 || st[2] == 1, "linear_scan: channel stride must be 0 or 1");
  return ScanOperand{ptr(p), st[0], st[1], st[2]};
}

void linear_scan(uintptr_t a, Strides as, uintptr_t b, Strides bs, uintptr_t h, uintptr_t h0, int64_t B, int64_t T,
                 int64_t C, bool reverse, int dtype, int64_t chunk, uintptr_t carry, int threads, int device,
                 intptr_t stream) {
  LinearScanParams p{scan_operand(a, as), scan_operand(b, bs), ptr(h), ptr(h0), B, T, C, reverse,
                     dtype_from_code(dtype, "a"), threads, chunk, ptr(carry)};
  require(B >= 0 && T >= 0 && C >= 0, "linear_scan: negative size");
  require(chunk == 0 || (chunk > 0 && carry), "linear_scan: a chunked scan needs its carry workspace");
  if (B == 0 || T == 0 || C == 0) return;
  require(a && b && h, "linear_scan: null data pointer");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::linear_scan_cuda, p, device, stream);
  else KK_CPU_KERNEL(linear_scan_cpu)(p);
}

CausalConvParams conv_params(uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t init, uintptr_t seq_idx, uintptr_t y,
                             uintptr_t final_state, int64_t B, int64_t D, int64_t L, int64_t W, bool silu, int dtype,
                             int wdtype, int threads) {
  require(B >= 0 && D >= 0 && L >= 0 && W >= 1 && W <= 64, "causal_conv1d: sizes out of range (1 <= W <= 64)");
  const DType xt = dtype_from_code(dtype, "x"), wt = dtype_from_code(wdtype, "weight");
  require(wt == xt || (wt == DType::f32 && (xt == DType::f16 || xt == DType::bf16)),
          "causal_conv1d: weight dtype must match x or be float32 for 16-bit x");
  require(!seq_idx || (!init && !final_state), "causal_conv1d: seq_idx excludes initial/final states");
  return CausalConvParams{ptr(x), ptr(w), ptr(bias), ptr(init), ptr(y), ptr(final_state), B, D, L, W, silu,
                          xt, threads, wt, ptr<const int32_t>(seq_idx)};
}

void causal_conv1d_fwd(uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t init, uintptr_t seq_idx, uintptr_t y,
                       uintptr_t final_state, int64_t B, int64_t D, int64_t L, int64_t W, bool silu, int dtype,
                       int wdtype, int threads, int device, intptr_t stream) {
  const CausalConvParams p = conv_params(x, w, bias, init, seq_idx, y, final_state, B, D, L, W, silu, dtype, wdtype,
                                         threads);
  if (B == 0 || D == 0) return;
  require(x && w && y, "causal_conv1d: null data pointer");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::causal_conv1d_fwd_cuda, p, device, stream);
  else if (p.dtype == DType::f64) causal_conv1d_fwd_exact(p);
  else KK_CPU_KERNEL(causal_conv1d_fwd_cpu)(p);
}

// Decode update: state (B, D, S) is read as the inputs before x and overwritten in place with the
// last S inputs of [state | x].
void causal_conv1d_update(uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t state, uintptr_t y, int64_t B,
                          int64_t D, int64_t L, int64_t W, int64_t S, bool silu, int dtype, int wdtype, int threads,
                          int device, intptr_t stream) {
  CausalConvParams p = conv_params(x, w, bias, state, 0, y, state, B, D, L, W, silu, dtype, wdtype, threads);
  require(S >= W - 1, "causal_conv1d_update: the state must hold at least width - 1 inputs");
  p.state_len = S;
  if (B == 0 || D == 0) return;
  require(x && w && y && (state || S == 0), "causal_conv1d_update: null data pointer");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::causal_conv1d_update_cuda, p, device, stream);
  else if (p.dtype == DType::f64) causal_conv1d_fwd_exact(p);
  else KK_CPU_KERNEL(causal_conv1d_fwd_cpu)(p);
}

void causal_conv1d_bwd(uintptr_t x, uintptr_t w, uintptr_t bias, uintptr_t init, uintptr_t seq_idx, uintptr_t dy,
                       uintptr_t dfinal, uintptr_t dx, uintptr_t dw, uintptr_t dbias, uintptr_t dinit, int64_t B,
                       int64_t D, int64_t L, int64_t W, bool silu, int dtype, int wdtype, int threads, int device,
                       intptr_t stream) {
  const CausalConvBwdParams p{conv_params(x, w, bias, init, seq_idx, 0, 0, B, D, L, W, silu, dtype, wdtype, threads),
                              ptr(dy), ptr(dfinal), ptr(dx), ptr(dw), ptr(dbias), ptr(dinit)};
  if (D == 0) return;
  require(w && dw && (B == 0 || (x && dy && dx)), "causal_conv1d_backward: null data pointer");
  require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) run_cuda(&CudaEntryPoints::causal_conv1d_bwd_cuda, p, device, stream);
  else if (p.fwd.dtype == DType::f64) causal_conv1d_bwd_exact(p);
  else KK_CPU_KERNEL(causal_conv1d_bwd_cpu)(p);
}

SelectiveScanParams ss_params(uintptr_t u, uintptr_t delta, uintptr_t z, uintptr_t Bm, uintptr_t Cm, bool b_var,
                              bool c_var, int64_t G, uintptr_t A, uintptr_t Dskip, uintptr_t delta_bias, bool softplus,
                              uintptr_t h0, uintptr_t out, uintptr_t last, int64_t Bsz, int64_t D, int64_t N,
                              int64_t L, int dtype, int threads) {
  require(Bsz >= 0 && D >= 0 && L >= 0 && N >= 1 && N <= 256, "selective_scan: sizes out of range (1 <= N <= 256)");
  require(G >= 1 && D % G == 0, "selective_scan: channels must be a multiple of the B/C groups");
  return SelectiveScanParams{ptr(u), ptr(delta), ptr(z), ptr(Bm), ptr(Cm), b_var, c_var, G, ptr(A), ptr(Dskip),
                             ptr(delta_bias), softplus, ptr(h0), ptr(out), ptr(last), Bsz, D, N, L,
                             dtype_from_code(dtype, "u"), threads};
}

void selective_scan_fwd(uintptr_t u, uintptr_t delta, uintptr_t z, uintptr_t Bm, uintptr_t Cm, bool b_var, bool c_var,
                        int64_t G, uintptr_t A, uintptr_t Dskip, uintptr_t delta_bias, bool softplus, uintptr_t h0,
                        uintptr_t out, uintptr_t last, int64_t Bsz, int64_t D, int64_t N, int64_t L, int dtype,
                        int threads, int device, intptr_t stream) {
  const SelectiveScanParams p = ss_params(u, delta, z, Bm, Cm, b_var, c_var, G, A, Dskip, delta_bias, softplus, h0,
                                          out, last, Bsz, D, N, L, dtype, threads);
  if (Bsz == 0 || D == 0) return;
  require(A && (L == 0 || (u && delta && Bm && Cm && out)), "selective_scan: null data pointer");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.dtype != DType::f64, "selective_scan: float64 runs on the CPU only (the CUDA kernels take fp32/bf16/fp16)");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::selective_scan_fwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(selective_scan_fwd_cpu)(p);
}

void selective_scan_bwd(uintptr_t u, uintptr_t delta, uintptr_t z, uintptr_t Bm, uintptr_t Cm, bool b_var, bool c_var,
                        int64_t G, uintptr_t A, uintptr_t Dskip, uintptr_t delta_bias, bool softplus, uintptr_t h0,
                        uintptr_t dout, uintptr_t dlast, uintptr_t du, uintptr_t ddelta, uintptr_t dz, uintptr_t dA,
                        uintptr_t dB, uintptr_t dC, uintptr_t dD, uintptr_t ddelta_bias, uintptr_t dh0, int64_t Bsz,
                        int64_t D, int64_t N, int64_t L, int dtype, int threads, int device, intptr_t stream,
                        uintptr_t work) {
  const SelectiveScanBwdParams p{ss_params(u, delta, z, Bm, Cm, b_var, c_var, G, A, Dskip, delta_bias, softplus, h0,
                                           0, 0, Bsz, D, N, L, dtype, threads),
                                 ptr(dout), ptr(dlast), ptr(du), ptr(ddelta), ptr(dz), ptr(dA), ptr(dB), ptr(dC),
                                 ptr(dD), ptr(ddelta_bias), ptr(dh0), ptr<float>(work)};
  if (D == 0) return;
  require(A && dA, "selective_scan_backward: null data pointer");
  require(Bsz == 0 || L == 0 || (u && delta && Bm && Cm && dB && dC && dout && du && ddelta),
          "selective_scan_backward: null data pointer");
  require(!z || dz, "selective_scan_backward: dz needed with z");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.fwd.dtype != DType::f64, "selective_scan: float64 runs on the CPU only (the CUDA kernels take fp32/bf16/fp16)");
    require(work, "selective_scan_backward: the CUDA kernels need their scratch buffer (selective_scan_work_floats)");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::selective_scan_bwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(selective_scan_bwd_cpu)(p);
}

LowbitParams lowbit_params(uintptr_t x, int64_t x_rs, uintptr_t packed, uintptr_t scale, bool per_row,
                           uintptr_t bias, uintptr_t y, int64_t M, int64_t N, int64_t K, int64_t Kp, int act_bits,
                           bool binarize, int dtype, int threads, int64_t block, uintptr_t work) {
  require(M >= 0 && N >= 0 && K >= 1 && Kp >= K && Kp % block == 0 && Kp - K < block,
          "low-bit linear: inconsistent sizes");
  return LowbitParams{ptr(x), x_rs, ptr<const uint8_t>(packed), ptr<const float>(scale), per_row,
                      ptr<const float>(bias), ptr(y), M, N, K, Kp, act_bits, binarize,
                      dtype_from_code(dtype, "x"), threads, ptr(work)};
}

// The CUDA kernels' int32 tensor-core sums hold |x_q . w| <= 128 K exactly up to K = 2^24.
void require_cuda_lowbit(int device, int64_t Kp, uintptr_t work, const char* fn) {
  require_cuda(device);
  require(Kp <= (int64_t(1) << 24), std::string(fn) + ": in_features above 2^24 are not supported by the CUDA kernels");
  require(work, std::string(fn) + ": the CUDA kernels need their scratch buffer (lowbit_work_bytes)");
}

void ternary_linear(uintptr_t x, int64_t x_rs, uintptr_t packed, uintptr_t scale, bool per_row, uintptr_t bias,
                    uintptr_t y, int64_t M, int64_t N, int64_t K, int64_t Kp, int act_bits, int dtype, int threads,
                    int device, intptr_t stream, uintptr_t work) {
  const LowbitParams p = lowbit_params(x, x_rs, packed, scale, per_row, bias, y, M, N, K, Kp, act_bits, false, dtype,
                                       threads, kTernaryBlock, work);
  require(act_bits == 8 || act_bits == 0, "ternary_linear: act_bits must be 8 or None");
  if (M == 0 || N == 0) return;
  require(x && packed && scale && y, "ternary_linear: null data pointer");
  if (device != kCpuDevice) {
    require_cuda_lowbit(device, Kp, work, "ternary_linear");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::ternary_linear_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(ternary_linear_cpu)(p);
}

// tq1.6 weights (N, Kp / 320, 64), int8 activations; CPU only (the Python layer converts to the
// 2-bit format for CUDA tensors and float activations).
void ternary16_linear(uintptr_t x, int64_t x_rs, uintptr_t packed, uintptr_t scale, bool per_row, uintptr_t bias,
                      uintptr_t y, int64_t M, int64_t N, int64_t K, int64_t Kp, int dtype, int threads) {
  const LowbitParams p = lowbit_params(x, x_rs, packed, scale, per_row, bias, y, M, N, K, Kp, 8, false, dtype,
                                       threads, kTernary16Block, 0);
  if (M == 0 || N == 0) return;
  require(x && packed && scale && y, "ternary_linear: null data pointer");
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(ternary16_linear_cpu)(p);
}

void binary_linear(uintptr_t x, int64_t x_rs, uintptr_t packed, uintptr_t alpha, uintptr_t bias, uintptr_t y,
                   int64_t M, int64_t N, int64_t K, int64_t Kp, bool binarize, int dtype, int threads, int device,
                   intptr_t stream, uintptr_t work) {
  const LowbitParams p = lowbit_params(x, x_rs, packed, alpha, true, bias, y, M, N, K, Kp, 0, binarize, dtype,
                                       threads, kBinaryBlock, work);
  if (M == 0 || N == 0) return;
  require(x && packed && alpha && y, "binary_linear: null data pointer");
  if (device != kCpuDevice) {
    require_cuda_lowbit(device, Kp, work, "binary_linear");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::binary_linear_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(binary_linear_cpu)(p);
}

// CUDA: work holds N doubles (row sums) and then one int (the NaN/inf flag); the flag is read back
// (a synchronisation: the caller needs the answer).
bool ternary_quantize(uintptr_t w, int64_t w_rs, uintptr_t packed, uintptr_t scale, bool per_row, int64_t N,
                      int64_t K, int64_t Kp, int dtype, int threads, int device, intptr_t stream, uintptr_t work) {
  // (any row stride: an expanded w with stride 0 just reads one row again)
  require(N >= 1 && K >= 1 && Kp >= K && Kp % kTernaryBlock == 0 && Kp - K < kTernaryBlock && w_rs >= 0,
          "ternary_quantize: inconsistent sizes");
  require(w && packed && scale, "ternary_quantize: null data pointer");
  TernaryQuantParams p{ptr(w), w_rs, ptr<uint8_t>(packed), ptr<float>(scale), per_row, N, K, Kp,
                       dtype_from_code(dtype, "w"), threads, nullptr, nullptr};
  if (device == kCpuDevice) {
    py::gil_scoped_release nogil;
    return KK_CPU_KERNEL(ternary_quantize_cpu)(p);
  }
  require_cuda(device);
  require(work, "ternary_quantize: the CUDA kernels need their scratch buffer");
  p.row_sums = ptr<double>(work);
  p.nonfinite = reinterpret_cast<int*>(p.row_sums + N);
  int bad = 0;
  {
    py::gil_scoped_release nogil;
    run_cuda(&CudaEntryPoints::ternary_quantize_cuda, p, device, stream);
    if (device == kSimtDevice) {
      bad = *p.nonfinite;
    } else {
#ifdef KK_WITH_CUDA
      auto s = reinterpret_cast<cudaStream_t>(stream);
      require(cudaMemcpyAsync(&bad, p.nonfinite, sizeof(int), cudaMemcpyDeviceToHost, s) == cudaSuccess &&
                  cudaStreamSynchronize(s) == cudaSuccess,
              "ternary_quantize: reading the NaN/inf flag back failed");
#endif
    }
  }
  return bad == 0;
}

void ternary_dequant(uintptr_t packed, uintptr_t scale, bool per_row, uintptr_t out, int64_t N, int64_t K,
                     int64_t Kp, int threads, int device, intptr_t stream) {
  require(N >= 0 && K >= 1 && Kp >= K && Kp % kTernaryBlock == 0 && Kp - K < kTernaryBlock,
          "ternary_dequant: inconsistent sizes");
  if (N == 0) return;
  require(packed && scale && out, "ternary_dequant: null data pointer");
  const TernaryDequantParams p{ptr<const uint8_t>(packed), ptr<const float>(scale), per_row, ptr<float>(out), N, K, Kp,
                               threads};
  if (device != kCpuDevice) require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) return run_cuda(&CudaEntryPoints::ternary_dequant_cuda, p, device, stream);
  KK_CPU_KERNEL(ternary_dequant_cpu)(p);
}

void act_quant_dequant(uintptr_t x, int64_t x_rs, uintptr_t out, int64_t M, int64_t K, int dtype, int threads,
                       int device, intptr_t stream) {
  require(M >= 0 && K >= 1 && x_rs >= 0, "act_quant_dequant: inconsistent sizes");
  if (M == 0) return;
  require(x && out, "act_quant_dequant: null data pointer");
  const ActDequantParams p{ptr(x), x_rs, ptr<float>(out), M, K, dtype_from_code(dtype, "x"), threads};
  if (device != kCpuDevice) require_cuda(device);
  py::gil_scoped_release nogil;
  if (device != kCpuDevice) return run_cuda(&CudaEntryPoints::act_quant_dequant_cuda, p, device, stream);
  KK_CPU_KERNEL(act_quant_dequant_cpu)(p);
}

void sgemm(uintptr_t A, int64_t a_rs, int64_t a_cs, uintptr_t B, int64_t b_rs, int64_t b_cs, uintptr_t C, int64_t ldc,
           int64_t M, int64_t N, int64_t K, int threads, int device) {
  require(M >= 0 && N >= 0 && K >= 0 && ldc >= N, "mm: inconsistent sizes");
  if (M == 0 || N == 0) return;
  require(C && (K == 0 || (A && B)), "mm: null data pointer");
  require_cpu(device, "mm");
  const SgemmParams p{ptr<const float>(A), a_rs, a_cs, ptr<const float>(B), b_rs, b_cs, ptr<float>(C), ldc, M, N, K,
                      threads};
  py::gil_scoped_release nogil;
  KK_CPU_KERNEL(sgemm_cpu)(p);
}

// ----------------------------------------------------------------------------- linear attention

LaParams la_params(uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t o, int gate,
                   uintptr_t g, Strides gs, uintptr_t h0, uintptr_t ht, uintptr_t cu, std::array<int, 5> dims,
                   double scale, int chunk, int dtype, int threads) {
  LaParams p{LaTensor{ptr(q), qs[0], qs[1], qs[2]}, LaTensor{ptr(k), ks[0], ks[1], ks[2]},
             LaTensor{ptr(v), vs[0], vs[1], vs[2]}, ptr(o), LaGate(gate), ptr(g), gs[0], gs[1], gs[2], ptr(h0),
             ptr(ht), ptr<const int32_t>(cu), dims[0], dims[1], dims[2], dims[3], dims[4], scale, chunk,
             dtype_from_code(dtype, "q"), threads};
  require(gate >= 0 && gate <= 2, "linear_attn: gate code must be 0, 1 or 2");
  require(p.N >= 0 && p.T >= 0 && p.H >= 1 && p.K >= 1 && p.V >= 1 && p.K <= 256 && p.V <= 256,
          "linear_attn: bad sizes (K and V must be in [1, 256])");
  require(chunk >= 16 && chunk <= 128 && chunk % 16 == 0, "linear_attn: chunk_size must be 16, 32, 48, ..., 128");
  require(gate == 0 || g || p.T == 0, "linear_attn: gate pointer missing");
  return p;
}

void linear_attn_fwd(uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, uintptr_t o,
                     int gate, uintptr_t g, Strides gs, uintptr_t h0, uintptr_t ht, uintptr_t cu,
                     std::array<int, 5> dims, double scale, int chunk, uintptr_t states, uintptr_t chunk_off,
                     uintptr_t chunk_seq, std::array<int, 2> chunk_counts, int dtype, int threads, int device,
                     intptr_t stream) {
  LaParams p = la_params(q, qs, k, ks, v, vs, o, gate, g, gs, h0, ht, cu, dims, scale, chunk, dtype, threads);
  p.states = ptr<float>(states);
  p.chunk_off = ptr<const int32_t>(chunk_off);
  p.chunk_seq = ptr<const int32_t>(chunk_seq);
  p.max_chunks = chunk_counts[0];
  p.total_chunks = chunk_counts[1];
  if (p.N == 0) return;
  require(q && k && v && o, "linear_attn: null data pointer");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.dtype != DType::f64, "linear_attn: float64 runs on the CPU only");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::linear_attn_fwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  if (p.dtype == DType::f64) linear_attn_fwd_f64(p);
  else KK_CPU_KERNEL(linear_attn_fwd_cpu)(p);
}

void linear_attn_bwd(uintptr_t q, Strides qs, uintptr_t k, Strides ks, uintptr_t v, Strides vs, int gate,
                     uintptr_t g, Strides gs, uintptr_t h0, uintptr_t cu, std::array<int, 5> dims, double scale,
                     int chunk, uintptr_t states, uintptr_t dstates, uintptr_t chunk_off, uintptr_t chunk_seq,
                     std::array<int, 2> chunk_counts, uintptr_t dout, uintptr_t dht, uintptr_t dq, uintptr_t dk, uintptr_t dv, uintptr_t dg,
                     uintptr_t dh0, int dtype, int threads, int device, intptr_t stream) {
  LaBwdParams p{la_params(q, qs, k, ks, v, vs, 0, gate, g, gs, h0, 0, cu, dims, scale, chunk, dtype, threads),
                ptr(dout), ptr(dht), ptr(dq), ptr(dk), ptr(dv), ptr(dg), ptr(dh0), ptr<float>(dstates)};
  p.fwd.states = ptr<float>(states);
  p.fwd.chunk_off = ptr<const int32_t>(chunk_off);
  p.fwd.chunk_seq = ptr<const int32_t>(chunk_seq);
  p.fwd.max_chunks = chunk_counts[0];
  p.fwd.total_chunks = chunk_counts[1];
  if (p.fwd.N == 0) return;
  require(q && k && v && dout && dq && dk && dv, "linear_attn_backward: null data pointer");
  require(!dg || gate != 0, "linear_attn_backward: a gate gradient needs a gate");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.fwd.dtype != DType::f64, "linear_attn: float64 runs on the CPU only");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::linear_attn_bwd_cuda, p, device, stream);
  }
  py::gil_scoped_release nogil;
  if (p.fwd.dtype == DType::f64) linear_attn_bwd_f64(p);
  else KK_CPU_KERNEL(linear_attn_bwd_cpu)(p);
}

// The decode step's gate is tiny ((H,), (B, H) or (B, H, K)): checking g <= 0 here, before any
// state is touched (in place too), costs far less than a torch reduction in Python per token.
template <typename T>
void check_step_gate(const LaStepParams& p) {
  const T* g = static_cast<const T*>(p.g);
  const int per = p.gate == LaGate::vector ? p.K : 1;
  for (int b = 0; b < p.B; ++b)
    for (int h = 0; h < p.H; ++h)
      for (int i = 0; i < per; ++i) {
        const T x = g[b * p.gbs + h * p.ghs + i];
        if (!(x <= T(0)))
          throw std::invalid_argument("linear_attn_step: g is a log-space decay and must be <= 0 everywhere (got " +
                                      std::string(x != x ? "NaN" : std::to_string(double(x))) + ")");
      }
}

void linear_attn_step(uintptr_t q, uintptr_t k, uintptr_t v, int gate, uintptr_t g, int64_t gbs, int64_t ghs,
                      uintptr_t state, uintptr_t o, uintptr_t new_state, std::array<int, 4> dims, double scale,
                      int dtype, int threads, int device, intptr_t stream) {
  LaStepParams p{ptr(q), ptr(k), ptr(v), LaGate(gate), ptr(g), gbs, ghs, ptr(state), ptr(o), ptr(new_state),
                 dims[0], dims[1], dims[2], dims[3], scale, dtype_from_code(dtype, "q"), threads};
  require(gate >= 0 && gate <= 2 && (gate == 0 || g), "linear_attn_step: bad gate");
  require(p.B >= 0 && p.H >= 1 && p.K >= 1 && p.V >= 1, "linear_attn_step: bad sizes");
  if (p.B == 0) return;
  require(q && k && v && state && o && new_state, "linear_attn_step: null data pointer");
  if (device != kCpuDevice) {
    require_cuda(device);
    require(p.dtype != DType::f64, "linear_attn_step: float64 runs on the CPU only");
    require(p.K <= 256, "linear_attn_step: K must be <= 256");
    py::gil_scoped_release nogil;
    return run_cuda(&CudaEntryPoints::linear_attn_step_cuda, p, device, stream);
  }
  if (p.gate != LaGate::none) {
    if (p.dtype == DType::f64) check_step_gate<double>(p);
    else check_step_gate<float>(p);
  }
  py::gil_scoped_release nogil;
  if (p.dtype == DType::f64) linear_attn_step_f64(p);
  else KK_CPU_KERNEL(linear_attn_step_cpu)(p);
}

}  // namespace


PYBIND11_MODULE(_C, m) {
  m.doc() = "kernkit native kernels (raw-pointer interface; use the kernkit package, not this module)";
  m.attr("__version__") = KK_VERSION;
  m.def("info", &info);
  m.def("set_thread_backend", [](const std::string& name) {
    if (!set_thread_backend(name.c_str()))
      throw py::value_error("set_thread_backend: unknown or unavailable backend '" + name + "' (kernkit, gomp)");
  }, py::arg("name"));
  m.def("set_adaptive_threads", &set_adaptive_threads, py::arg("on"));
  m.def("machine_contended", &machine_contended);
  m.def("set_cpu_isa", [](const std::string& name) { set_active_isa(name); }, py::arg("name"));
  m.def("cpu_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("rms_norm_dw_blocks", &rms_norm_dw_blocks, py::arg("rows"));
  m.def("rms_norm_fwd", &rms_norm_fwd);
  m.def("rms_norm_bwd", &rms_norm_bwd);
  m.def("attention_fwd", &attention_fwd);
  m.def("attention_bwd", &attention_bwd);
  m.def("attention_bwd_work_floats", &attn_cuda_bwd_work_floats);
  m.def("linear_scan", &linear_scan);
  m.def("causal_conv1d_fwd", &causal_conv1d_fwd);
  m.def("causal_conv1d_bwd", &causal_conv1d_bwd);
  m.def("causal_conv1d_update", &causal_conv1d_update);
  m.def("selective_scan_fwd", &selective_scan_fwd);
  m.def("selective_scan_bwd", &selective_scan_bwd);
  m.def("linear_attn_fwd", &linear_attn_fwd);
  m.def("linear_attn_bwd", &linear_attn_bwd);
  m.def("linear_attn_step", &linear_attn_step);
  m.def("ternary_linear", &ternary_linear);
  m.def("ternary16_linear", &ternary16_linear);
  m.def("binary_linear", &binary_linear);
  m.def("ternary_quantize", &ternary_quantize);
  m.def("ternary_dequant", &ternary_dequant);
  m.def("act_quant_dequant", &act_quant_dequant);
  m.def("lowbit_work_bytes", &lowbit_work_bytes);
  m.def("selective_scan_work_floats", &ss_cuda_work_floats);
  m.def("kvcache_decode", &kvcache_decode);
  m.def("sgemm", &sgemm);
  m.def("advise_huge_pages", &advise_huge_pages);
  m.def("attach_simt", &attach_simt, py::arg("table"));
}
