// CUDA kernels of gaea_ext::partial_channel_node and its backward: the host launch logic
// (the device code is in csrc/kernels/partial_channel.cuh; csrc/cpu/partial_channel_cpu.cpp
// has the layout maths).
//
// Forward: one thread per output element reads the mixed element or the weighted bypass
// (the 2x2 max pool recomputed from the state). Backward: one thread per state element
// gathers its gradient (each element belongs to at most one 2x2 window: no atomics), one
// thread per mixed element copies its gradient, and the edge-weight gradient is reduced per
// block in a fixed tree and over blocks in order: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "../kernels/partial_channel.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::partial_channel::kMaxBlocks;
using gaea_kernels::partial_channel::kMaxGrid;
using gaea_kernels::partial_channel::kMaxStates;
using gaea_kernels::partial_channel::kThreads;
using gaea_kernels::partial_channel::pc_forward_kernel;
using gaea_kernels::partial_channel::pc_grad_mixed_kernel;
using gaea_kernels::partial_channel::pc_grad_state_kernel;
using gaea_kernels::partial_channel::pc_grad_weights_kernel;
using gaea_kernels::partial_channel::pc_sum_partials_kernel;
using gaea_kernels::partial_channel::States;

unsigned int grid_for(int64_t numel, int64_t cap) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((numel + kThreads - 1) / kThreads, cap)));
}

template <typename scalar_t>
States<scalar_t> states_args(const std::vector<at::Tensor>& states, c10::IntArrayRef strides) {
  States<scalar_t> s{};
  s.E = static_cast<int>(states.size());
  for (int e = 0; e < s.E; ++e) {
    s.x[e] = states[e].const_data_ptr<scalar_t>();
    s.H[e] = static_cast<int>(states[e].size(2));
    s.W[e] = static_cast<int>(states[e].size(3));
    s.stride[e] = static_cast<int>(strides[e]);
  }
  return s;
}

void check_cuda_limits(at::TensorList states) {
  TORCH_CHECK(static_cast<int64_t>(states.size()) <= kMaxStates, "partial_channel_node (CUDA): at most ", kMaxStates,
              " states per call, got ", states.size());
  for (const auto& s : states)
    TORCH_CHECK(s.size(1) < (int64_t{1} << 31) && s.size(2) * s.size(3) < (int64_t{1} << 31),
                "partial_channel_node (CUDA): C and H * W must be < 2^31");
}

}  // namespace

at::Tensor partial_channel_node_cuda(const at::Tensor& mixed_in, at::TensorList states_in, const at::Tensor& weights,
                                     c10::IntArrayRef strides, int64_t groups) {
  check_partial_channel_args(mixed_in, false, states_in, weights, strides, groups);
  check_cuda_limits(states_in);
  const c10::cuda::CUDAGuard guard(mixed_in.device());
  const at::Tensor mixed = mixed_in.contiguous();
  const auto states = contiguous_all(states_in);
  const int64_t N = mixed.size(0), C = states[0].size(1), q = C / groups, Ho = mixed.size(2), Wo = mixed.size(3);
  at::Tensor out = at::empty({N, C, Ho, Wo}, mixed.options());
  const int64_t numel = out.numel();
  if (numel == 0) return in_layout_of(out, mixed_in);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mixed.scalar_type(), "partial_channel_node_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wt = contiguous_as(weights, at::CppTypeToScalarType<acc_t>::value);
    pc_forward_kernel<scalar_t, acc_t><<<grid_for(numel, kMaxGrid), kThreads, 0, stream>>>(
        mixed.const_data_ptr<scalar_t>(), states_args<scalar_t>(states, strides), wt.const_data_ptr<acc_t>(),
        out.mutable_data_ptr<scalar_t>(), numel, static_cast<int>(C), static_cast<int>(groups), static_cast<int>(q),
        static_cast<int>(Ho), static_cast<int>(Wo));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in_layout_of(out, mixed_in);
}

PartialChannelGrads partial_channel_node_backward_cuda(const at::Tensor& grad_out_in, at::TensorList states_in,
                                                       const at::Tensor& weights, c10::IntArrayRef strides,
                                                       int64_t groups, bool mixed_need_grad,
                                                       const c10::List<bool>& states_need_grad,
                                                       bool weights_need_grad) {
  check_partial_channel_backward_args(grad_out_in, states_in, weights, strides, groups, states_need_grad);
  check_cuda_limits(states_in);
  const c10::cuda::CUDAGuard guard(grad_out_in.device());
  const at::Tensor grad_out = grad_out_in.contiguous();
  const auto states = contiguous_all(states_in);
  const int64_t N = grad_out.size(0), C = states[0].size(1), q = C / groups;
  const int64_t Ho = grad_out.size(2), Wo = grad_out.size(3), E = static_cast<int64_t>(states.size());
  at::Tensor grad_mixed = mixed_need_grad ? at::empty({N, q, Ho, Wo}, grad_out.options())
                                          : at::empty({0}, grad_out.options());
  NeededGrads grad_states = allocate_needed(states_need_grad, [&](size_t e) {
    return at::empty(states[e].sizes(), states[e].options());
  });
  at::Tensor grad_weights = zeros_if_needed(weights_need_grad, {E}, weights.options());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                  "partial_channel_node_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
    const at::Tensor wt = contiguous_as(weights, acc_type);
    const scalar_t* g = grad_out.const_data_ptr<scalar_t>();
    if (mixed_need_grad && grad_mixed.numel() > 0) {
      pc_grad_mixed_kernel<scalar_t><<<grid_for(grad_mixed.numel(), kMaxGrid), kThreads, 0, stream>>>(
          g, grad_mixed.mutable_data_ptr<scalar_t>(), grad_mixed.numel(), static_cast<int>(C),
          static_cast<int>(groups), static_cast<int>(q), Ho * Wo);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    for (int64_t e = 0; e < E; ++e) {
      at::Tensor* gx = grad_states.of(e);
      if (gx == nullptr || gx->numel() == 0) continue;
      pc_grad_state_kernel<scalar_t, acc_t><<<grid_for(gx->numel(), kMaxGrid), kThreads, 0, stream>>>(
          g, states[e].const_data_ptr<scalar_t>(), wt.const_data_ptr<acc_t>(), static_cast<int>(e),
          static_cast<int>(strides[e]),
          gx->mutable_data_ptr<scalar_t>(), gx->numel(), static_cast<int>(C), static_cast<int>(groups),
          static_cast<int>(q), static_cast<int>(states[e].size(2)), static_cast<int>(states[e].size(3)),
          static_cast<int>(Ho), static_cast<int>(Wo));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t bypass_numel = N * (C - q) * Ho * Wo;
    if (weights_need_grad && bypass_numel > 0) {
      const unsigned int blocks = grid_for(bypass_numel, kMaxBlocks);
      const auto acc_opts = grad_out.options().dtype(acc_type);
      at::Tensor partials = at::empty({static_cast<int64_t>(blocks) * E}, acc_opts);
      pc_grad_weights_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          g, states_args<scalar_t>(states, strides), partials.mutable_data_ptr<acc_t>(), bypass_numel,
          static_cast<int>(C), static_cast<int>(groups), static_cast<int>(q), static_cast<int>(Ho),
          static_cast<int>(Wo));
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      at::Tensor gw = at::empty({E}, acc_opts);
      pc_sum_partials_kernel<acc_t><<<1, kMaxStates, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks,
                                                                  static_cast<int>(E), gw.mutable_data_ptr<acc_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      grad_weights = gw.to(weights.scalar_type());
    }
  });
  if (mixed_need_grad) grad_mixed = in_layout_of(grad_mixed, grad_out_in);
  restore_layouts(grad_states, states_in);
  return {grad_mixed, grad_states.grads, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("partial_channel_node", &partial_channel_node_cuda);
  m.impl("partial_channel_node_backward", &partial_channel_node_backward_cuda);
}

}  // namespace gaea_ext
