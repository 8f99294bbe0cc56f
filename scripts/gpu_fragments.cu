// Golden fragments: runs the simt self-test's capture kernels (csrc/simt/selftest/fragments.cu, the
// same source simt runs) on a real GPU, checks the captures against the PTX ISA tables and CuTe's
// layouts there, and writes them as JSON for scripts/compare_fragments.py, which compares them with
// the emulator's. Built and run by scripts/gpu_check.sh:
//   nvcc -std=c++17 -O2 -arch=sm_90a -Icsrc scripts/gpu_fragments.cu -o gpu_fragments && ./gpu_fragments out.json
#include <cstdio>
#include <string>
#include <vector>

#include "simt/selftest/fragments.cu"

namespace st = kernkit::simt_selftest;

static void put(FILE* f, const char* key, const std::vector<uint32_t>& v, bool last = false) {
  std::fprintf(f, " \"%s\": [", key);
  for (size_t i = 0; i < v.size(); ++i) std::fprintf(f, "%s%u", i ? "," : "", v[i]);
  std::fprintf(f, "]%s\n", last ? "" : ",");
}

int main(int argc, char** argv) {
  if (argc != 2) { std::fprintf(stderr, "usage: %s out.json\n", argv[0]); return 2; }
  const st::Captures c = st::capture_all();
  int bad = 0;
  for (const auto& r : st::check_captures(c)) {
    std::printf("%s %s %s\n", r.passed ? "OK " : "BAD", r.name.c_str(), r.detail.c_str());
    bad += !r.passed;
  }
  FILE* f = std::fopen(argv[1], "w");
  if (!f) return 2;
  std::fprintf(f, "{\n");
  const char* mma[3] = {"mma_bf16", "mma_f16", "mma_s8"};
  const char* ldsm[3] = {"x1", "x2", "x4"};
  for (int k = 0; k < 3; ++k) {
    put(f, mma[k], c.mma[k]);
    put(f, (std::string("gemm_") + (mma[k] + 4)).c_str(), c.gemm[k]);
    for (int t = 0; t < 2; ++t) put(f, (std::string("ldmatrix_") + ldsm[k] + (t ? "_trans" : "")).c_str(), c.ldsm[t][k]);
  }
  put(f, "misc", c.misc, true);
  std::fprintf(f, "}\n");
  std::fclose(f);
  std::printf("%d check(s) failed on the GPU\n", bad);
  return bad ? 1 : 0;
}
