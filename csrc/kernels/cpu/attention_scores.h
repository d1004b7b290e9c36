// attention_scores on the CPU: per visual key, the max (or mean) over query
// heads and text queries of softmax(q . k * scale) (method.md step 3), without
// building the [B, Hq, T, Lk] probability matrix.
//
// Two passes over K, each in key chunks of kChunk keys:
//   pass 1: the row log-sum-exp of every (head, text query), split over keys
//           and merged;
//   pass 2: exp(s - lse) for the visual keys, reduced over heads and queries
//           into one value per key (for max: max of s - lse, then one exp).
// Per KV head, the scores of all its query heads against a K chunk come from one
// fp32 GEMM tile, so each K chunk is read once per pass (GQA without repeat).
// Extra memory: the fp32 queries, lse and per-thread tiles of kChunk keys.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common.h"
#include "fp32_kernels.h"

namespace adapttoken::cpu {

struct AttentionScoresParams {
  const void* query;   // [B, Hq, Lq, D], strides in elements below
  const void* key;     // [B, Hkv, Lk, D]
  float* out;          // [B, visual_end - visual_start], dense
  int64_t B, Hq, Hkv, Lq, Lk, D;
  int64_t q_stride[4];
  int64_t k_stride[4];
  int64_t query_start, visual_start, visual_end;
  float scale;
  bool mean;  // reduce = "mean" (else "max")
};

constexpr int64_t kChunk = 256;  // keys per tile; a multiple of kGemmNR

// ParallelFor: callable as parallel_for(begin, end, grain, fn(begin, end)).
template <typename scalar_t, typename ParallelFor>
void attention_scores(const AttentionScoresParams& p, ParallelFor&& parallel_for) {
  const int64_t G = p.Hq / p.Hkv;          // query heads per KV head
  const int64_t T = p.Lq - p.query_start;  // text queries (rows used)
  const int64_t R = G * T;                 // score rows per KV head
  const int64_t Rp = ceil_div(R, kGemmMR) * kGemmMR;
  const int64_t D = p.D;
  const int64_t pos0 = p.Lk - p.Lq + p.query_start;  // key position of row t = 0
  const scalar_t* q = static_cast<const scalar_t*>(p.query);
  const scalar_t* k = static_cast<const scalar_t*>(p.key);
  const float neg_inf = -std::numeric_limits<float>::infinity();

  // Row r of KV head g is query head g * G + r / T at text query r % T.
  auto visible = [&](int64_t r, int64_t key0, int64_t n) {
    return std::clamp<int64_t>(pos0 + r % T + 1 - key0, 0, n);
  };

  // fp32 queries, [B, Hkv, Rp, D], padding rows zero.
  std::vector<float> qf(size_t(p.B * p.Hkv * Rp * D), 0.f);
  parallel_for(0, p.B * p.Hq, 1, [&](int64_t begin, int64_t end) {
    for (int64_t bh = begin; bh < end; ++bh) {
      const int64_t b = bh / p.Hq, h = bh % p.Hq;
      float* dst = qf.data() + ((b * p.Hkv + h / G) * Rp + (h % G) * T) * D;
      for (int64_t t = 0; t < T; ++t) {
        const scalar_t* src = q + b * p.q_stride[0] + h * p.q_stride[1] +
                       (p.query_start + t) * p.q_stride[2];
        for (int64_t d = 0; d < D; ++d) dst[t * D + d] = to_float(src[d * p.q_stride[3]]);
      }
    }
  });

  // Packs keys [key0, key0 + n) of (b, g) transposed into kt [D, kChunk].
  auto pack_keys = [&](int64_t b, int64_t g, int64_t key0, int64_t n, float* kt) {
    const scalar_t* src = k + b * p.k_stride[0] + g * p.k_stride[1] + key0 * p.k_stride[2];
    for (int64_t j = 0; j < n; ++j)
      for (int64_t d = 0; d < D; ++d)
        kt[d * kChunk + j] = to_float(src[j * p.k_stride[2] + d * p.k_stride[3]]);
    for (int64_t d = 0; d < D; ++d) std::fill(kt + d * kChunk + n, kt + (d + 1) * kChunk, 0.f);
  };

  // Pass 1: row log-sum-exp over keys [0, Lk). Keys are split into nsplit
  // ranges per (b, KV head); each task keeps a running (max, sum) per row.
  const int64_t nchunk1 = ceil_div(p.Lk, kChunk);
  const int64_t nsplit = std::min<int64_t>(nchunk1, 64);
  const int64_t chunks_per_split = ceil_div(nchunk1, nsplit);
  std::vector<float> part_m(size_t(p.B * p.Hkv * nsplit * R)), part_l(part_m.size());
  parallel_for(0, p.B * p.Hkv * nsplit, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(size_t(D * kChunk)), s(size_t(Rp * kChunk));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t bg = task / nsplit, split = task % nsplit;
      const int64_t b = bg / p.Hkv, g = bg % p.Hkv;
      float* m = part_m.data() + task * R;
      float* l = part_l.data() + task * R;
      std::fill(m, m + R, neg_inf);
      std::fill(l, l + R, 0.f);
      const int64_t c_end = std::min(nchunk1, (split + 1) * chunks_per_split);
      for (int64_t c = split * chunks_per_split; c < c_end; ++c) {
        const int64_t key0 = c * kChunk, n = std::min(kChunk, p.Lk - key0);
        pack_keys(b, g, key0, n, kt.data());
        gemm_nt(qf.data() + bg * Rp * D, kt.data(), s.data(), Rp, kChunk, D);
        for (int64_t r = 0; r < R; ++r)
          online_lse_update(s.data() + r * kChunk, visible(r, key0, n), p.scale, m + r, l + r);
      }
    }
  });
  std::vector<float> lse(size_t(p.B * p.Hkv * R));
  for (int64_t bg = 0; bg < p.B * p.Hkv; ++bg) {
    for (int64_t r = 0; r < R; ++r) {
      float mx = neg_inf;
      for (int64_t sp = 0; sp < nsplit; ++sp) mx = std::fmax(mx, part_m[(bg * nsplit + sp) * R + r]);
      double sum = 0.0;
      for (int64_t sp = 0; sp < nsplit; ++sp) {
        const size_t i = size_t((bg * nsplit + sp) * R + r);
        if (part_m[i] != neg_inf) sum += double(part_l[i]) * std::exp(double(part_m[i]) - mx);
      }
      lse[bg * R + r] = float(mx + std::log(sum));
    }
  }

  // Pass 2: probabilities of the visual keys, reduced over heads and queries.
  // Each task owns a chunk of output keys, so the result is deterministic.
  const int64_t V = p.visual_end - p.visual_start;
  const int64_t nchunk2 = ceil_div(V, kChunk);
  const float inv_rows = 1.f / float(p.Hq * T);
  parallel_for(0, p.B * nchunk2, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> kt(size_t(D * kChunk)), s(size_t(Rp * kChunk)), acc(static_cast<size_t>(kChunk));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / nchunk2, c = task % nchunk2;
      const int64_t j0 = c * kChunk, key0 = p.visual_start + j0, n = std::min(kChunk, V - j0);
      std::fill(acc.begin(), acc.end(), p.mean ? 0.f : neg_inf);
      for (int64_t g = 0; g < p.Hkv; ++g) {
        const int64_t bg = b * p.Hkv + g;
        pack_keys(b, g, key0, n, kt.data());
        gemm_nt(qf.data() + bg * Rp * D, kt.data(), s.data(), Rp, kChunk, D);
        for (int64_t r = 0; r < R; ++r) {
          const float* row = s.data() + r * kChunk;
          if (p.mean) {
            sum_probs(row, visible(r, key0, n), p.scale, lse[bg * R + r], acc.data());
          } else {
            max_log_probs(row, visible(r, key0, n), p.scale, lse[bg * R + r], acc.data());
          }
        }
      }
      // A key no row can see keeps acc = -inf (max) or 0 (mean): probability 0.
      float* dst = p.out + b * V + j0;
      for (int64_t j = 0; j < n; ++j) dst[j] = p.mean ? acc[j] * inv_rows : std::exp(acc[j]);
    }
  });
}

}  // namespace adapttoken::cpu
