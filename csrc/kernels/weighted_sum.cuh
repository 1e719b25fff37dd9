// Device code of gaea_ext::weighted_sum and gaea_ext::weighted_sum_backward (host launch
// logic: csrc/cuda/weighted_sum_cuda.cu; NVRTC launchers: gaea_ext/cupy_backend.py).
//
// Forward: one grid-stride streaming kernel per group of up to kMaxK inputs (pointers passed
// by value); VEC elements (16 bytes) per input per step when every pointer is 16-byte
// aligned, else one. Backward: each block owns a fixed chunk of kBwdChunk elements, scales
// grad_out into the requested input gradients and writes one block partial of
// <inputs[k], grad_out> per k; reduce_partials_kernel sums the partials of each k in a fixed
// order. No float atomics, so the weight gradient is bitwise reproducible.
#pragma once

#include "limits.cuh"

namespace gaea_kernels {
namespace weighted_sum {

constexpr int kMaxK = kMaxInputsPerLaunch;
constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Forward: resident blocks per SM the grid is sized for (__launch_bounds__ keeps it possible).
constexpr int kFwdBlocksPerSm = 4;
// Backward: elements per thread and per block. A compile-time constant, so the partial
// sums (and hence the result) do not depend on the device.
constexpr int kBwdItems = 8;
constexpr long long kBwdChunk = kThreads * kBwdItems;

// N elements moved as one access: 16 bytes for the vector path, one element otherwise.
template <typename T, int N>
struct alignas(sizeof(T) * N >= 16 ? 16 : sizeof(T) * N) Vec {
  T v[N];
};

template <typename T>
struct InputPtrs {
  const T* ptr[kMaxK];
};

template <typename T>
struct GradPtrs {
  T* ptr[kMaxK];  // nullptr: that input needs no gradient
};

template <int N, typename T>
__device__ __forceinline__ Vec<T, N> load_vec(const T* p) {
  return *reinterpret_cast<const Vec<T, N>*>(p);
}

template <int N, typename T>
__device__ __forceinline__ void store_vec(T* p, const Vec<T, N>& v) {
  *reinterpret_cast<Vec<T, N>*>(p) = v;
}

// out[i] = (prev ? prev[i] : 0) + sum_{k<K} w[k] * ys[k][i] over the flat range [0, n).
// prev (accumulation type) carries the sum of earlier input groups when K > kMaxK; it may
// alias out, which is safe because each element is read and written by the same thread.
template <typename T, typename Acc, typename Out, int VEC>
__global__ void __launch_bounds__(kThreads, kFwdBlocksPerSm)
    weighted_sum_kernel(InputPtrs<T> ys, const Acc* w, int K, const Acc* prev, Out* out, long long n) {
  __shared__ Acc w_s[kMaxK];
  for (int k = threadIdx.x; k < K; k += blockDim.x) w_s[k] = w[k];
  __syncthreads();

  const long long stride = static_cast<long long>(gridDim.x) * blockDim.x;
  const long long tid = static_cast<long long>(blockIdx.x) * blockDim.x + threadIdx.x;
  const long long nvec = n / VEC;
  for (long long v = tid; v < nvec; v += stride) {
    const long long base = v * VEC;
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
      const Acc wk = w_s[k];
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc[j] += wk * static_cast<Acc>(y.v[j]);
    }
    Vec<Out, VEC> o;
#pragma unroll
    for (int j = 0; j < VEC; ++j) o.v[j] = static_cast<Out>(acc[j]);
    store_vec<VEC>(out + base, o);
  }
  // Tail (fewer than VEC elements), one element per thread.
  for (long long i = nvec * VEC + tid; i < n; i += stride) {
    Acc acc = prev != nullptr ? prev[i] : Acc(0);
    for (int k = 0; k < K; ++k) acc += w_s[k] * static_cast<Acc>(ys.ptr[k][i]);
    out[i] = static_cast<Out>(acc);
  }
}

template <typename Acc>
__device__ __forceinline__ Acc warp_sum(Acc x) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) x += __shfl_down_sync(0xffffffffu, x, offset);
  return x;  // complete in lane 0
}

// Block b owns elements [b * kBwdChunk, (b + 1) * kBwdChunk). Thread t owns the VEC-wide
// groups t, t + kThreads, ... of that chunk and keeps its grad_out values in registers.
// For each of the K inputs of this launch: grad_inputs[k] = w[k] * g (if requested) and,
// if partials != nullptr, partials[k * num_blocks + b] = sum over the chunk of ys[k] * g,
// summed per thread in element order, then across lanes and warps in a fixed tree order.
template <typename T, typename Acc, int VEC>
__global__ void __launch_bounds__(kThreads)
    weighted_sum_backward_kernel(const T* g_ptr, InputPtrs<T> ys, GradPtrs<T> grads, const Acc* w, int K,
                                 long long n, Acc* partials, long long num_blocks) {
  constexpr int kGroups = kBwdItems / VEC;
  static_assert(kBwdItems % VEC == 0, "a thread owns whole vectors");
  __shared__ Acc warp_partials[kMaxK][kWarps];

  const long long chunk = static_cast<long long>(blockIdx.x) * kBwdChunk;
  Acc g[kGroups][VEC];
#pragma unroll
  for (int s = 0; s < kGroups; ++s) {
    const long long base = chunk + (static_cast<long long>(s) * kThreads + threadIdx.x) * VEC;
    if (base + VEC <= n) {
      const Vec<T, VEC> x = load_vec<VEC>(g_ptr + base);
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[s][j] = static_cast<Acc>(x.v[j]);
    } else {
#pragma unroll
      for (int j = 0; j < VEC; ++j) g[s][j] = base + j < n ? static_cast<Acc>(g_ptr[base + j]) : Acc(0);
    }
  }

  const bool dots = partials != nullptr;  // uniform over the grid
  const int lane = threadIdx.x % 32;
  const int warp = threadIdx.x / 32;
  for (int k = 0; k < K; ++k) {
    const Acc wk = w[k];
    T* gi = grads.ptr[k];
    const T* y = ys.ptr[k];
    Acc dot = Acc(0);
#pragma unroll
    for (int s = 0; s < kGroups; ++s) {
      const long long base = chunk + (static_cast<long long>(s) * kThreads + threadIdx.x) * VEC;
      if (base + VEC <= n) {
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
          if (base + j < n) {
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

// grad_weights[k] = sum_b partials[k * num_blocks + b], in double, one block per k:
// thread t sums b = t, t + kThreads, ... in order, then a fixed tree across the block.
template <typename Acc>
__global__ void __launch_bounds__(kThreads)
    reduce_partials_kernel(const Acc* partials, long long num_blocks, Acc* grad_weights) {
  __shared__ double warp_totals[kWarps];
  const Acc* row = partials + static_cast<long long>(blockIdx.x) * num_blocks;
  double total = 0.0;
  for (long long b = threadIdx.x; b < num_blocks; b += blockDim.x) total += static_cast<double>(row[b]);
  total = warp_sum(total);
  if (threadIdx.x % 32 == 0) warp_totals[threadIdx.x / 32] = total;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0.0;
#pragma unroll
    for (int i = 0; i < kWarps; ++i) sum += warp_totals[i];
    grad_weights[blockIdx.x] = static_cast<Acc>(sum);
  }
}

}  // namespace weighted_sum
}  // namespace gaea_kernels
