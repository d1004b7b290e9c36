// attention_scores on CUDA (method.md step 3): the attention probability each visual
// key receives from the text queries, reduced (max or mean) over query heads and
// used query rows, without building the [Hq, T, Lk] matrix.
//
// Pass 1: per (batch, head, used row), the log-sum-exp over the keys the row can see
// (causal: row i sits at key position Lk - Lq + i), split over keys so long
// sequences fill the GPU, then combined. Pass 2: per tile of 32 visual keys,
// exp(q.k * scale - lse) for every head sharing the tile's KV head and every used
// row, reduced in registers and shared memory, written once per key. GQA: query
// head h reads KV head h / (Hq / Hkv); each K tile is loaded once per KV head.
// This first version computes q.k on CUDA cores in fp32 (tensor cores: TODO).
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace adapttoken::cuda {

struct AttentionScoresParams {
  const void* query;  // [B, Hq, Lq, D], element strides q_stride
  const void* key;    // [B, Hkv, Lk, D], element strides k_stride
  float* out;         // device [B, visual_end - visual_start], dense
  int64_t B, Hq, Hkv, Lq, Lk, D;
  int64_t q_stride[4], k_stride[4];
  int64_t query_start, visual_start, visual_end;
  float scale;
  bool mean;
  void* workspace;    // device, attention_scores_workspace_bytes(...) bytes
};

constexpr int64_t kAttentionMaxHeadDim = 256;

size_t attention_scores_workspace_bytes(const AttentionScoresParams& p);

// scalar_t: float, bf16_t or fp16_t (../common.h). Enqueues on `stream`.
template <typename scalar_t>
cudaError_t attention_scores(const AttentionScoresParams& p, cudaStream_t stream);

}  // namespace adapttoken::cuda
