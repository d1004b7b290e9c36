// softmax_entropy on CUDA (method.md step 4): entropy in nats of
// softmax(logits / temperature) per row, one pass with the online recurrence.
// Each thread keeps (m, s, t): the running max m of y = x / T, s = sum exp(y - m)
// and t = sum exp(y - m) (y - m); then H = log s - t / s. One CTA per row; the
// thread states merge in a block reduction. Same semantics as the CPU kernel:
// -inf has probability 0; a row that is all -inf, or holds NaN or +inf, gives NaN.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adapttoken::cuda {

struct SoftmaxEntropyParams {
  const void* logits;    // [rows, V], element strides
  int64_t rows, V;
  int64_t row_stride, col_stride;
  const int64_t* index;  // optional device [K] column ids in [0, V); nullptr = all columns
  int64_t K;
  float temperature;
  float* out;            // device [rows]
};

// scalar_t: float, bf16_t or fp16_t (../common.h). Enqueues on `stream`.
template <typename scalar_t>
cudaError_t softmax_entropy(const SoftmaxEntropyParams& p, cudaStream_t stream);

}  // namespace adapttoken::cuda
