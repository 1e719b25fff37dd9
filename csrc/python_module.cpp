// The Python module gaea_ext._C: importing it runs the static op registrations
// (TORCH_LIBRARY / TORCH_LIBRARY_IMPL) and exposes build_info() and cuda_limits().
#include <torch/extension.h>

#include "cuda_limits.h"
#include "gaea_ext.h"

namespace {

#define GAEA_STR_(x) #x
#define GAEA_STR(x) GAEA_STR_(x)

pybind11::dict build_info() {
  pybind11::dict info;
#ifdef GAEA_EXT_WITH_CUDA
  info["cuda"] = true;
  info["cuda_version"] = GAEA_STR(GAEA_EXT_CUDA_VERSION);
  // setup.py passes the list with ';' spelled '_' (a ';' would end the ninja shell command).
  std::string arch_list = GAEA_STR(GAEA_EXT_CUDA_ARCH_LIST);
  for (char& c : arch_list) {
    if (c == '_') c = ';';
  }
  info["cuda_arch_list"] = arch_list;
#else
  info["cuda"] = false;
  info["cuda_version"] = pybind11::none();
  info["cuda_arch_list"] = pybind11::none();
#endif
  info["cpu_kernels"] = true;
  info["torch_version"] = GAEA_STR(GAEA_EXT_TORCH_VERSION);
#if defined(__clang__)
  info["compiler"] = std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
  info["compiler"] = std::string("gcc ") + __VERSION__;
#else
  info["compiler"] = "unknown";
#endif
  info["cpu_chunk"] = gaea_ext::kCpuChunk;
  return info;
}

// The CUDA kernels' per-call limits (csrc/cuda_limits.h), the only copy Python reads.
pybind11::dict cuda_limits() {
  pybind11::dict limits;
  limits["mixed_node_terms"] = gaea_ext::kMaxMixedTerms;
  limits["mixed_node_xs"] = gaea_ext::kMaxMixedSources;
  limits["partial_channel_states"] = gaea_ext::kMaxPartialChannelStates;
  limits["exp_grad_segments"] = gaea_ext::kMaxExpGradSegments;
  limits["weighted_sum_inputs_per_launch"] = gaea_ext::kMaxInputsPerLaunch;
  limits["exp_grad_params_per_launch"] = gaea_ext::kMaxExpGradParamsPerLaunch;
  limits["dot_row_bytes"] = gaea_ext::kDotRowBytes;
  return limits;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "gaea_ext compiled kernels (ops are under torch.ops.gaea_ext)";
  m.def("build_info", &build_info, "What this extension was compiled with.");
  m.def("cuda_limits", &cuda_limits,
        "The CUDA kernels' per-call limits: above mixed_node_terms, mixed_node_xs, partial_channel_states or "
        "exp_grad_segments a call takes the reference; the others only batch launches.");
}
