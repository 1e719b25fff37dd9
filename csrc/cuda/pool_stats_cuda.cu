// CUDA kernels of gaea_ext::pool_stats and gaea_ext::pool_stats_backward: the host launch
// logic (the device code is in csrc/kernels/pool_stats.cuh; csrc/cpu/pool_stats_cpu.cpp has
// the maths).
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
#include "../kernels/pool_stats.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::pool_stats::kMaxGrid;
using gaea_kernels::pool_stats::kThreads;
using gaea_kernels::pool_stats::merge_planes_kernel;
using gaea_kernels::pool_stats::plane_moments_kernel;
using gaea_kernels::pool_stats::pool_stats_backward_kernel;
using gaea_kernels::pool_stats::XPlanes;

GAEA_KERNELS_CHECK_TERM_KINDS();

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
        static_cast<unsigned int>(std::max<int64_t>(1, std::min<int64_t>((numel + kThreads - 1) / kThreads, kMaxGrid)));
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
