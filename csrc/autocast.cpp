// Autocast kernels of the forward operators, on the CPU and on CUDA (one registration each).
//
// Elman (elman_forward, elman_cell_forward): like nn.RNN / nn.RNNCell. On CUDA, rnn_tanh,
// rnn_relu and their cells are on autocast's lower-precision list
// (aten/src/ATen/autocast_mode.cpp); on the CPU they are composite and their GEMMs are on it, so
// nn.RNN's output is in the autocast dtype there too. Here every floating argument of the
// autocast's device but float64 is cast to the autocast dtype (float16 or bfloat16;
// torch.get_autocast_dtype).
//
// Losses (seq_nll_loss_forward, seq_cross_entropy_forward): like F.nll_loss and F.cross_entropy
// (nll_loss is on autocast's float32 list for both devices; the "Autocast Op Reference" of
// https://pytorch.org/docs/stable/amp.html): a float16 / bfloat16 `log_probs` / `logits` (and
// `weight`) of the autocast's device is cast to float32, so the loss is float32 (a 16-bit "sum"
// over many rows would overflow or lose digits); float32 and float64 arguments are left alone.
//
// Then the operator runs below the autocast key; autograd records the casts, so gradients come
// back in each argument's own dtype. The backward operators take the forward's dtypes and need
// no autocast kernel.
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
std::tuple<at::Tensor, at::Tensor> elman_forward_autocast(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  const auto dt = at::autocast::get_autocast_dtype(kDevice);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::elman_forward", "")
                       .typed<decltype(elman_forward_autocast<kKey, kDevice>)>();
  return op.call(cached_cast(dt, input, kDevice), cached_cast(dt, h_0, kDevice),
                 cached_cast(dt, weight_ih, kDevice), cached_cast(dt, weight_hh, kDevice),
                 cached_cast(dt, bias_ih, kDevice), cached_cast(dt, bias_hh, kDevice),
                 nonlinearity, reverse, lengths);
}

template <c10::DispatchKey kKey, c10::DeviceType kDevice>
at::Tensor elman_cell_forward_autocast(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& bias_ih,
                                       const std::optional<at::Tensor>& bias_hh,
                                       c10::string_view nonlinearity) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(kKey);
  const auto dt = at::autocast::get_autocast_dtype(kDevice);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::elman_cell_forward", "")
                       .typed<decltype(elman_cell_forward_autocast<kKey, kDevice>)>();
  return op.call(cached_cast(dt, input, kDevice), cached_cast(dt, hx, kDevice),
                 cached_cast(dt, weight_ih, kDevice), cached_cast(dt, weight_hh, kDevice),
                 cached_cast(dt, bias_ih, kDevice), cached_cast(dt, bias_hh, kDevice),
                 nonlinearity);
}

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
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_autocast(
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

template <c10::DispatchKey kKey, c10::DeviceType kDevice>
void register_autocast(torch::Library& m) {
  m.impl("elman_forward", &elman_forward_autocast<kKey, kDevice>);
  m.impl("elman_cell_forward", &elman_cell_forward_autocast<kKey, kDevice>);
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_autocast<kKey, kDevice>);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_autocast<kKey, kDevice>);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, AutocastCPU, m) {
  register_autocast<c10::DispatchKey::AutocastCPU, c10::DeviceType::CPU>(m);
}

TORCH_LIBRARY_IMPL(rnn_ext, AutocastCUDA, m) {
  register_autocast<c10::DispatchKey::AutocastCUDA, c10::DeviceType::CUDA>(m);
}

}  // namespace rnn_ext
