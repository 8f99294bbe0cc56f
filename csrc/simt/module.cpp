// kernkit._simt: kernkit's CUDA kernels compiled for the CPU (see runtime.cpp). It exports its
// entry-point table to kernkit._C (which keeps all argument handling), the emulator's options,
// the record of launches, and the self-test kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/cuda_entry.h"
#include "simt/runtime.h"
#include "simt/selftest/selftest.h"

namespace py = pybind11;

namespace kernkit {
#define KK_ENTRY_DECL(name, Params) void name(const Params&, int, intptr_t);
KK_CUDA_ENTRY_POINTS(KK_ENTRY_DECL)
#undef KK_ENTRY_DECL
}  // namespace kernkit

namespace {

const kernkit::CudaEntryPoints kEntry = {
#define KK_ENTRY_INIT(name, Params) &kernkit::name,
    KK_CUDA_ENTRY_POINTS(KK_ENTRY_INIT)
#undef KK_ENTRY_INIT
};

py::dict options_dict(const kk_simt::Options& o) {
  py::dict d;
  d["racecheck"] = o.racecheck;
  d["seed"] = o.seed;
  d["workers"] = o.workers;
  d["watchdog_s"] = o.watchdog_s;
  d["sm_count"] = o.sm_count;
  return d;
}

}  // namespace

PYBIND11_MODULE(_simt, m) {
  m.doc() = "kernkit's CUDA kernels run on the CPU by the simt emulator (use kernkit.testing, not this module)";
  m.def("entry_points", [] {
    return py::capsule(static_cast<const void*>(&kEntry), kernkit::kSimtCapsuleName);
  });
  m.def("instrumented", &kk_simt::instrumented);
  m.def(
      "configure",
      [](bool racecheck, long long seed, int workers, double watchdog_s, int sm_count) {
        if (racecheck && !kk_simt::instrumented())
          throw std::runtime_error("simt: racecheck needs the instrumented simt build (this one was built with "
                                   "sanitizers, which replace the access hooks)");
        if (workers < 1 || workers > 64) throw std::invalid_argument("simt: workers must be in 1..64");
        if (!(watchdog_s > 0)) throw std::invalid_argument("simt: watchdog must be > 0 seconds");
        if (sm_count < 1) throw std::invalid_argument("simt: sm_count must be >= 1");
        kk_simt::Options o;
        o.racecheck = racecheck;
        o.seed = seed;
        o.workers = workers;
        o.watchdog_s = watchdog_s;
        o.sm_count = sm_count;
        kk_simt::set_options(o);
      },
      py::arg("racecheck"), py::arg("seed"), py::arg("workers"), py::arg("watchdog_s"), py::arg("sm_count"));
  m.def("options", [] { return options_dict(kk_simt::options()); });
  m.def("launches", [] {
    py::list out;
    for (const auto& r : kk_simt::launch_records()) {
      py::dict d;
      d["kernel"] = r.kernel;
      d["grid"] = py::make_tuple(r.grid[0], r.grid[1], r.grid[2]);
      d["block"] = py::make_tuple(r.block[0], r.block[1], r.block[2]);
      d["shared_bytes"] = r.smem;
      d["source"] = r.file + ":" + std::to_string(r.line);
      out.append(d);
    }
    return out;
  });
  m.def("clear_launches", &kk_simt::clear_launch_records);
  m.def(
      "convert_bits",
      [](int kind, uintptr_t in, uintptr_t out, long long n) {
        if (kind < 0 || kind > 3) throw std::invalid_argument("convert_bits: kind must be 0..3");
        py::gil_scoped_release nogil;
        kk_simt::convert_bits(kind, reinterpret_cast<const void*>(in), reinterpret_cast<void*>(out), n);
      },
      py::arg("kind"), py::arg("src"), py::arg("dst"), py::arg("n"));
  m.def("planted_bugs", [] {
    py::list out;
    std::vector<kernkit::simt_selftest::PlantedResult> rs;
    {
      py::gil_scoped_release nogil;
      rs = kernkit::simt_selftest::run_planted_bugs();
    }
    for (const auto& r : rs) {
      py::dict d;
      d["name"] = r.name;
      d["expected_kind"] = r.expected_kind;
      d["file"] = r.file;
      d["lines"] = r.lines;
      d["message"] = r.message;
      d["fixed_message"] = r.fixed_message;
      out.append(d);
    }
    return out;
  });
}
