// Bodies of the hot fp32 loops declared in fp32_kernels.h. No include guard and
// no namespace: fp32_kernels.cpp includes this file once per instruction set,
// after vec.h, inside that set's namespace and `#pragma GCC target` region.
// (GCC's target_clones would be simpler, but it scalarizes vector compares.)

constexpr float kNegInf = -std::numeric_limits<float>::infinity();
static_assert(kGemmNR == 2 * kLanes, "micro-tile is two vectors wide");
static_assert(kEntropyLanes == kLanes, "entropy state is one vector per field");

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
#pragma GCC unroll 14
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

float dot(const float* a, const float* b, int64_t n) {
  vf acc0 = {}, acc1 = {};
  int64_t i = 0;
  for (; i + 2 * kLanes <= n; i += 2 * kLanes) {  // two accumulators hide the FMA latency
    acc0 += vload(a + i) * vload(b + i);
    acc1 += vload(a + i + kLanes) * vload(b + i + kLanes);
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += vload(a + i) * vload(b + i);
  if (i < n) acc1 += vload_partial(a + i, n - i, 0.f) * vload_partial(b + i, n - i, 0.f);
  return hsum(acc0 + acc1);
}

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

void sum_probs(const float* x, int64_t n, float scale, float lse, float* acc) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) vstore(acc + i, vload(acc + i) + vexp(vload(x + i) * scale - lse));
  for (; i < n; ++i) acc[i] += std::exp(x[i] * scale - lse);
}

void max_log_probs(const float* x, int64_t n, float scale, float lse, float* acc) {
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vf a = vload(acc + i), y = vload(x + i) * scale - lse;
    const vf m = a > y ? a : y;
    vstore(acc + i, a == a ? m : a);  // keep NaN
  }
  for (; i < n; ++i) {
    const float y = x[i] * scale - lse;
    if (acc[i] == acc[i] && !(acc[i] > y)) acc[i] = y;
  }
}

// One vector of y = logits / temperature into the lane-wise entropy state.
inline void entropy_step(vf y, vf& m, vf& s, vf& t, vi& nan) {
  const vf ninf = vsplat(kNegInf);
  nan |= y != y;
  y = y == y ? y : ninf;  // NaN is reported through EntropyState::nan
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
}

void entropy_update(const float* x, int64_t n, float temperature, EntropyState* st) {
  vf m = vload(st->m), s = vload(st->s), t = vload(st->t);
  vi nan = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) entropy_step(vload(x + i) / temperature, m, s, t, nan);
  if (i < n) entropy_step(vload_partial(x + i, n - i, kNegInf) / temperature, m, s, t, nan);
  vstore(st->m, m);
  vstore(st->s, s);
  vstore(st->t, t);
  for (int k = 0; k < kLanes; ++k) st->nan = st->nan || nan[k] != 0;
}
