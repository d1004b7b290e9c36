// The CUDA SIMT emulator's runtime: fibers, the per-block scheduler, warp rendezvous,
// the block barrier, launches and error reporting. See README.md in this directory.
#include <sys/mman.h>

#include <algorithm>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "include/cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/asan_interface.h>
#include <sanitizer/common_interface_defs.h>
#define EMU_ASAN 1
#else
#define EMU_ASAN 0
#endif

// The linker defines these for a section whose name is a C identifier: __shared__ data.
extern "C" unsigned char __start_emu_shared[] __attribute__((weak));
extern "C" unsigned char __stop_emu_shared[] __attribute__((weak));

namespace emu {

// ---- fibers: a stack and a saved stack pointer; switching saves callee-saved registers.
#if defined(__x86_64__)
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, @function
emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size emu_switch, .-emu_switch
)");
#elif defined(__aarch64__)
extern "C" void emu_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl emu_switch
  .type emu_switch, %function
emu_switch:
  sub sp, sp, #176
  stp x19, x20, [sp, #0]
  stp x21, x22, [sp, #16]
  stp x23, x24, [sp, #32]
  stp x25, x26, [sp, #48]
  stp x27, x28, [sp, #64]
  stp x29, x30, [sp, #80]
  stp d8, d9, [sp, #96]
  stp d10, d11, [sp, #112]
  stp d12, d13, [sp, #128]
  stp d14, d15, [sp, #144]
  mov x9, sp
  str x9, [x0]
  mov sp, x1
  ldp x19, x20, [sp, #0]
  ldp x21, x22, [sp, #16]
  ldp x23, x24, [sp, #32]
  ldp x25, x26, [sp, #48]
  ldp x27, x28, [sp, #64]
  ldp x29, x30, [sp, #80]
  ldp d8, d9, [sp, #96]
  ldp d10, d11, [sp, #112]
  ldp d12, d13, [sp, #128]
  ldp d14, d15, [sp, #144]
  add sp, sp, #176
  ret
  .size emu_switch, .-emu_switch
)");
#else
#error "the CUDA emulator's fiber switch is written for x86-64 and aarch64"
#endif

namespace {

constexpr size_t kStackBytes = EMU_ASAN ? (512u << 10) : (128u << 10);
constexpr size_t kPage = 4096;
constexpr size_t kSharedGuard = 1024;   // poisoned bytes past the dynamic shared memory
constexpr int kMaxSharedOptIn = 232448;  // 227 KiB: sm_90's per-block opt-in maximum
constexpr int kDefaultShared = 48 * 1024;

enum class State : uint8_t { Ready, AtWarp, AtBarrier, Done };

struct Fiber {
  Thread t;
  void* sp = nullptr;
  unsigned char* stack = nullptr;  // lowest usable byte (a guard page lies below)
  State state = State::Done;
  // The warp collective this lane waits at.
  const char* site = nullptr;
  Collective kind = kSyncWarp;
  unsigned mask = 0;
  int param = 0, width = 32;
  uint64_t value = 0, result = 0;
  const void* xin = nullptr;  // kExchange: this lane's bytes, and where all lanes' go
  void* xout = nullptr;
  size_t xbytes = 0;
  struct Copy {
    void* dst;
    const void* src;
    size_t bytes;
    int group;
  };
  std::vector<Copy> copies;  // cp.async not yet waited for
  int committed = 0;
};

struct Warp {
  unsigned exists = 0, waiting = 0, done = 0;
};

// Everything about the launch in progress (one at a time).
struct Run {
  std::vector<Fiber> fibers;
  std::vector<Warp> warps;
  std::vector<int> order;
  void* sched_sp = nullptr;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  int live = 0, at_barrier = 0;
  const char* barrier_site = nullptr;
  uint64_t barriers = 0, serial = 0;
  bool failed = false;
  const char* kernel = "";
#if EMU_ASAN
  const void* sched_stack_bottom = nullptr;
  size_t sched_stack_size = 0;
#endif
};

Run g_run;
int g_order = 0;  // 0 forward, 1 reverse, 2 random
uint64_t g_seed = 1;
std::mt19937_64 g_rng(1);
cudaError_t g_error = cudaSuccess;
std::string g_message;
std::map<const void*, int> g_max_shared;
uint64_t g_launches = 0, g_blocks = 0, g_switches = 0;

std::vector<unsigned char*> g_stacks;
unsigned char* g_shared = nullptr;
size_t g_shared_cap = 0;

unsigned char* stack_for(size_t i) {
  while (g_stacks.size() <= i) {
    void* m = mmap(nullptr, kStackBytes + kPage, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) {
      std::perror("emu: mmap");
      std::abort();
    }
    mprotect(m, kPage, PROT_NONE);  // stack overflow faults instead of corrupting
    g_stacks.push_back(static_cast<unsigned char*>(m) + kPage);
  }
  return g_stacks[i];
}

// Fiber -> scheduler. (Under ASan each switch is announced, so it tracks the stacks.)
void yield_to_scheduler(bool exiting = false) {
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  ++g_switches;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(exiting ? nullptr : &fake, g_run.sched_stack_bottom,
                                 g_run.sched_stack_size);
  emu_switch(&f.sp, g_run.sched_sp);
  __sanitizer_finish_switch_fiber(fake, &g_run.sched_stack_bottom, &g_run.sched_stack_size);
#else
  (void)exiting;
  emu_switch(&f.sp, g_run.sched_sp);
#endif
}

[[noreturn]] void fiber_entry() {
#if EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &g_run.sched_stack_bottom, &g_run.sched_stack_size);
#endif
  g_run.body(g_run.ctx);
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  f.state = State::Done;
  --g_run.live;
  Warp& w = g_run.warps[size_t(f.t.warp)];
  w.done |= 1u << f.t.lane;
  // A barrier the others wait at can no longer complete: report it at the deadlock check.
  yield_to_scheduler(true);
  std::abort();  // never resumed
}

void start_fiber(Fiber& f, size_t i) {
  f.stack = stack_for(i);
  f.copies.clear();
  f.committed = 0;
#if EMU_ASAN
  __asan_unpoison_memory_region(f.stack, kStackBytes);  // frames of an aborted launch
#endif
  // Top of stack: a zero return address, then fiber_entry for emu_switch's `ret`, then the
  // callee-saved registers it pops (zeros). At fiber_entry, rsp + 8 is 16-byte aligned.
  uintptr_t top = (reinterpret_cast<uintptr_t>(f.stack) + kStackBytes) & ~uintptr_t(15);
  void** sp = reinterpret_cast<void**>(top);
#if defined(__x86_64__)
  *--sp = nullptr;
  *--sp = reinterpret_cast<void*>(&fiber_entry);
  for (int r = 0; r < 6; ++r) *--sp = nullptr;
#else
  sp -= 22;  // 176 bytes of saved registers; x30 (the link register) at offset 88
  std::memset(sp, 0, 176);
  sp[11] = reinterpret_cast<void*>(&fiber_entry);
#endif
  f.sp = sp;
  f.state = State::Ready;
}

// Scheduler -> fiber, until it blocks or exits.
void resume(Fiber& f) {
  g_thread = &f.t;
  ++g_switches;
#if EMU_ASAN
  void* fake = nullptr;
  __sanitizer_start_switch_fiber(&fake, f.stack, kStackBytes);
  emu_switch(&g_run.sched_sp, f.sp);
  __sanitizer_finish_switch_fiber(fake, nullptr, nullptr);
#else
  emu_switch(&g_run.sched_sp, f.sp);
#endif
}

std::string where(const Fiber& f) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "thread (%u,%u,%u) of block (%u,%u,%u)", f.t.idx.x, f.t.idx.y,
                f.t.idx.z, g_block_idx.x, g_block_idx.y, g_block_idx.z);
  return buf;
}

bool same_site(const char* a, const char* b) { return a == b || std::strcmp(a, b) == 0; }

const char* kind_name(Collective k) {
  static const char* names[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                "__shfl_xor_sync", "__any_sync", "__all_sync", "__ballot_sync",
                                "__syncwarp", "a warp-wide matrix instruction"};
  return names[k];
}

[[noreturn]] void fail_fiber(const std::string& msg) {
  if (!g_run.failed) {
    g_run.failed = true;
    g_error = cudaErrorLaunchFailure;
    g_message = "CUDA emulator: " + std::string(g_run.kernel) + ": " + msg;
  }
  yield_to_scheduler();
  std::abort();  // an aborted launch never resumes its fibers
}

// The last lane of a collective has arrived: compute every lane's result, wake them.
void complete_collective(Warp& w, const Fiber& me) {
  const int base = me.t.warp * 32;
  uint64_t any = 0, all = 1, ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if (!(me.mask >> l & 1u)) continue;
    const Fiber& o = g_run.fibers[size_t(base + l)];
    if (o.mask != me.mask || o.kind != me.kind || !same_site(o.site, me.site))
      fail_fiber("warp divergence: lane " + std::to_string(me.t.lane) + " is at " +
                 kind_name(me.kind) + " (" + me.site + ") with mask " + std::to_string(me.mask) +
                 " but lane " + std::to_string(l) + " is at " + kind_name(o.kind) + " (" +
                 o.site + ") with mask " + std::to_string(o.mask) + "; " + where(me));
    if (o.xbytes != me.xbytes)
      fail_fiber("warp exchange of " + std::to_string(me.xbytes) + " bytes but lane " +
                 std::to_string(l) + " gives " + std::to_string(o.xbytes) + "; " + where(me));
    any |= o.value & 1;
    all &= o.value & 1;
    ballot |= (o.value & 1) << l;
  }
  for (int l = 0; l < 32; ++l) {
    if (!(me.mask >> l & 1u)) continue;
    Fiber& o = g_run.fibers[size_t(base + l)];
    const int w0 = l & ~(o.width - 1);
    int src = l;
    switch (o.kind) {
      case kShflIdx: src = w0 + (o.param & (o.width - 1)); break;
      case kShflUp: src = l - o.param >= w0 ? l - o.param : l; break;
      case kShflDown: src = l + o.param < w0 + o.width ? l + o.param : l; break;
      case kShflXor: src = (l ^ o.param) < w0 + o.width && (l ^ o.param) >= w0 ? l ^ o.param : l; break;
      default: break;
    }
    if (o.kind <= kShflXor && !(me.mask >> src & 1u))
      fail_fiber("lane " + std::to_string(l) + "'s " + kind_name(o.kind) + " (" + o.site +
                 ") reads lane " + std::to_string(src) + ", which is not in the mask " +
                 std::to_string(me.mask) + " (undefined in CUDA); " + where(me));
    switch (o.kind) {
      case kAny: o.result = any; break;
      case kAll: o.result = all; break;
      case kBallot: o.result = ballot; break;
      case kSyncWarp: o.result = 0; break;
      case kExchange:
        for (int src_lane = 0; src_lane < 32; ++src_lane)
          if (me.mask >> src_lane & 1u)
            std::memcpy(static_cast<char*>(o.xout) + size_t(src_lane) * o.xbytes,
                        g_run.fibers[size_t(base + src_lane)].xin, o.xbytes);
        break;
      default: o.result = g_run.fibers[size_t(base + src)].value;
    }
    o.state = State::Ready;
  }
  w.waiting &= ~me.mask;
}

}  // namespace

Thread* g_thread = nullptr;
uint3 g_block_idx{0, 0, 0};
dim3 g_block_dim, g_grid_dim;
unsigned char* g_dynamic_shared = nullptr;

void fail(const char* fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  fail_fiber(std::string(buf) + "; " + where(g_run.fibers[size_t(g_thread->tid)]));
}

uint64_t barrier_count() { return g_run.barriers; }
uint64_t block_serial() { return g_run.serial; }

unsigned activemask() {
  const Warp& w = g_run.warps[size_t(g_thread->warp)];
  return w.exists & ~w.done;
}

uint64_t warp_collective(const char* site, Collective kind, unsigned mask, uint64_t value,
                         int param, int width) {
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  Warp& w = g_run.warps[size_t(f.t.warp)];
  const unsigned me = 1u << f.t.lane;
  if (!(mask & me))
    fail(("%s (" + std::string(site) + ") with mask %#x, which does not name the calling lane %d").c_str(),
         kind_name(kind), mask, f.t.lane);
  if (mask & ~w.exists)
    fail(("%s (" + std::string(site) + ") with mask %#x names lanes this warp does not have (%#x)").c_str(),
         kind_name(kind), mask, w.exists);
  if (width < 1 || width > 32 || (width & (width - 1)))
    fail("%s: width %d is not a power of two <= 32", kind_name(kind), width);
  if (mask & w.done)
    fail(("%s (" + std::string(site) + ") with mask %#x names lanes that have exited (%#x)").c_str(),
         kind_name(kind), mask, mask & w.done);
  f.site = site, f.kind = kind, f.mask = mask, f.value = value, f.param = param, f.width = width;
  w.waiting |= me;
  if ((w.waiting & mask) == mask) {
    complete_collective(w, f);
  } else {
    f.state = State::AtWarp;
    yield_to_scheduler();
  }
  return f.result;
}

void warp_exchange(const char* site, unsigned mask, const void* mine, void* all, size_t bytes) {
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  f.xin = mine, f.xout = all, f.xbytes = bytes;
  warp_collective(site, kExchange, mask, 0, 0, 32);
  f.xbytes = 0;
}

void cp_async(void* dst, const void* src, size_t bytes) {
  if ((reinterpret_cast<uintptr_t>(dst) | reinterpret_cast<uintptr_t>(src)) % bytes)
    fail("cp.async of %zu bytes needs both addresses %zu-byte aligned", bytes, bytes);
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  f.copies.push_back(Fiber::Copy{dst, src, bytes, f.committed});
}

void cp_async_commit() { ++g_run.fibers[size_t(g_thread->tid)].committed; }

void cp_async_wait(int n) {
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  size_t kept = 0;
  for (const Fiber::Copy& c : f.copies) {
    if (c.group < f.committed - n) std::memcpy(c.dst, c.src, c.bytes);
    else f.copies[kept++] = c;
  }
  f.copies.resize(kept);
}

void syncthreads(const char* site) {
  Fiber& f = g_run.fibers[size_t(g_thread->tid)];
  if (g_run.at_barrier == 0) {
    g_run.barrier_site = site;
  } else if (!same_site(site, g_run.barrier_site)) {
    fail(("__syncthreads divergence: this thread is at %s while others wait at " +
          std::string(g_run.barrier_site)).c_str(), site);
  }
  for (unsigned w = g_run.warps[size_t(f.t.warp)].waiting; w; w &= w - 1) {
    const Fiber& o = g_run.fibers[size_t(f.t.warp * 32 + __builtin_ctz(w))];
    if (o.mask >> f.t.lane & 1u)
      fail(("__syncthreads (%s) while lane %d waits for this lane at %s (" + std::string(o.site) +
            ")").c_str(), site, o.t.lane, kind_name(o.kind));
  }
  if (++g_run.at_barrier == g_run.live) {
    if (g_run.live != int(g_run.fibers.size()))
      fail("__syncthreads (%s) reached by %d threads while %d have exited (CUDA requires "
           "all threads of the block)", site, g_run.live, int(g_run.fibers.size()) - g_run.live);
    g_run.at_barrier = 0;
    ++g_run.barriers;
    for (Fiber& o : g_run.fibers)
      if (o.state == State::AtBarrier) o.state = State::Ready;
  } else {
    f.state = State::AtBarrier;
    yield_to_scheduler();
  }
}

namespace {

// Why no thread can run: the first waiting thread and what it waits for.
std::string deadlock_report() {
  std::string s = "deadlock: no thread can proceed;";
  int shown = 0;
  for (const Fiber& f : g_run.fibers) {
    if (f.state == State::Done || shown >= 3) continue;
    ++shown;
    s += " " + where(f) + " waits at " +
         (f.state == State::AtBarrier ? std::string("__syncthreads (") + g_run.barrier_site + ")"
                                      : std::string(kind_name(f.kind)) + " (" + f.site + ") mask " +
                                            std::to_string(f.mask));
    s += ";";
  }
  if (g_run.live < int(g_run.fibers.size()))
    s += " " + std::to_string(int(g_run.fibers.size()) - g_run.live) + " threads have exited";
  return s;
}

void poison_shared(size_t dyn_bytes) {
#if EMU_ASAN
  // The section holds ASan's redzones between variables: write it uninstrumented.
  for (volatile unsigned char* p = __start_emu_shared; p < __stop_emu_shared; ++p) *p = 0xff;
#else
  if (__start_emu_shared) std::memset(__start_emu_shared, 0xff, size_t(__stop_emu_shared - __start_emu_shared));
#endif
  std::memset(g_shared, 0xff, dyn_bytes + (EMU_ASAN ? 0 : kSharedGuard));
}

bool guard_intact(size_t dyn_bytes) {
  if (EMU_ASAN) return true;
  for (size_t i = 0; i < kSharedGuard; ++i)
    if (g_shared[dyn_bytes + i] != 0xff) return false;
  return true;
}

void run_block(const LaunchConfig& cfg) {
  Run& r = g_run;
  ++r.serial;
  ++g_blocks;
  r.live = int(r.fibers.size());
  r.at_barrier = 0;
  r.barriers = 0;
  for (Warp& w : r.warps) w.waiting = w.done = 0;
  poison_shared(cfg.shared_bytes);
  for (size_t i = 0; i < r.fibers.size(); ++i) start_fiber(r.fibers[i], i);
  while (r.live > 0) {
    if (g_order == 2) std::shuffle(r.order.begin(), r.order.end(), g_rng);
    bool progress = false;
    for (int i : r.order) {
      Fiber& f = r.fibers[size_t(i)];
      if (f.state != State::Ready) continue;
      progress = true;
      resume(f);
      if (r.failed) return;
    }
    if (!progress) {
      r.failed = true;
      g_error = cudaErrorLaunchFailure;
      g_message = "CUDA emulator: " + std::string(r.kernel) + ": " + deadlock_report();
      return;
    }
  }
  if (!guard_intact(cfg.shared_bytes)) {
    r.failed = true;
    g_error = cudaErrorLaunchFailure;
    g_message = "CUDA emulator: " + std::string(r.kernel) + ": a thread of block (" +
                std::to_string(g_block_idx.x) + "," + std::to_string(g_block_idx.y) + "," +
                std::to_string(g_block_idx.z) + ") wrote past the end of dynamic shared memory (" +
                std::to_string(cfg.shared_bytes) + " bytes)";
  }
}

cudaError_t config_error(const LaunchConfig& cfg, cudaError_t e, const std::string& why) {
  g_error = e;
  g_message = "CUDA emulator: launch of " + std::string(cfg.name) + ": " + why;
  return e;
}

}  // namespace

void run_launch(const LaunchConfig& cfg, void (*body)(void*), void* ctx) {
  if (g_error != cudaSuccess) return;  // an unread earlier error: CUDA would not run either
  const dim3 g = cfg.grid, b = cfg.block;
  const uint64_t threads = uint64_t(b.x) * b.y * b.z, blocks = uint64_t(g.x) * g.y * g.z;
  if (threads == 0 || threads > 1024 || b.z > 64)
    return void(config_error(cfg, cudaErrorInvalidConfiguration,
                             "block " + std::to_string(b.x) + "x" + std::to_string(b.y) + "x" +
                                 std::to_string(b.z) + " (at most 1024 threads, z <= 64)"));
  if (blocks == 0 || g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    return void(config_error(cfg, cudaErrorInvalidConfiguration,
                             "grid " + std::to_string(g.x) + "x" + std::to_string(g.y) + "x" +
                                 std::to_string(g.z) + " (no empty grid; y, z <= 65535)"));
  const auto opt = g_max_shared.find(cfg.kernel);
  const size_t limit = opt != g_max_shared.end() ? size_t(opt->second) : kDefaultShared;
  if (cfg.shared_bytes > limit)
    return void(config_error(cfg, cudaErrorInvalidValue,
                             std::to_string(cfg.shared_bytes) + " bytes of dynamic shared memory, " +
                                 "more than the " + std::to_string(limit) +
                                 " allowed (cudaFuncSetAttribute raises the 48 KiB default)"));
  ++g_launches;
  Run& r = g_run;
  r.kernel = cfg.name;
  r.body = body;
  r.ctx = ctx;
  r.failed = false;
  r.fibers.assign(threads, Fiber{});
  r.warps.assign((threads + 31) / 32, Warp{});
  for (uint32_t i = 0; i < threads; ++i) {
    Thread& t = r.fibers[i].t;
    t.idx = uint3{i % b.x, i / b.x % b.y, i / (b.x * b.y)};
    t.tid = int(i), t.lane = int(i % 32), t.warp = int(i / 32);
    r.warps[i / 32].exists |= 1u << (i % 32);
  }
  r.order.resize(threads);
  std::iota(r.order.begin(), r.order.end(), 0);
  if (g_order == 1) std::reverse(r.order.begin(), r.order.end());
  const size_t need = cfg.shared_bytes + kSharedGuard;
  if (EMU_ASAN || need > g_shared_cap) {
    std::free(g_shared);
    // Under ASan exactly the requested bytes, so an out-of-bounds access is reported.
    g_shared = static_cast<unsigned char*>(std::malloc(EMU_ASAN ? std::max<size_t>(cfg.shared_bytes, 1) : need));
    g_shared_cap = EMU_ASAN ? 0 : need;
  }
  g_dynamic_shared = g_shared;
  g_block_dim = b;
  g_grid_dim = g;
  std::vector<uint64_t> block_order(blocks);
  std::iota(block_order.begin(), block_order.end(), 0);
  if (g_order == 1) std::reverse(block_order.begin(), block_order.end());
  if (g_order == 2) std::shuffle(block_order.begin(), block_order.end(), g_rng);
  for (uint64_t id : block_order) {
    g_block_idx = uint3{unsigned(id % g.x), unsigned(id / g.x % g.y), unsigned(id / (uint64_t(g.x) * g.y))};
    run_block(cfg);
    if (r.failed) break;
  }
  g_thread = nullptr;
}

cudaError_t take_error() {
  const cudaError_t e = g_error;
  g_error = cudaSuccess;
  return e;
}
cudaError_t peek_error() { return g_error; }

const char* error_string(cudaError_t e) {
  static std::string last;
  if (e == cudaSuccess) return "no error";
  if (!g_message.empty()) {
    last = g_message;
    g_message.clear();
    return last.c_str();
  }
  switch (e) {
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    default: return "unspecified launch failure";
  }
}

cudaError_t set_max_dynamic_shared(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > kMaxSharedOptIn) return cudaErrorInvalidValue;
  g_max_shared[kernel] = bytes;
  return cudaSuccess;
}

}  // namespace emu

// ---- control from the test (ctypes) --------------------------------------------------
extern "C" {
// order: 0 forward, 1 reverse, 2 random (seeded) for blocks and for threads in a block.
__attribute__((visibility("default"))) void emu_set_order(int order, unsigned long long seed) {
  emu::g_order = order;
  emu::g_seed = seed;
  emu::g_rng.seed(seed);
}
// launches, blocks and fiber switches since the library loaded.
__attribute__((visibility("default"))) void emu_stats(unsigned long long* out3) {
  out3[0] = emu::g_launches, out3[1] = emu::g_blocks, out3[2] = emu::g_switches;
}
}
