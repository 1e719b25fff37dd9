// CPU kernel of gaea_ext::exp_grad_step_: the exponentiated-gradient (mirror descent)
// step on every simplex of a list of params, computed in the log domain.
//
// Architecture parameters are tiny (a DARTS cell type is 14x8), so this is a plain loop;
// what matters is one call for all params, the exact clamp semantics of the released
// code, and leaving a param untouched when its gradient is not finite.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"

namespace gaea_ext {
namespace {

// Rows per parallel task; EG params are small, so most calls run on one thread.
constexpr int64_t kRowsPerTask = 1024;

template <typename acc_t>
struct StepOptions {
  acc_t eta;
  acc_t log_min;  // log(min_value); -inf when min_value == 0 (no clamp)
  acc_t min_value;
  acc_t entropic_reg;
  bool normalize_first;
};

// One simplex p[0:k] with gradient g[0:k], updated in place; l is scratch of length k.
template <typename scalar_t, typename acc_t>
void step_simplex(scalar_t* p, const scalar_t* g, int64_t k, const StepOptions<acc_t>& o, acc_t* l) {
  const acc_t neg_inf = -std::numeric_limits<acc_t>::infinity();
  const acc_t log_k = std::log(static_cast<acc_t>(k));
  acc_t m = neg_inf;
  for (int64_t i = 0; i < k; ++i) {
    const acc_t pi = static_cast<acc_t>(p[i]);
    acc_t li = neg_inf;  // an exact zero stays zero (mirror descent cannot revive it)
    if (pi > 0) {
      const acc_t log_p = std::log(pi);
      const acc_t reg = o.entropic_reg != 0 ? o.entropic_reg * (log_k + log_p + 1) : acc_t(0);
      li = log_p - o.eta * (static_cast<acc_t>(g[i]) + reg);
    }
    if (!o.normalize_first) li = std::max(li, o.log_min);
    l[i] = li;
    m = std::max(m, li);
  }
  if (m == neg_inf) return;  // nothing to normalise (guarded against in Python)
  // Normalise by dividing, not by subtracting log(sum): a rounded log-normaliser would
  // scale the whole row by up to |m| ulps and break sum == 1 for large steps.
  acc_t sum = 0;
  for (int64_t i = 0; i < k; ++i) {
    l[i] = std::exp(l[i] - m);
    sum += l[i];
  }
  for (int64_t i = 0; i < k; ++i) {
    acc_t pi = l[i] / sum;
    if (o.normalize_first) pi = std::max(pi, o.min_value);
    p[i] = static_cast<scalar_t>(pi);
  }
}

// Validation pass over one param: returns kNonFiniteGrad / kInvalidParam bits and max|g|.
template <typename scalar_t>
int32_t inspect_param(const at::Tensor& param, const at::Tensor& grad, const std::vector<int64_t>& lengths,
                      double* max_abs_grad) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g = grad.const_data_ptr<scalar_t>();
  const scalar_t* p = param.const_data_ptr<scalar_t>();
  const int64_t numel = param.numel();
  int32_t flags = 0;
  acc_t max_abs = 0;
  for (int64_t i = 0; i < numel; ++i) {
    const acc_t gi = static_cast<acc_t>(g[i]);
    if (!std::isfinite(gi)) flags |= kNonFiniteGrad;
    else max_abs = std::max(max_abs, std::abs(gi));
  }
  if (numel > 0) {
    for (int64_t offset = 0; offset < numel;) {
      for (int64_t k : lengths) {
        acc_t sum = 0;
        for (int64_t i = offset; i < offset + k; ++i) {
          const acc_t pi = static_cast<acc_t>(p[i]);
          if (!(pi >= 0) || !std::isfinite(pi)) flags |= kInvalidParam;
          sum += pi;
        }
        if (!(sum > 0)) flags |= kInvalidParam;
        offset += k;
      }
    }
  }
  *max_abs_grad = static_cast<double>(max_abs);
  return flags;
}

template <typename scalar_t>
void step_param(const at::Tensor& param, const at::Tensor& grad, double eta, const std::vector<int64_t>& lengths,
                double min_value, bool normalize_first, double entropic_reg) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g_ptr = grad.const_data_ptr<scalar_t>();
  scalar_t* p_ptr = param.mutable_data_ptr<scalar_t>();
  const int64_t numel = param.numel();
  if (numel == 0) return;

  StepOptions<acc_t> o;
  o.eta = static_cast<acc_t>(eta);
  o.min_value = static_cast<acc_t>(min_value);
  o.log_min = min_value > 0 ? static_cast<acc_t>(std::log(min_value)) : -std::numeric_limits<acc_t>::infinity();
  o.entropic_reg = static_cast<acc_t>(entropic_reg);
  o.normalize_first = normalize_first;

  const int64_t row = param.size(-1);
  const int64_t rows = numel / row;
  at::parallel_for(0, rows, kRowsPerTask, [&](int64_t r0, int64_t r1) {
    std::vector<acc_t> scratch(row);
    for (int64_t r = r0; r < r1; ++r) {
      int64_t offset = r * row;
      for (int64_t k : lengths) {
        step_simplex<scalar_t, acc_t>(p_ptr + offset, g_ptr + offset, k, o, scratch.data());
        offset += k;
      }
    }
  });
}

}  // namespace

at::Tensor exp_grad_step_cpu(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> lrs,
                             c10::IntArrayRef segments, c10::IntArrayRef segment_counts,
                             c10::ArrayRef<double> min_values, c10::ArrayRef<double> entropic_regs,
                             bool normalize_first, bool adaptive) {
  const std::vector<int64_t> first_segment =
      check_exp_grad_args(params, grads, lrs, segments, segment_counts, min_values, entropic_regs);
  const size_t count = params.size();
  std::vector<at::Tensor> grads_like_params(count);
  std::vector<std::vector<int64_t>> lengths(count);
  std::vector<double> etas(count);
  int32_t flags = 0;
  // Pass 1 inspects everything, so a bad grad or param anywhere leaves every param untouched.
  for (size_t t = 0; t < count; ++t) {
    TORCH_CHECK(params[t].device().is_cpu(), "exp_grad_step_ (CPU kernel): 'params[", t,
                "]' must be on the CPU, got ", params[t].device());
    grads_like_params[t] = grads[t].to(params[t].scalar_type()).contiguous();
    lengths[t] = segment_lengths(segments, first_segment[t], segment_counts[t], params[t].size(-1));
    double max_abs = 0.0;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[t].scalar_type(), "exp_grad_inspect_cpu", [&] {
      flags |= inspect_param<scalar_t>(params[t], grads_like_params[t], lengths[t], &max_abs);
    });
    etas[t] = adaptive && max_abs > 0 ? lrs[t] / max_abs : lrs[t];
  }
  if (flags == 0) {
    for (size_t t = 0; t < count; ++t) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, params[t].scalar_type(), "exp_grad_step_cpu", [&] {
        step_param<scalar_t>(params[t], grads_like_params[t], etas[t], lengths[t], min_values[t], normalize_first,
                             entropic_regs[t]);
      });
    }
  }
  return at::scalar_tensor(flags, at::TensorOptions().dtype(at::kInt));
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) { m.impl("exp_grad_step_", &exp_grad_step_cpu); }

}  // namespace gaea_ext
