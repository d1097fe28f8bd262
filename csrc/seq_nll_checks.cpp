// Argument checks of the sequence-loss operators (seq_nll_loss_*, seq_cross_entropy_*), shared
// by the CPU and CUDA kernels so that the same mistake gives the same message on every device.
// The exception types follow F.nll_loss: ValueError for a bad reduction and for a target whose
// shape does not match the input's, IndexError for a target value out of range, RuntimeError
// for everything else.
#include <ATen/ATen.h>

#include "seq_nll.h"

namespace rnn_ext {

Reduction parse_reduction(std::string_view reduction, const char* op) {
  if (reduction == "mean") {
    return Reduction::Mean;
  }
  if (reduction == "sum") {
    return Reduction::Sum;
  }
  if (reduction == "none") {
    return Reduction::None;
  }
  TORCH_CHECK_VALUE(false, op, ": '", reduction,
                    "' is not a valid value for reduction: expected 'none', 'mean' or 'sum'");
}

at::ScalarType seq_loss_stat_dtype(at::ScalarType dt) {
  return (dt == at::kHalf || dt == at::kBFloat16) ? at::kFloat : dt;
}

std::vector<int64_t> seq_target_shape(const SeqLossSizes& s, bool target_batch_first) {
  return target_batch_first ? std::vector<int64_t>{s.B, s.T} : std::vector<int64_t>{s.T, s.B};
}

SeqLossSizes check_seq_loss_args(
    const char* op,
    const char* input_name,
    const at::Tensor& input,
    const at::Tensor& target,
    const std::optional<at::Tensor>& weight,
    bool target_batch_first) {
  TORCH_CHECK(input.dim() == 3, op, ": expected ", input_name,
              " of rank 3, (T, B, C) = (time, batch, classes), but got ", input_name,
              " of shape ", input.sizes());
  const auto dt = input.scalar_type();
  TORCH_CHECK(
      dt == at::kFloat || dt == at::kDouble || dt == at::kBFloat16 || dt == at::kHalf, op,
      ": expected ", input_name,
      " of a floating dtype (float32, float64, bfloat16 or float16), but got ", dt);
  TORCH_CHECK(target.scalar_type() == at::kLong || target.scalar_type() == at::kByte, op,
              ": expected target of dtype int64 (or uint8, as F.nll_loss), but got ",
              target.scalar_type());
  SeqLossSizes s{input.size(0), input.size(1), input.size(2), 0, 0};
  const auto expected = seq_target_shape(s, target_batch_first);
  TORCH_CHECK_VALUE(
      target.sizes() == at::IntArrayRef(expected), op, ": expected target of shape ",
      target_batch_first ? "(B, T) = " : "(T, B) = ", at::IntArrayRef(expected), " to match ",
      input_name, " of shape (T, B, C) = ", input.sizes(), ", but got target of shape ",
      target.sizes(),
      target_batch_first ? " (target_batch_first=True; pass target_batch_first=False for a "
                           "(T, B) target)"
                         : " (target_batch_first=False; pass target_batch_first=True for a "
                           "(B, T) target)");
  TORCH_CHECK(target.device() == input.device(), op, ": expected target on device ",
              input.device(), " like ", input_name, ", but got it on ", target.device());
  s.target_stride_t = target.stride(target_batch_first ? 1 : 0);
  s.target_stride_b = target.stride(target_batch_first ? 0 : 1);
  if (weight.has_value() && weight->defined()) {
    const auto& w = *weight;
    TORCH_CHECK(w.dim() == 1 && w.size(0) == s.C, op, ": expected weight of shape (C,) = (",
                s.C, ",) for the C classes of ", input_name, " of shape ", input.sizes(),
                ", but got weight of shape ", w.sizes());
    TORCH_CHECK(w.scalar_type() == dt, op, ": expected weight to have dtype ", dt, " like ",
                input_name, ", but got ", w.scalar_type());
    TORCH_CHECK(w.device() == input.device(), op, ": expected weight on device ", input.device(),
                " like ", input_name, ", but got it on ", w.device());
  }
  return s;
}

void check_seq_loss_backward_args(
    const char* op,
    const SeqLossSizes& s,
    const at::Tensor& input,
    const at::Tensor& grad_loss,
    Reduction reduction,
    bool target_batch_first,
    const at::Tensor& total_weight,
    const at::Tensor* row_max,
    const at::Tensor* log_sum) {
  const auto expected = reduction == Reduction::None ? seq_target_shape(s, target_batch_first)
                                                     : std::vector<int64_t>{};
  TORCH_CHECK(grad_loss.sizes() == at::IntArrayRef(expected), op,
              ": expected grad_loss of the loss's shape ", at::IntArrayRef(expected),
              " (reduction '", reduction == Reduction::None ? "none" : "mean/sum",
              "'), but got grad_loss of shape ", grad_loss.sizes());
  TORCH_CHECK(grad_loss.scalar_type() == input.scalar_type(), op,
              ": expected grad_loss to have dtype ", input.scalar_type(),
              " like the input, but got ", grad_loss.scalar_type());
  TORCH_CHECK(grad_loss.device() == input.device(), op, ": expected grad_loss on device ",
              input.device(), ", but got it on ", grad_loss.device());
  const auto stat = seq_loss_stat_dtype(input.scalar_type());
  TORCH_CHECK(total_weight.dim() == 0, op,
              ": expected total_weight to be a scalar (shape []), but got shape ",
              total_weight.sizes());
  TORCH_CHECK(total_weight.scalar_type() == stat && total_weight.device() == input.device(), op,
              ": expected total_weight of dtype ", stat, " on ", input.device(), ", but got ",
              total_weight.scalar_type(), " on ", total_weight.device());
  // The cross-entropy's row statistics, saved by its forward.
  const std::pair<const char*, const at::Tensor*> stats[] = {{"row_max", row_max},
                                                              {"log_sum", log_sum}};
  for (const auto& [name, stat_t] : stats) {
    if (stat_t == nullptr) {
      continue;
    }
    TORCH_CHECK(stat_t->sizes() == at::IntArrayRef({s.T, s.B}), op, ": expected ", name,
                " of shape (T, B) = ", at::IntArrayRef({s.T, s.B}), ", but got ", name,
                " of shape ", stat_t->sizes());
    TORCH_CHECK(stat_t->scalar_type() == stat && stat_t->device() == input.device(), op,
                ": expected ", name, " of dtype ", stat, " on ", input.device(), ", but got ",
                stat_t->scalar_type(), " on ", stat_t->device());
  }
}

void throw_seq_target_out_of_range(
    const char* op,
    int64_t value,
    int64_t C,
    int64_t ignore_index,
    int64_t t,
    int64_t b,
    bool target_batch_first) {
  const int64_t i0 = target_batch_first ? b : t;
  const int64_t i1 = target_batch_first ? t : b;
  TORCH_CHECK_INDEX(false, op, ": Target ", value, " is out of bounds: target[", i0, ", ", i1,
                    "] (t = ", t, ", b = ", b, ") = ", value,
                    ", expected a class index in [0, C) = [0, ", C,
                    ") or ignore_index = ", ignore_index);
}

}  // namespace rnn_ext
