// kernkit._simt: kernkit's CUDA kernels compiled for the CPU (see runtime.cpp). It exports its
// entry-point table to kernkit._C (which keeps all argument handling), the emulator's options,
// the record of launches, and the self-test kernels.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include "common/cuda_entry.h"
#include "simt/runtime.h"
#include "simt/selftest/fragments.h"
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

// The captures of every PTX wrapper under the names scripts/gpu_fragments.cu writes.
template <typename F>
void for_each_capture(kernkit::simt_selftest::Captures& c, F&& f) {
  const char* mma[3] = {"mma_bf16", "mma_f16", "mma_s8"};
  const char* ldsm[3] = {"x1", "x2", "x4"};
  for (int k = 0; k < 3; ++k) {
    f(mma[k], c.mma[k]);
    f(std::string("gemm_") + (mma[k] + 4), c.gemm[k]);
    for (int t = 0; t < 2; ++t) f(std::string("ldmatrix_") + ldsm[k] + (t ? "_trans" : ""), c.ldsm[t][k]);
  }
  f("misc", c.misc);
}

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
  m.def("fragment_checks", [] {
    std::vector<kernkit::simt_selftest::CheckResult> rs;
    {
      py::gil_scoped_release nogil;
      rs = kernkit::simt_selftest::run_fragment_checks();
    }
    py::list out;
    for (const auto& r : rs) out.append(py::make_tuple(r.name, r.passed, r.detail));
    return out;
  });
  m.def("captures", [] {  // every wrapper's per-lane registers (golden-fragment comparison with a GPU)
    kernkit::simt_selftest::Captures c;
    {
      py::gil_scoped_release nogil;
      c = kernkit::simt_selftest::capture_all();
    }
    py::dict d;
    for_each_capture(c, [&](const std::string& key, std::vector<uint32_t>& v) { d[key.c_str()] = v; });
    return d;
  });
  // Golden fragments from a GPU (scripts/gpu_fragments.cu) against the emulator's captures.
  m.def("compare_captures", [](py::dict golden) {
    namespace st = kernkit::simt_selftest;
    st::Captures g;
    for_each_capture(g, [&](const std::string& key, std::vector<uint32_t>& v) {
      v = golden[key.c_str()].cast<std::vector<uint32_t>>();
    });
    std::vector<st::CheckResult> rs;
    {
      py::gil_scoped_release nogil;
      rs = st::compare_captures(g, st::capture_all());
    }
    py::list out;
    for (const auto& r : rs) out.append(py::make_tuple(r.name, r.passed, r.detail));
    return out;
  }, py::arg("golden"));
  // One-warp GEMM tile D(16x8) = A B + C through cp.async, ldmatrix and mma; a, b as 16-bit patterns
  // (bf16: B is K x N; f16 and s8: B given transposed, N x K) or int8 values.
  m.def("gemm_tile", [](const std::string& kind, const std::vector<int>& a, const std::vector<int>& b,
                        const std::vector<double>& c) {
    namespace st = kernkit::simt_selftest;
    const size_t k = kind == "s8" ? 32 : 16;
    if (a.size() != 16 * k || b.size() != 8 * k || c.size() != 128) throw std::invalid_argument("gemm_tile: bad sizes");
    std::vector<double> out;
    py::gil_scoped_release nogil;
    if (kind == "s8") {
      std::vector<int8_t> a8(a.begin(), a.end()), b8(b.begin(), b.end());
      std::vector<int32_t> c32(c.begin(), c.end());
      for (int32_t v : st::gemm_tile_s8(a8, b8, c32)) out.push_back(v);
      return out;
    }
    std::vector<uint16_t> a16(a.begin(), a.end()), b16(b.begin(), b.end());
    std::vector<float> cf(c.begin(), c.end());
    if (kind == "bf16") for (float v : st::gemm_tile_bf16(a16, b16, cf)) out.push_back(v);
    else if (kind == "f16") for (float v : st::gemm_tile_f16(a16, b16, cf)) out.push_back(v);
    else throw std::invalid_argument("gemm_tile: kind must be bf16, f16 or s8");
    return out;
  }, py::arg("kind"), py::arg("a"), py::arg("b"), py::arg("c"));
  m.def("bench", [](const std::string& kind, int n, int threads) {
    if (n < 0 || threads < 1 || threads > 1024) throw std::invalid_argument("bench: bad n or threads");
    std::vector<float> buf(1024, 1.f);
    py::gil_scoped_release nogil;
    kernkit::simt_selftest::run_bench(kind, n, threads, buf.data());
  }, py::arg("kind"), py::arg("n"), py::arg("threads") = 32);
  m.def("attention_block", [](uintptr_t q, uintptr_t k, uintptr_t v, uintptr_t o, int n_tiles, double scale) {
    if (n_tiles < 1) throw std::invalid_argument("attention_block: n_tiles >= 1");
    py::gil_scoped_release nogil;
    kernkit::simt_selftest::run_attention_block(reinterpret_cast<const void*>(q), reinterpret_cast<const void*>(k),
                                                reinterpret_cast<const void*>(v), reinterpret_cast<float*>(o),
                                                n_tiles, float(scale));
  }, py::arg("q"), py::arg("k"), py::arg("v"), py::arg("o"), py::arg("n_tiles"), py::arg("scale"));
  m.def("planted_global_out_of_bounds", &kernkit::simt_selftest::run_global_out_of_bounds, py::arg("run") = true);
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
