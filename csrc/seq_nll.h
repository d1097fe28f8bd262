// Declarations shared by the sequence-loss kernels of every backend (seq_nll_loss_* and
// seq_cross_entropy_*): argument checks, the parsing of `reduction`, the error for a target out
// of range. Implemented in csrc/seq_nll_checks.cpp (device-agnostic); the per-row math is in
// csrc/seq_nll_math.h.
//
// Shapes (T time steps, B batch, C classes):
//   log_probs / logits   (T, B, C), float32 / float64 / bfloat16 / float16, any strides
//   target               int64 (or uint8, as F.nll_loss accepts) (B, T) when target_batch_first,
//                        else (T, B); any strides (it is read through them, never transposed)
//   weight               (C,) or absent, same dtype and device as the input
//   loss (forward)       reduction "none": the target's shape; "mean" / "sum": a scalar ()
//   total_weight         scalar (), the sum of weight[y] over the rows whose target is not
//                        ignore_index (the count of such rows without weight); computed for
//                        every reduction
//   row_max, log_sum     (cross-entropy) (T, B) each: each row's max m and log(sum exp(x - m)),
//                        the two parts of its log-sum-exp m + log_sum, kept apart for the
//                        backward's exp((x - m) - log_sum) (seq_ce_log_prob)
//   grad_loss (backward) the loss's shape; grad of the input (T, B, C), contiguous
// total_weight, row_max and log_sum have the "statistics dtype": float32 for bfloat16 / float16
// inputs, else the input's dtype.
//
// Semantics every backend keeps (the CPU kernels in csrc/cpu/seq_nll_cpu.cpp; tests in
// tests/test_loss.py run on each device):
//   * row r = t * B + b; target[(t, b)] and grad_loss (reduction none) are read through their
//     strides (seq_target_offset); the input through its strides; outputs are contiguous.
//   * reduction none: loss[(t, b)] in the target's layout, 0 for ignored rows. sum: the sum of
//     the rows. mean: sum / total_weight, NaN (0 / 0) when every row is ignored or the weights
//     of the targets present are all 0. total_weight is written for every reduction.
//   * cross-entropy: row_max and log_sum are written for every row, ignored ones included; the
//     backward writes seq_ce_ignored_grad (0, NaN for a row whose log_sum is NaN) for ignored
//     rows, without reading the logits, and seq_ce_grad elsewhere.
//   * backward: seq_loss_grad_scale times w (not "w / total_weight"): with total_weight = 0 a
//     row of weight 0 gives NaN, as PyTorch.
//   * a target out of [0, C) that is not ignore_index: IndexError from
//     throw_seq_target_out_of_range, naming the first such row in r order (the CPU kernels
//     record the smallest bad r; a CUDA kernel can atomicMin it into a device int64, and the
//     host reads it back once after the kernel). Forward and backward both check.
//   * T * B = 0: mean is NaN, sum 0, the gradient empty.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <string_view>
#include <vector>

#include "seq_nll_math.h"

namespace rnn_ext {

struct SeqLossSizes {
  int64_t T, B, C;
  // Strides of target along t and along b (target's own strides, in elements).
  int64_t target_stride_t, target_stride_b;
};

// "none" | "mean" | "sum"; anything else is a ValueError naming `op` (as F.nll_loss).
Reduction parse_reduction(std::string_view reduction, const char* op);

// The dtype of total_weight, row_max and log_sum for an input of dtype `dt` (float for half /
// bfloat16).
at::ScalarType seq_loss_stat_dtype(at::ScalarType dt);

// The target's shape, {B, T} or {T, B}.
std::vector<int64_t> seq_target_shape(const SeqLossSizes& s, bool target_batch_first);

// Checks the arguments every sequence-loss operator takes. `input_name` is "log_probs" or
// "logits". Raises RuntimeError (wrong rank, dtype, device, weight shape) or ValueError (a
// target whose shape does not match the input's: the message names both shapes), as F.nll_loss
// does. Returns the sizes and the target's strides. Target values are checked by the kernels.
SeqLossSizes check_seq_loss_args(
    const char* op,
    const char* input_name,
    const at::Tensor& input,
    const at::Tensor& target,
    const std::optional<at::Tensor>& weight,
    bool target_batch_first);

// Checks the extra arguments of the backward operators: grad_loss (the loss's shape for the
// reduction, the input's dtype and device), total_weight (a scalar of the statistics dtype) and,
// when given (cross-entropy), row_max and log_sum ((T, B) each, statistics dtype).
void check_seq_loss_backward_args(
    const char* op,
    const SeqLossSizes& s,
    const at::Tensor& input,
    const at::Tensor& grad_loss,
    Reduction reduction,
    bool target_batch_first,
    const at::Tensor& total_weight,
    const at::Tensor* row_max,
    const at::Tensor* log_sum);

// Raises IndexError: target at time t, batch b (named in the target's own index order) holds
// `value`, outside [0, C), and it is not ignore_index. For the kernels of every backend.
[[noreturn]] void throw_seq_target_out_of_range(
    const char* op,
    int64_t value,
    int64_t C,
    int64_t ignore_index,
    int64_t t,
    int64_t b,
    bool target_batch_first);

}  // namespace rnn_ext
