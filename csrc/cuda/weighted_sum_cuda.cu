// CUDA kernels of gaea_ext::weighted_sum and gaea_ext::weighted_sum_backward: the host
// launch logic (the device code is in csrc/kernels/weighted_sum.cuh).
//
// Forward: one grid-stride streaming kernel per group of up to kMaxInputsPerLaunch inputs
// (pointers passed by value). When every pointer is 16-byte aligned, each thread moves
// 16 bytes per input per step; otherwise (and for the tail) it moves one element.
//
// Backward: kernel 1 gives each block a fixed chunk of kBwdChunk elements (independent of
// the device), scales grad_out into the requested grad_inputs and writes one block
// partial of <inputs[k], grad_out> per k; kernel 2 sums the partials of each k in a fixed
// order. No float atomics, so the weight gradient is bitwise reproducible.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "../kernels/weighted_sum.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::weighted_sum::GradPtrs;
using gaea_kernels::weighted_sum::InputPtrs;
using gaea_kernels::weighted_sum::kBwdChunk;
using gaea_kernels::weighted_sum::kFwdBlocksPerSm;
using gaea_kernels::weighted_sum::kMaxK;
using gaea_kernels::weighted_sum::kThreads;
using gaea_kernels::weighted_sum::reduce_partials_kernel;
using gaea_kernels::weighted_sum::weighted_sum_backward_kernel;
using gaea_kernels::weighted_sum::weighted_sum_kernel;

int sm_count(c10::DeviceIndex device) {
  constexpr int kMaxDevices = 64;
  static std::atomic<int> cache[kMaxDevices] = {};
  const bool cacheable = device >= 0 && device < kMaxDevices;
  if (cacheable) {
    const int cached = cache[device].load(std::memory_order_relaxed);
    if (cached > 0) return cached;
  }
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  count = std::max(count, 1);
  if (cacheable) cache[device].store(count, std::memory_order_relaxed);
  return count;
}

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_cuda(at::TensorList inputs, const char* op) {
  TORCH_CHECK(inputs[0].is_cuda(), op, " (CUDA kernel): 'inputs' must be CUDA tensors, got ", inputs[0].device());
}

template <typename scalar_t, typename out_t>
void launch_weighted_sum(const InputPtrs<scalar_t>& ys, const at::opmath_type<scalar_t>* w, int K,
                         const at::opmath_type<scalar_t>* prev, out_t* out, int64_t n, bool vectorize,
                         int max_blocks, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t units = vectorize ? std::max<int64_t>(n / kVec, 1) : n;
  const int blocks = static_cast<int>(std::min<int64_t>((units + kThreads - 1) / kThreads, max_blocks));
  if (vectorize) {
    weighted_sum_kernel<scalar_t, acc_t, out_t, kVec><<<blocks, kThreads, 0, stream>>>(ys, w, K, prev, out, n);
  } else {
    weighted_sum_kernel<scalar_t, acc_t, out_t, 1><<<blocks, kThreads, 0, stream>>>(ys, w, K, prev, out, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  check_cuda(inputs, "weighted_sum");
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const std::vector<at::Tensor> ys = with_shared_layout(inputs.vec());
  at::Tensor out = at::empty_like(ys[0], at::MemoryFormat::Preserve);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t K = static_cast<int64_t>(ys.size());
  const at::ScalarType acc_type = accumulation_type(out.scalar_type());
  const at::Tensor w = contiguous_as(weights, acc_type);  // device-side cast, no sync
  const int max_blocks = sm_count(out.get_device()) * kFwdBlocksPerSm;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kSameType = std::is_same<acc_t, scalar_t>::value;
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    // K > kMaxK: the running sum between input groups lives in the accumulation type (in
    // out itself when that is the accumulation type, else in a flat float32 buffer), so
    // half types are rounded once, at the end, whatever K is.
    at::Tensor running;
    acc_t* running_ptr = nullptr;
    if (K > kMaxK) {
      if constexpr (kSameType) {
        running_ptr = reinterpret_cast<acc_t*>(out_ptr);
      } else {
        running = at::empty({n}, out.options().dtype(acc_type));
        running_ptr = running.mutable_data_ptr<acc_t>();
      }
    }
    bool vectorize = aligned16(out_ptr) && (running_ptr == nullptr || aligned16(running_ptr));
    for (const at::Tensor& y : ys) vectorize = vectorize && aligned16(y.const_data_ptr());

    for (int64_t k0 = 0; k0 < K; k0 += kMaxK) {
      const int kc = static_cast<int>(std::min<int64_t>(kMaxK, K - k0));
      InputPtrs<scalar_t> ptrs{};
      for (int k = 0; k < kc; ++k) ptrs.ptr[k] = ys[k0 + k].const_data_ptr<scalar_t>();
      const acc_t* prev = k0 == 0 ? nullptr : running_ptr;
      const bool last = k0 + kc == K;
      if (last || kSameType) {
        launch_weighted_sum<scalar_t, scalar_t>(ptrs, w_ptr + k0, kc, prev, out_ptr, n, vectorize, max_blocks,
                                                stream);
      } else {
        launch_weighted_sum<scalar_t, acc_t>(ptrs, w_ptr + k0, kc, prev, running_ptr, n, vectorize, max_blocks,
                                             stream);
      }
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad) {
  check_weighted_sum_backward_args(grad_out, inputs, weights, inputs_need_grad);
  check_cuda(inputs, "weighted_sum_backward");
  const int64_t K = static_cast<int64_t>(inputs.size());
  const c10::cuda::CUDAGuard guard(inputs[0].device());

  // Same layout rule as the CPU kernel and the fake (gaea_ext/_layout.py): keep the layout
  // shared by inputs and grad_out, else go contiguous. The inputs are only read for the
  // weight gradient, so without it only grad_out is copied.
  std::vector<at::Tensor> all(inputs.begin(), inputs.end());
  all.push_back(grad_out);
  if (!share_dense_layout(all)) {
    if (weights_need_grad) {
      for (at::Tensor& t : all) t = t.contiguous();
    } else {
      all.back() = grad_out.contiguous();
    }
  }
  const at::Tensor& g = all.back();
  const int64_t n = g.numel();
  const at::ScalarType acc_type = accumulation_type(g.scalar_type());

  NeededGrads needed = allocate_needed(inputs_need_grad, [&](size_t) {
    return at::empty_like(g, at::MemoryFormat::Preserve);
  });
  const std::vector<at::Tensor>& grad_inputs = needed.grads;
  if (n == 0 || (grad_inputs.empty() && !weights_need_grad)) {
    return {grad_inputs, zeros_if_needed(weights_need_grad, {K}, weights.options())};
  }

  const at::Tensor w = contiguous_as(weights, acc_type);  // device-side cast, no sync
  const int64_t num_blocks = (n + kBwdChunk - 1) / kBwdChunk;
  TORCH_CHECK(num_blocks <= INT32_MAX, "weighted_sum_backward: tensor too large (", n, " elements)");
  at::Tensor partials = weights_need_grad ? at::empty({K, num_blocks}, g.options().dtype(acc_type)) : at::Tensor();
  at::Tensor grad_weights_acc = weights_need_grad ? at::empty({K}, g.options().dtype(acc_type)) : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    acc_t* partials_ptr = weights_need_grad ? partials.mutable_data_ptr<acc_t>() : nullptr;

    bool vectorize = aligned16(g_ptr);
    for (const at::Tensor& gi : grad_inputs) vectorize = vectorize && aligned16(gi.const_data_ptr());
    if (weights_need_grad) {
      for (int64_t k = 0; k < K; ++k) vectorize = vectorize && aligned16(all[k].const_data_ptr());
    }

    for (int64_t k0 = 0; k0 < K; k0 += kMaxK) {
      const int kc = static_cast<int>(std::min<int64_t>(kMaxK, K - k0));
      InputPtrs<scalar_t> ys{};
      GradPtrs<scalar_t> grads{};
      bool any_grad = false;
      for (int k = 0; k < kc; ++k) {
        if (weights_need_grad) ys.ptr[k] = all[k0 + k].const_data_ptr<scalar_t>();
        if (at::Tensor* gi = needed.of(k0 + k)) {
          grads.ptr[k] = gi->mutable_data_ptr<scalar_t>();
          any_grad = true;
        }
      }
      if (!any_grad && !weights_need_grad) continue;
      acc_t* chunk_partials = partials_ptr != nullptr ? partials_ptr + k0 * num_blocks : nullptr;
      const dim3 grid(static_cast<unsigned int>(num_blocks));
      if (vectorize) {
        weighted_sum_backward_kernel<scalar_t, acc_t, kVec><<<grid, kThreads, 0, stream>>>(
            g_ptr, ys, grads, w_ptr + k0, kc, n, chunk_partials, num_blocks);
      } else {
        weighted_sum_backward_kernel<scalar_t, acc_t, 1><<<grid, kThreads, 0, stream>>>(
            g_ptr, ys, grads, w_ptr + k0, kc, n, chunk_partials, num_blocks);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (weights_need_grad) {
      reduce_partials_kernel<acc_t><<<static_cast<unsigned int>(K), kThreads, 0, stream>>>(
          partials_ptr, num_blocks, grad_weights_acc.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });

  at::Tensor grad_weights = weights_need_grad ? grad_weights_acc.to(weights.scalar_type())
                                              : at::empty({0}, weights.options());
  return {grad_inputs, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("weighted_sum", &weighted_sum_cuda);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cuda);
}

}  // namespace gaea_ext
