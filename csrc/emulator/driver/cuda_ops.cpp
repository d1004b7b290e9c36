// csrc/cuda_ops.cu unchanged, compiled by g++ against the emulator and registered for
// CPU tensors as torch.ops.adapttoken_emu.* (built with -Dadapttoken=adapttoken_emu).
// "Device" memory is host memory, so CPU tensors stand in for CUDA ones; four names
// are redirected for that, after the torch headers and before cuda_ops.cu:
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/library.h>
#include <torch/csrc/stable/ops.h>

#include <cuda_runtime.h>

// 1. The CUDA dispatch key -> CPU.
#undef STABLE_TORCH_LIBRARY_IMPL
#define STABLE_TORCH_LIBRARY_IMPL(ns, k, m) _STABLE_TORCH_LIBRARY_IMPL(ns, CPU, m, C10_UID)
// 2. "is this a CUDA tensor" -> "is this a CPU tensor".
#define is_cuda is_cpu
// 3. A device guard has nothing to guard.
namespace torch::stable::accelerator {
struct EmuNoGuard {
  explicit EmuNoGuard(DeviceIndex) {}
};
}  // namespace torch::stable::accelerator
#define DeviceGuard EmuNoGuard
// 4. The current stream: the emulator runs everything synchronously on the null stream.
static AOTITorchError aoti_torch_get_current_cuda_stream(int32_t, void** stream) {
  *stream = nullptr;
  return AOTI_TORCH_SUCCESS;
}

#include "../../cuda_ops.cu"
