// The two spellings that differ between nvcc and the CUDA emulator (csrc/emulator/):
// a kernel launch and a dynamic shared-memory array. Everything else in the kernels is
// the same source for both.
#pragma once

#include <cuda_runtime.h>

#if defined(ADAPTTOKEN_CUDA_EMULATOR)
// kernel<<<grid, block, shared_bytes, stream>>>(args...) as a C++ call.
#define ADAPTTOKEN_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  ::emu::launch(kernel, grid, block, shared_bytes, stream, #kernel)
#define ADAPTTOKEN_DYNAMIC_SHARED(type, name) type* const name = ::emu::dynamic_shared<type>()
#else
#define ADAPTTOKEN_LAUNCH(kernel, grid, block, shared_bytes, stream) \
  kernel<<<grid, block, shared_bytes, stream>>>
#define ADAPTTOKEN_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif
