// Emulator stand-in for cub::BlockScan: same interface, and CUB's rule enforced that a
// TempStorage is not reused until a __syncthreads() after the previous collective on it
// (CUB's threads may still read it after they return). Every thread of the block must
// call it, with blockDim = BLOCK_DIM_X x BLOCK_DIM_Y x BLOCK_DIM_Z.
#pragma once

#include <cstdint>

#include "../../cuda_runtime.h"

namespace cub {

enum BlockScanAlgorithm { BLOCK_SCAN_RAKING, BLOCK_SCAN_RAKING_MEMOIZE, BLOCK_SCAN_WARP_SCANS };

template <typename T, int BLOCK_DIM_X, BlockScanAlgorithm ALGORITHM = BLOCK_SCAN_RAKING,
          int BLOCK_DIM_Y = 1, int BLOCK_DIM_Z = 1, int LEGACY_PTX_ARCH = 0>
class BlockScan {
  static constexpr int kThreads = BLOCK_DIM_X * BLOCK_DIM_Y * BLOCK_DIM_Z;

 public:
  struct TempStorage {
    T slot[kThreads];
    uint64_t block;  // emu::block_serial() of the last use (shared memory starts as garbage)
    uint64_t read_epoch;  // emu::barrier_count() while threads may still read `slot`
  };

  __device__ explicit BlockScan(TempStorage& storage) : s_(storage) {}

  __device__ void ExclusiveSum(T input, T& output) { T a; ExclusiveSum(input, output, a); }
  __device__ void InclusiveSum(T input, T& output) { T a; InclusiveSum(input, output, a); }
  __device__ void InclusiveSum(T input, T& output, T& aggregate) {
    ExclusiveSum(input, output, aggregate);
    output = output + input;
  }

  __device__ void ExclusiveSum(T input, T& output, T& aggregate) {
    const dim3 b = blockDim;
    if (int(b.x) != BLOCK_DIM_X || int(b.y) != BLOCK_DIM_Y || int(b.z) != BLOCK_DIM_Z)
      emu::fail("cub::BlockScan<%d, %d, %d> used in a block of %u x %u x %u threads", BLOCK_DIM_X,
                BLOCK_DIM_Y, BLOCK_DIM_Z, b.x, b.y, b.z);
    if (s_.block == emu::block_serial() && s_.read_epoch == emu::barrier_count())
      emu::fail("cub::BlockScan: TempStorage reused without a __syncthreads() after the previous "
                "scan (thread %d)", emu::g_thread->tid);
    const int me = emu::g_thread->tid;
    s_.slot[me] = input;
    emu::syncthreads("cub::BlockScan (internal barrier)");
    s_.block = emu::block_serial();
    s_.read_epoch = emu::barrier_count();
    T before = T(), all = T();
    for (int i = 0; i < kThreads; ++i) {
      if (i == me) before = all;
      all = all + s_.slot[i];
    }
    output = before;
    aggregate = all;
  }

 private:
  TempStorage& s_;
};

}  // namespace cub
