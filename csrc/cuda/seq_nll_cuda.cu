// CUDA kernels of the sequence losses: seq_nll_loss_forward / _backward and
// seq_cross_entropy_forward / _backward (schemas in csrc/rnn_ext.cpp, per-row math in
// csrc/seq_nll_math.h, argument checks in csrc/seq_nll_checks.cpp, semantics defined by
// csrc/cpu/seq_nll_cpu.cpp).
//
// A row is one (t, b), numbered r = t * B + b. The target, the input and grad_loss are read
// through their own strides (no transposed or contiguous copy is made).
//
//   NLL forward   one thread per row: the row's loss (reduction none: written at the target's
//                 position) and weight; mean / sum: per-row losses and weights in float64
//                 buffers, summed by ATen (deterministic), divided on the device.
//   NLL backward  grad = 0 (one memset), then one thread per row writes its one nonzero.
//   CE forward    one warp per row, one pass over it: the online log-sum-exp (a running max
//                 and sum of exp(x - max) per lane, merged across the warp); the row's max m
//                 and log_sum = log(sum) saved, (T, B) each; loss as NLL.
//   CE backward   one warp per row and chunk of kCeChunk classes (the row's index arithmetic,
//                 target, factor, m and log_sum once per chunk):
//                 grad = c * ([c' == y] - exp((x - m) - log_sum)).
// Accumulation in at::opmath_type (float for float16 / bfloat16); m, log_sum, total_weight in the
// "statistics dtype" of csrc/seq_nll.h (which is that same type).
//
// Target values out of [0, C) that are not ignore_index: the kernels record the smallest such
// row (atomicMin) and the host raises the same IndexError as the CPU kernels. Reading that
// record back costs one 8-byte device-to-host copy (a synchronisation) per call; PyTorch's own
// CUDA nll_loss uses a device-side assert instead, which ends the process's CUDA context. Under
// CUDA-graph capture, where no read-back is allowed, the check is that same device-side assert.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#ifndef RNN_EXT_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>
#endif  // else tests/cuda_emu/cuda_host_emu.h, included first, emulates the CUDA calls below

#include <cstdint>
#include <limits>
#include <tuple>

#include "seq_nll.h"
#include "launch.cuh"
#include "seq_nll_kernels.cuh"  // the device code

namespace rnn_ext {
namespace {

using namespace cuda_detail;  // NOLINT: the kernels, shared with tests/cuda_emu

unsigned blocks_for(int64_t work_items, int64_t per_block) {
  const int64_t want = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, 1 << 16)));
}

template <typename scalar_t, typename index_t>
Targets<scalar_t, index_t> make_targets(const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        int64_t ignore_index, const SeqLossSizes& s) {
  const bool has_w = weight.has_value() && weight->defined();
  return {target.const_data_ptr<index_t>(), s.target_stride_t, s.target_stride_b,
          has_w ? weight->const_data_ptr<scalar_t>() : nullptr, has_w ? weight->stride(0) : 0,
          ignore_index, s.B, s.C};
}

// Raises the CPU kernels' IndexError when a kernel recorded a bad row (reads it back: a sync).
// While the current stream is being captured into a CUDA graph (torch.cuda.graph,
// torch.compile(mode="reduce-overhead")) a read-back is not allowed; the check is then made on
// the device (at::_assert_async), as PyTorch's own CUDA nll_loss makes it: a bad target stops
// the graph's replay with a device-side assert instead of the IndexError.
void raise_if_bad_row(const char* op, const at::Tensor& bad, const at::Tensor& target,
                      const SeqLossSizes& s, int64_t ignore_index, bool target_batch_first) {
  if (c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None) {
    // The message must stay under 255 characters (at::_assert_async's limit on CUDA).
    at::_assert_async(bad.eq(kNoBadRow),
                      "rnn_ext sequence loss: a target value is outside [0, C) and is not "
                      "ignore_index (checked on the device during CUDA-graph capture)");
    return;
  }
  const int64_t r = bad.item<int64_t>();
  if (r == kNoBadRow) {
    return;
  }
  const int64_t t = r / s.B, b = r % s.B;
  const int64_t value =
      (target_batch_first ? target.select(0, b).select(0, t) : target.select(0, t).select(0, b))
          .item<int64_t>();
  throw_seq_target_out_of_range(op, value, s.C, ignore_index, t, b, target_batch_first);
}

template <typename scalar_t>
GradScale<scalar_t> make_grad_scale(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                                    Reduction reduction, bool target_batch_first) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool none = reduction == Reduction::None;
  return {grad_loss.const_data_ptr<scalar_t>(),
          none ? grad_loss.stride(target_batch_first ? 1 : 0) : 0,
          none ? grad_loss.stride(target_batch_first ? 0 : 1) : 0,
          total_weight.const_data_ptr<acc_t>(), reduction};
}

#define RNN_EXT_DISPATCH_TARGET_CUDA(target, ...) \
  [&] {                                           \
    if ((target).scalar_type() == at::kByte) {    \
      using index_t = uint8_t;                    \
      return __VA_ARGS__();                       \
    }                                             \
    using index_t = int64_t;                      \
    return __VA_ARGS__();                         \
  }()

// Allocates loss and total_weight and, for mean / sum, the per-row buffers.
struct ForwardBuffers {
  at::Tensor loss, total_weight, row_loss, row_w, bad;
};

ForwardBuffers forward_buffers(const at::Tensor& input, const SeqLossSizes& s,
                               Reduction reduction, bool target_batch_first) {
  ForwardBuffers f;
  f.loss = reduction == Reduction::None
               ? at::empty(seq_target_shape(s, target_batch_first), input.options())
               : at::empty({}, input.options());
  f.total_weight = at::empty({}, input.options().dtype(seq_loss_stat_dtype(input.scalar_type())));
  const auto dopt = input.options().dtype(at::kDouble);
  f.row_loss = reduction == Reduction::None ? at::Tensor() : at::empty({s.T * s.B}, dopt);
  f.row_w = at::empty({s.T * s.B}, dopt);
  f.bad = at::full({}, kNoBadRow, input.options().dtype(at::kLong));
  return f;
}

// Where a forward kernel writes its per-row results (seq_nll_kernels.cuh).
template <typename scalar_t>
RowOutputs<scalar_t> row_outputs(ForwardBuffers& f, bool none, bool target_batch_first) {
  return {none, target_batch_first, none ? f.loss.mutable_data_ptr<scalar_t>() : nullptr,
          none ? nullptr : f.row_loss.mutable_data_ptr<double>(),
          f.row_w.mutable_data_ptr<double>()};
}

// total_weight = sum of row weights; loss = sum, or sum / total_weight (0 / 0 = NaN), for
// mean / sum. All on the device, in float64 (the CPU kernels also sum in double).
void finish_forward(ForwardBuffers& f, Reduction reduction) {
  const at::Tensor wsum = f.row_w.sum();
  f.total_weight.copy_(wsum);
  if (reduction == Reduction::Sum) {
    f.loss.copy_(f.row_loss.sum());
  } else if (reduction == Reduction::Mean) {
    f.loss.copy_(f.row_loss.sum() / wsum);
  }
}

// ---------------------------------------------------------------------------------------------
// NLL

std::tuple<at::Tensor, at::Tensor> seq_nll_loss_forward_cuda(
    const at::Tensor& log_probs, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_str, bool target_batch_first) {
  const char* op = "rnn_ext::seq_nll_loss_forward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "log_probs", log_probs, target, weight, target_batch_first);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  ForwardBuffers f = forward_buffers(log_probs, s, reduction, target_batch_first);
  const int64_t rows = s.T * s.B;
  if (rows > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool none = reduction == Reduction::None;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, log_probs.scalar_type(), "seq_nll_loss_forward_cuda", [&] {
          RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
            launch_kernel(
                &nll_forward_kernel<scalar_t, index_t>, blocks_for(rows, kThreads), kThreads, 0,
                stream, log_probs.const_data_ptr<scalar_t>(), log_probs.stride(0),
                log_probs.stride(1), log_probs.stride(2),
                make_targets<scalar_t, index_t>(target, weight, ignore_index, s), s.T,
                row_outputs<scalar_t>(f, none, target_batch_first),
                f.bad.mutable_data_ptr<int64_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
    raise_if_bad_row(op, f.bad, target, s, ignore_index, target_batch_first);
  } else {
    f.row_w.zero_();
    if (reduction != Reduction::None) {
      f.row_loss.zero_();
    }
  }
  finish_forward(f, reduction);
  return {f.loss, f.total_weight};
}

at::Tensor seq_nll_loss_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& log_probs, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction_str,
    bool target_batch_first, const at::Tensor& total_weight) {
  const char* op = "rnn_ext::seq_nll_loss_backward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "log_probs", log_probs, target, weight, target_batch_first);
  check_seq_loss_backward_args(op, s, log_probs, grad_loss, reduction, target_batch_first,
                               total_weight, nullptr, nullptr);
  const c10::cuda::CUDAGuard guard(log_probs.device());
  at::Tensor grad = at::zeros({s.T, s.B, s.C}, log_probs.options());
  const int64_t rows = s.T * s.B;
  if (grad.numel() == 0 || rows == 0) {
    return grad;
  }
  at::Tensor bad = at::full({}, kNoBadRow, log_probs.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, log_probs.scalar_type(), "seq_nll_loss_backward_cuda", [&] {
        RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
          launch_kernel(
              &nll_backward_kernel<scalar_t, index_t>, blocks_for(rows, kThreads), kThreads, 0,
              stream, grad.mutable_data_ptr<scalar_t>(),
              make_targets<scalar_t, index_t>(target, weight, ignore_index, s),
              make_grad_scale<scalar_t>(grad_loss, total_weight, reduction, target_batch_first),
              s.T, bad.mutable_data_ptr<int64_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  raise_if_bad_row(op, bad, target, s, ignore_index, target_batch_first);
  return grad;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_str, bool target_batch_first) {
  const char* op = "rnn_ext::seq_cross_entropy_forward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits, target, weight, target_batch_first);
  const c10::cuda::CUDAGuard guard(logits.device());
  ForwardBuffers f = forward_buffers(logits, s, reduction, target_batch_first);
  at::Tensor row_max = at::empty({s.T, s.B}, f.total_weight.options());
  at::Tensor log_sum = at::empty({s.T, s.B}, f.total_weight.options());
  const int64_t rows = s.T * s.B;
  if (rows > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool none = reduction == Reduction::None;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
            launch_kernel(
                &ce_forward_kernel<scalar_t, index_t>, blocks_for(rows, kWarpsPerBlock), kThreads,
                0, stream, logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.stride(1),
                logits.stride(2),
                make_targets<scalar_t, index_t>(target, weight, ignore_index, s), s.T,
                row_outputs<scalar_t>(f, none, target_batch_first),
                RowStats<acc_t>{row_max.mutable_data_ptr<acc_t>(), s.B, 1,
                                log_sum.mutable_data_ptr<acc_t>(), s.B, 1},
                f.bad.mutable_data_ptr<int64_t>());
            C10_CUDA_KERNEL_LAUNCH_CHECK();
          });
        });
    raise_if_bad_row(op, f.bad, target, s, ignore_index, target_batch_first);
  } else {
    f.row_w.zero_();
    if (reduction != Reduction::None) {
      f.row_loss.zero_();
    }
  }
  finish_forward(f, reduction);
  return {f.loss, row_max, log_sum, f.total_weight};
}

at::Tensor seq_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction_str,
    bool target_batch_first, const at::Tensor& row_max, const at::Tensor& log_sum,
    const at::Tensor& total_weight) {
  const char* op = "rnn_ext::seq_cross_entropy_backward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits, target, weight, target_batch_first);
  check_seq_loss_backward_args(op, s, logits, grad_loss, reduction, target_batch_first,
                               total_weight, &row_max, &log_sum);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad = at::empty({s.T, s.B, s.C}, logits.options());
  if (grad.numel() == 0) {
    return grad;
  }
  const int64_t units = s.T * s.B * ((s.C + kCeChunk - 1) / kCeChunk);
  at::Tensor bad = at::full({}, kNoBadRow, logits.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
          launch_kernel(
              &ce_backward_kernel<scalar_t, index_t>, blocks_for(units, kWarpsPerBlock),
              kThreads, 0, stream, grad.mutable_data_ptr<scalar_t>(),
              logits.const_data_ptr<scalar_t>(),
              logits.stride(0), logits.stride(1), logits.stride(2),
              RowStats<const acc_t>{row_max.const_data_ptr<acc_t>(), row_max.stride(0),
                                    row_max.stride(1), log_sum.const_data_ptr<acc_t>(),
                                    log_sum.stride(0), log_sum.stride(1)},
              make_targets<scalar_t, index_t>(target, weight, ignore_index, s),
              make_grad_scale<scalar_t>(grad_loss, total_weight, reduction, target_batch_first),
              s.T, bad.mutable_data_ptr<int64_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  raise_if_bad_row(op, bad, target, s, ignore_index, target_batch_first);
  return grad;
}

}  // namespace

#ifndef RNN_EXT_CUDA_EMULATION  // the emulation calls the functions above directly
TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_cuda);
  m.impl("seq_nll_loss_backward", &seq_nll_loss_backward_cuda);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_cuda);
  m.impl("seq_cross_entropy_backward", &seq_cross_entropy_backward_cuda);
}
#endif

}  // namespace rnn_ext
