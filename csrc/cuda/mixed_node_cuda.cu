// CUDA kernels of gaea_ext::mixed_node and gaea_ext::mixed_node_backward.
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
#include "../kernels/pool_windows.cuh"

namespace gaea_ext {
namespace {

using namespace gaea_kernels::pool_windows;

constexpr int kThreads = 256;
constexpr int kMaxT = static_cast<int>(kMaxMixedTerms);
constexpr int kMaxS = static_cast<int>(kMaxMixedSources);
// Fixed grid cap of the backward: its partial sums depend only on the tensor size.
constexpr int64_t kBwdMaxBlocks = 1024;
// Weight-gradient dot products per thread in one backward block: a fully unrolled register
// array (a runtime-indexed one lives in local memory), kDotRowBytes of registers. NB201 nodes
// need at most 12, DARTS nodes 25 (two rows of float blocks).
template <typename acc_t>
constexpr int kDotChunk = static_cast<int>(kDotRowBytes / sizeof(acc_t));

template <typename scalar_t>
struct NodeArgs {
  const scalar_t* xs[kMaxS];
  const scalar_t* ys[kMaxT];  // per term: the output of a kTensor / kTensorBN term
  // per term: its output's cell (n, c, hw) is at ys[t] + n * y_n[t] + c * y_c[t] + hw * y_cell[t]
  long long y_n[kMaxT], y_c[kMaxT], y_cell[kMaxT];
  int kinds[kMaxT];
  int src[kMaxT];
  int bn[kMaxT];  // per term: its rank among the BN terms, or -1
  int T;
};

template <typename scalar_t>
struct GradArgs {
  scalar_t* gx[kMaxS];  // nullptr: no gradient for that x
  scalar_t* gy[kMaxT];  // per term: grad of its output, or nullptr
};

// Term index of each BN term (for the per-channel finish of their gradients).
struct BnTerms {
  int term[kMaxT];
  int B;
};

// Term index of each term whose weight gradient the backward kernel reduces: not kNone (0)
// and not a BN term (reduced per channel instead).
struct DotTerms {
  int term[kMaxT];
  int D;
};

// Raw value of term t at element i (plane offset `off` of plane (n, ch), position (h, w)): a
// BN term's pool or output before its normalisation.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t term_value(const NodeArgs<scalar_t>& a, int t, int64_t i, int64_t off, int n, int ch,
                                            int h, int w, int H, int W) {
  switch (a.kinds[t]) {
    case kSkip: return static_cast<acc_t>(a.xs[a.src[t]][i]);
    case kTensor:
    case kTensorBN:
      return static_cast<acc_t>(a.ys[t][n * a.y_n[t] + ch * a.y_c[t] + (i - off) * a.y_cell[t]]);
    case kOnes: return acc_t(1);
    case kAvgPool:
    case kAvgPoolBN: return avg3<scalar_t, acc_t>(a.xs[a.src[t]] + off, h, w, H, W);
    case kMaxPool:
    case kMaxPoolBN: {
      int index;
      return max3<scalar_t, acc_t>(a.xs[a.src[t]] + off, h, w, H, W, &index);
    }
    default: return acc_t(0);
  }
}

// norm of BN rank b at channel c: [B, 2, C] -> mean at (b, 0, c), 1/std at (b, 1, c).
template <typename acc_t>
__device__ __forceinline__ acc_t norm_mean(const acc_t* norm, int b, int c, int C) {
  return norm[(2 * int64_t{b}) * C + c];
}
template <typename acc_t>
__device__ __forceinline__ acc_t norm_rstd(const acc_t* norm, int b, int c, int C) {
  return norm[(2 * int64_t{b} + 1) * C + c];
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) mixed_node_kernel(NodeArgs<scalar_t> a, const acc_t* __restrict w,
                                                              const acc_t* __restrict norm, scalar_t* __restrict out,
                                                              int64_t numel, int C, int H, int W) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t plane = i / HW, off = plane * HW;
    const int n = static_cast<int>(plane / C), ch = static_cast<int>(plane - static_cast<int64_t>(n) * C);
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    acc_t s = 0;
    for (int t = 0; t < a.T; ++t) {
      if (a.kinds[t] == kNone) continue;
      const acc_t v = term_value<scalar_t, acc_t>(a, t, i, off, n, ch, h, c, H, W);
      const int b = a.bn[t];
      s += b < 0 ? w[t] * v : w[t] * norm_rstd(norm, b, ch, C) * (v - norm_mean(norm, b, ch, C));
    }
    out[i] = static_cast<scalar_t>(s);
  }
}

// grad_x of every source and grad of every tensor term's output, at every element.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) input_grads_kernel(NodeArgs<scalar_t> a, GradArgs<scalar_t> ga,
                                                               const acc_t* __restrict w, const acc_t* __restrict norm,
                                                               const scalar_t* __restrict g, int num_xs,
                                                               int64_t numel, int C, int H, int W) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t plane = i / HW, off = plane * HW;
    const int ch = static_cast<int>(plane % C);
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    const acc_t gi = static_cast<acc_t>(g[i]);
    for (int s = 0; s < num_xs; ++s) {
      if (ga.gx[s] == nullptr) continue;
      acc_t v = 0;
      for (int t = 0; t < a.T; ++t) {
        const int kind = a.kinds[t];
        if (a.src[t] != s || kind == kNone || is_output_kind(kind) || kind == kOnes) continue;
        const acc_t adj = kind == kSkip ? gi : pool_adjoint<scalar_t, acc_t>(g + off, a.xs[s] + off, is_avg_kind(kind), h, c, H, W);
        const acc_t scale = a.bn[t] < 0 ? w[t] : w[t] * norm_rstd(norm, a.bn[t], ch, C);
        v += scale * adj;
      }
      ga.gx[s][i] = static_cast<scalar_t>(v);
    }
    for (int t = 0; t < a.T; ++t) {
      if (!is_output_kind(a.kinds[t]) || ga.gy[t] == nullptr) continue;
      const acc_t scale = a.bn[t] < 0 ? w[t] : w[t] * norm_rstd(norm, a.bn[t], ch, C);
      ga.gy[t][i] = static_cast<scalar_t>(scale * gi);
    }
  }
}

// partials[blockIdx.x, d] = this block's share of <term dt.term[d], g>: each row of blocks
// (blockIdx.y) takes the kDotChunk dot terms from d0 = blockIdx.y * kDotChunk, reduced in a
// fixed tree: deterministic.
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) weight_dots_kernel(NodeArgs<scalar_t> a, DotTerms dt,
                                                               const scalar_t* __restrict g,
                                                               acc_t* __restrict partials, int64_t numel, int C,
                                                               int H, int W) {
  __shared__ acc_t red[kThreads];
  constexpr int kChunk = kDotChunk<acc_t>;
  const int d0 = static_cast<int>(blockIdx.y) * kChunk;
  const int nd = min(kChunk, dt.D - d0);  // uniform over the block
  acc_t dots[kChunk];
#pragma unroll
  for (int j = 0; j < kChunk; ++j) dots[j] = 0;
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int plane = static_cast<int>(i / HW), n = plane / C, ch = plane - n * C;
    const int64_t off = static_cast<int64_t>(plane) * HW;
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    const acc_t gi = static_cast<acc_t>(g[i]);
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
      if (j < nd) dots[j] += term_value<scalar_t, acc_t>(a, dt.term[d0 + j], i, off, n, ch, h, c, H, W) * gi;
  }
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    if (j < nd) {
      const acc_t total = block_sum<kThreads>(dots[j], red);
      if (threadIdx.x == 0) partials[blockIdx.x * static_cast<int64_t>(dt.D) + d0 + j] = total;
    }
  }
}

// grad_w[dt.term[d]] = sum over blocks of partials[., d], in block order (deterministic).
template <typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict partials, int64_t blocks, DotTerms dt,
                                    acc_t* __restrict grad_w) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= dt.D) return;
  double s = 0;  // in double, as the CPU kernel combines its partial sums
  for (int64_t b = 0; b < blocks; ++b) s += static_cast<double>(partials[b * dt.D + d]);
  grad_w[dt.term[d]] = static_cast<acc_t>(s);
}

// One block per (n, c) plane and chunk of columns: sums[plane, b] = <raw pool of BN term b, g>
// over the plane and sums[plane, B] = sum(g) over the plane. Row blockIdx.y of the grid takes
// the kDotChunk columns from blockIdx.y * kDotChunk in one pass over the plane, their sums in
// registers; each column is reduced in a fixed tree (deterministic).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) bn_plane_sums_kernel(NodeArgs<scalar_t> a, BnTerms bt,
                                                                 const scalar_t* __restrict g,
                                                                 acc_t* __restrict sums, int C, int H, int W) {
  __shared__ acc_t red[kThreads];
  constexpr int kChunk = kDotChunk<acc_t>;
  const int j0 = static_cast<int>(blockIdx.y) * kChunk, nj = min(kChunk, bt.B + 1 - j0);  // uniform
  const int64_t HW = static_cast<int64_t>(H) * W, off = blockIdx.x * HW;
  const int n = static_cast<int>(blockIdx.x) / C, ch = static_cast<int>(blockIdx.x) - n * C;
  acc_t s[kChunk];
#pragma unroll
  for (int j = 0; j < kChunk; ++j) s[j] = 0;
  for (int64_t hw = threadIdx.x; hw < HW; hw += kThreads) {
    const acc_t gi = static_cast<acc_t>(g[off + hw]);
    const int h = static_cast<int>(hw / W), c = static_cast<int>(hw - h * W);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j >= nj) continue;
      const int b = j0 + j;
      s[j] += b == bt.B ? gi : term_value<scalar_t, acc_t>(a, bt.term[b], off + hw, off, n, ch, h, c, H, W) * gi;
    }
  }
  const int64_t row = static_cast<int64_t>(blockIdx.x) * (bt.B + 1) + j0;
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    if (j < nj) {
      const acc_t total = block_sum<kThreads>(s[j], red);
      if (threadIdx.x == 0) sums[row + j] = total;
    }
  }
}

// One thread per (BN term b, channel c): combine the channel's planes in order, then
//   grad_norm[b, 0, c] = -w * rstd * Sg,  grad_norm[b, 1, c] = w * (Sgp - mean * Sg),
//   per_channel[b, c] = rstd * (Sgp - mean * Sg)   (grad_weights[t] sums it over c).
template <typename acc_t>
__global__ void bn_channel_kernel(BnTerms bt, const acc_t* __restrict sums, const acc_t* __restrict w,
                                  const acc_t* __restrict norm, int N, int C, acc_t* __restrict per_channel,
                                  acc_t* __restrict grad_norm) {
  const int64_t total = static_cast<int64_t>(bt.B) * C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(i / C), c = static_cast<int>(i - static_cast<int64_t>(b) * C);
    const int t = bt.term[b];
    double sgp = 0, sg = 0;
    for (int n = 0; n < N; ++n) {
      const int64_t row = (static_cast<int64_t>(n) * C + c) * (bt.B + 1);
      sgp += static_cast<double>(sums[row + b]);
      sg += static_cast<double>(sums[row + bt.B]);
    }
    const acc_t mean = norm_mean(norm, b, c, C), rstd = norm_rstd(norm, b, c, C);
    const acc_t centred = static_cast<acc_t>(sgp) - mean * static_cast<acc_t>(sg);
    per_channel[i] = rstd * centred;
    if (grad_norm != nullptr) {
      grad_norm[(2 * int64_t{b}) * C + c] = -w[t] * rstd * static_cast<acc_t>(sg);
      grad_norm[(2 * int64_t{b} + 1) * C + c] = w[t] * centred;
    }
  }
}

// One block per BN term: grad_w[term] = sum_c per_channel[b, c] in a fixed tree (deterministic).
template <typename acc_t>
__global__ void __launch_bounds__(kThreads) bn_weight_kernel(BnTerms bt, const acc_t* __restrict per_channel, int C,
                                                             acc_t* __restrict grad_w) {
  __shared__ double red[kThreads];
  const int b = blockIdx.x;
  double s = 0;
  for (int c = threadIdx.x; c < C; c += kThreads) s += static_cast<double>(per_channel[static_cast<int64_t>(b) * C + c]);
  const double total = block_sum<kThreads>(s, red);
  if (threadIdx.x == 0) grad_w[bt.term[b]] = static_cast<acc_t>(total);
}

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
    mixed_node_kernel<scalar_t, acc_t><<<grid_for(numel, int64_t{1} << 20), kThreads, 0, stream>>>(
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
        input_grads_kernel<scalar_t, acc_t><<<grid_for(numel, int64_t{1} << 20), kThreads, 0, stream>>>(
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
        bn_channel_kernel<acc_t><<<grid_for(static_cast<int64_t>(bt.B) * C, int64_t{1} << 20), kThreads, 0, stream>>>(
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
