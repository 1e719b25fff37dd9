// Device code of gaea_ext::pool_stats and gaea_ext::pool_stats_backward (host launch logic:
// csrc/cuda/pool_stats_cuda.cu; NVRTC launchers: gaea_ext/cupy_backend.py).
//
// Forward: one block per (n, c) plane recomputes the pool in registers twice (mean, then the
// centred sum of squares) and writes the plane's moments; one thread per channel merges its
// planes in order (Chan et al., in double). Fixed trees and orders: deterministic.
// Backward: one thread per element of grad_x gathers, over the windows that contain it,
// the pool adjoint of dL/dpool = g_mean / M + g_var * 2 (pool - mean) / M (no atomics).
// kTensorBN's "pool" is the identity, read in place with x's own plane strides.
#pragma once

#include "pool_windows.cuh"
#include "term_kinds.cuh"

namespace gaea_kernels {
namespace pool_stats {

using namespace pool_windows;

constexpr int kThreads = 256;
// Grid cap of the backward (a grid-stride loop).
constexpr long long kMaxGrid = 1 << 20;

// Where x's planes lie: plane (n, c) at x + n * n_stride + c * c_stride, its cells
// cell_stride apart (1 for the pools).
struct XPlanes {
  long long n_stride, c_stride, cell_stride;
  int C;
};

template <typename T>
__device__ __forceinline__ T* plane_at(T* x, const XPlanes& xp, long long plane) {
  const long long n = plane / xp.C;
  return x + n * xp.n_stride + (plane - n * xp.C) * xp.c_stride;
}

template <typename T, typename Acc>
__device__ __forceinline__ Acc pool_at(int kind, const T* plane, long long cell_stride, int h, int w, int H,
                                         int W) {
  if (kind == kTensorBN) return static_cast<Acc>(plane[(static_cast<long long>(h) * W + w) * cell_stride]);
  if (is_avg_kind(kind)) return avg3<T, Acc>(plane, h, w, H, W);
  int index;
  return max3<T, Acc>(plane, h, w, H, W, &index);
}

// The pool values in Acc (as the CPU kernel), their sums in double (as the CPU kernel: a
// float sum of a large plane with a mean far from 0 loses the variance's digits).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) plane_moments_kernel(const T* __restrict x, XPlanes xp, int kind,
                                                                 int H, int W, double* __restrict plane_mean,
                                                                 double* __restrict plane_m2) {
  __shared__ double red[kThreads];
  const long long HW = static_cast<long long>(H) * W;
  const T* plane = plane_at(x, xp, blockIdx.x);
  double s = 0;
  for (long long i = threadIdx.x; i < HW; i += kThreads) {
    const int h = static_cast<int>(i / W), w = static_cast<int>(i - static_cast<long long>(h) * W);
    s += static_cast<double>(pool_at<T, Acc>(kind, plane, xp.cell_stride, h, w, H, W));
  }
  const double mean = block_sum<kThreads>(s, red) / static_cast<double>(HW);
  double m2 = 0;
  for (long long i = threadIdx.x; i < HW; i += kThreads) {
    const int h = static_cast<int>(i / W), w = static_cast<int>(i - static_cast<long long>(h) * W);
    const double d = static_cast<double>(pool_at<T, Acc>(kind, plane, xp.cell_stride, h, w, H, W)) - mean;
    m2 += d * d;
  }
  const double total_m2 = block_sum<kThreads>(m2, red);
  if (threadIdx.x == 0) {
    plane_mean[blockIdx.x] = mean;
    plane_m2[blockIdx.x] = total_m2;
  }
}

template <typename Acc>
__global__ void merge_planes_kernel(const double* __restrict plane_mean, const double* __restrict plane_m2, int N,
                                    int C, int HW, Acc* __restrict stats) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double count = 0.0, mean = 0.0, m2 = 0.0;
  for (int n = 0; n < N; ++n) {
    const long long p = static_cast<long long>(n) * C + c;
    const double nb = static_cast<double>(HW), total = count + nb, delta = plane_mean[p] - mean;
    mean += delta * nb / total;
    m2 += plane_m2[p] + delta * delta * count * nb / total;
    count = total;
  }
  stats[c] = static_cast<Acc>(mean);
  stats[C + c] = static_cast<Acc>(m2 / count);
}

template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads) pool_stats_backward_kernel(
    const T* __restrict x, XPlanes xp, const Acc* __restrict grad_stats, const Acc* __restrict stats,
    int kind, Acc inv_m, long long numel, int C, int H, int W, T* __restrict grad_x, XPlanes gp) {
  const long long HW = static_cast<long long>(H) * W;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    const long long plane_index = i / HW, off = plane_index * HW;
    const int c = static_cast<int>(plane_index % C);
    const int p = static_cast<int>(i - off), h = p / W, w = p - h * W;
    const T* plane = plane_at(x, xp, plane_index);
    const Acc g_mean = grad_stats[c] * inv_m, g_var = 2 * grad_stats[C + c] * inv_m, mean = stats[c];
    Acc s = 0;
    if (kind == kTensorBN) {  // the identity: dL/dx = dL/dpool
      s = g_mean + g_var * (static_cast<Acc>(plane[p * xp.cell_stride]) - mean);
    } else if (is_avg_kind(kind)) {
      Acc v[9];
      window_averages<T, Acc>(plane, h, w, H, W, v);
#pragma unroll
      for (int k = 0; k < 9; ++k) {
        if (!window_in_plane(k, h, w, H, W)) continue;
        const int cnt = window_count(h + k / 3 - 1, w + k % 3 - 1, H, W);
        s += (g_mean + g_var * (v[k] - mean)) / static_cast<Acc>(cnt);
      }
    } else {  // a window routing to (h, w) has x(h, w) as its max
      const unsigned routed = max_windows_routing_to<T, Acc>(plane, h, w, H, W);
      const Acc v = static_cast<Acc>(plane[p]);
#pragma unroll
      for (int k = 0; k < 9; ++k)
        if (routed >> k & 1u) s += g_mean + g_var * (v - mean);
    }
    plane_at(grad_x, gp, plane_index)[p * gp.cell_stride] = static_cast<T>(s);
  }
}

}  // namespace pool_stats
}  // namespace gaea_kernels
