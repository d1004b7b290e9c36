// Emulator stand-in for <cuda_bf16.h>: __nv_bfloat16 as 16 bits, the conversions the
// kernels use, float -> bf16 rounding to nearest even as __float2bfloat16 does.
#pragma once

#include <cstdint>
#include <cstring>

struct __nv_bfloat16 { unsigned short __x; };

inline __nv_bfloat16 __ushort_as_bfloat16(unsigned short x) { return __nv_bfloat16{x}; }
inline unsigned short __bfloat16_as_ushort(__nv_bfloat16 x) { return x.__x; }

inline float __bfloat162float(__nv_bfloat16 x) {
  const uint32_t u = uint32_t(x.__x) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline __nv_bfloat16 __float2bfloat16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return __nv_bfloat16{uint16_t((u >> 16) | 0x40u)};  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);  // round to nearest, ties to even
  return __nv_bfloat16{uint16_t(u >> 16)};
}
