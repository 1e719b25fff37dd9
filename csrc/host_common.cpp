// Host-side helpers shared by the CPU and CUDA entry points (declared in host_common.h).
#include "host_common.h"

#include <algorithm>

namespace gaea_ext {

at::ScalarType accumulation_type(at::ScalarType data) { return data == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor contiguous_as(const at::Tensor& t, at::ScalarType dtype) { return t.to(dtype).contiguous(); }

at::Tensor norm_as(const std::optional<at::Tensor>& norm, at::ScalarType acc) {
  if (!norm.has_value() || !norm->defined() || norm->numel() == 0) return at::Tensor();
  return contiguous_as(*norm, acc);
}

void check_need_grad(const c10::List<bool>& need, size_t count, const char* op, const char* name,
                     const char* what) {
  TORCH_CHECK(need.size() == count, op, ": '", name, "' must have one entry per ", what, " (", count, "), got ",
              need.size());
}

at::Tensor zeros_if_needed(bool need, at::IntArrayRef sizes, const at::TensorOptions& options) {
  return need ? at::zeros(sizes, options) : at::empty({0}, options);
}

at::Tensor tensor_from(const std::vector<double>& values, at::IntArrayRef sizes, at::ScalarType dtype) {
  at::Tensor out = at::empty(sizes, at::kDouble);
  TORCH_INTERNAL_ASSERT(out.numel() == static_cast<int64_t>(values.size()));
  std::copy(values.begin(), values.end(), out.mutable_data_ptr<double>());
  return out.to(dtype);
}

std::vector<at::Tensor> contiguous_all(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(t.contiguous());
  return out;
}

bool share_dense_layout(at::TensorList tensors) {
  const at::Tensor& first = tensors[0];
  if (!first.is_non_overlapping_and_dense()) return false;
  for (const at::Tensor& t : tensors) {
    if (t.sizes() != first.sizes() || t.strides() != first.strides()) return false;
  }
  return true;
}

std::vector<at::Tensor> with_shared_layout(std::vector<at::Tensor> tensors) {
  if (share_dense_layout(tensors)) return tensors;
  for (at::Tensor& t : tensors) t = t.contiguous();
  return tensors;
}

bool share_batch_major_layout(at::TensorList tensors) {
  const at::Tensor& first = tensors[0];
  return first.dim() >= 1 && first.stride(0) * first.size(0) == first.numel() && share_dense_layout(tensors);
}

static bool channels_last_only(const at::Tensor& t) {
  return t.dim() == 4 && !t.is_contiguous() && t.is_contiguous(at::MemoryFormat::ChannelsLast);
}

at::MemoryFormat batch_major_format(const at::Tensor& first) {
  return channels_last_only(first) ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
}

std::vector<at::Tensor> with_batch_major_layout(std::vector<at::Tensor> tensors) {
  if (share_batch_major_layout(tensors)) return tensors;
  const at::MemoryFormat format = batch_major_format(tensors[0]);
  for (at::Tensor& t : tensors) t = t.contiguous(format);
  return tensors;
}

at::Tensor in_layout_of(const at::Tensor& result, const at::Tensor& like) {
  if (channels_last_only(like)) return result.contiguous(at::MemoryFormat::ChannelsLast);
  return result;
}

at::Tensor empty_in_layout_of(const at::Tensor& like) {
  return at::empty(like.sizes(), like.options().memory_format(batch_major_format(like)));
}

void restore_layouts(NeededGrads& needed, at::TensorList like) {
  for (size_t k = 0; k < like.size(); ++k) {
    if (at::Tensor* grad = needed.of(static_cast<int64_t>(k))) *grad = in_layout_of(*grad, like[k]);
  }
}

bool has_even_planes(const at::Tensor& t) {
  return t.size(2) == 1 || t.size(3) == 1 || t.stride(2) == t.size(3) * t.stride(3);
}

PlaneStrides plane_strides(const at::Tensor& t) {
  // A plane of one column is walked along H, one of one row (or one cell) along W.
  const int64_t cell = t.size(3) == 1 && t.size(2) > 1 ? t.stride(2) : t.stride(3);
  return {t.stride(0), t.stride(1), cell};
}

std::vector<at::Tensor> with_even_planes(at::TensorList tensors) {
  std::vector<at::Tensor> out;
  out.reserve(tensors.size());
  for (const auto& t : tensors) out.push_back(has_even_planes(t) ? t : t.contiguous());
  return out;
}

std::vector<int64_t> segment_lengths(c10::IntArrayRef segments, int64_t first, int64_t count, int64_t row) {
  if (count == 0) return {row};
  return segments.slice(first, count).vec();
}

}  // namespace gaea_ext
