// The CUDA kernel source, compiled by g++ against the emulator (see ../README.md).
#include "../../kernels/cuda/local_entropy.cu"
