// Declarations shared by the CPU and CUDA kernels of gaea_ext.
//
// Op schemas (registered in csrc/registration.cpp, namespace gaea_ext):
//   mixed_node(Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds, int[] sources,
//              Tensor? norm) -> Tensor
//   mixed_node_backward(Tensor grad_out, Tensor[] xs, Tensor[] outputs, Tensor weights, int[] kinds,
//                       int[] sources, Tensor? norm, bool[] xs_need_grad, bool[] outputs_need_grad,
//                       bool weights_need_grad, bool norm_need_grad)
//                       -> (Tensor[] grad_xs, Tensor[] grad_outputs, Tensor grad_weights, Tensor grad_norm)
//   pool_stats(Tensor x, int kind) -> Tensor stats
//   partial_channel_node(Tensor mixed, Tensor[] states, Tensor weights, int[] strides, int groups) -> Tensor
//   partial_channel_node_backward(Tensor grad_out, Tensor[] states, Tensor weights, int[] strides, int groups,
//                                 bool mixed_need_grad, bool[] states_need_grad, bool weights_need_grad)
//                                 -> (Tensor grad_mixed, Tensor[] grad_states, Tensor grad_weights)
//   pool_stats_backward(Tensor grad_stats, Tensor x, Tensor stats, int kind) -> Tensor grad_x
//   weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor
//   weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights,
//                         bool[] inputs_need_grad, bool weights_need_grad)
//                         -> (Tensor[] grad_inputs, Tensor grad_weights)
//   sample_weighted_sum(Tensor[] inputs, Tensor weights) -> Tensor
//   sample_weighted_sum_backward(Tensor grad_out, Tensor[] inputs, Tensor weights,
//                                bool[] inputs_need_grad, bool weights_need_grad)
//                                -> (Tensor[] grad_inputs, Tensor grad_weights)
//   exp_grad_step_(Tensor(a!)[] params, Tensor[] grads, float[] lrs, int[] segments,
//                  int[] segment_counts, float[] min_values, float[] entropic_regs,
//                  bool normalize_first, bool adaptive) -> Tensor found_nonfinite
//
// Argument validation that needs no device synchronisation happens in C++ (TORCH_CHECK,
// which surfaces as RuntimeError); checks that need to read device values (NaN in grad,
// non-positive param rows) are done in Python before the op is called.
#pragma once

#include <ATen/core/List.h>
#include <torch/types.h>

#include <cstdint>
#include <optional>
#include <tuple>
#include <string>
#include <vector>

#include "cuda_limits.h"

namespace gaea_ext {

// ---- weighted_sum ------------------------------------------------------------------

// out = sum_k weights[k] * inputs[k].
// All inputs share shape, dtype (f16/bf16/f32/f64) and device; weights is 1-D with K
// floating elements on the same device. When every input has the same non-overlapping,
// dense strides, the kernel runs over the flat storage and the output keeps those strides
// (contiguous or channels_last); otherwise inputs are made contiguous first.
at::Tensor weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights);
at::Tensor weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights);

// grad_inputs[j] = weights[k_j] * grad_out for each k_j with inputs_need_grad[k_j]
// (the returned list holds only those, in order of k), and
// grad_weights[k] = <inputs[k], grad_out> (accumulated in float32, or float64 for double
// inputs; returned in weights' dtype; undefined/empty tensor when !weights_need_grad).
// The reduction is deterministic: fixed-size chunks, partial sums combined in a fixed
// order, no float atomics.
std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad);
std::tuple<std::vector<at::Tensor>, at::Tensor> weighted_sum_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad);

// ---- sample_weighted_sum ------------------------------------------------------------

// out[n] = sum_k weights[k, n] * inputs[k][n]: a weighted sum with one weight per input and
// sample (e.g. drop path's keep mask / (1 - p)). The inputs share shape [N, ...] (at least
// 1-D), dtype (f16/bf16/f32/f64) and device; weights is [K, N] floating, on the same device,
// used in the accumulation type (float32, float64 for double inputs). When the inputs share a
// dense layout with the batch outermost (contiguous, channels_last) the kernel walks the
// flat storage and the output keeps that layout; otherwise inputs are made contiguous.
at::Tensor sample_weighted_sum_cpu(at::TensorList inputs, const at::Tensor& weights);
at::Tensor sample_weighted_sum_cuda(at::TensorList inputs, const at::Tensor& weights);

// grad_inputs[j][n] = weights[k_j, n] * grad_out[n] for each k_j with inputs_need_grad[k_j]
// (only those, in order of k); grad_weights[k, n] = <inputs[k][n], grad_out[n]> (accumulated in
// float32, float64 for double inputs; in weights' dtype; empty when !weights_need_grad).
// Deterministic: fixed chunks inside each sample, partials summed in chunk order, no atomics.
std::tuple<std::vector<at::Tensor>, at::Tensor> sample_weighted_sum_backward_cpu(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad);
std::tuple<std::vector<at::Tensor>, at::Tensor> sample_weighted_sum_backward_cuda(
    const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
    const c10::List<bool>& inputs_need_grad, bool weights_need_grad);

// ---- exp_grad_step_ ----------------------------------------------------------------

// In-place exponentiated-gradient step on every simplex of every param, in one call.
// Per-param options: lrs[t], min_values[t], entropic_regs[t], and the simplices of param t:
// its last dimension holds rows, and segment_counts[t] consecutive lengths taken from the
// flat `segments` list split each row into independent simplices (segment_counts[t] == 0:
// one simplex covering the whole row). E.g. DARTS alphas [14, 8] plus edge weights [14]:
// segments = {2, 3, 4, 5}, segment_counts = {0, 4}.
// Per simplex of length k, with eta = lrs[t] (divided by max|grad| of param t if adaptive):
//   l_i = log p_i - eta * (g_i + entropic_reg * (log(k * p_i) + 1))     (p_i == 0 -> l_i = -inf)
//   normalize_first == false: l_i = max(l_i, log(min_value)); p_i = exp(l_i - m) / sum_j exp(l_j - m)
//   normalize_first == true:  p_i = max(exp(l_i - m) / sum_j exp(l_j - m), min_value)
// with m = max_j l_j (min_value == 0 means no clamp).
// All or nothing: if any grad holds a NaN/Inf, or any param holds a negative or non-finite
// entry or a simplex summing to 0, no param is modified and the returned 0-d int32 tensor
// (on the params' device) is nonzero: bit 0 (value 1) = non-finite grad, bit 1 (value 2) =
// invalid param. No host synchronisation happens; the Python wrapper reads the flag.
at::Tensor exp_grad_step_cpu(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> lrs,
                             c10::IntArrayRef segments, c10::IntArrayRef segment_counts,
                             c10::ArrayRef<double> min_values, c10::ArrayRef<double> entropic_regs,
                             bool normalize_first, bool adaptive);
at::Tensor exp_grad_step_cuda(at::TensorList params, at::TensorList grads, c10::ArrayRef<double> lrs,
                              c10::IntArrayRef segments, c10::IntArrayRef segment_counts,
                              c10::ArrayRef<double> min_values, c10::ArrayRef<double> entropic_regs,
                              bool normalize_first, bool adaptive);

// ---- mixed_node ----------------------------------------------------------------------

// A whole node (or one edge) of a cell with its parameter-free ops fused:
//   out = sum_t weights[t] * term_t, term_t by kinds[t]:
//     kNone (0)   nothing;                 kSkip (1)   xs[sources[t]];
//     kAvgPool (2) avg_pool 3x3, stride 1, padding 1, count_include_pad=False, of xs[sources[t]];
//     kMaxPool (3) max_pool 3x3, stride 1, padding 1, of xs[sources[t]];
//     kTensor (4) outputs[sources[t]] (e.g. a conv output; each output used by one term);
//     kAvgPoolBN (5), kMaxPoolBN (6): the pool followed by a per-channel normalisation
//                 (pool - norm[b, 0, c]) * norm[b, 1, c], b = the term's rank among the BN
//                 terms: BatchNorm without affine, given its mean and 1/sqrt(var + eps);
//     kOnes (7)   a tensor of ones (GDAS's straight-through terms: out += weights[t]);
//     kTensorBN (8) outputs[sources[t]] normalised per channel like the BN pools:
//                 (y - norm[b, 0, c]) * norm[b, 1, c] (a conv output and its BatchNorm).
// xs and outputs are 4-D [N, C, H, W], one shape, dtype (f16/bf16/f32/f64) and device;
// weights is 1-D with one floating element per term; norm is [B, 2, C] floating (B = number
// of BN terms; undefined when B == 0). The pools are computed from xs inside the kernel and
// never materialised. Half inputs accumulate in float32. The kernels work on contiguous NCHW
// xs (other layouts are copied; a channels_last x gives a channels_last out); outputs are
// read in place with their own strides (e.g. channel slices of a batched conv output, NCHW
// or channels_last) when each plane's cells are evenly spaced (see output_strides), and
// copied otherwise.
enum MixedKind : int64_t {
  kNone = 0, kSkip = 1, kAvgPool = 2, kMaxPool = 3, kTensor = 4, kAvgPoolBN = 5, kMaxPoolBN = 6, kOnes = 7,
  kTensorBN = 8
};
#ifdef __CUDACC__
#define GAEA_HOST_DEVICE __host__ __device__
#else
#define GAEA_HOST_DEVICE
#endif
GAEA_HOST_DEVICE inline bool is_avg_kind(int64_t kind) { return kind == kAvgPool || kind == kAvgPoolBN; }
GAEA_HOST_DEVICE inline bool is_bn_kind(int64_t kind) {
  return kind == kAvgPoolBN || kind == kMaxPoolBN || kind == kTensorBN;
}
// Kinds whose term reads outputs[sources[t]] rather than xs.
GAEA_HOST_DEVICE inline bool is_output_kind(int64_t kind) { return kind == kTensor || kind == kTensorBN; }
at::Tensor mixed_node_cpu(at::TensorList xs, at::TensorList outputs, const at::Tensor& weights,
                          c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::optional<at::Tensor>& norm);
at::Tensor mixed_node_cuda(at::TensorList xs, at::TensorList outputs, const at::Tensor& weights,
                           c10::IntArrayRef kinds, c10::IntArrayRef sources, const std::optional<at::Tensor>& norm);

// Backward of mixed_node from grad_out g, recomputing the pools from xs (p = the raw pool,
// or the output of a kTensorBN term; s_t = weights[t] times norm[b, 1, c] for a BN term,
// weights[t] otherwise):
//   grad_xs[s] = sum over the terms reading xs[s] of s_t * (g for kSkip, the avg-pool adjoint
//                of g, or g routed to each window's first maximum, as PyTorch's max_pool2d
//                does), for each s with xs_need_grad[s];
//   grad_outputs[s] = s_t * g for each s with outputs_need_grad[s];
//   grad_weights[t] = <term_t, g> (0 for kNone, sum(g) for kOnes; empty when !weights_need_grad);
//   grad_norm[b, 0, c] = -weights[t] * norm[b, 1, c] * sum_c(g),
//   grad_norm[b, 1, c] = weights[t] * sum_c(g * (p - norm[b, 0, c]))   (empty when !norm_need_grad),
// sums over the N, H, W of channel c. Only the requested grads are returned, in index order.
// The reductions are deterministic (per-plane partials combined in a fixed order; no float
// atomics).
using MixedNodeGrads = std::tuple<std::vector<at::Tensor>, std::vector<at::Tensor>, at::Tensor, at::Tensor>;
MixedNodeGrads mixed_node_backward_cpu(const at::Tensor& grad_out, at::TensorList xs, at::TensorList outputs,
                                       const at::Tensor& weights, c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                       const std::optional<at::Tensor>& norm, const c10::List<bool>& xs_need_grad,
                                       const c10::List<bool>& outputs_need_grad, bool weights_need_grad,
                                       bool norm_need_grad);
MixedNodeGrads mixed_node_backward_cuda(const at::Tensor& grad_out, at::TensorList xs, at::TensorList outputs,
                                        const at::Tensor& weights, c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                        const std::optional<at::Tensor>& norm, const c10::List<bool>& xs_need_grad,
                                        const c10::List<bool>& outputs_need_grad, bool weights_need_grad,
                                        bool norm_need_grad);

// ---- pool_stats ----------------------------------------------------------------------

// Per-channel batch statistics of a 3x3 stride-1 pool of x (kind kAvgPool or kMaxPool, the
// BN kinds accepted as their pools; kTensorBN's "pool" is the identity: the statistics of x
// itself), without materialising the pool: stats[0, c] = mean and
// stats[1, c] = biased variance over N, H, W of channel c. x is 4-D floating; stats is
// [2, C] float32 (float64 for float64 x). Per-plane two-pass moments combined per channel
// in plane order (Chan et al.), in double: deterministic.
at::Tensor pool_stats_cpu(const at::Tensor& x, int64_t kind);
at::Tensor pool_stats_cuda(const at::Tensor& x, int64_t kind);
// grad_x = pool adjoint of grad_stats[0, c] / M + grad_stats[1, c] * 2 (p - stats[0, c]) / M,
// M = N * H * W, p the recomputed pool.
at::Tensor pool_stats_backward_cpu(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& stats,
                                   int64_t kind);
at::Tensor pool_stats_backward_cuda(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& stats,
                                    int64_t kind);

// ---- partial_channel_node -------------------------------------------------------------

// The PC-DARTS node output around its mixed part, in one pass (K = groups, q = C / K):
//   cat = [mixed, bypass] along channels, bypass = sum_e weights[e] * tail_e,
//   tail_e = states[e][:, q:] (strides[e] == 1) or its 2x2 stride-2 max pool (strides[e] == 2),
//   out = channel_shuffle(cat, K): out[:, j * K + g] = cat[:, g * q + j],
// written straight into the shuffled positions. mixed is [N, q, Ho, Wo] (the node's mixing
// over the first q channels of every state, edge weights folded in); states[e] is
// [N, C, H_e, W_e] with (H_e, W_e) = (Ho, Wo) for stride 1 and floor-halved to it for
// stride 2; weights is [E] floating. One dtype (f16/bf16/f32/f64) and device.
at::Tensor partial_channel_node_cpu(const at::Tensor& mixed, at::TensorList states, const at::Tensor& weights,
                                    c10::IntArrayRef strides, int64_t groups);
at::Tensor partial_channel_node_cuda(const at::Tensor& mixed, at::TensorList states, const at::Tensor& weights,
                                     c10::IntArrayRef strides, int64_t groups);
// grad_mixed[:, j] = grad_out[:, j * K]; grad_states[e][:, :q] = 0 and grad_states[e][:, q:] =
// weights[e] * (the unshuffled bypass grad, routed to each 2x2 window's first maximum for
// stride 2); grad_weights[e] = <tail_e, bypass grad>. Only the requested grads are returned
// (grad_mixed and grad_weights empty otherwise); deterministic reductions.
using PartialChannelGrads = std::tuple<at::Tensor, std::vector<at::Tensor>, at::Tensor>;
PartialChannelGrads partial_channel_node_backward_cpu(const at::Tensor& grad_out, at::TensorList states,
                                                      const at::Tensor& weights, c10::IntArrayRef strides,
                                                      int64_t groups, bool mixed_need_grad,
                                                      const c10::List<bool>& states_need_grad,
                                                      bool weights_need_grad);
PartialChannelGrads partial_channel_node_backward_cuda(const at::Tensor& grad_out, at::TensorList states,
                                                       const at::Tensor& weights, c10::IntArrayRef strides,
                                                       int64_t groups, bool mixed_need_grad,
                                                       const c10::List<bool>& states_need_grad,
                                                       bool weights_need_grad);

// ---- shared helpers (csrc/checks.cpp) ----------------------------------------------

// Checks the arguments; returns, per term, its rank among the BN terms (-1 for other kinds).
std::vector<int64_t> check_mixed_node_args(at::TensorList xs, at::TensorList outputs, const at::Tensor& weights,
                                           c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                           const std::optional<at::Tensor>& norm);
// The same plus grad_out (shape/dtype/device of xs) and the need-grad list lengths.
std::vector<int64_t> check_mixed_node_backward_args(const at::Tensor& grad_out, at::TensorList xs,
                                                    at::TensorList outputs, const at::Tensor& weights,
                                                    c10::IntArrayRef kinds, c10::IntArrayRef sources,
                                                    const std::optional<at::Tensor>& norm,
                                                    const c10::List<bool>& xs_need_grad,
                                                    const c10::List<bool>& outputs_need_grad);
// partial_channel_node: `like` is mixed (forward) or grad_out (backward: [N, C, Ho, Wo]).
void check_partial_channel_args(const at::Tensor& like, bool like_is_grad_out, at::TensorList states,
                                const at::Tensor& weights, c10::IntArrayRef strides, int64_t groups);
// The backward's: check_partial_channel_args on grad_out plus one need-grad flag per state.
void check_partial_channel_backward_args(const at::Tensor& grad_out, at::TensorList states, const at::Tensor& weights,
                                         c10::IntArrayRef strides, int64_t groups,
                                         const c10::List<bool>& states_need_grad);
// pool_stats: x 4-D floating, kind a pool kind; the backward also grad_stats and stats [2, C].
void check_pool_stats_args(const at::Tensor& x, int64_t kind);
void check_pool_stats_backward_args(const at::Tensor& grad_stats, const at::Tensor& x, const at::Tensor& stats,
                                    int64_t kind);

// TORCH_CHECKs shared by CPU and CUDA entry points.
void check_weighted_sum_args(at::TensorList inputs, const at::Tensor& weights);
// The backward's: the same plus grad_out (shape, dtype, device of the inputs) and one
// need-grad flag per input.
void check_weighted_sum_backward_args(const at::Tensor& grad_out, at::TensorList inputs, const at::Tensor& weights,
                                      const c10::List<bool>& inputs_need_grad);
// sample_weighted_sum: the inputs as weighted_sum's (at least 1-D), weights [K, N] floating.
void check_sample_weighted_sum_args(at::TensorList inputs, const at::Tensor& weights);
void check_sample_weighted_sum_backward_args(const at::Tensor& grad_out, at::TensorList inputs,
                                             const at::Tensor& weights, const c10::List<bool>& inputs_need_grad);
// Also returns, per param, the offset of its first segment in `segments`.
std::vector<int64_t> check_exp_grad_args(at::TensorList params, at::TensorList grads,
                                         c10::ArrayRef<double> lrs, c10::IntArrayRef segments,
                                         c10::IntArrayRef segment_counts,
                                         c10::ArrayRef<double> min_values,
                                         c10::ArrayRef<double> entropic_regs);

// Element chunk of the deterministic CPU reductions.
constexpr int64_t kCpuChunk = 2048;
// Bits of the flag returned by exp_grad_step_.
constexpr int32_t kNonFiniteGrad = gaea_kernels::kNonFiniteGrad;
constexpr int32_t kInvalidParam = gaea_kernels::kInvalidParam;

}  // namespace gaea_ext
