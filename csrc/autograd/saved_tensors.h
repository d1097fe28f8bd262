// Helpers of the C++ autograd kernels (csrc/autograd/*.cpp): ctx->save_for_backward stores
// tensors, so an optional argument (a bias, a weight, lengths) is saved as an undefined tensor
// when absent and turned back into an optional when the backward hands it to an operator.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace rnn_ext {

// The tensor to save for an optional argument: undefined when it is absent.
inline at::Tensor or_undefined(const std::optional<at::Tensor>& t) {
  return t.has_value() ? *t : at::Tensor();
}

// A saved tensor as the optional argument it was: nullopt when undefined.
inline std::optional<at::Tensor> as_optional(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

}  // namespace rnn_ext
