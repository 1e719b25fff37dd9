// Kernels that check the CUDA emulation itself (compiled only into the emulation library,
// tests/test_cuda_emulation.py): what it must compute (warp and block reductions, the OR
// barrier) and the launches and barriers it must refuse.
#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>
#include <torch/library.h>
#include <torch/types.h>

#include <cstdint>

namespace gaea_emu_selftest {

// out[warp] = sum over the warp's lanes of (global thread index + 1), by shuffles.
__global__ void warp_sum_kernel(int64_t* out) {
  int64_t v = blockIdx.x * blockDim.x + threadIdx.x + 1;
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_down_sync(0xffffffffu, v, offset);
  if (threadIdx.x % 32 == 0) out[(blockIdx.x * blockDim.x + threadIdx.x) / 32] = v;
}

// out[block] = sum over the block of (thread index + 1), by a shared-memory tree.
__global__ void block_sum_kernel(int64_t* out) {
  __shared__ int64_t red[1024];
  red[threadIdx.x] = threadIdx.x + 1;
  __syncthreads();
  for (unsigned int stride = blockDim.x / 2; stride > 0; stride /= 2) {
    if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[blockIdx.x] = red[0];
}

// out[block * threads + t] = __syncthreads_or(t == block): nonzero in every thread of the
// blocks whose index is a thread index.
__global__ void barrier_or_kernel(int64_t* out) {
  const int any = __syncthreads_or(threadIdx.x == blockIdx.x);
  out[blockIdx.x * blockDim.x + threadIdx.x] = any;
}

__global__ void divergent_barrier_kernel(int64_t* out) {
  if (threadIdx.x < blockDim.x / 2) __syncthreads();
  out[threadIdx.x] = 1;
}

// One write per block (for the launch-configuration checks).
__global__ void empty_kernel(int64_t* out) { out[blockIdx.x] = 1; }

at::Tensor selftest(const std::string& kernel, int64_t blocks, int64_t threads) {
  at::Tensor out = at::zeros({blocks * threads}, at::kLong);
  int64_t* o = out.mutable_data_ptr<int64_t>();
  const dim3 grid(static_cast<unsigned int>(blocks)), block(static_cast<unsigned int>(threads));
  if (kernel == "warp_sum") {
    warp_sum_kernel<<<grid, block>>>(o);
  } else if (kernel == "block_sum") {
    block_sum_kernel<<<grid, block>>>(o);
  } else if (kernel == "barrier_or") {
    barrier_or_kernel<<<grid, block>>>(o);
  } else if (kernel == "divergent_barrier") {
    divergent_barrier_kernel<<<grid, block>>>(o);
  } else if (kernel == "empty") {
    empty_kernel<<<grid, block, 0>>>(o);
  } else {
    TORCH_CHECK(false, "selftest: unknown kernel ", kernel);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) { m.impl("selftest", &selftest); }

}  // namespace gaea_emu_selftest
