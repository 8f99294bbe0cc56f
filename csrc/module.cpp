// kernkit._C: thin pybind11 functions over raw pointers. No torch headers: the
// Python side allocates and validates tensors, then passes data_ptr()s, sizes,
// dtype codes, a thread count and (for CUDA) the device and stream.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/check.h"
#include "common/cpu_isa.h"
#include "common/parallel.h"
#include "norm/rms_norm.h"

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

void require_cuda(int device) {
  if (device >= 0 && !cuda_compiled())
    throw std::runtime_error("kernkit was built without CUDA kernels (no nvcc at build time, or "
                             "KERNKIT_BUILD_CUDA=0); CUDA tensors are not supported by this build");
}

py::dict info() {
  py::dict d;
  d["version"] = KK_VERSION;
  d["isa_compiled"] = compiled_isas();
  d["isa_supported"] = isa_name(best_supported_isa());
  d["isa_selected"] = isa_name(active_isa());
  d["thread_backend"] = thread_backend();
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
  if (device >= 0) rms_norm_fwd_cuda(p, device, stream);
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
  if (device >= 0) rms_norm_bwd_cuda(p, device, stream);
  else KK_CPU_KERNEL(rms_norm_bwd_cpu)(p);
}

}  // namespace

#ifndef KK_WITH_CUDA
// CPU-only builds: the CUDA entry points exist but can never be reached
// (require_cuda throws first).
namespace kernkit {
void rms_norm_fwd_cuda(const RmsNormFwdParams&, int, intptr_t) { throw std::logic_error("no CUDA"); }
void rms_norm_bwd_cuda(const RmsNormBwdParams&, int, intptr_t) { throw std::logic_error("no CUDA"); }
}  // namespace kernkit
#endif

PYBIND11_MODULE(_C, m) {
  m.doc() = "kernkit native kernels (raw-pointer interface; use the kernkit package, not this module)";
  m.attr("__version__") = KK_VERSION;
  m.def("info", &info);
  m.def("set_cpu_isa", [](const std::string& name) { set_active_isa(name); }, py::arg("name"));
  m.def("cpu_isa", [] { return std::string(isa_name(active_isa())); });
  m.def("rms_norm_dw_blocks", &rms_norm_dw_blocks, py::arg("rows"));
  m.def("rms_norm_fwd", &rms_norm_fwd);
  m.def("rms_norm_bwd", &rms_norm_bwd);
}
