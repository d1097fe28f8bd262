// The whole-sequence gradients of the Elman backward, shared by the CPU and CUDA kernels: once
// a backend has produced ga (the gradient of every step's pre-activation) for some steps, the
// rest is a few GEMMs through ATen, the same on every device. The CUDA kernels hand the whole
// sequence as one chunk (elman_sequence_grads); the CPU kernel hands chunks of steps as it
// produces them, so that it never holds ga for all T steps at once.
#include <ATen/ATen.h>

#include "elman.h"

namespace rnn_ext {

ElmanGradAccumulator::ElmanGradAccumulator(const at::Tensor& input, int64_t H,
                                           bool want_grad_input, const at::Tensor& lengths)
    // On the CPU, MKL runs the skinny product of grad_weight_ih faster as x^T ga, (I, H), than
    // as ga^T x when I is small against H (0.35 vs 0.60 ms at the lesson's I = 42, H = 256;
    // no gain at I = H/2, a loss at I = H); finish() transposes it, a small copy.
    : transposed_weight_ih(input.is_cpu() && 3 * input.size(2) <= H) {
  if (want_grad_input) {
    grad_input = at::empty(input.sizes(), input.options());
  }
  if (lengths.defined()) {  // (no read-back of lengths here: CUDA graphs capture this code)
    step_valid =
        at::arange(input.size(0), lengths.options()).unsqueeze(1).lt(lengths).unsqueeze(2);
  }
}

void ElmanGradAccumulator::add_chunk(const at::Tensor& ga_chunk, int64_t a,
                                     const at::Tensor& output, const at::Tensor& input,
                                     const at::Tensor& weight_ih, bool reverse) {
  const int64_t n = ga_chunk.size(0), B = ga_chunk.size(1), H = ga_chunk.size(2);
  const int64_t T = output.size(0), I = input.size(2);
  const at::Tensor ga2d = ga_chunk.view({n * B, H});
  if (grad_input.defined()) {
    at::Tensor rows = grad_input.narrow(0, a, n).view({n * B, I});
    at::mm_out(rows, ga2d, weight_ih);
  }
  at::Tensor x = input.narrow(0, a, n);
  if (step_valid.defined()) {  // padded rows read as 0 (see the constructor's comment)
    x = at::where(step_valid.narrow(0, a, n), x, 0);
  }
  const at::Tensor x2d = x.reshape({n * B, I});
  const at::Tensor lhs = transposed_weight_ih ? x2d.t() : ga2d.t();
  const at::Tensor rhs = transposed_weight_ih ? ga2d : x2d;
  if (grad_weight_ih.defined()) {
    grad_weight_ih.addmm_(lhs, rhs);
  } else {
    grad_weight_ih = at::mm(lhs, rhs);
  }

  // grad_weight_hh += ga_t^T h_prev(t) over the chunk's steps, where h_prev(t) is
  // output[t -/+ 1]; the first step of the sequence (t = 0, or T - 1 when reversed) is left to
  // finish(), whose h_prev is h_0. (With lengths, reversed, a sequence's first step
  // t = lengths[b] - 1 < T - 1 meets output[t + 1][b] = 0 here, a padded step, and its h_0 term
  // comes from g0 in finish() too.)
  int64_t lo = a, hi = a + n;  // the steps [lo, hi) of this chunk that have h_prev = output
  if (!reverse) {
    lo = std::max<int64_t>(a, 1);
  } else {
    hi = std::min<int64_t>(a + n, T - 1);
  }
  if (lo >= hi) {
    return;
  }
  const int64_t m = (hi - lo) * B;
  const at::Tensor ga_rows = ga2d.narrow(0, (lo - a) * B, m);
  at::Tensor h_prev = output.narrow(0, reverse ? lo + 1 : lo - 1, hi - lo);
  if (step_valid.defined() && !reverse) {
    // Forward, a sequence's first padded step t = lengths[b] has h_prev = output[t - 1], its
    // last valid state; later padded steps (and, reversed, every padded step) read output rows
    // that are 0 already.
    h_prev = at::where(step_valid.narrow(0, lo, hi - lo), h_prev, 0);
  }
  h_prev = h_prev.reshape({m, H});
  if (grad_weight_hh.defined()) {
    grad_weight_hh.addmm_(ga_rows.t(), h_prev);
  } else {
    grad_weight_hh = at::mm(ga_rows.t(), h_prev);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> ElmanGradAccumulator::finish(
    const at::Tensor& g0, const at::Tensor& input, const at::Tensor& h_0,
    const at::Tensor& weight_hh, std::array<bool, 2> output_mask, at::Tensor grad_h_0_buffer,
    bool h_0_is_zero) {
  // Each sequence's first step hands its gradient to h_0: grad_h_0 = g0 W_hh.
  at::Tensor grad_h_0;
  if (grad_h_0_buffer.defined()) {
    grad_h_0 = output_mask[1] ? at::mm_out(grad_h_0_buffer, g0, weight_hh)
                              : grad_h_0_buffer.zero_();
  } else {
    grad_h_0 = output_mask[1] ? at::mm(g0, weight_hh) : at::zeros_like(h_0);
  }
  if (!grad_weight_hh.defined()) {
    grad_weight_hh = h_0_is_zero ? at::zeros(weight_hh.sizes(), weight_hh.options())
                                 : at::mm(g0.t(), h_0);
  } else if (!h_0_is_zero) {
    grad_weight_hh.addmm_(g0.t(), h_0);
  }
  if (transposed_weight_ih) {  // (every backward adds at least one chunk: T >= 1)
    grad_weight_ih = grad_weight_ih.t().contiguous();
  }
  at::Tensor gi = grad_input.defined() ? grad_input : at::zeros_like(input);
  return {gi, grad_h_0, grad_weight_ih, grad_weight_hh};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_sequence_grads(
    const at::Tensor& ga, const at::Tensor& output, const at::Tensor& input,
    const at::Tensor& h_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& lengths, bool reverse, std::array<bool, 2> output_mask,
    at::Tensor grad_h_0_buffer, bool h_0_is_zero, bool mask_padded) {
  const int64_t T = ga.size(0), B = ga.size(1);
  ElmanGradAccumulator acc(input, ga.size(2), output_mask[0],
                           mask_padded ? lengths : at::Tensor());
  acc.add_chunk(ga, 0, output, input, weight_ih, reverse);
  // ga of each sequence's first step (g0) multiplies h_0 and gives grad_h_0.
  at::Tensor g0;
  if (!reverse) {
    g0 = ga.select(0, 0);
  } else if (!lengths.defined()) {
    g0 = ga.select(0, T - 1);
  } else {
    g0 = ga.index({lengths - 1, at::arange(B, lengths.options())});
  }
  return acc.finish(g0, input, h_0, weight_hh, output_mask, grad_h_0_buffer,
                    h_0_is_zero);
}

}  // namespace rnn_ext
