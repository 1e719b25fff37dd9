// CPU kernels of gaea_ext::weighted_sum and gaea_ext::weighted_sum_backward.
//
// Both walk the flat storage in fixed chunks of kCpuChunk elements (L1-sized). The forward
// reads up to 8 inputs per pass with the running sum in vector registers (more inputs
// accumulate in a float chunk buffer); the backward keeps the grad chunk in L1 and streams
// each input once. Dot products for the weight gradient are summed in
// 16 independent lanes per chunk (vectorisable without reassociation), and the per-chunk
// partials are combined in chunk order: the result does not depend on the thread count.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "simd_clones.h"
#include "vector_loops.h"

namespace gaea_ext {
namespace {

// Chunks per parallel task: about 64K elements, so small tensors stay on one thread.
constexpr int64_t kChunksPerTask = 32;

// Inputs mixed per pass: all G streams of a group are read in one loop, as an unrolled sum
// held in vector registers, so each output element is written once per group.
constexpr int kGroup = 8;

// dst[0:n] = (kFirst ? 0 : acc[0:n]) + sum_{g<G} w[g] * ys[g][offset:offset+n], where dst is
// `out` (scalar_t) for the last group and the float chunk `acc` otherwise.
template <int G, bool kFirst, bool kLast, typename scalar_t, typename acc_t>
GAEA_SIMD_CLONES void mix_group(scalar_t* __restrict out, acc_t* __restrict acc, const scalar_t* const* ys,
                                const acc_t* w, int64_t offset, int64_t n) {
  const scalar_t* y[G];
  acc_t wg[G];
  for (int g = 0; g < G; ++g) {
    y[g] = ys[g] + offset;
    wg[g] = w[g];
  }
  for (int64_t i = 0; i < n; ++i) {
    acc_t sum = kFirst ? acc_t(0) : acc[i];
    for (int g = 0; g < G; ++g) sum += wg[g] * static_cast<acc_t>(y[g][i]);
    if constexpr (kLast) {
      out[i] = static_cast<scalar_t>(sum);
    } else {
      acc[i] = sum;
    }
  }
}

template <bool kFirst, bool kLast, typename scalar_t, typename acc_t>
void mix_group_of(int group_size, scalar_t* out, acc_t* acc, const scalar_t* const* ys, const acc_t* w,
                  int64_t offset, int64_t n) {
  switch (group_size) {
    case 1: return mix_group<1, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 2: return mix_group<2, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 3: return mix_group<3, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 4: return mix_group<4, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 5: return mix_group<5, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 6: return mix_group<6, kFirst, kLast>(out, acc, ys, w, offset, n);
    case 7: return mix_group<7, kFirst, kLast>(out, acc, ys, w, offset, n);
    default: return mix_group<kGroup, kFirst, kLast>(out, acc, ys, w, offset, n);
  }
}

// out[offset : offset + n] = sum_k w[k] * ys[k][offset : offset + n], kGroup inputs per pass;
// with more than kGroup inputs the partial sums stay in the L1-sized float chunk `acc`.
template <typename scalar_t, typename acc_t>
void mix_chunk(scalar_t* out, acc_t* acc, const scalar_t* const* ys, const acc_t* w, int64_t num_inputs,
               int64_t offset, int64_t n) {
  for (int64_t k0 = 0; k0 < num_inputs; k0 += kGroup) {
    const int group = static_cast<int>(std::min<int64_t>(kGroup, num_inputs - k0));
    const bool first = k0 == 0;
    const bool last = k0 + kGroup >= num_inputs;
    scalar_t* dst = out + offset;
    if (first && last) mix_group_of<true, true>(group, dst, acc, ys + k0, w + k0, offset, n);
    else if (first) mix_group_of<true, false>(group, dst, acc, ys + k0, w + k0, offset, n);
    else if (last) mix_group_of<false, true>(group, dst, acc, ys + k0, w + k0, offset, n);
    else mix_group_of<false, false>(group, dst, acc, ys + k0, w + k0, offset, n);
  }
}

int64_t num_chunks(int64_t numel) { return (numel + kCpuChunk - 1) / kCpuChunk; }

template <typename scalar_t>
std::vector<const scalar_t*> data_pointers(const std::vector<at::Tensor>& tensors, size_t count) {
  std::vector<const scalar_t*> ptrs(count);
  for (size_t k = 0; k < count; ++k) ptrs[k] = tensors[k].const_data_ptr<scalar_t>();
  return ptrs;
}

void check_cpu(at::TensorList inputs) {
  TORCH_CHECK(inputs[0].device().is_cpu(), "weighted_sum (CPU kernel): 'inputs' must be on the CPU, got ",
              inputs[0].device());
}

}  // namespace

at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights) {
  check_weighted_sum_args(inputs, weights);
  check_cpu(inputs);
  const std::vector<at::Tensor> ys = with_shared_layout(inputs.vec());
  at::Tensor out = at::empty_like(ys[0], at::MemoryFormat::Preserve);
  const int64_t numel = out.numel();
  const int64_t K = static_cast<int64_t>(ys.size());
  if (numel == 0) return out;
  const at::Tensor w = contiguous_as(weights, accumulation_type(out.scalar_type()));

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
        mix_chunk<scalar_t, acc_t>(out_ptr, acc, y_ptrs.data(), w_ptr, K, offset, n);
      }
    });
  });
  return out;
}

std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad) {
  check_weighted_sum_backward_args(grad_out, inputs, weights, inputs_need_grad);
  check_cpu(inputs);
  const int64_t K = static_cast<int64_t>(inputs.size());
  std::vector<at::Tensor> all = inputs.vec();
  all.push_back(grad_out);
  all = with_shared_layout(std::move(all));
  const at::Tensor& g = all.back();
  const int64_t numel = g.numel();
  const at::ScalarType acc_type = accumulation_type(g.scalar_type());

  NeededGrads grad_inputs = allocate_needed(inputs_need_grad, [&](size_t) {
    return at::empty_like(g, at::MemoryFormat::Preserve);
  });
  at::Tensor grad_weights = weights_need_grad ? at::zeros({K}, weights.options().dtype(acc_type))
                                              : at::empty({0}, weights.options());
  if (numel == 0 || (grad_inputs.grads.empty() && !weights_need_grad)) {
    if (weights_need_grad) grad_weights = grad_weights.to(weights.scalar_type());
    return {grad_inputs.grads, grad_weights};
  }
  const at::Tensor w = contiguous_as(weights, acc_type);
  const int64_t chunks = num_chunks(numel);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "weighted_sum_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const std::vector<const scalar_t*> y_ptrs = data_pointers<scalar_t>(all, K);
    const scalar_t* g_ptr = g.const_data_ptr<scalar_t>();
    const acc_t* w_ptr = w.const_data_ptr<acc_t>();
    std::vector<scalar_t*> gi_ptrs(K, nullptr);
    for (int64_t k = 0; k < K; ++k) {
      if (at::Tensor* gi = grad_inputs.of(k)) gi_ptrs[k] = gi->mutable_data_ptr<scalar_t>();
    }
    std::vector<acc_t> partials(weights_need_grad ? chunks * K : 0);

    at::parallel_for(0, chunks, kChunksPerTask, [&](int64_t c0, int64_t c1) {
      acc_t g_chunk[kCpuChunk];
      for (int64_t c = c0; c < c1; ++c) {
        const int64_t offset = c * kCpuChunk;
        const int64_t n = std::min(kCpuChunk, numel - offset);
        load_chunk<scalar_t, acc_t>(g_chunk, g_ptr + offset, n);
        for (int64_t k = 0; k < K; ++k) {
          if (gi_ptrs[k] != nullptr && weights_need_grad) {
            partials[c * K + k] =
                scale_and_dot_chunk<scalar_t, acc_t>(gi_ptrs[k] + offset, y_ptrs[k] + offset, g_chunk, w_ptr[k], n);
          } else if (gi_ptrs[k] != nullptr) {
            scale_chunk<scalar_t, acc_t>(gi_ptrs[k] + offset, g_chunk, w_ptr[k], n);
          } else if (weights_need_grad) {
            partials[c * K + k] = dot_chunk<scalar_t, acc_t>(y_ptrs[k] + offset, g_chunk, n);
          }
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
  return {grad_inputs.grads, grad_weights};
}

TORCH_LIBRARY_IMPL(gaea_ext, CPU, m) {
  m.impl("weighted_sum", &weighted_sum_cpu);
  m.impl("weighted_sum_backward", &weighted_sum_backward_cpu);
}

}  // namespace gaea_ext
