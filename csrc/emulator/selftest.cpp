// The emulator's own tests: warp collectives compute what CUDA documents, the 16-bit
// conversions round as CUDA's do, and each broken CUDA rule fails the launch with a
// message that names it. Standalone (no torch):
//   g++ -std=c++17 -O1 -Icsrc/emulator/include csrc/emulator/selftest.cpp csrc/emulator/emu.cpp
// Prints one line per check; exit status 1 if any failed.
#include <cub/block/block_scan.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <string>

#include "../kernels/cuda/launch.cuh"
#include "../kernels/cuda/mma.cuh"

extern "C" void emu_set_order(int order, unsigned long long seed);

namespace {

int g_failed = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok  " : "FAIL", what);
  if (!ok) ++g_failed;
}

// The launch must fail with a message containing `needle`.
void expect_error(const char* needle, const char* what) {
  const cudaError_t e = cudaGetLastError();
  const std::string msg = cudaGetErrorString(e);
  const bool ok = e != cudaSuccess && msg.find(needle) != std::string::npos;
  std::printf("%s %s%s%s\n", ok ? "ok  " : "FAIL", what, ok ? "" : ": got ", ok ? "" : msg.c_str());
  if (!ok) ++g_failed;
}

__global__ void shuffles(int* out) {
  const int lane = threadIdx.x % 32;
  int* o = out + threadIdx.x * 8;
  o[0] = __shfl_xor_sync(0xffffffffu, lane, 5);
  o[1] = __shfl_up_sync(0xffffffffu, lane, 3);
  o[2] = __shfl_down_sync(0xffffffffu, lane, 3, 8);
  o[3] = __shfl_sync(0xffffffffu, lane, 7, 16);
  o[4] = int(__ballot_sync(0xffffffffu, lane % 3 == 0));
  o[5] = __any_sync(0xffffffffu, lane == 31);
  o[6] = __all_sync(0xffffffffu, lane < 31);
  o[7] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, lane, 1) : __shfl_xor_sync(0xffff0000u, lane, 2);
}

__global__ void divergent_barrier(int* out) {
  if (threadIdx.x < 32) {
    __syncthreads();
  } else {
    __syncthreads();
  }
  out[threadIdx.x] = 1;
}

// A lane-divergent `continue` before a full-mask shuffle.
__global__ void divergent_shuffle(int* out) {
  int acc = 0;
  for (int i = 0; i < 2; ++i) {
    if (threadIdx.x == 3 && i == 0) continue;
    acc += __shfl_xor_sync(0xffffffffu, int(threadIdx.x), 1);
  }
  out[threadIdx.x] = acc;
}

__global__ void exit_before_shuffle(int* out) {
  if (threadIdx.x == 0) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1, 1);
}

__global__ void exit_before_barrier(int* out) {
  if (threadIdx.x >= 48) return;
  __syncthreads();
  out[threadIdx.x] = 1;
}

__global__ void mask_without_self(int* out) {
  out[threadIdx.x] = __shfl_sync(0x1u, 1, 0);
}

__global__ void reads_outside_mask(int* out) {
  out[threadIdx.x] = __shfl_xor_sync(0x0000ffffu, 1, 16);
}

using Scan = cub::BlockScan<int, 64>;
__global__ void scan_twice(int* out, bool barrier) {
  __shared__ Scan::TempStorage storage;
  int a, b, total;
  Scan(storage).ExclusiveSum(1, a, total);
  if (barrier) __syncthreads();
  Scan(storage).ExclusiveSum(2, b);
  out[threadIdx.x] = a * 1000 + b + total * 1000000;
}

__global__ void uses_dynamic_shared(float* out) {
  ADAPTTOKEN_DYNAMIC_SHARED(float, smem);
  out[threadIdx.x] = smem[threadIdx.x];  // never written: shared memory starts as garbage
}

__global__ void writes_past_dynamic_shared(float*) {
  ADAPTTOKEN_DYNAMIC_SHARED(float, smem);
  smem[64 + threadIdx.x] = 0.f;
}

// One warp: A [16][16] and B given as [8 n][16 k] (or, kTransB, as [16 k][8 n]) staged by
// cp.async, fragments by ldmatrix, D = A B by mma.sync m16n8k16.
template <bool kBf16, bool kTransB>
__global__ void mma_tile(const unsigned short* a, const unsigned short* b, float* d) {
  using namespace adapttoken::cuda;
  __shared__ __align__(16) unsigned short as[16 * 16], bs[16 * 8];
  const int lane = threadIdx.x;
  cp_async_16(as + lane * 8, a + lane * 8);
  if (lane < 16) cp_async_16(bs + lane * 8, b + lane * 8);
  cp_async_commit();
  cp_async_wait<0>();
  __syncwarp();
  uint32_t af[4], bf[2];
  const int j = lane / 8, r = lane % 8;
  ldmatrix_x4(af, as + (r + (j & 1) * 8) * 16 + (j >> 1) * 8);
  const int jb = (lane / 8) % 2;
  if (kTransB) ldmatrix_x2<true>(bf, bs + (jb * 8 + r) * 8);  // [k][n]: rows of 8 n
  else ldmatrix_x2(bf, bs + r * 16 + jb * 8);                  // [n][k]: rows of 16 k
  float acc[4] = {0.f, 0.f, 0.f, 0.f}, out[4];
  if (kBf16) mma_m16n8k16_bf16(out, af, bf, acc);
  else mma_m16n8k16_f16(out, af, bf, acc);
  const int g = lane / 4, t = lane % 4;
  d[g * 8 + 2 * t] = out[0], d[g * 8 + 2 * t + 1] = out[1];
  d[(g + 8) * 8 + 2 * t] = out[2], d[(g + 8) * 8 + 2 * t + 1] = out[3];
}

__global__ void reads_before_cp_async_wait(const float* src, float* out) {
  __shared__ __align__(16) float s[4 * 32];
  adapttoken::cuda::cp_async_16(s + threadIdx.x * 4, src + threadIdx.x * 4);
  adapttoken::cuda::cp_async_commit();
  out[threadIdx.x] = s[threadIdx.x * 4];  // no cp_async_wait: still garbage
  adapttoken::cuda::cp_async_wait<0>();
  out[32 + threadIdx.x] = s[threadIdx.x * 4];
}

template <bool kBf16, bool kTransB>
void check_mma(const char* what) {
  alignas(16) unsigned short a[256], b[128];
  float fa[16][16], fb[16][8], d[128];
  for (int i = 0; i < 16; ++i)
    for (int k = 0; k < 16; ++k) {
      const float v = float((i * 7 + k * 3) % 11 - 5) / 4.f + (kBf16 ? 1.f / 64 : 1.f / 512) * float(k % 3);
      a[i * 16 + k] = kBf16 ? __bfloat16_as_ushort(__float2bfloat16(v)) : __half_as_ushort(__float2half(v));
      fa[i][k] = kBf16 ? __bfloat162float(__ushort_as_bfloat16(a[i * 16 + k])) : __half2float(__ushort_as_half(a[i * 16 + k]));
    }
  for (int k = 0; k < 16; ++k)
    for (int n = 0; n < 8; ++n) {
      const float v = float((k * 5 + n * 9) % 13 - 6) / 8.f;
      const unsigned short h = kBf16 ? __bfloat16_as_ushort(__float2bfloat16(v)) : __half_as_ushort(__float2half(v));
      b[kTransB ? k * 8 + n : n * 16 + k] = h;
      fb[k][n] = kBf16 ? __bfloat162float(__ushort_as_bfloat16(h)) : __half2float(__ushort_as_half(h));
    }
  ADAPTTOKEN_LAUNCH((mma_tile<kBf16, kTransB>), 1, 32, 0, nullptr)(a, b, d);
  bool ok = cudaGetLastError() == cudaSuccess;
  for (int i = 0; i < 16; ++i)
    for (int n = 0; n < 8; ++n) {
      double want = 0;
      for (int k = 0; k < 16; ++k) want += double(fa[i][k]) * fb[k][n];
      ok &= std::fabs(d[i * 8 + n] - want) <= 1e-5 * (1 + std::fabs(want));
    }
  expect(ok, what);
}

}  // namespace

int main() {
  for (int order = 0; order < 3; ++order) {
    emu_set_order(order, 7);
    int out[64 * 8];
    ADAPTTOKEN_LAUNCH(shuffles, 1, 64, 0, nullptr)(out);
    bool ok = cudaGetLastError() == cudaSuccess;
    for (int t = 0; t < 64; ++t) {
      const int l = t % 32, *o = out + t * 8;
      ok &= o[0] == (l ^ 5) && o[1] == (l >= 3 ? l - 3 : l) &&
            o[2] == ((l % 8) + 3 < 8 ? l + 3 : l) && o[3] == (l & ~15) + 7 &&
            unsigned(o[4]) == 0x49249249u && o[5] == 1 && o[6] == 0 &&
            o[7] == (l < 16 ? (l ^ 1) : (l ^ 2));
    }
    expect(ok, "shuffle (xor, up, down width 8, idx width 16), ballot, any, all, two sub-warp masks");
  }
  emu_set_order(0, 1);
  int buf[1024] = {};
  ADAPTTOKEN_LAUNCH(divergent_barrier, 1, 64, 0, nullptr)(buf);
  expect_error("__syncthreads divergence", "__syncthreads at two sites");
  ADAPTTOKEN_LAUNCH(divergent_shuffle, 1, 32, 0, nullptr)(buf);
  expect_error("__shfl_xor_sync", "lane-divergent continue before a shuffle");
  ADAPTTOKEN_LAUNCH(exit_before_shuffle, 1, 32, 0, nullptr)(buf);
  expect_error("exited", "a lane in the mask has exited");
  ADAPTTOKEN_LAUNCH(exit_before_barrier, 1, 64, 0, nullptr)(buf);
  expect_error("exited", "__syncthreads after some threads returned");
  ADAPTTOKEN_LAUNCH(mask_without_self, 1, 32, 0, nullptr)(buf);
  expect_error("does not name the calling lane", "mask without the calling lane");
  ADAPTTOKEN_LAUNCH(reads_outside_mask, 1, 32, 0, nullptr)(buf);
  expect_error("not in the mask", "shuffle source outside the mask");
  ADAPTTOKEN_LAUNCH(scan_twice, 1, 64, 0, nullptr)(buf, false);
  expect_error("TempStorage reused", "cub::BlockScan storage reused without a barrier");
  ADAPTTOKEN_LAUNCH(scan_twice, 1, 64, 0, nullptr)(buf, true);
  expect(cudaGetLastError() == cudaSuccess && buf[5] == 64000000 + 5000 + 10 && buf[63] == 64000000 + 63000 + 126,
         "cub::BlockScan twice with a barrier");
  ADAPTTOKEN_LAUNCH(scan_twice, 1, 32, 0, nullptr)(buf, true);
  expect_error("cub::BlockScan<64", "cub::BlockScan in a block of the wrong size");
  float f[64];
  ADAPTTOKEN_LAUNCH(uses_dynamic_shared, 1, 64, 256, nullptr)(f);
  expect(cudaGetLastError() == cudaSuccess && f[0] != f[0] && f[63] != f[63],
         "shared memory starts as NaN garbage");
  ADAPTTOKEN_LAUNCH(uses_dynamic_shared, 1, 64, 64 * 1024, nullptr)(f);
  expect_error("48 KiB", "more than 48 KiB of dynamic shared memory without the attribute");
  expect(cudaFuncSetAttribute(uses_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 64 * 1024) == cudaSuccess,
         "cudaFuncSetAttribute to 64 KiB");
  ADAPTTOKEN_LAUNCH(uses_dynamic_shared, 1, 64, 64 * 1024, nullptr)(f);
  expect(cudaGetLastError() == cudaSuccess, "64 KiB after the attribute");
  expect(cudaFuncSetAttribute(uses_dynamic_shared, cudaFuncAttributeMaxDynamicSharedMemorySize, 300 * 1024) != cudaSuccess,
         "more than 227 KiB refused");
#if !defined(__SANITIZE_ADDRESS__)
  ADAPTTOKEN_LAUNCH(writes_past_dynamic_shared, 1, 64, 256, nullptr)(f);
  expect_error("past the end of dynamic shared memory", "write past dynamic shared memory");
#endif
  ADAPTTOKEN_LAUNCH(shuffles, 0, 64, 0, nullptr)(buf);
  expect_error("grid 0x1x1", "an empty grid");
  ADAPTTOKEN_LAUNCH(shuffles, 1, 2048, 0, nullptr)(buf);
  expect_error("at most 1024 threads", "a block of 2048 threads");

  check_mma<true, false>("mma.sync m16n8k16 bf16 via cp.async + ldmatrix.x4/.x2 = plain matmul");
  check_mma<false, false>("mma.sync m16n8k16 fp16 = plain matmul");
  check_mma<true, true>("ldmatrix .trans for B stored [k][n] = plain matmul");
  alignas(16) float src[128];
  for (int i = 0; i < 128; ++i) src[i] = float(i);
  float got[64];
  ADAPTTOKEN_LAUNCH(reads_before_cp_async_wait, 1, 32, 0, nullptr)(src, got);
  expect(cudaGetLastError() == cudaSuccess && got[0] != got[0] && got[32] == 0.f && got[63] == 124.f,
         "cp.async data is garbage before cp_async_wait, there after");

  // 16-bit types: exact values, rounding to nearest even, NaN and infinities.
  expect(__bfloat162float(__float2bfloat16(1.00390625f)) == 1.0f &&    // tie -> even
             __bfloat162float(__float2bfloat16(1.01171875f)) == 1.015625f &&  // tie -> even (up)
             __bfloat162float(__ushort_as_bfloat16(0xc0a0)) == -5.0f &&
             __bfloat162float(__float2bfloat16(__int_as_float(0x7fc00000))) != 0.f,
         "bf16 conversions");
  const float h_sub = __half2float(__ushort_as_half(0x0001));
  expect(__half2float(__ushort_as_half(0x3c00)) == 1.0f && h_sub == 5.9604644775390625e-8f &&
             __half2float(__ushort_as_half(0x7c00)) == INFINITY &&
             __half2float(__ushort_as_half(0x03ff)) == 1023 * 5.9604644775390625e-8f &&
             __half_as_ushort(__float2half(65520.f)) == 0x7c00 &&
             __half_as_ushort(__float2half(1.0f + 1.0f / 2048)) == 0x3c00,
         "fp16 conversions (subnormal, inf, overflow, ties to even)");
  std::printf("%d failed\n", g_failed);
  return g_failed ? 1 : 0;
}
