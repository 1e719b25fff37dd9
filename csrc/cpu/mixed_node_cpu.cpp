// CPU kernels of gaea_ext::mixed_node and gaea_ext::mixed_node_backward.
//
// Work is split by (n, c) plane: a plane of every x stays in L1/L2 while all its terms are
// summed, the 3x3 pools are computed there as separable row/column passes into a plane
// buffer (never a full tensor), and the output plane is written once. The backward keeps
// the grad plane in a float buffer, computes the avg-pool adjoint (a box sum of
// grad / count) once per plane for all avg terms, routes max-pool grads to each window's
// first maximum (PyTorch's rule), and writes per-plane dot products for the weight
// gradient, which are summed over planes in plane order: the result does not depend on the
// thread count. BN terms scale their plane by the channel's 1/std and fold the shift into one
// per-plane constant (with the kOnes terms); their weight and norm gradients come from the
// per-plane <pool, g> and sum(g), combined per channel after the planes are done.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <limits>
#include <vector>

#include "../gaea_ext.h"
#include "pool_planes.h"
#include "vector_loops.h"

namespace gaea_ext {
namespace {

using namespace pool_planes;

int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hw, 1)); }

// The norm of BN term b at channel c: mean and 1/sqrt(var + eps).
template <typename acc_t>
struct NormView {
  const acc_t* p = nullptr;
  int64_t C = 0;
  acc_t mean(int64_t b, int64_t c) const { return p[(b * 2) * C + c]; }
  acc_t rstd(int64_t b, int64_t c) const { return p[(b * 2 + 1) * C + c]; }
};

template <typename acc_t>
at::Tensor norm_in(const std::optional<at::Tensor>& norm) {
  if (!norm.has_value() || !norm->defined() || norm->numel() == 0) return at::Tensor();
  return norm->to(at::CppTypeToScalarType<acc_t>::value).contiguous();
}

}  // namespace

at::Tensor mixed_node_cpu(at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
                          c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::optional<at::Tensor>& norm) {
  const auto bn_rank = check_mixed_node_args(xs_in, outputs_in, weights, kinds, sources, norm);
  const auto xs = contiguous_all(xs_in);
  const auto ys = contiguous_all(outputs_in);
  const at::Tensor& x0 = xs[0];
  const int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3), HW = H * W;
  const int64_t planes = N * C, T = static_cast<int64_t>(kinds.size());
  at::Tensor out = at::empty(x0.sizes(), x0.options());
  if (out.numel() == 0) return in_layout_of(out, xs_in[0]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wt = weights.to(at::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* w = wt.const_data_ptr<acc_t>();
    const at::Tensor nt = norm_in<acc_t>(norm);
    const NormView<acc_t> nv{nt.defined() ? nt.const_data_ptr<acc_t>() : nullptr, C};
    std::vector<const scalar_t*> xp, yp;
    for (const auto& t : xs) xp.push_back(t.const_data_ptr<scalar_t>());
    for (const auto& t : ys) yp.push_back(t.const_data_ptr<scalar_t>());
    const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW), tmp(HW), rows(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t off = p * HW, c = p % C;
        acc_t constant = 0;  // kOnes terms and the BN shifts, added once per element
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kind = kinds[t], src = sources[t];
          switch (kind) {
            case kSkip: axpy(acc.data(), xp[src] + off, w[t], HW); break;
            case kTensor: axpy(acc.data(), yp[src] + off, w[t], HW); break;
            case kOnes: constant += w[t]; break;
            case kAvgPool:
            case kMaxPool:
            case kAvgPoolBN:
            case kMaxPoolBN: {
              pool_plane(is_avg_kind(kind), xp[src] + off, tmp.data(), rows.data(), cnt.data(), H, W);
              acc_t scale = w[t];
              if (bn_rank[t] >= 0) {
                scale *= nv.rstd(bn_rank[t], c);
                constant -= scale * nv.mean(bn_rank[t], c);
              }
              axpy(acc.data(), tmp.data(), scale, HW);
              break;
            }
            default: break;  // kNone
          }
        }
        for (int64_t i = 0; i < HW; ++i) op[off + i] = static_cast<scalar_t>(acc[i] + constant);
      }
    });
  });
  return in_layout_of(out, xs_in[0]);
}

MixedNodeGrads mixed_node_backward_cpu(const at::Tensor& grad_out_in, at::TensorList xs_in, at::TensorList outputs_in,
                                       const at::Tensor& weights, c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                       const std::optional<at::Tensor>& norm, const c10::List<bool>& xs_need_grad,
                                       const c10::List<bool>& outputs_need_grad, bool weights_need_grad,
                                       bool norm_need_grad) {
  const auto bn_rank = check_mixed_node_backward_args(grad_out_in, xs_in, outputs_in, weights, kinds, sources, norm,
                                                      xs_need_grad, outputs_need_grad);
  const auto xs = contiguous_all(xs_in);
  const auto ys = contiguous_all(outputs_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor& x0 = xs[0];
  const int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3), HW = H * W;
  const int64_t planes = N * C, T = static_cast<int64_t>(kinds.size());
  const int64_t S = static_cast<int64_t>(xs.size()), O = static_cast<int64_t>(ys.size());
  int64_t B = 0;
  for (int64_t r : bn_rank) B += r >= 0;
  norm_need_grad = norm_need_grad && B > 0;

  std::vector<at::Tensor> grad_xs, grad_ys;
  std::vector<int64_t> gx_slot(S, -1);  // slot of x s in the per-plane grad buffers
  for (int64_t s = 0; s < S; ++s) {
    if (xs_need_grad[s]) {
      gx_slot[s] = static_cast<int64_t>(grad_xs.size());
      grad_xs.push_back(at::empty(x0.sizes(), x0.options()));
    }
  }
  std::vector<int64_t> gy_slot(O, -1);
  for (int64_t s = 0; s < O; ++s) {
    if (outputs_need_grad[s]) {
      gy_slot[s] = static_cast<int64_t>(grad_ys.size());
      grad_ys.push_back(at::empty(x0.sizes(), x0.options()));
    }
  }
  at::Tensor grad_weights = weights_need_grad ? at::zeros({T}, weights.options()) : at::empty({0}, weights.options());
  at::Tensor grad_norm = norm_need_grad ? at::zeros(norm->sizes(), norm->options()) : weights.new_empty({0});
  const int64_t num_gx = static_cast<int64_t>(grad_xs.size());
  TORCH_CHECK(HW <= std::numeric_limits<int32_t>::max(), "mixed_node_backward: planes of 2^31 cells or more are not supported");
  const bool need_sums = weights_need_grad || norm_need_grad;

  if (x0.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor wt = weights.to(at::CppTypeToScalarType<acc_t>::value).contiguous();
      const acc_t* w = wt.const_data_ptr<acc_t>();
      const at::Tensor nt = norm_in<acc_t>(norm);
      const NormView<acc_t> nv{nt.defined() ? nt.const_data_ptr<acc_t>() : nullptr, C};
      std::vector<const scalar_t*> xp, yp;
      for (const auto& t : xs) xp.push_back(t.const_data_ptr<scalar_t>());
      for (const auto& t : ys) yp.push_back(t.const_data_ptr<scalar_t>());
      std::vector<scalar_t*> gxp, gyp;
      for (auto& t : grad_xs) gxp.push_back(t.mutable_data_ptr<scalar_t>());
      for (auto& t : grad_ys) gyp.push_back(t.mutable_data_ptr<scalar_t>());
      const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
      const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
      bool any_avg = false;
      for (int64_t t = 0; t < T; ++t) any_avg = any_avg || is_avg_kind(kinds[t]);
      // Per plane: <raw term, g> for each term, then sum(g) in column T.
      const int64_t P = T + 1;
      std::vector<acc_t> partials(need_sums ? planes * P : 0, acc_t(0));

      at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> g(HW), adj(HW), rows(HW), scaled(HW), pooled(HW), gx(num_gx * HW);
        std::vector<int32_t> arg(HW), rows_arg(HW);
        for (int64_t p = begin; p < end; ++p) {
          const int64_t off = p * HW, c = p % C;
          load_chunk(g.data(), gp + off, HW);
          if (any_avg) {  // avg-pool adjoint, shared by every avg term of this plane
            for (int64_t i = 0; i < HW; ++i) scaled[i] = g[i] / cnt[i];
            box_sum_plane(scaled.data(), adj.data(), rows.data(), H, W);
          }
          std::fill(gx.begin(), gx.end(), acc_t(0));
          acc_t* part = need_sums ? partials.data() + p * P : nullptr;
          if (part) part[T] = sum_chunk<acc_t>(g.data(), HW);
          for (int64_t t = 0; t < T; ++t) {
            const int64_t kind = kinds[t], src = sources[t];
            if (kind == kNone || kind == kOnes) continue;
            if (kind == kTensor) {
              scalar_t* dst = gy_slot[src] >= 0 ? gyp[gy_slot[src]] + off : nullptr;
              if (part && dst) {
                part[t] = scale_and_dot_chunk(dst, yp[src] + off, g.data(), w[t], HW);
              } else if (part) {
                part[t] = dot_chunk(yp[src] + off, g.data(), HW);
              } else if (dst) {
                scale_chunk(dst, g.data(), w[t], HW);
              }
              continue;
            }
            const scalar_t* x = xp[src] + off;
            acc_t* gxs = gx_slot[src] >= 0 ? gx.data() + gx_slot[src] * HW : nullptr;
            const acc_t scale = bn_rank[t] >= 0 ? w[t] * nv.rstd(bn_rank[t], c) : w[t];
            if (kind == kSkip) {
              if (part) part[t] = dot_chunk(x, g.data(), HW);
              if (gxs) axpy(gxs, g.data(), scale, HW);
            } else if (is_avg_kind(kind)) {
              if (part) part[t] = dot_chunk(x, adj.data(), HW);  // <avg_pool(x), g> = <x, adjoint(g)>
              if (gxs) axpy(gxs, adj.data(), scale, HW);
            } else {  // max pools: the grad of each window goes to its first maximum
              max_pool_argmax_plane(x, pooled.data(), arg.data(), rows.data(), rows_arg.data(), H, W);
              if (part) part[t] = dot_chunk(pooled.data(), g.data(), HW);
              if (gxs) {
                for (int64_t q = 0; q < HW; ++q) gxs[arg[q]] += scale * g[q];
              }
            }
          }
          for (int64_t s = 0; s < S; ++s) {
            if (gx_slot[s] < 0) continue;
            const acc_t* src = gx.data() + gx_slot[s] * HW;
            scalar_t* dst = gxp[gx_slot[s]] + off;
            for (int64_t i = 0; i < HW; ++i) dst[i] = static_cast<scalar_t>(src[i]);
          }
        }
      });

      if (need_sums) {  // plane order is fixed: deterministic
        std::vector<double> gw(T, 0.0), gn(norm_need_grad ? B * 2 * C : 0, 0.0);
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kind = kinds[t];
          if (kind == kNone) continue;
          const int64_t col = kind == kOnes ? T : t;
          if (bn_rank[t] < 0) {
            for (int64_t p = 0; p < planes; ++p) gw[t] += static_cast<double>(partials[p * P + col]);
            continue;
          }
          const int64_t b = bn_rank[t];
          for (int64_t c = 0; c < C; ++c) {
            double sgp = 0.0, sg = 0.0;
            for (int64_t n = 0; n < N; ++n) {
              sgp += static_cast<double>(partials[(n * C + c) * P + t]);
              sg += static_cast<double>(partials[(n * C + c) * P + T]);
            }
            const double mean = nv.mean(b, c), rstd = nv.rstd(b, c), centred = sgp - mean * sg;
            gw[t] += rstd * centred;
            if (norm_need_grad) {
              gn[(b * 2) * C + c] = -static_cast<double>(w[t]) * rstd * sg;
              gn[(b * 2 + 1) * C + c] = static_cast<double>(w[t]) * centred;
            }
          }
        }
        if (weights_need_grad) {
          at::Tensor out = at::empty({T}, at::kDouble);
          std::copy(gw.begin(), gw.end(), out.mutable_data_ptr<double>());
          grad_weights = out.to(weights.scalar_type());
        }
        if (norm_need_grad) {
          at::Tensor out = at::empty({B, 2, C}, at::kDouble);
          std::copy(gn.begin(), gn.end(), out.mutable_data_ptr<double>());
          grad_norm = out.to(norm->scalar_type());
        }
      }
    });
  }
  for (int64_t s = 0; s < S; ++s) {
    if (gx_slot[s] >= 0) grad_xs[gx_slot[s]] = in_layout_of(grad_xs[gx_slot[s]], xs_in[s]);
  }
  for (int64_t s = 0; s < O; ++s) {
    if (gy_slot[s] >= 0) grad_ys[gy_slot[s]] = in_layout_of(grad_ys[gy_slot[s]], outputs_in[s]);
  }
  return {grad_xs, grad_ys, grad_weights, grad_norm};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("mixed_node", &mixed_node_cpu);
  m.impl("mixed_node_backward", &mixed_node_backward_cpu);
}

}  // namespace gaea_ext
