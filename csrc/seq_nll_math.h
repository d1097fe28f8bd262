// Per-row math of the sequence NLL / cross-entropy losses, shared by the CPU and CUDA kernels
// (host and device). The kernels do the loops and reductions; these helpers are the formulas,
// so that both backends give the same numbers and the same special cases (NaN, ignored rows).
//
// A "row" is one (t, b) pair: log_probs[t, b, :] or logits[t, b, :], C classes, target y.
// w = weight[y] (1 without weight); an ignored row (y == ignore_index) has w = 0 and loss 0.
//
//   NLL:            loss_row = -w * log_probs[t, b, y]
//   cross-entropy:  m = max_c x_c, log_sum = log(sum_c exp(x_c - m))   (lse = m + log_sum)
//                   loss_row = w * ((m - x_y) + log_sum)   (= w * (lse - x_y))
//   reductions:     none -> loss_row at the target's position; sum -> sum of rows;
//                   mean -> sum of rows / total_weight, total_weight = sum of w over the rows
//                           that are not ignored (0 / 0 = NaN when every row is ignored).
//   backward:       c = w * s, s = -(g / total_weight) (mean), -g (sum), -g[t, b] (none)
//                   NLL:  grad[t, b, c'] = c if c' == y else 0   (ignored rows: all 0)
//                   CE:   grad[t, b, c'] = c * ([c' == y] - exp((x_c' - m) - log_sum))
//                         ignored rows: 0, or NaN where log_sum is NaN (seq_ce_ignored_grad)
// These are PyTorch's nll_loss forward/backward (aten/src/ATen/native/LossNLL.cpp) and
// log_softmax's backward (grad - exp(output) * sum(grad)) composed for one-hot grads: the
// order of the operations is kept so that the edge cases match (w = 0 with total_weight = 0
// gives NaN, as in PyTorch). Source of the loss: PyTorch docs of F.nll_loss / F.cross_entropy.
#pragma once

#include <c10/macros/Macros.h>

#include <cstdint>

namespace rnn_ext {

// The reduction argument, parsed once ("none" | "mean" | "sum").
enum class Reduction : int { None = 0, Mean = 1, Sum = 2 };

// Offset of target[(t, b)] in its storage: target is (B, T) when batch_first, else (T, B).
// Reading through the strides means no transposed copy is ever made.
C10_HOST_DEVICE inline int64_t seq_target_offset(int64_t t, int64_t b, int64_t stride_t,
                                                 int64_t stride_b) {
  return t * stride_t + b * stride_b;
}

// Whether y is a class index, [0, C).
C10_HOST_DEVICE inline bool seq_target_in_range(int64_t y, int64_t C) {
  return y >= 0 && y < C;
}

// NLL loss of one row that is not ignored: -w * log_prob_y.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_nll_row_loss(acc_t log_prob_y, acc_t w) {
  return -w * log_prob_y;
}

// Cross-entropy loss of one row that is not ignored: w * (lse - x_y), computed as
// w * ((m - x_y) + log_sum) with m the row's max and log_sum = log(sum_c exp(x_c - m)), so
// lse = m + log_sum. lse itself is rounded at the magnitude of m (a spacing of 3e-5 near
// m = 300), which lse - x_y would pass on whole to a loss that may be far smaller (a confident
// row's); m - x_y and log_sum are rounded at their own magnitudes, as in F.cross_entropy's
// log_softmax (x_y - m - log_sum). A NaN log_sum (a NaN, or an infinite max) gives NaN.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_ce_row_loss(acc_t m, acc_t log_sum, acc_t logit_y, acc_t w) {
  return w * ((m - logit_y) + log_sum);
}

// The per-row factor s of the backward (see the top of this file): the gradient of the
// reduced loss with respect to -w * log_prob_y, before multiplying by w. g is grad_loss
// (the scalar for mean / sum, the row's entry for none).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_loss_grad_scale(acc_t g, acc_t total_weight, Reduction r) {
  return r == Reduction::Mean ? -(g / total_weight) : -g;
}

// The log-softmax of one element from its row's two statistics: (x - m) - log_sum, in the order
// of log_softmax's forward (x - max - log(sum)), so that the softmax exp((x - m) - log_sum)
// keeps log_sum's precision beside a large m. exp(x - lse) would not: lse = m + log_sum is
// rounded at m's magnitude, and at |m| = 1e8 the float32 rounding drops log_sum whole (the
// softmax of logits [1e8, 1e8, 0] would come out [1, 1, 0], not [0.5, 0.5, 0]).
// Never positive for a consistent pair (x <= m, log_sum >= 0).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_ce_log_prob(acc_t x, acc_t m, acc_t log_sum) {
  return (x - m) - log_sum;
}

// Cross-entropy gradient of one element: c * ([is_target] - p), p = exp(seq_ce_log_prob),
// c = w * s. F.cross_entropy forms it as [is_target] * c - p * c (log_softmax's backward). At
// the target c * (1 - p) is the more accurate (1 - p is exact for p >= 1/2, where c - c * p
// cancels); the added c * p - c * p is 0 for a finite c * p, and NaN for an infinite c (an
// infinite grad_loss), where F's c - c * p is inf - inf.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_ce_grad(acc_t p, bool is_target, acc_t c) {
  if (is_target) {
    const acc_t cp = c * p;
    return c * (acc_t(1) - p) + (cp - cp);
  }
  return c * (acc_t(0) - p);
}

// The cross-entropy gradient of every element of an ignored row: 0, or NaN when the row's
// log_sum is NaN (the row holds a NaN, or its max is infinite), as F.cross_entropy's: there
// log_softmax's backward multiplies the row's zero upstream gradient by exp(log_softmax), which
// is NaN for every element of such a row.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t seq_ce_ignored_grad(acc_t log_sum) {
  return log_sum != log_sum ? log_sum : acc_t(0);
}

}  // namespace rnn_ext
