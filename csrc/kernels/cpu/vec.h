// Portable 16-lane float vectors (GCC/Clang vector extensions) and a vector exp.
// No include guard and no namespace: fp32_kernels.cpp includes this file once
// per instruction set, inside that set's namespace and `#pragma GCC target`
// region, so the same code compiles to AVX-512, AVX2 and SSE.
// Needs <cstdint> and <cstring> included before.

constexpr int kLanes = 16;
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf vload(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}
inline void vstore(float* p, vf v) { std::memcpy(p, &v, sizeof v); }
inline vf vsplat(float x) { return vf{} + x; }

// Loads n < kLanes floats and fills the remaining lanes with `fill`.
inline vf vload_partial(const float* p, int64_t n, float fill) {
  float buf[kLanes];
  for (int i = 0; i < kLanes; ++i) buf[i] = i < n ? p[i] : fill;
  return vload(buf);
}

inline vf vmax(vf a, vf b) { return a > b ? a : b; }

inline float hmax(vf v) {
  float r = v[0];
  for (int i = 1; i < kLanes; ++i) r = v[i] > r ? v[i] : r;
  return r;
}
inline float hsum(vf v) {
  float r = 0.f;
  for (int i = 0; i < kLanes; ++i) r += v[i];
  return r;
}

// exp(x), Cephes-style: x = n ln2 + r, exp(r) by a degree-6 polynomial, 2^n by
// exponent bits. Max error about 2 ulp for x in [-87.3, 88]; inputs below
// -87.3 give about 1e-38 instead of 0 (callers mask exact zeros themselves).
// NaN propagates.
inline vf vexp(vf x) {
  const vf lo = vsplat(-87.33654f), hi = vsplat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  // Round x*log2(e) to nearest with the 1.5*2^23 trick (no intrinsics needed).
  const vf magic = vsplat(12582912.0f);
  vf n = (x * 1.44269504088896341f + magic) - magic;
  vf r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  vf y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  vi e = (__builtin_convertvector(n, vi) + 127) << 23;
  vf scale;
  std::memcpy(&scale, &e, sizeof scale);
  return y * scale;
}

