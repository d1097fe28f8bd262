// Autograd of the sequence-loss operators (seq_nll_loss_forward, seq_cross_entropy_forward), in
// C++ for every backend (TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m)), as torchvision registers the
// autograd of its ops (csrc/ops/autograd/).
//
// Why C++ and not torch.library.register_autograd: these operators do microseconds of work (the
// lesson's loss: 4096 rows of 85 classes), and the Python autograd wrapper cost about 20 us per
// forward + backward, more than the kernels; ATen's F.nll_loss pays none of it.
//
// forward   redispatches below autograd to the backend kernel (or the fake kernel under
//           torch.compile / opcheck) and saves the input, target, weight and the statistics
//           (total_weight; for cross-entropy row_max and log_sum, the only per-row numbers it
//           keeps).
// backward  the *_backward operator. With create_graph=True (double backward) it instead
//           differentiates a recomputation with ATen's nll_loss / cross_entropy on the flattened
//           pair, which is itself differentiable: exact, slower, only then.
// weight is not differentiable (as F.nll_loss): a weight that requires grad is an error.
#include <ATen/ATen.h>
#include <ATen/core/Reduction.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include <string>
#include <tuple>

#include "saved_tensors.h"

namespace rnn_ext {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// ATen's reduction enum for the schema's string (already validated by the forward kernel).
int64_t aten_reduction(const std::string& reduction) {
  if (reduction == "none") {
    return at::Reduction::None;
  }
  return reduction == "sum" ? at::Reduction::Sum : at::Reduction::Mean;
}

// The loss by ATen's differentiable operators on the flattened pair (the lesson's
// nll_loss_seq): log_probs / logits (T, B, C) -> (T*B, C), target -> (T*B,) in r = t*B + b order.
at::Tensor reference_loss(bool cross_entropy, const at::Tensor& input, const at::Tensor& target,
                          const std::optional<at::Tensor>& weight, int64_t ignore_index,
                          const std::string& reduction, bool target_batch_first) {
  const int64_t T = input.size(0), B = input.size(1), C = input.size(2);
  const at::Tensor tgt = (target_batch_first ? target.transpose(0, 1) : target).reshape({T * B});
  const at::Tensor in2d = input.reshape({T * B, C});
  const int64_t red = aten_reduction(reduction);
  at::Tensor out = cross_entropy
                       ? at::cross_entropy_loss(in2d, tgt, weight, red, ignore_index, 0.0)
                       : at::nll_loss(in2d, tgt, weight, red, ignore_index);
  if (red == at::Reduction::None) {
    out = out.view({T, B});
    if (target_batch_first) {
      out = out.transpose(0, 1);
    }
  }
  return out;
}

// Called before Function::apply, whose forward runs with grad mode off: here the caller's grad
// mode still holds.
void check_weight_not_differentiable(const char* op, const std::optional<at::Tensor>& weight) {
  TORCH_CHECK(
      !(weight.has_value() && weight->defined() && weight->requires_grad() &&
        at::GradMode::is_enabled()),
      op, ": the loss is not differentiable with respect to weight (as F.nll_loss); weight "
      "cannot have requires_grad=True (pass weight.detach())");
}

// Saves what both losses' backward need; `stats` are the forward's statistics outputs.
void save(AutogradContext* ctx, const at::Tensor& input, const at::Tensor& target,
          const std::optional<at::Tensor>& weight, int64_t ignore_index,
          c10::string_view reduction, bool target_batch_first, const variable_list& stats) {
  variable_list saved{input, target, or_undefined(weight)};
  saved.insert(saved.end(), stats.begin(), stats.end());
  ctx->save_for_backward(saved);
  ctx->saved_data["ignore_index"] = ignore_index;
  ctx->saved_data["reduction"] = std::string(reduction);
  ctx->saved_data["target_batch_first"] = target_batch_first;
  ctx->mark_non_differentiable(stats);
}

// The saved non-tensor arguments, and the optional weight, as the *_backward operators take
// them.
struct SavedArgs {
  std::optional<at::Tensor> weight;
  int64_t ignore_index;
  std::string reduction;
  bool target_batch_first;

  SavedArgs(AutogradContext* ctx, const variable_list& saved)
      : weight(as_optional(saved[2])),
        ignore_index(ctx->saved_data["ignore_index"].toInt()),
        reduction(ctx->saved_data["reduction"].toStringRef()),
        target_batch_first(ctx->saved_data["target_batch_first"].toBool()) {}
};

// grad of the loss with respect to the input, with a graph, by differentiating the ATen
// recomputation (double backward).
at::Tensor grad_by_recomputation(AutogradContext* ctx, bool cross_entropy,
                                 const variable_list& saved, const at::Tensor& grad_loss) {
  const at::Tensor& input = saved[0];
  const SavedArgs a(ctx, saved);
  const at::Tensor loss = reference_loss(cross_entropy, input, saved[1], a.weight,
                                         a.ignore_index, a.reduction, a.target_batch_first);
  return torch::autograd::grad({loss}, {input}, {grad_loss}, /*retain_graph=*/true,
                               /*create_graph=*/true)[0];
}

// seq_nll_loss_forward (kCrossEntropy false: outputs loss, total_weight) and
// seq_cross_entropy_forward (true: loss, row_max, log_sum, total_weight). Saved: input, target,
// weight, then the statistics outputs.
template <bool kCrossEntropy>
class SeqLossFunction : public torch::autograd::Function<SeqLossFunction<kCrossEntropy>> {
 public:
  static variable_list forward(AutogradContext* ctx, const at::Tensor& input,
                               const at::Tensor& target, const std::optional<at::Tensor>& weight,
                               int64_t ignore_index, c10::string_view reduction,
                               bool target_batch_first) {
    at::AutoDispatchBelowADInplaceOrView guard;
    variable_list out;
    if constexpr (kCrossEntropy) {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("rnn_ext::seq_cross_entropy_forward", "")
                           .typed<std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, int64_t, c10::string_view,
                               bool)>();
      auto [loss, row_max, log_sum, total_weight] =
          op.call(input, target, weight, ignore_index, reduction, target_batch_first);
      out = {loss, row_max, log_sum, total_weight};
    } else {
      static auto op = c10::Dispatcher::singleton()
                           .findSchemaOrThrow("rnn_ext::seq_nll_loss_forward", "")
                           .typed<std::tuple<at::Tensor, at::Tensor>(
                               const at::Tensor&, const at::Tensor&,
                               const std::optional<at::Tensor>&, int64_t, c10::string_view,
                               bool)>();
      auto [loss, total_weight] =
          op.call(input, target, weight, ignore_index, reduction, target_batch_first);
      out = {loss, total_weight};
    }
    save(ctx, input, target, weight, ignore_index, reduction, target_batch_first,
         variable_list(out.begin() + 1, out.end()));
    return out;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    const variable_list saved = ctx->get_saved_variables();
    at::Tensor grad;
    if (at::GradMode::is_enabled()) {
      grad = grad_by_recomputation(ctx, kCrossEntropy, saved, grad_outputs[0]);
    } else if (ctx->needs_input_grad(0)) {
      const SavedArgs a(ctx, saved);
      if constexpr (kCrossEntropy) {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnn_ext::seq_cross_entropy_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&,
                                               const std::optional<at::Tensor>&, int64_t,
                                               c10::string_view, bool, const at::Tensor&,
                                               const at::Tensor&, const at::Tensor&)>();
        grad = op.call(grad_outputs[0], saved[0], saved[1], a.weight, a.ignore_index,
                       a.reduction, a.target_batch_first, saved[3], saved[4], saved[5]);
      } else {
        static auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("rnn_ext::seq_nll_loss_backward", "")
                             .typed<at::Tensor(const at::Tensor&, const at::Tensor&,
                                               const at::Tensor&,
                                               const std::optional<at::Tensor>&, int64_t,
                                               c10::string_view, bool, const at::Tensor&)>();
        grad = op.call(grad_outputs[0], saved[0], saved[1], a.weight, a.ignore_index,
                       a.reduction, a.target_batch_first, saved[3]);
      }
    }
    return {grad, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

std::tuple<at::Tensor, at::Tensor> seq_nll_loss_forward_autograd(
    const at::Tensor& log_probs, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction,
    bool target_batch_first) {
  check_weight_not_differentiable("rnn_ext::seq_nll_loss_forward", weight);
  const variable_list out = SeqLossFunction<false>::apply(log_probs, target, weight,
                                                         ignore_index, reduction,
                                                         target_batch_first);
  return {out[0], out[1]};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_autograd(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, bool target_batch_first) {
  check_weight_not_differentiable("rnn_ext::seq_cross_entropy_forward", weight);
  const variable_list out = SeqLossFunction<true>::apply(logits, target, weight, ignore_index,
                                                        reduction, target_batch_first);
  return {out[0], out[1], out[2], out[3]};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, Autograd, m) {
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_autograd);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_autograd);
}

}  // namespace rnn_ext
