// simt runtime: runs a CUDA kernel launch on the CPU. Blocks are spread over OS worker threads;
// the threads of a block are fibers on one worker, switched cooperatively at barriers and warp
// collectives (a dozen instructions per switch). On top of that it checks what a GPU would only
// show as a wrong number or a hang:
//   - barrier misuse: exit before __syncthreads, divergent barriers, collectives whose mask names
//     exited/absent lanes or that differ within a warp, deadlock, a thread that spins (watchdog);
//   - racecheck: every load/store of the kernel code reaches the __tsan_* hooks below (the kernels
//     are compiled with -fsanitize=thread, but linked against these hooks instead of libtsan);
//     per byte, the last writer and up to two readers since the last barrier are kept, and an
//     access by another thread of the block that is not ordered by a barrier (or, within a warp,
//     by __syncwarp / a collective) is a RAW/WAR/WAW hazard reported with both source lines;
//   - shared memory: per-block arena with redzones (bounds) and a written-bytes map (initcheck).
// Nothing here throws inside a fiber: a failing fiber records the error and switches away for
// good; the launch then throws std::runtime_error on the calling thread.
#include "simt/runtime.h"
#include "simt/simt.h"

#include <dlfcn.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>
#ifdef __SANITIZE_ADDRESS__
#include <sanitizer/asan_interface.h>
#endif

#include <cctype>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <random>
#include <sstream>
#include <thread>
#include <unordered_map>

namespace kk_simt {
namespace {

// ---------------------------------------------------------------------------------------------
// Context switch
// ---------------------------------------------------------------------------------------------
#if defined(__x86_64__) && !defined(KK_SIMT_UCONTEXT)
extern "C" void kk_simt_switch(void** save_sp, void* new_sp);
extern "C" void kk_simt_trampoline();
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores
// the stack pointer, and resumes the other stack the same way. A new fiber's stack starts with a
// frame whose return address is the trampoline, which calls r12(r13).
asm(R"(
  .text
  .globl kk_simt_switch
  .hidden kk_simt_switch
  .type kk_simt_switch,@function
kk_simt_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size kk_simt_switch, .-kk_simt_switch
  .globl kk_simt_trampoline
  .hidden kk_simt_trampoline
  .type kk_simt_trampoline,@function
kk_simt_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size kk_simt_trampoline, .-kk_simt_trampoline
)");

void* make_stack(char* lo, char* hi, void (*fn)(void*), void* arg) {
#ifdef __SANITIZE_ADDRESS__
  // A fiber abandoned after an error leaves its frames' redzones poisoned on this stack.
  __asan_unpoison_memory_region(lo, size_t(hi - lo));
#else
  (void)lo;
#endif
  uintptr_t top = uintptr_t(hi) & ~uintptr_t(15);
  auto slot = [&](int off) { return reinterpret_cast<uint64_t*>(top - off); };
  *slot(24) = uint64_t(&kk_simt_trampoline);
  *slot(32) = 0;                 // rbp
  *slot(40) = 0;                 // rbx
  *slot(48) = uint64_t(fn);      // r12
  *slot(56) = uint64_t(arg);     // r13
  *slot(64) = 0;                 // r14
  *slot(72) = 0;                 // r15
  uint32_t mxcsr;
  uint16_t fpcw;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  std::memcpy(reinterpret_cast<char*>(top - 80), &mxcsr, 4);
  std::memcpy(reinterpret_cast<char*>(top - 76), &fpcw, 2);
  return reinterpret_cast<void*>(top - 80);
}
inline void switch_to(void** save, void* to) { kk_simt_switch(save, to); }
#else
// Portable fallback (other CPUs): ucontext. Same semantics, slower switches (a signal-mask system
// call each). A fiber's context sits at the top of its own stack; "stack pointers" are contexts.
#define KK_SIMT_UCONTEXT 1
void uc_trampoline(unsigned fn_hi, unsigned fn_lo, unsigned arg_hi, unsigned arg_lo) {
  auto fn = reinterpret_cast<void (*)(void*)>((uintptr_t(fn_hi) << 32) | fn_lo);
  fn(reinterpret_cast<void*>((uintptr_t(arg_hi) << 32) | arg_lo));
  std::abort();  // fibers never return
}
void* make_stack(char* lo, char* hi, void (*fn)(void*), void* arg) {
#ifdef __SANITIZE_ADDRESS__
  __asan_unpoison_memory_region(lo, size_t(hi - lo));
#endif
  auto* uc = reinterpret_cast<ucontext_t*>((uintptr_t(hi) - sizeof(ucontext_t)) & ~uintptr_t(63));
  getcontext(uc);
  uc->uc_stack.ss_sp = lo;
  uc->uc_stack.ss_size = size_t(reinterpret_cast<char*>(uc) - lo);
  uc->uc_link = nullptr;
  const uintptr_t f = uintptr_t(fn), a = uintptr_t(arg);
  makecontext(uc, reinterpret_cast<void (*)()>(&uc_trampoline), 4, unsigned(f >> 32), unsigned(f), unsigned(a >> 32),
              unsigned(a));
  return uc;
}
inline void switch_to(void** save, void* to) {
  swapcontext(static_cast<ucontext_t*>(*save), static_cast<ucontext_t*>(to));
}
#endif

// ---------------------------------------------------------------------------------------------
// State
// ---------------------------------------------------------------------------------------------
constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = 64 << 10;
constexpr size_t kGuardBytes = 4096;
constexpr size_t kArenaBytes = 512 << 10;       // shared memory arena per worker
constexpr size_t kSmemLimit = 232448;           // 227 KiB: the sm_90 opt-in maximum per block
constexpr size_t kStaticSmemLimit = 48 << 10;   // static __shared__ per block
constexpr size_t kDefaultDynSmem = 48 << 10;    // dynamic without cudaFuncSetAttribute
constexpr size_t kRedzone = 64;
constexpr uint16_t kNone = 0xffff;

#ifdef KK_SIMT_INSTRUMENTED
constexpr bool kInstrumented = true;
#else
constexpr bool kInstrumented = false;
#endif
Options g_opts = [] {
  Options o;
  o.racecheck = kInstrumented;  // the race checker needs the access hooks
  return o;
}();
std::mutex g_opts_mu;
std::mutex g_launch_mu;  // one launch at a time (workers and their memory are shared)
std::mutex g_rec_mu;
std::vector<LaunchRecord> g_records;
std::mutex g_attr_mu;
std::map<const void*, int> g_max_dyn_smem;

enum class St : uint8_t { ready, barrier, warp, done };

struct CpOp {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  const char* file;
  int line;
};

struct Fiber {
  void* sp = nullptr;
  char* stack_lo = nullptr;
  char* stack_hi = nullptr;
  uint3 tidx{0, 0, 0};
  int tid = 0;
  St st = St::ready;
  int bar_id = -1;
  int bar_result = 0;
  const char* file = nullptr;  // where it waits
  int line = 0;
  const char* what = nullptr;
  int in_rt = 0;                           // > 0 while runtime code runs on this fiber
  std::vector<CpOp> cp_open;               // issued, not committed
  std::deque<std::vector<CpOp>> cp_groups;  // committed, not yet waited for
};

struct Group {
  const char* what;
  WarpFn fn;
  unsigned mask, arrived;
  Lanes lanes;
  const char* file[32];
  int line[32];
};

struct Warp {
  unsigned present = 0, exited = 0;
  uint32_t epoch = 0;
  std::vector<Group> groups;
};

struct Barrier {
  int need = 0, arrived = 0;
  const char* file = nullptr;
  int line = 0;
  int first_tid = 0;
  int acc[3] = {0, 1, 0};  // count, and, or
  std::vector<int> waiters;
};

struct SmemArray {
  size_t off, bytes;
  const char* file;
  int line;
};

struct Error {
  std::string kind, text;  // text may hold @@n@@ markers for locs[n]
  std::vector<uint32_t> locs;
  int tid = -1;
  uint3 block{0, 0, 0};
  bool in_block = false;
};

struct LaunchState {
  LaunchSpec spec;
  Options opts;
  size_t max_dyn_smem;
  unsigned long long nblocks;
  std::atomic<unsigned long long> next{0};
  std::atomic<bool> abort{false};
  std::mutex err_mu;
  bool has_error = false;
  Error error;
};

// Per-byte race shadow. Pages are reset lazily when the worker's barrier epoch moves on.
struct Cell {
  uint16_t w, r0, r1, pad;
  uint32_t wep, r0ep, r1ep;
  uint32_t wloc, r0loc, r1loc;
};
constexpr int kPageShift = 10;
struct Page {
  unsigned long long epoch;
  Cell c[1 << kPageShift];
};

struct Worker {
  int index = 0;
  char* stacks = nullptr;
  char* arena = nullptr;
  std::vector<uint8_t> valid, written;
  size_t arena_used = 0, static_used = 0, dyn_bytes = 0;
  std::vector<SmemArray> arrays;
  unsigned long long block_gen = 0;
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  Barrier bars[16];
  std::deque<int> runq;
  std::mt19937_64 rng;
  bool random = false;
  int nthreads = 0, live = 0, exited = 0;
  uint3 bidx{0, 0, 0};
  bool failed = false;
  Error error;
  LaunchState* L = nullptr;
  Fiber* cur = nullptr;
  void* sched_sp = nullptr;
  Group* completing = nullptr;
  // race shadow
  std::unordered_map<uintptr_t, Page*> pages;
  uintptr_t last_key = ~uintptr_t(0);
  Page* last_page = nullptr;
  unsigned long long shadow_epoch = 1;
  // watchdog
  std::atomic<long long> progress_ns{0};
  unsigned long long switches = 0;
  std::atomic<bool> busy{false}, watchdog_hit{false};
};

std::vector<std::unique_ptr<Worker>> g_workers;
thread_local Worker* tls_w = nullptr;

long long now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

Worker& get_worker(int i) {
  while (int(g_workers.size()) <= i) {
    auto w = std::make_unique<Worker>();
    w->index = int(g_workers.size());
    const size_t per = kStackBytes + kGuardBytes;
    void* s = mmap(nullptr, per * kMaxThreads, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    void* a = mmap(nullptr, kArenaBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (s == MAP_FAILED || a == MAP_FAILED) throw std::runtime_error("simt: cannot map fiber stacks / shared arena");
    w->stacks = static_cast<char*>(s);
    for (int t = 0; t < kMaxThreads; ++t) mprotect(w->stacks + t * per, kGuardBytes, PROT_NONE);  // overflow guard
    w->arena = static_cast<char*>(a);
    w->valid.assign(kArenaBytes, 0);
    w->written.assign(kArenaBytes, 0);
    w->fibers.resize(kMaxThreads);
#ifdef KK_SIMT_UCONTEXT
    w->sched_sp = new ucontext_t();  // the scheduler's context (lives as long as the worker)
#endif
    for (int t = 0; t < kMaxThreads; ++t) {
      w->fibers[t].stack_lo = w->stacks + t * per + kGuardBytes;
      w->fibers[t].stack_hi = w->stacks + (t + 1) * per;
    }
    g_workers.push_back(std::move(w));
  }
  return *g_workers[i];
}

// Runtime code running on a fiber: its own memory accesses (possibly through instrumented copies of
// inline library functions) are not the kernel's.
struct RtScope {
  Fiber& f;
  explicit RtScope(Fiber& f_) : f(f_) { ++f.in_rt; }
  ~RtScope() { --f.in_rt; }
};

// ---------------------------------------------------------------------------------------------
// Source locations: a program counter in this module, or an interned (file, line) site
// ---------------------------------------------------------------------------------------------
uintptr_t module_base() {
  static uintptr_t base = [] {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&module_base), &info);
    return uintptr_t(info.dli_fbase);
  }();
  return base;
}
std::string module_path() {
  Dl_info info{};
  dladdr(reinterpret_cast<void*>(&module_base), &info);
  return info.dli_fname ? info.dli_fname : "";
}

std::mutex g_site_mu;
std::vector<std::pair<const char*, int>> g_sites;
std::map<std::pair<const char*, int>, uint32_t> g_site_index;

uint32_t site_loc(const char* file, int line) {
  // A per-thread cache in front of the shared table: collectives note a site per lane.
  thread_local std::map<std::pair<const char*, int>, uint32_t> cache;
  const auto key = std::make_pair(file, line);
  if (auto hit = cache.find(key); hit != cache.end()) return hit->second;
  std::lock_guard<std::mutex> g(g_site_mu);
  auto it = g_site_index.find(key);
  uint32_t idx;
  if (it != g_site_index.end()) {
    idx = it->second;
  } else {
    idx = 0x80000000u | uint32_t(g_sites.size());
    g_sites.push_back(key);
    g_site_index.emplace(key, idx);
  }
  cache.emplace(key, idx);
  return idx;
}
uint32_t pc_loc(const void* pc) { return uint32_t((uintptr_t(pc) - module_base() - 1) & 0x7fffffffu); }

std::string short_path(const std::string& f) {
  const auto p = f.find("csrc/");
  return p == std::string::npos ? f : f.substr(p + 5);
}

std::string resolve_loc(uint32_t loc) {
  if (loc & 0x80000000u) {
    std::lock_guard<std::mutex> g(g_site_mu);
    const auto& s = g_sites[loc & 0x7fffffffu];
    return short_path(s.first) + ":" + std::to_string(s.second);
  }
  // A program counter: ask addr2line for the inline chain (innermost first).
  char hex[32];
  std::snprintf(hex, sizeof hex, "0x%x", loc);
  const std::string cmd = "addr2line -i -e '" + module_path() + "' " + hex + " 2>/dev/null";
  std::string out;
  if (FILE* f = popen(cmd.c_str(), "r")) {
    char buf[1024];
    std::vector<std::string> frames;
    while (std::fgets(buf, sizeof buf, f)) {
      std::string s(buf);
      while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
      if (auto d = s.find(" (discriminator"); d != std::string::npos) s = s.substr(0, d);
      if (!s.empty() && s.find("??") == std::string::npos) frames.push_back(short_path(s));
    }
    pclose(f);
    for (size_t i = 0; i < frames.size() && i < 3; ++i) out += (i ? " <- " : "") + frames[i];
  }
  if (out.empty()) {
    std::snprintf(hex, sizeof hex, "+0x%x", loc);
    out = "_simt" + std::string(hex) + " (no addr2line for source lines)";
  }
  return out;
}

// "k<T, W>" launched inside "... [with T = float; W = __half]" -> "k<float, __half>".
std::string instance_name(const char* name, const char* context) {
  std::string out = name;
  const std::string ctx = context ? context : "";
  const auto with = ctx.rfind("[with ");
  if (with == std::string::npos) return out;
  const std::string args = ctx.substr(with + 6, ctx.size() - with - 7);
  auto is_id = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  size_t pos = 0;
  while (pos < args.size()) {
    size_t end = args.find("; ", pos);
    if (end == std::string::npos) end = args.size();
    const std::string pair = args.substr(pos, end - pos);
    const auto eq = pair.find(" = ");
    if (eq != std::string::npos) {
      const std::string param = pair.substr(0, eq), value = pair.substr(eq + 3);
      for (size_t p = 0; (p = out.find(param, p)) != std::string::npos;) {
        const bool whole = (p == 0 || !is_id(out[p - 1])) && (p + param.size() >= out.size() || !is_id(out[p + param.size()]));
        if (whole) { out.replace(p, param.size(), value); p += value.size(); }
        else p += param.size();
      }
    }
    pos = end + 2;
  }
  return out;
}

std::string format_error(const LaunchState& L, const Error& e) {
  std::string text = e.text;
  for (size_t i = 0; i < e.locs.size(); ++i) {
    const std::string mark = "@@" + std::to_string(i) + "@@";
    const std::string where = resolve_loc(e.locs[i]);
    for (size_t p; (p = text.find(mark)) != std::string::npos;) text.replace(p, mark.size(), where);
  }
  std::ostringstream s;
  s << "simt: " << e.kind << " in kernel " << instance_name(L.spec.name, L.spec.context) << " (launched at " << short_path(L.spec.file) << ":"
    << L.spec.line << ")";
  if (e.in_block) {
    s << ", block (" << e.block.x << "," << e.block.y << "," << e.block.z << ")";
    if (e.tid >= 0) {
      const dim3 b = L.spec.block;
      s << ", thread (" << e.tid % b.x << "," << (e.tid / b.x) % b.y << "," << e.tid / (b.x * b.y) << ") [warp "
        << e.tid / 32 << ", lane " << e.tid % 32 << "]";
    }
  }
  s << ": " << text;
  return s.str();
}

std::string thread_str(const Worker& w, int tid) {
  const dim3 b = w.L->spec.block;
  std::ostringstream s;
  s << "thread (" << tid % b.x << "," << (tid / b.x) % b.y << "," << tid / (b.x * b.y) << ")";
  return s.str();
}
std::string site_str(const char* file, int line) { return short_path(file ? file : "?") + ":" + std::to_string(line); }

// ---------------------------------------------------------------------------------------------
// Failing and scheduling
// ---------------------------------------------------------------------------------------------
[[noreturn]] void fail(Worker& w, const std::string& kind, const std::string& text, std::vector<uint32_t> locs = {},
                       int tid = -2) {
  if (!w.failed) {
    w.failed = true;
    w.error = Error{kind, text, std::move(locs), tid == -2 ? (w.cur ? w.cur->tid : -1) : tid, w.bidx, true};
  }
  if (w.cur) {
    Fiber* f = w.cur;
    f->st = St::done;
    switch_to(&f->sp, w.sched_sp);
  }
  // Not on a fiber: cannot happen (callers are fiber-side).
  std::abort();
}

Worker& me() { return *tls_w; }

// loc: where the thread was caught (0: not known).
void check_watchdog(Worker& w, uint32_t loc = 0) {
  if (!w.watchdog_hit.load(std::memory_order_relaxed)) return;
  char secs[32];
  std::snprintf(secs, sizeof secs, "%g", w.L->opts.watchdog_s);
  fail(w, "watchdog",
       std::string("a thread ran for more than ") + secs + " s without reaching a barrier, a collective or its end" +
           (loc ? " (still running at @@0@@)" : "") +
           ": does it spin on memory another thread should change? Threads of a block switch only at barriers and "
           "collectives here, and on a GPU such a loop is not guaranteed to make progress either",
       loc ? std::vector<uint32_t>{loc} : std::vector<uint32_t>{});
}

// Blocks the current fiber until something makes it ready again.
void park(Worker& w) {
  Fiber& f = *w.cur;
  switch_to(&f.sp, w.sched_sp);
  check_watchdog(w);
}
// Gives other threads a turn (random schedules only: the default order runs a thread to its next wait).
void maybe_yield(Worker& w) {
  if (!w.random) return;
  w.runq.push_back(w.cur->tid);
  park(w);
}
void make_ready(Worker& w, int tid) {
  w.fibers[tid].st = St::ready;
  w.runq.push_back(tid);
}

// ---------------------------------------------------------------------------------------------
// Memory checks
// ---------------------------------------------------------------------------------------------
const SmemArray* nearest_array(const Worker& w, size_t off) {
  const SmemArray* best = nullptr;
  for (const auto& a : w.arrays)
    if (a.off <= off && (!best || a.off > best->off)) best = &a;
  return best;
}

Page* page_for(Worker& w, uintptr_t a) {
  const uintptr_t key = a >> kPageShift;
  Page* p;
  if (key == w.last_key) {
    p = w.last_page;
  } else {
    auto it = w.pages.find(key);
    if (it == w.pages.end()) {
      p = static_cast<Page*>(std::malloc(sizeof(Page)));
      p->epoch = 0;
      w.pages.emplace(key, p);
    } else {
      p = it->second;
    }
    w.last_key = key;
    w.last_page = p;
  }
  if (p->epoch != w.shadow_epoch) {
    std::memset(p->c, 0xff, sizeof p->c);
    p->epoch = w.shadow_epoch;
  }
  return p;
}

void race_report(Worker& w, const char* hazard, bool shared, uintptr_t a, int tid, bool write, uint32_t loc,
                 int other, bool other_write, uint32_t other_loc) {
  std::ostringstream s;
  s << hazard << " hazard on " << (shared ? "shared" : "global") << " memory ";
  if (shared) s << "(offset " << (a - uintptr_t(w.arena)) << ")";
  else s << "0x" << std::hex << a << std::dec;
  s << ": " << thread_str(w, tid) << " " << (write ? "writes" : "reads") << " at @@0@@, but " << thread_str(w, other)
    << " " << (other_write ? "wrote" : "read") << " it at @@1@@ with no barrier in between"
    << ((tid >> 5) == (other >> 5) ? " (same warp: __syncwarp or a warp collective would order them)" : "");
  fail(w, "racecheck", s.str(), {loc, other_loc}, tid);
}

void race_check(Worker& w, uintptr_t a, size_t n, bool write, uint32_t loc, int tid, bool shared) {
  const uint32_t ep = w.warps[tid >> 5].epoch;
  auto ordered = [&](uint16_t p, uint32_t pep) { return p == tid || ((p >> 5) == (tid >> 5) && pep != ep); };
  for (size_t i = 0; i < n; ++i) {
    const uintptr_t b = a + i;
    Page* pg = page_for(w, b);
    Cell& c = pg->c[b & ((1u << kPageShift) - 1)];
    if (write) {
      if (c.w != kNone && !ordered(c.w, c.wep)) race_report(w, "WAW", shared, b, tid, true, loc, c.w, true, c.wloc);
      if (c.r0 != kNone && !ordered(c.r0, c.r0ep)) race_report(w, "WAR", shared, b, tid, true, loc, c.r0, false, c.r0loc);
      if (c.r1 != kNone && !ordered(c.r1, c.r1ep)) race_report(w, "WAR", shared, b, tid, true, loc, c.r1, false, c.r1loc);
      c.w = uint16_t(tid);
      c.wep = ep;
      c.wloc = loc;
      c.r0 = c.r1 = kNone;
    } else {
      if (c.w != kNone && !ordered(c.w, c.wep)) race_report(w, "RAW", shared, b, tid, false, loc, c.w, true, c.wloc);
      if (c.r0 == tid || c.r0 == kNone || (c.r1 != tid && c.r1 != kNone && ordered(c.r0, c.r0ep))) {
        c.r0 = uint16_t(tid); c.r0ep = ep; c.r0loc = loc;
      } else {
        c.r1 = uint16_t(tid); c.r1ep = ep; c.r1loc = loc;
      }
    }
  }
}

// Every checked access: from the hooks (kernel code), collectives (per lane) and cp.async.
void check_access(Worker& w, uintptr_t a, size_t n, bool write, uint32_t loc, int tid, bool race = true) {
  if (w.watchdog_hit.load(std::memory_order_relaxed)) check_watchdog(w, loc);
  if (a - uintptr_t(w.stacks) < (kStackBytes + kGuardBytes) * kMaxThreads) return;  // a fiber's own stack
  const bool shared = a - uintptr_t(w.arena) < kArenaBytes;
  if (shared) {
    const size_t off = a - uintptr_t(w.arena);
    for (size_t i = 0; i < n; ++i) {
      if (off + i >= kArenaBytes || !w.valid[off + i]) {
        const SmemArray* arr = nearest_array(w, off);
        std::ostringstream s;
        s << (write ? "write" : "read") << " of " << n << " bytes at shared offset " << off << " by "
          << thread_str(w, tid) << " at @@0@@ is outside every shared array of this block";
        if (arr)
          s << " (" << (off - arr->off) << " bytes past the start of the " << arr->bytes
            << "-byte array declared at " << site_str(arr->file, arr->line) << ")";
        fail(w, "shared-memory bounds", s.str(), {loc}, tid);
      }
    }
    if (write) {
      std::memset(&w.written[off], 1, n);
    } else if (kInstrumented) {  // (uninstrumented builds do not see plain stores: no written map to trust)
      for (size_t i = 0; i < n; ++i)
        if (!w.written[off + i]) {
          std::ostringstream s;
          s << thread_str(w, tid) << " reads shared memory at offset " << off + i
            << " at @@0@@ that no thread of this block has written (uninitialised shared memory)";
          if (const SmemArray* arr = nearest_array(w, off + i))
            s << "; array declared at " << site_str(arr->file, arr->line);
          fail(w, "initcheck", s.str(), {loc}, tid);
        }
    }
  }
  if (race && w.L->opts.racecheck) race_check(w, a, n, write, loc, tid, shared);
}

inline void hook(const void* p, size_t n, bool write, const void* pc) {
  Worker* w = tls_w;
  if (!w || !w->cur || w->cur->in_rt) return;
  RtScope rt(*w->cur);
  check_access(*w, uintptr_t(p), n, write, pc_loc(pc), w->cur->tid);
}

// ---------------------------------------------------------------------------------------------
// Threads of a block
// ---------------------------------------------------------------------------------------------
void run_cp_group(Worker& w, std::vector<CpOp>& ops) {
  for (const CpOp& op : ops) {
    const uint32_t loc = site_loc(op.file, op.line);
    if (op.src_bytes > 0) check_access(w, uintptr_t(op.src), size_t(op.src_bytes), false, loc, w.cur->tid);
    check_access(w, uintptr_t(op.dst), size_t(op.bytes), true, loc, w.cur->tid);
    if (op.src_bytes > 0) std::memcpy(op.dst, op.src, size_t(op.src_bytes));
    if (op.bytes > op.src_bytes) std::memset(static_cast<char*>(op.dst) + op.src_bytes, 0, size_t(op.bytes - op.src_bytes));
  }
  ops.clear();
}

[[noreturn]] void thread_exit(Worker& w) {
  Fiber& f = *w.cur;
  {
    RtScope rt(f);
    // Copies still in flight complete anyway on a GPU.
    if (!f.cp_open.empty()) { f.cp_groups.push_back(std::move(f.cp_open)); f.cp_open.clear(); }
    while (!f.cp_groups.empty()) { run_cp_group(w, f.cp_groups.front()); f.cp_groups.pop_front(); }
    Warp& wp = w.warps[f.tid >> 5];
    const unsigned bit = 1u << (f.tid & 31);
    for (const Group& g : wp.groups)
      if (g.mask & bit) {
        const int other = (f.tid & ~31) + __builtin_ctz(g.arrived);
        fail(w, "collective after exit",
             thread_str(w, f.tid) + " exited, but lane " + std::to_string(other & 31) + " waits for it in " + g.what +
                 " (mask 0x" + [&] { char b[16]; std::snprintf(b, 16, "%08x", g.mask); return std::string(b); }() +
                 ") at " + site_str(g.file[other & 31], g.line[other & 31]));
      }
    const Barrier& b0 = w.bars[0];
    if (b0.arrived > 0 && b0.need == w.nthreads)
      fail(w, "exit before barrier",
           thread_str(w, f.tid) + " exited while " + thread_str(w, b0.first_tid) + " and others wait at __syncthreads at " +
               site_str(b0.file, b0.line) + "; every thread of the block must reach every __syncthreads");
    wp.exited |= bit;
    ++w.exited;
    --w.live;
    f.st = St::done;
  }
  switch_to(&f.sp, w.sched_sp);
  std::abort();
}

void fiber_main(void* arg) {
  Worker& w = *tls_w;
  (void)arg;
  w.L->spec.run(w.L->spec.bound);
  thread_exit(w);
}

std::string describe_wait(const Worker& w, int tid) {
  const Fiber& f = w.fibers[tid];
  switch (f.st) {
    case St::barrier: return "waits at a barrier at " + site_str(f.file, f.line);
    case St::warp: return "waits in " + std::string(f.what) + " at " + site_str(f.file, f.line);
    case St::done: return "has exited";
    default: return "is runnable";
  }
}

std::string deadlock_text(const Worker& w);

bool run_block(Worker& w, LaunchState& L, unsigned long long blin) {
  const dim3 g = L.spec.grid, b = L.spec.block;
  w.bidx = uint3{unsigned(blin % g.x), unsigned((blin / g.x) % g.y), unsigned(blin / (unsigned long long)g.x / g.y)};
  w.nthreads = int(b.x * b.y * b.z);
  w.live = w.nthreads;
  w.exited = 0;
  w.failed = false;
  w.cur = nullptr;
  ++w.block_gen;
  ++w.shadow_epoch;
  // shared memory: clear what the previous block used, then the dynamic part at offset 0
  std::memset(w.valid.data(), 0, std::min(kArenaBytes, w.arena_used));
  std::memset(w.written.data(), 0, std::min(kArenaBytes, w.arena_used));
  w.arrays.clear();
  w.arena_used = 0;
  w.static_used = 0;
  w.dyn_bytes = L.spec.smem;
  if (w.dyn_bytes) {
    std::memset(w.valid.data(), 1, w.dyn_bytes);
    w.arrays.push_back(SmemArray{0, w.dyn_bytes, "dynamic shared memory", 0});
    w.arena_used = (w.dyn_bytes + kRedzone + 15) & ~size_t(15);
  }
  const int nwarps = (w.nthreads + 31) / 32;
  w.warps.assign(nwarps, Warp{});
  for (int i = 0; i < nwarps; ++i) {
    const int lanes = std::min(32, w.nthreads - 32 * i);
    w.warps[i].present = lanes == 32 ? 0xffffffffu : ((1u << lanes) - 1);
  }
  for (auto& bar : w.bars) { bar.arrived = 0; bar.waiters.clear(); }
  w.runq.clear();
  w.random = L.opts.seed >= 0;
  if (w.random) w.rng.seed(uint64_t(L.opts.seed) * 0x9e3779b97f4a7c15ull + blin * 0xbf58476d1ce4e5b9ull + 1);
  for (int t = 0; t < w.nthreads; ++t) {
    Fiber& f = w.fibers[t];
    f.tid = t;
    f.tidx = uint3{unsigned(t % b.x), unsigned((t / b.x) % b.y), unsigned(t / (b.x * b.y))};
    f.st = St::ready;
    f.bar_id = -1;
    f.in_rt = 0;  // a fiber abandoned after an error may have died inside runtime code
    f.cp_open.clear();
    f.cp_groups.clear();
    f.sp = make_stack(f.stack_lo, f.stack_hi, &fiber_main, &f);
    w.runq.push_back(t);
  }
  w.busy = true;
  w.progress_ns = now_ns();
  while (!w.runq.empty() && !w.failed && !L.abort.load(std::memory_order_relaxed)) {
    int t;
    if (w.random) {
      const size_t i = size_t(w.rng() % w.runq.size());
      t = w.runq[i];
      w.runq[i] = w.runq.back();
      w.runq.pop_back();
    } else {
      t = w.runq.front();
      w.runq.pop_front();
    }
    Fiber& f = w.fibers[t];
    if (f.st != St::ready) continue;
    w.cur = &f;
    switch_to(&w.sched_sp, f.sp);
    w.cur = nullptr;
    if ((++w.switches & 63) == 0) w.progress_ns = now_ns();  // the clock costs ~30 ns; the watchdog needs seconds
  }
  w.busy = false;
  if (!w.failed && !L.abort.load() && w.live > 0) {
    w.failed = true;
    w.error = Error{"deadlock", deadlock_text(w), {}, -1, w.bidx, true};
  }
  return !w.failed;
}

// The race shadow covers one block (a new block starts a new epoch), so it can be dropped between
// blocks: done when it outgrows `keep_pages` pages (32 KiB each).
void release_shadow(Worker& w, size_t keep_pages) {
  if (w.pages.size() <= keep_pages) return;
  for (auto& kv : w.pages) std::free(kv.second);
  w.pages.clear();
  w.last_key = ~uintptr_t(0);
  w.last_page = nullptr;
}

void worker_loop(LaunchState& L, int index) {
  Worker& w = get_worker(index);
  w.L = &L;
  w.watchdog_hit = false;
  tls_w = &w;
  while (!L.abort.load()) {
    const unsigned long long b = L.next.fetch_add(1);
    if (b >= L.nblocks) break;
    const bool ok = run_block(w, L, b);
    release_shadow(w, 8192);  // 256 MiB
    if (!ok) {
      std::lock_guard<std::mutex> g(L.err_mu);
      if (!L.has_error) { L.has_error = true; L.error = w.error; }
      L.abort = true;
    }
  }
  release_shadow(w, 1024);  // keep up to 32 MiB for the next launch
  tls_w = nullptr;
}

std::string hex32(unsigned v) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", v);
  return b;
}

int barrier_impl(int id, int count, int kind, int pred, const char* file, int line) {
  Worker& w = me();
  Fiber& f = *w.cur;
  check_watchdog(w);
  RtScope rt(f);
  auto here = [&] { return site_loc(file, line); };
  if (id < 0 || id > 15) fail(w, "barrier misuse", "barrier id " + std::to_string(id) + " at @@0@@ is outside 0..15", {here()});
  if (count != 0 && (count % 32 != 0 || count > w.nthreads))
    fail(w, "barrier misuse",
         "named barrier at @@0@@ with thread count " + std::to_string(count) +
             ": the count must be a multiple of 32 and at most the block size (" + std::to_string(w.nthreads) + ")",
         {here()});
  const int need = count == 0 ? w.nthreads : count;
  Barrier& b = w.bars[id];
  if (need == w.nthreads && w.exited > 0) {
    int gone = 0;
    while (gone < w.nthreads && w.fibers[gone].st != St::done) ++gone;
    fail(w, "exit before barrier",
         thread_str(w, f.tid) + " reaches a barrier at @@0@@, but " + thread_str(w, gone) +
             " has already exited; every thread of the block must reach every __syncthreads",
         {here()});
  }
  if (b.arrived == 0) {
    b.need = need;
    b.file = file;
    b.line = line;
    b.first_tid = f.tid;
    b.acc[0] = 0; b.acc[1] = 1; b.acc[2] = 0;
  } else {
    if (b.need != need)
      fail(w, "barrier misuse", "barrier " + std::to_string(id) + " at @@0@@ waited for with thread counts " +
                                    std::to_string(b.need) + " and " + std::to_string(need), {here()});
    if (id == 0 && count == 0 && (b.line != line || std::strcmp(b.file, file) != 0))
      fail(w, "divergent barrier",
           thread_str(w, f.tid) + " reaches __syncthreads at @@0@@ while " + thread_str(w, b.first_tid) +
               " waits at a different __syncthreads at " + site_str(b.file, b.line) +
               " (a barrier in divergent code: all threads of the block must reach the same one)",
           {here()});
  }
  b.acc[0] += pred != 0;
  b.acc[1] &= int(pred != 0);
  b.acc[2] |= int(pred != 0);
  if (++b.arrived == b.need) {
    const int result = kind == 0 ? b.acc[0] : kind == 1 ? b.acc[1] : b.acc[2];
    for (int t : b.waiters) {
      w.fibers[t].bar_result = result;
      make_ready(w, t);
    }
    b.waiters.clear();
    b.arrived = 0;
    ++w.shadow_epoch;  // every access before the barrier is ordered before every access after it
    f.bar_result = result;
    maybe_yield(w);
  } else {
    b.waiters.push_back(f.tid);
    f.st = St::barrier;
    f.bar_id = id;
    f.file = file;
    f.line = line;
    park(w);
  }
  f.bar_id = -1;
  return f.bar_result;
}

std::string deadlock_text(const Worker& w) {
  std::ostringstream s;
  s << "deadlock: no thread of the block can continue (" << w.live << " of " << w.nthreads
    << " threads have not exited). ";
  int shown = 0;
  for (int i = 0; i < 16 && shown < 4; ++i) {
    const Barrier& bar = w.bars[i];
    if (bar.arrived == 0) continue;
    s << bar.arrived << " of the " << bar.need << " threads barrier " << i << " needs wait at "
      << site_str(bar.file, bar.line) << "; ";
    for (int t = 0; t < w.nthreads; ++t)
      if (!(w.fibers[t].st == St::barrier && w.fibers[t].bar_id == i)) {
        s << thread_str(w, t) << " " << describe_wait(w, t) << ". ";
        break;
      }
    ++shown;
  }
  for (size_t wi = 0; wi < w.warps.size() && shown < 6; ++wi)
    for (const Group& gr : w.warps[wi].groups) {
      const unsigned missing = gr.mask & ~gr.arrived;
      const int lane = __builtin_ctz(gr.arrived), miss = missing ? __builtin_ctz(missing) : 0;
      s << "warp " << wi << ": lane " << lane << " waits in " << gr.what << " (mask " << hex32(gr.mask) << ") at "
        << site_str(gr.file[lane], gr.line[lane]) << " for lane " << miss << ", which "
        << describe_wait(w, int(wi) * 32 + miss) << ". ";
      ++shown;
    }
  return s.str();
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Public runtime interface (simt.h)
// ---------------------------------------------------------------------------------------------
uint3 thread_idx() { return tls_w->cur->tidx; }
uint3 block_idx() { return tls_w->bidx; }
dim3 block_dim() { return tls_w->L->spec.block; }
dim3 grid_dim() { return tls_w->L->spec.grid; }
int sm_count() { return options().sm_count; }
long long clock64() { return now_ns(); }
unsigned lane_id() { return unsigned(tls_w->cur->tid & 31); }
unsigned active_mask() {
  const Worker& w = me();
  const Warp& wp = w.warps[w.cur->tid >> 5];
  return wp.present & ~wp.exited;
}

void barrier(int id, int count, const char* file, int line) { (void)barrier_impl(id, count, 0, 0, file, line); }
int barrier_reduce(int kind, int pred, const char* file, int line) { return barrier_impl(0, 0, kind, pred, file, line); }

void warp_collective(const char* what, unsigned mask, WarpFn fn, const void* in, void* out, const char* file, int line) {
  Worker& w = me();
  Fiber& f = *w.cur;
  check_watchdog(w);
  RtScope rt(f);
  auto here = [&] { return site_loc(file, line); };
  const int wi = f.tid >> 5, lane = f.tid & 31;
  Warp& wp = w.warps[wi];
  const unsigned bit = 1u << lane;
  if (!(mask & bit))
    fail(w, "collective misuse", std::string(what) + " at @@0@@ with mask " + hex32(mask) +
                                     ", which does not include the calling lane " + std::to_string(lane), {here()});
  if (mask & ~wp.present)
    fail(w, "collective misuse", std::string(what) + " at @@0@@: mask " + hex32(mask) + " names lanes " +
                                     hex32(mask & ~wp.present) + " that do not exist (the block has " +
                                     std::to_string(w.nthreads) + " threads)", {here()});
  if (mask & wp.exited)
    fail(w, "collective misuse", std::string(what) + " at @@0@@: mask " + hex32(mask) + " names lanes " +
                                     hex32(mask & wp.exited) + " that have already exited", {here()});
  Group* g = nullptr;
  for (auto& x : wp.groups)
    if (x.mask & mask) { g = &x; break; }
  if (g) {
    if (g->mask != mask || g->fn != fn || std::strcmp(g->what, what) != 0) {
      const int other = __builtin_ctz(g->arrived);
      fail(w, "divergent collectives",
           "lane " + std::to_string(lane) + " calls " + what + " (mask " + hex32(mask) + ") at @@0@@ while lane " +
               std::to_string(other) + " of the same warp waits in " + g->what + " (mask " + hex32(g->mask) + ") at " +
               site_str(g->file[other], g->line[other]),
           {here()});
    }
  } else {
    wp.groups.push_back(Group{what, fn, mask, 0, {}, {}, {}});
    g = &wp.groups.back();
  }
  g->arrived |= bit;
  g->lanes.in[lane] = in;
  g->lanes.out[lane] = out;
  g->file[lane] = file;
  g->line[lane] = line;
  if (g->arrived != g->mask) {
    f.st = St::warp;
    f.what = what;
    f.file = file;
    f.line = line;
    park(w);
    return;
  }
  Group done = *g;
  wp.groups.erase(wp.groups.begin() + (g - wp.groups.data()));
  w.completing = &done;
  fn(done.lanes, mask);
  w.completing = nullptr;
  ++wp.epoch;  // the lanes' accesses before the collective are ordered before those after it
  for (unsigned m = mask & ~bit; m; m &= m - 1) make_ready(w, wi * 32 + __builtin_ctz(m));
  maybe_yield(w);
}

void note_lane_access(int lane, const void* p, size_t bytes, bool write) {
  Worker& w = me();
  const Group* g = w.completing;
  if (!g || lane < 0 || lane > 31) fail(w, "simt internal", "note_lane_access outside a warp collective");
  check_access(w, uintptr_t(p), bytes, write, site_loc(g->file[lane], g->line[lane]), (w.cur->tid & ~31) + lane);
}

void note_access(const void* p, size_t bytes, bool write, const char* file, int line) {
  Worker& w = me();
  RtScope rt(*w.cur);
  check_access(w, uintptr_t(p), bytes, write, site_loc(file, line), w.cur->tid);
}

void cp_async(void* dst, const void* src, int bytes, int src_bytes, const char* file, int line) {
  Worker& w = me();
  Fiber& f = *w.cur;
  RtScope rt(f);
  const uint32_t here = site_loc(file, line);
  if (bytes != 4 && bytes != 8 && bytes != 16)
    fail(w, "cp.async misuse", "cp.async at @@0@@ copies " + std::to_string(bytes) + " bytes (4, 8 or 16)", {here});
  if (src_bytes < 0 || src_bytes > bytes)
    fail(w, "cp.async misuse", "cp.async at @@0@@: source size " + std::to_string(src_bytes) + " outside 0.." +
                                   std::to_string(bytes), {here});
  if (uintptr_t(dst) - uintptr_t(w.arena) >= kArenaBytes)
    fail(w, "cp.async misuse", "cp.async at @@0@@: the destination is not shared memory", {here});
  if (uintptr_t(dst) % bytes || (src_bytes > 0 && uintptr_t(src) % bytes))
    fail(w, "cp.async misuse", "cp.async at @@0@@: source and destination must be aligned to the copy size (" +
                                   std::to_string(bytes) + " bytes)", {here});
  f.cp_open.push_back(CpOp{dst, src, bytes, src_bytes, file, line});
}

void cp_async_commit() {
  Worker& w = me();
  Fiber& f = *w.cur;
  RtScope rt(f);
  f.cp_groups.push_back(std::move(f.cp_open));
  f.cp_open.clear();
}

void cp_async_wait(int pending) {
  Worker& w = me();
  Fiber& f = *w.cur;
  check_watchdog(w);
  RtScope rt(f);
  while (int(f.cp_groups.size()) > std::max(pending, 0)) {
    run_cp_group(w, f.cp_groups.front());
    f.cp_groups.pop_front();
  }
}

void* shared_alloc(SharedSlot& slot, size_t bytes, size_t align, const char* file, int line) {
  Worker& w = me();
  if (slot.block_gen == w.block_gen) return slot.ptr;
  RtScope rt(*w.cur);
  align = std::max<size_t>(align, 16);
  const size_t off = (w.arena_used + align - 1) & ~(align - 1);
  w.static_used += bytes;
  if (w.static_used > kStaticSmemLimit)
    fail(w, "shared memory", "static shared memory of this block exceeds 48 KiB with the array declared at @@0@@ "
                             "(use dynamic shared memory and cudaFuncSetAttribute above 48 KiB)", {site_loc(file, line)});
  if (w.static_used + w.dyn_bytes > kSmemLimit || off + bytes + kRedzone > kArenaBytes)
    fail(w, "shared memory", "static + dynamic shared memory exceeds 227 KiB per block with the array declared at @@0@@",
         {site_loc(file, line)});
  std::memset(&w.valid[off], 1, bytes);
  w.arrays.push_back(SmemArray{off, bytes, file, line});
  w.arena_used = off + bytes + kRedzone;
  slot.block_gen = w.block_gen;
  slot.ptr = w.arena + off;
  return slot.ptr;
}

void* dynamic_shared() { return me().arena; }

template <typename T>
T atomic_rmw(T* p, int op, T v, T cmp, const char* file, int line) {
  Worker& w = me();
  Fiber& f = *w.cur;
  check_watchdog(w);
  RtScope rt(f);
  if (uintptr_t(p) % sizeof(T))
    fail(w, "misaligned atomic", "atomic on a misaligned address at @@0@@", {site_loc(file, line)});
  const uint32_t here = site_loc(file, line);
  check_access(w, uintptr_t(p), sizeof(T), false, here, f.tid, false);  // bounds + initcheck; atomics do not race
  check_access(w, uintptr_t(p), sizeof(T), true, here, f.tid, false);
  if (op == kCas) {
    T expected = cmp;
    __atomic_compare_exchange(p, &expected, &v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);
    return expected;
  }
  if (op == kExch) {
    T old;
    __atomic_exchange(p, &v, &old, __ATOMIC_SEQ_CST);
    return old;
  }
  T old;
  __atomic_load(p, &old, __ATOMIC_RELAXED);
  for (;;) {
    T nv;
    switch (op) {
      case kAdd: nv = T(old + v); break;
      case kSub: nv = T(old - v); break;
      case kMax: nv = old < v ? v : old; break;
      case kMin: nv = v < old ? v : old; break;
      case kInc: nv = old >= v ? T(0) : T(old + 1); break;
      case kDec: nv = (old == T(0) || old > v) ? v : T(old - 1); break;
      default:
        if constexpr (std::is_integral<T>::value) {
          nv = op == kAnd ? T(old & v) : op == kOr ? T(old | v) : T(old ^ v);
        } else {
          fail(w, "simt internal", "bitwise atomic on a floating-point value at @@0@@", {here});
        }
    }
    if (__atomic_compare_exchange(p, &old, &nv, true, __ATOMIC_SEQ_CST, __ATOMIC_RELAXED)) return old;
  }
}
template int atomic_rmw<int>(int*, int, int, int, const char*, int);
template unsigned atomic_rmw<unsigned>(unsigned*, int, unsigned, unsigned, const char*, int);
template long long atomic_rmw<long long>(long long*, int, long long, long long, const char*, int);
template unsigned long long atomic_rmw<unsigned long long>(unsigned long long*, int, unsigned long long,
                                                           unsigned long long, const char*, int);
template unsigned short atomic_rmw<unsigned short>(unsigned short*, int, unsigned short, unsigned short, const char*, int);
template float atomic_rmw<float>(float*, int, float, float, const char*, int);
template double atomic_rmw<double>(double*, int, double, double, const char*, int);

void fail_user(const char* kind, const char* msg, const char* file, int line) {
  Worker& w = me();
  RtScope rt(*w.cur);
  fail(w, kind, std::string(msg) + " (at @@0@@)", {site_loc(file, line)});
}

void yield_point() {
  Worker& w = me();
  check_watchdog(w);
  w.runq.push_back(w.cur->tid);
  park(w);
}

// Shuffles: each lane reads the value of its source lane.
void shfl_fn(const Lanes& l, unsigned mask) {
  Worker& w = me();
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    const ShflIn& in = *static_cast<const ShflIn*>(l.in[lane]);
    const int width = in.width;
    if (width < 1 || width > 32 || (width & (width - 1)))
      fail(w, "collective misuse", "shuffle width " + std::to_string(width) + " at @@0@@ is not a power of two <= 32",
           {site_loc(w.completing->file[lane], w.completing->line[lane])}, (w.cur->tid & ~31) + lane);
    const int base = lane & ~(width - 1);
    int src = lane;
    switch (in.kind) {
      case kShflIdx: src = base + (in.arg & (width - 1)); break;
      case kShflUp: src = lane - in.arg >= base ? lane - in.arg : lane; break;
      case kShflDown: src = lane + in.arg < base + width ? lane + in.arg : lane; break;
      case kShflXor: src = (lane ^ in.arg) < base + width ? (lane ^ in.arg) : lane; break;
    }
    if (src < 0 || src > 31 || !((mask >> src) & 1))
      fail(w, "collective misuse",
           "lane " + std::to_string(lane) + " shuffles from lane " + std::to_string(src) + " at @@0@@, which is not in the mask " +
               hex32(mask) + " (its value is undefined on a GPU)",
           {site_loc(w.completing->file[lane], w.completing->line[lane])}, (w.cur->tid & ~31) + lane);
    *static_cast<unsigned long long*>(l.out[lane]) = static_cast<const ShflIn*>(l.in[src])->v;
  }
}

void vote_fn(const Lanes& l, unsigned mask) {
  auto in = [&](int lane) { return *static_cast<const VoteIn*>(l.in[lane]); };
  const int kind = in(__builtin_ctz(mask)).kind;
  unsigned ballot = 0;
  bool all_equal = true;
  const unsigned long long first = in(__builtin_ctz(mask)).v;
  long long acc_s = 0;
  unsigned long long acc_u = 0;
  bool started = false;
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    const unsigned long long v = in(lane).v;
    if (v) ballot |= 1u << lane;
    all_equal &= v == first;
    const int sv = int(unsigned(v));
    const unsigned uv = unsigned(v);
    switch (kind) {
      case kRedAdd: acc_u = unsigned(acc_u + uv); break;
      case kRedMin: acc_s = !started ? sv : std::min<long long>(acc_s, sv); break;
      case kRedMax: acc_s = !started ? sv : std::max<long long>(acc_s, sv); break;
      case kRedMinU: acc_u = !started ? uv : std::min<unsigned long long>(acc_u, uv); break;
      case kRedMaxU: acc_u = !started ? uv : std::max<unsigned long long>(acc_u, uv); break;
      case kRedAnd: acc_u = !started ? uv : (acc_u & uv); break;
      case kRedOr: acc_u |= uv; break;
      case kRedXor: acc_u ^= uv; break;
    }
    started = true;
  }
  for (unsigned m = mask; m; m &= m - 1) {
    const int lane = __builtin_ctz(m);
    unsigned long long r = 0;
    switch (kind) {
      case kVoteAll: r = ballot == mask; break;
      case kVoteAny: r = ballot != 0; break;
      case kVoteBallot: r = ballot; break;
      case kVoteMatchAny:
        for (unsigned k = mask; k; k &= k - 1)
          if (in(__builtin_ctz(k)).v == in(lane).v) r |= 1ull << __builtin_ctz(k);
        break;
      case kVoteMatchAll: r = all_equal ? mask : 0; break;
      case kRedMin: case kRedMax: r = (unsigned long long)acc_s; break;
      default: r = acc_u; break;
    }
    *static_cast<unsigned long long*>(l.out[lane]) = r;
  }
}

void set_max_dynamic_smem(const void* kernel, int bytes) {
  std::lock_guard<std::mutex> g(g_attr_mu);
  g_max_dyn_smem[kernel] = bytes;
}

void set_options(const Options& o) {
  std::lock_guard<std::mutex> g(g_opts_mu);
  g_opts = o;
}
Options options() {
  std::lock_guard<std::mutex> g(g_opts_mu);
  return g_opts;
}
std::vector<LaunchRecord> launch_records() {
  std::lock_guard<std::mutex> g(g_rec_mu);
  return g_records;
}
void clear_launch_records() {
  std::lock_guard<std::mutex> g(g_rec_mu);
  g_records.clear();
}
bool instrumented() { return kInstrumented; }

void launch(const LaunchSpec& s) {
  const std::string kname = instance_name(s.name, s.context);
  const std::string where = "simt: kernel " + kname + " launched at " + short_path(s.file) + ":" +
                            std::to_string(s.line) + ": ";
  const dim3 g = s.grid, b = s.block;
  const unsigned long long nthreads = (unsigned long long)b.x * b.y * b.z;
  if (nthreads == 0 || nthreads > kMaxThreads || b.x > 1024 || b.y > 1024 || b.z > 64)
    throw std::runtime_error(where + "invalid configuration argument: block (" + std::to_string(b.x) + "," +
                             std::to_string(b.y) + "," + std::to_string(b.z) +
                             ") (1..1024 threads, x,y <= 1024, z <= 64)");
  if (g.x == 0 || g.y == 0 || g.z == 0 || g.x > 0x7fffffffu || g.y > 65535 || g.z > 65535)
    throw std::runtime_error(where + "invalid configuration argument: grid (" + std::to_string(g.x) + "," +
                             std::to_string(g.y) + "," + std::to_string(g.z) + ")");
  size_t max_dyn = kDefaultDynSmem;
  {
    std::lock_guard<std::mutex> lk(g_attr_mu);
    auto it = g_max_dyn_smem.find(s.kernel);
    if (it != g_max_dyn_smem.end()) max_dyn = size_t(it->second);
  }
  if (s.smem > max_dyn)
    throw std::runtime_error(where + "requests " + std::to_string(s.smem) + " bytes of dynamic shared memory, above " +
                             std::to_string(max_dyn) + " (above 48 KiB needs cudaFuncSetAttribute("
                             "cudaFuncAttributeMaxDynamicSharedMemorySize))");
  {
    std::lock_guard<std::mutex> lk(g_rec_mu);
    g_records.push_back(LaunchRecord{kname, short_path(s.file), s.line, {g.x, g.y, g.z}, {b.x, b.y, b.z}, s.smem});
  }
  if (tls_w) throw std::runtime_error(where + "launched from inside a kernel (dynamic parallelism is not emulated)");
  std::lock_guard<std::mutex> lk(g_launch_mu);
  LaunchState L;
  L.spec = s;
  L.opts = options();
  L.max_dyn_smem = max_dyn;
  L.nblocks = (unsigned long long)g.x * g.y * g.z;
  const int n = int(std::max<unsigned long long>(1, std::min<unsigned long long>(std::max(L.opts.workers, 1), L.nblocks)));
  for (int i = 0; i < n; ++i) get_worker(i);

  std::mutex wd_mu;
  std::condition_variable wd_cv;
  bool wd_stop = false;
  std::thread watchdog([&] {
    std::unique_lock<std::mutex> lk2(wd_mu);
    while (!wd_stop) {
      wd_cv.wait_for(lk2, std::chrono::milliseconds(100));
      if (wd_stop) break;
      const long long t = now_ns();
      for (int i = 0; i < n; ++i) {
        Worker& w = *g_workers[i];
        if (!w.busy) continue;
        const double secs = double(t - w.progress_ns.load()) * 1e-9;
        if (secs > L.opts.watchdog_s) w.watchdog_hit = true;
        if (secs > L.opts.watchdog_s + 10) {
          std::fprintf(stderr,
                       "%skernkit simt watchdog: a thread of block (%u,%u,%u) has run %.0f s without reaching a "
                       "barrier, a collective or a checked memory access; it cannot be interrupted, so the process "
                       "stops here instead of hanging\n",
                       where.c_str(), w.bidx.x, w.bidx.y, w.bidx.z, secs);
          std::fflush(stderr);
          std::abort();
        }
      }
    }
  });
  std::vector<std::thread> threads;
  for (int i = 1; i < n; ++i) threads.emplace_back(worker_loop, std::ref(L), i);
  worker_loop(L, 0);
  for (auto& t : threads) t.join();
  {
    std::lock_guard<std::mutex> lk2(wd_mu);
    wd_stop = true;
  }
  wd_cv.notify_all();
  watchdog.join();
  if (L.has_error) throw std::runtime_error(format_error(L, L.error));
}

}  // namespace kk_simt

// ---------------------------------------------------------------------------------------------
// -fsanitize=thread instrumentation hooks (the kernels' loads and stores). Only in the instrumented
// build: the sanitizer build compiles the kernels with ASan instead.
// ---------------------------------------------------------------------------------------------
#ifdef KK_SIMT_INSTRUMENTED
#define KK_HOOK(n)                                                                                          \
  extern "C" void __tsan_read##n(void* p) { kk_simt::hook(p, n, false, __builtin_return_address(0)); }      \
  extern "C" void __tsan_write##n(void* p) { kk_simt::hook(p, n, true, __builtin_return_address(0)); }     \
  extern "C" void __tsan_unaligned_read##n(void* p) { kk_simt::hook(p, n, false, __builtin_return_address(0)); } \
  extern "C" void __tsan_unaligned_write##n(void* p) { kk_simt::hook(p, n, true, __builtin_return_address(0)); } \
  extern "C" void __tsan_volatile_read##n(void* p) { kk_simt::hook(p, n, false, __builtin_return_address(0)); } \
  extern "C" void __tsan_volatile_write##n(void* p) { kk_simt::hook(p, n, true, __builtin_return_address(0)); }
KK_HOOK(1)
KK_HOOK(2)
KK_HOOK(4)
KK_HOOK(8)
KK_HOOK(16)
#undef KK_HOOK
extern "C" void __tsan_read_range(void* p, long n) { kk_simt::hook(p, size_t(n), false, __builtin_return_address(0)); }
extern "C" void __tsan_write_range(void* p, long n) { kk_simt::hook(p, size_t(n), true, __builtin_return_address(0)); }
extern "C" void __tsan_init() {}
extern "C" void __tsan_func_entry(void*) {}
extern "C" void __tsan_func_exit(void*) {}
extern "C" void __tsan_vptr_update(void*, void*) {}
extern "C" void __tsan_vptr_read(void*) {}
#endif  // KK_SIMT_INSTRUMENTED
