// CUDA kernels of gaea_ext::mixed_node and gaea_ext::mixed_node_backward.
//
// One thread per output element (grid-stride over contiguous NCHW). The pools are
// recomputed from x in registers (the 3x3 window comes from L1/L2), so no pooled tensor is
// ever written. The backward gathers instead of scattering: element p of grad_x sums, over
// the windows q that contain p, grad_out[q] / count(q) (avg) or grad_out[q] when p is q's
// first maximum (max, PyTorch's rule), so there are no atomics. The weight gradient is
// reduced per block in a fixed tree, then over blocks in block order by a second kernel,
// with a grid that depends only on the tensor size: the result is deterministic.
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

namespace gaea_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kMaxT = static_cast<int>(kMaxMixedTerms);
constexpr int kMaxS = static_cast<int>(kMaxMixedSources);
// Fixed grid cap of the backward: its partial sums depend only on the tensor size.
constexpr int64_t kBwdMaxBlocks = 1024;

template <typename scalar_t>
struct NodeArgs {
  const scalar_t* xs[kMaxS];
  const scalar_t* ys[kMaxT];  // per term: the output of a kTensor term
  int kinds[kMaxT];
  int src[kMaxT];
  int T;
};

template <typename scalar_t>
struct GradArgs {
  scalar_t* gx[kMaxS];  // nullptr: no gradient for that x
  scalar_t* gy[kMaxT];  // per term: grad of its output, or nullptr
};

template <typename acc_t>
__device__ __forceinline__ bool is_nan(acc_t v) {
  return v != v;
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t avg3(const scalar_t* plane, int h, int w, int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  acc_t s = 0;
  for (int ih = h0; ih <= h1; ++ih)
    for (int iw = w0; iw <= w1; ++iw) s += static_cast<acc_t>(plane[ih * W + iw]);
  return s / static_cast<acc_t>((h1 - h0 + 1) * (w1 - w0 + 1));
}

// Value and flat index of the first maximum of the window at (h, w) (PyTorch's scan order).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t max3(const scalar_t* plane, int h, int w, int H, int W, int* index) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  int best = h0 * W + w0;
  acc_t m = static_cast<acc_t>(plane[best]);
  for (int ih = h0; ih <= h1; ++ih) {
    for (int iw = w0; iw <= w1; ++iw) {
      const acc_t v = static_cast<acc_t>(plane[ih * W + iw]);
      if (v > m || is_nan(v)) {
        m = v;
        best = ih * W + iw;
      }
    }
  }
  *index = best;
  return m;
}

// Value of term t at element i (plane offset `off`, position (h, w)).
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t term_value(const NodeArgs<scalar_t>& a, int t, int64_t i, int64_t off, int h, int w,
                                            int H, int W) {
  switch (a.kinds[t]) {
    case kSkip: return static_cast<acc_t>(a.xs[a.src[t]][i]);
    case kTensor: return static_cast<acc_t>(a.ys[t][i]);
    case kAvgPool: return avg3<scalar_t, acc_t>(a.xs[a.src[t]] + off, h, w, H, W);
    case kMaxPool: {
      int index;
      return max3<scalar_t, acc_t>(a.xs[a.src[t]] + off, h, w, H, W, &index);
    }
    default: return acc_t(0);
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mixed_node_kernel(NodeArgs<scalar_t> a, const acc_t* __restrict w,
                                                              scalar_t* __restrict out, int64_t numel, int H, int W) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t off = (i / HW) * HW;
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    acc_t s = 0;
    for (int t = 0; t < a.T; ++t) {
      if (a.kinds[t] != kNone) s += w[t] * term_value<scalar_t, acc_t>(a, t, i, off, h, c, H, W);
    }
    out[i] = static_cast<scalar_t>(s);
  }
}

// grad_x of source s at (h, w) from its avg terms' adjoint and max terms' routing.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pool_adjoint(const scalar_t* __restrict g, const scalar_t* x, int kind, int h, int w,
                                              int H, int W) {
  const int h0 = max(h - 1, 0), h1 = min(h + 1, H - 1), w0 = max(w - 1, 0), w1 = min(w + 1, W - 1);
  const int p = h * W + w;
  acc_t s = 0;
  for (int qh = h0; qh <= h1; ++qh) {
    for (int qw = w0; qw <= w1; ++qw) {
      const acc_t gq = static_cast<acc_t>(g[qh * W + qw]);
      if (kind == kAvgPool) {
        const int cnt = (min(qh + 1, H - 1) - max(qh - 1, 0) + 1) * (min(qw + 1, W - 1) - max(qw - 1, 0) + 1);
        s += gq / static_cast<acc_t>(cnt);
      } else {
        int index;
        max3<scalar_t, acc_t>(x, qh, qw, H, W, &index);
        if (index == p) s += gq;
      }
    }
  }
  return s;
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mixed_node_backward_kernel(
    NodeArgs<scalar_t> a, GradArgs<scalar_t> ga, const acc_t* __restrict w, const scalar_t* __restrict g,
    int num_xs, bool need_w, acc_t* __restrict partials, int64_t numel, int H, int W) {
  __shared__ acc_t red[kThreads];
  acc_t dots[kMaxT];
  for (int t = 0; t < a.T; ++t) dots[t] = 0;
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t off = (i / HW) * HW;
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    const acc_t gi = static_cast<acc_t>(g[i]);
    for (int s = 0; s < num_xs; ++s) {
      if (ga.gx[s] == nullptr) continue;
      acc_t v = 0;
      for (int t = 0; t < a.T; ++t) {
        if (a.src[t] != s || a.kinds[t] == kNone || a.kinds[t] == kTensor) continue;
        const acc_t adj = a.kinds[t] == kSkip
                              ? gi
                              : pool_adjoint<scalar_t, acc_t>(g + off, a.xs[s] + off, a.kinds[t], h, c, H, W);
        v += w[t] * adj;
      }
      ga.gx[s][i] = static_cast<scalar_t>(v);
    }
    for (int t = 0; t < a.T; ++t) {
      if (a.kinds[t] == kTensor && ga.gy[t] != nullptr) ga.gy[t][i] = static_cast<scalar_t>(w[t] * gi);
      if (need_w && a.kinds[t] != kNone) dots[t] += term_value<scalar_t, acc_t>(a, t, i, off, h, c, H, W) * gi;
    }
  }
  if (!need_w) return;
  for (int t = 0; t < a.T; ++t) {  // fixed-shape tree: deterministic
    red[threadIdx.x] = dots[t];
    __syncthreads();
    for (int stride = kThreads / 2; stride > 0; stride >>= 1) {
      if (threadIdx.x < stride) red[threadIdx.x] += red[threadIdx.x + stride];
      __syncthreads();
    }
    if (threadIdx.x == 0) partials[blockIdx.x * static_cast<int64_t>(a.T) + t] = red[0];
    __syncthreads();
  }
}

template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict partials, int64_t blocks, int T, acc_t* __restrict out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x;
  if (t >= T) return;
  acc_t s = 0;
  for (int64_t b = 0; b < blocks; ++b) s += partials[b * T + t];  // block order: deterministic
  out[t] = s;
}

void check_cuda_limits(at::TensorList xs, c10::IntArrayRef kinds) {
  TORCH_CHECK(static_cast<int64_t>(kinds.size()) <= kMaxMixedTerms, "mixed_node (CUDA): at most ", kMaxMixedTerms,
              " terms per call, got ", kinds.size());
  TORCH_CHECK(static_cast<int64_t>(xs.size()) <= kMaxMixedSources, "mixed_node (CUDA): at most ", kMaxMixedSources,
              " xs per call, got ", xs.size());
  TORCH_CHECK(xs[0].size(2) * xs[0].size(3) < (int64_t{1} << 31), "mixed_node (CUDA): H * W must be < 2^31");
}

template <typename scalar_t>
NodeArgs<scalar_t> node_args(const std::vector<at::Tensor>& xs, const std::vector<at::Tensor>& ys,
                             c10::IntArrayRef kinds, c10::IntArrayRef sources) {
  NodeArgs<scalar_t> a{};
  for (size_t s = 0; s < xs.size(); ++s) a.xs[s] = xs[s].const_data_ptr<scalar_t>();
  a.T = static_cast<int>(kinds.size());
  for (int t = 0; t < a.T; ++t) {
    a.kinds[t] = static_cast<int>(kinds[t]);
    a.src[t] = static_cast<int>(sources[t]);
    a.ys[t] = kinds[t] == kTensor ? ys[sources[t]].const_data_ptr<scalar_t>() : nullptr;
  }
  return a;
}

unsigned int grid_for(int64_t numel, int64_t cap) {
  return static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((numel + kThreads - 1) / kThreads, cap)));
}

}  // namespace

at::Tensor mixed_node_cuda(at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
                           c10::IntArrayRef kinds, c10::IntArrayRef sources) {
  check_mixed_node_args(xs_in, outputs_in, weights, kinds, sources);
  check_cuda_limits(xs_in, kinds);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const auto xs = contiguous_all(xs_in);
  const auto ys = contiguous_all(outputs_in);
  const at::Tensor& x0 = xs[0];
  at::Tensor out = at::empty(x0.sizes(), x0.options());
  const int64_t numel = x0.numel();
  if (numel == 0) return in_layout_of(out, xs_in[0]);
  const int H = static_cast<int>(x0.size(2)), W = static_cast<int>(x0.size(3));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wt = weights.to(at::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto a = node_args<scalar_t>(xs, ys, kinds, sources);
    mixed_node_kernel<scalar_t, acc_t><<<grid_for(numel, int64_t{1} << 20), kThreads, 0, stream>>>(
        a, wt.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), numel, H, W);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in_layout_of(out, xs_in[0]);
}

std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor> mixed_node_backward_cuda(
    const at::Tensor& grad_out_in, at::TensorList xs_in, at::TensorList outputs_in, const at::Tensor& weights,
    c10::IntArrayRef kinds, c10::IntArrayRef sources, const c10::List<bool>& xs_need_grad,
    const c10::List<bool>& outputs_need_grad, bool weights_need_grad) {
  check_mixed_node_backward_args(grad_out_in, xs_in, outputs_in, weights, kinds, sources, xs_need_grad,
                                 outputs_need_grad);
  check_cuda_limits(xs_in, kinds);
  const c10::cuda::CUDAGuard guard(xs_in[0].device());
  const auto xs = contiguous_all(xs_in);
  const auto ys = contiguous_all(outputs_in);
  const at::Tensor grad_out = grad_out_in.contiguous();
  const at::Tensor& x0 = xs[0];
  const int64_t numel = x0.numel(), T = static_cast<int64_t>(kinds.size());
  const int64_t S = static_cast<int64_t>(xs.size()), O = static_cast<int64_t>(ys.size());
  std::vector<at::Tensor> grad_xs, grad_ys;
  std::vector<at::Tensor> gx_by_source(S), gy_by_output(O);
  for (int64_t s = 0; s < S; ++s)
    if (xs_need_grad[s]) grad_xs.push_back(gx_by_source[s] = at::empty(x0.sizes(), x0.options()));
  for (int64_t s = 0; s < O; ++s)
    if (outputs_need_grad[s]) grad_ys.push_back(gy_by_output[s] = at::empty(x0.sizes(), x0.options()));
  at::Tensor grad_weights = weights_need_grad ? at::zeros({T}, weights.options()) : at::empty({0}, weights.options());

  if (numel > 0) {
    const int H = static_cast<int>(x0.size(2)), W = static_cast<int>(x0.size(3));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x0.scalar_type(), "mixed_node_backward_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const at::Tensor wt = weights.to(at::CppTypeToScalarType<acc_t>::value).contiguous();
      const auto a = node_args<scalar_t>(xs, ys, kinds, sources);
      GradArgs<scalar_t> ga{};
      for (int64_t s = 0; s < S; ++s)
        ga.gx[s] = gx_by_source[s].defined() ? gx_by_source[s].mutable_data_ptr<scalar_t>() : nullptr;
      for (int64_t t = 0; t < T; ++t)
        ga.gy[t] = kinds[t] == kTensor && gy_by_output[sources[t]].defined()
                       ? gy_by_output[sources[t]].mutable_data_ptr<scalar_t>()
                       : nullptr;
      const unsigned int blocks = grid_for(numel, kBwdMaxBlocks);
      const auto acc_opts = x0.options().dtype(at::CppTypeToScalarType<acc_t>::value);
      at::Tensor partials = at::empty({weights_need_grad ? static_cast<int64_t>(blocks) * T : 1}, acc_opts);
      mixed_node_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
          a, ga, wt.const_data_ptr<acc_t>(), grad_out.const_data_ptr<scalar_t>(), static_cast<int>(S),
          weights_need_grad, partials.mutable_data_ptr<acc_t>(), numel, H, W);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
      if (weights_need_grad) {
        at::Tensor gw = at::empty({T}, acc_opts);
        sum_partials_kernel<acc_t><<<1, kMaxT, 0, stream>>>(partials.const_data_ptr<acc_t>(), blocks,
                                                           static_cast<int>(T), gw.mutable_data_ptr<acc_t>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
        grad_weights = gw.to(weights.scalar_type());
      }
    });
  }
  size_t k = 0;
  for (int64_t s = 0; s < S; ++s) {
    if (xs_need_grad[s]) {
      grad_xs[k] = in_layout_of(grad_xs[k], xs_in[s]);
      ++k;
    }
  }
  k = 0;
  for (int64_t s = 0; s < O; ++s) {
    if (outputs_need_grad[s]) {
      grad_ys[k] = in_layout_of(grad_ys[k], outputs_in[s]);
      ++k;
    }
  }
  return {grad_xs, grad_ys, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("mixed_node", &mixed_node_cuda);
  m.impl("mixed_node_backward", &mixed_node_backward_cuda);
}

}  // namespace gaea_ext
