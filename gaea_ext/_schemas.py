"""The schemas of the gaea_ext ops, for a pure-Python install (no gaea_ext._C): then they are
defined here (define_schemas), so the NVRTC backend (gaea_ext/cupy_backend.py) can serve them
on CUDA and the fakes and autograd of the op modules register as usual. csrc/registration.cpp
defines the same schemas in C++; tests/test_nvrtc_backend.py checks they are equal."""
import torch

SCHEMAS = {
    "weighted_sum": "weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor",
    "weighted_sum_backward": (
        "weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights, "
        "bool[] inputs_need_grad, bool weights_need_grad) -> (Tensor[], Tensor)"),
    "sample_weighted_sum": "sample_weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor",
    "sample_weighted_sum_backward": (
        "sample_weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights, "
        "bool[] inputs_need_grad, bool weights_need_grad) -> (Tensor[], Tensor)"),
    "mixed_node": (
        "mixed_node(Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds, int[] sources, Tensor? norm=None) "
        "-> Tensor"),
    "mixed_node_backward": (
        "mixed_node_backward(Tensor grad_out, Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds, "
        "int[] sources, Tensor? norm, bool[] xs_need_grad, bool[] outputs_need_grad, bool weights_need_grad, "
        "bool norm_need_grad) -> (Tensor[], Tensor[], Tensor, Tensor)"),
    "pool_stats": "pool_stats(Tensor x, int kind) -> Tensor",
    "partial_channel_node": (
        "partial_channel_node(Tensor mixed, Tensor[] states, Tensor weights, int[] strides, int groups) -> Tensor"),
    "partial_channel_node_backward": (
        "partial_channel_node_backward(Tensor grad_out, Tensor[] states, Tensor weights, int[] strides, int groups, "
        "bool mixed_need_grad, bool[] states_need_grad, bool weights_need_grad) -> (Tensor, Tensor[], Tensor)"),
    "pool_stats_backward": "pool_stats_backward(Tensor grad_stats, Tensor x, Tensor stats, int kind) -> Tensor",
    "exp_grad_step_": (
        "exp_grad_step_(Tensor(a!)[] params, Tensor[] grads, float[] lrs, int[] segments, "
        "int[] segment_counts, float[] min_values, float[] entropic_regs, bool normalize_first, "
        "bool adaptive) -> Tensor"),
}


def define_schemas() -> torch.library.Library:
    """Define every gaea_ext op from SCHEMAS (only when gaea_ext._C, which defines them, is not
    loaded). The definitions last as long as the returned library lives."""
    library = torch.library.Library("gaea_ext", "DEF")
    for schema in SCHEMAS.values():
        library.define(schema)
    return library
