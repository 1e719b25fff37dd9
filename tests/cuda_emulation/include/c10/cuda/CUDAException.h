// CPU emulation: launches are checked when they run (gaea_emu::run_grid throws).
#pragma once
#include <c10/util/Exception.h>

#include "cuda_runtime.h"

#define C10_CUDA_CHECK(expr) TORCH_CHECK((expr) == cudaSuccess, "CUDA emulation: ", #expr, " failed")
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())
