// CUDA entry points of gaea_ext::sample_weighted_sum and gaea_ext::sample_weighted_sum_backward:
// layouts, grid sizes, input groups of kSampleSumMaxInputs and dtype dispatch. The device
// code is csrc/kernels/sample_weighted_sum.cuh.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "../kernels/sample_weighted_sum.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::kSampleSumBwdChunk;
using gaea_kernels::kSampleSumMaxBlocks;
using gaea_kernels::kSampleSumMaxInputs;
using gaea_kernels::kSampleSumThreads;

bool aligned16(const void* p) { return reinterpret_cast<std::uintptr_t>(p) % 16 == 0; }

void check_cuda(at::TensorList inputs, const char* op) {
  TORCH_CHECK(inputs[0].is_cuda(), op, " (CUDA kernel): 'inputs' must be CUDA tensors, got ", inputs[0].device());
}

// Whether the VEC-wide path applies: every pointer 16-byte aligned, and a vector never
// straddles two samples.
bool can_vectorize(const std::vector<const void*>& ptrs, int64_t inner, int vec) {
  if (inner % vec != 0) return false;
  return std::all_of(ptrs.begin(), ptrs.end(), [](const void* p) { return aligned16(p); });
}

template <typename scalar_t, typename out_t>
void launch_forward(const gaea_kernels::SampleSumInputs<scalar_t>& ys, const at::opmath_type<scalar_t>* w, int K,
                    int64_t samples, int64_t inner, const at::opmath_type<scalar_t>* prev, out_t* out, int64_t n,
                    bool vectorize, cudaStream_t stream) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr int kVec = 16 / sizeof(scalar_t);
  const int64_t units = vectorize ? n / kVec : n;
  const int blocks = static_cast<int>(std::min<int64_t>((units + kSampleSumThreads - 1) / kSampleSumThreads,
                                                        kSampleSumMaxBlocks));
  if (vectorize) {
    gaea_kernels::sample_weighted_sum_kernel<scalar_t, acc_t, out_t, kVec><<<blocks, kSampleSumThreads, 0, stream>>>(
        ys, w, K, samples, inner, prev, out, n);
  } else {
    gaea_kernels::sample_weighted_sum_kernel<scalar_t, acc_t, out_t, 1><<<blocks, kSampleSumThreads, 0, stream>>>(
        ys, w, K, samples, inner, prev, out, n);
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor sample_weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights) {
  check_sample_weighted_sum_args(inputs, weights);
  check_cuda(inputs, "sample_weighted_sum");
  const c10::cuda::CUDAGuard guard(inputs[0].device());
  const std::vector<at::Tensor> ys = with_batch_major_layout(inputs.vec());
  at::Tensor out = at::empty_like(ys[0], at::MemoryFormat::Preserve);
  const int64_t n = out.numel();
  if (n == 0) return out;
  const int64_t K = static_cast<int64_t>(ys.size());
  const int64_t samples = out.size(0);
  const int64_t inner = n / samples;
  const at::ScalarType acc_type = accumulation_type(out.scalar_type());
  const at::Tensor w = contiguous_as(weights, acc_type);  // [K, N]; device-side cast, no sync
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "sample_weighted_sum_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr bool kSameType = std::is_same<acc_t, scalar_t>::value;
    constexpr int kVec = 16 / sizeof(scalar_t);
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    // K > kSampleSumMaxInputs: the running sum between input groups stays in the accumulation
    // type (out itself when that is it, else a float32 buffer), so half types round once.
    at::Tensor running;
    acc_t* running_ptr = nullptr;
    if (K > kSampleSumMaxInputs) {
      if constexpr (kSameType) {
        running_ptr = reinterpret_cast<acc_t*>(out_ptr);
      } else {
        running = at::empty({n}, out.options().dtype(acc_type));
        running_ptr = running.mutable_data_ptr<acc_t>();
      }
    }
    std::vector<const void*> ptrs = {out_ptr};
    if (running_ptr != nullptr) ptrs.push_back(running_ptr);
    for (const at::Tensor& y : ys) ptrs.push_back(y.const_data_ptr());
    const bool vectorize = can_vectorize(ptrs, inner, kVec);

    for (int64_t k0 = 0; k0 < K; k0 += kSampleSumMaxInputs) {
      const int kc = static_cast<int>(std::min<int64_t>(kSampleSumMaxInputs, K - k0));
      gaea_kernels::SampleSumInputs<scalar_t> group{};
      for (int k = 0; k < kc; ++k) group.ptr[k] = ys[k0 + k].const_data_ptr<scalar_t>();
      const acc_t* prev = k0 == 0 ? nullptr : running_ptr;
      const acc_t* w_group = w_ptr + k0 * samples;
      if (k0 + kc == K || kSameType) {
        launch_forward<scalar_t, scalar_t>(group, w_group, kc, samples, inner, prev, out_ptr, n, vectorize, stream);
      } else {
        launch_forward<scalar_t, acc_t>(group, w_group, kc, samples, inner, prev, running_ptr, n, vectorize, stream);
      }
    }
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> sample_weighted_sum_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad) {
  check_sample_weighted_sum_backward_args(grad_out, inputs, weights, inputs_need_grad);
  check_cuda(inputs, "sample_weighted_sum_backward");
  const int64_t K = static_cast<int64_t>(inputs.size());
  const c10::cuda::CUDAGuard guard(inputs[0].device());

  // The layout rule of the CPU kernel and the fake (gaea_ext/_layout.py): the inputs' and
  // grad_out's shared layout when the batch is outermost in it, else batch_major_format of the
  // first input. The inputs are only read for the weight gradient, so without it only
  // grad_out is copied.
  std::vector<at::Tensor> all(inputs.begin(), inputs.end());
  all.push_back(grad_out);
  if (!share_batch_major_layout(all)) {
    const at::MemoryFormat format = batch_major_format(all[0]);
    if (weights_need_grad) {
      for (at::Tensor& t : all) t = t.contiguous(format);
    } else {
      all.back() = grad_out.contiguous(format);
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
    return {grad_inputs, zeros_if_needed(weights_need_grad, weights.sizes(), weights.options())};
  }

  const int64_t samples = g.size(0);
  const int64_t inner = n / samples;
  const at::Tensor w = contiguous_as(weights, acc_type);  // [K, N]; device-side cast, no sync
  const int64_t chunks_per_sample = (inner + kSampleSumBwdChunk - 1) / kSampleSumBwdChunk;
  const int64_t num_blocks = samples * chunks_per_sample;
  TORCH_CHECK(num_blocks <= INT32_MAX, "sample_weighted_sum_backward: tensor too large (", n, " elements)");
  at::Tensor partials = weights_need_grad ? at::empty({K, num_blocks}, g.options().dtype(acc_type)) : at::Tensor();
  at::Tensor grad_weights_acc = weights_need_grad ? at::empty({K, samples}, g.options().dtype(acc_type)) : at::Tensor();
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "sample_weighted_sum_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    constexpr int kVec = 16 / sizeof(scalar_t);
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    acc_t* partials_ptr = weights_need_grad ? partials.mutable_data_ptr<acc_t>() : nullptr;

    std::vector<const void*> ptrs = {g_ptr};
    for (const at::Tensor& gi : grad_inputs) ptrs.push_back(gi.const_data_ptr());
    if (weights_need_grad) {
      for (int64_t k = 0; k < K; ++k) ptrs.push_back(all[k].const_data_ptr());
    }
    const bool vectorize = can_vectorize(ptrs, inner, kVec);

    for (int64_t k0 = 0; k0 < K; k0 += kSampleSumMaxInputs) {
      const int kc = static_cast<int>(std::min<int64_t>(kSampleSumMaxInputs, K - k0));
      gaea_kernels::SampleSumInputs<scalar_t> ys{};
      gaea_kernels::SampleSumGrads<scalar_t> grads{};
      bool any_grad = false;
      for (int k = 0; k < kc; ++k) {
        if (weights_need_grad) ys.ptr[k] = all[k0 + k].const_data_ptr<scalar_t>();
        if (at::Tensor* gi = needed.of(k0 + k)) {
          grads.ptr[k] = gi->mutable_data_ptr<scalar_t>();
          any_grad = true;
        }
      }
      if (!any_grad && !weights_need_grad) continue;
      acc_t* group_partials = partials_ptr != nullptr ? partials_ptr + k0 * num_blocks : nullptr;
      const dim3 grid(static_cast<unsigned int>(num_blocks));
      if (vectorize) {
        gaea_kernels::sample_weighted_sum_backward_kernel<scalar_t, acc_t, kVec><<<grid, kSampleSumThreads, 0, stream>>>(
            g_ptr, ys, grads, w_ptr + k0 * samples, kc, samples, inner, chunks_per_sample, group_partials, num_blocks);
      } else {
        gaea_kernels::sample_weighted_sum_backward_kernel<scalar_t, acc_t, 1><<<grid, kSampleSumThreads, 0, stream>>>(
            g_ptr, ys, grads, w_ptr + k0 * samples, kc, samples, inner, chunks_per_sample, group_partials, num_blocks);
      }
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    if (weights_need_grad) {
      const int64_t rows = K * samples;
      const unsigned int blocks = static_cast<unsigned int>((rows + kSampleSumThreads - 1) / kSampleSumThreads);
      gaea_kernels::sample_weighted_sum_reduce_kernel<acc_t><<<blocks, kSampleSumThreads, 0, stream>>>(
          partials_ptr, rows, chunks_per_sample, grad_weights_acc.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });

  at::Tensor grad_weights = weights_need_grad ? grad_weights_acc.to(weights.scalar_type())
                                              : at::empty({0}, weights.options());
  return {grad_inputs, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("sample_weighted_sum", &sample_weighted_sum_cuda);
  m.impl("sample_weighted_sum_backward", &sample_weighted_sum_backward_cuda);
}

}  // namespace gaea_ext
