// CUDA implementations of torch.ops.adapttoken.*: validate, then launch the
// framework-agnostic kernels in kernels/cuda/ on torch's current stream. Only the
// LibTorch stable ABI (plus the AOTI C shim's current-stream query) is used, so this
// file compiles with nvcc against the CPU wheel's headers and -DUSE_CUDA.
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cuda_runtime.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "kernels/cuda/attention_scores.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/local_entropy.cuh"
#include "kernels/cuda/segmented_topk.cuh"
#include "kernels/cuda/softmax_entropy.cuh"

namespace adapttoken {
namespace {

void check_cuda(const char* op, const Tensor& t, const char* name) {
  ADAPTTOKEN_CHECK(t.is_cuda(), op, name, " must be a CUDA tensor for the CUDA kernel");
}

void cuda_check(cudaError_t e, const char* op) {
  if (e != cudaSuccess)
    throw std::runtime_error(std::string("adapttoken.") + op + ": CUDA error: " + cudaGetErrorString(e));
}

cudaStream_t current_stream(const Tensor& t) {
  void* s = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &s));
  return static_cast<cudaStream_t>(s);
}

// Copies small int64 device tensors to the host with one synchronisation.
std::vector<std::vector<int64_t>> host_longs(const std::vector<const Tensor*>& ts,
                                             cudaStream_t stream, const char* op) {
  std::vector<std::vector<int64_t>> out;
  std::vector<Tensor> keep;
  for (const Tensor* t : ts) {
    keep.push_back(torch::stable::contiguous(*t));
    out.emplace_back(size_t(t->numel()));
    cuda_check(cudaMemcpyAsync(out.back().data(), keep.back().const_data_ptr(),
                               sizeof(int64_t) * size_t(t->numel()), cudaMemcpyDeviceToHost, stream),
               op);
  }
  cuda_check(cudaStreamSynchronize(stream), op);
  return out;
}

Tensor workspace(const Tensor& like, size_t bytes) {
  return torch::stable::new_empty(like, {int64_t(bytes > 0 ? bytes : 1)}, ScalarType::Byte);
}

void run_attention_scores(const AttentionShape& s, const Tensor& query, const Tensor& key,
                          int64_t query_start, int64_t visual_start, int64_t visual_end,
                          double scale, const std::string& reduce, float* out,
                          cudaStream_t stream, const char* op) {
  cuda::AttentionScoresParams p{};
  fill_attention_params(p, s, query, key, query_start, visual_start, visual_end, scale, reduce,
                        out);
  Tensor ws = workspace(query, cuda::attention_scores_workspace_bytes(p));
  p.workspace = ws.mutable_data_ptr();
  dispatch_float(query.scalar_type(), [&](auto tag) {
    cuda_check(cuda::attention_scores<decltype(tag)>(p, stream), op);
  });
}

AttentionShape check_attention_cuda(const char* op, const Tensor& query, const Tensor& key,
                                    int64_t query_start, double scale, const std::string& reduce) {
  const AttentionShape s = check_attention(op, query, key, query_start, scale, reduce);
  check_cuda(op, query, "query");
  ADAPTTOKEN_CHECK(s.D <= cuda::kAttentionMaxHeadDim, op, "head_dim must be <= ",
                   cuda::kAttentionMaxHeadDim, " for the CUDA kernel, got ", s.D);
  return s;
}

Tensor attention_scores(Tensor query, Tensor key, int64_t query_start, int64_t visual_start,
                        int64_t visual_end, double scale, std::string reduce) {
  const char* op = "attention_scores";
  const AttentionShape s = check_attention_cuda(op, query, key, query_start, scale, reduce);
  check_visual_range(op, visual_start, visual_end, s.Lk);
  torch::stable::accelerator::DeviceGuard guard(query.get_device_index());
  Tensor out = torch::stable::new_empty(query, {s.B, visual_end - visual_start}, ScalarType::Float);
  run_attention_scores(s, query, key, query_start, visual_start, visual_end, scale, reduce,
                       static_cast<float*>(out.mutable_data_ptr()), current_stream(query), op);
  return out;
}

std::tuple<Tensor, Tensor> run_segmented_topk(const Tensor& like, const float* scores,
                                              int64_t stride, const Tensor& offsets,
                                              const Tensor& k, int64_t G, int64_t total,
                                              bool sort_by_index, cudaStream_t stream,
                                              const char* op) {
  // CUB's segmented sort counts items and segments in int (checked before allocating).
  ADAPTTOKEN_CHECK(sort_by_index || (total <= cuda::kSegmentedSortMaxItems &&
                                     G <= cuda::kSegmentedSortMaxItems),
                   op, "sort_by_index=False sorts at most ", cuda::kSegmentedSortMaxItems,
                   " selected scores in at most as many segments on CUDA (CUB counts in int), got ",
                   total, " scores in ", G, " segments");
  Tensor values = torch::stable::new_empty(like, {total}, ScalarType::Float);
  Tensor indices = torch::stable::new_empty(like, {total}, ScalarType::Long);
  const Tensor off = torch::stable::contiguous(offsets), kk = torch::stable::contiguous(k);
  Tensor ws = workspace(like, cuda::segmented_topk_workspace_bytes(G, total, sort_by_index));
  cuda::SegmentedTopkParams p{};
  p.scores = scores;
  p.scores_stride = stride;
  p.offsets = static_cast<const int64_t*>(off.const_data_ptr());
  p.k = static_cast<const int64_t*>(kk.const_data_ptr());
  p.G = G;
  p.total = total;
  p.sort_by_index = sort_by_index;
  p.values = static_cast<float*>(values.mutable_data_ptr());
  p.indices = static_cast<int64_t*>(indices.mutable_data_ptr());
  p.workspace = ws.mutable_data_ptr();
  cuda_check(cuda::segmented_topk(p, stream), op);
  return {values, indices};
}

std::tuple<Tensor, Tensor> segmented_topk(Tensor scores, Tensor offsets, Tensor k,
                                          bool sort_by_index) {
  const char* op = "segmented_topk";
  check_rank(op, scores, "scores", 1, "[N]");
  check_dtype(op, scores, "scores", ScalarType::Float);
  check_cuda(op, scores, "scores");
  const int64_t G = check_segment_tensors(op, offsets, "offsets", k, "k");
  check_same_device(op, scores, "scores", offsets, "offsets");
  check_same_device(op, scores, "scores", k, "k");
  torch::stable::accelerator::DeviceGuard guard(scores.get_device_index());
  const cudaStream_t stream = current_stream(scores);
  const auto host = host_longs({&offsets, &k}, stream, op);  // the one host sync: validate, size
  const int64_t total = check_segment_values(op, host[0].data(), "offsets", host[1].data(), "k",
                                             G, 0, scores.size(0), "the number of scores");
  return run_segmented_topk(scores, static_cast<const float*>(scores.const_data_ptr()),
                            scores.stride(0), offsets, k, G, total, sort_by_index, stream, op);
}

Tensor softmax_entropy(Tensor logits, std::optional<Tensor> index, double temperature) {
  const char* op = "softmax_entropy";
  const int64_t V = check_softmax_entropy(op, logits, index, temperature);
  check_cuda(op, logits, "logits");
  torch::stable::accelerator::DeviceGuard guard(logits.get_device_index());
  const cudaStream_t stream = current_stream(logits);
  std::optional<Tensor> idx;
  if (index.has_value()) {
    idx = torch::stable::contiguous(*index);
    check_index_values(op, host_longs({&*idx}, stream, op)[0], V);  // needs the values: a sync
  }
  Tensor out = torch::stable::new_empty(logits, leading_shape(logits), ScalarType::Float);
  const Tensor rows = torch::stable::reshape(logits, {-1, V});
  cuda::SoftmaxEntropyParams p{};
  p.logits = rows.const_data_ptr();
  p.rows = rows.size(0);
  p.V = V;
  p.row_stride = rows.stride(0);
  p.col_stride = rows.stride(1);
  p.index = idx ? static_cast<const int64_t*>(idx->const_data_ptr()) : nullptr;
  p.K = idx ? idx->size(0) : 0;
  p.temperature = float(temperature);
  p.out = static_cast<float*>(out.mutable_data_ptr());
  dispatch_float(logits.scalar_type(), [&](auto tag) {
    cuda_check(cuda::softmax_entropy<decltype(tag)>(p, stream), op);
  });
  return out;
}

Tensor local_entropy(Tensor tokens, int64_t window, double temperature) {
  const char* op = "local_entropy";
  check_local_entropy(op, tokens, window, temperature);
  check_cuda(op, tokens, "tokens");
  ADAPTTOKEN_CHECK(window <= cuda::kLocalEntropyMaxWindow, op, "window must be <= ",
                   cuda::kLocalEntropyMaxWindow, " for the CUDA kernel, got ", window);
  torch::stable::accelerator::DeviceGuard guard(tokens.get_device_index());
  Tensor out = torch::stable::new_empty(tokens, {tokens.size(0), tokens.size(1), tokens.size(2)},
                                        ScalarType::Float);
  cuda::LocalEntropyParams p{};
  fill_local_entropy_params(p, tokens, window, temperature,
                            static_cast<float*>(out.mutable_data_ptr()));
  dispatch_float(tokens.scalar_type(), [&](auto tag) {
    cuda_check(cuda::local_entropy<decltype(tag)>(p, current_stream(tokens)), op);
  });
  return out;
}

// Adds v0 to every index (select returns absolute key positions).
__global__ void add_offset(int64_t* x, int64_t n, int64_t v0) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) x[i] += v0;
}

// Shifts offsets to start at 0 (device): the segment bounds inside the score buffer.
__global__ void shift_offsets(const int64_t* in, int64_t n, int64_t v0, int64_t* out) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i < n) out[i] = in[i] - v0;
}

std::tuple<Tensor, Tensor> select(Tensor query, Tensor key, int64_t query_start,
                                  Tensor visual_offsets, Tensor budgets, double scale,
                                  std::string reduce) {
  const char* op = "select";
  const AttentionShape s = check_attention_cuda(op, query, key, query_start, scale, reduce);
  const int64_t G = check_select(op, s, query, visual_offsets, budgets);
  torch::stable::accelerator::DeviceGuard guard(query.get_device_index());
  const cudaStream_t stream = current_stream(query);
  const auto host = host_longs({&visual_offsets, &budgets}, stream, op);  // the one host sync
  const auto [v0, v1, total] = check_select_values(op, host[0], host[1], G, s.Lk);
  Tensor scores = torch::stable::new_empty(query, {v1 - v0}, ScalarType::Float);
  run_attention_scores(s, query, key, query_start, v0, v1, scale, reduce,
                       static_cast<float*>(scores.mutable_data_ptr()), stream, op);
  const Tensor off_in = torch::stable::contiguous(visual_offsets);
  Tensor off = torch::stable::new_empty(visual_offsets, {G + 1}, ScalarType::Long);
  ADAPTTOKEN_LAUNCH(shift_offsets, unsigned((G + 256) / 256), 256, 0, stream)(
      static_cast<const int64_t*>(off_in.const_data_ptr()), G + 1, v0,
      static_cast<int64_t*>(off.mutable_data_ptr()));
  auto [values, indices] = run_segmented_topk(query, static_cast<const float*>(scores.const_data_ptr()),
                                              1, off, budgets, G, total, /*sort_by_index=*/true,
                                              stream, op);
  if (total > 0)
    ADAPTTOKEN_LAUNCH(add_offset, unsigned((total + 255) / 256), 256, 0, stream)(
        static_cast<int64_t*>(indices.mutable_data_ptr()), total, v0);
  cuda_check(cudaGetLastError(), op);
  return {indices, values};
}

}  // namespace
}  // namespace adapttoken

STABLE_TORCH_LIBRARY_IMPL(adapttoken, CUDA, m) {
  m.impl("attention_scores", TORCH_BOX(&adapttoken::attention_scores));
  m.impl("segmented_topk", TORCH_BOX(&adapttoken::segmented_topk));
  m.impl("softmax_entropy", TORCH_BOX(&adapttoken::softmax_entropy));
  m.impl("select", TORCH_BOX(&adapttoken::select));
  m.impl("local_entropy", TORCH_BOX(&adapttoken::local_entropy));
}
