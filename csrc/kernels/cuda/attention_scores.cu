#include "attention_scores.cuh"
#include "common.cuh"

namespace adapttoken::cuda {
namespace {

constexpr int kThreads = 512;
constexpr int kWarps = kThreads / 32;
constexpr int kTile = 32;      // keys per tile: one per lane
constexpr int kRowChunk = 64;  // used query rows per pass-1 block

int64_t num_splits(int64_t Lk) {
  const int64_t per = Lk / 512 > 256 ? Lk / 512 : 256;  // keys per split
  return (Lk + per - 1) / per;
}

size_t align256(size_t n) { return (n + 255) & ~size_t(255); }

// K tile [kTile][D] of KV head `kvh` as fp32 in shared memory, row stride D + 1
// (conflict-free when each lane reads its own key). Keys outside [t0, t_end) are 0.
template <typename scalar_t>
__device__ void load_k_tile(const AttentionScoresParams& p, const scalar_t* key, int64_t b,
                            int64_t kvh, int64_t t0, int64_t t_end, float* ks) {
  const int D = int(p.D);
  for (int e = threadIdx.x; e < kTile * D; e += kThreads) {
    const int j = e / D, d = e % D;
    const int64_t kj = t0 + j;
    ks[j * (D + 1) + d] = kj < t_end
        ? load_float(key + b * p.k_stride[0] + kvh * p.k_stride[1] + kj * p.k_stride[2] + d * p.k_stride[3])
        : 0.f;
  }
}

template <typename scalar_t>
__device__ __forceinline__ float dot_row(const AttentionScoresParams& p, const scalar_t* qrow,
                                         const float* krow) {
  float acc = 0.f;
  for (int d = 0; d < int(p.D); ++d) acc = fmaf(load_float(qrow + d * p.q_stride[3]), krow[d], acc);
  return acc;
}

// Pass 1: partial (max, sum exp) of scaled logits per (b, head, used row, split).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) lse_partial_kernel(AttentionScoresParams p, int64_t S,
                                                               float* part) {
  ADAPTTOKEN_DYNAMIC_SHARED(float, smem);
  const int64_t split = blockIdx.x, b = blockIdx.y / p.Hkv, kvh = blockIdx.y % p.Hkv;
  const int64_t G = p.Hq / p.Hkv, T = p.Lq - p.query_start;
  const int64_t r0 = int64_t(blockIdx.z) * kRowChunk;
  const int64_t rows = T - r0 < kRowChunk ? T - r0 : kRowChunk;
  const int64_t per = (p.Lk + S - 1) / S, k_begin = split * per;
  const int64_t k_end = k_begin + per < p.Lk ? k_begin + per : p.Lk;
  const int D = int(p.D);
  float* ks = smem;                                   // [kTile][D + 1]
  float* run_m = ks + kTile * (D + 1);                // [G][kRowChunk]
  float* run_l = run_m + G * kRowChunk;               // [G][kRowChunk]
  for (int64_t e = threadIdx.x; e < G * kRowChunk; e += kThreads) run_m[e] = -INFINITY, run_l[e] = 0.f;
  const scalar_t* q = static_cast<const scalar_t*>(p.query);
  const scalar_t* k = static_cast<const scalar_t*>(p.key);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t t0 = k_begin; t0 < k_end; t0 += kTile) {
    __syncthreads();
    load_k_tile(p, k, b, kvh, t0, k_end, ks);
    __syncthreads();
    for (int64_t pair = warp; pair < G * rows; pair += kWarps) {  // a pair stays with one warp
      const int64_t h = pair / rows, r = pair % rows, i = p.query_start + r0 + r;
      const int64_t j = t0 + lane;
      const bool visible = j < k_end && j <= p.Lk - p.Lq + i;
      const scalar_t* qrow = q + b * p.q_stride[0] + (kvh * G + h) * p.q_stride[1] + i * p.q_stride[2];
      const float s = visible ? dot_row(p, qrow, ks + lane * (D + 1)) * p.scale : -INFINITY;
      const float tmax = warp_max(s);
      if (tmax == -INFINITY) continue;
      const float tsum = warp_sum(visible ? expf(s - tmax) : 0.f);
      if (lane == 0) {
        float& m = run_m[h * kRowChunk + r];
        float& l = run_l[h * kRowChunk + r];
        const float nm = fmaxf(m, tmax);
        l = (m == -INFINITY ? 0.f : l * expf(m - nm)) + tsum * expf(tmax - nm);
        m = nm;
      }
    }
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < G * rows; e += kThreads) {
    const int64_t h = e / rows, r = e % rows;
    const int64_t row = ((b * p.Hq + kvh * G + h) * T + r0 + r) * S + split;
    part[2 * row] = run_m[h * kRowChunk + r];
    part[2 * row + 1] = run_l[h * kRowChunk + r];
  }
}

// Combine the splits: lse = m* + log sum_s l_s exp(m_s - m*).
__global__ void lse_combine_kernel(const float* part, int64_t rows, int64_t S, float* lse) {
  const int64_t row = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (row >= rows) return;
  float m = -INFINITY;
  for (int64_t s = 0; s < S; ++s) m = fmaxf(m, part[2 * (row * S + s)]);
  float l = 0.f;
  if (m != -INFINITY)
    for (int64_t s = 0; s < S; ++s) {
      const float ms = part[2 * (row * S + s)];
      if (ms != -INFINITY) l += part[2 * (row * S + s) + 1] * expf(ms - m);
    }
  lse[row] = m == -INFINITY ? -INFINITY : m + logf(l);
}

// Pass 2: one block per (tile of 32 visual keys, batch); every head and used row.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) scores_kernel(AttentionScoresParams p, const float* lse) {
  ADAPTTOKEN_DYNAMIC_SHARED(float, smem);
  const int64_t b = blockIdx.y;
  const int64_t t0 = p.visual_start + int64_t(blockIdx.x) * kTile;
  const int64_t G = p.Hq / p.Hkv, T = p.Lq - p.query_start;
  const int D = int(p.D);
  float* ks = smem;                        // [kTile][D + 1]
  float* red = ks + kTile * (D + 1);       // [kWarps][kTile]
  const scalar_t* q = static_cast<const scalar_t*>(p.query);
  const scalar_t* k = static_cast<const scalar_t*>(p.key);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j = t0 + lane;
  float acc = 0.f;  // max or sum of probabilities of key j over this warp's (head, row) pairs
  for (int64_t kvh = 0; kvh < p.Hkv; ++kvh) {
    __syncthreads();
    load_k_tile(p, k, b, kvh, t0, p.visual_end, ks);
    __syncthreads();
    for (int64_t pair = warp; pair < G * T; pair += kWarps) {
      const int64_t h = kvh * G + pair / T, r = pair % T, i = p.query_start + r;
      const bool visible = j < p.visual_end && j <= p.Lk - p.Lq + i;
      if (!__any_sync(kFullMask, visible)) continue;
      const scalar_t* qrow = q + b * p.q_stride[0] + h * p.q_stride[1] + i * p.q_stride[2];
      const float s = dot_row(p, qrow, ks + lane * (D + 1)) * p.scale;
      const float prob = visible ? expf(s - lse[(b * p.Hq + h) * T + r]) : 0.f;
      acc = p.mean ? acc + prob : max_nan(acc, prob);
    }
  }
  red[warp * kTile + lane] = acc;
  __syncthreads();
  if (warp == 0 && j < p.visual_end) {
    float v = red[lane];
    for (int w = 1; w < kWarps; ++w)
      v = p.mean ? v + red[w * kTile + lane] : max_nan(v, red[w * kTile + lane]);
    if (p.mean) v /= float(p.Hq * T);
    p.out[b * (p.visual_end - p.visual_start) + (j - p.visual_start)] = v;
  }
}

}  // namespace

size_t attention_scores_workspace_bytes(const AttentionScoresParams& p) {
  const int64_t rows = p.B * p.Hq * (p.Lq - p.query_start);
  return align256(sizeof(float) * size_t(rows)) +
         align256(2 * sizeof(float) * size_t(rows * num_splits(p.Lk)));
}

template <typename scalar_t>
cudaError_t attention_scores(const AttentionScoresParams& p, cudaStream_t stream) {
  const int64_t T = p.Lq - p.query_start, rows = p.B * p.Hq * T, S = num_splits(p.Lk);
  const int64_t G = p.Hq / p.Hkv, V = p.visual_end - p.visual_start;
  float* lse = static_cast<float*>(p.workspace);
  float* part = reinterpret_cast<float*>(static_cast<char*>(p.workspace) +
                                         align256(sizeof(float) * size_t(rows)));
  const size_t smem1 = sizeof(float) * size_t(kTile * (p.D + 1) + 2 * G * kRowChunk);
  const size_t smem2 = sizeof(float) * size_t(kTile * (p.D + 1) + kWarps * kTile);
  cudaError_t e = cudaFuncSetAttribute(lse_partial_kernel<scalar_t>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem1));
  if (e != cudaSuccess) return e;
  e = cudaFuncSetAttribute(scores_kernel<scalar_t>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                           int(smem2));
  if (e != cudaSuccess) return e;
  const dim3 grid1(unsigned(S), unsigned(p.B * p.Hkv), unsigned((T + kRowChunk - 1) / kRowChunk));
  ADAPTTOKEN_LAUNCH(lse_partial_kernel<scalar_t>, grid1, kThreads, smem1, stream)(p, S, part);
  ADAPTTOKEN_LAUNCH(lse_combine_kernel, unsigned((rows + 255) / 256), 256, 0, stream)(part, rows, S, lse);
  const dim3 grid2(unsigned((V + kTile - 1) / kTile), unsigned(p.B));
  ADAPTTOKEN_LAUNCH(scores_kernel<scalar_t>, grid2, kThreads, smem2, stream)(p, lse);
  return cudaGetLastError();
}

template cudaError_t attention_scores<float>(const AttentionScoresParams&, cudaStream_t);
template cudaError_t attention_scores<bf16_t>(const AttentionScoresParams&, cudaStream_t);
template cudaError_t attention_scores<fp16_t>(const AttentionScoresParams&, cudaStream_t);

}  // namespace adapttoken::cuda
