// CPU kernels of gaea_ext::partial_channel_node and its backward: the PC-DARTS node output
// (mixed part, weighted bypass, optional 2x2 max pool, channel shuffle) in one pass.
//
// Work is split by output plane (n, o): o = j * K + g takes mixed channel j (g == 0) or
// bypass channel (g - 1) * q + j, i.e. channel q + (g - 1) * q + j of every state. The
// backward walks the same planes, so every plane of every grad is written exactly once
// (the first q channels of grad_states get zeros) and the weight gradient is a per-plane
// partial summed in plane order: deterministic.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "vector_loops.h"

namespace gaea_ext {
namespace {

// The 2x2 stride-2 window at (h, w) of a plane of width W: flat index of its first maximum
// (PyTorch's scan order, NaN wins).
template <typename scalar_t, typename acc_t>
inline int64_t argmax2x2(const scalar_t* x, int64_t h, int64_t w, int64_t W) {
  int64_t best = 2 * h * W + 2 * w;
  acc_t m = static_cast<acc_t>(x[best]);
  for (int64_t dh = 0; dh < 2; ++dh) {
    for (int64_t dw = 0; dw < 2; ++dw) {
      const int64_t i = (2 * h + dh) * W + 2 * w + dw;
      const acc_t v = static_cast<acc_t>(x[i]);
      if (v > m || std::isnan(v)) {
        m = v;
        best = i;
      }
    }
  }
  return best;
}

struct Geometry {
  int64_t N, C, K, q, Ho, Wo;
  // the state channel that output channel o reads (-1: the mixed part, channel o / K)
  int64_t state_channel(int64_t o) const {
    const int64_t g = o % K, j = o / K;
    return g == 0 ? -1 : q + (g - 1) * q + j;
  }
};

Geometry geometry(const at::Tensor& like, at::TensorList states, int64_t groups) {
  const int64_t C = states[0].size(1);
  return {like.size(0), C, groups, C / groups, like.size(2), like.size(3)};
}

int64_t plane_grain(int64_t hw) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(hw, 1)); }

}  // namespace

at::Tensor partial_channel_node_cpu(const at::Tensor& mixed_in, at::TensorList states_in, const at::Tensor& weights,
                                    c10::IntArrayRef strides, int64_t groups) {
  check_partial_channel_args(mixed_in, false, states_in, weights, strides, groups);
  const at::Tensor mixed = mixed_in.contiguous();
  const auto states = contiguous_all(states_in);
  const Geometry geo = geometry(mixed, states, groups);
  const int64_t E = static_cast<int64_t>(states.size()), HWo = geo.Ho * geo.Wo;
  at::Tensor out = at::empty({geo.N, geo.C, geo.Ho, geo.Wo}, mixed.options());
  if (out.numel() == 0) return in_layout_of(out, mixed_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, mixed.scalar_type(), "partial_channel_node_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wt = contiguous_as(weights, at::CppTypeToScalarType<acc_t>::value);
    const acc_t* w = wt.const_data_ptr<acc_t>();
    const scalar_t* mp = mixed.const_data_ptr<scalar_t>();
    std::vector<const scalar_t*> sp;
    for (const auto& s : states) sp.push_back(s.const_data_ptr<scalar_t>());
    scalar_t* op = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, geo.N * geo.C, plane_grain(HWo), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> acc(HWo);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t n = p / geo.C, o = p % geo.C, sc = geo.state_channel(o);
        scalar_t* dst = op + p * HWo;
        if (sc < 0) {
          std::copy(mp + (n * geo.q + o / geo.K) * HWo, mp + (n * geo.q + o / geo.K + 1) * HWo, dst);
          continue;
        }
        std::fill(acc.begin(), acc.end(), acc_t(0));
        for (int64_t e = 0; e < E; ++e) {
          const int64_t H = states[e].size(2), W = states[e].size(3);
          const scalar_t* src = sp[e] + (n * geo.C + sc) * H * W;
          if (strides[e] == 1) {
            for (int64_t i = 0; i < HWo; ++i) acc[i] += w[e] * static_cast<acc_t>(src[i]);
          } else {
            for (int64_t h = 0; h < geo.Ho; ++h)
              for (int64_t c = 0; c < geo.Wo; ++c)
                acc[h * geo.Wo + c] += w[e] * static_cast<acc_t>(src[argmax2x2<scalar_t, acc_t>(src, h, c, W)]);
          }
        }
        for (int64_t i = 0; i < HWo; ++i) dst[i] = static_cast<scalar_t>(acc[i]);
      }
    });
  });
  return in_layout_of(out, mixed_in);
}

PartialChannelGrads partial_channel_node_backward_cpu(const at::Tensor& grad_out_in, at::TensorList states_in,
                                                      const at::Tensor& weights, c10::IntArrayRef strides,
                                                      int64_t groups, bool mixed_need_grad,
                                                      const c10::List<bool>& states_need_grad,
                                                      bool weights_need_grad) {
  check_partial_channel_backward_args(grad_out_in, states_in, weights, strides, groups, states_need_grad);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const auto states = contiguous_all(states_in);
  const Geometry geo = geometry(grad_out, states, groups);
  const int64_t E = static_cast<int64_t>(states.size()), HWo = geo.Ho * geo.Wo, planes = geo.N * geo.C;
  at::Tensor grad_mixed = mixed_need_grad ? at::empty({geo.N, geo.q, geo.Ho, geo.Wo}, grad_out.options())
                                          : at::empty({0}, grad_out.options());
  NeededGrads grad_states = allocate_needed(states_need_grad, [&](size_t e) {
    return at::empty(states[e].sizes(), states[e].options());
  });
  const std::vector<int64_t>& slot = grad_states.slot;
  at::Tensor grad_weights = zeros_if_needed(weights_need_grad, {E}, weights.options());
  if (grad_out.numel() > 0 || !grad_states.grads.empty()) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_out.scalar_type(),
                                    "partial_channel_node_backward_cpu", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor wt = contiguous_as(weights, at::CppTypeToScalarType<acc_t>::value);
      const acc_t* w = wt.const_data_ptr<acc_t>();
      const scalar_t* gp = grad_out.const_data_ptr<scalar_t>();
      scalar_t* gmp = mixed_need_grad ? grad_mixed.mutable_data_ptr<scalar_t>() : nullptr;
      std::vector<const scalar_t*> sp;
      std::vector<scalar_t*> gsp;
      for (const auto& s : states) sp.push_back(s.const_data_ptr<scalar_t>());
      for (auto& t : grad_states.grads) gsp.push_back(t.mutable_data_ptr<scalar_t>());
      std::vector<acc_t> partials(weights_need_grad ? planes * E : 0, acc_t(0));
      at::parallel_for(0, planes, plane_grain(HWo), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> gbuf(HWo);
        for (int64_t p = begin; p < end; ++p) {
          const int64_t n = p / geo.C, o = p % geo.C, sc = geo.state_channel(o);
          const scalar_t* g = gp + p * HWo;
          if (sc < 0) {  // the mixed part; state channel o / K < q gets no gradient from here
            const int64_t j = o / geo.K;
            if (gmp) std::copy(g, g + HWo, gmp + (n * geo.q + j) * HWo);
            for (int64_t e = 0; e < E; ++e) {
              if (slot[e] < 0) continue;
              const int64_t HW = states[e].size(2) * states[e].size(3);
              scalar_t* dst = gsp[slot[e]] + (n * geo.C + j) * HW;
              std::fill(dst, dst + HW, scalar_t(0));
            }
            continue;
          }
          load_chunk(gbuf.data(), g, HWo);
          for (int64_t e = 0; e < E; ++e) {
            const int64_t H = states[e].size(2), W = states[e].size(3);
            const scalar_t* src = sp[e] + (n * geo.C + sc) * H * W;
            scalar_t* dst = slot[e] >= 0 ? gsp[slot[e]] + (n * geo.C + sc) * H * W : nullptr;
            acc_t d = 0;
            if (strides[e] == 1) {
              if (dst && weights_need_grad) d = scale_and_dot_chunk(dst, src, gbuf.data(), w[e], HWo);
              else if (weights_need_grad) d = dot_chunk(src, gbuf.data(), HWo);
              else if (dst) scale_chunk(dst, gbuf.data(), w[e], HWo);
            } else {
              if (dst) std::fill(dst, dst + H * W, scalar_t(0));
              for (int64_t h = 0; h < geo.Ho; ++h) {
                for (int64_t c = 0; c < geo.Wo; ++c) {
                  const int64_t a = argmax2x2<scalar_t, acc_t>(src, h, c, W);
                  const acc_t gi = gbuf[h * geo.Wo + c];
                  d += static_cast<acc_t>(src[a]) * gi;
                  if (dst) dst[a] = static_cast<scalar_t>(w[e] * gi);  // windows do not overlap
                }
              }
            }
            if (weights_need_grad) partials[p * E + e] = d;
          }
        }
      });
      if (weights_need_grad) {
        std::vector<double> total(E, 0.0);
        for (int64_t p = 0; p < planes; ++p)
          for (int64_t e = 0; e < E; ++e) total[e] += static_cast<double>(partials[p * E + e]);
        grad_weights = tensor_from(total, {E}, weights.scalar_type());
      }
    });
  }
  if (mixed_need_grad) grad_mixed = in_layout_of(grad_mixed, grad_out_in);
  restore_layouts(grad_states, states_in);
  return {grad_mixed, grad_states.grads, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("partial_channel_node", &partial_channel_node_cpu);
  m.impl("partial_channel_node_backward", &partial_channel_node_backward_cpu);
}

}  // namespace gaea_ext
