// Autograd of the Elman operators (elman_forward, elman_cell_forward), in C++ for every backend
// (TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m)), as for the loss operators (seq_nll_autograd.cpp)
// and torchvision's ops: no Python runs per call (a Python register_autograd cost ~30 us per
// forward and as much per backward).
//
// forward   redispatches below autograd to the backend kernel (or the fake kernel under
//           torch.compile / opcheck) and saves the inputs except the biases, and the output
//           (the only activations the fused backward needs); see keep_bias. An unused output's
//           gradient arrives undefined (grads are not materialized): the backward hands the
//           kernels a broadcast zero in its place, which the CPU kernel reads without
//           allocating it.
// backward  elman_backward / elman_cell_backward, with output_mask from needs_input_grad. With
//           create_graph=True (double backward) it differentiates instead a step-by-step
//           recomputation in ATen operations (elman_reference below; exact, slower).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>
#include <vector>

#include "saved_tensors.h"

namespace rnn_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// The recurrence in differentiable ATen operations: the semantics of rnn_ext/reference.py
// (h_t = phi(x_t W_ih^T + b_ih + h_{t-1} W_hh^T + b_hh); with lengths, steps t >= lengths[b]
// output 0 and keep the state). Returns (output (T, B, H), h_n (B, H)).
std::tuple<at::Tensor, at::Tensor> elman_reference(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const at::Tensor& bias_ih, const at::Tensor& bias_hh,
    const std::string& nonlinearity, bool reverse, const at::Tensor& lengths) {
  const int64_t T = input.size(0);
  const std::optional<at::Tensor> b_ih = as_optional(bias_ih), b_hh = as_optional(bias_hh);
  const at::Tensor len = lengths.defined() ? lengths.to(input.device()) : at::Tensor();
  std::vector<at::Tensor> outs(T);
  at::Tensor h = h_0;
  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = reverse ? T - 1 - s : s;
    const at::Tensor running = len.defined() ? at::gt(len, t).unsqueeze(1) : at::Tensor();
    // A padded step's input and state are never multiplied (as by nn.RNN on a
    // PackedSequence): masked before the products, so that NaN padding or a NaN state gives no
    // NaN through the derivatives of the discarded branch (0 * NaN). The state itself passes
    // the padded step through the where() below.
    const at::Tensor x_t =
        running.defined() ? at::where(running, input.select(0, t), 0) : input.select(0, t);
    const at::Tensor h_in = running.defined() ? at::where(running, h, 0) : h;
    const at::Tensor a = at::linear(x_t, weight_ih, b_ih) + at::linear(h_in, weight_hh, b_hh);
    const at::Tensor h_new = nonlinearity == "relu" ? at::relu(a) : at::tanh(a);
    if (!running.defined()) {
      outs[t] = h = h_new;
    } else {
      outs[t] = at::where(running, h_new, at::zeros_like(h_new));
      h = at::where(running, h_new, h);
    }
  }
  return {at::stack(outs), h};
}

// A zero that broadcasts to `like`'s shape (strides 0): the gradient of an unused output.
at::Tensor broadcast_zero(const at::Tensor& like) {
  return at::zeros({}, like.options()).expand(like.sizes());
}

// The biases are not saved for backward: the fused backward does not read them (nn.RNN's CPU
// path does not save them either, so an in-place update of a bias between forward and
// backward is allowed there; cuDNN's saves the whole weight list).
// Only double backward, which recomputes the forward, needs them: it keeps a reference and
// the version the forward saw, and refuses a bias changed in place since (the recomputation
// would not be the forward that ran).
void keep_bias(AutogradContext* ctx, const char* name, const std::optional<at::Tensor>& bias) {
  const bool has = bias.has_value() && bias->defined();
  ctx->saved_data[name] = has ? *bias : at::Tensor();
  ctx->saved_data[std::string(name) + "_version"] =
      has && !bias->is_inference() ? static_cast<int64_t>(bias->_version()) : int64_t(0);
}

at::Tensor bias_for_recomputation(AutogradContext* ctx, const char* op, const char* name) {
  const at::Tensor bias = ctx->saved_data[name].toTensor();
  if (bias.defined() && !bias.is_inference()) {  // (an inference tensor has no version)
    const int64_t saved = ctx->saved_data[std::string(name) + "_version"].toInt();
    TORCH_CHECK(static_cast<int64_t>(bias._version()) == saved, op, ": ", name,
                " was modified by an in-place operation after the forward (version ", saved,
                ", now ", bias._version(), "); double backward (create_graph=True) recomputes "
                "the forward from it. Update it out of place, or after the backward.");
  }
  return bias;
}

bool has_bias(AutogradContext* ctx, const char* name) {
  return ctx->saved_data[name].toTensor().defined();
}

// The gradients, with a graph, of `outputs` (a recomputation) for the first `n` saved tensors
// that autograd wants and that require grad; undefined for the others. Double backward.
// saved[i] is the forward's i-th argument (undefined for an absent optional tensor), but
// needs_input_grad counts only the tensors that were passed: an absent optional argument
// (bias_ih = None) has no input edge, so the edges after it are numbered one lower.
variable_list grads_by_recomputation(AutogradContext* ctx, const variable_list& saved, int64_t n,
                                     const variable_list& outputs,
                                     const variable_list& grad_outputs) {
  variable_list wanted;
  std::vector<int64_t> index;
  size_t edge = 0;  // input edge of saved[i]: the defined tensors before it
  for (int64_t i = 0; i < n; ++i) {
    if (!saved[i].defined()) {
      continue;
    }
    if (ctx->needs_input_grad(edge) && saved[i].requires_grad()) {
      wanted.push_back(saved[i]);
      index.push_back(i);
    }
    ++edge;
  }
  variable_list result(n);
  if (wanted.empty()) {
    return result;
  }
  const variable_list grads =
      torch::autograd::grad(outputs, wanted, grad_outputs, /*retain_graph=*/true,
                            /*create_graph=*/true, /*allow_unused=*/true);
  for (size_t k = 0; k < index.size(); ++k) {
    result[index[k]] = grads[k];
  }
  return result;
}

class ElmanFunction : public torch::autograd::Function<ElmanFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& h_0, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh,
                               c10::string_view nonlinearity, bool reverse,
                               const std::optional<at::Tensor>& lengths) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnn_ext::elman_forward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const std::optional<at::Tensor>&,
                             const std::optional<at::Tensor>&, c10::string_view, bool,
                             const std::optional<at::Tensor>&)>();
    auto [output, h_n] = op.call(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh,
                                 nonlinearity, reverse, lengths);
    ctx->save_for_backward({input, h_0, weight_ih, weight_hh, output, or_undefined(lengths)});
    keep_bias(ctx, "bias_ih", bias_ih);
    keep_bias(ctx, "bias_hh", bias_hh);
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    ctx->saved_data["reverse"] = reverse;
    ctx->set_materialize_grads(false);
    return {output, h_n};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor& out = saved[4];
    const at::Tensor& lengths = saved[5];
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    const bool reverse = ctx->saved_data["reverse"].toBool();
    const at::Tensor grad_output =
        grad_outputs[0].defined() ? grad_outputs[0] : broadcast_zero(out);
    const at::Tensor grad_h_n =
        grad_outputs[1].defined() ? grad_outputs[1] : broadcast_zero(out.select(0, 0));
    if (at::GradMode::is_enabled()) {
      const char* op_name = "rnn_ext::elman_forward";
      const variable_list s = {saved[0], saved[1], saved[2], saved[3],
                               bias_for_recomputation(ctx, op_name, "bias_ih"),
                               bias_for_recomputation(ctx, op_name, "bias_hh")};
      auto [o, h] = elman_reference(s[0], s[1], s[2], s[3], s[4], s[5], nonlinearity, reverse,
                                    lengths);
      variable_list g = grads_by_recomputation(ctx, s, 6, {o, h}, {grad_output, grad_h_n});
      g.resize(9);
      return g;
    }
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnn_ext::elman_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                           at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, c10::string_view, bool,
                             const std::optional<at::Tensor>&, std::array<bool, 2>)>();
    auto [gx, gh0, gwih, gwhh, gb] =
        op.call(grad_output, grad_h_n, saved[0], saved[1], saved[2], saved[3], out,
                nonlinearity, reverse, as_optional(lengths),
                {ctx->needs_input_grad(0), ctx->needs_input_grad(1)});
    return {gx,
            gh0,
            gwih,
            gwhh,
            has_bias(ctx, "bias_ih") ? gb : at::Tensor(),
            has_bias(ctx, "bias_hh") ? gb : at::Tensor(),
            at::Tensor(),
            at::Tensor(),
            at::Tensor()};
  }
};

class ElmanCellFunction : public torch::autograd::Function<ElmanCellFunction> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& hx, const at::Tensor& weight_ih,
                               const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& bias_ih,
                               const std::optional<at::Tensor>& bias_hh,
                               c10::string_view nonlinearity) {
    at::AutoDispatchBelowADInplaceOrView guard;
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnn_ext::elman_cell_forward", "")
                         .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                           const at::Tensor&, const at::Tensor&,
                                           const std::optional<at::Tensor>&,
                                           const std::optional<at::Tensor>&,
                                           c10::string_view)>();
    at::Tensor hy = op.call(input, hx, weight_ih, weight_hh, bias_ih, bias_hh, nonlinearity);
    ctx->save_for_backward({input, hx, weight_ih, weight_hh, hy});
    keep_bias(ctx, "bias_ih", bias_ih);
    keep_bias(ctx, "bias_hh", bias_hh);
    ctx->saved_data["nonlinearity"] = std::string(nonlinearity);
    return {hy};
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    const std::string nonlinearity = ctx->saved_data["nonlinearity"].toStringRef();
    if (at::GradMode::is_enabled()) {
      const char* op_name = "rnn_ext::elman_cell_forward";
      const variable_list s = {saved[0], saved[1], saved[2], saved[3],
                               bias_for_recomputation(ctx, op_name, "bias_ih"),
                               bias_for_recomputation(ctx, op_name, "bias_hh")};
      auto [o, h] = elman_reference(s[0].unsqueeze(0), s[1], s[2], s[3], s[4], s[5],
                                    nonlinearity, /*reverse=*/false, at::Tensor());
      variable_list g = grads_by_recomputation(ctx, s, 6, {h}, {grad_outputs[0]});
      g.resize(7);
      return g;
    }
    static auto op = c10::Dispatcher::singleton()
                         .findSchemaOrThrow("rnn_ext::elman_cell_backward", "")
                         .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                                           at::Tensor>(
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             const at::Tensor&, const at::Tensor&, const at::Tensor&,
                             c10::string_view)>();
    auto [gx, ghx, gwih, gwhh, gb] =
        op.call(grad_outputs[0], saved[0], saved[1], saved[2], saved[3], saved[4], nonlinearity);
    return {gx,
            ghx,
            gwih,
            gwhh,
            has_bias(ctx, "bias_ih") ? gb : at::Tensor(),
            has_bias(ctx, "bias_hh") ? gb : at::Tensor(),
            at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> elman_forward_autograd(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths) {
  const variable_list out = ElmanFunction::apply(input, h_0, weight_ih, weight_hh, bias_ih,
                                                 bias_hh, nonlinearity, reverse, lengths);
  return {out[0], out[1]};
}

at::Tensor elman_cell_forward_autograd(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& bias_ih,
                                       const std::optional<at::Tensor>& bias_hh,
                                       c10::string_view nonlinearity) {
  return ElmanCellFunction::apply(input, hx, weight_ih, weight_hh, bias_ih, bias_hh,
                                  nonlinearity)[0];
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m) {
  m.impl("elman_forward", &elman_forward_autograd);
  m.impl("elman_cell_forward", &elman_cell_forward_autograd);
}

}  // namespace rnn_ext
