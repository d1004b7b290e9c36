// Argument validation shared by the CPU and CUDA bindings. Every failure names
// the argument; the message reaches Python as a RuntimeError.
#pragma once

#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace adapttoken {

using torch::headeronly::ScalarType;
using torch::stable::Tensor;

template <typename... Args>
[[noreturn]] void fail(const char* op, const Args&... args) {
  std::ostringstream oss;
  oss << "adapttoken." << op << ": ";
  (oss << ... << args);
  throw std::invalid_argument(oss.str());
}

#define ADAPTTOKEN_CHECK(cond, op, ...) \
  do {                                  \
    if (!(cond)) ::adapttoken::fail(op, __VA_ARGS__); \
  } while (0)

// Python's dtype names, as users see them.
inline const char* dtype_name(ScalarType s) {
  switch (s) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    case ScalarType::Long: return "int64";
    case ScalarType::Int: return "int32";
    case ScalarType::Short: return "int16";
    case ScalarType::Char: return "int8";
    case ScalarType::Byte: return "uint8";
    case ScalarType::Bool: return "bool";
    default: return torch::headeronly::toString(s);
  }
}

inline std::string shape_str(const Tensor& t) {
  std::ostringstream oss;
  oss << '[';
  for (int64_t i = 0; i < t.dim(); ++i) oss << (i ? ", " : "") << t.size(i);
  oss << ']';
  return oss.str();
}

inline void check_rank(const char* op, const Tensor& t, const char* name, int64_t dim,
                       const char* layout) {
  ADAPTTOKEN_CHECK(t.dim() == dim, op, name, " must be ", dim, "-D ", layout, ", got shape ",
                   shape_str(t));
}

inline bool is_float_type(ScalarType s) {
  return s == ScalarType::Float || s == ScalarType::Half || s == ScalarType::BFloat16;
}

inline void check_float(const char* op, const Tensor& t, const char* name) {
  ADAPTTOKEN_CHECK(is_float_type(t.scalar_type()), op, name,
                   " must be float32, float16 or bfloat16, got ",
                   dtype_name(t.scalar_type()));
}

inline void check_dtype(const char* op, const Tensor& t, const char* name, ScalarType want) {
  ADAPTTOKEN_CHECK(t.scalar_type() == want, op, name, " must be ",
                   dtype_name(want), ", got ",
                   dtype_name(t.scalar_type()));
}

inline void check_same_device(const char* op, const Tensor& ref, const char* ref_name,
                              const Tensor& t, const char* name) {
  ADAPTTOKEN_CHECK(ref.is_cpu() == t.is_cpu() && ref.get_device_index() == t.get_device_index(),
                   op, name, " must be on the same device as ", ref_name);
}

inline void check_reduce(const char* op, const std::string& reduce) {
  ADAPTTOKEN_CHECK(reduce == "max" || reduce == "mean", op,
                   "reduce must be 'max' or 'mean', got '", reduce, "'");
}

// Shapes of a validated (query, key) pair; see attention_scores in ops.py.
struct AttentionShape {
  int64_t B, Hq, Hkv, Lq, Lk, D;
};

inline AttentionShape check_attention(const char* op, const Tensor& query, const Tensor& key,
                                      int64_t query_start, double scale,
                                      const std::string& reduce) {
  check_rank(op, query, "query", 4, "[B, Hq, Lq, D]");
  check_rank(op, key, "key", 4, "[B, Hkv, Lk, D]");
  check_float(op, query, "query");
  ADAPTTOKEN_CHECK(key.scalar_type() == query.scalar_type(), op, "key dtype ",
                   dtype_name(key.scalar_type()),
                   " must match query dtype ", dtype_name(query.scalar_type()));
  check_same_device(op, query, "query", key, "key");
  const AttentionShape s{query.size(0), query.size(1), key.size(1),
                         query.size(2), key.size(2), query.size(3)};
  ADAPTTOKEN_CHECK(s.B > 0 && s.Hq > 0 && s.Lq > 0 && s.D > 0, op,
                   "query must have no empty dimension, got shape ", shape_str(query));
  ADAPTTOKEN_CHECK(s.Hkv > 0 && s.Lk > 0, op, "key must have no empty dimension, got shape ",
                   shape_str(key));
  ADAPTTOKEN_CHECK(key.size(0) == s.B, op, "key batch size ", key.size(0),
                   " must equal query batch size ", s.B);
  ADAPTTOKEN_CHECK(key.size(3) == s.D, op, "key head_dim ", key.size(3),
                   " must equal query head_dim ", s.D);
  ADAPTTOKEN_CHECK(s.Hq % s.Hkv == 0, op, "query heads (", s.Hq,
                   ") must be a multiple of key heads (", s.Hkv, ")");
  ADAPTTOKEN_CHECK(s.Lq <= s.Lk, op, "query length ", s.Lq, " must not exceed key length ",
                   s.Lk);
  ADAPTTOKEN_CHECK(query_start >= 0 && query_start < s.Lq, op, "query_start must be in [0, ",
                   s.Lq, "), got ", query_start);
  ADAPTTOKEN_CHECK(std::isfinite(scale), op, "scale must be finite, got ", scale);
  check_reduce(op, reduce);
  return s;
}

inline void check_visual_range(const char* op, int64_t visual_start, int64_t visual_end,
                               int64_t Lk) {
  ADAPTTOKEN_CHECK(0 <= visual_start && visual_start < visual_end && visual_end <= Lk, op,
                   "visual_start and visual_end must satisfy 0 <= visual_start < visual_end <= ",
                   Lk, " (key length), got visual_start=", visual_start,
                   ", visual_end=", visual_end);
}

// Metadata checks of segment offsets [G + 1] and per-segment counts [G].
inline int64_t check_segment_tensors(const char* op, const Tensor& offsets,
                                     const char* offsets_name, const Tensor& k,
                                     const char* k_name) {
  check_rank(op, offsets, offsets_name, 1, "[G + 1]");
  check_dtype(op, offsets, offsets_name, ScalarType::Long);
  check_rank(op, k, k_name, 1, "[G]");
  check_dtype(op, k, k_name, ScalarType::Long);
  ADAPTTOKEN_CHECK(offsets.size(0) >= 2, op, offsets_name,
                   " must hold at least 2 entries (one segment), got ", offsets.size(0));
  ADAPTTOKEN_CHECK(k.size(0) == offsets.size(0) - 1, op, k_name, " must have ",
                   offsets.size(0) - 1, " entries (one per segment), got ", k.size(0));
  return k.size(0);
}

// Value checks on host copies: offsets[0] == first, offsets[G] == last,
// non-decreasing, 0 <= k[g] <= segment length. Returns sum(k).
inline int64_t check_segment_values(const char* op, const int64_t* offsets,
                                    const char* offsets_name, const int64_t* k,
                                    const char* k_name, int64_t G, int64_t first,
                                    int64_t last, const char* range) {
  ADAPTTOKEN_CHECK(offsets[0] == first && offsets[G] == last, op, offsets_name,
                   " must start at ", first, " and end at ", last, " (", range, "), got ",
                   offsets[0], " and ", offsets[G]);
  int64_t total = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t len = offsets[g + 1] - offsets[g];
    ADAPTTOKEN_CHECK(len >= 0, op, offsets_name, " must be non-decreasing, got ", offsets[g],
                     " > ", offsets[g + 1], " at segment ", g);
    ADAPTTOKEN_CHECK(len <= int64_t(UINT32_MAX), op, offsets_name, ": segment ", g,
                     " is longer than 2^32 - 1");
    ADAPTTOKEN_CHECK(k[g] >= 0 && k[g] <= len, op, k_name, "[", g, "] = ", k[g],
                     " must be in [0, ", len, "] (the segment length)");
    total += k[g];
  }
  return total;
}

}  // namespace adapttoken
