// CPU kernels of gaea_ext::weighted_sum and gaea_ext::weighted_sum_backward.
//
// Both walk the flat storage in fixed chunks of kCpuChunk elements (L1-sized), with the loops
// of mix_loops.h over one stretch: the forward reads up to 8 inputs per pass with the running
// sum in vector registers (more inputs accumulate in a float chunk buffer); the backward keeps
// the grad chunk in L1 and streams each input once. Dot products for the weight gradient are
// summed in 16 independent lanes per chunk (vectorisable without reassociation), and the
// per-chunk partials are combined in chunk order: the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "mix_loops.h"
#include "vector_loops.h"

namespace gaea_ext {
namespace {

void check_cpu(at::TensorList inputs) {
  TORCH_CHECK(inputs[0].device().is_cpu(), "weighted_sum (CPU kernel): 'inputs' must be on the CPU, got ",
              inputs[0].device());
}

}  // namespace

at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  check_cpu(inputs);
  const std::vector<at::Tensor> ys = with_shared_layout(inputs.vec());
  at::Tensor out = at::empty_like(ys[0], at::MemoryFormat::Preserve);
  const int64_t numel = out.numel();
  if (numel == 0) return out;
  const at::Tensor w = contiguous_as(weights, accumulation_type(out.scalar_type()));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    mix_stretches<scalar_t, acc_t>(out.mutable_data_ptr<scalar_t>(), data_pointers<scalar_t>(ys, ys.size()),
                                   w.const_data_ptr<acc_t>(), 1, numel);
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad) {
  check_weighted_sum_backward_args(grad_out, inputs, weights, inputs_need_grad);
  check_cpu(inputs);
  const int64_t K = static_cast<int64_t>(inputs.size());
  std::vector<at::Tensor> all = inputs.vec();
  all.push_back(grad_out);
  all = with_shared_layout(std::move(all));
  const at::Tensor& g = all.back();
  const int64_t numel = g.numel();
  const at::ScalarType acc_type = accumulation_type(g.scalar_type());

  NeededGrads grad_inputs = allocate_needed(inputs_need_grad, [&](size_t) {
    return at::empty_like(g, at::MemoryFormat::Preserve);
  });
  at::Tensor grad_weights = weights_need_grad ? at::zeros({K}, weights.options().dtype(acc_type))
                                              : at::empty({0}, weights.options());
  if (numel == 0 || (grad_inputs.grads.empty() && !weights_need_grad)) {
    if (weights_need_grad) grad_weights = grad_weights.to(weights.scalar_type());
    return {grad_inputs.grads, grad_weights};
  }
  const at::Tensor w = contiguous_as(weights, acc_type);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    unmix_stretches<scalar_t, acc_t>(g.const_data_ptr<scalar_t>(), data_pointers<scalar_t>(all, K),
                                     needed_pointers<scalar_t>(grad_inputs), w.const_data_ptr<acc_t>(), 1, numel,
                                     weights_need_grad ? grad_weights.mutable_data_ptr<acc_t>() : nullptr);
  });
  if (weights_need_grad) grad_weights = grad_weights.to(weights.scalar_type());
  return {grad_inputs.grads, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace gaea_ext
