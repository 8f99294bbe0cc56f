// simt runtime: what the _simt module (module.cpp) sets and reads. Kernel code sees only simt.h.
#pragma once
#include <cstddef>
#include <string>
#include <vector>


namespace kk_simt {

struct Options {
  bool racecheck = true;     // shared + global data races within a block (needs the instrumented build)
  long long seed = -1;       // < 0: threads resume in index order; else a seeded random order
  int workers = 2;           // OS threads running blocks
  double watchdog_s = 60.0;  // a thread that runs this long without a scheduling point is reported
  int sm_count = 132;        // what cudaDevAttrMultiProcessorCount reports (an H100 SXM)
};
void set_options(const Options& o);
Options options();

struct LaunchRecord {
  std::string kernel, file;
  int line;
  unsigned grid[3], block[3];
  size_t smem;
};
std::vector<LaunchRecord> launch_records();
void clear_launch_records();

// True when the kernels were compiled with the access hooks (racecheck, shared-memory bounds and
// initcheck); false in the ASan build, where ASan checks global memory instead.
bool instrumented();

}  // namespace kk_simt
