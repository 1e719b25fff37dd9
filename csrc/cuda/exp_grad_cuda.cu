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

namespace gaea_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Tensors and segments per launch (csrc/cuda_limits.h). A batch carries 72 bytes per tensor
// plus 8 per segment; with the other kernel arguments it stays under the 4 KB
// kernel-parameter limit (static_assert below). Params beyond either limit go to further
// batches; a single param may have at most kMaxSegments segments.
constexpr int kMaxTensorsPerLaunch = static_cast<int>(kMaxExpGradParamsPerLaunch);
constexpr int kMaxSegments = static_cast<int>(kMaxExpGradSegments);
// Largest total element count the single-block fused path takes (the DARTS alphas and
// edge weights are ~250 elements); beyond it one block per param is faster.
constexpr int64_t kFusedMaxNumel = 16384;

// Per tensor i of a batch: pointers, shape, and its options. Its simplices are the rows
// (length row[i]) split by seg_count[i] segments whose starts within the row are
// seg_start[seg_first[i]] .. seg_start[seg_first[i] + seg_count[i] - 1] (the first one is
// 0, the last segment ends at row[i]); seg_count[i] == 0: one simplex per row.
template <typename scalar_t>
struct TensorBatch {
  scalar_t* param[kMaxTensorsPerLaunch];
  const scalar_t* grad[kMaxTensorsPerLaunch];
  int64_t numel[kMaxTensorsPerLaunch];
  int64_t row[kMaxTensorsPerLaunch];  // length of the last dimension
  double lr[kMaxTensorsPerLaunch];
  double min_value[kMaxTensorsPerLaunch];
  double log_min_value[kMaxTensorsPerLaunch];  // log(min_value) in double; unused when min_value == 0
  double entropic_reg[kMaxTensorsPerLaunch];
  int seg_first[kMaxTensorsPerLaunch];
  int seg_count[kMaxTensorsPerLaunch];
  int64_t seg_start[kMaxSegments];  // shared by the tensors of the batch
  int count;
};
// The largest kernel argument list: batch, two bools, two pointers (with padding).
static_assert(sizeof(TensorBatch<double>) + 3 * sizeof(void*) <= 4096 - 256,
              "exp_grad_step_ kernel arguments must stay under the 4 KB parameter limit");

__device__ __forceinline__ float dev_log(float x) { return logf(x); }
__device__ __forceinline__ double dev_log(double x) { return log(x); }
__device__ __forceinline__ float dev_exp(float x) { return expf(x); }
__device__ __forceinline__ double dev_exp(double x) { return exp(x); }
__device__ __forceinline__ bool dev_isfinite(float x) { return isfinite(x); }
__device__ __forceinline__ bool dev_isfinite(double x) { return isfinite(x); }

struct Simplex {
  int64_t begin;
  int64_t len;
};

// Simplex s of tensor t: row s / seg_count, segment s % seg_count.
template <typename scalar_t>
__device__ __forceinline__ Simplex simplex_at(const TensorBatch<scalar_t>& b, int t, int64_t s) {
  const int64_t row = b.row[t];
  const int count = b.seg_count[t];
  if (count == 0) return {s * row, row};
  const int64_t r = s / count;
  const int seg = static_cast<int>(s % count);
  const int first = b.seg_first[t];
  const int64_t start = b.seg_start[first + seg];
  const int64_t stop = seg + 1 < count ? b.seg_start[first + seg + 1] : row;
  return {r * row + start, stop - start};
}

template <typename scalar_t>
__device__ __forceinline__ int64_t num_simplices(const TensorBatch<scalar_t>& b, int t) {
  return (b.numel[t] / b.row[t]) * (b.seg_count[t] > 0 ? b.seg_count[t] : 1);
}

struct Inspection {
  int flags;       // kNonFiniteGrad | kInvalidParam
  double max_abs;  // max |g| over the finite entries (only when asked for)
};

// Block-wide inspection of tensor t; every thread of the block gets the same result.
// `warp_max` (shared) is written only after the two __syncthreads_or barriers below, so
// a previous call's readers are done with it.
template <typename scalar_t>
__device__ Inspection inspect_tensor(const TensorBatch<scalar_t>& b, int t, bool need_max,
                                     at::opmath_type<scalar_t>* warp_max) {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* param = b.param[t];
  const scalar_t* grad = b.grad[t];
  const int64_t numel = b.numel[t];
  bool bad_grad = false;
  bool bad_param = false;
  acc_t max_abs = acc_t(0);
  for (int64_t i = threadIdx.x; i < numel; i += blockDim.x) {
    const acc_t g = static_cast<acc_t>(grad[i]);
    if (dev_isfinite(g)) {
      max_abs = fabs(g) > max_abs ? fabs(g) : max_abs;
    } else {
      bad_grad = true;
    }
  }
  const int64_t simplices = num_simplices(b, t);
  for (int64_t s = threadIdx.x; s < simplices; s += blockDim.x) {
    const Simplex x = simplex_at(b, t, s);
    acc_t sum = acc_t(0);
    for (int64_t i = x.begin; i < x.begin + x.len; ++i) {
      const acc_t p = static_cast<acc_t>(param[i]);
      if (!(p >= acc_t(0)) || !dev_isfinite(p)) bad_param = true;
      sum += p;
    }
    if (!(sum > acc_t(0))) bad_param = true;
  }
  Inspection result{0, 0.0};
  if (__syncthreads_or(bad_grad)) result.flags |= kNonFiniteGrad;
  if (__syncthreads_or(bad_param)) result.flags |= kInvalidParam;
  if (need_max) {
    for (int offset = 16; offset > 0; offset /= 2) {
      const acc_t other = __shfl_down_sync(0xffffffffu, max_abs, offset);
      max_abs = other > max_abs ? other : max_abs;
    }
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = max_abs;
    __syncthreads();
    acc_t block_max = warp_max[0];
    for (int i = 1; i < kWarps; ++i) block_max = warp_max[i] > block_max ? warp_max[i] : block_max;
    result.max_abs = static_cast<double>(block_max);
  }
  return result;
}

__device__ __forceinline__ double step_size(double lr, double max_abs, bool adaptive) {
  return adaptive && max_abs > 0.0 ? lr / max_abs : lr;
}

// Steps every simplex of tensor t with its own options (thread per simplex; no barrier inside).
template <typename scalar_t>
__device__ void step_tensor(const TensorBatch<scalar_t>& b, int t, double eta_d, bool normalize_first) {
  using acc_t = at::opmath_type<scalar_t>;
  scalar_t* param = b.param[t];
  const scalar_t* grad = b.grad[t];
  const acc_t eta = static_cast<acc_t>(eta_d);
  const acc_t reg = static_cast<acc_t>(b.entropic_reg[t]);
  const acc_t min_value = static_cast<acc_t>(b.min_value[t]);
  const bool clamp_logits = !normalize_first && b.min_value[t] > 0.0;
  const acc_t log_min = static_cast<acc_t>(b.log_min_value[t]);
  const acc_t neg_inf = -INFINITY;

  const int64_t simplices = num_simplices(b, t);
  for (int64_t s = threadIdx.x; s < simplices; s += blockDim.x) {
    const Simplex x = simplex_at(b, t, s);
    const int64_t end = x.begin + x.len;
    const acc_t log_k = dev_log(static_cast<acc_t>(x.len));

    // l_i, recomputed in each sweep (simplices are short and L1-resident). An exact zero
    // stays at -inf before the clamp (mirror descent cannot revive it).
    auto logit = [&](int64_t i) -> acc_t {
      const acc_t p = static_cast<acc_t>(param[i]);
      acc_t l = neg_inf;
      if (p > acc_t(0)) {
        const acc_t log_p = dev_log(p);
        const acc_t drive_reg = reg != acc_t(0) ? reg * (log_k + log_p + acc_t(1)) : acc_t(0);
        l = log_p - eta * (static_cast<acc_t>(grad[i]) + drive_reg);
      }
      if (clamp_logits) l = l < log_min ? log_min : l;  // std::max's rule: a NaN stays NaN (as the CPU kernel)
      return l;
    };

    acc_t m = neg_inf;
    for (int64_t i = x.begin; i < end; ++i) {
      const acc_t l = logit(i);
      m = l > m ? l : m;
    }
    if (m == neg_inf) continue;  // nothing to normalise (rejected by the inspection)
    acc_t sum = acc_t(0);
    for (int64_t i = x.begin; i < end; ++i) sum += dev_exp(logit(i) - m);
    // Divide by the sum rather than subtract log(sum): a rounded log-normaliser scales the
    // whole simplex by up to |m| ulps and breaks sum == 1 for large steps.
    // Each element is read (by logit) before it is overwritten, by this thread only.
    for (int64_t i = x.begin; i < end; ++i) {
      acc_t p = dev_exp(logit(i) - m) / sum;
      if (normalize_first) p = p < min_value ? min_value : p;
      param[i] = static_cast<scalar_t>(p);
    }
  }
}

// Fused path: one block inspects every param of the batch, then steps them all if no
// flag is set, and writes the flag (the output needs no prior fill).
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    exp_grad_fused_kernel(TensorBatch<scalar_t> batch, bool normalize_first, bool adaptive, int* found) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t warp_max[kWarps];
  __shared__ double eta[kMaxTensorsPerLaunch];
  int flags = 0;  // uniform over the block (built from __syncthreads_or results)
  for (int t = 0; t < batch.count; ++t) {
    const Inspection r = inspect_tensor(batch, t, adaptive, warp_max);
    flags |= r.flags;
    if (threadIdx.x == 0) eta[t] = step_size(batch.lr[t], r.max_abs, adaptive);
  }
  __syncthreads();  // eta[] visible to every thread; all inspection reads done
  if (flags == 0) {
    for (int t = 0; t < batch.count; ++t) step_tensor(batch, t, eta[t], normalize_first);
  }
  if (threadIdx.x == 0) *found = flags;
}

// General path, phase 1: block t inspects param t; ORs its flags into `found` (zeroed
// beforehand) and stores max|g| at max_abs[t].
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    exp_grad_inspect_kernel(TensorBatch<scalar_t> batch, bool adaptive, int* found, double* max_abs) {
  using acc_t = at::opmath_type<scalar_t>;
  __shared__ acc_t warp_max[kWarps];
  const int t = blockIdx.x;
  const Inspection r = inspect_tensor(batch, t, adaptive, warp_max);
  if (threadIdx.x == 0) {
    if (r.flags != 0) atomicOr(found, r.flags);
    max_abs[t] = r.max_abs;
  }
}

// General path, phase 2: block t steps param t unless any inspection set a flag. The
// flag was written by earlier launches on this stream, so every thread reads one value.
template <typename scalar_t>
__global__ void __launch_bounds__(kThreads)
    exp_grad_step_kernel(TensorBatch<scalar_t> batch, bool normalize_first, bool adaptive, const int* found,
                         const double* max_abs) {
  if (*found != 0) return;
  const int t = blockIdx.x;
  step_tensor(batch, t, step_size(batch.lr[t], max_abs[t], adaptive), normalize_first);
}

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
      exp_grad_fused_kernel<scalar_t>
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
          exp_grad_inspect_kernel<scalar_t>
              <<<batch.count, kThreads, 0, stream>>>(batch, adaptive, found_ptr, max_abs_ptr + offset);
        } else {
          exp_grad_step_kernel<scalar_t><<<batch.count, kThreads, 0, stream>>>(batch, normalize_first, adaptive,
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
