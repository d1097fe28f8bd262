// The whole-sequence gradients of the Elman backward, shared by the CPU and CUDA kernels: once
// a backend has produced ga (the gradient of every step's pre-activation), the rest is a few
// GEMMs through ATen, the same on every device.
#include <ATen/ATen.h>

#include "elman.h"

namespace rnn_ext {

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_sequence_grads(
    const at::Tensor& ga, const at::Tensor& output, const at::Tensor& input,
    const at::Tensor& h_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& lengths, bool reverse, std::array<bool, 2> output_mask,
    at::Tensor grad_h_0_buffer) {
  const int64_t T = ga.size(0), B = ga.size(1), H = ga.size(2), I = input.size(2);
  const at::Tensor ga2d = ga.view({T * B, H});
  at::Tensor grad_input =
      output_mask[0] ? at::mm(ga2d, weight_ih).view({T, B, I}) : at::zeros_like(input);
  at::Tensor grad_weight_ih = at::mm(ga2d.t(), input.reshape({T * B, I}));

  // grad_weight_hh = sum_t ga_t^T h_prev(t). h_prev(t) is output[t -/+ 1] except at each
  // sequence's first step, where it is h_0: ga of those first steps (g0) multiplies h_0.
  at::Tensor g0;
  if (!reverse) {
    g0 = ga.select(0, 0);
  } else if (!lengths.defined()) {
    g0 = ga.select(0, T - 1);
  } else {
    g0 = ga.index({lengths - 1, at::arange(B, lengths.options())});
  }
  // Each sequence's first step hands its gradient to h_0: grad_h_0 = g0 W_hh.
  at::Tensor grad_h_0;
  if (grad_h_0_buffer.defined()) {
    grad_h_0 = output_mask[1] ? at::mm_out(grad_h_0_buffer, g0, weight_hh)
                              : grad_h_0_buffer.zero_();
  } else {
    grad_h_0 = output_mask[1] ? at::mm(g0, weight_hh) : at::zeros_like(h_0);
  }
  at::Tensor grad_weight_hh = at::mm(g0.t(), h_0);
  if (T > 1) {
    const int64_t n = (T - 1) * B;
    const at::Tensor ga_rest =
        (reverse ? ga.narrow(0, 0, T - 1) : ga.narrow(0, 1, T - 1)).reshape({n, H});
    const at::Tensor h_prev =
        (reverse ? output.narrow(0, 1, T - 1) : output.narrow(0, 0, T - 1)).reshape({n, H});
    grad_weight_hh.addmm_(ga_rest.t(), h_prev);
  }
  return {grad_input, grad_h_0, grad_weight_ih, grad_weight_hh};
}

}  // namespace rnn_ext
