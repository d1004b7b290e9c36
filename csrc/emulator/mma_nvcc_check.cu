// Compiled by nvcc in CI (.ci/run) so the inline PTX of kernels/cuda/mma.cuh is checked for
// every target; the same tile kernel runs in the emulator in selftest.cpp. Not built into
// the extension.
#include "../kernels/cuda/mma.cuh"

namespace adapttoken::cuda {

__global__ void mma_nvcc_check(const unsigned short* a, const unsigned short* b, float* d) {
  __shared__ __align__(16) unsigned short as[16 * 16], bs[16 * 8];
  const int lane = threadIdx.x;
  cp_async_16(as + lane * 8, a + lane * 8);
  if (lane < 16) cp_async_16(bs + lane * 8, b + lane * 8);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  uint32_t af[4], bf[2], bt[2];
  const int j = lane / 8, r = lane % 8;
  ldmatrix_x4(af, as + (r + (j & 1) * 8) * 16 + (j >> 1) * 8);
  ldmatrix_x2(bf, bs + r * 16 + (j % 2) * 8);
  ldmatrix_x2<true>(bt, bs + ((j % 2) * 8 + r) * 8);
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, x[4], y[4];
  mma_m16n8k16_bf16(x, af, bf, acc);
  mma_m16n8k16_f16(y, af, bt, x);
  for (int i = 0; i < 4; ++i) d[lane * 4 + i] = y[i];
}

}  // namespace adapttoken::cuda
