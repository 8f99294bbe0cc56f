// Host entry points of the simt self-test kernels (compiled only into kernkit._simt).
#pragma once
#include <string>
#include <vector>

namespace kk_simt {
// 0: float -> half bits, 1: half bits -> float, 2: float -> bf16 bits, 3: bf16 bits -> float
void convert_bits(int kind, const void* in, void* out, long long n);
}  // namespace kk_simt

namespace kernkit {
namespace simt_selftest {

// One planted bug: the report of the buggy kernel (message) must have the expected kind and name
// the expected source lines; the fixed kernel must run without a report (fixed_message empty).
struct PlantedResult {
  std::string name, expected_kind, file;
  std::vector<int> lines;
  std::string message, fixed_message;
};
std::vector<PlantedResult> run_planted_bugs();
// Reads one float past a heap buffer from a kernel (when run) and returns the line doing it. Only
// meaningful in the ASan build, which stops the process there with a report naming that line.
int run_global_out_of_bounds(bool run);

// bench.cu: one launch of a cost-measuring loop ("barrier" with `threads` threads, "shfl", "mma",
// "ldmatrix", "memory"), n iterations; buf holds >= 1024 floats.
void run_bench(const std::string& kind, int n, int threads, void* buf);
// One FlashAttention-2-style block: q (64 x 64), k, v (n_tiles*64 x 64) bf16 row-major; o (64 x 64) fp32.
void run_attention_block(const void* q, const void* k, const void* v, float* o, int n_tiles, float scale);

}  // namespace simt_selftest
}  // namespace kernkit
