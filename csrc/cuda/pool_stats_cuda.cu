// CUDA kernels of gaea_ext::pool_stats and gaea_ext::pool_stats_backward (see
// csrc/cpu/pool_stats_cpu.cpp for the maths).
//
// Forward: one block per (n, c) plane recomputes the pool in registers twice (mean, then the
// centred sum of squares) and writes the plane's moments; one thread per channel merges its
// planes in order (Chan et al., in double). Fixed trees and orders: deterministic.
// Backward: one thread per element of grad_x gathers, over the windows that contain it,
// the pool adjoint of dL/dpool = g_mean / M + g_var * 2 (pool - mean) / M (no atomics).
// kTensorBN's "pool" is the identity (the statistics of x itself), read in place with x's own
// strides (PlaneStrides: contiguous, channels_last, channel slices); the pools read
// contiguous planes.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <limits>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "pool_windows.cuh"

namespace gaea_ext {
namespace {

using namespace pool_windows;

constexpr int kThreads = 256;

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

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t pool_at(int kind, const scalar_t* plane, long long cell_stride, int h, int w, int H,
                                         int W) {
  if (kind == kTensorBN) return static_cast<acc_t>(plane[(static_cast<long long>(h) * W + w) * cell_stride]);
  if (is_avg_kind(kind)) return avg3<scalar_t, acc_t>(plane, h, w, H, W);
  int index;
  return max3<scalar_t, acc_t>(plane, h, w, H, W, &index);
}

// The pool values in acc_t (as the CPU kernel), their sums in double (as the CPU kernel: a
// float sum of a large plane with a mean far from 0 loses the variance's digits).
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) plane_moments_kernel(const scalar_t* __restrict x, XPlanes xp, int kind,
                                                                 int H, int W, double* __restrict plane_mean,
                                                                 double* __restrict plane_m2) {
  __shared__ double red[kThreads];
  const int64_t HW = static_cast<int64_t>(H) * W;
  const scalar_t* plane = plane_at(x, xp, blockIdx.x);
  double s = 0;
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const int h = static_cast<int>(i / W), w = static_cast<int>(i - static_cast<int64_t>(h) * W);
    s += static_cast<double>(pool_at<scalar_t, acc_t>(kind, plane, xp.cell_stride, h, w, H, W));
  }
  const double mean = block_sum<kThreads>(s, red) / static_cast<double>(HW);
  double m2 = 0;
  for (int64_t i = threadIdx.x; i < HW; i += kThreads) {
    const int h = static_cast<int>(i / W), w = static_cast<int>(i - static_cast<int64_t>(h) * W);
    const double d = static_cast<double>(pool_at<scalar_t, acc_t>(kind, plane, xp.cell_stride, h, w, H, W)) - mean;
    m2 += d * d;
  }
  const double total_m2 = block_sum<kThreads>(m2, red);
  if (threadIdx.x == 0) {
    plane_mean[blockIdx.x] = mean;
    plane_m2[blockIdx.x] = total_m2;
  }
}

template <typename acc_t>
__global__ void merge_planes_kernel(const double* __restrict plane_mean, const double* __restrict plane_m2, int N,
                                    int C, int HW, acc_t* __restrict stats) {
  const int c = blockIdx.x * blockDim.x + threadIdx.x;
  if (c >= C) return;
  double count = 0.0, mean = 0.0, m2 = 0.0;
  for (int n = 0; n < N; ++n) {
    const int64_t p = static_cast<int64_t>(n) * C + c;
    const double nb = static_cast<double>(HW), total = count + nb, delta = plane_mean[p] - mean;
    mean += delta * nb / total;
    m2 += plane_m2[p] + delta * delta * count * nb / total;
    count = total;
  }
  stats[c] = static_cast<acc_t>(mean);
  stats[C + c] = static_cast<acc_t>(m2 / count);
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kThreads) pool_stats_backward_kernel(
    const scalar_t* __restrict x, XPlanes xp, const acc_t* __restrict grad_stats, const acc_t* __restrict stats,
    int kind, acc_t inv_m, int64_t numel, int C, int H, int W, scalar_t* __restrict grad_x, XPlanes gp) {
  const int64_t HW = static_cast<int64_t>(H) * W;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < numel;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t plane_index = i / HW, off = plane_index * HW;
    const int c = static_cast<int>(plane_index % C);
    const int p = static_cast<int>(i - off), h = p / W, w = p - h * W;
    const scalar_t* plane = plane_at(x, xp, plane_index);
    const acc_t g_mean = grad_stats[c] * inv_m, g_var = 2 * grad_stats[C + c] * inv_m, mean = stats[c];
    acc_t s = 0;
    if (kind == kTensorBN) {  // the identity: dL/dx = dL/dpool
      s = g_mean + g_var * (static_cast<acc_t>(plane[p * xp.cell_stride]) - mean);
    } else if (is_avg_kind(kind)) {
      acc_t v[9];
      window_averages<scalar_t, acc_t>(plane, h, w, H, W, v);
#pragma unroll
      for (int k = 0; k < 9; ++k) {
        if (!window_in_plane(k, h, w, H, W)) continue;
        const int cnt = window_count(h + k / 3 - 1, w + k % 3 - 1, H, W);
        s += (g_mean + g_var * (v[k] - mean)) / static_cast<acc_t>(cnt);
      }
    } else {  // a window routing to (h, w) has x(h, w) as its max
      const unsigned routed = max_windows_routing_to<scalar_t, acc_t>(plane, h, w, H, W);
      const acc_t v = static_cast<acc_t>(plane[p]);
#pragma unroll
      for (int k = 0; k < 9; ++k)
        if (routed >> k & 1u) s += g_mean + g_var * (v - mean);
    }
    plane_at(grad_x, gp, plane_index)[p * gp.cell_stride] = static_cast<scalar_t>(s);
  }
}

// x as the kernels read it: the identity reads any tensor with even planes in place; the
// pools need contiguous planes.
at::Tensor readable(const at::Tensor& x, int64_t kind) {
  return kind == kTensorBN && has_even_planes(x) ? x : x.contiguous();
}

XPlanes x_planes(const at::Tensor& x) {
  const PlaneStrides s = plane_strides(x);
  return {s.n_stride, s.c_stride, s.cell_stride, static_cast<int>(x.size(1))};
}

void check_cuda_sizes(const at::Tensor& x) {
  TORCH_CHECK(x.size(2) * x.size(3) < (int64_t{1} << 31) && x.size(0) < (int64_t{1} << 31) &&
                  x.size(1) < (int64_t{1} << 31) && x.size(0) * x.size(1) < (int64_t{1} << 31),
              "pool_stats (CUDA): N * C and H * W must be < 2^31");
}

}  // namespace

at::Tensor pool_stats_cuda(const at::Tensor& x_in, int64_t kind) {
  check_pool_stats_args(x_in, kind);
  check_cuda_sizes(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = readable(x_in, kind);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), planes = N * C;
  at::Tensor stats = at::empty({2, C}, x.options().dtype(accumulation_type(x.scalar_type())));
  if (x.numel() == 0) return stats.fill_(std::numeric_limits<double>::quiet_NaN());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  at::Tensor moments = at::empty({2, planes}, x.options().dtype(at::kDouble));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_stats_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    double* mp = moments.mutable_data_ptr<double>();
    plane_moments_kernel<scalar_t, acc_t><<<static_cast<unsigned int>(planes), kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x_planes(x), static_cast<int>(kind), static_cast<int>(H), static_cast<int>(W), mp,
        mp + planes);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    merge_planes_kernel<acc_t><<<static_cast<unsigned int>((C + kThreads - 1) / kThreads), kThreads, 0, stream>>>(
        mp, mp + planes, static_cast<int>(N), static_cast<int>(C), static_cast<int>(H * W),
        stats.mutable_data_ptr<acc_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return stats;
}

at::Tensor pool_stats_backward_cuda(const at::Tensor& grad_stats_in, const at::Tensor& x_in, const at::Tensor& stats_in,
                                    int64_t kind) {
  check_pool_stats_backward_args(grad_stats_in, x_in, stats_in, kind);
  check_cuda_sizes(x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = readable(x_in, kind);
  // The identity writes grad_x in its final layout; the pools write contiguous planes.
  at::Tensor grad_x = kind == kTensorBN ? empty_in_layout_of(x_in) : at::empty(x.sizes(), x.options());
  const int64_t numel = x.numel();
  if (numel == 0) return in_layout_of(grad_x, x_in);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_stats_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
    const at::Tensor gs = contiguous_as(grad_stats_in, acc_type), st = contiguous_as(stats_in, acc_type);
    const unsigned int blocks =
        static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((numel + kThreads - 1) / kThreads, 1 << 20)));
    pool_stats_backward_kernel<scalar_t, acc_t><<<blocks, kThreads, 0, stream>>>(
        x.const_data_ptr<scalar_t>(), x_planes(x), gs.const_data_ptr<acc_t>(), st.const_data_ptr<acc_t>(),
        static_cast<int>(kind),
        acc_t(1) / static_cast<acc_t>(N * H * W), numel, static_cast<int>(C), static_cast<int>(H),
        static_cast<int>(W), grad_x.mutable_data_ptr<scalar_t>(), x_planes(grad_x));
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return in_layout_of(grad_x, x_in);
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) {
  m.impl("pool_stats", &pool_stats_cuda);
  m.impl("pool_stats_backward", &pool_stats_backward_cuda);
}

}  // namespace gaea_ext
