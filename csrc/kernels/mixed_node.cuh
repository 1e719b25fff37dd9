// Device code of gaea_ext::mixed_node and gaea_ext::mixed_node_backward (host launch logic:
// csrc/cuda/mixed_node_cuda.cu; NVRTC launchers: gaea_ext/cupy_backend.py).
//
// One thread per output element (grid-stride over contiguous NCHW); the pools are recomputed
// from x in registers. The backward gathers instead of scattering (no atomics); the weight
// gradient is reduced per block in a fixed tree, then over blocks in block order
// (deterministic). BN terms' gradients take per-plane sums, combined over n in order by one
// thread per (term, channel), then over channels by one block per term. kTensor / kTensorBN
// terms read their outputs in place with per-term plane strides (NodeArgs::y_n, y_c, y_cell).
#pragma once

#include "limits.cuh"
#include "pool_windows.cuh"
#include "term_kinds.cuh"

namespace gaea_kernels {
namespace mixed_node {

using namespace pool_windows;

constexpr int kThreads = 256;
constexpr int kMaxT = kMaxMixedTerms;
constexpr int kMaxS = kMaxMixedSources;
// Fixed grid cap of the backward: its partial sums depend only on the tensor size.
constexpr long long kBwdMaxBlocks = 1024;
// Grid cap of the elementwise kernels (grid-stride loops).
constexpr long long kMaxGrid = 1 << 20;
// Weight-gradient dot products per thread in one backward block: a fully unrolled register
// array (a runtime-indexed one lives in local memory), kDotRowBytes of registers. NB201 nodes
// need at most 12, DARTS nodes 25 (two rows of float blocks).
template <typename Acc>
constexpr int kDotChunk = static_cast<int>(kDotRowBytes / sizeof(Acc));

template <typename Element>  // not T: the member T counts the terms
struct NodeArgs {
  const Element* xs[kMaxS];
  const Element* ys[kMaxT];  // per term: the output of a kTensor / kTensorBN term
  // per term: its output's cell (n, c, hw) is at ys[t] + n * y_n[t] + c * y_c[t] + hw * y_cell[t]
  long long y_n[kMaxT], y_c[kMaxT], y_cell[kMaxT];
  int kinds[kMaxT];
  int src[kMaxT];
  int bn[kMaxT];  // per term: its rank among the BN terms, or -1
  int T;
};

template <typename T>
struct GradArgs {
  T* gx[kMaxS];  // nullptr: no gradient for that x
  T* gy[kMaxT];  // per term: grad of its output, or nullptr
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
template <typename T, typename Acc>
__device__ __forceinline__ Acc term_value(const NodeArgs<T>& a, int t, long long i, long long off, int n, int ch,
                                            int h, int w, int H, int W) {
  switch (a.kinds[t]) {
    case kSkip: return static_cast<Acc>(a.xs[a.src[t]][i]);
    case kTensor:
    case kTensorBN:
      return static_cast<Acc>(a.ys[t][n * a.y_n[t] + ch * a.y_c[t] + (i - off) * a.y_cell[t]]);
    case kOnes: return Acc(1);
    case kAvgPool:
    case kAvgPoolBN: return avg3<T, Acc>(a.xs[a.src[t]] + off, h, w, H, W);
    case kMaxPool:
    case kMaxPoolBN: {
      int index;
      return max3<T, Acc>(a.xs[a.src[t]] + off, h, w, H, W, &index);
    }
    default: return Acc(0);
  }
}

// norm of BN rank b at channel c: [B, 2, C] -> mean at (b, 0, c), 1/std at (b, 1, c).
template <typename Acc>
__device__ __forceinline__ Acc norm_mean(const Acc* norm, int b, int c, int C) {
  return norm[(2 * static_cast<long long>(b)) * C + c];
}
template <typename Acc>
__device__ __forceinline__ Acc norm_rstd(const Acc* norm, int b, int c, int C) {
  return norm[(2 * static_cast<long long>(b) + 1) * C + c];
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) mixed_node_kernel(NodeArgs<T> a, const Acc* __restrict w,
                                                              const Acc* __restrict norm, T* __restrict out,
                                                              long long numel, int C, int H, int W) {
  const long long HW = static_cast<long long>(H) * W;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HW, off = plane * HW;
    const int n = static_cast<int>(plane / C), ch = static_cast<int>(plane - static_cast<long long>(n) * C);
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    Acc s = 0;
    for (int t = 0; t < a.T; ++t) {
      if (a.kinds[t] == kNone) continue;
      const Acc v = term_value<T, Acc>(a, t, i, off, n, ch, h, c, H, W);
      const int b = a.bn[t];
      s += b < 0 ? w[t] * v : w[t] * norm_rstd(norm, b, ch, C) * (v - norm_mean(norm, b, ch, C));
    }
    out[i] = static_cast<T>(s);
  }
}

// grad_x of every source and grad of every tensor term's output, at every element.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) input_grads_kernel(NodeArgs<T> a, GradArgs<T> ga,
                                                               const Acc* __restrict w, const Acc* __restrict norm,
                                                               const T* __restrict g, int num_xs,
                                                               long long numel, int C, int H, int W) {
  const long long HW = static_cast<long long>(H) * W;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HW, off = plane * HW;
    const int ch = static_cast<int>(plane % C);
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    const Acc gi = static_cast<Acc>(g[i]);
    for (int s = 0; s < num_xs; ++s) {
      if (ga.gx[s] == nullptr) continue;
      Acc v = 0;
      for (int t = 0; t < a.T; ++t) {
        const int kind = a.kinds[t];
        if (a.src[t] != s || kind == kNone || is_output_kind(kind) || kind == kOnes) continue;
        const Acc adj = kind == kSkip ? gi : pool_adjoint<T, Acc>(g + off, a.xs[s] + off, is_avg_kind(kind), h, c, H, W);
        const Acc scale = a.bn[t] < 0 ? w[t] : w[t] * norm_rstd(norm, a.bn[t], ch, C);
        v += scale * adj;
      }
      ga.gx[s][i] = static_cast<T>(v);
    }
    for (int t = 0; t < a.T; ++t) {
      if (!is_output_kind(a.kinds[t]) || ga.gy[t] == nullptr) continue;
      const Acc scale = a.bn[t] < 0 ? w[t] : w[t] * norm_rstd(norm, a.bn[t], ch, C);
      ga.gy[t][i] = static_cast<T>(scale * gi);
    }
  }
}

// partials[blockIdx.x, d] = this block's share of <term dt.term[d], g>: each row of blocks
// (blockIdx.y) takes the kDotChunk dot terms from d0 = blockIdx.y * kDotChunk, reduced in a
// fixed tree: deterministic.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) weight_dots_kernel(NodeArgs<T> a, DotTerms dt,
                                                               const T* __restrict g,
                                                               Acc* __restrict partials, long long numel, int C,
                                                               int H, int W) {
  __shared__ Acc red[kThreads];
  constexpr int kChunk = kDotChunk<Acc>;
  const int d0 = static_cast<int>(blockIdx.y) * kChunk;
  const int nd = min(kChunk, dt.D - d0);  // uniform over the block
  Acc dots[kChunk];
#pragma unroll
  for (int j = 0; j < kChunk; ++j) dots[j] = 0;
  const long long HW = static_cast<long long>(H) * W;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int plane = static_cast<int>(i / HW), n = plane / C, ch = plane - n * C;
    const long long off = static_cast<long long>(plane) * HW;
    const int hw = static_cast<int>(i - off), h = hw / W, c = hw - h * W;
    const Acc gi = static_cast<Acc>(g[i]);
#pragma unroll
    for (int j = 0; j < kChunk; ++j)
      if (j < nd) dots[j] += term_value<T, Acc>(a, dt.term[d0 + j], i, off, n, ch, h, c, H, W) * gi;
  }
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    if (j < nd) {
      const Acc total = block_sum<kThreads>(dots[j], red);
      if (threadIdx.x == 0) partials[blockIdx.x * static_cast<long long>(dt.D) + d0 + j] = total;
    }
  }
}

// grad_w[dt.term[d]] = sum over blocks of partials[., d], in block order (deterministic).
template <typename Acc>
__global__ void sum_partials_kernel(const Acc* __restrict partials, long long blocks, DotTerms dt,
                                    Acc* __restrict grad_w) {
  const int d = blockIdx.x * blockDim.x + threadIdx.x;
  if (d >= dt.D) return;
  double s = 0;  // in double, as the CPU kernel combines its partial sums
  for (long long b = 0; b < blocks; ++b) s += static_cast<double>(partials[b * dt.D + d]);
  grad_w[dt.term[d]] = static_cast<Acc>(s);
}

// One block per (n, c) plane and chunk of columns: sums[plane, b] = <raw pool of BN term b, g>
// over the plane and sums[plane, B] = sum(g) over the plane. Row blockIdx.y of the grid takes
// the kDotChunk columns from blockIdx.y * kDotChunk in one pass over the plane, their sums in
// registers; each column is reduced in a fixed tree (deterministic).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) bn_plane_sums_kernel(NodeArgs<T> a, BnTerms bt,
                                                                 const T* __restrict g,
                                                                 Acc* __restrict sums, int C, int H, int W) {
  __shared__ Acc red[kThreads];
  constexpr int kChunk = kDotChunk<Acc>;
  const int j0 = static_cast<int>(blockIdx.y) * kChunk, nj = min(kChunk, bt.B + 1 - j0);  // uniform
  const long long HW = static_cast<long long>(H) * W, off = blockIdx.x * HW;
  const int n = static_cast<int>(blockIdx.x) / C, ch = static_cast<int>(blockIdx.x) - n * C;
  Acc s[kChunk];
#pragma unroll
  for (int j = 0; j < kChunk; ++j) s[j] = 0;
  for (long long hw = threadIdx.x; hw < HW; hw += kThreads) {
    const Acc gi = static_cast<Acc>(g[off + hw]);
    const int h = static_cast<int>(hw / W), c = static_cast<int>(hw - h * W);
#pragma unroll
    for (int j = 0; j < kChunk; ++j) {
      if (j >= nj) continue;
      const int b = j0 + j;
      s[j] += b == bt.B ? gi : term_value<T, Acc>(a, bt.term[b], off + hw, off, n, ch, h, c, H, W) * gi;
    }
  }
  const long long row = static_cast<long long>(blockIdx.x) * (bt.B + 1) + j0;
#pragma unroll
  for (int j = 0; j < kChunk; ++j) {
    if (j < nj) {
      const Acc total = block_sum<kThreads>(s[j], red);
      if (threadIdx.x == 0) sums[row + j] = total;
    }
  }
}

// One thread per (BN term b, channel c): combine the channel's planes in order, then
//   grad_norm[b, 0, c] = -w * rstd * Sg,  grad_norm[b, 1, c] = w * (Sgp - mean * Sg),
//   per_channel[b, c] = rstd * (Sgp - mean * Sg)   (grad_weights[t] sums it over c).
template <typename Acc>
__global__ void bn_channel_kernel(BnTerms bt, const Acc* __restrict sums, const Acc* __restrict w,
                                  const Acc* __restrict norm, int N, int C, Acc* __restrict per_channel,
                                  Acc* __restrict grad_norm) {
  const long long total = static_cast<long long>(bt.B) * C;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const int b = static_cast<int>(i / C), c = static_cast<int>(i - static_cast<long long>(b) * C);
    const int t = bt.term[b];
    double sgp = 0, sg = 0;
    for (int n = 0; n < N; ++n) {
      const long long row = (static_cast<long long>(n) * C + c) * (bt.B + 1);
      sgp += static_cast<double>(sums[row + b]);
      sg += static_cast<double>(sums[row + bt.B]);
    }
    const Acc mean = norm_mean(norm, b, c, C), rstd = norm_rstd(norm, b, c, C);
    const Acc centred = static_cast<Acc>(sgp) - mean * static_cast<Acc>(sg);
    per_channel[i] = rstd * centred;
    if (grad_norm != nullptr) {
      grad_norm[(2 * static_cast<long long>(b)) * C + c] = -w[t] * rstd * static_cast<Acc>(sg);
      grad_norm[(2 * static_cast<long long>(b) + 1) * C + c] = w[t] * centred;
    }
  }
}

// One block per BN term: grad_w[term] = sum_c per_channel[b, c] in a fixed tree (deterministic).
template <typename Acc>
__global__ void __launch_bounds__(kThreads) bn_weight_kernel(BnTerms bt, const Acc* __restrict per_channel, int C,
                                                             Acc* __restrict grad_w) {
  __shared__ double red[kThreads];
  const int b = blockIdx.x;
  double s = 0;
  for (int c = threadIdx.x; c < C; c += kThreads) s += static_cast<double>(per_channel[static_cast<long long>(b) * C + c]);
  const double total = block_sum<kThreads>(s, red);
  if (threadIdx.x == 0) grad_w[bt.term[b]] = static_cast<Acc>(total);
}

}  // namespace mixed_node
}  // namespace gaea_kernels
