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

}  // namespace simt_selftest
}  // namespace kernkit
