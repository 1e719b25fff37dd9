// Argument checks shared by the CPU and CUDA entry points. They read only metadata
// (never device values), so they cost no synchronisation. TORCH_CHECK failures reach
// Python as RuntimeError; the Python wrappers check first and raise TypeError/ValueError.
#include "gaea_ext.h"
#include "host_common.h"

#include <numeric>

namespace gaea_ext {

namespace {

// `op`'s inputs: at least one, floating point, one shape, dtype and device.
void check_input_list(at::TensorList inputs, const char* op) {
  TORCH_CHECK(!inputs.empty(), op, ": 'inputs' must hold at least one tensor, got none");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(at::isFloatingType(first.scalar_type()), op,
              ": 'inputs' must be floating point (float16, bfloat16, float32, float64), got ", first.scalar_type());
  for (size_t k = 1; k < inputs.size(); ++k) {
    const at::Tensor& t = inputs[k];
    TORCH_CHECK(t.sizes() == first.sizes(), op, ": 'inputs' must share one shape; inputs[0] is ", first.sizes(),
                " but inputs[", k, "] is ", t.sizes());
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), op, ": 'inputs' must share one dtype; inputs[0] is ",
                first.scalar_type(), " but inputs[", k, "] is ", t.scalar_type());
    TORCH_CHECK(t.device() == first.device(), op, ": 'inputs' must share one device; inputs[0] is on ",
                first.device(), " but inputs[", k, "] is on ", t.device());
  }
}

// The backward's grad_out: the inputs' shape, dtype and device.
void check_grad_out(const at::Tensor& grad_out, const at::Tensor& input, const char* op) {
  TORCH_CHECK(grad_out.sizes() == input.sizes() && grad_out.scalar_type() == input.scalar_type() &&
                  grad_out.device() == input.device(),
              op, ": 'grad_out' must match the inputs' shape, dtype and device; got ", grad_out.sizes(), " ",
              grad_out.scalar_type(), " on ", grad_out.device());
}

}  // namespace

void check_weighted_sum_args(at::TensorList inputs, const at::Tensor& weights) {
  check_input_list(inputs, "weighted_sum");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(weights.dim() == 1, "weighted_sum: 'weights' must be 1-D, got ", weights.dim(), "-D");
  TORCH_CHECK(weights.numel() == static_cast<int64_t>(inputs.size()),
              "weighted_sum: 'weights' must have one element per input (", inputs.size(), "), got ",
              weights.numel());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()),
              "weighted_sum: 'weights' must be floating point, got ", weights.scalar_type());
  TORCH_CHECK(weights.device() == first.device(), "weighted_sum: 'weights' must be on the inputs' device ",
              first.device(), ", got ", weights.device());
}

void check_weighted_sum_backward_args(const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
                                      const c10::List<bool>& inputs_need_grad) {
  check_weighted_sum_args(inputs, weights);
  check_need_grad(inputs_need_grad, inputs.size(), "weighted_sum_backward", "inputs_need_grad", "input");
  check_grad_out(grad_out, inputs[0], "weighted_sum_backward");
}

void check_sample_weighted_sum_args(at::TensorList inputs, const at::Tensor& weights) {
  check_input_list(inputs, "sample_weighted_sum");
  const at::Tensor& first = inputs[0];
  TORCH_CHECK(first.dim() >= 1, "sample_weighted_sum: 'inputs' must have a batch dimension, got 0-d tensors");
  TORCH_CHECK(weights.dim() == 2 && weights.size(0) == static_cast<int64_t>(inputs.size()) &&
                  weights.size(1) == first.size(0),
              "sample_weighted_sum: 'weights' must be [K, N] = [", inputs.size(), ", ", first.size(0),
              "] (one row per input, one column per sample), got ", weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()),
              "sample_weighted_sum: 'weights' must be floating point, got ", weights.scalar_type());
  TORCH_CHECK(weights.device() == first.device(), "sample_weighted_sum: 'weights' must be on the inputs' device ",
              first.device(), ", got ", weights.device());
}

void check_sample_weighted_sum_backward_args(const at::Tensor& grad_out, at::TensorList inputs,
                                             const at::Tensor& weights, const c10::List<bool>& inputs_need_grad) {
  check_sample_weighted_sum_args(inputs, weights);
  check_need_grad(inputs_need_grad, inputs.size(), "sample_weighted_sum_backward", "inputs_need_grad", "input");
  check_grad_out(grad_out, inputs[0], "sample_weighted_sum_backward");
}

std::vector<int64_t> check_mixed_node_args(at::TensorList xs, at::TensorList outputs, const at::Tensor& weights,
                                           c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                           const std::optional<at::Tensor>& norm) {
  TORCH_CHECK(!xs.empty(), "mixed_node: 'xs' must hold at least one tensor (the edge inputs), got none");
  const at::Tensor& first = xs[0];
  TORCH_CHECK(first.dim() == 4, "mixed_node: 'xs' must be 4-D [N, C, H, W], got ", first.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(first.scalar_type()),
              "mixed_node: 'xs' must be floating point (float16, bfloat16, float32, float64), got ",
              first.scalar_type());
  auto same = [&](const at::Tensor& t, const char* name, size_t k) {
    TORCH_CHECK(t.sizes() == first.sizes(), "mixed_node: every tensor must have xs[0]'s shape ", first.sizes(),
                " but ", name, "[", k, "] is ", t.sizes());
    TORCH_CHECK(t.scalar_type() == first.scalar_type(), "mixed_node: every tensor must have xs[0]'s dtype ",
                first.scalar_type(), " but ", name, "[", k, "] is ", t.scalar_type());
    TORCH_CHECK(t.device() == first.device(), "mixed_node: every tensor must be on xs[0]'s device ", first.device(),
                " but ", name, "[", k, "] is on ", t.device());
  };
  for (size_t k = 0; k < xs.size(); ++k) same(xs[k], "xs", k);
  for (size_t k = 0; k < outputs.size(); ++k) same(outputs[k], "outputs", k);
  const size_t T = kinds.size();
  TORCH_CHECK(T >= 1, "mixed_node: 'kinds' must hold at least one term, got none");
  TORCH_CHECK(sources.size() == T, "mixed_node: 'sources' must have one entry per term (", T, "), got ",
              sources.size());
  TORCH_CHECK(weights.dim() == 1 && weights.numel() == static_cast<int64_t>(T),
              "mixed_node: 'weights' must be 1-D with one element per term (", T, "), got shape ", weights.sizes());
  TORCH_CHECK(at::isFloatingType(weights.scalar_type()), "mixed_node: 'weights' must be floating point, got ",
              weights.scalar_type());
  TORCH_CHECK(weights.device() == first.device(), "mixed_node: 'weights' must be on xs[0]'s device ",
              first.device(), ", got ", weights.device());
  std::vector<int> output_uses(outputs.size(), 0);
  std::vector<int64_t> bn_rank(T, -1);
  int64_t num_bn = 0;
  for (size_t t = 0; t < T; ++t) {
    const int64_t kind = kinds[t], src = sources[t];
    TORCH_CHECK(kind >= kNone && kind <= kTensorBN, "mixed_node: kinds[", t, "] must be 0..8 (none, skip, ",
                "avg_pool_3x3, max_pool_3x3, tensor, avg_pool_3x3_bn, max_pool_3x3_bn, ones, tensor_bn), got ", kind);
    if (is_output_kind(kind)) {
      TORCH_CHECK(src >= 0 && src < static_cast<int64_t>(outputs.size()), "mixed_node: sources[", t,
                  "] must index 'outputs' (0..", static_cast<int64_t>(outputs.size()) - 1, "), got ", src);
      output_uses[src] += 1;
    } else if (kind != kNone && kind != kOnes) {
      TORCH_CHECK(src >= 0 && src < static_cast<int64_t>(xs.size()), "mixed_node: sources[", t,
                  "] must index 'xs' (0..", static_cast<int64_t>(xs.size()) - 1, "), got ", src);
    }
    if (is_bn_kind(kind)) bn_rank[t] = num_bn++;
  }
  for (size_t k = 0; k < outputs.size(); ++k) {
    TORCH_CHECK(output_uses[k] == 1, "mixed_node: outputs[", k, "] must be used by exactly one tensor term, it is "
                "used by ", output_uses[k]);
  }
  const bool has_norm = norm.has_value() && norm->defined();
  if (num_bn == 0) {
    TORCH_CHECK(!has_norm || norm->numel() == 0, "mixed_node: 'norm' must be None when no term is a BN kind");
  } else {
    TORCH_CHECK(has_norm, "mixed_node: 'norm' [", num_bn, ", 2, C] is required by the ", num_bn, " BN terms");
    TORCH_CHECK(norm->dim() == 3 && norm->size(0) == num_bn && norm->size(1) == 2 && norm->size(2) == first.size(1),
                "mixed_node: 'norm' must have shape [", num_bn, ", 2, ", first.size(1), "], got ", norm->sizes());
    TORCH_CHECK(at::isFloatingType(norm->scalar_type()), "mixed_node: 'norm' must be floating point, got ",
                norm->scalar_type());
    TORCH_CHECK(norm->device() == first.device(), "mixed_node: 'norm' must be on xs[0]'s device ", first.device(),
                ", got ", norm->device());
  }
  return bn_rank;
}

std::vector<int64_t> check_mixed_node_backward_args(const at::Tensor& grad_out, at::TensorList xs,
                                                    at::TensorList outputs, const at::Tensor& weights,
                                                    c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                                    const std::optional<at::Tensor>& norm,
                                                    const c10::List<bool>& xs_need_grad,
                                                    const c10::List<bool>& outputs_need_grad) {
  auto bn_rank = check_mixed_node_args(xs, outputs, weights, kinds, sources, norm);
  TORCH_CHECK(grad_out.sizes() == xs[0].sizes() && grad_out.scalar_type() == xs[0].scalar_type() &&
                  grad_out.device() == xs[0].device(),
              "mixed_node_backward: 'grad_out' must match xs[0] (", xs[0].sizes(), ", ", xs[0].scalar_type(), ", ",
              xs[0].device(), "), got ", grad_out.sizes(), ", ", grad_out.scalar_type(), ", ", grad_out.device());
  check_need_grad(xs_need_grad, xs.size(), "mixed_node_backward", "xs_need_grad", "x");
  check_need_grad(outputs_need_grad, outputs.size(), "mixed_node_backward", "outputs_need_grad", "output");
  return bn_rank;
}

void check_partial_channel_args(const at::Tensor& like, bool like_is_grad_out, at::TensorList states,
                                const at::Tensor& weights, c10::IntArrayRef strides, int64_t groups) {
  const char* like_name = like_is_grad_out ? "grad_out" : "mixed";
  TORCH_CHECK(like.dim() == 4, "partial_channel_node: '", like_name, "' must be 4-D, got ", like.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(like.scalar_type()), "partial_channel_node: '", like_name,
              "' must be floating point, got ", like.scalar_type());
  TORCH_CHECK(groups >= 1, "partial_channel_node: 'groups' must be >= 1, got ", groups);
  TORCH_CHECK(!states.empty(), "partial_channel_node: 'states' must hold at least one tensor");
  const int64_t E = static_cast<int64_t>(states.size());
  TORCH_CHECK(static_cast<int64_t>(strides.size()) == E, "partial_channel_node: 'strides' must have one entry per "
              "state (", E, "), got ", strides.size());
  TORCH_CHECK(weights.dim() == 1 && weights.numel() == E && at::isFloatingType(weights.scalar_type()),
              "partial_channel_node: 'weights' must be a 1-D floating tensor with one element per state (", E,
              "), got ", weights.sizes(), " ", weights.scalar_type());
  TORCH_CHECK(weights.device() == like.device(), "partial_channel_node: 'weights' must be on ", like.device());
  const int64_t C = states[0].dim() == 4 ? states[0].size(1) : -1;
  TORCH_CHECK(C > 0 && C % groups == 0, "partial_channel_node: states[0] must be 4-D with channels divisible by "
              "groups=", groups, ", got ", states[0].sizes());
  const int64_t q = C / groups;
  TORCH_CHECK(like.size(0) == states[0].size(0) && like.size(1) == (like_is_grad_out ? C : q),
              "partial_channel_node: '", like_name, "' must be [", states[0].size(0), ", ",
              like_is_grad_out ? C : q, ", Ho, Wo], got ", like.sizes());
  for (int64_t e = 0; e < E; ++e) {
    const at::Tensor& s = states[e];
    TORCH_CHECK(strides[e] == 1 || strides[e] == 2, "partial_channel_node: strides[", e, "] must be 1 or 2, got ",
                strides[e]);
    TORCH_CHECK(s.dim() == 4 && s.size(0) == like.size(0) && s.size(1) == C, "partial_channel_node: states[", e,
                "] must be [", like.size(0), ", ", C, ", H, W], got ", s.sizes());
    TORCH_CHECK(s.scalar_type() == like.scalar_type() && s.device() == like.device(), "partial_channel_node: states[",
                e, "] must have ", like_name, "'s dtype and device (", like.scalar_type(), ", ", like.device(), ")");
    const int64_t ho = strides[e] == 1 ? s.size(2) : s.size(2) / 2, wo = strides[e] == 1 ? s.size(3) : s.size(3) / 2;
    TORCH_CHECK(ho == like.size(2) && wo == like.size(3), "partial_channel_node: states[", e, "] (stride ",
                strides[e], ") gives a ", ho, "x", wo, " tail but ", like_name, " is ", like.size(2), "x",
                like.size(3));
  }
}

void check_partial_channel_backward_args(const at::Tensor& grad_out, at::TensorList states, const at::Tensor& weights,
                                         c10::IntArrayRef strides, int64_t groups,
                                         const c10::List<bool>& states_need_grad) {
  check_partial_channel_args(grad_out, true, states, weights, strides, groups);
  check_need_grad(states_need_grad, states.size(), "partial_channel_node_backward", "states_need_grad", "state");
}

void check_pool_stats_args(const at::Tensor& x, int64_t kind) {
  TORCH_CHECK(x.dim() == 4, "pool_stats: 'x' must be 4-D [N, C, H, W], got ", x.dim(), "-D");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()),
              "pool_stats: 'x' must be floating point (float16, bfloat16, float32, float64), got ", x.scalar_type());
  TORCH_CHECK(kind == kAvgPool || kind == kMaxPool || is_bn_kind(kind),
              "pool_stats: 'kind' must be a pool kind (2 avg_pool_3x3, 3 max_pool_3x3, 5, 6, 8 the identity), got ",
              kind);
}

void check_pool_stats_backward_args(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& stats,
                                    int64_t kind) {
  check_pool_stats_args(x, kind);
  for (const at::Tensor* t : {&grad_stats, &stats}) {
    const char* name = t == &stats ? "stats" : "grad_stats";
    TORCH_CHECK(t->dim() == 2 && t->size(0) == 2 && t->size(1) == x.size(1), "pool_stats_backward: '", name,
                "' must have shape [2, ", x.size(1), "], got ", t->sizes());
    TORCH_CHECK(at::isFloatingType(t->scalar_type()) && t->device() == x.device(), "pool_stats_backward: '", name,
                "' must be floating point on x's device ", x.device());
  }
}

std::vector<int64_t> check_exp_grad_args(at::TensorList params, at::TensorList grads,
                                         c10::ArrayRef<double> lrs, c10::IntArrayRef segments,
                                         c10::IntArrayRef segment_counts,
                                         c10::ArrayRef<double> min_values,
                                         c10::ArrayRef<double> entropic_regs) {
  const size_t count = params.size();
  TORCH_CHECK(grads.size() == count, "exp_grad_step_: 'grads' must have one tensor per param (", count, "), got ",
              grads.size());
  TORCH_CHECK(lrs.size() == count, "exp_grad_step_: 'lrs' must have one value per param (", count, "), got ",
              lrs.size());
  TORCH_CHECK(segment_counts.size() == count, "exp_grad_step_: 'segment_counts' must have one value per param (",
              count, "), got ", segment_counts.size());
  TORCH_CHECK(min_values.size() == count, "exp_grad_step_: 'min_values' must have one value per param (", count,
              "), got ", min_values.size());
  TORCH_CHECK(entropic_regs.size() == count, "exp_grad_step_: 'entropic_regs' must have one value per param (",
              count, "), got ", entropic_regs.size());
  for (int64_t s : segments) {
    TORCH_CHECK(s > 0, "exp_grad_step_: 'segments' must hold positive lengths, got ", segments);
  }
  std::vector<int64_t> first_segment(count);
  int64_t offset = 0;
  for (size_t t = 0; t < count; ++t) {
    const at::Tensor& p = params[t];
    const at::Tensor& g = grads[t];
    TORCH_CHECK(lrs[t] >= 0.0, "exp_grad_step_: 'lr' must be >= 0, got ", lrs[t]);
    TORCH_CHECK(min_values[t] >= 0.0 && min_values[t] < 1.0, "exp_grad_step_: 'min_value' must be in [0, 1), got ",
                min_values[t]);
    TORCH_CHECK(entropic_regs[t] >= 0.0, "exp_grad_step_: 'entropic_reg' must be >= 0, got ", entropic_regs[t]);
    TORCH_CHECK(at::isFloatingType(p.scalar_type()), "exp_grad_step_: 'params[", t,
                "]' must be floating point, got ", p.scalar_type());
    TORCH_CHECK(p.dim() >= 1, "exp_grad_step_: 'params[", t,
                "]' must have at least one dimension (rows are the last one)");
    TORCH_CHECK(p.is_contiguous(), "exp_grad_step_: 'params[", t, "]' must be contiguous");
    TORCH_CHECK(g.sizes() == p.sizes(), "exp_grad_step_: 'grad' must have the param's shape ", p.sizes(),
                ", got ", g.sizes());
    TORCH_CHECK(g.device() == p.device(), "exp_grad_step_: 'grad' must be on the param's device ", p.device(),
                ", got ", g.device());
    TORCH_CHECK(at::isFloatingType(g.scalar_type()), "exp_grad_step_: 'grad' must be floating point, got ",
                g.scalar_type());
    TORCH_CHECK(p.device() == params[0].device(), "exp_grad_step_: all 'params' must be on one device");
    const int64_t n_seg = segment_counts[t];
    TORCH_CHECK(n_seg >= 0 && offset + n_seg <= static_cast<int64_t>(segments.size()),
                "exp_grad_step_: 'segment_counts' ask for more lengths than 'segments' holds");
    first_segment[t] = offset;
    if (n_seg > 0) {
      int64_t total = 0;
      for (int64_t i = offset; i < offset + n_seg; ++i) total += segments[i];
      TORCH_CHECK(total == p.size(-1), "exp_grad_step_: 'segments' must sum to the last dimension (", p.size(-1),
                  ") of params[", t, "], got ", segments.slice(offset, n_seg), " (sum ", total, ")");
    }
    offset += n_seg;
  }
  TORCH_CHECK(offset == static_cast<int64_t>(segments.size()),
              "exp_grad_step_: 'segments' holds ", segments.size(), " lengths but 'segment_counts' use ", offset);
  return first_segment;
}

}  // namespace gaea_ext
