#include "parallel.h"

#include <dlfcn.h>
#include <linux/futex.h>
#include <pthread.h>
#include <sched.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <climits>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <thread>

namespace kernkit {
namespace {

// Two ways to run a region, and a switch between them:
// - torch's OpenMP pool (the default when torch has loaded libgomp): kernkit and
//   torch ops share one set of threads, so on a quiet machine no two pools spin
//   against each other (measured: a pool of our own next to torch's made the
//   demo's train step ~35% slower).
// - kernkit's own pool (the fallback, or KERNKIT_THREAD_BACKEND=kernkit): the
//   caller never waits for a worker that has not started; see Pool.
// - On a busy machine: a GOMP region ends in a barrier that waits out a whole
//   time slice of another process for a descheduled team thread (~8 ms for a
//   50 µs rms_norm). ContentionMonitor notices that the process's threads are
//   being preempted; then all but large regions run on the calling thread alone.
// Which thread runs which range never changes a result (callers guarantee it).

using GompParallel = void (*)(void (*)(void*), void*, unsigned, unsigned);
using OmpInt = int (*)();

// libgomp's stable entry points, looked up in the process's global scope, where
// torch puts its libgomp. Nothing links against libgomp itself.
struct Gomp {
  GompParallel parallel = nullptr;
  OmpInt thread_num = nullptr, num_threads = nullptr;
  Gomp() {
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

std::atomic<bool> g_use_gomp{[] {
  const char* forced = std::getenv("KERNKIT_THREAD_BACKEND");
  return !(forced && std::strcmp(forced, "kernkit") == 0) && gomp().parallel;
}()};

long futex(std::atomic<uint32_t>* addr, int op, uint32_t val) {
  return syscall(SYS_futex, reinterpret_cast<uint32_t*>(addr), op | FUTEX_PRIVATE_FLAG, val, nullptr, nullptr, 0);
}

inline void cpu_relax() { __builtin_ia32_pause(); }

// How long an idle worker keeps polling for the next job before it sleeps: long
// enough to bridge the Python code between calls (waking a sleeping worker costs
// the caller 30-80 µs on a VM), short enough that an idle process gives its core
// back soon.
int64_t idle_spin_ns() {
  static const int64_t ns = [] {
    const char* s = std::getenv("KERNKIT_SPIN_US");
    const long us = s ? std::strtol(s, nullptr, 10) : 100;
    return int64_t(std::max(0L, us)) * 1000;
  }();
  return ns;
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

thread_local bool t_in_parallel = false;  // nested parallel_for runs serially

// On a busy machine, calls with fewer thread-worthy pieces of work than this run
// on the caller alone (measured with two busy processes on two cores: as fast as
// or faster than two threads for rms_norm, decode attention, decode steps, a
// 6912x2560 ternary GEMV, and never a barrier stall); larger ones (a 2048-token
// attention forward: 256 tasks) stay parallel, where the stall is small next to
// the call and a second thread still adds throughput (~1.6x measured).
constexpr int64_t kBusyMinUnits = 128;

// Is the machine oversubscribed? The signal is the process's involuntary context
// switches (the kernel preempting our threads for another runnable thread),
// counted over windows of >= 50 ms by whichever call comes along. Measured on 2
// cores: quiet, 40-120/s while training with torch's and kernkit's ops mixed
// (torch's spinning OpenMP threads give way to any system task); with two busy
// processes, ~250/s. Eight or more at >= 150/s start the busy-machine mode; a
// window below 80/s ends it. (The mode never adds threads of its own, so it
// cannot keep itself going: a pool of kernkit's own next to torch's spinning
// threads measured ~390/s on a quiet machine.)
class ContentionMonitor {
 public:
  std::atomic<bool> enabled{[] {
    const char* s = std::getenv("KERNKIT_ADAPTIVE_THREADS");
    return !(s && std::strcmp(s, "0") == 0);
  }()};

  bool busy() {
    if (!enabled.load(std::memory_order_relaxed)) return false;
    const int64_t now = now_ns();
    int64_t last = window_start_.load(std::memory_order_relaxed);
    if (now - last >= kWindowNs && window_start_.compare_exchange_strong(last, now)) {
      rusage ru;
      getrusage(RUSAGE_SELF, &ru);
      const long delta = ru.ru_nivcsw - last_count_.exchange(ru.ru_nivcsw);
      const double per_s = last == 0 ? 0.0 : double(delta) * 1e9 / double(now - last);
      const bool was = busy_.load(std::memory_order_relaxed);
      busy_.store(was ? per_s >= 80 : (delta >= 8 && per_s >= 150), std::memory_order_relaxed);
    }
    return busy_.load(std::memory_order_relaxed);
  }

 private:
  static constexpr int64_t kWindowNs = 50'000'000;
  std::atomic<int64_t> window_start_{0};
  std::atomic<long> last_count_{0};
  std::atomic<bool> busy_{false};
};

ContentionMonitor& contention() {
  static ContentionMonitor m;
  return m;
}

// The job ticket packs epoch | thread limit | chunk count | next chunk into one
// word, so a worker claims a chunk with one CAS that also proves the job it read
// is still the live one (a stale worker's CAS fails on the epoch).
struct Ticket {
  static constexpr int kCountBits = 12;
  static constexpr uint64_t kCountMask = (1u << kCountBits) - 1;
  static constexpr int64_t kMaxChunks = int64_t(kCountMask);
  static uint64_t make(uint32_t epoch, int nt, int64_t total) {
    return (uint64_t(epoch) << 32) | (uint64_t(nt & 0xff) << 24) | (uint64_t(total) << kCountBits);
  }
  static uint32_t epoch(uint64_t t) { return uint32_t(t >> 32); }
  static int threads(uint64_t t) { return int((t >> 24) & 0xff); }
  static int64_t total(uint64_t t) { return int64_t((t >> kCountBits) & kCountMask); }
  static int64_t next(uint64_t t) { return int64_t(t & kCountMask); }
};

// kernkit's own pool: the range is cut into chunks claimed from one counter, the
// caller claims chunks too, and it waits only for chunks a worker has actually
// begun, never for a worker that has not started. Idle workers poll (yielding
// their core to anything runnable) and then sleep on a futex.
class Pool {
 public:
  // Runs the job over the calling thread and up to nt - 1 workers; returns
  // false (the caller then runs it alone) when another job holds the pool.
  bool run(void* ctx, RangeFn fn, int64_t n, int64_t chunk, int nt) {
    std::unique_lock<std::mutex> busy(busy_, std::try_to_lock);
    if (!busy.owns_lock()) return false;
    start_workers(nt - 1);
    ctx_ = ctx;
    fn_ = fn;
    n_ = n;
    chunk_ = chunk;
    const int64_t total = (n + chunk - 1) / chunk;
    done_.store(0, std::memory_order_relaxed);
    const uint32_t epoch = ++epoch_;
    ticket_.store(Ticket::make(epoch, nt, total), std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) {
      wake_seq_.fetch_add(1, std::memory_order_seq_cst);
      futex(&wake_seq_, FUTEX_WAKE, INT_MAX);
    }
    work(epoch);
    wait_done(uint32_t(total));
    return true;
  }

 private:
  // Claims and runs chunks of job `epoch` until none is left.
  void work(uint32_t epoch) {
    for (;;) {
      uint64_t t = ticket_.load(std::memory_order_acquire);
      int64_t idx;
      do {
        if (Ticket::epoch(t) != epoch || Ticket::next(t) >= Ticket::total(t)) return;
        idx = Ticket::next(t);
      } while (!ticket_.compare_exchange_weak(t, t + 1, std::memory_order_acq_rel, std::memory_order_acquire));
      // The claim succeeded, so this job's fields are live until the chunk is done.
      const int64_t b = idx * chunk_, e = std::min(n_, b + chunk_);
      t_in_parallel = true;
      fn_(ctx_, b, e);
      t_in_parallel = false;
      if (done_.fetch_add(1, std::memory_order_seq_cst) + 1 == uint32_t(Ticket::total(t)) &&
          caller_sleeping_.load(std::memory_order_seq_cst))
        futex(&done_, FUTEX_WAKE, 1);
    }
  }

  // The caller waits only for chunks that workers have claimed and are running.
  void wait_done(uint32_t total) {
    for (int i = 0; i < 2000; ++i) {
      if (done_.load(std::memory_order_acquire) == total) return;
      cpu_relax();
    }
    caller_sleeping_.store(true, std::memory_order_seq_cst);
    for (uint32_t v; (v = done_.load(std::memory_order_seq_cst)) != total;) futex(&done_, FUTEX_WAIT, v);
    caller_sleeping_.store(false, std::memory_order_relaxed);
  }

  void start_workers(int want) {
    for (; workers_ < want; ++workers_) {
      const int id = workers_ + 1;
      std::thread([this, id] { loop(id); }).detach();
    }
  }

  void loop(int id) {
    uint32_t seen = Ticket::epoch(ticket_.load(std::memory_order_acquire));
    for (;;) {
      const uint64_t t = wait_for_job(seen);
      seen = Ticket::epoch(t);
      if (id < Ticket::threads(t)) work(seen);
    }
  }

  // Polls for a job newer than `seen` (pause, then sched_yield so a spinning
  // worker cedes its core to anything runnable), then sleeps on the futex.
  uint64_t wait_for_job(uint32_t seen) {
    const int64_t deadline = now_ns() + idle_spin_ns();
    for (int i = 0;; ++i) {
      const uint64_t t = ticket_.load(std::memory_order_acquire);
      if (Ticket::epoch(t) != seen) return t;
      if (i < 64) {
        cpu_relax();
      } else {
        if ((i & 15) == 0 && now_ns() > deadline) break;
        sched_yield();
      }
    }
    for (;;) {
      const uint32_t seq = wake_seq_.load(std::memory_order_seq_cst);
      sleepers_.fetch_add(1, std::memory_order_seq_cst);
      const uint64_t t = ticket_.load(std::memory_order_seq_cst);
      if (Ticket::epoch(t) != seen) {
        sleepers_.fetch_sub(1, std::memory_order_relaxed);
        return t;
      }
      futex(&wake_seq_, FUTEX_WAIT, seq);
      sleepers_.fetch_sub(1, std::memory_order_relaxed);
    }
  }

  std::mutex busy_;
  std::atomic<uint64_t> ticket_{0};
  std::atomic<uint32_t> done_{0}, wake_seq_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> caller_sleeping_{false};
  uint32_t epoch_ = 0;
  int workers_ = 0;
  // The live job (valid while a chunk of it is claimed and unfinished).
  void* ctx_ = nullptr;
  RangeFn fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 1;
};

// Never destroyed (workers are detached). A forked child has none of the
// parent's workers, so it starts a fresh pool (the old one is leaked).
std::atomic<Pool*> g_pool{nullptr};
std::once_flag g_atfork_once;

Pool* pool() {
  Pool* p = g_pool.load(std::memory_order_acquire);
  if (p) return p;
  std::call_once(g_atfork_once, [] { pthread_atfork(nullptr, nullptr, [] { g_pool.store(nullptr); }); });
  Pool* fresh = new Pool();
  if (!g_pool.compare_exchange_strong(p, fresh)) {
    delete fresh;
    return p;
  }
  return fresh;
}

void run_gomp(const Gomp& g, void* ctx, RangeFn fn, int64_t n, int nt) {
  struct Shared { void* ctx; RangeFn fn; int64_t n, chunk; const Gomp* g; int nt; } s{ctx, fn, n, (n + nt - 1) / nt, &g, nt};
  g.parallel([](void* p) {
    auto* s = static_cast<Shared*>(p);
    // The runtime may grant fewer threads than asked (nesting, limits): every range still runs.
    const int team = s->g->num_threads();
    for (int r = s->g->thread_num(); r < s->nt; r += team) {
      const int64_t b = r * s->chunk, e = std::min(s->n, b + s->chunk);
      if (b < e) s->fn(s->ctx, b, e);
    }
  }, &s, unsigned(nt), 0);
}

}  // namespace

const char* thread_backend() { return g_use_gomp.load() ? "gomp" : "kernkit"; }

void set_adaptive_threads(bool on) { contention().enabled.store(on); }
bool adaptive_threads() { return contention().enabled.load(); }
bool machine_contended() { return contention().busy(); }

bool set_thread_backend(const char* name) {
  if (std::strcmp(name, "kernkit") == 0) {
    g_use_gomp.store(false);
    return true;
  }
  if (std::strcmp(name, "gomp") == 0 && gomp().parallel) {
    g_use_gomp.store(true);
    return true;
  }
  return false;
}

void parallel_for_impl(int64_t n, int num_threads, int64_t grain, void* ctx, RangeFn fn, int64_t units) {
  if (n <= 0) return;
  grain = std::max<int64_t>(grain, 1);
  const int64_t max_useful = (n + grain - 1) / grain;
  const int nt = int(std::max<int64_t>(1, std::min<int64_t>({num_threads, max_useful, 255})));
  if (nt == 1 || t_in_parallel) {
    fn(ctx, 0, n);
    return;
  }
  if (contention().busy() && (units < 0 ? max_useful : units) < kBusyMinUnits) {
    fn(ctx, 0, n);
    return;
  }
  if (g_use_gomp.load(std::memory_order_relaxed)) return run_gomp(gomp(), ctx, fn, n, nt);
  // A few chunks per thread: a worker that starts late, or loses its core
  // mid-call, then holds up at most one small chunk.
  const int64_t chunks = std::min<int64_t>({max_useful, int64_t(nt) * 4, Ticket::kMaxChunks});
  const int64_t chunk = (n + chunks - 1) / chunks;
  if (!pool()->run(ctx, fn, n, chunk, nt)) fn(ctx, 0, n);
}

}  // namespace kernkit
