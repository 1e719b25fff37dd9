// Device code of gaea_ext::exp_grad_step_ (host launch logic: csrc/cuda/exp_grad_cuda.cu;
// NVRTC launchers: gaea_ext/cupy_backend.py).
//
// Two phases: inspect every param (non-finite grad -> kNonFiniteGrad, negative or
// non-finite entry or a simplex summing to 0 -> kInvalidParam; max|g| for the adaptive
// rate), then, only if no flag is set anywhere, step every simplex in the log domain.
// exp_grad_fused_kernel does both in one block for a small batch; exp_grad_inspect_kernel
// and exp_grad_step_kernel (one block per param) are the general path.
#pragma once

#include "limits.cuh"

// INFINITY without <cmath> (which NVRTC lacks): glibc's definition, or the bit pattern.
#ifdef __CUDACC_RTC__
#define GAEA_KERNELS_INFINITY __int_as_float(0x7f800000)
#else
#define GAEA_KERNELS_INFINITY __builtin_inff()
#endif

namespace gaea_kernels {
namespace exp_grad {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Tensors and segments per launch (csrc/cuda_limits.h). A batch carries 72 bytes per tensor
// plus 8 per segment; with the other kernel arguments it stays under the 4 KB
// kernel-parameter limit (static_assert below). Params beyond either limit go to further
// batches; a single param may have at most kMaxSegments segments.
constexpr int kMaxTensorsPerLaunch = kMaxExpGradParamsPerLaunch;
constexpr int kMaxSegments = kMaxExpGradSegments;
// Largest total element count the single-block fused path takes (the DARTS alphas and
// edge weights are ~250 elements); beyond it one block per param is faster.
constexpr long long kFusedMaxNumel = 16384;

// Per tensor i of a batch: pointers, shape, and its options. Its simplices are the rows
// (length row[i]) split by seg_count[i] segments whose starts within the row are
// seg_start[seg_first[i]] .. seg_start[seg_first[i] + seg_count[i] - 1] (the first one is
// 0, the last segment ends at row[i]); seg_count[i] == 0: one simplex per row.
template <typename T>
struct TensorBatch {
  T* param[kMaxTensorsPerLaunch];
  const T* grad[kMaxTensorsPerLaunch];
  long long numel[kMaxTensorsPerLaunch];
  long long row[kMaxTensorsPerLaunch];  // length of the last dimension
  double lr[kMaxTensorsPerLaunch];
  double min_value[kMaxTensorsPerLaunch];
  double log_min_value[kMaxTensorsPerLaunch];  // log(min_value) in double; unused when min_value == 0
  double entropic_reg[kMaxTensorsPerLaunch];
  int seg_first[kMaxTensorsPerLaunch];
  int seg_count[kMaxTensorsPerLaunch];
  long long seg_start[kMaxSegments];  // shared by the tensors of the batch
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
  long long begin;
  long long len;
};

// Simplex s of tensor t: row s / seg_count, segment s % seg_count.
template <typename T>
__device__ __forceinline__ Simplex simplex_at(const TensorBatch<T>& b, int t, long long s) {
  const long long row = b.row[t];
  const int count = b.seg_count[t];
  if (count == 0) return {s * row, row};
  const long long r = s / count;
  const int seg = static_cast<int>(s % count);
  const int first = b.seg_first[t];
  const long long start = b.seg_start[first + seg];
  const long long stop = seg + 1 < count ? b.seg_start[first + seg + 1] : row;
  return {r * row + start, stop - start};
}

template <typename T>
__device__ __forceinline__ long long num_simplices(const TensorBatch<T>& b, int t) {
  return (b.numel[t] / b.row[t]) * (b.seg_count[t] > 0 ? b.seg_count[t] : 1);
}

struct Inspection {
  int flags;       // kNonFiniteGrad | kInvalidParam
  double max_abs;  // max |g| over the finite entries (only when asked for)
};

// Block-wide inspection of tensor t; every thread of the block gets the same result.
// `warp_max` (shared) is written only after the two __syncthreads_or barriers below, so
// a previous call's readers are done with it.
template <typename T, typename Acc>
__device__ Inspection inspect_tensor(const TensorBatch<T>& b, int t, bool need_max,
                                     Acc* warp_max) {
  const T* param = b.param[t];
  const T* grad = b.grad[t];
  const long long numel = b.numel[t];
  bool bad_grad = false;
  bool bad_param = false;
  Acc max_abs = Acc(0);
  for (long long i = threadIdx.x; i < numel; i += blockDim.x) {
    const Acc g = static_cast<Acc>(grad[i]);
    if (dev_isfinite(g)) {
      max_abs = fabs(g) > max_abs ? fabs(g) : max_abs;
    } else {
      bad_grad = true;
    }
  }
  const long long simplices = num_simplices(b, t);
  for (long long s = threadIdx.x; s < simplices; s += blockDim.x) {
    const Simplex x = simplex_at(b, t, s);
    Acc sum = Acc(0);
    for (long long i = x.begin; i < x.begin + x.len; ++i) {
      const Acc p = static_cast<Acc>(param[i]);
      if (!(p >= Acc(0)) || !dev_isfinite(p)) bad_param = true;
      sum += p;
    }
    if (!(sum > Acc(0))) bad_param = true;
  }
  Inspection result{0, 0.0};
  if (__syncthreads_or(bad_grad)) result.flags |= kNonFiniteGrad;
  if (__syncthreads_or(bad_param)) result.flags |= kInvalidParam;
  if (need_max) {
    for (int offset = 16; offset > 0; offset /= 2) {
      const Acc other = __shfl_down_sync(0xffffffffu, max_abs, offset);
      max_abs = other > max_abs ? other : max_abs;
    }
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = max_abs;
    __syncthreads();
    Acc block_max = warp_max[0];
    for (int i = 1; i < kWarps; ++i) block_max = warp_max[i] > block_max ? warp_max[i] : block_max;
    result.max_abs = static_cast<double>(block_max);
  }
  return result;
}

__device__ __forceinline__ double step_size(double lr, double max_abs, bool adaptive) {
  return adaptive && max_abs > 0.0 ? lr / max_abs : lr;
}

// Steps every simplex of tensor t with its own options (thread per simplex; no barrier inside).
template <typename T, typename Acc>
__device__ void step_tensor(const TensorBatch<T>& b, int t, double eta_d, bool normalize_first) {
  T* param = b.param[t];
  const T* grad = b.grad[t];
  const Acc eta = static_cast<Acc>(eta_d);
  const Acc reg = static_cast<Acc>(b.entropic_reg[t]);
  const Acc min_value = static_cast<Acc>(b.min_value[t]);
  const bool clamp_logits = !normalize_first && b.min_value[t] > 0.0;
  const Acc log_min = static_cast<Acc>(b.log_min_value[t]);
  const Acc neg_inf = -static_cast<Acc>(GAEA_KERNELS_INFINITY);

  const long long simplices = num_simplices(b, t);
  for (long long s = threadIdx.x; s < simplices; s += blockDim.x) {
    const Simplex x = simplex_at(b, t, s);
    const long long end = x.begin + x.len;
    const Acc log_k = dev_log(static_cast<Acc>(x.len));

    // l_i, recomputed in each sweep (simplices are short and L1-resident). An exact zero
    // stays at -inf before the clamp (mirror descent cannot revive it).
    auto logit = [&](long long i) -> Acc {
      const Acc p = static_cast<Acc>(param[i]);
      Acc l = neg_inf;
      if (p > Acc(0)) {
        const Acc log_p = dev_log(p);
        const Acc drive_reg = reg != Acc(0) ? reg * (log_k + log_p + Acc(1)) : Acc(0);
        l = log_p - eta * (static_cast<Acc>(grad[i]) + drive_reg);
      }
      if (clamp_logits) l = l < log_min ? log_min : l;  // std::max's rule: a NaN stays NaN (as the CPU kernel)
      return l;
    };

    Acc m = neg_inf;
    for (long long i = x.begin; i < end; ++i) {
      const Acc l = logit(i);
      m = l > m ? l : m;
    }
    if (m == neg_inf) continue;  // nothing to normalise (rejected by the inspection)
    Acc sum = Acc(0);
    for (long long i = x.begin; i < end; ++i) sum += dev_exp(logit(i) - m);
    // Divide by the sum rather than subtract log(sum): a rounded log-normaliser scales the
    // whole simplex by up to |m| ulps and breaks sum == 1 for large steps.
    // Each element is read (by logit) before it is overwritten, by this thread only.
    for (long long i = x.begin; i < end; ++i) {
      Acc p = dev_exp(logit(i) - m) / sum;
      if (normalize_first) p = p < min_value ? min_value : p;
      param[i] = static_cast<T>(p);
    }
  }
}

// Fused path: one block inspects every param of the batch, then steps them all if no
// flag is set, and writes the flag (the output needs no prior fill).
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    exp_grad_fused_kernel(TensorBatch<T> batch, bool normalize_first, bool adaptive, int* found) {
  __shared__ Acc warp_max[kWarps];
  __shared__ double eta[kMaxTensorsPerLaunch];
  int flags = 0;  // uniform over the block (built from __syncthreads_or results)
  for (int t = 0; t < batch.count; ++t) {
    const Inspection r = inspect_tensor<T, Acc>(batch, t, adaptive, warp_max);
    flags |= r.flags;
    if (threadIdx.x == 0) eta[t] = step_size(batch.lr[t], r.max_abs, adaptive);
  }
  __syncthreads();  // eta[] visible to every thread; all inspection reads done
  if (flags == 0) {
    for (int t = 0; t < batch.count; ++t) step_tensor<T, Acc>(batch, t, eta[t], normalize_first);
  }
  if (threadIdx.x == 0) *found = flags;
}

// General path, phase 1: block t inspects param t; ORs its flags into `found` (zeroed
// beforehand) and stores max|g| at max_abs[t].
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    exp_grad_inspect_kernel(TensorBatch<T> batch, bool adaptive, int* found, double* max_abs) {
  __shared__ Acc warp_max[kWarps];
  const int t = blockIdx.x;
  const Inspection r = inspect_tensor<T, Acc>(batch, t, adaptive, warp_max);
  if (threadIdx.x == 0) {
    if (r.flags != 0) atomicOr(found, r.flags);
    max_abs[t] = r.max_abs;
  }
}

// General path, phase 2: block t steps param t unless any inspection set a flag. The
// flag was written by earlier launches on this stream, so every thread reads one value.
template <typename T, typename Acc>
__global__ void __launch_bounds__(kThreads)
    exp_grad_step_kernel(TensorBatch<T> batch, bool normalize_first, bool adaptive, const int* found,
                         const double* max_abs) {
  if (*found != 0) return;
  const int t = blockIdx.x;
  step_tensor<T, Acc>(batch, t, step_size(batch.lr[t], max_abs[t], adaptive), normalize_first);
}

}  // namespace exp_grad
}  // namespace gaea_kernels
