// softmax_entropy on the CPU (method.md step 4): Shannon entropy in nats of
// softmax(logits / temperature) per row, in one pass with the online-softmax
// recurrence (running max, sum exp and sum exp * x), accumulated in fp32.
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common.h"
#include "fp32_kernels.h"

namespace adapttoken::cpu {

struct SoftmaxEntropyParams {
  const void* logits;    // [rows, V]: row stride and column stride in elements
  int64_t rows, V;
  int64_t row_stride, col_stride;
  const int64_t* index;  // optional [K] column ids in [0, V); nullptr = all columns
  int64_t K;
  float temperature;
  float* out;            // [rows]
};

template <typename scalar_t, typename ParallelFor>
void softmax_entropy(const SoftmaxEntropyParams& p, ParallelFor&& parallel_for) {
  constexpr int64_t kBlock = 1024;  // columns converted to fp32 per step
  const scalar_t* x = static_cast<const scalar_t*>(p.logits);
  const int64_t ncols = p.index ? p.K : p.V;
  parallel_for(0, p.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> buf(static_cast<size_t>(kBlock));
    EntropyState st;
    for (int64_t r = begin; r < end; ++r) {
      const scalar_t* row = x + r * p.row_stride;
      entropy_init(&st);
      for (int64_t c0 = 0; c0 < ncols; c0 += kBlock) {
        const int64_t n = std::min(kBlock, ncols - c0);
        for (int64_t c = 0; c < n; ++c) {
          const int64_t col = p.index ? p.index[c0 + c] : c0 + c;
          buf[c] = to_float(row[col * p.col_stride]);
        }
        entropy_update(buf.data(), n, p.temperature, &st);
      }
      p.out[r] = entropy_finish(st);
    }
  });
}

}  // namespace adapttoken::cpu
