// Emulator stand-in for <cuda_fp16.h>: __half as 16 bits (IEEE binary16), with the
// conversions the kernels use. float -> half rounds to nearest even (g++'s _Float16).
#pragma once

#include <cstdint>
#include <cstring>

struct __half { unsigned short __x; };

inline __half __ushort_as_half(unsigned short x) { return __half{x}; }
inline unsigned short __half_as_ushort(__half x) { return x.__x; }

inline float __half2float(__half h) {
  const uint32_t sign = uint32_t(h.__x & 0x8000u) << 16, e = (h.__x >> 10) & 0x1fu,
                 m = h.__x & 0x3ffu;
  uint32_t u;
  if (e == 0x1f) {
    u = sign | 0x7f800000u | (m << 13);  // inf, NaN
  } else if (e != 0) {
    u = sign | ((e + 112u) << 23) | (m << 13);  // normal
  } else if (m == 0) {
    u = sign;
  } else {
    int s = 0;  // subnormal: normalise the mantissa
    uint32_t mm = m;
    while (!(mm & 0x400u)) mm <<= 1, ++s;
    u = sign | ((113u - uint32_t(s)) << 23) | ((mm & 0x3ffu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline __half __float2half(float f) {
  const _Float16 h = static_cast<_Float16>(f);
  __half r;
  std::memcpy(&r.__x, &h, 2);
  return r;
}
