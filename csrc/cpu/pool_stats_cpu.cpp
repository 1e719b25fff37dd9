// CPU kernels of gaea_ext::pool_stats and gaea_ext::pool_stats_backward: the per-channel
// batch statistics of a 3x3 stride-1 pool (the BatchNorm that follows the DARTS supernet's
// pools) without materialising the pool.
//
// Forward: per (n, c) plane the pool goes into a plane buffer, whose mean and centred sum of
// squares are taken in two passes; the planes of a channel are then combined in plane order
// with Chan et al.'s formula, in double (deterministic, no catastrophic cancellation).
// Backward: per plane, the pool is recomputed, dL/dpool = g_mean / M + g_var * 2 (p - mean) / M
// is formed in the buffer and sent through the pool's adjoint into grad_x.
// kTensorBN's "pool" is the identity (the statistics of x itself, for a conv output's
// BatchNorm): x is then read in place with its own strides (PlaneStrides: contiguous,
// channels_last, channel slices), a plane with non-adjacent cells gathered into the buffer.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

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

// x as the kernels read it: the identity reads any tensor with even planes in place; the
// pools need contiguous planes.
at::Tensor readable(const at::Tensor& x, int64_t kind) {
  return kind == kTensorBN && has_even_planes(x) ? x : x.contiguous();
}

// The HW cells of a plane `step` apart, into `out`.
template <typename scalar_t, typename acc_t>
void gather_cells(const scalar_t* plane, int64_t step, int64_t HW, acc_t* out) {
  for (int64_t i = 0; i < HW; ++i) out[i] = static_cast<acc_t>(plane[i * step]);
}

}  // namespace

at::Tensor pool_stats_cpu(const at::Tensor& x_in, int64_t kind) {
  check_pool_stats_args(x_in, kind);
  const at::Tensor x = readable(x_in, kind);
  const PlaneStrides ps = plane_strides(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, planes = N * C;
  at::Tensor stats = at::empty({2, C}, x.options().dtype(accumulation_type(x.scalar_type())));
  if (x.numel() == 0) return stats.fill_(std::numeric_limits<double>::quiet_NaN());  // as batch_norm: mean of nothing
  const bool avg = is_avg_kind(kind);
  std::vector<double> plane_mean(planes), plane_m2(planes);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_stats_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
    at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> pool(HW), rows(HW);
      const auto moments = [&](int64_t p, const auto* values) {
        const double m = sum_chunk<double>(values, HW) / static_cast<double>(HW);
        plane_mean[p] = m;
        plane_m2[p] = squared_deviation_chunk<double>(values, m, HW);
      };
      for (int64_t p = begin; p < end; ++p) {
        const scalar_t* plane = xp + p / C * ps.n_stride + p % C * ps.c_stride;
        if (kind != kTensorBN) {
          pool_plane(avg, plane, pool.data(), rows.data(), cnt.data(), H, W);
          moments(p, pool.data());
        } else if (ps.cell_stride == 1) {
          moments(p, plane);
        } else {
          gather_cells(plane, ps.cell_stride, HW, pool.data());
          moments(p, pool.data());
        }
      }
    });
  });
  at::Tensor out = at::empty({2, C}, at::kDouble);
  double* o = out.mutable_data_ptr<double>();
  for (int64_t c = 0; c < C; ++c) {
    double count = 0.0, mean = 0.0, m2 = 0.0;
    for (int64_t n = 0; n < N; ++n) {  // Chan et al.: merge plane (n, c) into the running moments
      const int64_t p = n * C + c;
      const double nb = static_cast<double>(HW), total = count + nb, delta = plane_mean[p] - mean;
      mean += delta * nb / total;
      m2 += plane_m2[p] + delta * delta * count * nb / total;
      count = total;
    }
    o[c] = mean;
    o[C + c] = m2 / count;
  }
  stats.copy_(out);
  return stats;
}

at::Tensor pool_stats_backward_cpu(const at::Tensor& grad_stats_in, const at::Tensor& x_in, const at::Tensor& stats_in,
                                   int64_t kind) {
  check_pool_stats_backward_args(grad_stats_in, x_in, stats_in, kind);
  const at::Tensor x = readable(x_in, kind);
  const PlaneStrides ps = plane_strides(x);
  const int64_t N = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), HW = H * W, planes = N * C;
  // The identity writes grad_x in its final layout; the pools write contiguous planes.
  at::Tensor grad_x = kind == kTensorBN ? empty_in_layout_of(x_in) : at::empty(x.sizes(), x.options());
  const PlaneStrides grad_planes = plane_strides(grad_x);
  if (x.numel() == 0) return in_layout_of(grad_x, x_in);
  const bool avg = is_avg_kind(kind);
  TORCH_CHECK(HW <= std::numeric_limits<int32_t>::max(), "pool_stats_backward: planes of 2^31 cells or more are not supported");
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "pool_stats_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const auto acc_type = at::CppTypeToScalarType<acc_t>::value;
    const at::Tensor gs = contiguous_as(grad_stats_in, acc_type), st = contiguous_as(stats_in, acc_type);
    const acc_t* gsp = gs.const_data_ptr<acc_t>();
    const acc_t* stp = st.const_data_ptr<acc_t>();
    const acc_t inv_m = acc_t(1) / static_cast<acc_t>(N * HW);
    const scalar_t* xp = x.const_data_ptr<scalar_t>();
    scalar_t* gxp = grad_x.mutable_data_ptr<scalar_t>();
    const std::vector<acc_t> cnt = window_counts<acc_t>(H, W);
    at::parallel_for(0, planes, plane_grain(HW), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> pool(HW), rows(HW), gp(HW), gx(HW);
      std::vector<int32_t> arg(avg ? 0 : HW), rows_arg(avg ? 0 : HW);
      for (int64_t p = begin; p < end; ++p) {
        const int64_t c = p % C, off = p * HW;
        const scalar_t* xplane = xp + p / C * ps.n_stride + c * ps.c_stride;
        const acc_t g_mean = gsp[c] * inv_m, g_var = 2 * gsp[C + c] * inv_m, mean = stp[c];
        if (kind == kTensorBN) {  // the identity: dL/dx = dL/dpool
          scalar_t* gplane = gxp + p / C * grad_planes.n_stride + c * grad_planes.c_stride;
          for (int64_t i = 0; i < HW; ++i) {
            const acc_t v = static_cast<acc_t>(xplane[i * ps.cell_stride]);
            gplane[i * grad_planes.cell_stride] = static_cast<scalar_t>(g_mean + g_var * (v - mean));
          }
          continue;
        }
        if (avg) {
          pool_plane(avg, xplane, pool.data(), rows.data(), cnt.data(), H, W);
        } else {
          max_pool_argmax_plane(xplane, pool.data(), arg.data(), rows.data(), rows_arg.data(), H, W);
        }
        for (int64_t i = 0; i < HW; ++i) gp[i] = g_mean + g_var * (pool[i] - mean);
        if (avg) {
          for (int64_t i = 0; i < HW; ++i) gp[i] /= cnt[i];
          box_sum_plane(gp.data(), gx.data(), rows.data(), H, W);
        } else {
          std::fill(gx.begin(), gx.end(), acc_t(0));
          for (int64_t i = 0; i < HW; ++i) gx[arg[i]] += gp[i];  // each window's grad to its first maximum
        }
        for (int64_t i = 0; i < HW; ++i) gxp[off + i] = static_cast<scalar_t>(gx[i]);
      }
    });
  });
  return in_layout_of(grad_x, x_in);
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("pool_stats", &pool_stats_cpu);
  m.impl("pool_stats_backward", &pool_stats_backward_cpu);
}

}  // namespace gaea_ext
