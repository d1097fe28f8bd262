// Pointwise math of the Elman RNN, shared by the CPU and CUDA kernels (host and device).
//
//   h_t = phi(a_t),  a_t = x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh
//   phi = tanh:  phi'(a_t) = 1 - h_t^2          (written in terms of the output h_t)
//   phi = relu:  phi'(a_t) = 0 if h_t <= 0 else 1 (PyTorch's threshold_backward convention:
//                                                  the derivative at 0 is 0; a NaN h_t passes
//                                                  the gradient on, as in nn.RNN)
// NaN: relu(NaN) = NaN, as torch.relu (a comparison with NaN is false, so the tests below are
// written `<= 0 ? 0 : ...`, never `> 0 ? ... : 0`, which would turn NaN into 0).
// Source: the Elman network (Elman, "Finding Structure in Time", 1990) as torch.nn.RNN defines it.
#pragma once

#include <c10/macros/Macros.h>

#include <cmath>

namespace rnn_ext {

enum class Activation : int { Tanh = 0, Relu = 1 };

// acc_t is the accumulation type: float for float / half / bfloat16, double for double.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t activate(acc_t a, Activation act) {
  if (act == Activation::Tanh) {
#if defined(__CUDA_ARCH__)
    return tanh(a);
#else
    return std::tanh(a);
#endif
  }
  return a <= acc_t(0) ? acc_t(0) : a;
}

// d h / d a, from the output h = phi(a).
template <typename acc_t>
C10_HOST_DEVICE inline acc_t activation_grad_from_output(acc_t h, Activation act) {
  if (act == Activation::Tanh) {
    return acc_t(1) - h * h;
  }
  return h <= acc_t(0) ? acc_t(0) : acc_t(1);
}

// Backward of one step, one element: the gradient flowing into the pre-activation a_t given
// the gradient of the output at this step (gy), the gradient arriving from step t+1 through
// the hidden state (g) and the step's output h.
// relu selects instead of multiplying by 0 (as threshold_backward and the CPU kernel do), so an
// infinite incoming gradient gives 0, not NaN, where the unit is off.
template <typename acc_t>
C10_HOST_DEVICE inline acc_t preactivation_grad(acc_t gy, acc_t g, acc_t h, Activation act) {
  if (act == Activation::Relu) {
    return h <= acc_t(0) ? acc_t(0) : gy + g;
  }
  return (gy + g) * activation_grad_from_output(h, act);
}

}  // namespace rnn_ext
