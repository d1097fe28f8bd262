// Declarations shared by the Elman kernels of every backend: argument checking and the
// parsing of `nonlinearity`. Implemented in csrc/elman_checks.cpp (device-agnostic).
//
// Shapes: input (T, B, I); h_0 / hx (B, H); weight_ih (H, I); weight_hh (H, H);
// bias_ih / bias_hh (H) or absent; lengths int64 (B,) with values in [1, T], on any device.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <array>
#include <string_view>
#include <tuple>

#include "elman_math.h"

namespace rnn_ext {

struct ElmanSizes {
  int64_t T, B, I, H;
};

// "tanh" -> Tanh, "relu" -> Relu; anything else is a clear error naming `op`.
Activation parse_nonlinearity(std::string_view nonlinearity, const char* op);

// Checks the arguments of elman_forward (and, with T = 1, of the cell op; `input_name` and
// `h_name` let the messages say "hx" for the cell). Raises c10::Error (RuntimeError in Python)
// naming the argument, its shape and the expected shape. Returns the sizes. The values of
// lengths are checked here when lengths is on the CPU; lengths on a CUDA device are left to the
// CUDA backend (a read-back, or a device-side assert during CUDA-graph capture), which calls
// check_length_values below.
ElmanSizes check_elman_forward_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& h_0,
    const at::Tensor& weight_ih,
    const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& lengths,
    const char* h_name = "h_0");

// Checks the arguments of the cell ops: input (B, I), hx (B, H), the weights and biases as for
// elman_forward. Returns the sizes with T = 1 (the cell is the sequence op over one step).
ElmanSizes check_elman_cell_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& hx,
    const at::Tensor& weight_ih,
    const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh);

// Checks the extra arguments of elman_backward: grad_output and output (T, B, H),
// grad_h_n (B, H), same dtype and device as input.
void check_elman_backward_args(
    const char* op,
    const ElmanSizes& s,
    const at::Tensor& input,
    const at::Tensor& grad_output,
    const at::Tensor& grad_h_n,
    const at::Tensor& output,
    const char* grad_output_name = "grad_output",
    const char* grad_h_n_name = "grad_h_n",
    const char* output_name = "output");

// The whole-sequence gradients that follow from ga, the gradient of every step's
// pre-activation, by GEMMs over many steps at once (csrc/elman_grads.cpp). A backend adds ga
// chunk by chunk, steps [a, a + n) at a time in any order, then calls finish() once:
//   grad_input[a : a+n] = ga_chunk W_ih                     (when wanted)
//   grad_weight_ih     += ga_chunk^T x[a : a+n]
//   grad_weight_hh     += ga_t^T h_prev(t) for the chunk's steps but the sequence's first
//   finish(g0):  grad_weight_hh += g0^T h_0 (skipped when h_0_is_zero), grad_h_0 = g0 W_hh,
// where g0 (B, H) is ga at each sequence's first step (t = 0; reversed, t = T - 1, or
// lengths[b] - 1 with lengths).
class ElmanGradAccumulator {
 public:
  // input (T, B, I); H the hidden size; grad_input is allocated here when wanted. lengths:
  // undefined or int64 (B,) on input's device. With lengths, the padded steps' rows of x and
  // of h_prev are read as 0 in the weight GEMMs: their ga is 0, but 0 * NaN (garbage padding,
  // an inf state) is NaN, and nn.RNN on a PackedSequence never reads those rows. (The kernels
  // pass lengths only when some sequence may be padded: the masks cost copies of x and h.)
  ElmanGradAccumulator(const at::Tensor& input, int64_t H, bool want_grad_input,
                       const at::Tensor& lengths = at::Tensor());
  // ga_chunk: contiguous (n, B, H), the steps [a, a + n); output (T, B, H) is the forward's.
  void add_chunk(const at::Tensor& ga_chunk, int64_t a, const at::Tensor& output,
                 const at::Tensor& input, const at::Tensor& weight_ih, bool reverse);
  // Returns grad_input (T, B, I) (zeros unless wanted), grad_h_0 (B, H) (zeros unless
  // output_mask[1]; written into grad_h_0_buffer when that is defined), grad_weight_ih (H, I),
  // grad_weight_hh (H, H). h_0_is_zero: the caller knows h_0 is all zeros (nn.RNN's default
  // hx) and g0 finite, so the g0^T h_0 GEMM, all zeros, is skipped.
  std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> finish(
      const at::Tensor& g0, const at::Tensor& input, const at::Tensor& h_0,
      const at::Tensor& weight_hh, std::array<bool, 2> output_mask, at::Tensor grad_h_0_buffer,
      bool h_0_is_zero);

 private:
  bool transposed_weight_ih;  // accumulate grad_weight_ih as (I, H) (faster with MKL, I << H)
  at::Tensor grad_input, grad_weight_ih, grad_weight_hh;
  at::Tensor step_valid;  // (T, B, 1) bool: t < lengths[b]; undefined without padded steps
};

// The same for a whole ga (T, B, H) at once (one chunk); lengths is undefined or int64 (B,) on
// ga's device (it locates g0 when reversed). mask_padded: the caller cannot rule out a padded
// step (false when it knows every length is T: the masks' copies are then skipped).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_sequence_grads(
    const at::Tensor& ga,
    const at::Tensor& output,
    const at::Tensor& input,
    const at::Tensor& h_0,
    const at::Tensor& weight_ih,
    const at::Tensor& weight_hh,
    const at::Tensor& lengths,
    bool reverse,
    std::array<bool, 2> output_mask,
    at::Tensor grad_h_0_buffer,
    bool h_0_is_zero = false,
    bool mask_padded = true);

// Raises ValueError unless every value of lengths (int64, (B,), any device: a CUDA tensor is
// read back, a synchronisation) is in [1, T]; the message names the first bad index and value.
void check_length_values(const char* op, const at::Tensor& lengths, int64_t T);

// Whether some length is below T (a padded step exists); lengths_cpu: int64 (B,) on the CPU.
bool any_length_below(const at::Tensor& lengths_cpu, int64_t T);

// lengths as a contiguous int64 CPU tensor (copied from the device when needed), or an
// undefined tensor when absent. check_elman_forward_args has validated its values.
at::Tensor lengths_on_cpu(const std::optional<at::Tensor>& lengths);

}  // namespace rnn_ext
