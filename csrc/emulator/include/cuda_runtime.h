// Emulator stand-in for the CUDA runtime API the project uses (see ../README.md).
// "Device" memory is host memory; every call is synchronous; launch errors are
// recorded and returned, once, by cudaGetLastError() as CUDA does.
#pragma once

#include <cstddef>
#include <cstring>

#include "../emu.h"

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorMemoryAllocation = 2,
  cudaErrorInvalidConfiguration = 9,
  cudaErrorLaunchFailure = 719,
};
enum cudaMemcpyKind {
  cudaMemcpyHostToHost = 0,
  cudaMemcpyHostToDevice = 1,
  cudaMemcpyDeviceToHost = 2,
  cudaMemcpyDeviceToDevice = 3,
  cudaMemcpyDefault = 4,
};
enum cudaFuncAttribute {
  cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
};

namespace emu {
cudaError_t take_error();           // the recorded error, cleared
cudaError_t peek_error();
const char* error_string(cudaError_t e);  // with the emulator's message for launch errors
cudaError_t set_max_dynamic_shared(const void* kernel, int bytes);
}  // namespace emu

inline cudaError_t cudaGetLastError() { return emu::take_error(); }
inline cudaError_t cudaPeekAtLastError() { return emu::peek_error(); }
inline const char* cudaGetErrorString(cudaError_t e) { return emu::error_string(e); }
inline cudaError_t cudaStreamSynchronize(cudaStream_t) { return emu::peek_error(); }
inline cudaError_t cudaDeviceSynchronize() { return emu::peek_error(); }
inline cudaError_t cudaMemcpyAsync(void* dst, const void* src, size_t n, cudaMemcpyKind,
                                   cudaStream_t = nullptr) {
  if (n) std::memmove(dst, src, n);
  return cudaSuccess;
}
inline cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind k) {
  return cudaMemcpyAsync(dst, src, n, k);
}
inline cudaError_t cudaMemsetAsync(void* dst, int v, size_t n, cudaStream_t = nullptr) {
  if (n) std::memset(dst, v, n);
  return cudaSuccess;
}
template <typename... P>
cudaError_t cudaFuncSetAttribute(void (*kernel)(P...), cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaErrorInvalidValue;
  return emu::set_max_dynamic_shared(reinterpret_cast<const void*>(kernel), value);
}
