// Hot fp32 loops of the CPU kernels. Callers convert fp16/bf16 inputs to fp32
// tiles first, so these loops are not templated and can be compiled once per
// instruction set (target_clones, see fp32_kernels.cpp).
#pragma once

#include <cstdint>

namespace adapttoken::cpu {

// Micro-tile of gemm_nt: kGemmMR rows x kGemmNR columns of accumulators.
constexpr int64_t kGemmMR = 14;
constexpr int64_t kGemmNR = 32;

// c[r, j] = sum_d a[r, d] * bt[d, j], all row-major and dense:
// a is [rows, depth], bt is [depth, cols], c is [rows, cols].
// Requires rows % kGemmMR == 0 and cols % kGemmNR == 0 (callers pad with zeros).
void gemm_nt(const float* a, const float* bt, float* c, int64_t rows, int64_t cols,
             int64_t depth);

// Dot product sum_c a[c] * b[c] in float32 (lane-wise partial sums).
float dot(const float* a, const float* b, int64_t n);

// Online log-sum-exp over y = x[0..n) * scale: updates the running max *m and
// the running sum *l = sum exp(y - *m). Start from *m = -inf, *l = 0.
void online_lse_update(const float* x, int64_t n, float scale, float* m, float* l);

// For c < n: acc[c] += exp(x[c] * scale - lse).
void sum_probs(const float* x, int64_t n, float scale, float lse, float* acc);

// For c < n: acc[c] = max(acc[c], x[c] * scale - lse), a log-probability. Since
// exp is monotone, the max probability is exp(acc) at the end: one exp per key
// instead of one per (row, key). NaN propagates into acc.
void max_log_probs(const float* x, int64_t n, float scale, float lse, float* acc);

// Lane-wise state of the one-pass softmax entropy (method.md step 4): per lane
// the running max m, s = sum exp(y - m) and t = sum exp(y - m) * (y - m).
constexpr int kEntropyLanes = 16;
struct EntropyState {
  float m[kEntropyLanes];
  float s[kEntropyLanes];
  float t[kEntropyLanes];
  bool nan;
};
void entropy_init(EntropyState* st);
// Adds y = x[0..n) / temperature. -inf entries have probability 0.
void entropy_update(const float* x, int64_t n, float temperature, EntropyState* st);
// Entropy in nats: log(S) - T/S after merging the lanes. NaN when a NaN was
// seen, when the maximum is +inf, or when every entry was -inf.
float entropy_finish(const EntropyState& st);

}  // namespace adapttoken::cpu
