// CPU implementations of torch.ops.adapttoken.*: validate, then call the
// framework-agnostic kernels in kernels/cpu/ on torch's thread pool.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "bindings.h"
#include "kernels/cpu/attention_scores.h"
#include "kernels/cpu/local_entropy.h"
#include "kernels/cpu/segmented_topk.h"
#include "kernels/cpu/softmax_entropy.h"

namespace adapttoken {
namespace {

struct TorchParallelFor {
  template <typename F>
  void operator()(int64_t begin, int64_t end, int64_t grain, const F& f) const {
    torch::stable::parallel_for(begin, end, grain, f);
  }
};

void check_cpu(const char* op, const Tensor& t, const char* name) {
  ADAPTTOKEN_CHECK(t.is_cpu(), op, name, " must be a CPU tensor for the CPU kernel");
}

// Copies a small int64 tensor to a host vector.
std::vector<int64_t> host_longs(const Tensor& t) {
  const Tensor c = torch::stable::contiguous(t);
  const int64_t* p = static_cast<const int64_t*>(c.const_data_ptr());
  return std::vector<int64_t>(p, p + c.numel());
}

// Scores of keys [visual_start, visual_end) into out ([B, V] float32, dense).
void run_attention_scores(const AttentionShape& s, const Tensor& query, const Tensor& key,
                          int64_t query_start, int64_t visual_start, int64_t visual_end,
                          double scale, const std::string& reduce, float* out) {
  cpu::AttentionScoresParams p{};
  fill_attention_params(p, s, query, key, query_start, visual_start, visual_end, scale, reduce,
                        out);
  dispatch_float(query.scalar_type(), [&](auto tag) {
    cpu::attention_scores<decltype(tag)>(p, TorchParallelFor{});
  });
}

Tensor attention_scores(Tensor query, Tensor key, int64_t query_start, int64_t visual_start,
                        int64_t visual_end, double scale, std::string reduce) {
  const char* op = "attention_scores";
  const AttentionShape s = check_attention(op, query, key, query_start, scale, reduce);
  check_cpu(op, query, "query");
  check_visual_range(op, visual_start, visual_end, s.Lk);
  Tensor out = torch::stable::new_empty(query, {s.B, visual_end - visual_start},
                                        ScalarType::Float);
  run_attention_scores(s, query, key, query_start, visual_start, visual_end, scale, reduce,
                       static_cast<float*>(out.mutable_data_ptr()));
  return out;
}

// Top-k of float32 scores[N] in segments given by host offsets (offsets[0] = 0).
std::tuple<Tensor, Tensor> run_segmented_topk(const Tensor& scores, const float* data,
                                              int64_t stride, const std::vector<int64_t>& offsets,
                                              const std::vector<int64_t>& k, int64_t total,
                                              bool sort_by_index) {
  const int64_t G = int64_t(k.size());
  std::vector<int64_t> out_offsets(size_t(G + 1), 0);
  for (int64_t g = 0; g < G; ++g) out_offsets[g + 1] = out_offsets[g] + k[g];
  Tensor values = torch::stable::new_empty(scores, {total}, ScalarType::Float);
  Tensor indices = torch::stable::new_empty(scores, {total}, ScalarType::Long);
  cpu::SegmentedTopkParams p{};
  p.scores = data;
  p.scores_stride = stride;
  p.offsets = offsets.data();
  p.k = k.data();
  p.out_offsets = out_offsets.data();
  p.G = G;
  p.sort_by_index = sort_by_index;
  p.values = static_cast<float*>(values.mutable_data_ptr());
  p.indices = static_cast<int64_t*>(indices.mutable_data_ptr());
  cpu::segmented_topk(p, TorchParallelFor{});
  return {values, indices};
}

std::tuple<Tensor, Tensor> segmented_topk(Tensor scores, Tensor offsets, Tensor k,
                                          bool sort_by_index) {
  const char* op = "segmented_topk";
  check_rank(op, scores, "scores", 1, "[N]");
  check_dtype(op, scores, "scores", ScalarType::Float);
  check_cpu(op, scores, "scores");
  check_segment_tensors(op, offsets, "offsets", k, "k");
  check_same_device(op, scores, "scores", offsets, "offsets");
  check_same_device(op, scores, "scores", k, "k");
  const std::vector<int64_t> off = host_longs(offsets), kk = host_longs(k);
  const int64_t G = int64_t(kk.size());
  const int64_t total = check_segment_values(op, off.data(), "offsets", kk.data(), "k", G, 0,
                                             scores.size(0), "the number of scores");
  return run_segmented_topk(scores, static_cast<const float*>(scores.const_data_ptr()),
                            scores.stride(0), off, kk, total, sort_by_index);
}

Tensor softmax_entropy(Tensor logits, std::optional<Tensor> index, double temperature) {
  const char* op = "softmax_entropy";
  const int64_t V = check_softmax_entropy(op, logits, index, temperature);
  check_cpu(op, logits, "logits");
  std::vector<int64_t> idx;
  if (index.has_value()) {
    idx = host_longs(*index);
    check_index_values(op, idx, V);
  }
  Tensor out = torch::stable::new_empty(logits, leading_shape(logits), ScalarType::Float);
  const Tensor rows = torch::stable::reshape(logits, {-1, V});  // a view when possible
  cpu::SoftmaxEntropyParams p{};
  p.logits = rows.const_data_ptr();
  p.rows = rows.size(0);
  p.V = V;
  p.row_stride = rows.stride(0);
  p.col_stride = rows.stride(1);
  p.index = index.has_value() ? idx.data() : nullptr;
  p.K = int64_t(idx.size());
  p.temperature = float(temperature);
  p.out = static_cast<float*>(out.mutable_data_ptr());
  dispatch_float(logits.scalar_type(), [&](auto tag) {
    cpu::softmax_entropy<decltype(tag)>(p, TorchParallelFor{});
  });
  return out;
}

Tensor local_entropy(Tensor tokens, int64_t window, double temperature) {
  const char* op = "local_entropy";
  check_local_entropy(op, tokens, window, temperature);
  check_cpu(op, tokens, "tokens");
  Tensor out = torch::stable::new_empty(tokens, {tokens.size(0), tokens.size(1), tokens.size(2)},
                                        ScalarType::Float);
  cpu::LocalEntropyParams p{};
  fill_local_entropy_params(p, tokens, window, temperature,
                            static_cast<float*>(out.mutable_data_ptr()));
  dispatch_float(tokens.scalar_type(), [&](auto tag) {
    cpu::local_entropy<decltype(tag)>(p, TorchParallelFor{});
  });
  return out;
}

std::tuple<Tensor, Tensor> select(Tensor query, Tensor key, int64_t query_start,
                                  Tensor visual_offsets, Tensor budgets, double scale,
                                  std::string reduce) {
  const char* op = "select";
  const AttentionShape s = check_attention(op, query, key, query_start, scale, reduce);
  check_cpu(op, query, "query");
  const int64_t G = check_select(op, s, query, visual_offsets, budgets);
  std::vector<int64_t> off = host_longs(visual_offsets);
  const std::vector<int64_t> kk = host_longs(budgets);
  const auto [v0, v1, total] = check_select_values(op, off, kk, G, s.Lk);
  std::vector<float> scores(size_t(v1 - v0));
  run_attention_scores(s, query, key, query_start, v0, v1, scale, reduce, scores.data());
  for (int64_t& o : off) o -= v0;
  auto [values, indices] =
      run_segmented_topk(query, scores.data(), 1, off, kk, total, /*sort_by_index=*/true);
  int64_t* ip = static_cast<int64_t*>(indices.mutable_data_ptr());
  for (int64_t i = 0; i < total; ++i) ip[i] += v0;
  return {indices, values};
}

}  // namespace
}  // namespace adapttoken

STABLE_TORCH_LIBRARY_IMPL(adapttoken, CPU, m) {
  m.impl("attention_scores", TORCH_BOX(&adapttoken::attention_scores));
  m.impl("segmented_topk", TORCH_BOX(&adapttoken::segmented_topk));
  m.impl("softmax_entropy", TORCH_BOX(&adapttoken::softmax_entropy));
  m.impl("select", TORCH_BOX(&adapttoken::select));
  m.impl("local_entropy", TORCH_BOX(&adapttoken::local_entropy));
}
