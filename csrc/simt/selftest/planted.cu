// Planted bugs: small CUDA kernels, each with one classic mistake, that simt must report with the
// right kind of error and source line — and their fixed twins, on which it must stay silent.
// Compiled only into kernkit._simt (kernkit.testing.simt_selftest runs them).
#include <vector>

#include "common/cuda_utils.cuh"
#include "simt/runtime.h"
#include "simt/selftest/selftest.h"

// The expected lines are written next to the kernels as __LINE__ offsets and pinned by these asserts.
#define KK_AT(line) static_assert(__LINE__ == (line), "planted bug moved: update its line constant")

namespace kernkit {
namespace simt_selftest {
namespace {

constexpr int kN = 64;

// A neighbour's shared value read with no barrier after it was written.
constexpr int kMbWrite = __LINE__ + 5, kMbRead = __LINE__ + 7;
__global__ void missing_barrier(float* out, int fixed) {
  KK_SHARED(float, sm, [kN]);
  sm[threadIdx.x] = 0.f;
  __syncthreads();
  sm[threadIdx.x] = float(threadIdx.x); KK_AT(kMbWrite);
  if (fixed) __syncthreads();
  out[threadIdx.x] = sm[(threadIdx.x + 1) % kN]; KK_AT(kMbRead);
}

// The same within one warp: lanes exchange through shared memory without __syncwarp.
constexpr int kWrWrite = __LINE__ + 5, kWrRead = __LINE__ + 7;
__global__ void warp_race(float* out, int fixed) {
  KK_SHARED(float, sm, [32]);
  sm[threadIdx.x] = 0.f;
  __syncthreads();
  sm[threadIdx.x] = float(threadIdx.x); KK_AT(kWrWrite);
  if (fixed) __syncwarp();
  out[threadIdx.x] = sm[threadIdx.x ^ 1]; KK_AT(kWrRead);
}

// Tiles reloaded in a loop with no barrier between the last read of one tile and the next load
// (FlashAttention's classic K/V reload bug).
constexpr int kRlWrite = __LINE__ + 5, kRlRead = __LINE__ + 7;
__global__ void reload_without_barrier(const float* in, float* out, int fixed) {
  KK_SHARED(float, tile, [kN]);
  float acc = 0.f;
  for (int it = 0; it < 3; ++it) {
    tile[threadIdx.x] = in[it * kN + threadIdx.x]; KK_AT(kRlWrite);
    __syncthreads();
    acc += tile[(threadIdx.x + 7) % kN]; KK_AT(kRlRead);
    if (fixed) __syncthreads();
  }
  out[threadIdx.x] = acc;
}

// Two threads store to the same global element.
constexpr int kGwWrite = __LINE__ + 2;
__global__ void global_write_race(float* out, int fixed) {
  out[fixed ? threadIdx.x : threadIdx.x / 2] = float(threadIdx.x); KK_AT(kGwWrite);
}

// A shuffle that reads lanes outside its mask.
constexpr int kWlShfl = __LINE__ + 4;
__global__ void wrong_lane(float* out, int fixed) {
  const int lane = threadIdx.x & 31;
  if (lane >= 16) return;
  const float v = __shfl_sync(0x0000ffffu, float(lane), fixed ? (lane ^ 1) : lane + 16); KK_AT(kWlShfl);
  out[lane] = v;
}

// One thread returns early; the others wait at __syncthreads.
constexpr int kErBarrier = __LINE__ + 3;
__global__ void early_return(float* out, int fixed) {
  if (threadIdx.x == 5 && !fixed) return;
  __syncthreads(); KK_AT(kErBarrier);
  out[threadIdx.x] = 1.f;
}

// Off-by-one into the redzone after a shared array.
constexpr int kOobWrite = __LINE__ + 3;
__global__ void shared_out_of_bounds(float* out, int fixed) {
  KK_SHARED(float, sm, [kN]);
  sm[threadIdx.x + (fixed ? 0 : 1)] = 1.f; KK_AT(kOobWrite);
  __syncthreads();
  out[threadIdx.x] = sm[threadIdx.x];
}

// Half of a shared array is filled, all of it is read.
constexpr int kUiRead = __LINE__ + 5;
__global__ void uninitialised_shared(float* out, int fixed) {
  KK_SHARED(float, sm, [kN]);
  if (threadIdx.x < kN / 2 || fixed) sm[threadIdx.x] = 1.f;
  __syncthreads();
  out[threadIdx.x] = sm[kN - 1 - threadIdx.x]; KK_AT(kUiRead);
}

// __syncthreads in both branches of a divergent if.
constexpr int kDbFirst = __LINE__ + 4, kDbSecond = __LINE__ + 6;
__global__ void divergent_barrier(float* out, int fixed) {
  float v = 0.f;
  if (threadIdx.x < 32 || fixed) {
    v = 1.f; __syncthreads(); KK_AT(kDbFirst);
  } else {
    v = 2.f; __syncthreads(); KK_AT(kDbSecond);
  }
  out[threadIdx.x] = v;
}

// Half a warp shuffles while the other half votes.
constexpr int kDcShfl = __LINE__ + 5, kDcVote = __LINE__ + 7;
__global__ void divergent_collectives(float* out, int fixed) {
  const int lane = threadIdx.x & 31;
  float v = float(lane);
  if (lane < 16 || fixed) {
    v = __shfl_xor_sync(0xffffffffu, v, 1); KK_AT(kDcShfl);
  } else {
    v = float(__ballot_sync(0xffffffffu, 1)); KK_AT(kDcVote);
  }
  out[lane] = v;
}

// Lanes of one warp wait at a block barrier while the others wait for them in __syncwarp.
constexpr int kDlBarrier = __LINE__ + 4, kDlWarp = __LINE__ + 6;
__global__ void deadlock(float* out, int fixed) {
  const int lane = threadIdx.x & 31;
  if (lane < 16 || fixed) {
    __syncthreads(); KK_AT(kDlBarrier);
  } else {
    __syncwarp(); KK_AT(kDlWarp);
  }
  out[lane] = 1.f;
}

// Thread 0 spins on a flag thread 1 sets; the fixed version yields while it waits.
constexpr int kSpLoop = __LINE__ + 5;
__global__ void spin(unsigned* flag, int fixed) {
  if (threadIdx.x == 0) {
    if (fixed) { while (atomicAdd(flag, 0u) == 0u) __nanosleep(100); }
    else {
      while (*static_cast<volatile unsigned*>(flag) == 0u) {} KK_AT(kSpLoop);
    }
  } else if (threadIdx.x == 1) {
    atomicExch(flag, 1u);
  }
}

// A global-memory read one past the end of a heap buffer: found by ASan in the sanitizer build (the
// process stops with ASan's report), not by the access hooks.
constexpr int kGoRead = __LINE__ + 2;
__global__ void global_out_of_bounds(const float* in, float* out) {
  out[threadIdx.x] = in[threadIdx.x + 1]; KK_AT(kGoRead);
}

std::string run_catch(void (*fn)(int), int fixed) {
  try {
    fn(fixed);
    return "";
  } catch (const std::exception& e) {
    return e.what();
  }
}

struct Bug {
  const char* name;
  const char* kind;
  std::vector<int> lines;
  void (*run)(int fixed);
  double watchdog_s;
  bool needs_hooks;  // detected through the access hooks (not in the sanitizer build)
};

std::vector<float> g_in(3 * kN, 1.f), g_out(kN);
unsigned g_flag;

}  // namespace

std::vector<PlantedResult> run_planted_bugs() {
  const Bug bugs[] = {
      {"missing barrier", "racecheck", {kMbWrite, kMbRead},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, missing_barrier)(g_out.data(), f); }, 60, true},
      {"missing __syncwarp", "racecheck", {kWrWrite, kWrRead},
       [](int f) { KK_LAUNCH(1, 32, 0, nullptr, warp_race)(g_out.data(), f); }, 60, true},
      {"tile reloaded without a barrier", "racecheck", {kRlWrite, kRlRead},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, reload_without_barrier)(g_in.data(), g_out.data(), f); }, 60, true},
      {"global write race", "racecheck", {kGwWrite},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, global_write_race)(g_out.data(), f); }, 60, true},
      {"wrong lane", "collective misuse", {kWlShfl},
       [](int f) { KK_LAUNCH(1, 32, 0, nullptr, wrong_lane)(g_out.data(), f); }, 60, false},
      {"early return before a barrier", "exit before barrier", {kErBarrier},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, early_return)(g_out.data(), f); }, 60, false},
      {"shared out of bounds", "shared-memory bounds", {kOobWrite},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, shared_out_of_bounds)(g_out.data(), f); }, 60, true},
      {"uninitialised shared read", "initcheck", {kUiRead},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, uninitialised_shared)(g_out.data(), f); }, 60, true},
      {"divergent barrier", "divergent barrier", {kDbFirst, kDbSecond},
       [](int f) { KK_LAUNCH(1, kN, 0, nullptr, divergent_barrier)(g_out.data(), f); }, 60, false},
      {"divergent collectives", "divergent collectives", {kDcShfl, kDcVote},
       [](int f) { KK_LAUNCH(1, 32, 0, nullptr, divergent_collectives)(g_out.data(), f); }, 60, false},
      {"warp/block deadlock", "deadlock", {kDlBarrier, kDlWarp},
       [](int f) { KK_LAUNCH(1, 32, 0, nullptr, deadlock)(g_out.data(), f); }, 60, false},
      {"spinning thread", "watchdog", {kSpLoop},
       [](int f) { g_flag = 0; KK_LAUNCH(1, 32, 0, nullptr, spin)(&g_flag, f); }, 0.5, true},
  };
  const kk_simt::Options saved = kk_simt::options();
  std::vector<PlantedResult> out;
  for (const Bug& b : bugs) {
    if (b.needs_hooks && !kk_simt::instrumented()) continue;
    kk_simt::Options o = saved;
    o.seed = -1;  // the default order: deterministic reports
    o.racecheck = kk_simt::instrumented();
    o.watchdog_s = b.watchdog_s;
    kk_simt::set_options(o);
    PlantedResult r{b.name, b.kind, "simt/selftest/planted.cu", b.lines, run_catch(b.run, 0), run_catch(b.run, 1)};
    out.push_back(std::move(r));
  }
  kk_simt::set_options(saved);
  return out;
}

int run_global_out_of_bounds(bool run) {
  if (!run) return kGoRead;
  std::vector<float> in(kN, 1.f), out(kN);
  KK_LAUNCH(1, kN, 0, nullptr, global_out_of_bounds)(in.data(), out.data());
  return kGoRead;
}

}  // namespace simt_selftest
}  // namespace kernkit
