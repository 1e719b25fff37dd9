// CPU kernels of gaea_ext::weighted_sum and gaea_ext::weighted_sum_backward.
//
// Both walk the flat storage in fixed chunks of kCpuChunk elements (L1-sized). Inside a
// chunk the op index is the outer loop and the chunk accumulates in place, so every inner
// loop is a plain vectorisable stream. Dot products for the weight gradient are summed in
// 16 independent lanes per chunk (vectorisable without reassociation), and the per-chunk
// partials are combined in chunk order: the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../gaea_ext.h"
#include "simd_clones.h"

namespace gaea_ext {
namespace {

// Chunks per parallel task: about 64K elements, so small tensors stay on one thread.
constexpr int64_t kChunksPerTask = 32;
constexpr int kDotLanes = 16;

// acc[0:n] = sum_k w[k] * ys[k][offset : offset + n]
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void mix_chunk(acc_t* __restrict acc, const scalar_t* const* ys, const acc_t* w,
                                int64_t num_inputs, int64_t offset, int64_t n) {
  const scalar_t* __restrict y0 = ys[0] + offset;
  const acc_t w0 = w[0];
  for (int64_t i = 0; i < n; ++i) acc[i] = w0 * static_cast<acc_t>(y0[i]);
  for (int64_t k = 1; k < num_inputs; ++k) {
    const scalar_t* __restrict y = ys[k] + offset;
    const acc_t wk = w[k];
    for (int64_t i = 0; i < n; ++i) acc[i] += wk * static_cast<acc_t>(y[i]);
  }
}

template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void store_chunk(scalar_t* __restrict out, const acc_t* __restrict acc, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(acc[i]);
}

template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void load_chunk(acc_t* __restrict acc, const scalar_t* __restrict in, int64_t n) {
  for (int64_t i = 0; i < n; ++i) acc[i] = static_cast<acc_t>(in[i]);
}

// out[0:n] = w * g[0:n]
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void scale_chunk(scalar_t* __restrict out, const acc_t* __restrict g, acc_t w, int64_t n) {
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<scalar_t>(w * g[i]);
}

// <y[0:n], g[0:n]>, summed in kDotLanes lanes and then lane by lane, in a fixed order.
template <typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES acc_t dot_chunk(const scalar_t* __restrict y, const acc_t* __restrict g, int64_t n) {
  acc_t lanes[kDotLanes] = {};
  const int64_t body = n - n % kDotLanes;
  for (int64_t i = 0; i < body; i += kDotLanes) {
    for (int l = 0; l < kDotLanes; ++l) lanes[l] += static_cast<acc_t>(y[i + l]) * g[i + l];
  }
  for (int64_t i = body; i < n; ++i) lanes[i - body] += static_cast<acc_t>(y[i]) * g[i];
  acc_t total = 0;
  for (int l = 0; l < kDotLanes; ++l) total += lanes[l];
  return total;
}

int64_t num_chunks(int64_t numel) { return (numel + kCpuChunk - 1) / kCpuChunk; }

// Returns inputs (and, if given, grad_out) as tensors that share one dense layout.
std::vector<at::Tensor> with_shared_layout(at::TensorList inputs, const at::Tensor* grad_out) {
  std::vector<at::Tensor> all(inputs.begin(), inputs.end());
  if (grad_out != nullptr) all.push_back(*grad_out);
  if (share_dense_layout(all)) return all;
  for (at::Tensor& t : all) t = t.contiguous();
  return all;
}

template <typename scalar_t>
std::vector<const scalar_t*> data_pointers(const std::vector<at::Tensor>& tensors, size_t count) {
  std::vector<const scalar_t*> ptrs(count);
  for (size_t k = 0; k < count; ++k) ptrs[k] = tensors[k].const_data_ptr<scalar_t>();
  return ptrs;
}

at::ScalarType accumulation_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

void check_cpu(at::TensorList inputs) {
  TORCH_CHECK(inputs[0].device().is_cpu(), "weighted_sum (CPU kernel): 'inputs' must be on the CPU, got ",
              inputs[0].device());
}

}  // namespace

at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  check_cpu(inputs);
  const std::vector<at::Tensor> ys = with_shared_layout(inputs, nullptr);
  at::Tensor out = at::empty_like(ys[0], at::MemoryFormat::Preserve);
  const int64_t numel = out.numel();
  const int64_t K = static_cast<int64_t>(ys.size());
  if (numel == 0) return out;
  const at::Tensor w = weights.to(accumulation_type(out.scalar_type())).contiguous();

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out.scalar_type(), "weighted_sum_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<const scalar_t*> y_ptrs = data_pointers<scalar_t>(ys, ys.size());
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    scalar_t* out_ptr = out.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, num_chunks(numel), kChunksPerTask, [&](int64_t c0, int64_t c1) {
      acc_t acc[kCpuChunk];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t offset = c * kCpuChunk;
        const int64_t n = std::min(kCpuChunk, numel - offset);
        mix_chunk<scalar_t, acc_t>(acc, y_ptrs.data(), w_ptr, K, offset, n);
        store_chunk<scalar_t, acc_t>(out_ptr + offset, acc, n);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad) {
  check_weighted_sum_args(inputs, weights);
  check_cpu(inputs);
  const int64_t K = static_cast<int64_t>(inputs.size());
  TORCH_CHECK(static_cast<int64_t>(inputs_need_grad.size()) == K,
              "weighted_sum_backward: 'inputs_need_grad' must have one flag per input (", K, "), got ",
              inputs_need_grad.size());
  TORCH_CHECK(grad_out.sizes() == inputs[0].sizes() && grad_out.scalar_type() == inputs[0].scalar_type() &&
                  grad_out.device() == inputs[0].device(),
              "weighted_sum_backward: 'grad_out' must match the inputs' shape, dtype and device");

  const std::vector<at::Tensor> all = with_shared_layout(inputs, &grad_out);
  const at::Tensor& g = all.back();
  const int64_t numel = g.numel();
  const at::ScalarType acc_type = accumulation_type(g.scalar_type());

  std::vector<at::Tensor> grad_inputs;
  std::vector<int64_t> grad_slot(K, -1);  // index into grad_inputs, or -1
  for (int64_t k = 0; k < K; ++k) {
    if (inputs_need_grad[k]) {
      grad_slot[k] = static_cast<int64_t>(grad_inputs.size());
      grad_inputs.push_back(at::empty_like(g, at::MemoryFormat::Preserve));
    }
  }
  at::Tensor grad_weights = weights_need_grad ? at::zeros({K}, weights.options().dtype(acc_type))
                                              : at::empty({0}, weights.options());
  if (numel == 0 || (grad_inputs.empty() && !weights_need_grad)) {
    if (weights_need_grad) grad_weights = grad_weights.to(weights.scalar_type());
    return {grad_inputs, grad_weights};
  }
  const at::Tensor w = weights.to(acc_type).contiguous();
  const int64_t chunks = num_chunks(numel);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<const scalar_t*> y_ptrs = data_pointers<scalar_t>(all, K);
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    std::vector<scalar_t*> gi_ptrs(K, nullptr);
    for (int64_t k = 0; k < K; ++k) {
      if (grad_slot[k] >= 0) gi_ptrs[k] = grad_inputs[grad_slot[k]].mutable_data_ptr<scalar_t>();
    }
    std::vector<acc_t> partials(weights_need_grad ? chunks * K : 0);

    at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
      acc_t g_chunk[kCpuChunk];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t offset = c * kCpuChunk;
        const int64_t n = std::min(kCpuChunk, numel - offset);
        load_chunk<scalar_t, acc_t>(g_chunk, g_ptr + offset, n);
        for (int64_t k = 0; k < K; ++k) {
          if (gi_ptrs[k] != nullptr) scale_chunk<scalar_t, acc_t>(gi_ptrs[k] + offset, g_chunk, w_ptr[k], n);
          if (weights_need_grad) partials[c * K + k] = dot_chunk<scalar_t, acc_t>(y_ptrs[k] + offset, g_chunk, n);
        }
      }
    });

    if (weights_need_grad) {
      acc_t* dw = grad_weights.mutable_data_ptr<acc_t>();
      for (int64_t k = 0; k < K; ++k) {
        double total = 0.0;  // chunk order is fixed, so this sum is deterministic
        for (int64_t c = 0; c < chunks; ++c) total += static_cast<double>(partials[c * K + k]);
        dw[k] = static_cast<acc_t>(total);
      }
    }
  });
  if (weights_need_grad) grad_weights = grad_weights.to(weights.scalar_type());
  return {grad_inputs, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace gaea_ext
