// Schemas of the gaea_ext torch ops. Kernels register themselves per dispatch key in
// csrc/cpu/*.cpp (CPU) and csrc/cuda/*.cu (CUDA); fake kernels and autograd are
// registered from Python (gaea_ext/<op>.py).
#include <torch/library.h>

TORCH_LIBRARY(gaea_ext, m) {
  m.def("weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor");
  m.def(
      "weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights, "
      "bool[] inputs_need_grad, bool weights_need_grad) -> (Tensor[], Tensor)");
  m.def("sample_weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor");
  m.def(
      "sample_weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights, "
      "bool[] inputs_need_grad, bool weights_need_grad) -> (Tensor[], Tensor)");
  m.def(
      "mixed_node(Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds, int[] sources, Tensor? norm=None) "
      "-> Tensor");
  m.def(
      "mixed_node_backward(Tensor grad_out, Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds, "
      "int[] sources, Tensor? norm, bool[] xs_need_grad, bool[] outputs_need_grad, bool weights_need_grad, "
      "bool norm_need_grad) -> (Tensor[], Tensor[], Tensor, Tensor)");
  m.def("pool_stats(Tensor x, int kind) -> Tensor");
  m.def("partial_channel_node(Tensor mixed, Tensor[] states, Tensor weights, int[] strides, int groups) -> Tensor");
  m.def(
      "partial_channel_node_backward(Tensor grad_out, Tensor[] states, Tensor weights, int[] strides, int groups, "
      "bool mixed_need_grad, bool[] states_need_grad, bool weights_need_grad) -> (Tensor, Tensor[], Tensor)");
  m.def("pool_stats_backward(Tensor grad_stats, Tensor x, Tensor stats, int kind) -> Tensor");
  m.def(
      "exp_grad_step_(Tensor(a!)[] params, Tensor[] grads, float[] lrs, int[] segments, "
      "int[] segment_counts, float[] min_values, float[] entropic_regs, bool normalize_first, "
      "bool adaptive) -> Tensor");
}
