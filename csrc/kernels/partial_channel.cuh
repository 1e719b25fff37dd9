// Device code of gaea_ext::partial_channel_node and its backward (host launch logic:
// csrc/cuda/partial_channel_cuda.cu; NVRTC launchers: gaea_ext/cupy_backend.py; the layout
// maths: csrc/cpu/partial_channel_cpu.cpp).
//
// Forward: one thread per output element reads the mixed element or the weighted bypass
// (the 2x2 max pool recomputed from the state). Backward: one thread per state element
// gathers its gradient (each element belongs to at most one 2x2 window: no atomics), one
// thread per mixed element copies its gradient, and the edge-weight gradient is reduced per
// block in a fixed tree and over blocks in order: deterministic.
#pragma once

#include "limits.cuh"
#include "pool_windows.cuh"

namespace gaea_kernels {
namespace partial_channel {

using namespace pool_windows;

constexpr int kThreads = 256;
constexpr int kMaxStates = kMaxPartialChannelStates;
// Grid cap of the edge-weight reduction: its partial sums depend only on the tensor size.
constexpr long long kMaxBlocks = 1024;
// Grid cap of the elementwise kernels (grid-stride loops).
constexpr long long kMaxGrid = 1 << 20;

template <typename T>
struct States {
  const T* x[kMaxStates];
  int H[kMaxStates], W[kMaxStates], stride[kMaxStates];
  int E;
};

// First maximum of the 2x2 stride-2 window (h, w) of a plane (PyTorch's order, NaN wins).
template <typename T, typename Acc>
__device__ __forceinline__ int argmax2x2(const T* x, int h, int w, int W) {
  int best = 2 * h * W + 2 * w;
  Acc m = static_cast<Acc>(x[best]);
  for (int dh = 0; dh < 2; ++dh) {
    for (int dw = 0; dw < 2; ++dw) {
      const int i = (2 * h + dh) * W + 2 * w + dw;
      const Acc v = static_cast<Acc>(x[i]);
      if (v > m || v != v) {
        m = v;
        best = i;
      }
    }
  }
  return best;
}

// Value of state e's tail at (n, state channel sc, h, w) of the Ho x Wo grid.
template <typename T, typename Acc>
__device__ __forceinline__ Acc tail_value(const States<T>& s, int e, long long n, int C, int sc, int h, int w,
                                            int Wo) {
  const int H = s.H[e], W = s.W[e];
  const T* plane = s.x[e] + (n * C + sc) * static_cast<long long>(H) * W;
  if (s.stride[e] == 1) return static_cast<Acc>(plane[h * W + w]);
  return static_cast<Acc>(plane[argmax2x2<T, Acc>(plane, h, w, W)]);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) pc_forward_kernel(const T* __restrict mixed, States<T> s,
                                                              const Acc* __restrict w, T* __restrict out,
                                                              long long numel, int C, int K, int q, int Ho, int Wo) {
  const long long HWo = static_cast<long long>(Ho) * Wo;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HWo, n = plane / C;
    const int o = static_cast<int>(plane % C), g = o % K, j = o / K;
    const int hw = static_cast<int>(i - plane * HWo), h = hw / Wo, c = hw - h * Wo;
    if (g == 0) {
      out[i] = mixed[(n * q + j) * HWo + hw];
      continue;
    }
    const int sc = q + (g - 1) * q + j;
    Acc acc = 0;
    for (int e = 0; e < s.E; ++e) acc += w[e] * tail_value<T, Acc>(s, e, n, C, sc, h, c, Wo);
    out[i] = static_cast<T>(acc);
  }
}

template <typename T>
__global__ void __launch_bounds__(kThreads) pc_grad_mixed_kernel(const T* __restrict g,
                                                                 T* __restrict grad_mixed, long long numel,
                                                                 int C, int K, int q, long long HWo) {
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HWo, n = plane / q;
    const int j = static_cast<int>(plane % q);
    grad_mixed[i] = g[(n * C + static_cast<long long>(j) * K) * HWo + (i - plane * HWo)];
  }
}

// grad of state e: 0 on the first q channels; weight * (bypass grad) on the tail, routed to
// the first maximum of its 2x2 window for stride 2 (rows/columns past the last window: 0).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) pc_grad_state_kernel(const T* __restrict g,
                                                                 const T* __restrict x,
                                                                 const Acc* __restrict w, int e, int stride, T* __restrict grad_x,
                                                                 long long numel, int C, int K, int q, int H, int W,
                                                                 int Ho, int Wo) {
  const long long HW = static_cast<long long>(H) * W, HWo = static_cast<long long>(Ho) * Wo;
  const Acc weight = w[e];
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HW, n = plane / C;
    const int sc = static_cast<int>(plane % C);
    Acc v = 0;
    if (sc >= q) {
      const int b = sc - q, o = (b % q) * K + b / q + 1;  // cat channel q + b -> output channel
      const int p = static_cast<int>(i - plane * HW), h = p / W, c = p - h * W;
      const T* gplane = g + (n * C + o) * HWo;
      if (stride == 1) {
        v = weight * static_cast<Acc>(gplane[p]);
      } else if (h / 2 < Ho && c / 2 < Wo && argmax2x2<T, Acc>(x + plane * HW, h / 2, c / 2, W) == p) {
        v = weight * static_cast<Acc>(gplane[(h / 2) * Wo + c / 2]);
      }
    }
    grad_x[i] = static_cast<T>(v);
  }
}

// partials[block * E + e] = this block's share of <tail_e, bypass grad>, over the bypass
// elements (n, b, h, w) of the output.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads, 4) pc_grad_weights_kernel(const T* __restrict g, States<T> s,
                                                                   Acc* __restrict partials, long long numel, int C,
                                                                   int K, int q, int Ho, int Wo) {
  __shared__ Acc red[kThreads];
  Acc dots[kMaxStates];  // fully unrolled below, so in registers, not local memory
#pragma unroll
  for (int e = 0; e < kMaxStates; ++e) dots[e] = 0;
  const long long HWo = static_cast<long long>(Ho) * Wo, bypass = C - q;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane = i / HWo, n = plane / bypass;
    const int b = static_cast<int>(plane % bypass), o = (b % q) * K + b / q + 1;
    const int hw = static_cast<int>(i - plane * HWo), h = hw / Wo, c = hw - h * Wo;
    const Acc gi = static_cast<Acc>(g[(n * C + o) * HWo + hw]);
#pragma unroll
    for (int e = 0; e < kMaxStates; ++e)
      if (e < s.E) dots[e] += tail_value<T, Acc>(s, e, n, C, q + b, h, c, Wo) * gi;
  }
#pragma unroll
  for (int e = 0; e < kMaxStates; ++e) {  // s.E is uniform over the block
    if (e < s.E) {
      const Acc total = block_sum<kThreads>(dots[e], red);
      if (threadIdx.x == 0) partials[blockIdx.x * static_cast<long long>(s.E) + e] = total;
    }
  }
}

template <typename Acc>
__global__ void pc_sum_partials_kernel(const Acc* __restrict partials, long long blocks, int E,
                                       Acc* __restrict out) {
  const int e = threadIdx.x;
  if (e >= E) return;
  double s = 0;  // in double, as the CPU kernel combines its partial sums
  for (long long b = 0; b < blocks; ++b) s += static_cast<double>(partials[b * E + e]);  // block order
  out[e] = static_cast<Acc>(s);
}

}  // namespace partial_channel
}  // namespace gaea_kernels
