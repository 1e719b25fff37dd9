// C++ test of the gaea_ext torch ops, run by ctest (CMake build). It calls the ops only
// through the dispatcher, as C++ users of libgaea_ext do, and checks them against plain
// ATen arithmetic:
//   * weighted_sum equals the manual sum (float32, float64, channels_last kept, K = 70 > one
//     CUDA launch), and bad arguments raise c10::Error;
//   * weighted_sum_backward gives w[k] * grad_out for the inputs that need grad and
//     <inputs[k], grad_out> for the weights;
//   * exp_grad_step_ equals the log-domain formula of csrc/gaea_ext.h, keeps every simplex
//     (also with segments, several params in one call) on the simplex, and leaves
//     every param untouched on a NaN grad.
// With GAEA_EXT_WITH_CUDA and a visible GPU the same ops also run on CUDA and are compared
// with the CPU results; otherwise those checks are reported as skipped.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <tuple>
#include <vector>

#include "gaea_ext.h"

namespace {

int g_failures = 0;
int g_checks = 0;

void check(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) {
    ++g_failures;
    std::printf("FAIL: %s\n", what.c_str());
  }
}

void check_close(const at::Tensor& got, const at::Tensor& want, double rtol, double atol,
                 const std::string& what) {
  bool ok = got.sizes() == want.sizes() && got.scalar_type() == want.scalar_type() &&
            at::allclose(got.to(at::kDouble), want.to(at::kDouble), rtol, atol);
  if (!ok) {
    double err = got.sizes() == want.sizes()
                     ? (got.to(at::kDouble) - want.to(at::kDouble)).abs().max().item<double>()
                     : -1.0;
    std::printf("  %s: max abs error %g (dtype %s vs %s)\n", what.c_str(), err,
                std::string(c10::toString(got.scalar_type())).c_str(),
                std::string(c10::toString(want.scalar_type())).c_str());
  }
  check(ok, what);
}

bool throws(const std::function<void()>& f) {
  try {
    f();
  } catch (const c10::Error&) {
    return true;
  }
  return false;
}

// ---- the ops, looked up in the dispatcher ------------------------------------------------

// Typed call: the signature must match the kernels' C++ signature (csrc/gaea_ext.h).
at::Tensor weighted_sum(at::TensorList inputs, const at::Tensor& weights) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("gaea_ext::weighted_sum", "")
                       .typed<at::Tensor(at::TensorList, const at::Tensor&)>();
  return op.call(inputs, weights);
}

// Boxed calls: independent of how the kernels spell list arguments in C++
// (ArrayRef<bool> vs std::vector<bool>, ...), only the schema matters.
std::vector<c10::IValue> call_boxed(const char* name, std::vector<c10::IValue> stack) {
  const auto& op = c10::Dispatcher::singleton().findSchemaOrThrow(name, "");
  op.callBoxed(&stack);
  return stack;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward(
    const at::Tensor& grad_out, const std::vector<at::Tensor>& inputs, const at::Tensor& weights,
    const std::vector<bool>& inputs_need_grad, bool weights_need_grad) {
  c10::List<bool> need;
  for (bool b : inputs_need_grad) need.push_back(b);
  auto out = call_boxed("gaea_ext::weighted_sum_backward",
                        {grad_out, c10::List<at::Tensor>(inputs), weights, need, weights_need_grad});
  return {out.at(0).toTensorVector(), out.at(1).toTensor()};
}

// Schema: exp_grad_step_(Tensor(a!)[] params, Tensor[] grads, float[] lrs, int[] segments,
//   int[] segment_counts, float[] min_values, float[] entropic_regs, bool normalize_first,
//   bool adaptive) -> Tensor flag. Param t owns segment_counts[t] lengths of `segments`
// (0: one simplex per row).
at::Tensor exp_grad_step_(const std::vector<at::Tensor>& params, const std::vector<at::Tensor>& grads,
                          const std::vector<double>& lrs, const std::vector<int64_t>& segments,
                          const std::vector<int64_t>& segment_counts,
                          const std::vector<double>& min_values,
                          const std::vector<double>& entropic_regs, bool normalize_first,
                          bool adaptive) {
  auto out = call_boxed("gaea_ext::exp_grad_step_",
                        {c10::List<at::Tensor>(params), c10::List<at::Tensor>(grads),
                         c10::List<double>(lrs), c10::List<int64_t>(segments),
                         c10::List<int64_t>(segment_counts), c10::List<double>(min_values),
                         c10::List<double>(entropic_regs), normalize_first, adaptive});
  return out.at(0).toTensor();
}

// One param with the same options for every param of the call.
at::Tensor exp_grad_step_1(const at::Tensor& param, const at::Tensor& grad, double lr,
                           const std::vector<int64_t>& segments, double min_value,
                           bool normalize_first, double entropic_reg) {
  return exp_grad_step_({param}, {grad}, {lr}, segments, {static_cast<int64_t>(segments.size())},
                        {min_value}, {entropic_reg}, normalize_first, false);
}

// ---- references ----------------------------------------------------------------------------

at::Tensor manual_sum(const std::vector<at::Tensor>& inputs, const at::Tensor& weights) {
  at::Tensor acc = at::zeros(inputs[0].sizes(), inputs[0].options().dtype(at::kDouble));
  for (size_t k = 0; k < inputs.size(); ++k) {
    acc = acc + weights[k].to(at::kDouble) * inputs[k].to(at::kDouble);
  }
  return acc.to(inputs[0].scalar_type());
}

// The log-domain step of csrc/gaea_ext.h, in float64, on a copy.
at::Tensor reference_step(const at::Tensor& param, const at::Tensor& grad, double lr,
                          const std::vector<int64_t>& segments, double min_value,
                          bool normalize_first, double entropic_reg) {
  at::Tensor p = param.to(at::kDouble);
  at::Tensor g = grad.to(at::kDouble);
  std::vector<int64_t> lengths = segments.empty() ? std::vector<int64_t>{p.size(-1)} : segments;
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (int64_t k : lengths) {
    at::Tensor ps = p.narrow(-1, offset, k);
    at::Tensor gs = g.narrow(-1, offset, k);
    offset += k;
    at::Tensor l = ps.log() - lr * (gs + entropic_reg * ((static_cast<double>(k) * ps).log() + 1));
    if (!normalize_first) l = at::clamp_min(l, std::log(min_value));
    at::Tensor q = (l - at::logsumexp(l, {-1}, /*keepdim=*/true)).exp();
    if (normalize_first) q = at::clamp_min(q, min_value);
    parts.push_back(q);
  }
  return at::cat(parts, -1).to(param.scalar_type());
}

at::Tensor random_simplex(std::vector<int64_t> shape, const std::vector<int64_t>& segments,
                          at::ScalarType dtype) {
  at::Tensor x = at::randn(shape, at::kDouble);
  std::vector<int64_t> lengths = segments.empty() ? std::vector<int64_t>{shape.back()} : segments;
  std::vector<at::Tensor> parts;
  int64_t offset = 0;
  for (int64_t k : lengths) {
    parts.push_back(at::softmax(x.narrow(-1, offset, k), -1));
    offset += k;
  }
  return at::cat(parts, -1).to(dtype).contiguous();
}

// ---- tests ---------------------------------------------------------------------------------

void test_weighted_sum(const at::Device& dev) {
  const std::string where = " [" + dev.str() + "]";
  for (auto dtype : {at::kFloat, at::kDouble}) {
    const std::string tag = std::string(" ") + c10::toString(dtype) + where;
    // Odd sizes (not a multiple of any vector width), K = 3.
    std::vector<at::Tensor> inputs;
    for (int k = 0; k < 3; ++k) inputs.push_back(at::randn({2, 3, 37}, at::kDouble).to(dtype).to(dev));
    at::Tensor w = at::tensor({0.25, -0.5, 1.75}, at::kDouble).to(at::kFloat).to(dev);
    at::Tensor out = weighted_sum(inputs, w);
    check(out.device() == dev, "weighted_sum output device" + tag);
    double tol = dtype == at::kFloat ? 1e-5 : 1e-12;
    check_close(out.cpu(), manual_sum(inputs, w).cpu(), tol, tol, "weighted_sum == manual sum" + tag);
  }

  // channels_last inputs keep their layout.
  {
    std::vector<at::Tensor> inputs;
    for (int k = 0; k < 4; ++k) {
      inputs.push_back(at::randn({2, 5, 3, 7}).to(dev).contiguous(at::MemoryFormat::ChannelsLast));
    }
    at::Tensor w = at::rand({4}).to(dev);
    at::Tensor out = weighted_sum(inputs, w);
    check(out.strides() == inputs[0].strides(), "weighted_sum keeps channels_last" + where);
    check_close(out.cpu(), manual_sum(inputs, w).cpu(), 1e-5, 1e-5, "weighted_sum channels_last" + where);
  }

  // Non-contiguous views (falls back to a correct path).
  {
    std::vector<at::Tensor> inputs;
    for (int k = 0; k < 2; ++k) inputs.push_back(at::randn({6, 9}).to(dev).t());
    at::Tensor w = at::rand({2}).to(dev);
    check_close(weighted_sum(inputs, w).cpu(), manual_sum(inputs, w).cpu(), 1e-5, 1e-5,
                "weighted_sum non-contiguous" + where);
  }

  // K larger than one CUDA launch handles.
  {
    const int64_t K = gaea_ext::kMaxInputsPerLaunch + 6;
    std::vector<at::Tensor> inputs;
    for (int64_t k = 0; k < K; ++k) inputs.push_back(at::randn({129}).to(dev));
    at::Tensor w = at::rand({K}).to(dev);
    check_close(weighted_sum(inputs, w).cpu(), manual_sum(inputs, w).cpu(), 1e-4, 1e-4,
                "weighted_sum K=" + std::to_string(K) + where);
  }

  // Bad arguments raise (c10::Error), no crash.
  at::Tensor x = at::randn({4}).to(dev);
  check(throws([&] { weighted_sum({}, at::ones({0}).to(dev)); }), "empty inputs raise" + where);
  check(throws([&] { weighted_sum({x, x}, at::ones({3}).to(dev)); }), "wrong weights length raises" + where);
  check(throws([&] { weighted_sum({x, at::randn({5}).to(dev)}, at::ones({2}).to(dev)); }),
        "shape mismatch raises" + where);
  check(throws([&] { weighted_sum({x.to(at::kInt)}, at::ones({1}).to(dev)); }), "integer inputs raise" + where);
}

void test_weighted_sum_backward(const at::Device& dev) {
  const std::string where = " [" + dev.str() + "]";
  std::vector<at::Tensor> inputs;
  for (int k = 0; k < 3; ++k) inputs.push_back(at::randn({3, 41}).to(dev));
  at::Tensor w = at::tensor({0.5, -1.5, 2.0}, at::kFloat).to(dev);
  at::Tensor g = at::randn({3, 41}).to(dev);

  auto [grad_inputs, grad_w] = weighted_sum_backward(g, inputs, w, {true, false, true}, true);
  check(grad_inputs.size() == 2, "backward returns grads only for inputs needing them" + where);
  if (grad_inputs.size() == 2) {
    check_close(grad_inputs[0].cpu(), (0.5 * g).cpu(), 1e-6, 1e-6, "grad_inputs[0] == w0 * grad_out" + where);
    check_close(grad_inputs[1].cpu(), (2.0 * g).cpu(), 1e-6, 1e-6, "grad_inputs[2] == w2 * grad_out" + where);
  }
  std::vector<at::Tensor> dots;
  for (const auto& x : inputs) dots.push_back((x.to(at::kDouble) * g.to(at::kDouble)).sum());
  check_close(grad_w.cpu(), at::stack(dots).to(at::kFloat).cpu(), 1e-5, 1e-4,
              "grad_weights[k] == <inputs[k], grad_out>" + where);

  // Matches autograd of the manual sum.
  {
    std::vector<at::Tensor> leaves;
    for (const auto& x : inputs) leaves.push_back(x.cpu().to(at::kDouble).requires_grad_());
    at::Tensor wl = w.cpu().to(at::kDouble).requires_grad_();
    at::Tensor y = at::zeros_like(leaves[0]);
    for (size_t k = 0; k < leaves.size(); ++k) y = y + wl[k] * leaves[k];
    y.backward(g.cpu().to(at::kDouble));
    check_close(grad_w.cpu().to(at::kDouble), wl.grad(), 1e-5, 1e-4, "grad_weights == autograd" + where);
  }

  // Deterministic: bitwise identical on a second run.
  auto [grad_inputs2, grad_w2] = weighted_sum_backward(g, inputs, w, {true, false, true}, true);
  check(at::equal(grad_w, grad_w2), "grad_weights bitwise deterministic" + where);

  // weights_need_grad = false: no weight grad is computed.
  auto [gi3, gw3] = weighted_sum_backward(g, inputs, w, {false, true, false}, false);
  check(gi3.size() == 1 && (!gw3.defined() || gw3.numel() == 0),
        "weights_need_grad=false gives only the requested grads" + where);
}

void test_exp_grad_step(const at::Device& dev) {
  const std::string where = " [" + dev.str() + "]";
  const double min_value = 1e-5;

  // DARTS-sized: alphas 14x8 (one simplex per row) and edge weights 2x14 split by node
  // 2+3+4+5, different lr / min_value per param, all in one call.
  {
    const std::vector<int64_t> segments{2, 3, 4, 5};
    at::Tensor alpha = random_simplex({14, 8}, {}, at::kFloat).to(dev);
    at::Tensor beta = random_simplex({2, 14}, segments, at::kFloat).to(dev);
    at::Tensor alpha0 = alpha.clone();
    at::Tensor ga = (10 * at::randn({14, 8})).to(dev);
    at::Tensor gb = (5 * at::randn({2, 14})).to(dev);
    at::Tensor want_a = reference_step(alpha.cpu(), ga.cpu(), 0.5, {}, min_value, false, 0.0);
    at::Tensor want_b = reference_step(beta.cpu(), gb.cpu(), 0.3, segments, 0.0, false, 0.0);
    at::Tensor flag = exp_grad_step_({alpha, beta}, {ga, gb}, {0.5, 0.3}, segments, {0, 4},
                                     {min_value, 0.0}, {0.0, 0.0}, false, false);
    check(flag.item<int>() == 0, "exp_grad_step_ flag 0 for finite grads" + where);
    check(!at::equal(alpha, alpha0), "exp_grad_step_ updates in place" + where);
    check_close(alpha.cpu(), want_a, 1e-5, 1e-7, "exp_grad_step_ == log-domain formula" + where);
    check_close(beta.cpu(), want_b, 1e-5, 1e-7, "exp_grad_step_ with segments == formula" + where);
    at::Tensor sums = alpha.cpu().to(at::kDouble).sum(-1);
    check_close(sums, at::ones_like(sums), 0, 1e-6, "rows sum to 1" + where);
    check(alpha.cpu().min().item<double>() > 0, "rows stay positive" + where);
    int64_t offset = 0;
    for (int64_t k : segments) {
      at::Tensor s = beta.cpu().to(at::kDouble).narrow(-1, offset, k).sum(-1);
      check_close(s, at::ones_like(s), 0, 1e-6, "segment of " + std::to_string(k) + " sums to 1" + where);
      offset += k;
    }
  }
  // normalize_first (GDAS order) with entropic regularisation, float64.
  {
    at::Tensor alpha = random_simplex({2, 7}, {}, at::kDouble).to(dev);
    at::Tensor ga = (5 * at::randn({2, 7}, at::kDouble)).to(dev);
    at::Tensor want = reference_step(alpha.cpu(), ga.cpu(), 0.7, {}, min_value, true, 0.1);
    exp_grad_step_1(alpha, ga, 0.7, {}, min_value, true, 0.1);
    check_close(alpha.cpu(), want, 1e-10, 1e-12, "normalize_first + entropic_reg == formula" + where);
    check(alpha.cpu().min().item<double>() >= min_value, "normalize_first keeps p >= min_value" + where);
  }
  // Many steps with large gradients: the rows stay on the simplex.
  {
    at::Tensor p = random_simplex({4, 8}, {}, at::kFloat).to(dev);
    at::Tensor q = random_simplex({3, 5}, {}, at::kFloat).to(dev);
    for (int step = 0; step < 200; ++step) {
      exp_grad_step_({p, q}, {(100 * at::randn({4, 8})).to(dev), (100 * at::randn({3, 5})).to(dev)},
                     {1.0, 0.5}, {}, {0, 0}, {min_value, min_value}, {0.0, 0.0}, false, false);
    }
    for (const auto& t : {p, q}) {
      at::Tensor c = t.cpu().to(at::kDouble);
      check(at::isfinite(c).all().item<bool>(), "finite after 200 large steps" + where);
      at::Tensor s = c.sum(-1);
      check_close(s, at::ones_like(s), 0, 1e-5, "rows sum to 1 after 200 large steps" + where);
      check(c.min().item<double>() > 0, "rows positive after 200 large steps" + where);
    }
  }
  // A NaN grad in any param leaves every param untouched and sets the flag.
  {
    at::Tensor p = random_simplex({3, 4}, {}, at::kFloat).to(dev);
    at::Tensor q = random_simplex({2, 6}, {}, at::kFloat).to(dev);
    at::Tensor p0 = p.clone();
    at::Tensor q0 = q.clone();
    at::Tensor g = at::randn({3, 4});
    g[1][2] = std::nan("");
    at::Tensor flag = exp_grad_step_({q, p}, {at::randn({2, 6}).to(dev), g.to(dev)}, {0.5, 0.5}, {},
                                     {0, 0}, {min_value, min_value}, {0.0, 0.0}, false, false);
    check(flag.item<int>() & gaea_ext::kNonFiniteGrad, "NaN grad sets the flag" + where);
    check(at::equal(p, p0) && at::equal(q, q0), "NaN grad leaves every param untouched" + where);
  }
  // Bad arguments raise.
  {
    at::Tensor p = random_simplex({2, 5}, {}, at::kFloat).to(dev);
    at::Tensor g = at::randn({2, 5}).to(dev);
    check(throws([&] { exp_grad_step_1(p, at::randn({2, 4}).to(dev), 0.1, {}, min_value, false, 0); }),
          "grad shape mismatch raises" + where);
    check(throws([&] { exp_grad_step_1(p, g, 0.1, {2, 2}, min_value, false, 0); }),
          "segments not summing to the row raise" + where);
    check(throws([&] { exp_grad_step_1(p, g, -0.1, {}, min_value, false, 0); }),
          "negative lr raises" + where);
  }
}

}  // namespace

int main() {
  at::manual_seed(0);
  std::printf("gaea_ext_test: torch ops gaea_ext::weighted_sum, weighted_sum_backward, exp_grad_step_\n");

  std::vector<at::Device> devices{at::Device(at::kCPU)};
#ifdef GAEA_EXT_WITH_CUDA
  if (at::hasCUDA()) {
    devices.emplace_back(at::kCUDA, 0);
  } else {
    std::printf("CUDA kernels built; no GPU visible: CUDA checks skipped\n");
  }
#else
  std::printf("CUDA kernels not built: CUDA checks skipped\n");
#endif

  for (const auto& dev : devices) {
    const int before = g_failures;
    test_weighted_sum(dev);
    test_weighted_sum_backward(dev);
    test_exp_grad_step(dev);
    std::printf("%s: %s\n", dev.str().c_str(), g_failures == before ? "ok" : "FAILED");
  }

  std::printf("%d checks, %d failures\n", g_checks, g_failures);
  return g_failures == 0 ? 0 : 1;
}
