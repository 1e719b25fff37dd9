// 3x3, stride 1, padding 1 pools of one (n, c) plane, shared by the CPU kernels of
// mixed_node and pool_stats: separable box sum / max into plane buffers, PyTorch's
// first-maximum rule for the max-pool gradient, and the in-range window counts of the
// average (count_include_pad=False).
#pragma once

#include <cmath>
#include <cstdint>
#include <vector>

namespace gaea_ext {
namespace pool_planes {

// out = 3x3 box sum of x over in-range cells (row pass into `rows`, then column pass).
template <typename in_t, typename acc_t>
void box_sum_plane(const in_t* x, acc_t* out, acc_t* rows, int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const in_t* r = x + h * W;
    acc_t* o = rows + h * W;
    for (int64_t w = 0; w < W; ++w) {
      acc_t s = static_cast<acc_t>(r[w]);
      if (w > 0) s += static_cast<acc_t>(r[w - 1]);
      if (w + 1 < W) s += static_cast<acc_t>(r[w + 1]);
      o[w] = s;
    }
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

// out = 3x3 max over in-range cells (NaN propagates), separable.
template <typename scalar_t, typename acc_t>
void max_pool_plane(const scalar_t* x, acc_t* out, acc_t* rows, int64_t H, int64_t W) {
  for (int64_t h = 0; h < H; ++h) {
    const scalar_t* r = x + h * W;
    acc_t* o = rows + h * W;
    for (int64_t w = 0; w < W; ++w) {
      acc_t m = static_cast<acc_t>(r[w]);
      if (w > 0) m = max_nan(m, static_cast<acc_t>(r[w - 1]));
      if (w + 1 < W) m = max_nan(m, static_cast<acc_t>(r[w + 1]));
      o[w] = m;
    }
  }
  for (int64_t h = 0; h < H; ++h) {
    for (int64_t w = 0; w < W; ++w) {
      acc_t m = rows[h * W + w];
      if (h > 0) m = max_nan(m, rows[(h - 1) * W + w]);
      if (h + 1 < H) m = max_nan(m, rows[(h + 1) * W + w]);
      out[h * W + w] = m;
    }
  }
}

// Flat index of the first maximum of the 3x3 window at (h, w), scanning rows then columns
// with `v > max || isnan(v)`, exactly as PyTorch's max_pool2d picks its index.
template <typename scalar_t, typename acc_t>
inline int64_t window_argmax(const scalar_t* x, int64_t h, int64_t w, int64_t H, int64_t W) {
  const int64_t h0 = h > 0 ? h - 1 : 0, h1 = h + 1 < H ? h + 1 : H - 1;
  const int64_t w0 = w > 0 ? w - 1 : 0, w1 = w + 1 < W ? w + 1 : W - 1;
  int64_t best = h0 * W + w0;
  acc_t m = static_cast<acc_t>(x[best]);
  for (int64_t ih = h0; ih <= h1; ++ih) {
    for (int64_t iw = w0; iw <= w1; ++iw) {
      const int64_t i = ih * W + iw;
      const acc_t v = static_cast<acc_t>(x[i]);
      if (v > m || std::isnan(v)) {
        m = v;
        best = i;
      }
    }
  }
  return best;
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

// The avg or max pool of plane `x` into `out` (float buffers of H*W; `rows` is scratch).
template <typename scalar_t, typename acc_t>
void pool_plane(bool is_avg, const scalar_t* x, acc_t* out, acc_t* rows, const acc_t* cnt, int64_t H, int64_t W) {
  if (is_avg) {
    box_sum_plane(x, out, rows, H, W);
    for (int64_t i = 0; i < H * W; ++i) out[i] /= cnt[i];
  } else {
    max_pool_plane(x, out, rows, H, W);
  }
}

}  // namespace pool_planes
}  // namespace gaea_ext
