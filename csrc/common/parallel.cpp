#include "parallel.h"

#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

namespace kernkit {
namespace {

// libgomp's stable entry points (GCC >= 4.9), looked up in the process's global
// scope, where torch puts its libgomp. Nothing links against libgomp itself.
using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpInt = int (*)();

struct Gomp {
  GompParallel parallel = nullptr;
  OmpInt thread_num = nullptr, num_threads = nullptr;
  Gomp() {
    // KERNKIT_THREAD_BACKEND=threads forces kernkit's own pool (for comparisons).
    const char* forced = std::getenv("KERNKIT_THREAD_BACKEND");
    if (forced && std::strcmp(forced, "threads") == 0) return;
    auto p = reinterpret_cast<GompParallel>(dlsym(RTLD_DEFAULT, "GOMP_parallel"));
    auto t = reinterpret_cast<OmpInt>(dlsym(RTLD_DEFAULT, "omp_get_thread_num"));
    auto c = reinterpret_cast<OmpInt>(dlsym(RTLD_DEFAULT, "omp_get_num_threads"));
    if (p && t && c) { parallel = p; thread_num = t; num_threads = c; }
  }
};

const Gomp& gomp() {
  static Gomp g;
  return g;
}

struct Job {
  void* ctx;
  RangeFn fn;
  int64_t n, chunk;
  void run(int tid) const {
    const int64_t b = tid * chunk, e = std::min(n, b + chunk);
    if (b < e) fn(ctx, b, e);
  }
};

// Fallback pool: workers sleep on a condition variable between jobs.
class Pool {
 public:
  void run(const Job& job, int nthreads) {
    std::lock_guard<std::mutex> serial(submit_);  // one job at a time
    {
      std::unique_lock<std::mutex> lk(m_);
      while (int(workers_.size()) < nthreads - 1) {
        const int id = int(workers_.size()) + 1;
        workers_.emplace_back([this, id] { loop(id); });
        workers_.back().detach();
      }
      job_ = &job;
      active_ = nthreads;
      pending_ = nthreads - 1;
      ++generation_;
    }
    cv_.notify_all();
    job.run(0);
    std::unique_lock<std::mutex> lk(m_);
    done_.wait(lk, [this] { return pending_ == 0; });
    job_ = nullptr;
  }

 private:
  void loop(int id) {
    uint64_t seen = 0;
    for (;;) {
      const Job* job;
      {
        std::unique_lock<std::mutex> lk(m_);
        cv_.wait(lk, [&] { return generation_ != seen; });
        seen = generation_;
        if (id >= active_) continue;
        job = job_;
      }
      job->run(id);
      std::lock_guard<std::mutex> lk(m_);
      if (--pending_ == 0) done_.notify_one();
    }
  }
  std::mutex submit_, m_;
  std::condition_variable cv_, done_;
  std::vector<std::thread> workers_;
  const Job* job_ = nullptr;
  int active_ = 0, pending_ = 0;
  uint64_t generation_ = 0;
};

}  // namespace

const char* thread_backend() { return gomp().parallel ? "gomp" : "threads"; }

void parallel_for_impl(int64_t n, int num_threads, int64_t grain, void* ctx, RangeFn fn) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_useful = (n + grain - 1) / grain;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>(num_threads, max_useful)));
  if (nt == 1) {
    fn(ctx, 0, n);
    return;
  }
  const Job job{ctx, fn, n, (n + nt - 1) / nt};
  const Gomp& g = gomp();
  if (g.parallel) {
    struct Shared { const Job* job; const Gomp* g; int nt; } shared{&job, &g, nt};
    g.parallel([](void* p) {
      auto* s = static_cast<Shared*>(p);
      // The runtime may grant fewer threads than asked (nesting, limits):
      // every range still runs.
      const int team = s->g->num_threads();
      for (int r = s->g->thread_num(); r < s->nt; r += team) s->job->run(r);
    }, &shared, unsigned(nt), 0);
    return;
  }
  static Pool* pool = new Pool();  // never destroyed: workers are detached
  pool->run(job, nt);
}

}  // namespace kernkit
