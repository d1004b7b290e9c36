#include "common.cuh"
#include "local_entropy.cuh"

namespace adapttoken::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int kTile = 32;           // tokens of one row per CTA
constexpr size_t kSmemBytes = 48 * 1024;

struct Layout {
  int k, r, cols, chunk, ld;         // window, radius, staged columns, channels per chunk, row pitch
  size_t bytes() const {
    return sizeof(float) * (size_t(k) * cols * ld + size_t(kTile) * k * k + size_t(k) * cols);
  }
};

// The largest power-of-two channel chunk (<= 64) whose staging fits kSmemBytes.
Layout make_layout(int k) {
  Layout l{k, k / 2, kTile + 2 * (k / 2), 64, 65};
  while (l.chunk > 1 && l.bytes() > kSmemBytes) l.chunk /= 2, l.ld = l.chunk + 1;
  return l;
}

template <typename scalar_t>
__global__ void __launch_bounds__(kThreads) local_entropy_kernel(LocalEntropyParams p, Layout l) {
  ADAPTTOKEN_DYNAMIC_SHARED(float, smem);
  const int k = l.k, r = l.r, kk = k * k;
  float* tile = smem;                                  // [k rows][cols][ld] fp32 channels
  float* acc = tile + size_t(k) * l.cols * l.ld;       // [kTile][k * k] partial dots
  float* norm2 = acc + size_t(kTile) * kk;             // [k rows][cols] squared norms
  const int64_t tiles = (p.W + kTile - 1) / kTile;
  const int64_t t = blockIdx.x / (p.H * tiles), h = blockIdx.x / tiles % p.H;
  const int64_t w0 = blockIdx.x % tiles * kTile;
  const int tw = int(min(int64_t(kTile), p.W - w0));
  const int64_t h0 = max(int64_t(0), h - r), c0w = max(int64_t(0), w0 - r);
  const int nh = int(min(p.H, h + r + 1) - h0);
  const int nw = int(min(p.W, w0 + tw + r) - c0w);
  const scalar_t* x = static_cast<const scalar_t*>(p.tokens) + t * p.stride[0];
  const int pairs = tw * kk;
  for (int q = threadIdx.x; q < pairs; q += kThreads) acc[q] = 0.f;
  for (int e = threadIdx.x; e < nh * nw; e += kThreads) norm2[e] = 0.f;
  for (int64_t c0 = 0; c0 < p.C; c0 += l.chunk) {
    const int n = int(min(int64_t(l.chunk), p.C - c0));
    __syncthreads();  // the previous chunk is consumed
    for (int e = threadIdx.x; e < nh * nw * n; e += kThreads) {
      const int c = e % n, cell = e / n;
      tile[cell * l.ld + c] = load_float(x + (h0 + cell / nw) * p.stride[1] +
                                         (c0w + cell % nw) * p.stride[2] + (c0 + c) * p.stride[3]);
    }
    __syncthreads();
    for (int e = threadIdx.x; e < nh * nw; e += kThreads) {
      const float* a = tile + e * l.ld;
      float s = 0.f;
      for (int c = 0; c < n; ++c) s += a[c] * a[c];
      norm2[e] += s;
    }
    for (int q = threadIdx.x; q < pairs; q += kThreads) {
      const int i = q / kk, j = q % kk;
      const int64_t hh = h + j / k - r, ww = w0 + i + j % k - r;
      if (j == kk / 2 || hh < 0 || hh >= p.H || ww < 0 || ww >= p.W) continue;
      const float* a = tile + ((h - h0) * nw + (w0 + i - c0w)) * l.ld;
      const float* b = tile + ((hh - h0) * nw + (ww - c0w)) * l.ld;
      float s = 0.f;
      for (int c = 0; c < n; ++c) s += a[c] * b[c];
      acc[q] += s;
    }
  }
  __syncthreads();
  if (threadIdx.x >= tw) return;
  const int i = threadIdx.x;
  const int self = int(h - h0) * nw + int(w0 + i - c0w);
  const float inv_i = norm2[self] > 0.f ? rsqrtf(norm2[self]) : 0.f;  // zero vector: cosine 0
  const float inv_t = 1.f / p.temperature;
  // Two passes over at most k * k - 1 neighbours: the max, then sum exp and sum exp * (y - m).
  float m = -INFINITY;
  int count = 0;
  bool nan = false;
  for (int pass = 0; pass < 2; ++pass) {
    float s = 0.f, u = 0.f;
    for (int j = 0; j < kk; ++j) {
      const int64_t hh = h + j / k - r, ww = w0 + i + j % k - r;
      if (j == kk / 2 || hh < 0 || hh >= p.H || ww < 0 || ww >= p.W) continue;
      const float n2 = norm2[(hh - h0) * nw + (ww - c0w)];
      const float y = acc[i * kk + j] * inv_i * (n2 > 0.f ? rsqrtf(n2) : 0.f) * inv_t;
      if (pass == 0) {
        nan |= y != y;
        m = fmaxf(m, y);
        ++count;
      } else {
        const float d = y - m, e = expf(d);
        s += e;
        u += e * d;
      }
    }
    if (pass == 1) {
      float* out = p.out + (t * p.H + h) * p.W + w0 + i;
      if (count < 2) *out = 0.f;
      else if (nan) *out = __int_as_float(0x7fc00000);
      else *out = (logf(s) - u / s) / logf(float(count));
    }
  }
}

}  // namespace

template <typename scalar_t>
cudaError_t local_entropy(const LocalEntropyParams& p, cudaStream_t stream) {
  if (p.window < 3 || p.window > kLocalEntropyMaxWindow || p.window % 2 == 0)
    return cudaErrorInvalidValue;
  const Layout l = make_layout(int(p.window));
  const int64_t blocks = p.T * p.H * ((p.W + kTile - 1) / kTile);
  if (blocks == 0) return cudaSuccess;
  if (blocks > 2147483647) return cudaErrorInvalidConfiguration;
  ADAPTTOKEN_LAUNCH(local_entropy_kernel<scalar_t>, unsigned(blocks), kThreads, l.bytes(), stream)(p, l);
  return cudaGetLastError();
}

template cudaError_t local_entropy<float>(const LocalEntropyParams&, cudaStream_t);
template cudaError_t local_entropy<bf16_t>(const LocalEntropyParams&, cudaStream_t);
template cudaError_t local_entropy<fp16_t>(const LocalEntropyParams&, cudaStream_t);

}  // namespace adapttoken::cuda
