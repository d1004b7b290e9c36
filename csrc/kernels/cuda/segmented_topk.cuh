// segmented_topk on CUDA (method.md step 6): the k[g] largest scores of each
// segment, ties to the lower index, NaN below everything (as the CPU kernel).
//
// One CTA per segment. A 4-pass 8-bit radix select over the orderable score bits
// finds the k-th largest key T and how many keys exceed it; one more pass compacts,
// in index order, every key > T and the lowest-index keys == T that fill k. With
// sort_by_index false, a segmented radix sort (CUB) then orders each segment by
// descending score (ties: lower index first). All sizes come from device data; the
// caller only needs sum(k) on the host to size the outputs.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace adapttoken::cuda {

struct SegmentedTopkParams {
  const float* scores;   // device [N], element stride scores_stride
  int64_t scores_stride;
  const int64_t* offsets;  // device [G + 1], validated by the caller
  const int64_t* k;        // device [G]
  int64_t G;
  int64_t total;           // sum(k), known on the host
  bool sort_by_index;
  float* values;           // device [total]
  int64_t* indices;        // device [total]
  void* workspace;         // device, segmented_topk_workspace_bytes(...) bytes
};

// With sort_by_index false, CUB's segmented sort takes int counts: at most this many
// selected items (total) and segments (G); segmented_topk refuses more.
constexpr int64_t kSegmentedSortMaxItems = 2147483647;

// Bytes of device workspace segmented_topk needs for these sizes.
size_t segmented_topk_workspace_bytes(int64_t G, int64_t total, bool sort_by_index);

// cudaErrorInvalidValue if !sort_by_index and total or G > kSegmentedSortMaxItems.
cudaError_t segmented_topk(const SegmentedTopkParams& p, cudaStream_t stream);

}  // namespace adapttoken::cuda
