// cuda_fp16.h -> the CUDA emulator shim (tests/cudaemu/cuda_shim.h)
#include "../cuda_shim.h"
