// CPU kernels of gaea_ext::mixed_node and gaea_ext::mixed_node_backward.
//
// Work is split by (n, c) plane: a plane of every x stays in L1/L2 while all its terms are
// summed, the 3x3 pools are computed there as separable row/column passes into a plane
// buffer (never a full tensor), and the output plane is written once. The backward keeps
// the grad plane in a float buffer, computes the avg-pool adjoint (a box sum of
// grad / count) once per plane for all avg terms, routes max-pool grads to each window's
// first maximum (PyTorch's rule), and writes per-plane dot products for the weight
// gradient, which are summed over planes in plane order: the result does not depend on the
// thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../gaea_ext.h"
#include "simd_clones.h"

namespace gaea_ext {
namespace {

// ---- plane helpers --------------------------------------------------------------------

// out = 3x3 box sum of x over in-range cells (row pass into `rows`, then column pass).
template <typename in_t, typename acc_t>
void box_sum_plane(const in_t* x, acc_t* out, acc_t* rows, int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const in_t* r = x + h * W;
    acc_t* o = rows + h * W;
    for (int64_t w = 0; w < W; ++w) {
      acc_t s = static_cast<acc_t>(r[w]);
      if (w > 0) s += static_cast<acc_t>(r[w - 1]);
      if (w + 1 < W) s += static_cast<acc_t>(r[w + 1]);
      o[w] = s;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const acc_t* mid = rows + h * W;
    acc_t* o = out + h * W;
    for (int64_t w = 0; w < W; ++w) o[w] = mid[w];
    if (h > 0) {
      const acc_t* up = mid - W;
      for (int64_t w = 0; w < W; ++w) o[w] += up[w];
    }
    if (h + 1 < H) {
      const acc_t* down = mid + W;
      for (int64_t w = 0; w < W; ++w) o[w] += down[w];
    }
  }
}

template <typename acc_t>
inline acc_t max_nan(acc_t m, acc_t v) {
  return (v > m || std::isnan(v)) ? v : m;
}

// out = 3x3 max over in-range cells (NaN propagates), separable.
template <typename scalar_t, typename acc_t>
void max_pool_plane(const scalar_t* x, acc_t* out, acc_t* rows, int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* r = x + h * W;
    acc_t* o = rows + h * W;
    for (int64_t w = 0; w < W; ++w) {
      acc_t m = static_cast<acc_t>(r[w]);
      if (w > 0) m = max_nan(m, static_cast<acc_t>(r[w - 1]));
      if (w + 1 < W) m = max_nan(m, static_cast<acc_t>(r[w + 1]));
      o[w] = m;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      acc_t m = rows[h * W + w];
      if (h > 0) m = max_nan(m, rows[(h - 1) * W + w]);
      if (h + 1 < H) m = max_nan(m, rows[(h + 1) * W + w]);
      out[h * W + w] = m;
    }
  }
}

// Flat index of the first maximum of the 3x3 window at (h, w), scanning rows then columns
// with `v > max || isnan(v)`, exactly as PyTorch's max_pool2d picks its index.
template <typename scalar_t, typename acc_t>
inline int64_t window_argmax(const scalar_t* x, int64_t h, int64_t w, int64_t H, int64_t W) {
  const int64_t h0 = h > 0 ? h - 1 : 0, h1 = h + 1 < H ? h + 1 : H - 1;
  const int64_t w0 = w > 0 ? w - 1 : 0, w1 = w + 1 < W ? w + 1 : W - 1;
  int64_t best = h0 * W + w0;
  acc_t m = static_cast<acc_t>(x[best]);
  for (int64_t ih = h0; ih <= h1; ++ih) {
    for (int64_t iw = w0; iw <= w1; ++iw) {
      const int64_t i = ih * W + iw;
      const acc_t v = static_cast<acc_t>(x[i]);
      if (v > m || std::isnan(v)) {
        m = v;
        best = i;
      }
    }
  }
  return best;
}

// Number of in-range cells of each 3x3 window (count_include_pad=False).
template <typename acc_t>
std::vector<acc_t> window_counts(int64_t H, int64_t W) {
  std::vector<acc_t> cnt(H * W);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t rh = 1 + (h > 0) + (h + 1 < H);
    for (int64_t w = 0; w < W; ++w) cnt[h * W + w] = static_cast<acc_t>(rh * (1 + (w > 0) + (w + 1 < W)));
  }
  return cnt;
}

template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void axpy(acc_t* __restrict acc, const scalar_t* __restrict y, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] += w * static_cast<acc_t>(y[i]);
}

template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES acc_t dot(const scalar_t* __restrict y, const acc_t* __restrict g, int64_t n) {
  acc_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<acc_t>(y[i]) * g[i];
  return s;
}

int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hw, 1)); }

}  // namespace

at::Tensor mixed_node_cpu(at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
                          c10::IntArrayRef kinds, c10::IntArrayRef sources) {
  check_mixed_node_args(xs_in, outputs_in, weights, kinds, sources);
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
    std::vector<const scalar_t*> xp, yp;
    for (const auto& t : xs) xp.push_back(t.const_data_ptr<scalar_t>());
    for (const auto& t : ys) yp.push_back(t.const_data_ptr<scalar_t>());
    const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW), tmp(HW), rows(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t off = p * HW;
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kind = kinds[t], src = sources[t];
          switch (kind) {
            case kSkip: axpy(acc.data(), xp[src] + off, w[t], HW); break;
            case kTensor: axpy(acc.data(), yp[src] + off, w[t], HW); break;
            case kAvgPool:
              box_sum_plane(xp[src] + off, tmp.data(), rows.data(), H, W);
              for (int64_t i = 0; i < HW; ++i) acc[i] += w[t] * (tmp[i] / cnt[i]);
              break;
            case kMaxPool:
              max_pool_plane(xp[src] + off, tmp.data(), rows.data(), H, W);
              for (int64_t i = 0; i < HW; ++i) acc[i] += w[t] * tmp[i];
              break;
            default: break;  // kNone
          }
        }
        for (int64_t i = 0; i < HW; ++i) op[off + i] = static_cast<scalar_t>(acc[i]);
      }
    });
  });
  return in_layout_of(out, xs_in[0]);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mixed_node_backward_cpu(
    const at::Tensor& grad_out_in, at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
    c10::IntArrayRef kinds, c10::IntArrayRef sources, const c10::List<bool>& xs_need_grad,
    const c10::List<bool>& outputs_need_grad, bool weights_need_grad) {
  check_mixed_node_backward_args(grad_out_in, xs_in, outputs_in, weights, kinds, sources, xs_need_grad,
                                 outputs_need_grad);
  const auto xs = contiguous_all(xs_in);
  const auto ys = contiguous_all(outputs_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor& x0 = xs[0];
  const int64_t N = x0.size(0), C = x0.size(1), H = x0.size(2), W = x0.size(3), HW = H * W;
  const int64_t planes = N * C, T = static_cast<int64_t>(kinds.size());
  const int64_t S = static_cast<int64_t>(xs.size()), O = static_cast<int64_t>(ys.size());

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
  const int64_t num_gx = static_cast<int64_t>(grad_xs.size());

  if (x0.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor wt = weights.to(at::CppTypeToScalarType<acc_t>::value).contiguous();
      const acc_t* w = wt.const_data_ptr<acc_t>();
      std::vector<const scalar_t*> xp, yp;
      for (const auto& t : xs) xp.push_back(t.const_data_ptr<scalar_t>());
      for (const auto& t : ys) yp.push_back(t.const_data_ptr<scalar_t>());
      std::vector<scalar_t*> gxp, gyp;
      for (auto& t : grad_xs) gxp.push_back(t.mutable_data_ptr<scalar_t>());
      for (auto& t : grad_ys) gyp.push_back(t.mutable_data_ptr<scalar_t>());
      const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
      const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
      bool any_avg = false;
      for (int64_t t = 0; t < T; ++t) any_avg = any_avg || kinds[t] == kAvgPool;
      std::vector<acc_t> partials(weights_need_grad ? planes * T : 0, acc_t(0));

      at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> g(HW), adj(HW), rows(HW), scaled(HW), gx(num_gx * HW);
        for (int64_t p = begin; p < end; ++p) {
          const int64_t off = p * HW;
          for (int64_t i = 0; i < HW; ++i) g[i] = static_cast<acc_t>(gp[off + i]);
          if (any_avg) {  // avg-pool adjoint, shared by every avg term of this plane
            for (int64_t i = 0; i < HW; ++i) scaled[i] = g[i] / cnt[i];
            box_sum_plane(scaled.data(), adj.data(), rows.data(), H, W);
          }
          std::fill(gx.begin(), gx.end(), acc_t(0));
          acc_t* part = weights_need_grad ? partials.data() + p * T : nullptr;
          for (int64_t t = 0; t < T; ++t) {
            const int64_t kind = kinds[t], src = sources[t];
            if (kind == kNone) continue;
            if (kind == kTensor) {
              if (part) part[t] = dot(yp[src] + off, g.data(), HW);
              if (gy_slot[src] >= 0) {
                scalar_t* dst = gyp[gy_slot[src]] + off;
                for (int64_t i = 0; i < HW; ++i) dst[i] = static_cast<scalar_t>(w[t] * g[i]);
              }
              continue;
            }
            const scalar_t* x = xp[src] + off;
            acc_t* gxs = gx_slot[src] >= 0 ? gx.data() + gx_slot[src] * HW : nullptr;
            if (kind == kSkip) {
              if (part) part[t] = dot(x, g.data(), HW);
              if (gxs) axpy(gxs, g.data(), w[t], HW);
            } else if (kind == kAvgPool) {
              if (part) part[t] = dot(x, adj.data(), HW);
              if (gxs) axpy(gxs, adj.data(), w[t], HW);
            } else {  // kMaxPool: the grad of each window goes to its first maximum
              acc_t d = 0;
              for (int64_t h = 0; h < H; ++h) {
                for (int64_t c = 0; c < W; ++c) {
                  const int64_t q = h * W + c;
                  const int64_t a = window_argmax<scalar_t, acc_t>(x, h, c, H, W);
                  d += static_cast<acc_t>(x[a]) * g[q];
                  if (gxs) gxs[a] += w[t] * g[q];
                }
              }
              if (part) part[t] = d;
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

      if (weights_need_grad) {
        std::vector<double> total(T, 0.0);  // plane order is fixed: deterministic
        for (int64_t p = 0; p < planes; ++p)
          for (int64_t t = 0; t < T; ++t) total[t] += static_cast<double>(partials[p * T + t]);
        at::Tensor gw = at::empty({T}, at::kDouble);
        std::copy(total.begin(), total.end(), gw.mutable_data_ptr<double>());
        grad_weights = gw.to(weights.scalar_type());
      }
    });
  }
  for (int64_t s = 0; s < S; ++s) {
    if (gx_slot[s] >= 0) grad_xs[gx_slot[s]] = in_layout_of(grad_xs[gx_slot[s]], xs_in[s]);
  }
  for (int64_t s = 0; s < O; ++s) {
    if (gy_slot[s] >= 0) grad_ys[gy_slot[s]] = in_layout_of(grad_ys[gy_slot[s]], outputs_in[s]);
  }
  return {grad_xs, grad_ys, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("mixed_node", &mixed_node_cpu);
  m.impl("mixed_node_backward", &mixed_node_backward_cpu);
}

}  // namespace gaea_ext
