// CUDA kernels of gaea_ext::mixed_node and gaea_ext::mixed_node_backward: the host launch logic
// (the device code is in csrc/kernels/mixed_node.cuh).
//
// One thread per output element (grid-stride over contiguous NCHW). The pools are
// recomputed from x in registers (the 3x3 window comes from L1/L2), so no pooled tensor is
// ever written. The backward gathers instead of scattering: element p of grad_x sums, over
// the windows q that contain p, grad_out[q] / count(q) (avg) or grad_out[q] when p is q's
// first maximum (max, PyTorch's rule), so there are no atomics. The weight gradient is
// reduced per block in a fixed tree, then over blocks in block order by a second kernel,
// with a grid that depends only on the tensor size: the result is deterministic. Its dot
// products stay in registers: each row of blocks (blockIdx.y) takes kDotChunk of them. The
// input gradients are a kernel of their own, so the two do not share a register budget.
// BN terms scale by the channel's 1/std and shift by its mean; their gradients need
// per-channel sums, taken per (n, c) plane by one block each in one pass (per chunk of
// terms), combined over n in order by one thread per (term, channel), then over channels by
// one block per term in a fixed tree. kTensorBN terms are BN terms whose raw value is their
// output. Outputs are read in place with their own strides (PlaneStrides: e.g. channel
// slices of a batched conv output, NCHW or channels_last).
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
#include "../kernels/mixed_node.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::mixed_node::BnTerms;
using gaea_kernels::mixed_node::DotTerms;
using gaea_kernels::mixed_node::GradArgs;
using gaea_kernels::mixed_node::NodeArgs;
using gaea_kernels::mixed_node::bn_channel_kernel;
using gaea_kernels::mixed_node::bn_plane_sums_kernel;
using gaea_kernels::mixed_node::bn_weight_kernel;
using gaea_kernels::mixed_node::input_grads_kernel;
using gaea_kernels::mixed_node::kBwdMaxBlocks;
using gaea_kernels::mixed_node::kDotChunk;
using gaea_kernels::mixed_node::kMaxGrid;
using gaea_kernels::mixed_node::kMaxT;
using gaea_kernels::mixed_node::kThreads;
using gaea_kernels::mixed_node::mixed_node_kernel;
using gaea_kernels::mixed_node::sum_partials_kernel;
using gaea_kernels::mixed_node::weight_dots_kernel;

GAEA_KERNELS_CHECK_TERM_KINDS();

void check_cuda_limits(at::TensorList xs, c10::IntArrayRef kinds) {
  TORCH_CHECK(static_cast<int64_t>(kinds.size()) <= kMaxMixedTerms, "mixed_node (CUDA): at most ", kMaxMixedTerms,
              " terms per call, got ", kinds.size());
  TORCH_CHECK(static_cast<int64_t>(xs.size()) <= kMaxMixedSources, "mixed_node (CUDA): at most ", kMaxMixedSources,
              " xs per call, got ", xs.size());
  TORCH_CHECK(xs[0].size(2) * xs[0].size(3) < (int64_t{1} << 31), "mixed_node (CUDA): H * W must be < 2^31");
  TORCH_CHECK(xs[0].size(0) * xs[0].size(1) < (int64_t{1} << 31), "mixed_node (CUDA): N * C must be < 2^31");
}

template <typename scalar_t>
NodeArgs<scalar_t> node_args(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& ys,
                             c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::vector<int64_t>& bn_rank) {
  NodeArgs<scalar_t> a{};
  for (size_t s = 0; s < xs.size(); ++s) a.xs[s] = xs[s].const_data_ptr<scalar_t>();
  a.T = static_cast<int>(kinds.size());
  for (int t = 0; t < a.T; ++t) {
    a.kinds[t] = static_cast<int>(kinds[t]);
    a.src[t] = static_cast<int>(sources[t]);
    a.bn[t] = static_cast<int>(bn_rank[t]);
    if (!is_output_kind(kinds[t])) continue;
    const at::Tensor& y = ys[sources[t]];
    const PlaneStrides strides = plane_strides(y);
    a.ys[t] = y.const_data_ptr<scalar_t>();
    a.y_n[t] = strides.n_stride;
    a.y_c[t] = strides.c_stride;
    a.y_cell[t] = strides.cell_stride;
  }
  return a;
}

BnTerms bn_terms(const std::vector<int64_t>& bn_rank) {
  BnTerms bt{};
  bt.B = 0;
  for (size_t t = 0; t < bn_rank.size(); ++t)
    if (bn_rank[t] >= 0) bt.term[bt.B++] = static_cast<int>(t);
  return bt;
}

DotTerms dot_terms(c10::IntArrayRef kinds, const std::vector<int64_t>& bn_rank) {
  DotTerms dt{};
  dt.D = 0;
  for (size_t t = 0; t < kinds.size(); ++t)
    if (kinds[t] != kNone && bn_rank[t] < 0) dt.term[dt.D++] = static_cast<int>(t);
  return dt;
}

template <typename acc_t>
const acc_t* ptr_or_null(const at::Tensor& t) {
  return t.defined() ? t.const_data_ptr<acc_t>() : nullptr;
}

unsigned int grid_for(int64_t numel, int64_t cap) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((numel + kThreads - 1) / kThreads, cap)));
}

}  // namespace

at::Tensor mixed_node_cuda(at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
                           c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::optional<at::Tensor>& norm) {
  const auto bn_rank = check_mixed_node_args(xs_in, outputs_in, weights, kinds, sources, norm);
  check_cuda_limits(xs_in, kinds);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const auto xs = contiguous_all(xs_in);
  const auto ys = with_even_planes(outputs_in);
  const at::Tensor& x0 = xs[0];
  at::Tensor out = at::empty(x0.sizes(), x0.options());
  const int64_t numel = x0.numel();
  if (numel == 0) return in_layout_of(out, xs_in[0]);
  const int C = static_cast<int>(x0.size(1)), H = static_cast<int>(x0.size(2)), W = static_cast<int>(x0.size(3));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
    const at::Tensor wt = contiguous_as(weights, acc_type);
    const at::Tensor nt = norm_as(norm, acc_type);
    const auto a = node_args<scalar_t>(xs, ys, kinds, sources, bn_rank);
    mixed_node_kernel<scalar_t, acc_t><<<grid_for(numel, kMaxGrid), kThreads, 0, stream>>>(
        a, wt.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(nt), out.mutable_data_ptr<scalar_t>(), numel, C, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in_layout_of(out, xs_in[0]);
}

MixedNodeGrads mixed_node_backward_cuda(const at::Tensor& grad_out_in, at::TensorList xs_in, at::TensorList outputs_in,
                                        const at::Tensor& weights, c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                        const std::optional<at::Tensor>& norm, const c10::List<bool>& xs_need_grad,
                                        const c10::List<bool>& outputs_need_grad, bool weights_need_grad,
                                        bool norm_need_grad) {
  const auto bn_rank = check_mixed_node_backward_args(grad_out_in, xs_in, outputs_in, weights, kinds, sources, norm,
                                                      xs_need_grad, outputs_need_grad);
  check_cuda_limits(xs_in, kinds);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const auto xs = contiguous_all(xs_in);
  const auto ys = with_even_planes(outputs_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor& x0 = xs[0];
  const int64_t numel = x0.numel(), T = static_cast<int64_t>(kinds.size());
  const int64_t S = static_cast<int64_t>(xs.size());
  const BnTerms bt = bn_terms(bn_rank);
  norm_need_grad = norm_need_grad && bt.B > 0;
  const auto like_x0 = [&](size_t) { return at::empty(x0.sizes(), x0.options()); };
  NeededGrads grad_xs = allocate_needed(xs_need_grad, like_x0);
  NeededGrads grad_ys = allocate_needed(outputs_need_grad, like_x0);
  at::Tensor grad_weights = zeros_if_needed(weights_need_grad, {T}, weights.options());
  at::Tensor grad_norm = norm_need_grad ? at::zeros(norm->sizes(), norm->options()) : weights.new_empty({0});

  if (numel > 0) {
    const int64_t N = x0.size(0);
    const int C = static_cast<int>(x0.size(1)), H = static_cast<int>(x0.size(2)), W = static_cast<int>(x0.size(3));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
      const at::Tensor wt = contiguous_as(weights, acc_type);
      const at::Tensor nt = norm_as(norm, acc_type);
      const auto a = node_args<scalar_t>(xs, ys, kinds, sources, bn_rank);
      GradArgs<scalar_t> ga{};
      for (int64_t s = 0; s < S; ++s) {
        at::Tensor* gx = grad_xs.of(s);
        ga.gx[s] = gx != nullptr ? gx->mutable_data_ptr<scalar_t>() : nullptr;
      }
      for (int64_t t = 0; t < T; ++t) {
        at::Tensor* gy = is_output_kind(kinds[t]) ? grad_ys.of(sources[t]) : nullptr;
        ga.gy[t] = gy != nullptr ? gy->mutable_data_ptr<scalar_t>() : nullptr;
      }
      DotTerms dt = dot_terms(kinds, bn_rank);
      if (!weights_need_grad) dt.D = 0;
      const unsigned int blocks = grid_for(numel, kBwdMaxBlocks);
      const auto acc_opts = x0.options().dtype(acc_type);
      if (!grad_xs.grads.empty() || !grad_ys.grads.empty()) {
        input_grads_kernel<scalar_t, acc_t><<<grid_for(numel, kMaxGrid), kThreads, 0, stream>>>(
            a, ga, wt.const_data_ptr<acc_t>(), ptr_or_null<acc_t>(nt), grad_out.const_data_ptr<scalar_t>(),
            static_cast<int>(S), numel, C, H, W);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      at::Tensor partials = at::empty({std::max<int64_t>(1, static_cast<int64_t>(blocks) * dt.D)}, acc_opts);
      if (dt.D > 0) {
        const unsigned int rows = static_cast<unsigned int>((dt.D + kDotChunk<acc_t> - 1) / kDotChunk<acc_t>);
        weight_dots_kernel<scalar_t, acc_t><<<dim3(blocks, rows), kThreads, 0, stream>>>(
            a, dt, grad_out.const_data_ptr<scalar_t>(), partials.mutable_data_ptr<acc_t>(), numel, C, H, W);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      at::Tensor gw = at::zeros({T}, acc_opts);
      if (dt.D > 0) {
        sum_partials_kernel<acc_t><<<1, kMaxT, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks, dt,
                                                           gw.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      }
      at::Tensor gn;
      if (bt.B > 0 && (weights_need_grad || norm_need_grad)) {
        const int64_t planes = N * C;
        at::Tensor sums = at::empty({planes * (bt.B + 1)}, acc_opts);
        const unsigned int columns = static_cast<unsigned int>((bt.B + kDotChunk<acc_t>) / kDotChunk<acc_t>);
        bn_plane_sums_kernel<scalar_t, acc_t><<<dim3(static_cast<unsigned int>(planes), columns), kThreads, 0,
                                                stream>>>(a, bt, grad_out.const_data_ptr<scalar_t>(),
                                                          sums.mutable_data_ptr<acc_t>(), C, H, W);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (norm_need_grad) gn = at::zeros(norm->sizes(), acc_opts);
        at::Tensor per_channel = at::empty({static_cast<int64_t>(bt.B) * C}, acc_opts);
        bn_channel_kernel<acc_t><<<grid_for(static_cast<int64_t>(bt.B) * C, kMaxGrid), kThreads, 0, stream>>>(
            bt, sums.const_data_ptr<acc_t>(), wt.const_data_ptr<acc_t>(), nt.const_data_ptr<acc_t>(),
            static_cast<int>(N), C, per_channel.mutable_data_ptr<acc_t>(),
            norm_need_grad ? gn.mutable_data_ptr<acc_t>() : nullptr);
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        if (weights_need_grad) {
          bn_weight_kernel<acc_t><<<static_cast<unsigned int>(bt.B), kThreads, 0, stream>>>(
              bt, per_channel.const_data_ptr<acc_t>(), C, gw.mutable_data_ptr<acc_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        }
      }
      if (weights_need_grad) grad_weights = gw.to(weights.scalar_type());
      if (norm_need_grad) grad_norm = gn.to(norm->scalar_type());
    });
  }
  restore_layouts(grad_xs, xs_in);
  restore_layouts(grad_ys, outputs_in);
  return {grad_xs.grads, grad_ys.grads, grad_weights, grad_norm};
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("mixed_node", &mixed_node_cuda);
  m.impl("mixed_node_backward", &mixed_node_backward_cuda);
}

}  // namespace gaea_ext
