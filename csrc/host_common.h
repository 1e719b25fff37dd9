// Host-side helpers shared by the CPU and CUDA entry points (csrc/host_common.cpp): the
// accumulation dtype, need-grad checks, gradients allocated by a need mask, layouts of the
// inputs and of the results. None of them reads device values.
#pragma once

#include <ATen/core/List.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <vector>

namespace gaea_ext {

// ---- accumulation dtype --------------------------------------------------------------

// The dtype the kernels accumulate in: float64 for float64 data, float32 otherwise (half
// types accumulate in float32); the runtime twin of at::opmath_type<scalar_t>.
at::ScalarType accumulation_type(at::ScalarType data);
// `t` as a contiguous tensor of `dtype` (no copy when it already is one).
at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType dtype);
// mixed_node's norm [B, 2, C] in `acc`, contiguous; undefined when there are no BN terms.
at::Tensor norm_as(const std::optional<at::Tensor>& norm, at::ScalarType acc);

// ---- need-grad flags and gradient allocation --------------------------------------------

// TORCH_CHECK that a need-grad list has one flag per tensor: "<op>: '<name>' must have one
// entry per <what> (<count>), got <n>".
void check_need_grad(const c10::List<bool>& need, size_t count, const char* op, const char* name,
                     const char* what);

// The gradients of the tensors whose flag is set, in index order, and where each one is.
struct NeededGrads {
  std::vector<at::Tensor> grads;  // only the needed ones
  std::vector<int64_t> slot;      // per tensor: its index in `grads`, or -1
  // The gradient of tensor k, or nullptr when it is not needed.
  at::Tensor* of(int64_t k) { return slot[k] >= 0 ? &grads[slot[k]] : nullptr; }
};
// The gradient make(k) for each k with need[k] (e.g. an empty tensor shaped like tensor k).
template <typename Make>
NeededGrads allocate_needed(const c10::List<bool>& need, Make make) {
  NeededGrads out;
  out.slot.assign(need.size(), -1);
  for (size_t k = 0; k < need.size(); ++k) {
    if (!need.get(k)) continue;
    out.slot[k] = static_cast<int64_t>(out.grads.size());
    out.grads.push_back(make(k));
  }
  return out;
}
// A gradient of `sizes`, zero-filled, when `need`; else an empty tensor (what the ops return
// for a gradient nobody asked for).
at::Tensor zeros_if_needed(bool need, at::IntArrayRef sizes, const at::TensorOptions& options);
// Host values (double) as a tensor of `dtype` with `sizes` (on the CPU).
at::Tensor tensor_from(const std::vector<double>& values, at::IntArrayRef sizes, at::ScalarType dtype);

// ---- layouts ---------------------------------------------------------------------------

// Each tensor made contiguous (no copy when it already is).
std::vector<at::Tensor> contiguous_all(at::TensorList tensors);
// True when every tensor has the same sizes and strides and those strides are
// non-overlapping and dense (so the flat storage can be walked linearly).
bool share_dense_layout(at::TensorList tensors);
// The tensors in one dense layout: their own when they share one, else all contiguous
// (the rule of gaea_ext/_layout.py, which the fake kernels follow).
std::vector<at::Tensor> with_shared_layout(std::vector<at::Tensor> tensors);
// True when the tensors share one dense layout (share_dense_layout) in which the first
// dimension (the batch) is outermost, so that each sample is one contiguous stretch of the
// flat storage (contiguous and channels_last are; a transposed batch is not).
bool share_batch_major_layout(at::TensorList tensors);
// The layout a batch-major kernel gives operands that share none: the first operand's when
// it is channels_last (and not also contiguous), so operands already in it are not copied,
// else contiguous (gaea_ext/_layout.py batch_major_format).
at::MemoryFormat batch_major_format(const at::Tensor& first);
// The tensors in a batch-major layout: their own when they share one, else all in
// batch_major_format(tensors[0]) (the rule of gaea_ext/_layout.py empty_in_batch_major_layout).
std::vector<at::Tensor> with_batch_major_layout(std::vector<at::Tensor> tensors);
// `result` (contiguous) in the layout of `like`: channels_last when `like` is channels_last
// and not also contiguous, else `result` itself.
at::Tensor in_layout_of(const at::Tensor& result, const at::Tensor& like);
// An empty tensor shaped like `like` in the layout in_layout_of gives its results.
at::Tensor empty_in_layout_of(const at::Tensor& like);
// Every needed gradient put in the layout of its tensor in `like` (in_layout_of).
void restore_layouts(NeededGrads& needed, at::TensorList like);

// ---- tensors read in place with their own strides ---------------------------------------

// How a kernel addresses a 4-D tensor [N, C, H, W] whose planes have evenly spaced cells:
// cell (n, c, h, w) is at data + n * n_stride + c * c_stride + (h * W + w) * cell_stride.
// Contiguous and channels_last tensors and their channel slices (`y[:, a:b]`, e.g. one
// edge's share of a batched conv output) have this form; a crop of H or W does not.
struct PlaneStrides {
  int64_t n_stride, c_stride, cell_stride;
};
// Whether `t` (4-D) has that form.
bool has_even_planes(const at::Tensor& t);
// The strides of `t` in that form (has_even_planes(t) must hold).
PlaneStrides plane_strides(const at::Tensor& t);
// Each tensor as is when it has_even_planes, else a contiguous copy.
std::vector<at::Tensor> with_even_planes(at::TensorList tensors);

// ---- exp_grad_step_ ---------------------------------------------------------------------

// Segment lengths of param t: its slice of `segments`, or {row} when it has none.
std::vector<int64_t> segment_lengths(c10::IntArrayRef segments, int64_t first, int64_t count, int64_t row);

}  // namespace gaea_ext
