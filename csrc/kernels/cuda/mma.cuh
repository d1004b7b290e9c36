// Warp-level matrix instructions for a tensor-core kernel (sm_80+): mma.sync m16n8k16
// with bf16 or fp16 inputs and fp32 accumulators, ldmatrix, cp.async. On nvcc each is one
// PTX instruction; in the CUDA emulator (csrc/emulator/) each is a warp rendezvous that
// moves the data as the PTX ISA's fragment layouts say, so a kernel built on them can be
// checked without a GPU. Not used by the kernels yet.
//
// Fragments (PTX ISA, "Matrix fragments for mma.m16n8k16", 16-bit types), for lane l with
// g = l / 4 and t = l % 4; each uint32_t holds two 16-bit values, the lower-indexed one in
// the low half:
//   A (16 x 16, row-major) a[0]: A[g][2t, 2t+1]    a[1]: A[g+8][2t, 2t+1]
//                          a[2]: A[g][2t+8, 2t+9]  a[3]: A[g+8][2t+8, 2t+9]
//   B (16 x 8, "col")      b[0]: B[2t, 2t+1][g]    b[1]: B[2t+8, 2t+9][g]
//   C, D (16 x 8, fp32)    c[0], c[1]: C[g][2t, 2t+1]   c[2], c[3]: C[g+8][2t, 2t+1]
#pragma once

#include <cstdint>
#include <cstring>

#include "common.cuh"

namespace adapttoken::cuda {

#if defined(ADAPTTOKEN_CUDA_EMULATOR)
namespace mma_emu {

inline float half_value(uint32_t word, int hi, bool bf16) {
  const unsigned short bits = (unsigned short)(hi ? word >> 16 : word & 0xffffu);
  return bf16 ? __bfloat162float(__ushort_as_bfloat16(bits)) : __half2float(__ushort_as_half(bits));
}

struct Operands {
  uint32_t a[4], b[2];
};

// D = A B + C over the warp, from every lane's fragments; fp32 products summed in k order.
inline void mma(float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4], bool bf16,
                const char* site) {
  Operands mine, all[32];
  std::memcpy(mine.a, a, sizeof mine.a);
  std::memcpy(mine.b, b, sizeof mine.b);
  emu::warp_exchange(site, 0xffffffffu, &mine, all, sizeof mine);
  float A[16][16], B[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int h = 0; h < 2; ++h) {
      A[g][2 * t + h] = half_value(all[l].a[0], h, bf16);
      A[g + 8][2 * t + h] = half_value(all[l].a[1], h, bf16);
      A[g][2 * t + 8 + h] = half_value(all[l].a[2], h, bf16);
      A[g + 8][2 * t + 8 + h] = half_value(all[l].a[3], h, bf16);
      B[2 * t + h][g] = half_value(all[l].b[0], h, bf16);
      B[2 * t + 8 + h][g] = half_value(all[l].b[1], h, bf16);
    }
  }
  const int lane = emu::g_thread->lane, g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
    float acc = c[i];
    for (int k = 0; k < 16; ++k) acc += A[row][k] * B[k][col];
    d[i] = acc;
  }
}

// ldmatrix .x1/.x2/.x4 (optionally .trans): lane l gives the row address of matrix l / 8,
// row l % 8; lane l receives, of each matrix j, elements (l / 4, 2 (l % 4) + {0, 1}), or
// with .trans elements (2 (l % 4) + {0, 1}, l / 4).
inline void ldmatrix(uint32_t* r, int count, const void* row, bool trans, const char* site) {
  const void* rows[32];
  emu::warp_exchange(site, 0xffffffffu, &row, rows, sizeof row);
  if (reinterpret_cast<uintptr_t>(row) % 16)
    emu::fail("ldmatrix: row address %p is not 16-byte aligned", row);
  const int lane = emu::g_thread->lane;
  for (int j = 0; j < count; ++j) {
    unsigned short e[2];
    for (int h = 0; h < 2; ++h) {
      const int rr = trans ? 2 * (lane % 4) + h : lane / 4, cc = trans ? lane / 4 : 2 * (lane % 4) + h;
      std::memcpy(&e[h], static_cast<const char*>(rows[j * 8 + rr]) + 2 * cc, 2);
    }
    r[j] = uint32_t(e[0]) | uint32_t(e[1]) << 16;
  }
}

}  // namespace mma_emu
#endif

// D = A B + C, A and B bf16 (mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32).
__device__ __forceinline__ void mma_m16n8k16_bf16(float d[4], const uint32_t a[4],
                                                  const uint32_t b[2], const float c[4]) {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  mma_emu::mma(d, a, b, c, true, EMU_SITE);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#endif
}

// D = A B + C, A and B fp16 (mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32).
__device__ __forceinline__ void mma_m16n8k16_f16(float d[4], const uint32_t a[4],
                                                 const uint32_t b[2], const float c[4]) {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  mma_emu::mma(d, a, b, c, false, EMU_SITE);
#else
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%10,%11,%12,%13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
        "f"(c[2]), "f"(c[3]));
#endif
}

// Four 8 x 8 b16 matrices from shared memory (ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16);
// `row`: this lane's row address (see above), 16-byte aligned.
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x4(uint32_t r[4], const void* row) {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  mma_emu::ldmatrix(r, 4, row, kTrans, EMU_SITE);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(addr));
#endif
}

// Two 8 x 8 b16 matrices (lanes 0-15 give the row addresses).
template <bool kTrans = false>
__device__ __forceinline__ void ldmatrix_x2(uint32_t r[2], const void* row) {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  mma_emu::ldmatrix(r, 2, row, kTrans, EMU_SITE);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(row));
  if constexpr (kTrans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(r[0]), "=r"(r[1]) : "r"(addr));
#endif
}

// 16 bytes global -> shared without registers (cp.async.cg.shared.global), both 16-byte
// aligned; complete after cp_async_commit() and cp_async_wait<n>() with n newer groups.
__device__ __forceinline__ void cp_async_16(void* shared_dst, const void* global_src) {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  emu::cp_async(shared_dst, global_src, 16);
#else
  const unsigned addr = static_cast<unsigned>(__cvta_generic_to_shared(shared_dst));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(addr), "l"(global_src));
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most n of this thread's committed groups are still in flight.
template <int n>
__device__ __forceinline__ void cp_async_wait() {
#if defined(ADAPTTOKEN_CUDA_EMULATOR)
  emu::cp_async_wait(n);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(n));
#endif
}

}  // namespace adapttoken::cuda
