// Operator schemas of the rnn_ext library: the one place they are written.
//
// Kernels live in csrc/cpu/*.cpp (TORCH_LIBRARY_IMPL(rnn_ext, CPU, m)) and csrc/cuda/*.cu
// (TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m)); shape functions (register_fake) are registered from
// Python (rnn_ext/ops.py, rnn_ext/loss.py); autograd in C++ (csrc/autograd/,
// TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m)).
//
// Shapes: T time steps, B batch, I input features, H hidden features, C classes.
#include <Python.h>
#include <torch/library.h>

// `import rnn_ext._C` loads this library, which runs the registrations below. The module
// itself is empty: every entry point is a torch.ops.rnn_ext.* operator.
PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "rnn_ext's operators (see torch.ops.rnn_ext)", -1, nullptr};
  return PyModule_Create(&module_def);
}

TORCH_LIBRARY(rnn_ext, m) {
  // One Elman layer, one direction, whole sequence.
  //   input (T, B, I), h_0 (B, H), weight_ih (H, I), weight_hh (H, H), bias_* (H) or None,
  //   nonlinearity "tanh" | "relu", reverse: run t = T-1 .. 0,
  //   lengths: None or int64 (B,) with 1 <= lengths[b] <= T (padded steps output 0 and do not
  //   advance the state; reverse starts each sequence at its own last valid step).
  // Returns output (T, B, H) and h_n (B, H).
  m.def(
      "elman_forward(Tensor input, Tensor h_0, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, str nonlinearity, bool reverse, Tensor? lengths) "
      "-> (Tensor output, Tensor h_n)");
  // Gradients of elman_forward given grad_output (T, B, H), grad_h_n (B, H) and the forward's
  // output. Returns grad_input (T, B, I), grad_h_0 (B, H), grad_weight_ih (H, I),
  // grad_weight_hh (H, H), grad_bias (H) (the gradient of bias_ih and of bias_hh alike).
  // output_mask = (grad_input wanted, grad_h_0 wanted): an unwanted one is returned as zeros
  // without its GEMM (autograd passes needs_input_grad, e.g. no grad_h_0 when h_0 is a constant).
  m.def(
      "elman_backward(Tensor grad_output, Tensor grad_h_n, Tensor input, Tensor h_0, "
      "Tensor weight_ih, Tensor weight_hh, Tensor output, str nonlinearity, bool reverse, "
      "Tensor? lengths, bool[2] output_mask=[True, True]) -> (Tensor grad_input, "
      "Tensor grad_h_0, Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias)");
  // One time step with nn.RNNCell semantics: input (B, I), hx (B, H) -> hy (B, H).
  m.def(
      "elman_cell_forward(Tensor input, Tensor hx, Tensor weight_ih, Tensor weight_hh, "
      "Tensor? bias_ih, Tensor? bias_hh, str nonlinearity) -> Tensor");
  // Gradients of elman_cell_forward given grad_hy (B, H) and the forward's hy (B, H).
  m.def(
      "elman_cell_backward(Tensor grad_hy, Tensor input, Tensor hx, Tensor weight_ih, "
      "Tensor weight_hh, Tensor hy, str nonlinearity) -> (Tensor grad_input, Tensor grad_hx, "
      "Tensor grad_weight_ih, Tensor grad_weight_hh, Tensor grad_bias)");

  // Sequence NLL loss: log_probs (T, B, C); target int64 (B, T) if target_batch_first else
  // (T, B); weight None or (C,); reduction "none" | "mean" | "sum".
  // Returns loss (the target's shape for "none", else a scalar) and total_weight (a scalar:
  // the sum of the weights of the non-ignored targets).
  m.def(
      "seq_nll_loss_forward(Tensor log_probs, Tensor target, Tensor? weight, int ignore_index, "
      "str reduction, bool target_batch_first) -> (Tensor loss, Tensor total_weight)");
  // Gradient of seq_nll_loss_forward with respect to log_probs, (T, B, C).
  m.def(
      "seq_nll_loss_backward(Tensor grad_loss, Tensor log_probs, Tensor target, Tensor? weight, "
      "int ignore_index, str reduction, bool target_batch_first, Tensor total_weight) -> Tensor");
  // Sequence cross-entropy from raw logits (T, B, C): log-softmax and NLL in one pass.
  // Returns loss, row_max and log_sum (T, B): each row's max m and log(sum exp(x - m)), the two
  // parts of its log-sum-exp (all that backward needs), and total_weight.
  m.def(
      "seq_cross_entropy_forward(Tensor logits, Tensor target, Tensor? weight, int ignore_index, "
      "str reduction, bool target_batch_first) -> (Tensor loss, Tensor row_max, Tensor log_sum, "
      "Tensor total_weight)");
  // Gradient of seq_cross_entropy_forward with respect to logits, (T, B, C).
  m.def(
      "seq_cross_entropy_backward(Tensor grad_loss, Tensor logits, Tensor target, Tensor? weight, "
      "int ignore_index, str reduction, bool target_batch_first, Tensor row_max, "
      "Tensor log_sum, Tensor total_weight) -> Tensor");

  // Diagnostics of the persistent CUDA kernels (CUDA kernels only; used by
  // rnn_ext.ops.cuda_persistent_plan and benchmarks/bench_cuda.py).
  // The launch plan for a (B, H) problem in like's dtype on like's device (like's values are not
  // read): [ok, rb, rj, ks, gb, gj, bt, jt, nbt, njt, padded, smem bytes] (persistent_plan.h);
  // all 0 when no plan fits.
  m.def("_persistent_plan(Tensor like, int B, int H, bool backward) -> int[]");
  // One cooperative launch of `blocks` blocks (smem bytes of dynamic shared memory each) that
  // passes `iters` checked grid-wide barriers: counter (int64, >= 2 elements) gets
  // counter[0] += iters and counter[1] += the checks that failed. The barrier's cost, timed alone.
  m.def("_grid_barrier_loop(Tensor(a!) counter, int blocks, int iters, int smem=0) -> ()");
}
