// CUDA emulation on the CPU: the kernels of csrc/cuda/ compiled by the host compiler and run
// with one fiber per CUDA thread, so their index arithmetic, launch configurations, block
// reductions and barriers execute (and are compared with the CPU kernels) on machines
// without a GPU. Force-included before every translated .cu file (see build.py).
//
// What is emulated: 1-3D grids and blocks; threadIdx/blockIdx/blockDim/gridDim;
// __syncthreads and __syncthreads_or; __shfl_down_sync (over the warp); atomicOr/atomicAdd;
// __shared__ memory (one block runs at a time); launch-configuration limits. Checked as
// errors: an invalid launch (empty grid or block, more than 1024 threads, a y/z grid extent
// over 65535), a barrier not reached by every thread of the block (some at another
// __syncthreads, or already exited), and full-mask warp shuffles in an incomplete warp or
// after lanes exited. Blocks run in order, or in reverse order (set_reverse_schedule), as
// do the threads between two barriers. Blocks run one after another and threads switch
// only at barriers, so data races are not found here beyond what the two orders expose
// (compute-sanitizer racecheck on a GPU does that).
#pragma once

#include <torch/library.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <type_traits>
#include <utility>

#include "cuda_runtime.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
// A block's shared arrays: function-local statics, since blocks run one at a time.
#define __shared__ static

// Set by the scheduler before it resumes a thread's fiber.
extern dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace gaea_emu {

// Barriers and warp exchange, implemented by the fiber scheduler (runtime.cpp).
void block_barrier();
int block_barrier_or(int predicate);
std::uint64_t warp_shuffle_down(unsigned int mask, std::uint64_t bits, unsigned int delta, int width);

struct LaunchConfig {
  dim3 grid, block;
  std::size_t shared_bytes;
  LaunchConfig(dim3 g, dim3 b, std::size_t smem = 0, cudaStream_t = nullptr) : grid(g), block(b), shared_bytes(smem) {}
};

// Runs `body` once per thread of every block of `config`; throws on an invalid launch or a
// barrier error.
void run_grid(const LaunchConfig& config, const std::function<void()>& body);

// Reverse order: blocks last to first, and threads between barriers last to first.
void set_reverse_schedule(bool reverse);

template <typename Kernel, typename... Args>
void launch(const LaunchConfig& config, Kernel kernel, Args... args) {
  run_grid(config, [&]() { kernel(args...); });
}

// Kernels by name, for launches through a cuLaunchKernel-like interface (the NVRTC backend's
// Python launchers, gaea_ext/cupy_backend.py): `args` holds one pointer per kernel parameter,
// as cuLaunchKernel's kernelParams. build.py generates the table from gaea_ext.nvrtc.KERNELS
// (the NVRTC name expressions, with the half types spelt c10::Half / c10::BFloat16).
using PackedLaunch = void (*)(const LaunchConfig& config, void** args);
struct NamedKernel {
  NamedKernel(const char* name, PackedLaunch launch);  // registers the kernel (runtime.cpp)
};

template <typename... Params, std::size_t... I>
void launch_packed(const LaunchConfig& config, void (*kernel)(Params...), void** args, std::index_sequence<I...>) {
  launch(config, kernel, *static_cast<std::remove_cv_t<std::remove_reference_t<Params>>*>(args[I])...);
}

template <typename... Params>
void launch_packed(const LaunchConfig& config, void (*kernel)(Params...), void** args) {
  launch_packed(config, kernel, args, std::index_sequence_for<Params...>{});
}

// The ops of the translated files register here (namespace gaea_ext_cuda_emulated, schemas
// inferred from the C++ signatures) instead of under the CUDA key of gaea_ext.
torch::Library& emulated_library();

struct EmulatedLibrary {
  template <typename Fn>
  EmulatedLibrary& impl(const char* name, Fn&& fn) {
    emulated_library().def(name, std::forward<Fn>(fn));
    return *this;
  }
};

struct Registrar {
  explicit Registrar(void (*init)(EmulatedLibrary&)) {
    EmulatedLibrary lib;
    init(lib);
  }
};

}  // namespace gaea_emu

#undef TORCH_LIBRARY_IMPL
#define GAEA_EMU_CAT2(a, b) a##b
#define GAEA_EMU_CAT(a, b) GAEA_EMU_CAT2(a, b)
#define TORCH_LIBRARY_IMPL(ns, key, m)                                                                  \
  static void GAEA_EMU_CAT(gaea_emu_init_, __LINE__)(::gaea_emu::EmulatedLibrary&);                     \
  static const ::gaea_emu::Registrar GAEA_EMU_CAT(gaea_emu_registrar_, __LINE__)(                       \
      &GAEA_EMU_CAT(gaea_emu_init_, __LINE__));                                                         \
  void GAEA_EMU_CAT(gaea_emu_init_, __LINE__)(::gaea_emu::EmulatedLibrary & m)

inline void __syncthreads() { gaea_emu::block_barrier(); }
inline int __syncthreads_or(int predicate) { return gaea_emu::block_barrier_or(predicate); }

template <typename T>
T __shfl_down_sync(unsigned int mask, T value, unsigned int delta, int width = 32) {
  static_assert(sizeof(T) <= sizeof(std::uint64_t) && std::is_trivially_copyable<T>::value, "shuffle of a word");
  std::uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof(T));
  bits = gaea_emu::warp_shuffle_down(mask, bits, delta, width);
  std::memcpy(&value, &bits, sizeof(T));
  return value;
}

// Threads interleave only at barriers, so read-modify-writes are atomic here.
template <typename T>
T atomicOr(T* address, T value) {
  const T old = *address;
  *address = old | value;
  return old;
}
template <typename T>
T atomicAdd(T* address, T value) {
  const T old = *address;
  *address = old + value;
  return old;
}

// CUDA's arithmetic min/max overloads (device code calls them unqualified).
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> max(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) > static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
template <typename A, typename B,
          typename = std::enable_if_t<std::is_arithmetic<A>::value && std::is_arithmetic<B>::value>>
inline std::common_type_t<A, B> min(A a, B b) {
  using C = std::common_type_t<A, B>;
  return static_cast<C>(a) < static_cast<C>(b) ? static_cast<C>(a) : static_cast<C>(b);
}
using std::isfinite;
