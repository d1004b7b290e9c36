// local_entropy on CUDA (EntropySelect's local entropy, README "EntropySelect" step 1):
// per visual token, the normalised entropy of softmax(cosine to its k x k window / T).
// One CTA per tile of kLocalEntropyTile tokens of one frame row. Channel chunks of the
// window's rows (k rows, tile + 2 r columns) are staged in shared memory as fp32; each
// thread owns some (token, neighbour) pairs and some cells' squared norms and
// accumulates their partial dot products in shared memory; one thread per token then
// forms the cosines, the softmax and the entropy. Same semantics as the CPU kernel.
// Not yet run on a GPU (compile-checked only).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

namespace adapttoken::cuda {

struct LocalEntropyParams {
  const void* tokens;  // device [T, H, W, C], element strides
  int64_t T, H, W, C;
  int64_t stride[4];
  int64_t window;      // k, odd, 3 <= k <= kLocalEntropyMaxWindow
  float temperature;
  float* out;          // device [T, H, W], dense
};

constexpr int64_t kLocalEntropyMaxWindow = 15;  // shared-memory bound (one channel per chunk)

// scalar_t: float, bf16_t or fp16_t (../common.h). Enqueues on `stream`.
template <typename scalar_t>
cudaError_t local_entropy(const LocalEntropyParams& p, cudaStream_t stream);

}  // namespace adapttoken::cuda
