// parallel_for over [0, n): on torch's OpenMP pool when torch has loaded libgomp
// (kernkit and torch ops share one set of threads), else on kernkit's own pool;
// on the calling thread alone while the process is being preempted by other
// processes (a busy machine), where a parallel region would wait out their time
// slices. parallel.cpp has the measurements behind this.
#pragma once
#include <algorithm>
#include <cstdint>

namespace kernkit {

using RangeFn = void (*)(void* ctx, int64_t begin, int64_t end);

// Splits [0, n) into contiguous ranges of at least `grain` items each, for up to
// `num_threads` threads, and calls fn on each range (the calling thread takes a
// share). `units` says how many thread-worthy pieces of work the call holds
// (default n / grain): on a busy machine, calls with few run on the caller alone.
void parallel_for_impl(int64_t n, int num_threads, int64_t grain, void* ctx, RangeFn fn, int64_t units = -1);

// "gomp" (torch's OpenMP pool) or "kernkit" (our own; KERNKIT_THREAD_BACKEND=kernkit).
const char* thread_backend();
// Switches between the two; false if `name` is unknown or libgomp is not loaded.
bool set_thread_backend(const char* name);
// Whether regions run on the caller alone while the machine is busy
// (KERNKIT_ADAPTIVE_THREADS=0 or set_adaptive_threads(false): never), and whether
// that is the case now.
void set_adaptive_threads(bool on);
bool adaptive_threads();
bool machine_contended();

template <typename F>
inline void parallel_for(int64_t n, int num_threads, int64_t grain, const F& f, int64_t units = -1) {
  parallel_for_impl(n, num_threads, grain, const_cast<F*>(&f),
                    [](void* ctx, int64_t b, int64_t e) { (*static_cast<const F*>(ctx))(b, e); }, units);
}

// Dynamic scheduling: workers started with parallel_for(workers, threads, 1, ...)
// pull task indices from a shared counter until they run out, so uneven tasks
// (causal attention rows) balance across threads. Which worker runs a task never
// changes its result.
struct TaskCounter {
  int64_t next = 0;
};
static inline int64_t take_task(TaskCounter* c) { return __atomic_fetch_add(&c->next, 1, __ATOMIC_RELAXED); }

// Runs task(t, worker_scratch) for t in [0, n) over the threads, largest-first
// (callers number tasks so later ones are heavier) with dynamic balancing.
template <typename MakeScratch, typename Task>
inline void run_tasks(int64_t n, int threads, const MakeScratch& make_scratch, const Task& task) {
  if (n <= 0) return;
  TaskCounter counter;
  const int64_t workers = std::min<int64_t>(std::max(threads, 1), n);
  parallel_for(workers, threads, 1, [&](int64_t, int64_t) {
    auto scratch = make_scratch();
    for (int64_t t; (t = take_task(&counter)) < n;) task(n - 1 - t, *scratch);
  }, n);
}

}  // namespace kernkit
