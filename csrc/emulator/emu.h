// The device side of the CUDA SIMT emulator: what a kernel sees (threadIdx, __shared__,
// __syncthreads, warp shuffles and votes, atomics, math, __ldg) as plain C++17.
// Read csrc/emulator/README.md first. Every CUDA thread is a fiber; a fiber runs
// uninterrupted until it reaches a barrier or a warp collective, where it waits for
// the other threads that CUDA says must get there too. Errors (divergent barriers,
// deadlocks, bad masks) end the launch and surface through cudaGetLastError().
#pragma once

#define ADAPTTOKEN_CUDA_EMULATOR 1

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- declaration specifiers -------------------------------------------------------
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
// A __shared__ variable is a static in one section: blocks run one at a time, so a
// static is "per block", and the emulator fills the section with 0xff bytes (NaN as
// float, -1 as int) before each block, as shared memory starts undefined.
#define __shared__ __attribute__((section("emu_shared"))) static

struct uint3 { unsigned x, y, z; };
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) uint4 { unsigned x, y, z, w; };
struct alignas(16) int4 { int x, y, z, w; };
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) uint2 { unsigned x, y; };
struct alignas(8) float2 { float x, y; };
constexpr int warpSize = 32;

namespace emu {

// One CUDA thread (a fiber). Only the fields kernels read are public here.
struct Thread {
  uint3 idx;
  int tid, lane, warp;
};
extern Thread* g_thread;  // the fiber now running
extern uint3 g_block_idx;
extern dim3 g_block_dim, g_grid_dim;
extern unsigned char* g_dynamic_shared;

enum Collective : int {
  kShflIdx, kShflUp, kShflDown, kShflXor, kAny, kAll, kBallot, kSyncWarp, kExchange
};

// Blocks until every lane in `mask` reaches a collective of the same kind, mask and
// call site; returns this lane's result (shuffles: the source lane's value).
uint64_t warp_collective(const char* site, Collective kind, unsigned mask, uint64_t value,
                         int param, int width);
// A rendezvous like warp_collective in which every lane in `mask` receives every such
// lane's `bytes` bytes at all + lane * bytes: the data movement of mma.sync / ldmatrix.
void warp_exchange(const char* site, unsigned mask, const void* mine, void* all, size_t bytes);
// cp.async: a copy queued in this thread's open group, done when cp_async_wait(n) leaves
// at most n newer committed groups pending (so reading before the wait sees garbage).
void cp_async(void* shared_dst, const void* global_src, size_t bytes);
void cp_async_commit();
void cp_async_wait(int n);
void syncthreads(const char* site);  // block barrier
unsigned activemask();
// CUB stand-ins: the block's barrier count, and the id of the running block.
uint64_t barrier_count();
uint64_t block_serial();
[[noreturn]] void fail(const char* fmt, ...);  // ends the launch with this message

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable<T>::value, "shuffle of a type > 8 bytes");
  uint64_t b = 0;
  std::memcpy(&b, &v, sizeof v);
  return b;
}
template <typename T>
T from_bits(uint64_t b) {
  T v;
  std::memcpy(&v, &b, sizeof v);
  return v;
}
template <typename T>
T shfl(const char* site, Collective kind, unsigned mask, T v, int param, int width = 32) {
  return from_bits<T>(warp_collective(site, kind, mask, to_bits(v), param, width));
}
inline void syncwarp(const char* site, unsigned mask = 0xffffffffu) {
  warp_collective(site, kSyncWarp, mask, 0, 0, 32);
}
template <typename T>
T* dynamic_shared() {
  return reinterpret_cast<T*>(g_dynamic_shared);
}

}  // namespace emu

#define EMU_STR2(x) #x
#define EMU_STR(x) EMU_STR2(x)
#define EMU_SITE __FILE__ ":" EMU_STR(__LINE__)

#define threadIdx (::emu::g_thread->idx)
#define blockIdx (::emu::g_block_idx)
#define blockDim (::emu::g_block_dim)
#define gridDim (::emu::g_grid_dim)

#define __syncthreads() ::emu::syncthreads(EMU_SITE)
#define __syncwarp(...) ::emu::syncwarp(EMU_SITE __VA_OPT__(, ) __VA_ARGS__)
#define __shfl_sync(...) ::emu::shfl(EMU_SITE, ::emu::kShflIdx, __VA_ARGS__)
#define __shfl_up_sync(...) ::emu::shfl(EMU_SITE, ::emu::kShflUp, __VA_ARGS__)
#define __shfl_down_sync(...) ::emu::shfl(EMU_SITE, ::emu::kShflDown, __VA_ARGS__)
#define __shfl_xor_sync(...) ::emu::shfl(EMU_SITE, ::emu::kShflXor, __VA_ARGS__)
#define __any_sync(mask, pred) int(::emu::warp_collective(EMU_SITE, ::emu::kAny, mask, (pred) ? 1 : 0, 0, 32))
#define __all_sync(mask, pred) int(::emu::warp_collective(EMU_SITE, ::emu::kAll, mask, (pred) ? 1 : 0, 0, 32))
#define __ballot_sync(mask, pred) unsigned(::emu::warp_collective(EMU_SITE, ::emu::kBallot, mask, (pred) ? 1 : 0, 0, 32))
#define __activemask() ::emu::activemask()

// ---- memory ----------------------------------------------------------------------
// Fibers are not preempted, so an atomic is a plain read-modify-write.
template <typename T>
inline T __ldg(const T* p) { return *p; }
#define EMU_ATOMIC(name, expr)                                   \
  template <typename T>                                          \
  inline T name(T* p, T v) { const T old = *p; *p = (expr); return old; }
EMU_ATOMIC(atomicAdd, old + v)
EMU_ATOMIC(atomicSub, old - v)
EMU_ATOMIC(atomicMax, old < v ? v : old)
EMU_ATOMIC(atomicMin, v < old ? v : old)
EMU_ATOMIC(atomicExch, v)
EMU_ATOMIC(atomicOr, old | v)
EMU_ATOMIC(atomicAnd, old & v)
#undef EMU_ATOMIC
template <typename T>
inline T atomicCAS(T* p, T cmp, T v) { const T old = *p; if (old == cmp) *p = v; return old; }
inline void __threadfence() {}
inline void __threadfence_block() {}

// ---- math ------------------------------------------------------------------------
// Host libm stands in for CUDA's (CUDA's expf/logf are within 2 ulp; not bit-equal).
using std::ceil;
using std::floor;
inline float rsqrtf(float x) { return 1.f / std::sqrt(x); }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __saturatef(float x) { return x < 0.f ? 0.f : (x > 1.f ? 1.f : x); }
inline float __int_as_float(int x) { return emu::from_bits<float>(uint32_t(x)); }
inline int __float_as_int(float x) { return int(uint32_t(emu::to_bits(x))); }
inline float __uint_as_float(unsigned x) { return emu::from_bits<float>(x); }
inline unsigned __float_as_uint(float x) { return unsigned(emu::to_bits(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(unsigned(x)); }
// CUDA's overloaded min / max.
#define EMU_MINMAX(T)                                   \
  inline T min(T a, T b) { return b < a ? b : a; }      \
  inline T max(T a, T b) { return a < b ? b : a; }
EMU_MINMAX(int)
EMU_MINMAX(unsigned)
EMU_MINMAX(long)
EMU_MINMAX(unsigned long)
EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
EMU_MINMAX(float)
EMU_MINMAX(double)
#undef EMU_MINMAX

// ---- launches --------------------------------------------------------------------
struct CUstream_st;
typedef CUstream_st* cudaStream_t;

namespace emu {

struct LaunchConfig {
  dim3 grid, block;
  size_t shared_bytes;
  const void* kernel;
  const char* name;
};
// Runs every block of a launch; body(ctx) is each thread's work. Records an error
// (see cudaGetLastError) instead of throwing.
void run_launch(const LaunchConfig& cfg, void (*body)(void*), void* ctx);

template <typename... P>
struct Launcher {
  void (*kernel)(P...);
  LaunchConfig cfg;
  template <typename... A>
  void operator()(A&&... a) const {
    struct Ctx {
      void (*kernel)(P...);
      std::tuple<P...> args;  // converted as CUDA converts kernel arguments
    } ctx{kernel, std::tuple<P...>(std::forward<A>(a)...)};
    run_launch(cfg, [](void* c) {
      auto* x = static_cast<Ctx*>(c);
      std::tuple<P...> mine = x->args;  // each thread its own copy of the parameters
      std::apply(x->kernel, mine);
    }, &ctx);
  }
};

template <typename... P>
Launcher<P...> launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t shared_bytes,
                      cudaStream_t, const char* name) {
  return Launcher<P...>{kernel, LaunchConfig{grid, block, shared_bytes,
                                             reinterpret_cast<const void*>(kernel), name}};
}

}  // namespace emu
