// Autocast kernels of the two sequence-loss forward operators, on the CPU and on CUDA.
//
// Like F.nll_loss and F.cross_entropy (nll_loss is on autocast's float32 list for both
// devices: aten/src/ATen/autocast_mode.cpp, and the "Autocast Op Reference" of
// https://pytorch.org/docs/stable/amp.html): under torch.autocast a float16 / bfloat16
// `log_probs` / `logits` (and `weight`) of the autocast's device is cast to float32, so the loss
// is float32 (a 16-bit "sum" over many rows would overflow or lose digits); float32 and float64
// arguments are left alone. Then the operator runs below the autocast key; autograd records the
// casts, so the input's gradient comes back in the input's own dtype.
#include <ATen/ATen.h>
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <torch/library.h>

#include <optional>
#include <tuple>

namespace rnn_ext {
namespace {

using at::autocast::cached_cast;

template <c10::DispatchKey kKey, c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor> seq_nll_loss_forward_autocast(
    const at::Tensor& log_probs, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, bool target_batch_first) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::seq_nll_loss_forward", "")
                       .typed<decltype(seq_nll_loss_forward_autocast<kKey, kDevice>)>();
  return op.call(cached_cast(at::kFloat, log_probs, kDevice), target,
                 cached_cast(at::kFloat, weight, kDevice), ignore_index, reduction,
                 target_batch_first);
}

template <c10::DispatchKey kKey, c10::DeviceType kDevice>
std::tuple<at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_autocast(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction, bool target_batch_first) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::seq_cross_entropy_forward", "")
                       .typed<decltype(seq_cross_entropy_forward_autocast<kKey, kDevice>)>();
  return op.call(cached_cast(at::kFloat, logits, kDevice), target,
                 cached_cast(at::kFloat, weight, kDevice), ignore_index, reduction,
                 target_batch_first);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, AutocastCPU, m) {
  constexpr auto key = c10::DispatchKey::AutocastCPU;
  constexpr auto dev = c10::DeviceType::CPU;
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_autocast<key, dev>);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_autocast<key, dev>);
}

TORCH_LIBRARY_IMPL(rnn_ext, AutocastCUDA, m) {
  constexpr auto key = c10::DispatchKey::AutocastCUDA;
  constexpr auto dev = c10::DeviceType::CUDA;
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_autocast<key, dev>);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_autocast<key, dev>);
}

}  // namespace rnn_ext
