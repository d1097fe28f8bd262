// The sequence-loss CUDA kernels of csrc/cuda/seq_nll_kernels.cuh, compiled for the host and run
// through the emulation of cuda_emu.h on CPU tensors (part of the module of elman_emu.cpp). Each
// function fills the kernel's arguments as csrc/cuda/seq_nll_cuda.cu does (Targets, GradScale,
// the per-row buffers, the bad-row record) and runs one launch of `grid` blocks of kThreads.
// The host code of csrc/cuda/seq_nll_cuda.cu is compiled here too, whole, its CUDA calls
// emulated by cuda_host_emu.h, and its operator entry points exposed under their op names
// (seq_nll_loss_forward, ...; register_seq_nll below).
#include <torch/extension.h>

#include "cuda_emu.h"       // after the PyTorch headers, before the kernels
#include "cuda_host_emu.h"  // the CUDA runtime and c10::cuda calls of the host code

#include "cuda/seq_nll_cuda.cu"  // the host code, and through it seq_nll_kernels.cuh

#include <string>
#include <tuple>

namespace {

using rnn_ext::Reduction;
using rnn_ext::cuda_detail::GradScale;
using rnn_ext::cuda_detail::kNoBadRow;
using rnn_ext::cuda_detail::kThreads;
using rnn_ext::cuda_detail::Targets;

Reduction parse_reduction(const std::string& r) {
  TORCH_CHECK(r == "none" || r == "mean" || r == "sum", "bad reduction '", r, "'");
  return r == "none" ? Reduction::None : (r == "mean" ? Reduction::Mean : Reduction::Sum);
}

// input (T, B, C) with any strides; target (T, B), or (B, T) when target_batch_first.
template <typename scalar_t, typename index_t>
Targets<scalar_t, index_t> targets(const at::Tensor& input, const at::Tensor& target,
                                   const std::optional<at::Tensor>& weight, int64_t ignore_index,
                                   bool tbf) {
  return {target.const_data_ptr<index_t>(), target.stride(tbf ? 1 : 0), target.stride(tbf ? 0 : 1),
          weight.has_value() ? weight->const_data_ptr<scalar_t>() : nullptr,
          weight.has_value() ? weight->stride(0) : 0, ignore_index, input.size(1),
          input.size(2)};
}

template <typename F>
void dispatch(const at::Tensor& input, const at::Tensor& target, const F& f) {
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(), "emu_loss", [&] {
    if (target.scalar_type() == at::kByte) {
      f(scalar_t(0), uint8_t(0));
    } else {
      f(scalar_t(0), int64_t(0));
    }
  });
}

// A forward kernel's per-row results, NaN until written: reduction none, the loss in the
// target's shape and the input's dtype; else the float64 per-row losses (T * B); and the float64
// row weights (T * B). As forward_buffers in seq_nll_cuda.cu, before the reductions.
struct RowBuffers {
  at::Tensor loss, row_w;

  RowBuffers(const at::Tensor& input, const at::Tensor& target, bool none) {
    const int64_t rows = input.size(0) * input.size(1);
    const auto dopt = input.options().dtype(at::kDouble);
    loss = none ? at::full(target.sizes(), std::nan(""), input.options())
                : at::full({rows}, std::nan(""), dopt);
    row_w = at::full({rows}, std::nan(""), dopt);
  }

  template <typename scalar_t>
  rnn_ext::cuda_detail::RowOutputs<scalar_t> outputs(bool none, bool tbf) {
    return {none, tbf, none ? loss.data_ptr<scalar_t>() : nullptr,
            none ? nullptr : loss.data_ptr<double>(), row_w.data_ptr<double>()};
  }
};

void run(int64_t grid, const std::function<void()>& body) {
  py::gil_scoped_release no_gil;
  cuda_emu::launch(static_cast<unsigned>(grid), kThreads, 0, body);
}

// nll_forward_kernel. Returns (loss: the target's shape for reduction none, else the float64
// per-row losses (T * B), row weights float64 (T * B), the smallest bad row or INT64_MAX).
std::tuple<at::Tensor, at::Tensor, int64_t> nll_forward(const at::Tensor& log_probs,
                                                        const at::Tensor& target,
                                                        const std::optional<at::Tensor>& weight,
                                                        int64_t ignore_index, bool none, bool tbf,
                                                        int64_t grid) {
  const int64_t T = log_probs.size(0);
  RowBuffers f(log_probs, target, none);
  int64_t bad = kNoBadRow;
  dispatch(log_probs, target, [&](auto s, auto i) {
    using scalar_t = decltype(s);
    using index_t = decltype(i);
    const auto tg = targets<scalar_t, index_t>(log_probs, target, weight, ignore_index, tbf);
    const scalar_t* lp = log_probs.const_data_ptr<scalar_t>();
    const int64_t st = log_probs.stride(0), sb = log_probs.stride(1), sc = log_probs.stride(2);
    const auto out = f.outputs<scalar_t>(none, tbf);
    int64_t* badp = &bad;
    run(grid, [=] {
      rnn_ext::cuda_detail::nll_forward_kernel<scalar_t, index_t>(lp, st, sb, sc, tg, T, out,
                                                                  badp);
    });
  });
  return {f.loss, f.row_w, bad};
}

// ce_forward_kernel. Returns (loss as nll_forward, row weights, row_max and log_sum (T, B) in
// the statistics dtype, NaN-filled before the kernel, the smallest bad row or INT64_MAX).
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, int64_t> ce_forward(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, bool none, bool tbf, int64_t grid) {
  const int64_t T = logits.size(0), B = logits.size(1);
  RowBuffers f(logits, target, none);
  const auto stat = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  at::Tensor row_max = at::full({T, B}, std::nan(""), logits.options().dtype(stat));
  at::Tensor log_sum = at::full({T, B}, std::nan(""), logits.options().dtype(stat));
  int64_t bad = kNoBadRow;
  dispatch(logits, target, [&](auto s, auto i) {
    using scalar_t = decltype(s);
    using index_t = decltype(i);
    using acc_t = at::opmath_type<scalar_t>;
    const auto tg = targets<scalar_t, index_t>(logits, target, weight, ignore_index, tbf);
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t st = logits.stride(0), sb = logits.stride(1), sc = logits.stride(2);
    const auto out = f.outputs<scalar_t>(none, tbf);
    const rnn_ext::cuda_detail::RowStats<acc_t> stats{row_max.data_ptr<acc_t>(), B, 1,
                                                      log_sum.data_ptr<acc_t>(), B, 1};
    int64_t* badp = &bad;
    run(grid, [=] {
      rnn_ext::cuda_detail::ce_forward_kernel<scalar_t, index_t>(x, st, sb, sc, tg, T, out,
                                                                 stats, badp);
    });
  });
  return {f.loss, f.row_w, row_max, log_sum, bad};
}

template <typename scalar_t>
GradScale<scalar_t> grad_scale(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                               Reduction r, bool tbf) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool none = r == Reduction::None;
  return {grad_loss.const_data_ptr<scalar_t>(), none ? grad_loss.stride(tbf ? 1 : 0) : 0,
          none ? grad_loss.stride(tbf ? 0 : 1) : 0, total_weight.const_data_ptr<acc_t>(), r};
}

// nll_backward_kernel on a zeroed (T, B, C) gradient. Returns (grad, bad row).
std::tuple<at::Tensor, int64_t> nll_backward(const at::Tensor& grad_loss,
                                             const at::Tensor& log_probs,
                                             const at::Tensor& target,
                                             const std::optional<at::Tensor>& weight,
                                             int64_t ignore_index, const std::string& reduction,
                                             bool tbf, const at::Tensor& total_weight,
                                             int64_t grid) {
  const int64_t T = log_probs.size(0);
  at::Tensor grad = at::zeros(log_probs.sizes(), log_probs.options());
  int64_t bad = kNoBadRow;
  const Reduction r = parse_reduction(reduction);
  dispatch(log_probs, target, [&](auto s, auto i) {
    using scalar_t = decltype(s);
    using index_t = decltype(i);
    const auto tg = targets<scalar_t, index_t>(log_probs, target, weight, ignore_index, tbf);
    const auto gs = grad_scale<scalar_t>(grad_loss, total_weight, r, tbf);
    scalar_t* g = grad.data_ptr<scalar_t>();
    int64_t* badp = &bad;
    run(grid, [=] {
      rnn_ext::cuda_detail::nll_backward_kernel<scalar_t, index_t>(g, tg, gs, T, badp);
    });
  });
  return {grad, bad};
}

// ce_backward_kernel into a NaN-filled (T, B, C) gradient. Returns (grad, bad row).
std::tuple<at::Tensor, int64_t> ce_backward(const at::Tensor& grad_loss, const at::Tensor& logits,
                                            const at::Tensor& target,
                                            const std::optional<at::Tensor>& weight,
                                            int64_t ignore_index, const std::string& reduction,
                                            bool tbf, const at::Tensor& row_max,
                                            const at::Tensor& log_sum,
                                            const at::Tensor& total_weight, int64_t grid) {
  const int64_t T = logits.size(0);
  at::Tensor grad = at::full(logits.sizes(), std::nan(""), logits.options());
  int64_t bad = kNoBadRow;
  const Reduction r = parse_reduction(reduction);
  dispatch(logits, target, [&](auto s, auto i) {
    using scalar_t = decltype(s);
    using index_t = decltype(i);
    using acc_t = at::opmath_type<scalar_t>;
    const auto tg = targets<scalar_t, index_t>(logits, target, weight, ignore_index, tbf);
    const auto gs = grad_scale<scalar_t>(grad_loss, total_weight, r, tbf);
    scalar_t* g = grad.data_ptr<scalar_t>();
    const scalar_t* x = logits.const_data_ptr<scalar_t>();
    const int64_t st = logits.stride(0), sb = logits.stride(1), sc = logits.stride(2);
    const rnn_ext::cuda_detail::RowStats<const acc_t> stats{
        row_max.const_data_ptr<acc_t>(), row_max.stride(0), row_max.stride(1),
        log_sum.const_data_ptr<acc_t>(), log_sum.stride(0), log_sum.stride(1)};
    int64_t* badp = &bad;
    run(grid, [=] {
      rnn_ext::cuda_detail::ce_backward_kernel<scalar_t, index_t>(g, x, st, sb, sc, stats, tg,
                                                                  gs, T, badp);
    });
  });
  return {grad, bad};
}

}  // namespace

void register_seq_nll(py::module& m) {
  m.def("nll_forward", &nll_forward, py::arg("log_probs"), py::arg("target"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("none"), py::arg("target_batch_first"), py::arg("grid"));
  m.def("ce_forward", &ce_forward, py::arg("logits"), py::arg("target"), py::arg("weight"),
        py::arg("ignore_index"), py::arg("none"), py::arg("target_batch_first"), py::arg("grid"));
  m.def("nll_backward", &nll_backward, py::arg("grad_loss"), py::arg("log_probs"),
        py::arg("target"), py::arg("weight"), py::arg("ignore_index"), py::arg("reduction"),
        py::arg("target_batch_first"), py::arg("total_weight"), py::arg("grid"));
  m.def("ce_backward", &ce_backward, py::arg("grad_loss"), py::arg("logits"), py::arg("target"),
        py::arg("weight"), py::arg("ignore_index"), py::arg("reduction"),
        py::arg("target_batch_first"), py::arg("row_max"), py::arg("log_sum"),
        py::arg("total_weight"), py::arg("grid"));
  // The operator entry points of csrc/cuda/seq_nll_cuda.cu, as the dispatcher calls them
  // (arguments as in the schemas of csrc/rnn_ext.cpp).
  using OptT = std::optional<at::Tensor>;
  m.def("seq_nll_loss_forward", [](const at::Tensor& log_probs, const at::Tensor& target,
                                   const OptT& weight, int64_t ignore_index,
                                   const std::string& reduction, bool target_batch_first) {
    return rnn_ext::seq_nll_loss_forward_cuda(log_probs, target, weight, ignore_index, reduction,
                                              target_batch_first);
  });
  m.def("seq_nll_loss_backward",
        [](const at::Tensor& grad_loss, const at::Tensor& log_probs, const at::Tensor& target,
           const OptT& weight, int64_t ignore_index, const std::string& reduction,
           bool target_batch_first, const at::Tensor& total_weight) {
          return rnn_ext::seq_nll_loss_backward_cuda(grad_loss, log_probs, target, weight,
                                                     ignore_index, reduction, target_batch_first,
                                                     total_weight);
        });
  m.def("seq_cross_entropy_forward", [](const at::Tensor& logits, const at::Tensor& target,
                                        const OptT& weight, int64_t ignore_index,
                                        const std::string& reduction, bool target_batch_first) {
    return rnn_ext::seq_cross_entropy_forward_cuda(logits, target, weight, ignore_index,
                                                   reduction, target_batch_first);
  });
  m.def("seq_cross_entropy_backward",
        [](const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
           const OptT& weight, int64_t ignore_index, const std::string& reduction,
           bool target_batch_first, const at::Tensor& row_max, const at::Tensor& log_sum,
           const at::Tensor& total_weight) {
          return rnn_ext::seq_cross_entropy_backward_cuda(grad_loss, logits, target, weight,
                                                          ignore_index, reduction,
                                                          target_batch_first, row_max, log_sum,
                                                          total_weight);
        });
}
