// local_entropy on the CPU (EntropySelect's local entropy, README "EntropySelect" step 1):
// for each visual token, the normalised Shannon entropy of the softmax of its cosine
// similarities to the other tokens of its k x k spatial window in the same frame.
// Each thread walks consecutive (frame, row) pairs with the window's k rows converted to
// fp32 in a ring buffer (each row converted and its norms taken once per thread), and
// every token of the row takes its dot products with its neighbours in place (no
// [N, k^2, C] gather); the extra memory is k * W * C floats per thread.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common.h"
#include "fp32_kernels.h"

namespace adapttoken::cpu {

struct LocalEntropyParams {
  const void* tokens;  // [T, H, W, C], element strides
  int64_t T, H, W, C;
  int64_t stride[4];
  int64_t window;      // k, odd, >= 3
  float temperature;
  float* out;          // [T, H, W], dense
};

// e = H(softmax(y)) / ln n over y[0..n), in double; 0 when n < 2; NaN propagates.
inline float normalised_entropy(const double* y, int64_t n) {
  if (n < 2) return 0.f;
  double m = y[0];
  for (int64_t j = 1; j < n; ++j) m = (y[j] > m || y[j] != y[j]) ? y[j] : m;
  if (m != m) return NAN;
  double s = 0.0, t = 0.0;
  for (int64_t j = 0; j < n; ++j) {
    const double d = y[j] - m, e = std::exp(d);
    s += e;
    t += e * d;
  }
  return float((std::log(s) - t / s) / std::log(double(n)));
}

template <typename scalar_t, typename ParallelFor>
void local_entropy(const LocalEntropyParams& p, ParallelFor&& parallel_for) {
  const scalar_t* x = static_cast<const scalar_t*>(p.tokens);
  const int64_t r = p.window / 2, W = p.W, C = p.C;
  const double inv_t = 1.0 / double(p.temperature);
  parallel_for(0, p.T * p.H, 1, [&](int64_t begin, int64_t end) {
    const int64_t k = p.window;
    std::vector<float> rows(size_t(k * W * C));  // ring: frame row hh in slot hh % k
    std::vector<float> inv_norm(size_t(k * W));
    std::vector<int64_t> held(size_t(k), -1);    // t * H + hh held by each slot
    std::vector<double> y(size_t(k * k));
    for (int64_t th = begin; th < end; ++th) {
      const int64_t t = th / p.H, h = th % p.H;
      const int64_t h0 = std::max<int64_t>(0, h - r), h1 = std::min(p.H, h + r + 1);
      for (int64_t hh = h0; hh < h1; ++hh) {
        const int64_t slot = hh % k;
        if (held[size_t(slot)] == t * p.H + hh) continue;
        held[size_t(slot)] = t * p.H + hh;
        for (int64_t w = 0; w < W; ++w) {
          const scalar_t* src = x + t * p.stride[0] + hh * p.stride[1] + w * p.stride[2];
          float* dst = rows.data() + (slot * W + w) * C;
          for (int64_t c = 0; c < C; ++c) dst[c] = to_float(src[c * p.stride[3]]);
          const float n2 = dot(dst, dst, C);  // a zero vector has cosine 0 with anything
          inv_norm[size_t(slot * W + w)] = n2 > 0.f ? 1.f / std::sqrt(n2) : 0.f;
        }
      }
      for (int64_t w = 0; w < W; ++w) {
        const int64_t i = (h % k) * W + w;
        const float* xi = rows.data() + i * C;
        int64_t n = 0;
        for (int64_t hh = h0; hh < h1; ++hh) {
          for (int64_t ww = std::max<int64_t>(0, w - r); ww < std::min(W, w + r + 1); ++ww) {
            const int64_t j = (hh % k) * W + ww;
            if (j == i) continue;
            const double cos = double(dot(xi, rows.data() + j * C, C)) * inv_norm[size_t(i)] *
                               inv_norm[size_t(j)];
            y[size_t(n++)] = cos * inv_t;
          }
        }
        p.out[th * W + w] = normalised_entropy(y.data(), n);
      }
    }
  });
}

}  // namespace adapttoken::cpu
