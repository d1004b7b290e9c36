// CPU implementations of torch.ops.adapttoken.*: validate, then call the
// framework-agnostic kernels in kernels/cpu/ on torch's thread pool.
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "checks.h"
#include "kernels/cpu/attention_scores.h"
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

template <typename Fn>
void dispatch_float(ScalarType s, Fn&& fn) {
  switch (s) {
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::BFloat16: fn(bf16_t{}); break;
    case ScalarType::Half: fn(fp16_t{}); break;
    default: throw std::invalid_argument("adapttoken: unsupported dtype");
  }
}

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
  p.query = query.const_data_ptr();
  p.key = key.const_data_ptr();
  p.out = out;
  p.B = s.B, p.Hq = s.Hq, p.Hkv = s.Hkv, p.Lq = s.Lq, p.Lk = s.Lk, p.D = s.D;
  for (int i = 0; i < 4; ++i) p.q_stride[i] = query.stride(i), p.k_stride[i] = key.stride(i);
  p.query_start = query_start;
  p.visual_start = visual_start;
  p.visual_end = visual_end;
  p.scale = float(scale);
  p.mean = reduce == "mean";
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
  ADAPTTOKEN_CHECK(logits.dim() >= 1, op, "logits must have at least 1 dimension [..., V]");
  check_float(op, logits, "logits");
  check_cpu(op, logits, "logits");
  const int64_t V = logits.size(logits.dim() - 1);
  ADAPTTOKEN_CHECK(V > 0, op, "logits must have a non-empty last dimension, got shape ",
                   shape_str(logits));
  ADAPTTOKEN_CHECK(std::isfinite(temperature) && temperature > 0, op,
                   "temperature must be finite and > 0, got ", temperature);
  std::vector<int64_t> idx;
  if (index.has_value()) {
    check_rank(op, *index, "index", 1, "[K]");
    check_dtype(op, *index, "index", ScalarType::Long);
    check_same_device(op, logits, "logits", *index, "index");
    ADAPTTOKEN_CHECK(index->size(0) > 0, op, "index must not be empty");
    idx = host_longs(*index);
    for (int64_t i : idx)
      ADAPTTOKEN_CHECK(0 <= i && i < V, op, "index holds ", i, ", out of range [0, ", V,
                       ") for logits' last dimension");
  }
  std::vector<int64_t> out_shape;
  for (int64_t d = 0; d + 1 < logits.dim(); ++d) out_shape.push_back(logits.size(d));
  Tensor out = torch::stable::new_empty(logits, out_shape, ScalarType::Float);
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

std::tuple<Tensor, Tensor> select(Tensor query, Tensor key, int64_t query_start,
                                  Tensor visual_offsets, Tensor budgets, double scale,
                                  std::string reduce) {
  const char* op = "select";
  const AttentionShape s = check_attention(op, query, key, query_start, scale, reduce);
  check_cpu(op, query, "query");
  ADAPTTOKEN_CHECK(s.B == 1, op, "query and key must have batch size 1, got ", s.B);
  check_segment_tensors(op, visual_offsets, "visual_offsets", budgets, "budgets");
  check_same_device(op, query, "query", visual_offsets, "visual_offsets");
  check_same_device(op, query, "query", budgets, "budgets");
  std::vector<int64_t> off = host_longs(visual_offsets);
  const std::vector<int64_t> kk = host_longs(budgets);
  const int64_t G = int64_t(kk.size()), v0 = off[0], v1 = off[G];
  ADAPTTOKEN_CHECK(0 <= v0 && v0 < v1 && v1 <= s.Lk, op,
                   "visual_offsets must satisfy 0 <= visual_offsets[0] < visual_offsets[-1] <= ",
                   s.Lk, " (key length), got ", v0, " and ", v1);
  const int64_t total =
      check_segment_values(op, off.data(), "visual_offsets", kk.data(), "budgets", G, v0, v1,
                           "its own first and last entries");
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
}
