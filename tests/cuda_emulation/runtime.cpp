// The CUDA emulation's scheduler: every thread of a block is a fiber (ucontext) on the
// calling OS thread. Fibers run in thread order until they finish or reach a barrier; a
// barrier is released when every live thread it spans (the block, or the warp for a
// shuffle) is waiting at it, and the scheduler computes what the barrier returns
// (__syncthreads_or's OR, each lane's shuffled word). Blocks run one at a time.
#include <sys/mman.h>
#include <ucontext.h>

#include <algorithm>
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda_emulation.h"

dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace gaea_emu {
namespace {

constexpr std::size_t kStackBytes = 256 * 1024;
constexpr unsigned int kWarpSize = 32;

enum class Wait { kNone, kBlock, kWarp };

struct Fiber {
  ucontext_t context;
  char* stack = nullptr;
  bool done = false;
  Wait wait = Wait::kNone;
  std::uint64_t barriers_passed = 0;  // block barriers: equal over the block or they diverged
  std::uint64_t shuffles_passed = 0;
  std::uint64_t word = 0;             // what this thread brings to / gets from the barrier
  unsigned int mask = 0, delta = 0;
};

struct Scheduler {
  ucontext_t main_context;
  std::vector<Fiber> fibers;
  unsigned int current = 0;
  const std::function<void()>* body = nullptr;
  std::string error;  // set inside a fiber, thrown by the scheduler (never across contexts)
  bool reverse = false;  // run blocks, and threads between barriers, in reverse order
} state;

void fiber_main() {
  (*state.body)();
  state.fibers[state.current].done = true;
  // returning resumes uc_link: the scheduler
}

void set_thread_index(unsigned int linear) {
  threadIdx.x = linear % blockDim.x;
  threadIdx.y = (linear / blockDim.x) % blockDim.y;
  threadIdx.z = linear / (blockDim.x * blockDim.y);
}

void wait_here(Wait kind) {
  Fiber& f = state.fibers[state.current];
  f.wait = kind;
  swapcontext(&f.context, &state.main_context);
}

void ensure_stacks(std::size_t count) {
  while (state.fibers.size() < count) {
    Fiber f;
    void* mem = mmap(nullptr, kStackBytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) throw std::runtime_error("CUDA emulation: cannot map a fiber stack");
    mprotect(mem, 4096, PROT_NONE);  // guard page: an overflow faults instead of corrupting
    f.stack = static_cast<char*>(mem);
    state.fibers.push_back(f);
  }
}

// All live threads of [begin, end) wait at `kind`: true. Some wait at another kind while none
// runs: a deadlock, reported as divergence.
bool all_waiting(unsigned int begin, unsigned int end, Wait kind) {
  bool any = false;
  for (unsigned int t = begin; t < end; ++t) {
    const Fiber& f = state.fibers[t];
    if (f.done) continue;
    if (f.wait != kind) return false;
    any = true;
  }
  return any;
}

void release_block(unsigned int n) {
  std::uint64_t any = 0, passed = 0;
  bool first = true;
  for (unsigned int t = 0; t < n; ++t) {
    Fiber& f = state.fibers[t];
    if (f.done)  // undefined on a GPU (it may hang): a barrier must be reached by the whole block
      throw std::runtime_error("CUDA emulation: threads of block " + std::to_string(blockIdx.x) +
                               " wait at __syncthreads after others exited (divergent barrier)");
    if (!first && f.barriers_passed != passed)
      throw std::runtime_error("CUDA emulation: threads of block " + std::to_string(blockIdx.x) +
                               " wait at different __syncthreads (divergent barrier)");
    first = false;
    passed = f.barriers_passed;
    any |= f.word != 0;
  }
  for (unsigned int t = 0; t < n; ++t) {
    Fiber& f = state.fibers[t];
    if (f.done) continue;
    f.wait = Wait::kNone;
    f.word = any;
    ++f.barriers_passed;
  }
}

void release_warp(unsigned int begin, unsigned int end) {
  std::vector<std::uint64_t> words(kWarpSize, 0);
  for (unsigned int t = begin; t < end; ++t) {
    const Fiber& f = state.fibers[t];
    if (f.done || f.mask != 0xffffffffu) continue;
    if (end - begin != kWarpSize)
      throw std::runtime_error("CUDA emulation: full-mask warp shuffle in an incomplete warp (block of " +
                               std::to_string(blockDim.x * blockDim.y * blockDim.z) + " threads)");
  }
  for (unsigned int t = begin; t < end; ++t) {
    const Fiber& f = state.fibers[t];
    if (f.done) {
      throw std::runtime_error("CUDA emulation: warp shuffle after some lanes of the warp exited");
    }
    if (f.shuffles_passed != state.fibers[begin].shuffles_passed || f.delta != state.fibers[begin].delta)
      throw std::runtime_error("CUDA emulation: lanes of a warp at different shuffles");
    words[t - begin] = f.word;
  }
  for (unsigned int t = begin; t < end; ++t) {
    Fiber& f = state.fibers[t];
    const unsigned int src = t - begin + f.delta;
    f.word = src < end - begin ? words[src] : f.word;
    f.wait = Wait::kNone;
    ++f.shuffles_passed;
  }
}

void run_block(unsigned int n) {
  for (unsigned int t = 0; t < n; ++t) {
    Fiber& f = state.fibers[t];
    f.done = false;
    f.wait = Wait::kNone;
    f.barriers_passed = f.shuffles_passed = 0;
    getcontext(&f.context);
    f.context.uc_stack.ss_sp = f.stack;
    f.context.uc_stack.ss_size = kStackBytes;
    f.context.uc_link = &state.main_context;
    makecontext(&f.context, fiber_main, 0);
  }
  while (true) {
    bool live = false;
    for (unsigned int k = 0; k < n; ++k) {
      const unsigned int t = state.reverse ? n - 1 - k : k;
      Fiber& f = state.fibers[t];
      if (f.done || f.wait != Wait::kNone) continue;
      state.current = t;
      set_thread_index(t);
      swapcontext(&state.main_context, &f.context);
      if (!state.error.empty()) throw std::runtime_error(state.error);
    }
    for (unsigned int t = 0; t < n; ++t) live = live || !state.fibers[t].done;
    if (!live) return;
    bool released = false;
    if (all_waiting(0, n, Wait::kBlock)) {
      release_block(n);
      released = true;
    } else {
      for (unsigned int w = 0; w < n; w += kWarpSize) {
        const unsigned int end = std::min(n, w + kWarpSize);
        if (all_waiting(w, end, Wait::kWarp)) {
          release_warp(w, end);
          released = true;
        }
      }
    }
    if (!released)
      throw std::runtime_error("CUDA emulation: block " + std::to_string(blockIdx.x) +
                               " cannot make progress (threads wait at a block barrier and a warp shuffle)");
  }
}

}  // namespace

void block_barrier() { block_barrier_or(0); }

int block_barrier_or(int predicate) {
  state.fibers[state.current].word = predicate != 0;
  wait_here(Wait::kBlock);
  return static_cast<int>(state.fibers[state.current].word);
}

std::uint64_t warp_shuffle_down(unsigned int mask, std::uint64_t bits, unsigned int delta, int width) {
  if (width != static_cast<int>(kWarpSize)) {
    state.error = "CUDA emulation: only width 32 shuffles are emulated";
    return bits;
  }
  Fiber& f = state.fibers[state.current];
  f.word = bits;
  f.mask = mask;
  f.delta = delta;
  wait_here(Wait::kWarp);
  return state.fibers[state.current].word;
}

void run_grid(const LaunchConfig& c, const std::function<void()>& body) {
  const std::uint64_t threads = std::uint64_t{c.block.x} * c.block.y * c.block.z;
  if (c.grid.x == 0 || c.grid.y == 0 || c.grid.z == 0 || threads == 0)
    throw std::runtime_error("CUDA emulation: invalid launch: empty grid or block");
  if (threads > 1024 || c.block.z > 64)
    throw std::runtime_error("CUDA emulation: invalid launch: " + std::to_string(threads) + " threads per block");
  if (c.grid.x > 2147483647u || c.grid.y > 65535 || c.grid.z > 65535)
    throw std::runtime_error("CUDA emulation: invalid launch: grid too large");
  if (c.shared_bytes > 48 * 1024) throw std::runtime_error("CUDA emulation: more than 48 KiB of dynamic shared memory");
  ensure_stacks(threads);
  state.body = &body;
  state.error.clear();
  gridDim = c.grid;
  blockDim = c.block;
  const std::uint64_t blocks = std::uint64_t{c.grid.x} * c.grid.y * c.grid.z;
  for (std::uint64_t k = 0; k < blocks; ++k) {
    const std::uint64_t b = state.reverse ? blocks - 1 - k : k;
    blockIdx = dim3(static_cast<unsigned int>(b % c.grid.x), static_cast<unsigned int>(b / c.grid.x % c.grid.y),
                    static_cast<unsigned int>(b / (std::uint64_t{c.grid.x} * c.grid.y)));
    run_block(static_cast<unsigned int>(threads));
  }
}

void set_reverse_schedule(bool reverse) { state.reverse = reverse; }

namespace {
std::map<std::string, PackedLaunch>& named_kernels() {
  static std::map<std::string, PackedLaunch> kernels;
  return kernels;
}
std::string last_launch_error;
}  // namespace

NamedKernel::NamedKernel(const char* name, PackedLaunch launch) { named_kernels()[name] = launch; }

torch::Library& emulated_library() {
  static torch::Library library(torch::Library::FRAGMENT, "gaea_ext_cuda_emulated", std::nullopt, __FILE__, __LINE__);
  return library;
}

namespace {
// Results of a correct kernel do not depend on the order blocks run in, nor on the order
// threads run between barriers: running both orders is a cheap probe for order dependence.
const Registrar schedule_registrar([](EmulatedLibrary& m) { m.impl("set_reverse_schedule", &set_reverse_schedule); });
}  // namespace

}  // namespace gaea_emu

// The by-name launch (cuLaunchKernel's shape) for ctypes: 0 on success, else nonzero with the
// message in gaea_emu_last_error().
extern "C" __attribute__((visibility("default"))) int gaea_emu_launch_kernel(
    const char* name, unsigned int grid_x, unsigned int grid_y, unsigned int grid_z, unsigned int block_x,
    unsigned int block_y, unsigned int block_z, unsigned int shared_bytes, void** args) {
  using namespace gaea_emu;
  const auto found = named_kernels().find(name);
  if (found == named_kernels().end()) {
    last_launch_error = std::string("CUDA emulation: no kernel named ") + name;
    return 1;
  }
  try {
    found->second(LaunchConfig(dim3(grid_x, grid_y, grid_z), dim3(block_x, block_y, block_z), shared_bytes), args);
  } catch (const std::exception& error) {
    last_launch_error = error.what();
    return 2;
  }
  return 0;
}

extern "C" __attribute__((visibility("default"))) const char* gaea_emu_last_error() {
  return gaea_emu::last_launch_error.c_str();
}
