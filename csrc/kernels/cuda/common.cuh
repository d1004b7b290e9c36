// Framework-agnostic CUDA helpers shared by the kernels: dtype loads and block
// reductions. No torch headers; kernels take raw pointers and element strides.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../common.h"
#include "launch.cuh"

namespace adapttoken::cuda {

// Storage types are the layout-compatible bf16_t / fp16_t of ../common.h.
__device__ __forceinline__ float load_float(const float* p) { return __ldg(p); }
__device__ __forceinline__ float load_float(const bf16_t* p) {
  return __bfloat162float(__ushort_as_bfloat16(__ldg(reinterpret_cast<const unsigned short*>(p))));
}
__device__ __forceinline__ float load_float(const fp16_t* p) {
  return __half2float(__ushort_as_half(__ldg(reinterpret_cast<const unsigned short*>(p))));
}

// Conversions of values already in registers.
__device__ __forceinline__ float to_float_dev(float x) { return x; }
__device__ __forceinline__ float to_float_dev(bf16_t x) {
  return __bfloat162float(__ushort_as_bfloat16(x.bits));
}
__device__ __forceinline__ float to_float_dev(fp16_t x) {
  return __half2float(__ushort_as_half(x.bits));
}

constexpr unsigned kFullMask = 0xffffffffu;

__device__ __forceinline__ float warp_max(float x) {
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, o));
  return x;
}

// The larger of a and b, NaN if either is NaN (fmaxf drops NaN), as torch.amax and the
// CPU kernels do.
__device__ __forceinline__ float max_nan(float a, float b) { return (a != a || a > b) ? a : b; }

__device__ __forceinline__ float warp_sum(float x) {
  for (int o = 16; o > 0; o >>= 1) x += __shfl_xor_sync(kFullMask, x, o);
  return x;
}

// Maps a float to uint32 so that unsigned order is float order; NaN maps to 0
// (below -inf), and -0.0 to the key of +0.0. Same as kernels/cpu/segmented_topk.h.
__device__ __forceinline__ uint32_t orderable_bits(float x) {
  if (x != x) return 0u;
  if (x == 0.f) x = 0.f;
  const uint32_t u = __float_as_uint(x);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

}  // namespace adapttoken::cuda
