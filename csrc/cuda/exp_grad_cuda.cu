// CUDA kernels of gaea_ext::exp_grad_step_: the in-place exponentiated-gradient step on
// every simplex of a list of params, all or nothing, with no host synchronisation.
//
// Two phases: inspect every param (non-finite grad -> kNonFiniteGrad, negative or
// non-finite entry or a simplex summing to 0 -> kInvalidParam; max|g| for the adaptive
// rate), then, only if no flag is set anywhere, step every simplex in the log domain.
// Each param carries its own options (lr, min_value, entropic_reg) and its own segments in
// the per-tensor metadata of the launch struct, so one launch can mix e.g. DARTS alphas
// (min_value 1e-5, entropic_reg) and per-node segmented edge weights (min_value 0).
// - Fused path (the usual case: at most kMaxTensorsPerLaunch small params of one dtype with
//   at most kMaxSegments segments in all, e.g. the DARTS alphas and edge weights): ONE
//   launch of ONE block, which inspects all params, takes a block-wide decision and steps
//   them; it also writes the flag, so no fill kernel is needed either.
// - General path (more tensors, mixed dtypes or large params): a zero-filled flag, one
//   inspect launch per batch (one block per param, flag bits by atomicOr), then one step
//   launch per batch that reads the flag and leaves everything untouched if it is set.
// Each simplex (row x segment) is handled by one thread, like the CPU kernel.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/library.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../gaea_ext.h"
#include "../host_common.h"
#include "../kernels/exp_grad.cuh"

namespace gaea_ext {
namespace {

using gaea_kernels::exp_grad::exp_grad_fused_kernel;
using gaea_kernels::exp_grad::exp_grad_inspect_kernel;
using gaea_kernels::exp_grad::exp_grad_step_kernel;
using gaea_kernels::exp_grad::kFusedMaxNumel;
using gaea_kernels::exp_grad::kMaxSegments;
using gaea_kernels::exp_grad::kMaxTensorsPerLaunch;
using gaea_kernels::exp_grad::kThreads;
using gaea_kernels::exp_grad::TensorBatch;

// Host-side per-param options, gathered once.
struct ParamInfo {
  double lr;
  double min_value;
  double log_min_value;
  double entropic_reg;
  std::vector<int64_t> seg_start;  // empty: one simplex per row
};

// Host side: a batch is a list of param indices of one dtype (at most kMaxTensorsPerLaunch,
// at most kMaxSegments segments in all).
template <typename scalar_t>
TensorBatch<scalar_t> make_batch(const std::vector<int64_t>& indices, at::TensorList params,
                                 const std::vector<at::Tensor>& grads, const std::vector<ParamInfo>& info) {
  TensorBatch<scalar_t> batch{};
  batch.count = static_cast<int>(indices.size());
  int used = 0;
  for (int i = 0; i < batch.count; ++i) {
    const int64_t t = indices[i];
    const ParamInfo& p = info[t];
    batch.param[i] = params[t].mutable_data_ptr<scalar_t>();
    batch.grad[i] = grads[t].const_data_ptr<scalar_t>();
    batch.numel[i] = params[t].numel();
    batch.row[i] = params[t].size(-1);
    batch.lr[i] = p.lr;
    batch.min_value[i] = p.min_value;
    batch.log_min_value[i] = p.log_min_value;
    batch.entropic_reg[i] = p.entropic_reg;
    batch.seg_first[i] = used;
    batch.seg_count[i] = static_cast<int>(p.seg_start.size());
    TORCH_INTERNAL_ASSERT(used + batch.seg_count[i] <= kMaxSegments);
    for (int64_t start : p.seg_start) batch.seg_start[used++] = start;
  }
  return batch;
}

}  // namespace

at::Tensor exp_grad_step_cuda(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> lrs,
                              c10::IntArrayRef segments, c10::IntArrayRef segment_counts,
                              c10::ArrayRef<double> min_values, c10::ArrayRef<double> entropic_regs,
                              bool normalize_first, bool adaptive) {
  const std::vector<int64_t> first_segment =
      check_exp_grad_args(params, grads, lrs, segments, segment_counts, min_values, entropic_regs);
  TORCH_CHECK(!params.empty(), "exp_grad_step_ (CUDA kernel): 'params' must hold at least one tensor");
  TORCH_CHECK(params[0].is_cuda(), "exp_grad_step_ (CUDA kernel): 'params' must be CUDA tensors, got ",
              params[0].device());
  const c10::cuda::CUDAGuard guard(params[0].device());
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  const at::TensorOptions flag_options = params[0].options().dtype(at::kInt);

  // Per-param options; segment starts within the row (segment_counts[t] == 0: none).
  std::vector<ParamInfo> info(params.size());
  for (size_t t = 0; t < params.size(); ++t) {
    TORCH_CHECK(segment_counts[t] <= kMaxSegments, "exp_grad_step_ (CUDA kernel): params[", t,
                "] is split into ", segment_counts[t], " segments, but the CUDA kernel handles at most ",
                kMaxSegments, " segments per param");
    ParamInfo& p = info[t];
    p.lr = lrs[t];
    p.min_value = min_values[t];
    p.log_min_value = min_values[t] > 0.0 ? std::log(min_values[t]) : 0.0;
    p.entropic_reg = entropic_regs[t];
    if (segment_counts[t] > 0) {
      const std::vector<int64_t> lengths =
          segment_lengths(segments, first_segment[t], segment_counts[t], params[t].size(-1));
      int64_t start = 0;
      for (int64_t len : lengths) {
        p.seg_start.push_back(start);
        start += len;
      }
    }
  }

  // Grads in the param's dtype and contiguous (a no-op in the usual case); they stay alive
  // until this function returns, and the caching allocator orders their reuse on the stream.
  // Batches: non-empty params grouped by dtype (in order of first appearance).
  std::vector<at::Tensor> grads_c(params.size());
  std::vector<std::vector<int64_t>> batches;
  std::vector<at::ScalarType> batch_dtype;
  int64_t total_numel = 0;
  for (size_t t = 0; t < params.size(); ++t) {
    if (params[t].numel() == 0) continue;
    grads_c[t] = grads[t].to(params[t].scalar_type()).contiguous();
    total_numel += params[t].numel();
  }
  // A new batch starts at a new dtype, or when the tensor or segment budget is used up.
  std::vector<bool> taken(params.size(), false);
  int batch_segments = 0;
  for (size_t first = 0; first < params.size(); ++first) {
    if (taken[first] || params[first].numel() == 0) continue;
    const at::ScalarType dtype = params[first].scalar_type();
    for (size_t t = first; t < params.size(); ++t) {
      if (taken[t] || params[t].numel() == 0 || params[t].scalar_type() != dtype) continue;
      const int n_seg = static_cast<int>(info[t].seg_start.size());
      if (batches.empty() || batch_dtype.back() != dtype ||
          static_cast<int>(batches.back().size()) == kMaxTensorsPerLaunch ||
          batch_segments + n_seg > kMaxSegments) {
        batches.emplace_back();
        batch_dtype.push_back(dtype);
        batch_segments = 0;
      }
      batches.back().push_back(static_cast<int64_t>(t));
      batch_segments += n_seg;
      taken[t] = true;
    }
  }
  if (batches.empty()) return at::zeros({}, flag_options);

  if (batches.size() == 1 && total_numel <= kFusedMaxNumel) {
    at::Tensor found = at::empty({}, flag_options);  // written by the kernel
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, batch_dtype[0], "exp_grad_step_cuda", [&] {
      const TensorBatch<scalar_t> batch = make_batch<scalar_t>(batches[0], params, grads_c, info);
      exp_grad_fused_kernel<scalar_t, at::opmath_type<scalar_t>>
          <<<1, kThreads, 0, stream>>>(batch, normalize_first, adaptive, found.mutable_data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    return found;
  }

  at::Tensor found = at::zeros({}, flag_options);
  int64_t num_tensors = 0;
  for (const auto& b : batches) num_tensors += static_cast<int64_t>(b.size());
  at::Tensor max_abs = at::empty({num_tensors}, params[0].options().dtype(at::kDouble));
  int* found_ptr = found.mutable_data_ptr<int>();
  double* max_abs_ptr = max_abs.mutable_data_ptr<double>();
  // Every inspection is queued before any step, so a bad tensor anywhere blocks them all.
  for (int phase = 0; phase < 2; ++phase) {
    int64_t offset = 0;
    for (size_t b = 0; b < batches.size(); ++b) {
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, batch_dtype[b], "exp_grad_step_cuda", [&] {
        const TensorBatch<scalar_t> batch = make_batch<scalar_t>(batches[b], params, grads_c, info);
        if (phase == 0) {
          exp_grad_inspect_kernel<scalar_t, at::opmath_type<scalar_t>>
              <<<batch.count, kThreads, 0, stream>>>(batch, adaptive, found_ptr, max_abs_ptr + offset);
        } else {
          exp_grad_step_kernel<scalar_t, at::opmath_type<scalar_t>><<<batch.count, kThreads, 0, stream>>>(batch, normalize_first, adaptive,
                                                                             found_ptr, max_abs_ptr + offset);
        }
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      offset += static_cast<int64_t>(batches[b].size());
    }
  }
  return found;
}

TORCH_LIBRARY_IMPL(gaea_ext, CUDA, m) { m.impl("exp_grad_step_", &exp_grad_step_cuda); }

}  // namespace gaea_ext
