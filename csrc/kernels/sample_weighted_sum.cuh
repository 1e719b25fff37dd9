// Device code of gaea_ext::sample_weighted_sum and its backward (torch-free: compiled by nvcc
// through csrc/cuda/sample_weighted_sum_cuda.cu, and by NVRTC with CUDA's built-in headers).
//
// The inputs are K tensors of one shape [N, ...] in one layout whose batch dimension is
// outermost (contiguous or channels_last), walked as flat storage: element i belongs to
// sample i / inner, inner = numel / N. The weights are [K, N] in the accumulation type.
//
// Forward: a grid-stride streaming kernel over up to kSampleSumMaxInputs inputs per launch;
// VEC elements per access when every pointer is 16-byte aligned and inner % VEC == 0 (a
// vector never straddles two samples). Larger K chains launches through an Acc buffer.
//
// Backward: block b owns a fixed chunk of kSampleSumBwdChunk elements inside one sample
// (sample b / chunks_per_sample), scales grad_out into the requested input gradients and
// writes one partial of <inputs[k][sample], grad_out[sample]> per k; a second kernel sums
// the partials of each (k, sample) in chunk order, in double. No float atomics: the weight
// gradient is bitwise reproducible and independent of the device.
#pragma once

namespace gaea_kernels {

// Threads per block of every kernel here.
constexpr int kSampleSumThreads = 256;
// Inputs one launch mixes (their pointers travel by value in the launch arguments).
constexpr int kSampleSumMaxInputs = 64;
// Backward: elements per thread, and per block (a compile-time chunk, so the partial sums do
// not depend on the device).
constexpr int kSampleSumBwdItems = 8;
constexpr long long kSampleSumBwdChunk = static_cast<long long>(kSampleSumThreads) * kSampleSumBwdItems;
// Forward: a cap on the grid (the kernel strides over the rest).
constexpr long long kSampleSumMaxBlocks = 65535;

template <typename T>
struct SampleSumInputs {
  const T* ptr[kSampleSumMaxInputs];
};

template <typename T>
struct SampleSumGrads {
  T* ptr[kSampleSumMaxInputs];  // nullptr: that input needs no gradient
};

namespace sample_sum_detail {

constexpr int kWarps = kSampleSumThreads / 32;

// N elements moved as one access: 16 bytes for the vector path, one element otherwise.
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Vec {
  T v[N];
};

template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

template <typename A>
__device__ __forceinline__ A warp_sum(A x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;  // complete in lane 0
}

}  // namespace sample_sum_detail

// out[i] = (prev ? prev[i] : 0) + sum_{k<K} w[k * samples + i / inner] * ys[k][i] over the flat
// range [0, n). prev (Acc) carries the sum of earlier input groups when K > kSampleSumMaxInputs;
// it may alias out (each element is read and written by the same thread).
template <typename T, typename Acc, typename Out, int VEC>
__global__ void __launch_bounds__(kSampleSumThreads)
    sample_weighted_sum_kernel(SampleSumInputs<T> ys, const Acc* w, int K, long long samples, long long inner,
                               const Acc* prev, Out* out, long long n) {
  using namespace sample_sum_detail;
  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long nvec = n / VEC;
  for (long long v = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x; v < nvec; v += stride) {
    const long long base = v * VEC;
    const long long sample = base / inner;
    Acc acc[VEC];
    if (prev != nullptr) {
      const Vec<Acc, VEC> p = load_vec<VEC>(prev + base);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = p.v[j];
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] = Acc(0);
    }
#pragma unroll 4
    for (int k = 0; k < K; ++k) {
      const Vec<T, VEC> y = load_vec<VEC>(ys.ptr[k] + base);
      const Acc wk = w[k * samples + sample];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += wk * static_cast<Acc>(y.v[j]);
    }
    Vec<Out, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<Out>(acc[j]);
    store_vec<VEC>(out + base, o);
  }
}

// Block b owns elements [start, end) of sample b / chunks_per_sample: start = sample * inner +
// (b % chunks_per_sample) * kSampleSumBwdChunk, end = min(start + chunk, (sample + 1) * inner).
// Thread t owns the VEC-wide groups t, t + threads, ... of the chunk and keeps its grad_out
// values in registers. For each of the K inputs of this launch: grads[k] = w[k, sample] * g (if
// requested) and, if partials != nullptr, partials[k * num_blocks + b] = the chunk's sum of
// ys[k] * g, per thread in element order, then across lanes and warps in a fixed tree order.
template <typename T, typename Acc, int VEC>
__global__ void __launch_bounds__(kSampleSumThreads)
    sample_weighted_sum_backward_kernel(const T* g_ptr, SampleSumInputs<T> ys, SampleSumGrads<T> grads, const Acc* w,
                                        int K, long long samples, long long inner, long long chunks_per_sample,
                                        Acc* partials, long long num_blocks) {
  using namespace sample_sum_detail;
  constexpr int kGroups = kSampleSumBwdItems / VEC;
  static_assert(kSampleSumBwdItems % VEC == 0, "a thread owns whole vectors");
  __shared__ Acc warp_partials[kSampleSumMaxInputs][kWarps];

  const long long sample = static_cast<long long>(blockIdx.x) / chunks_per_sample;
  const long long start = sample * inner + (static_cast<long long>(blockIdx.x) % chunks_per_sample) * kSampleSumBwdChunk;
  const long long sample_end = (sample + 1) * inner;
  const long long end = start + kSampleSumBwdChunk < sample_end ? start + kSampleSumBwdChunk : sample_end;
  Acc g[kGroups][VEC];
#pragma unroll
  for (int s = 0; s < kGroups; ++s) {
    const long long base = start + (static_cast<long long>(s) * kSampleSumThreads + threadIdx.x) * VEC;
    if (base + VEC <= end) {
      const Vec<T, VEC> x = load_vec<VEC>(g_ptr + base);
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[s][j] = static_cast<Acc>(x.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[s][j] = base + j < end ? static_cast<Acc>(g_ptr[base + j]) : Acc(0);
    }
  }

  const bool dots = partials != nullptr;  // uniform over the grid
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k) {
    const Acc wk = w[k * samples + sample];
    T* gi = grads.ptr[k];
    const T* y = ys.ptr[k];
    Acc dot = Acc(0);
#pragma unroll
    for (int s = 0; s < kGroups; ++s) {
      const long long base = start + (static_cast<long long>(s) * kSampleSumThreads + threadIdx.x) * VEC;
      if (base + VEC <= end) {
        if (gi != nullptr) {
          Vec<T, VEC> o;
#pragma unroll
          for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<T>(wk * g[s][j]);
          store_vec<VEC>(gi + base, o);
        }
        if (dots) {
          const Vec<T, VEC> x = load_vec<VEC>(y + base);
#pragma unroll
          for (int j = 0; j < VEC; ++j) dot += static_cast<Acc>(x.v[j]) * g[s][j];
        }
      } else {
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          if (base + j < end) {
            if (gi != nullptr) gi[base + j] = static_cast<T>(wk * g[s][j]);
            if (dots) dot += static_cast<Acc>(y[base + j]) * g[s][j];
          }
        }
      }
    }
    if (dots) {
      dot = warp_sum(dot);
      if (lane == 0) warp_partials[k][warp] = dot;
    }
  }
  if (dots) {
    // warp_partials is written once per (k, warp) above and only read below: one barrier.
    __syncthreads();
    for (int k = threadIdx.x; k < K; k += blockDim.x) {
      Acc total = Acc(0);
#pragma unroll
      for (int i = 0; i < kWarps; ++i) total += warp_partials[k][i];
      partials[static_cast<long long>(k) * num_blocks + blockIdx.x] = total;
    }
  }
}

// out[r] = sum_c partials[r * cols + c] for r < rows, one thread per row, summed in c order in
// double (the partials of one (k, sample) are its chunks, in order).
template <typename Acc>
__global__ void __launch_bounds__(kSampleSumThreads)
    sample_weighted_sum_reduce_kernel(const Acc* partials, long long rows, long long cols, Acc* out) {
  const long long r = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (r >= rows) return;
  const Acc* row = partials + r * cols;
  double total = 0.0;
  for (long long c = 0; c < cols; ++c) total += static_cast<double>(row[c]);
  out[r] = static_cast<Acc>(total);
}

}  // namespace gaea_kernels
