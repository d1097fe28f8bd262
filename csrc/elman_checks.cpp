// Argument checks of the Elman operators, shared by the CPU and CUDA kernels so that the same
// mistake gives the same message on every device.
#include <ATen/ATen.h>
#include <c10/util/irange.h>

#include <algorithm>

#include "elman.h"

namespace rnn_ext {

Activation parse_nonlinearity(std::string_view nonlinearity, const char* op) {
  if (nonlinearity == "tanh") {
    return Activation::Tanh;
  }
  if (nonlinearity == "relu") {
    return Activation::Relu;
  }
  TORCH_CHECK_VALUE(
      false, op, ": unknown nonlinearity '", nonlinearity, "': expected 'tanh' or 'relu'");
}

namespace {

void check_float_like(const char* op, const char* name, const at::Tensor& t, const at::Tensor& ref,
                      const char* ref_name) {
  TORCH_CHECK(
      t.scalar_type() == ref.scalar_type(), op, ": expected ", name, " to have dtype ",
      ref.scalar_type(), " like ", ref_name, ", but got ", t.scalar_type());
  TORCH_CHECK(
      t.device() == ref.device(), op, ": expected ", name, " on device ", ref.device(), " like ",
      ref_name, ", but got it on ", t.device());
}

void check_shape(const char* op, const char* name, const at::Tensor& t,
                 at::IntArrayRef expected, const char* expected_desc) {
  TORCH_CHECK(
      t.sizes() == expected, op, ": expected ", name, " of shape ", expected_desc, " = ",
      expected, ", but got ", name, " of shape ", t.sizes());
}

}  // namespace

ElmanSizes check_elman_forward_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& h_0,
    const at::Tensor& weight_ih,
    const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh,
    const std::optional<at::Tensor>& lengths,
    const char* h_name) {
  TORCH_CHECK(
      input.dim() == 3, op, ": expected input of rank 3, (T, B, I) = (time, batch, features), ",
      "but got input of shape ", input.sizes());
  const auto dt = input.scalar_type();
  TORCH_CHECK(
      dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
      ": expected input of a floating dtype (float32, float64, bfloat16 or float16), but got ", dt);
  TORCH_CHECK(
      weight_hh.dim() == 2 && weight_hh.size(0) == weight_hh.size(1), op,
      ": expected weight_hh of shape (H, H), square, but got weight_hh of shape ",
      weight_hh.sizes());
  const ElmanSizes s{input.size(0), input.size(1), input.size(2), weight_hh.size(0)};
  TORCH_CHECK_VALUE(
      s.T > 0, op, ": expected a sequence length T larger than 0, but got input of shape ",
      input.sizes());
  check_shape(op, "weight_ih", weight_ih, {s.H, s.I}, "(H, I)");
  check_shape(op, h_name, h_0, {s.B, s.H}, "(B, H)");
  check_float_like(op, "weight_ih", weight_ih, input, "input");
  check_float_like(op, "weight_hh", weight_hh, input, "input");
  check_float_like(op, h_name, h_0, input, "input");
  for (const auto& [name, bias] : {std::pair<const char*, const std::optional<at::Tensor>&>{
                                       "bias_ih", bias_ih},
                                   {"bias_hh", bias_hh}}) {
    if (bias.has_value() && bias->defined()) {
      check_shape(op, name, *bias, {s.H}, "(H,)");
      check_float_like(op, name, *bias, input, "input");
    }
  }
  if (lengths.has_value() && lengths->defined()) {
    const auto& l = *lengths;
    TORCH_CHECK(
        l.scalar_type() == at::kLong, op, ": expected lengths of dtype int64, but got ",
        l.scalar_type());
    check_shape(op, "lengths", l, {s.B}, "(B,)");
    TORCH_CHECK(
        l.device().is_cpu() || l.device() == input.device(), op,
        ": expected lengths on the CPU or on input's device ", input.device(), ", but got it on ",
        l.device());
    if (l.device().is_cpu()) {
      check_length_values(op, l, s.T);
    }
  }
  return s;
}

void check_length_values(const char* op, const at::Tensor& lengths, int64_t T) {
  const at::Tensor lc = lengths_on_cpu(lengths);
  const int64_t* p = lc.const_data_ptr<int64_t>();
  for (const auto b : c10::irange(lc.numel())) {
    TORCH_CHECK_VALUE(
        p[b] >= 1 && p[b] <= T, op, ": expected every length in [1, T] = [1, ", T,
        "], but lengths[", b, "] = ", p[b],
        " (an empty sequence is not allowed; a length cannot exceed the input's T)");
  }
}

bool any_length_below(const at::Tensor& lengths_cpu, int64_t T) {
  const at::Tensor c = lengths_cpu.contiguous();
  const int64_t* p = c.const_data_ptr<int64_t>();
  return std::any_of(p, p + c.numel(), [T](int64_t v) { return v < T; });
}

ElmanSizes check_elman_cell_args(
    const char* op,
    const at::Tensor& input,
    const at::Tensor& hx,
    const at::Tensor& weight_ih,
    const at::Tensor& weight_hh,
    const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh) {
  TORCH_CHECK(input.dim() == 2, op, ": expected input of rank 2, (B, I) = (batch, features), ",
              "but got input of shape ", input.sizes());
  TORCH_CHECK(hx.dim() == 2, op, ": expected hx of rank 2, (B, H), but got hx of shape ",
              hx.sizes());
  return check_elman_forward_args(op, input.unsqueeze(0), hx, weight_ih, weight_hh, bias_ih,
                                  bias_hh, std::nullopt, "hx");
}

void check_elman_backward_args(
    const char* op,
    const ElmanSizes& s,
    const at::Tensor& input,
    const at::Tensor& grad_output,
    const at::Tensor& grad_h_n,
    const at::Tensor& output,
    const char* grad_output_name,
    const char* grad_h_n_name,
    const char* output_name) {
  const std::vector<int64_t> tbh = {s.T, s.B, s.H};
  const std::vector<int64_t> bh = {s.B, s.H};
  check_shape(op, grad_output_name, grad_output, tbh, "(T, B, H)");
  check_shape(op, output_name, output, tbh, "(T, B, H)");
  check_shape(op, grad_h_n_name, grad_h_n, bh, "(B, H)");
  check_float_like(op, grad_h_n_name, grad_h_n, input, "input");
  check_float_like(op, grad_output_name, grad_output, input, "input");
  check_float_like(op, output_name, output, input, "input");
}

at::Tensor lengths_on_cpu(const std::optional<at::Tensor>& lengths) {
  if (!lengths.has_value() || !lengths->defined()) {
    return at::Tensor();
  }
  return lengths->to(at::kCPU, at::kLong).contiguous();
}

}  // namespace rnn_ext
