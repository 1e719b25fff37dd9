// 3x3, stride 1, padding 1 pools of one (n, c) plane, shared by the CPU kernels of
// mixed_node and pool_stats: separable box sum / max into plane buffers, PyTorch's
// first-maximum rule for the max-pool gradient, and the in-range window counts of the
// average (count_include_pad=False). The plane passes are compiled for AVX2 and baseline
// x86-64 (GAEA_SIMD_CLONES), with internal linkage (see vector_loops.h for why).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

#include "simd_clones.h"

namespace gaea_ext {
namespace pool_planes {
namespace {

// Box sum of the three cells around r[w] that lie in 0..W-1 (the edge cells of a row).
template <typename in_t, typename acc_t>
inline acc_t row_sum_at(const in_t* r, int64_t w, int64_t W) {
  acc_t s = static_cast<acc_t>(r[w]);
  if (w > 0) s += static_cast<acc_t>(r[w - 1]);
  if (w + 1 < W) s += static_cast<acc_t>(r[w + 1]);
  return s;
}

// out = 3x3 box sum of x over in-range cells (row pass into `rows`, then column pass).
template <typename in_t, typename acc_t>
GAEA_SIMD_CLONES void box_sum_plane(const in_t* __restrict x, acc_t* __restrict out, acc_t* __restrict rows,
                                    int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const in_t* r = x + h * W;
    acc_t* o = rows + h * W;
    o[0] = row_sum_at<in_t, acc_t>(r, 0, W);
    // interior cells without bounds tests, so the loop vectorises
    for (int64_t w = 1; w + 1 < W; ++w)
      o[w] = static_cast<acc_t>(r[w - 1]) + static_cast<acc_t>(r[w]) + static_cast<acc_t>(r[w + 1]);
    if (W > 1) o[W - 1] = row_sum_at<in_t, acc_t>(r, W - 1, W);
  }
  for (int64_t h = 0; h < H; ++h) {
    const acc_t* mid = rows + h * W;
    acc_t* o = out + h * W;
    for (int64_t w = 0; w < W; ++w) o[w] = mid[w];
    if (h > 0) {
      const acc_t* up = mid - W;
      for (int64_t w = 0; w < W; ++w) o[w] += up[w];
    }
    if (h + 1 < H) {
      const acc_t* down = mid + W;
      for (int64_t w = 0; w < W; ++w) o[w] += down[w];
    }
  }
}

template <typename acc_t>
inline acc_t max_nan(acc_t m, acc_t v) {
  return (v > m || std::isnan(v)) ? v : m;
}

template <typename scalar_t, typename acc_t>
inline acc_t row_max_at(const scalar_t* r, int64_t w, int64_t W) {
  acc_t m = static_cast<acc_t>(r[w]);
  if (w > 0) m = max_nan(m, static_cast<acc_t>(r[w - 1]));
  if (w + 1 < W) m = max_nan(m, static_cast<acc_t>(r[w + 1]));
  return m;
}

// out = 3x3 max over in-range cells (NaN propagates), separable.
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void max_pool_plane(const scalar_t* __restrict x, acc_t* __restrict out, acc_t* __restrict rows,
                                     int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* r = x + h * W;
    acc_t* o = rows + h * W;
    o[0] = row_max_at<scalar_t, acc_t>(r, 0, W);
    for (int64_t w = 1; w + 1 < W; ++w)
      o[w] = max_nan(max_nan(static_cast<acc_t>(r[w]), static_cast<acc_t>(r[w - 1])), static_cast<acc_t>(r[w + 1]));
    if (W > 1) o[W - 1] = row_max_at<scalar_t, acc_t>(r, W - 1, W);
  }
  for (int64_t h = 0; h < H; ++h) {
    acc_t* o = out + h * W;
    const acc_t* mid = rows + h * W;
    for (int64_t w = 0; w < W; ++w) o[w] = mid[w];
    if (h > 0) {
      const acc_t* up = mid - W;
      for (int64_t w = 0; w < W; ++w) o[w] = max_nan(o[w], up[w]);
    }
    if (h + 1 < H) {
      const acc_t* down = mid + W;
      for (int64_t w = 0; w < W; ++w) o[w] = max_nan(o[w], down[w]);
    }
  }
}

// The 3x3 max of every window and the flat index of its first maximum under PyTorch's rule
// (scan rows then columns, take `v > max || isnan(v)`), as a row pass then a column pass: the
// rule composes, since the scan visits the window row by row. Branch-free selects so the
// passes vectorise; `rows`/`rows_arg` are scratch of H*W. Indices are int32: planes must
// have fewer than 2^31 cells (checked by the callers).
template <typename acc_t>
inline void take_if_greater(acc_t v, int32_t i, acc_t& m, int32_t& a) {
  const bool take = v > m || v != v;
  m = take ? v : m;
  a = take ? i : a;
}

// First maximum of the in-range cells of r[w-1..w+1] (the edge cells of a row).
template <typename scalar_t, typename acc_t>
inline void row_argmax_at(const scalar_t* r, int64_t w, int64_t W, acc_t& m, int32_t& a) {
  const int64_t w0 = w > 0 ? w - 1 : 0, w1 = w + 1 < W ? w + 1 : W - 1;
  m = static_cast<acc_t>(r[w0]);
  a = static_cast<int32_t>(w0);
  for (int64_t iw = w0 + 1; iw <= w1; ++iw) take_if_greater(static_cast<acc_t>(r[iw]), static_cast<int32_t>(iw), m, a);
}

template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void max_pool_argmax_plane(const scalar_t* __restrict x, acc_t* __restrict out, int32_t* __restrict arg,
                                            acc_t* __restrict rows, int32_t* __restrict rows_arg, int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* r = x + h * W;
    acc_t* o = rows + h * W;
    int32_t* oa = rows_arg + h * W;
    row_argmax_at(r, 0, W, o[0], oa[0]);
    if (W > 1) row_argmax_at(r, W - 1, W, o[W - 1], oa[W - 1]);
    for (int64_t w = 1; w + 1 < W; ++w) {
      acc_t m = static_cast<acc_t>(r[w - 1]);
      int32_t a = static_cast<int32_t>(w - 1);
      take_if_greater(static_cast<acc_t>(r[w]), static_cast<int32_t>(w), m, a);
      take_if_greater(static_cast<acc_t>(r[w + 1]), static_cast<int32_t>(w + 1), m, a);
      o[w] = m;
      oa[w] = a;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    const int64_t h0 = h > 0 ? h - 1 : 0, h1 = h + 1 < H ? h + 1 : H - 1;
    acc_t* m = out + h * W;
    int32_t* a = arg + h * W;
    for (int64_t w = 0; w < W; ++w) {
      m[w] = rows[h0 * W + w];
      a[w] = static_cast<int32_t>(h0 * W) + rows_arg[h0 * W + w];
    }
    for (int64_t ih = h0 + 1; ih <= h1; ++ih) {
      const acc_t* rm = rows + ih * W;
      const int32_t* ra = rows_arg + ih * W;
      const int32_t base = static_cast<int32_t>(ih * W);
      for (int64_t w = 0; w < W; ++w) take_if_greater(rm[w], base + ra[w], m[w], a[w]);
    }
  }
}

// Number of in-range cells of each 3x3 window (count_include_pad=False).
template <typename acc_t>
std::vector<acc_t> window_counts(int64_t H, int64_t W) {
  std::vector<acc_t> cnt(H * W);
  for (int64_t h = 0; h < H; ++h) {
    const int64_t rh = 1 + (h > 0) + (h + 1 < H);
    for (int64_t w = 0; w < W; ++w) cnt[h * W + w] = static_cast<acc_t>(rh * (1 + (w > 0) + (w + 1 < W)));
  }
  return cnt;
}

// x[0:n] /= d[0:n]
template <typename acc_t>
GAEA_SIMD_CLONES void divide_by(acc_t* __restrict x, const acc_t* __restrict d, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] /= d[i];
}

// The avg or max pool of plane `x` into `out` (float buffers of H*W; `rows` is scratch).
template <typename scalar_t, typename acc_t>
void pool_plane(bool is_avg, const scalar_t* x, acc_t* out, acc_t* rows, const acc_t* cnt, int64_t H, int64_t W) {
  if (is_avg) {
    box_sum_plane(x, out, rows, H, W);
    divide_by(out, cnt, H * W);
  } else {
    max_pool_plane(x, out, rows, H, W);
  }
}

}  // namespace
}  // namespace pool_planes
}  // namespace gaea_ext
