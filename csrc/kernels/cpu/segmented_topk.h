// segmented_topk on the CPU (method.md step 6): the k[g] largest scores of each
// segment, ties to the lower index, NaN below everything.
//
// Each element becomes one 64-bit key, (orderable score bits << 32) | ~local
// index, so a larger key means a larger score or, on a tie, a lower index. The
// keys are unique, which makes the result deterministic. The top k come from a
// size-k min-heap in one pass when k is small against the segment (most keys
// then cost one compare), else from std::nth_element.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <functional>
#include <vector>

namespace adapttoken::cpu {

struct SegmentedTopkParams {
  const float* scores;         // [N], element stride scores_stride
  int64_t scores_stride;
  const int64_t* offsets;      // [G + 1], validated by the caller
  const int64_t* k;            // [G]
  const int64_t* out_offsets;  // [G + 1], exclusive prefix sum of k
  int64_t G;
  bool sort_by_index;
  float* values;     // [sum k]
  int64_t* indices;  // [sum k]
};

// Maps a float to uint32 so that unsigned order is float order; NaN maps to 0
// (below -inf), and -0.0 to the key of +0.0 (they compare equal).
inline uint32_t orderable_bits(float x) {
  if (x != x) return 0u;
  if (x == 0.f) x = 0.f;
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

template <typename ParallelFor>
void segmented_topk(const SegmentedTopkParams& p, ParallelFor&& parallel_for) {
  parallel_for(0, p.G, 1, [&](int64_t begin, int64_t end) {
    std::vector<uint64_t> keys;
    for (int64_t g = begin; g < end; ++g) {
      const int64_t start = p.offsets[g], n = p.offsets[g + 1] - start, kk = p.k[g];
      if (kk == 0) continue;
      auto key_of = [&](int64_t i) {
        return (uint64_t(orderable_bits(p.scores[(start + i) * p.scores_stride])) << 32) |
               uint64_t(0xffffffffu - uint32_t(i));
      };
      if (kk * 8 <= n) {
        keys.resize(size_t(kk));
        for (int64_t i = 0; i < kk; ++i) keys[i] = key_of(i);
        std::make_heap(keys.begin(), keys.end(), std::greater<>());  // keys[0] = smallest kept
        auto score_of = [&](uint64_t key) {
          return p.scores[(start + int64_t(0xffffffffu - uint32_t(key))) * p.scores_stride];
        };
        float smallest = score_of(keys[0]);
        for (int64_t i = kk; i < n; ++i) {
          // A score strictly below the smallest kept one cannot enter: one compare.
          if (p.scores[(start + i) * p.scores_stride] < smallest) continue;
          const uint64_t key = key_of(i);
          if (key > keys[0]) {
            std::pop_heap(keys.begin(), keys.end(), std::greater<>());
            keys.back() = key;
            std::push_heap(keys.begin(), keys.end(), std::greater<>());
            smallest = score_of(keys[0]);
          }
        }
      } else {
        keys.resize(size_t(n));
        for (int64_t i = 0; i < n; ++i) keys[i] = key_of(i);
        if (kk < n) std::nth_element(keys.begin(), keys.begin() + (kk - 1), keys.end(), std::greater<>());
      }
      if (p.sort_by_index) {
        // Larger low word = lower index: descending low word is ascending index.
        std::sort(keys.begin(), keys.begin() + kk,
                  [](uint64_t a, uint64_t b) { return uint32_t(a) > uint32_t(b); });
      } else {
        std::sort(keys.begin(), keys.begin() + kk, std::greater<>());
      }
      float* values = p.values + p.out_offsets[g];
      int64_t* indices = p.indices + p.out_offsets[g];
      for (int64_t i = 0; i < kk; ++i) {
        const int64_t idx = start + int64_t(0xffffffffu - uint32_t(keys[i]));
        indices[i] = idx;
        values[i] = p.scores[idx * p.scores_stride];
      }
    }
  });
}

}  // namespace adapttoken::cpu
