#include <cub/block/block_scan.cuh>
#include <cub/device/device_segmented_radix_sort.cuh>

#include "common.cuh"
#include "segmented_topk.cuh"

namespace adapttoken::cuda {
namespace {

constexpr int kThreads = 512;
using BlockScan = cub::BlockScan<int, kThreads>;

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// out_offsets[g] = sum of k[0..g), one thread block (G is the number of groups: small).
__global__ void exclusive_scan_kernel(const int64_t* k, int64_t G, int64_t* out_offsets) {
  if (threadIdx.x == 0 && blockIdx.x == 0) {
    int64_t acc = 0;
    for (int64_t g = 0; g < G; ++g) {
      out_offsets[g] = acc;
      acc += k[g];
    }
    out_offsets[G] = acc;
  }
}

__global__ void __launch_bounds__(kThreads)
    select_kernel(SegmentedTopkParams p, const int64_t* out_offsets) {
  const int64_t g = blockIdx.x;
  const int64_t start = p.offsets[g], n = p.offsets[g + 1] - start, kk = p.k[g];
  if (kk == 0) return;
  auto key_at = [&](int64_t i) { return orderable_bits(__ldg(p.scores + (start + i) * p.scores_stride)); };

  // Radix select: find T, the kk-th largest key, 8 bits at a time from the top.
  __shared__ int64_t hist[256];
  __shared__ uint32_t s_prefix;
  __shared__ int64_t s_remaining;
  uint32_t prefix = 0, mask = 0;
  int64_t remaining = kk;  // how many of the keys matching prefix/mask are still to take
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < 256; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < n; i += kThreads) {
      const uint32_t key = key_at(i);
      if ((key & mask) == prefix) atomicAdd(reinterpret_cast<unsigned long long*>(&hist[(key >> shift) & 255]), 1ull);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int64_t above = 0;
      int b = 255;
      for (; b > 0 && above + hist[b] < remaining; --b) above += hist[b];
      s_prefix = prefix | (uint32_t(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 255u << shift;
  }
  const uint32_t T = prefix;  // keys > T are all taken; `remaining` keys == T, lowest index first

  // Compaction in index order.
  __shared__ typename BlockScan::TempStorage scan_storage;
  __shared__ int64_t s_taken, s_ties;
  if (threadIdx.x == 0) s_taken = s_ties = 0;
  __syncthreads();
  const int64_t out0 = out_offsets[g];
  for (int64_t c0 = 0; c0 < n; c0 += kThreads) {
    const int64_t i = c0 + threadIdx.x;
    const uint32_t key = i < n ? key_at(i) : 0u;
    const int tie = (i < n && key == T) ? 1 : 0;
    int tie_rank, tie_total;
    BlockScan(scan_storage).ExclusiveSum(tie, tie_rank, tie_total);
    __syncthreads();
    const int take = (i < n && key > T) || (tie && s_ties + tie_rank < remaining) ? 1 : 0;
    int pos, taken_total;
    BlockScan(scan_storage).ExclusiveSum(take, pos, taken_total);
    if (take) {
      p.values[out0 + s_taken + pos] = __ldg(p.scores + (start + i) * p.scores_stride);
      p.indices[out0 + s_taken + pos] = start + i;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      s_taken += taken_total;
      s_ties += tie_total;
    }
    __syncthreads();
  }
}

// Composite sort keys: larger = larger score, then lower index. select_kernel writes each
// segment in index order, so the output position i orders ties as the index does, and it
// fits the low 32 bits (total <= kSegmentedSortMaxItems) where an index above 2^32 would not.
__global__ void make_sort_keys(const float* values, int64_t total, uint64_t* keys) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total)
    keys[i] = (uint64_t(orderable_bits(values[i])) << 32) | uint64_t(0xffffffffu - uint32_t(i));
}

__global__ void gather_values(const float* scores, int64_t stride, const int64_t* indices,
                              int64_t total, float* values, int64_t* indices_out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < total) {
    indices_out[i] = indices[i];
    values[i] = scores[indices[i] * stride];
  }
}

struct Workspace {
  int64_t* out_offsets;
  uint64_t* keys_in;
  uint64_t* keys_out;
  int64_t* idx_out;
  void* cub_temp;
  size_t cub_bytes;
};

size_t cub_sort_bytes(int64_t G, int64_t total) {
  size_t bytes = 0;
  if (total > kSegmentedSortMaxItems || G > kSegmentedSortMaxItems) return 0;  // refused
  cub::DeviceSegmentedRadixSort::SortPairsDescending(
      nullptr, bytes, static_cast<const uint64_t*>(nullptr), static_cast<uint64_t*>(nullptr),
      static_cast<const int64_t*>(nullptr), static_cast<int64_t*>(nullptr), int(total), int(G),
      static_cast<const int64_t*>(nullptr), static_cast<const int64_t*>(nullptr));
  return bytes;
}

Workspace carve(void* base, int64_t G, int64_t total, bool sort_by_index) {
  char* p = static_cast<char*>(base);
  Workspace w{};
  w.out_offsets = reinterpret_cast<int64_t*>(p);
  p += align256(sizeof(int64_t) * size_t(G + 1));
  if (!sort_by_index) {
    w.keys_in = reinterpret_cast<uint64_t*>(p);
    p += align256(sizeof(uint64_t) * size_t(total));
    w.keys_out = reinterpret_cast<uint64_t*>(p);
    p += align256(sizeof(uint64_t) * size_t(total));
    w.idx_out = reinterpret_cast<int64_t*>(p);
    p += align256(sizeof(int64_t) * size_t(total));
    w.cub_temp = p;
    w.cub_bytes = cub_sort_bytes(G, total);
  }
  return w;
}

}  // namespace

size_t segmented_topk_workspace_bytes(int64_t G, int64_t total, bool sort_by_index) {
  size_t bytes = align256(sizeof(int64_t) * size_t(G + 1));
  if (!sort_by_index)
    bytes += 3 * align256(8 * size_t(total)) + align256(cub_sort_bytes(G, total));
  return bytes;
}

cudaError_t segmented_topk(const SegmentedTopkParams& p, cudaStream_t stream) {
  if (p.G == 0) return cudaSuccess;
  if (!p.sort_by_index && (p.total > kSegmentedSortMaxItems || p.G > kSegmentedSortMaxItems))
    return cudaErrorInvalidValue;
  Workspace w = carve(p.workspace, p.G, p.total, p.sort_by_index);
  ADAPTTOKEN_LAUNCH(exclusive_scan_kernel, 1, 1, 0, stream)(p.k, p.G, w.out_offsets);
  for (int64_t g0 = 0; g0 < p.G; g0 += 65535) {  // grid.x limit is large; keep launches modest
    SegmentedTopkParams q = p;
    q.offsets = p.offsets + g0;
    q.k = p.k + g0;
    q.G = p.G - g0 < 65535 ? p.G - g0 : 65535;
    ADAPTTOKEN_LAUNCH(select_kernel, unsigned(q.G), kThreads, 0, stream)(q, w.out_offsets + g0);
  }
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  if (p.sort_by_index || p.total == 0) return cudaSuccess;
  const unsigned blocks = unsigned((p.total + 255) / 256);
  ADAPTTOKEN_LAUNCH(make_sort_keys, blocks, 256, 0, stream)(p.values, p.total, w.keys_in);
  size_t bytes = w.cub_bytes;
  cudaError_t e = cub::DeviceSegmentedRadixSort::SortPairsDescending(
      w.cub_temp, bytes, w.keys_in, w.keys_out, p.indices, w.idx_out, int(p.total), int(p.G),
      w.out_offsets, w.out_offsets + 1, 0, 64, stream);
  if (e != cudaSuccess) return e;
  ADAPTTOKEN_LAUNCH(gather_values, blocks, 256, 0, stream)(p.scores, p.scores_stride, w.idx_out, p.total,
                                            p.values, p.indices);
  return cudaGetLastError();
}

}  // namespace adapttoken::cuda
