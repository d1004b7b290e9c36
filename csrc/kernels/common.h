// Framework-agnostic scalar types and helpers shared by the CPU kernels.
// No torch headers: kernels take raw pointers and element strides.
#pragma once

#include <cstdint>
#include <cstring>

namespace adapttoken {

// 16-bit float storage types, layout-compatible with torch's BFloat16 / Half.
struct bf16_t { uint16_t bits; };
struct fp16_t { uint16_t bits; };

inline float to_float(float x) { return x; }

inline float to_float(bf16_t x) {
  uint32_t u = uint32_t(x.bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_float(fp16_t x) {
  const uint32_t sign = uint32_t(x.bits & 0x8000u) << 16;
  const uint32_t exp = (x.bits >> 10) & 0x1fu;
  const uint32_t mant = x.bits & 0x3ffu;
  uint32_t u;
  if (exp == 0x1f) {
    u = sign | 0x7f800000u | (mant << 13);  // inf / nan
  } else if (exp != 0) {
    u = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    u = sign;  // +-0
  } else {
    const float f = float(mant) * 5.9604644775390625e-8f;  // subnormal: mant * 2^-24
    return sign ? -f : f;
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace adapttoken
