#include "common.cuh"
#include "softmax_entropy.cuh"

namespace adapttoken::cuda {
namespace {

constexpr int kThreads = 512;

struct State {
  float m, s, t;  // running max, sum exp(y - m), sum exp(y - m) (y - m)
  bool nan;
};

__device__ __forceinline__ void push(State& st, float y) {
  if (y != y || y == INFINITY) {  // NaN or +inf: the row's entropy is NaN
    st.nan = true;
    return;
  }
  if (y == -INFINITY) return;  // probability 0
  if (y > st.m) {
    // Rescale to the new max: t' = a (t + (m - m') s), s' = a s (nothing to scale at m = -inf).
    if (st.m != -INFINITY) {
      const float dm = st.m - y, a = expf(dm);
      st.t = a * (st.t + dm * st.s);
      st.s *= a;
    }
    st.m = y;
  }
  const float d = y - st.m, e = expf(d);
  st.s += e;
  st.t += e * d;
}

__device__ __forceinline__ State merge(State a, State b) {
  State r;
  r.nan = a.nan || b.nan;
  r.m = fmaxf(a.m, b.m);
  r.s = r.t = 0.f;
  if (a.m != -INFINITY) {
    const float dm = a.m - r.m, e = expf(dm);
    r.s += e * a.s;
    r.t += e * (a.t + dm * a.s);
  }
  if (b.m != -INFINITY) {
    const float dm = b.m - r.m, e = expf(dm);
    r.s += e * b.s;
    r.t += e * (b.t + dm * b.s);
  }
  return r;
}

__device__ __forceinline__ State shfl_state(State st, int offset) {
  State o;
  o.m = __shfl_xor_sync(kFullMask, st.m, offset);
  o.s = __shfl_xor_sync(kFullMask, st.s, offset);
  o.t = __shfl_xor_sync(kFullMask, st.t, offset);
  o.nan = __shfl_xor_sync(kFullMask, int(st.nan), offset) != 0;
  return o;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) entropy_kernel(SoftmaxEntropyParams p) {
  const scalar_t* row = static_cast<const scalar_t*>(p.logits) + int64_t(blockIdx.x) * p.row_stride;
  const float inv_t = 1.f / p.temperature;
  State st{-INFINITY, 0.f, 0.f, false};
  if (p.index != nullptr) {
    for (int64_t c = threadIdx.x; c < p.K; c += kThreads)
      push(st, load_float(row + __ldg(p.index + c) * p.col_stride) * inv_t);
  } else if (p.col_stride == 1 && (reinterpret_cast<uintptr_t>(row) & 15) == 0) {
    // 16-byte loads (4 float or 8 bf16/fp16 per thread per step), then the ragged tail.
    constexpr int kVec = 16 / sizeof(scalar_t);
    const int64_t nvec = p.V / kVec;
    const uint4* v = reinterpret_cast<const uint4*>(row);
    for (int64_t i = threadIdx.x; i < nvec; i += kThreads) {
      const uint4 w = __ldg(v + i);
      scalar_t e[kVec];  // memcpy, not a scalar_t* into w: that breaks strict aliasing
      memcpy(e, &w, sizeof w);
#pragma unroll
      for (int j = 0; j < kVec; ++j) push(st, to_float_dev(e[j]) * inv_t);
    }
    for (int64_t c = nvec * kVec + threadIdx.x; c < p.V; c += kThreads)
      push(st, load_float(row + c) * inv_t);
  } else {
    for (int64_t c = threadIdx.x; c < p.V; c += kThreads)
      push(st, load_float(row + c * p.col_stride) * inv_t);
  }
  for (int o = 16; o > 0; o >>= 1) st = merge(st, shfl_state(st, o));
  __shared__ State warp_state[kThreads / 32];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warp_state[warp] = st;
  __syncthreads();
  if (warp == 0) {
    st = lane < kThreads / 32 ? warp_state[lane] : State{-INFINITY, 0.f, 0.f, false};
    for (int o = 16; o > 0; o >>= 1) st = merge(st, shfl_state(st, o));
    if (lane == 0)
      p.out[blockIdx.x] = (st.nan || st.m == -INFINITY) ? __int_as_float(0x7fc00000)
                                                       : logf(st.s) - st.t / st.s;
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t softmax_entropy(const SoftmaxEntropyParams& p, cudaStream_t stream) {
  if (p.rows == 0) return cudaSuccess;
  // One CTA per row; rows beyond the grid limit go in further launches.
  constexpr int64_t kMaxGrid = 2147483647;
  for (int64_t r0 = 0; r0 < p.rows; r0 += kMaxGrid) {
    SoftmaxEntropyParams q = p;
    q.rows = p.rows - r0 < kMaxGrid ? p.rows - r0 : kMaxGrid;
    q.logits = static_cast<const scalar_t*>(p.logits) + r0 * p.row_stride;
    q.out = p.out + r0;
    ADAPTTOKEN_LAUNCH(entropy_kernel<scalar_t>, unsigned(q.rows), kThreads, 0, stream)(q);
  }
  return cudaGetLastError();
}

template cudaError_t softmax_entropy<float>(const SoftmaxEntropyParams&, cudaStream_t);
template cudaError_t softmax_entropy<bf16_t>(const SoftmaxEntropyParams&, cudaStream_t);
template cudaError_t softmax_entropy<fp16_t>(const SoftmaxEntropyParams&, cudaStream_t);

}  // namespace adapttoken::cuda
