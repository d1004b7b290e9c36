#include "fp32_kernels.h"

#include <cmath>
#include <limits>

#include "vec.h"

// One binary runs on any x86-64 CPU; the loader picks the widest variant.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define ADAPTTOKEN_MULTIVERSION \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define ADAPTTOKEN_MULTIVERSION
#endif

namespace adapttoken::cpu {

namespace {
constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kGemmNR == 2 * kLanes, "micro-tile is two vectors wide");
}  // namespace

ADAPTTOKEN_MULTIVERSION
void gemm_nt(const float* a, const float* bt, float* c, int64_t rows, int64_t cols,
             int64_t depth) {
  for (int64_t j0 = 0; j0 < cols; j0 += kGemmNR) {
    for (int64_t r0 = 0; r0 < rows; r0 += kGemmMR) {
      vf acc[kGemmMR][2] = {};
      const float* ar = a + r0 * depth;
      const float* b = bt + j0;
      for (int64_t d = 0; d < depth; ++d) {
        const vf b0 = vload(b + d * cols);
        const vf b1 = vload(b + d * cols + kLanes);
#pragma GCC unroll 8
        for (int64_t i = 0; i < kGemmMR; ++i) {
          const float av = ar[i * depth + d];
          acc[i][0] += av * b0;
          acc[i][1] += av * b1;
        }
      }
      for (int64_t i = 0; i < kGemmMR; ++i) {
        vstore(c + (r0 + i) * cols + j0, acc[i][0]);
        vstore(c + (r0 + i) * cols + j0 + kLanes, acc[i][1]);
      }
    }
  }
}

ADAPTTOKEN_MULTIVERSION
void online_lse_update(const float* x, int64_t n, float scale, float* m, float* l) {
  if (n <= 0) return;
  vf vm = vsplat(kNegInf);
  vf vsum = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vm = vmax(vm, vload(x + i) * scale);
  if (i < n) vm = vmax(vm, vload_partial(x + i, n - i, kNegInf) * scale);
  const float m_new = std::fmax(*m, hmax(vm));
  if (m_new == kNegInf) return;
  const vf mv = vsplat(m_new);
  for (i = 0; i + kLanes <= n; i += kLanes) vsum += vexp(vload(x + i) * scale - mv);
  if (i < n) {
    const vf y = vload_partial(x + i, n - i, kNegInf) * scale;
    vsum += y == kNegInf ? vf{} : vexp(y - mv);
  }
  *l = *l * std::exp(*m - m_new) + hsum(vsum);
  *m = m_new;
}

ADAPTTOKEN_MULTIVERSION
void accumulate_probs(const float* x, int64_t n, float scale, float lse, bool sum,
                      float* acc) {
  const vf lv = vsplat(lse);
  int64_t i = 0;
  auto step = [&](vf y, float* dst, int64_t cnt) {
    const vf p = vexp(y * scale - lv);
    vf a = cnt == kLanes ? vload(dst) : vload_partial(dst, cnt, 0.f);
    if (sum) {
      a += p;
    } else {
      a = (a > p) | (a != a) ? a : p;  // max that keeps NaN
    }
    if (cnt == kLanes) {
      vstore(dst, a);
    } else {
      for (int64_t k = 0; k < cnt; ++k) dst[k] = a[k];
    }
  };
  for (; i + kLanes <= n; i += kLanes) step(vload(x + i), acc + i, kLanes);
  if (i < n) step(vload_partial(x + i, n - i, 0.f), acc + i, n - i);
}

void entropy_init(EntropyState* st) {
  for (int i = 0; i < kLanes; ++i) {
    st->m[i] = kNegInf;
    st->s[i] = 0.f;
    st->t[i] = 0.f;
  }
  st->nan = false;
}

ADAPTTOKEN_MULTIVERSION
void entropy_update(const float* x, int64_t n, float temperature, EntropyState* st) {
  vf m = vload(st->m), s = vload(st->s), t = vload(st->t);
  vi nan = {};
  const vf ninf = vsplat(kNegInf);
  auto step = [&](vf y) {
    y = y / temperature;
    nan |= y != y;
    y = y != y ? ninf : y;  // NaN is reported through st->nan
    const vf m_new = vmax(m, y);
    // Rescale the old terms to the new max: t' = a (t + (m - m') s), s' = a s.
    // Lanes still at -inf hold s = t = 0 and are left untouched.
    const vf a = m == ninf ? vf{} : vexp(m - m_new);
    const vf dm = m == ninf ? vf{} : m - m_new;
    t = a * (t + dm * s);
    s = a * s;
    const vf d = y == ninf ? vf{} : y - m_new;
    const vf e = y == ninf ? vf{} : vexp(d);
    s += e;
    t += e * d;
    m = m_new;
  };
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) step(vload(x + i));
  if (i < n) step(vload_partial(x + i, n - i, kNegInf));
  vstore(st->m, m);
  vstore(st->s, s);
  vstore(st->t, t);
  for (int k = 0; k < kLanes; ++k) st->nan = st->nan || nan[k] != 0;
}

float entropy_finish(const EntropyState& st) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  float m = kNegInf;
  for (int k = 0; k < kLanes; ++k) m = std::fmax(m, st.m[k]);
  if (st.nan || m == kNegInf || std::isinf(m)) return nan;
  double s = 0.0, t = 0.0;
  for (int k = 0; k < kLanes; ++k) {
    if (st.m[k] == kNegInf) continue;
    const double a = std::exp(double(st.m[k]) - m);
    s += a * st.s[k];
    t += a * (st.t[k] + (double(st.m[k]) - m) * st.s[k]);
  }
  return float(std::log(s) - t / s);
}

}  // namespace adapttoken::cpu
