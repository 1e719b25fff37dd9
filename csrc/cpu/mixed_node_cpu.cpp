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
// per-plane <pool, g> (<output, g> for kTensorBN) and sum(g), combined per channel after the
// planes are done. Outputs are read in place with their own strides (PlaneStrides): a plane
// whose cells are not adjacent (a channels_last output) is gathered into a plane buffer.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
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
NormView<acc_t> norm_view(const at::Tensor& norm_acc, int64_t C) {
  return {norm_acc.defined() ? norm_acc.const_data_ptr<acc_t>() : nullptr, C};
}

// An output tensor as the kernels read it: plane (n, c) holds HW cells `cell_stride` apart.
template <typename scalar_t>
struct OutputTensor {
  const scalar_t* data;
  PlaneStrides strides;
  const scalar_t* plane(int64_t n, int64_t c) const { return data + n * strides.n_stride + c * strides.c_stride; }
};

template <typename scalar_t>
std::vector<OutputTensor<scalar_t>> output_tensors(const std::vector<at::Tensor>& tensors) {
  std::vector<OutputTensor<scalar_t>> out;
  for (const auto& t : tensors) out.push_back({t.const_data_ptr<scalar_t>(), plane_strides(t)});
  return out;
}

// Plane (n, c) of output y (cells not adjacent) gathered into `buffer` of HW values.
template <typename scalar_t, typename acc_t>
const acc_t* gather_plane(const OutputTensor<scalar_t>& y, int64_t n, int64_t c, int64_t HW, acc_t* buffer) {
  const scalar_t* plane = y.plane(n, c);
  const int64_t step = y.strides.cell_stride;
  for (int64_t i = 0; i < HW; ++i) buffer[i] = static_cast<acc_t>(plane[i * step]);
  return buffer;
}

template <typename scalar_t>
std::vector<const scalar_t*> const_pointers(const std::vector<at::Tensor>& tensors) {
  std::vector<const scalar_t*> out;
  for (const auto& t : tensors) out.push_back(t.const_data_ptr<scalar_t>());
  return out;
}

// Per tensor: its gradient's data, or nullptr when that gradient is not needed.
template <typename scalar_t>
std::vector<scalar_t*> grad_pointers(NeededGrads& needed) {
  std::vector<scalar_t*> out(needed.slot.size(), nullptr);
  for (size_t k = 0; k < out.size(); ++k) {
    if (at::Tensor* grad = needed.of(static_cast<int64_t>(k))) out[k] = grad->mutable_data_ptr<scalar_t>();
  }
  return out;
}

}  // namespace

// ---- forward ---------------------------------------------------------------------------

at::Tensor mixed_node_cpu(at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
                          c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::optional<at::Tensor>& norm) {
  const auto bn_rank = check_mixed_node_args(xs_in, outputs_in, weights, kinds, sources, norm);
  const auto xs = contiguous_all(xs_in);
  const auto ys = with_even_planes(outputs_in);
  const at::Tensor& x0 = xs[0];
  const int64_t C = x0.size(1), H = x0.size(2), W = x0.size(3), HW = H * W;
  const int64_t planes = x0.size(0) * C, T = static_cast<int64_t>(kinds.size());
  at::Tensor out = at::empty(x0.sizes(), x0.options());
  if (out.numel() == 0) return in_layout_of(out, xs_in[0]);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
    const at::Tensor wt = contiguous_as(weights, acc_type);
    const acc_t* w = wt.const_data_ptr<acc_t>();
    const at::Tensor nt = norm_as(norm, acc_type);
    const NormView<acc_t> nv = norm_view<acc_t>(nt, C);
    const auto xp = const_pointers<scalar_t>(xs);
    const auto yp = output_tensors<scalar_t>(ys);
    const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
    scalar_t* op = out.mutable_data_ptr<scalar_t>();

    at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HW), tmp(HW), rows(HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t off = p * HW, n = p / C, c = p % C;
        acc_t constant = 0;  // kOnes terms and the BN shifts, added once per element
        std::fill(acc.begin(), acc.end(), acc_t(0));
        // The weight of term t, times the channel's 1/std for a BN term (whose shift goes to `constant`).
        const auto scale_of = [&](int64_t t) {
          if (bn_rank[t] < 0) return w[t];
          const acc_t scale = w[t] * nv.rstd(bn_rank[t], c);
          constant -= scale * nv.mean(bn_rank[t], c);
          return scale;
        };
        for (int64_t t = 0; t < T; ++t) {
          const int64_t kind = kinds[t], src = sources[t];
          switch (kind) {
            case kSkip: axpy(acc.data(), xp[src] + off, w[t], HW); break;
            case kTensor:
            case kTensorBN: {
              const acc_t scale = scale_of(t);
              const OutputTensor<scalar_t>& y = yp[src];
              if (y.strides.cell_stride == 1) {
                axpy(acc.data(), y.plane(n, c), scale, HW);
              } else {
                axpy(acc.data(), gather_plane(y, n, c, HW, tmp.data()), scale, HW);
              }
              break;
            }
            case kOnes: constant += w[t]; break;
            case kAvgPool:
            case kMaxPool:
            case kAvgPoolBN:
            case kMaxPoolBN: {
              pool_plane(is_avg_kind(kind), xp[src] + off, tmp.data(), rows.data(), cnt.data(), H, W);
              axpy(acc.data(), tmp.data(), scale_of(t), HW);
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

// ---- backward --------------------------------------------------------------------------

namespace {

// What the backward of every plane reads and writes. A plane p is (n, c) = (p / C, p % C).
template <typename scalar_t, typename acc_t>
struct BackwardPlanes {
  c10::IntArrayRef kinds, sources;
  const std::vector<int64_t>& bn_rank;
  int64_t C, H, W, HW, planes, T;
  const acc_t* w;
  NormView<acc_t> nv;
  std::vector<const scalar_t*> xp;       // per x
  std::vector<OutputTensor<scalar_t>> yp;  // per output
  std::vector<scalar_t*> gxp, gyp;      // per x, per output: its gradient, or nullptr
  const scalar_t* g;
  std::vector<acc_t> cnt;  // the avg pool's in-range window counts
  bool any_avg;
  // Per plane: <raw term t, g> in column t, sum(g) in column T (when weight or norm
  // gradients are needed).
  int64_t columns() const { return T + 1; }
};

// One thread's plane buffers.
template <typename acc_t>
struct PlaneScratch {
  std::vector<acc_t> g, adj, rows, scaled, pooled, gathered, gx;  // gx: one plane per x
  std::vector<int32_t> arg, rows_arg;
  PlaneScratch(int64_t HW, int64_t num_xs)
      : g(HW), adj(HW), rows(HW), scaled(HW), pooled(HW), gathered(HW), gx(num_xs * HW), arg(HW), rows_arg(HW) {}
};

// A kTensor or kTensorBN term of plane p = (n, c): grad of its output (s_t * g) and/or
// <output, g>.
template <typename scalar_t, typename acc_t>
void tensor_term_backward(const BackwardPlanes<scalar_t, acc_t>& a, int64_t t, int64_t off, int64_t n, int64_t c,
                          PlaneScratch<acc_t>& sc, acc_t* part) {
  const int64_t src = a.sources[t];
  scalar_t* dst = a.gyp[src] != nullptr ? a.gyp[src] + off : nullptr;
  const acc_t scale = a.bn_rank[t] >= 0 ? a.w[t] * a.nv.rstd(a.bn_rank[t], c) : a.w[t];
  const OutputTensor<scalar_t>& y = a.yp[src];
  if (part && y.strides.cell_stride == 1) {
    const scalar_t* plane = y.plane(n, c);
    part[t] = dst ? scale_and_dot_chunk(dst, plane, sc.g.data(), scale, a.HW) : dot_chunk(plane, sc.g.data(), a.HW);
    return;
  }
  if (dst) scale_chunk(dst, sc.g.data(), scale, a.HW);
  if (part) part[t] = dot_chunk(gather_plane(y, n, c, a.HW, sc.gathered.data()), sc.g.data(), a.HW);
}

// A term computed from x (skip or a pool) of plane p: s_t times its adjoint of g into the
// x's gradient plane, and/or <raw term, g> (for the avg pool <x, adjoint(g)>).
template <typename scalar_t, typename acc_t>
void x_term_backward(const BackwardPlanes<scalar_t, acc_t>& a, int64_t t, int64_t off, int64_t c,
                     PlaneScratch<acc_t>& sc, acc_t* part) {
  const int64_t kind = a.kinds[t], src = a.sources[t], HW = a.HW;
  const scalar_t* x = a.xp[src] + off;
  acc_t* gx = a.gxp[src] != nullptr ? sc.gx.data() + src * HW : nullptr;
  const acc_t scale = a.bn_rank[t] >= 0 ? a.w[t] * a.nv.rstd(a.bn_rank[t], c) : a.w[t];
  if (kind == kSkip) {
    if (part) part[t] = dot_chunk(x, sc.g.data(), HW);
    if (gx) axpy(gx, sc.g.data(), scale, HW);
  } else if (is_avg_kind(kind)) {
    if (part) part[t] = dot_chunk(x, sc.adj.data(), HW);
    if (gx) axpy(gx, sc.adj.data(), scale, HW);
  } else {  // max pools: the grad of each window goes to its first maximum
    max_pool_argmax_plane(x, sc.pooled.data(), sc.arg.data(), sc.rows.data(), sc.rows_arg.data(), a.H, a.W);
    if (part) part[t] = dot_chunk(sc.pooled.data(), sc.g.data(), HW);
    if (gx) {
      for (int64_t q = 0; q < HW; ++q) gx[sc.arg[q]] += scale * sc.g[q];
    }
  }
}

// Plane p: the gradients of every x and output, and its row of sums (`part`, or nullptr).
template <typename scalar_t, typename acc_t>
void plane_backward(const BackwardPlanes<scalar_t, acc_t>& a, int64_t p, PlaneScratch<acc_t>& sc, acc_t* part) {
  const int64_t off = p * a.HW, n = p / a.C, c = p % a.C, HW = a.HW;
  load_chunk(sc.g.data(), a.g + off, HW);
  if (a.any_avg) {  // avg-pool adjoint, shared by every avg term of this plane
    for (int64_t i = 0; i < HW; ++i) sc.scaled[i] = sc.g[i] / a.cnt[i];
    box_sum_plane(sc.scaled.data(), sc.adj.data(), sc.rows.data(), a.H, a.W);
  }
  std::fill(sc.gx.begin(), sc.gx.end(), acc_t(0));
  if (part) part[a.T] = sum_chunk<acc_t>(sc.g.data(), HW);
  for (int64_t t = 0; t < a.T; ++t) {
    const int64_t kind = a.kinds[t];
    if (kind == kNone || kind == kOnes) continue;  // no input gradient; kOnes' sum is column T
    if (is_output_kind(kind)) {
      tensor_term_backward(a, t, off, n, c, sc, part);
    } else {
      x_term_backward(a, t, off, c, sc, part);
    }
  }
  for (size_t s = 0; s < a.gxp.size(); ++s) {
    if (a.gxp[s] == nullptr) continue;
    const acc_t* src = sc.gx.data() + s * HW;
    scalar_t* dst = a.gxp[s] + off;
    for (int64_t i = 0; i < HW; ++i) dst[i] = static_cast<scalar_t>(src[i]);
  }
}

// Every plane, in parallel; returns the per-plane sums (planes x columns) when `need_sums`.
template <typename scalar_t, typename acc_t>
std::vector<acc_t> backward_planes(const BackwardPlanes<scalar_t, acc_t>& a, bool need_sums) {
  const int64_t P = a.columns();
  std::vector<acc_t> partials(need_sums ? a.planes * P : 0, acc_t(0));
  at::parallel_for(0, a.planes, plane_grain(a.HW), [&](int64_t begin, int64_t end) {
    PlaneScratch<acc_t> sc(a.HW, static_cast<int64_t>(a.gxp.size()));
    for (int64_t p = begin; p < end; ++p) plane_backward(a, p, sc, need_sums ? partials.data() + p * P : nullptr);
  });
  return partials;
}

// The weight gradients (one per term) and, for BN terms, the norm gradients ([B, 2, C]) from
// the per-plane sums, combined in plane order (deterministic), in double.
struct WeightAndNormGrads {
  std::vector<double> weights, norm;
};

template <typename scalar_t, typename acc_t>
WeightAndNormGrads reduce_plane_sums(const BackwardPlanes<scalar_t, acc_t>& a, const std::vector<acc_t>& partials,
                                     int64_t num_bn, bool norm_need_grad) {
  const int64_t P = a.columns(), T = a.T, C = a.C, N = a.planes / C;
  WeightAndNormGrads out{std::vector<double>(T, 0.0), std::vector<double>(norm_need_grad ? num_bn * 2 * C : 0, 0.0)};
  for (int64_t t = 0; t < T; ++t) {
    const int64_t kind = a.kinds[t], b = a.bn_rank[t];
    if (kind == kNone) continue;
    if (b < 0) {  // <term, g> over all planes (kOnes: sum(g))
      const int64_t col = kind == kOnes ? T : t;
      for (int64_t p = 0; p < a.planes; ++p) out.weights[t] += static_cast<double>(partials[p * P + col]);
      continue;
    }
    for (int64_t c = 0; c < C; ++c) {  // BN term: per channel, <pool (or output) - mean, g> and sum(g)
      double sgp = 0.0, sg = 0.0;
      for (int64_t n = 0; n < N; ++n) {
        sgp += static_cast<double>(partials[(n * C + c) * P + t]);
        sg += static_cast<double>(partials[(n * C + c) * P + T]);
      }
      const double mean = a.nv.mean(b, c), rstd = a.nv.rstd(b, c), centred = sgp - mean * sg;
      out.weights[t] += rstd * centred;
      if (norm_need_grad) {
        out.norm[(b * 2) * C + c] = -static_cast<double>(a.w[t]) * rstd * sg;
        out.norm[(b * 2 + 1) * C + c] = static_cast<double>(a.w[t]) * centred;
      }
    }
  }
  return out;
}

int64_t count_bn_terms(const std::vector<int64_t>& bn_rank) {
  return std::count_if(bn_rank.begin(), bn_rank.end(), [](int64_t r) { return r >= 0; });
}

}  // namespace

MixedNodeGrads mixed_node_backward_cpu(const at::Tensor& grad_out_in, at::TensorList xs_in, at::TensorList outputs_in,
                                       const at::Tensor& weights, c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                       const std::optional<at::Tensor>& norm, const c10::List<bool>& xs_need_grad,
                                       const c10::List<bool>& outputs_need_grad, bool weights_need_grad,
                                       bool norm_need_grad) {
  const auto bn_rank = check_mixed_node_backward_args(grad_out_in, xs_in, outputs_in, weights, kinds, sources, norm,
                                                      xs_need_grad, outputs_need_grad);
  const auto xs = contiguous_all(xs_in);
  const auto ys = with_even_planes(outputs_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor& x0 = xs[0];
  const int64_t T = static_cast<int64_t>(kinds.size()), B = count_bn_terms(bn_rank);
  TORCH_CHECK(x0.size(2) * x0.size(3) <= std::numeric_limits<int32_t>::max(),
              "mixed_node_backward: planes of 2^31 cells or more are not supported");
  norm_need_grad = norm_need_grad && B > 0;
  const auto like_x0 = [&](size_t) { return at::empty(x0.sizes(), x0.options()); };
  NeededGrads grad_xs = allocate_needed(xs_need_grad, like_x0);
  NeededGrads grad_ys = allocate_needed(outputs_need_grad, like_x0);
  at::Tensor grad_weights = zeros_if_needed(weights_need_grad, {T}, weights.options());
  at::Tensor grad_norm = norm_need_grad ? at::zeros(norm->sizes(), norm->options()) : weights.new_empty({0});

  if (x0.numel() > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
      const at::Tensor wt = contiguous_as(weights, acc_type), nt = norm_as(norm, acc_type);
      const int64_t C = x0.size(1), H = x0.size(2), W = x0.size(3);
      bool any_avg = false;
      for (int64_t kind : kinds) any_avg = any_avg || is_avg_kind(kind);
      const BackwardPlanes<scalar_t, acc_t> a{
          kinds, sources, bn_rank, C, H, W, H * W, x0.size(0) * C, T, wt.const_data_ptr<acc_t>(),
          norm_view<acc_t>(nt, C), const_pointers<scalar_t>(xs), output_tensors<scalar_t>(ys),
          grad_pointers<scalar_t>(grad_xs), grad_pointers<scalar_t>(grad_ys), grad_out.const_data_ptr<scalar_t>(),
          window_counts<acc_t>(H, W), any_avg};
      const bool need_sums = weights_need_grad || norm_need_grad;
      const std::vector<acc_t> partials = backward_planes(a, need_sums);
      if (need_sums) {
        const WeightAndNormGrads sums = reduce_plane_sums(a, partials, B, norm_need_grad);
        if (weights_need_grad) grad_weights = tensor_from(sums.weights, {T}, weights.scalar_type());
        if (norm_need_grad) grad_norm = tensor_from(sums.norm, {B, 2, C}, norm->scalar_type());
      }
    });
  }
  restore_layouts(grad_xs, xs_in);
  restore_layouts(grad_ys, outputs_in);
  return {grad_xs.grads, grad_ys.grads, grad_weights, grad_norm};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("mixed_node", &mixed_node_cpu);
  m.impl("mixed_node_backward", &mixed_node_backward_cpu);
}

}  // namespace gaea_ext
