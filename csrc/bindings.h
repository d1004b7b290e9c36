// Helpers shared by the CPU and CUDA bindings: dtype dispatch, the argument checks
// that read host copies of small tensors, and filling the kernels' parameter structs
// (the CPU and CUDA structs have the same fields).
#pragma once

#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "checks.h"
#include "kernels/common.h"

namespace adapttoken {

// Calls fn(scalar tag) with float, bf16_t or fp16_t for a floating dtype.
template <typename Fn>
void dispatch_float(ScalarType s, Fn&& fn) {
  switch (s) {
    case ScalarType::Float: fn(float{}); break;
    case ScalarType::BFloat16: fn(bf16_t{}); break;
    case ScalarType::Half: fn(fp16_t{}); break;
    default: throw std::invalid_argument("adapttoken: unsupported dtype");
  }
}

template <typename Params>
void fill_attention_params(Params& p, const AttentionShape& s, const Tensor& query,
                           const Tensor& key, int64_t query_start, int64_t visual_start,
                           int64_t visual_end, double scale, const std::string& reduce,
                           float* out) {
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
}

// softmax_entropy's metadata checks (device placement is the caller's); returns V.
inline int64_t check_softmax_entropy(const char* op, const Tensor& logits,
                                     const std::optional<Tensor>& index, double temperature) {
  ADAPTTOKEN_CHECK(logits.dim() >= 1, op, "logits must have at least 1 dimension [..., V]");
  check_float(op, logits, "logits");
  const int64_t V = logits.size(logits.dim() - 1);
  ADAPTTOKEN_CHECK(V > 0, op, "logits must have a non-empty last dimension, got shape ",
                   shape_str(logits));
  ADAPTTOKEN_CHECK(std::isfinite(temperature) && temperature > 0, op,
                   "temperature must be finite and > 0, got ", temperature);
  if (index.has_value()) {
    check_rank(op, *index, "index", 1, "[K]");
    check_dtype(op, *index, "index", ScalarType::Long);
    check_same_device(op, logits, "logits", *index, "index");
    ADAPTTOKEN_CHECK(index->size(0) > 0, op, "index must not be empty");
  }
  return V;
}

inline void check_index_values(const char* op, const std::vector<int64_t>& index, int64_t V) {
  for (int64_t i : index)
    ADAPTTOKEN_CHECK(0 <= i && i < V, op, "index holds ", i, ", out of range [0, ", V,
                     ") for logits' last dimension");
}

// The output shape of softmax_entropy: logits' shape without its last dimension.
inline std::vector<int64_t> leading_shape(const Tensor& t) {
  std::vector<int64_t> shape;
  for (int64_t d = 0; d + 1 < t.dim(); ++d) shape.push_back(t.size(d));
  return shape;
}

// local_entropy's checks (device placement is the caller's).
inline void check_local_entropy(const char* op, const Tensor& tokens, int64_t window,
                                double temperature) {
  check_rank(op, tokens, "tokens", 4, "[T, Hg, Wg, C]");
  check_float(op, tokens, "tokens");
  for (int64_t d = 0; d < 4; ++d)
    ADAPTTOKEN_CHECK(tokens.size(d) > 0, op, "tokens must have no empty dimension, got shape ",
                     shape_str(tokens));
  ADAPTTOKEN_CHECK(window >= 3 && window % 2 == 1, op,
                   "window must be an odd integer >= 3, got ", window);
  ADAPTTOKEN_CHECK(std::isfinite(temperature) && temperature > 0, op,
                   "temperature must be finite and > 0, got ", temperature);
}

template <typename Params>
void fill_local_entropy_params(Params& p, const Tensor& tokens, int64_t window,
                               double temperature, float* out) {
  p.tokens = tokens.const_data_ptr();
  p.T = tokens.size(0), p.H = tokens.size(1), p.W = tokens.size(2), p.C = tokens.size(3);
  for (int i = 0; i < 4; ++i) p.stride[i] = tokens.stride(i);
  p.window = window;
  p.temperature = float(temperature);
  p.out = out;
}

// select's metadata checks after check_attention; returns G.
inline int64_t check_select(const char* op, const AttentionShape& s, const Tensor& query,
                            const Tensor& visual_offsets, const Tensor& budgets) {
  ADAPTTOKEN_CHECK(s.B == 1, op, "query and key must have batch size 1, got ", s.B);
  const int64_t G = check_segment_tensors(op, visual_offsets, "visual_offsets", budgets, "budgets");
  check_same_device(op, query, "query", visual_offsets, "visual_offsets");
  check_same_device(op, query, "query", budgets, "budgets");
  return G;
}

struct VisualSegments {
  int64_t v0, v1, total;  // first and last key, sum of budgets
};

// select's value checks on host copies of visual_offsets and budgets.
inline VisualSegments check_select_values(const char* op, const std::vector<int64_t>& off,
                                          const std::vector<int64_t>& budgets, int64_t G,
                                          int64_t Lk) {
  const int64_t v0 = off[0], v1 = off[size_t(G)];
  ADAPTTOKEN_CHECK(0 <= v0 && v0 < v1 && v1 <= Lk, op,
                   "visual_offsets must satisfy 0 <= visual_offsets[0] < visual_offsets[-1] <= ",
                   Lk, " (key length), got ", v0, " and ", v1);
  const int64_t total = check_segment_values(op, off.data(), "visual_offsets", budgets.data(),
                                             "budgets", G, v0, v1, "its own first and last entries");
  return {v0, v1, total};
}

}  // namespace adapttoken
