#include "fp32_kernels.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

// The hot loops are compiled once per x86-64 level and picked at load time, so
// one binary runs everywhere and uses AVX-512 where the CPU has it.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ADAPTTOKEN_X86_DISPATCH 1
#endif

namespace adapttoken::cpu {

#ifdef ADAPTTOKEN_X86_DISPATCH
#pragma GCC push_options
#pragma GCC target("arch=x86-64-v4")
namespace v4 {
#include "vec.h"
#include "fp32_kernels_impl.h"
}  // namespace v4
#pragma GCC pop_options

#pragma GCC push_options
#pragma GCC target("arch=x86-64-v3")
namespace v3 {
#include "vec.h"
#include "fp32_kernels_impl.h"
}  // namespace v3
#pragma GCC pop_options
#endif

namespace base {
#include "vec.h"
#include "fp32_kernels_impl.h"
}  // namespace base

namespace {
enum class Isa { kBase, kV3, kV4 };
const Isa kIsa = [] {
#ifdef ADAPTTOKEN_X86_DISPATCH
  if (__builtin_cpu_supports("x86-64-v4")) return Isa::kV4;
  if (__builtin_cpu_supports("x86-64-v3")) return Isa::kV3;
#endif
  return Isa::kBase;
}();
}  // namespace

#ifdef ADAPTTOKEN_X86_DISPATCH
#define ADAPTTOKEN_DISPATCH(fn, ...)                    \
  switch (kIsa) {                                       \
    case Isa::kV4: return v4::fn(__VA_ARGS__);          \
    case Isa::kV3: return v3::fn(__VA_ARGS__);          \
    default: return base::fn(__VA_ARGS__);              \
  }
#else
#define ADAPTTOKEN_DISPATCH(fn, ...) return base::fn(__VA_ARGS__);
#endif

void gemm_nt(const float* a, const float* bt, float* c, int64_t rows, int64_t cols,
             int64_t depth) {
  ADAPTTOKEN_DISPATCH(gemm_nt, a, bt, c, rows, cols, depth)
}

float dot(const float* a, const float* b, int64_t n) { ADAPTTOKEN_DISPATCH(dot, a, b, n) }

void online_lse_update(const float* x, int64_t n, float scale, float* m, float* l) {
  ADAPTTOKEN_DISPATCH(online_lse_update, x, n, scale, m, l)
}

void sum_probs(const float* x, int64_t n, float scale, float lse, float* acc) {
  ADAPTTOKEN_DISPATCH(sum_probs, x, n, scale, lse, acc)
}

void max_log_probs(const float* x, int64_t n, float scale, float lse, float* acc) {
  ADAPTTOKEN_DISPATCH(max_log_probs, x, n, scale, lse, acc)
}

void entropy_update(const float* x, int64_t n, float temperature, EntropyState* st) {
  ADAPTTOKEN_DISPATCH(entropy_update, x, n, temperature, st)
}

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
}  // namespace

void entropy_init(EntropyState* st) {
  for (int i = 0; i < kEntropyLanes; ++i) {
    st->m[i] = kNegInf;
    st->s[i] = 0.f;
    st->t[i] = 0.f;
  }
  st->nan = false;
}

float entropy_finish(const EntropyState& st) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float m = kNegInf;
  for (int k = 0; k < kEntropyLanes; ++k) m = std::fmax(m, st.m[k]);
  if (st.nan || m == kNegInf || std::isinf(m)) return nan;
  double s = 0.0, t = 0.0;
  for (int k = 0; k < kEntropyLanes; ++k) {
    if (st.m[k] == kNegInf) continue;
    const double a = std::exp(double(st.m[k]) - m);
    s += a * st.s[k];
    t += a * (st.t[k] + (double(st.m[k]) - m) * st.s[k]);
  }
  return float(std::log(s) - t / s);
}

}  // namespace adapttoken::cpu
