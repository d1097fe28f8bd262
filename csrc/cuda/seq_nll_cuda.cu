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
//   CE forward    one warp per row: max, then sum of exp(x - max) (two passes over the row,
//                 the second from cache), lse = max + log(sum) saved (T, B), loss as NLL.
//   CE backward   one thread per element: grad = c * ([c' == y] - exp(x - lse)).
// Accumulation in at::opmath_type (float for float16 / bfloat16); lse and total_weight in the
// "statistics dtype" of csrc/seq_nll.h (which is that same type).
//
// Target values out of [0, C) that are not ignore_index: the kernels record the smallest such
// row (atomicMin) and the host raises the same IndexError as the CPU kernels. Reading that
// record back costs one 8-byte device-to-host copy (a synchronisation) per call; PyTorch's own
// CUDA nll_loss uses a device-side assert instead, which ends the process's CUDA context.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>

#include <cstdint>
#include <limits>
#include <tuple>

#include "seq_nll.h"

namespace rnn_ext {
namespace {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kNoBadRow = std::numeric_limits<int64_t>::max();

unsigned blocks_for(int64_t work_items, int64_t per_block) {
  const int64_t want = (work_items + per_block - 1) / per_block;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min<int64_t>(want, 1 << 16)));
}

// Where the kernels read a row's target and weight.
template <typename scalar_t, typename index_t>
struct Targets {
  const index_t* target;
  int64_t stride_t, stride_b;
  const scalar_t* weight;  // nullptr: every weight is 1
  int64_t weight_stride;
  int64_t ignore_index;
  int64_t B, C;

  __device__ __forceinline__ int64_t y(int64_t t, int64_t b) const {
    return static_cast<int64_t>(target[seq_target_offset(t, b, stride_t, stride_b)]);
  }
};

template <typename scalar_t, typename index_t>
Targets<scalar_t, index_t> make_targets(const at::Tensor& target,
                                        const std::optional<at::Tensor>& weight,
                                        int64_t ignore_index, const SeqLossSizes& s) {
  const bool has_w = weight.has_value() && weight->defined();
  return {target.const_data_ptr<index_t>(), s.target_stride_t, s.target_stride_b,
          has_w ? weight->const_data_ptr<scalar_t>() : nullptr, has_w ? weight->stride(0) : 0,
          ignore_index, s.B, s.C};
}

__device__ __forceinline__ void record_bad_row(int64_t* bad, int64_t r) {
  atomicMin(reinterpret_cast<unsigned long long*>(bad), static_cast<unsigned long long>(r));
}

// Raises the CPU kernels' IndexError when a kernel recorded a bad row (reads it back: a sync).
void raise_if_bad_row(const char* op, const at::Tensor& bad, const at::Tensor& target,
                      const SeqLossSizes& s, int64_t ignore_index, bool target_batch_first) {
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

// Per-row loss and weight of the NLL, one thread per row.
template <typename scalar_t, typename index_t>
__global__ void nll_forward_kernel(const scalar_t* __restrict__ lp, int64_t lst, int64_t lsb,
                                   int64_t lsc, Targets<scalar_t, index_t> tg, int64_t T,
                                   bool none, bool target_batch_first,
                                   scalar_t* __restrict__ loss_none,
                                   double* __restrict__ row_loss, double* __restrict__ row_w,
                                   int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = T * tg.B;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = r / tg.B, b = r % tg.B;
    const int64_t y = tg.y(t, b);
    acc_t loss = acc_t(0), w = acc_t(0);
    if (y != tg.ignore_index) {
      if (!seq_target_in_range(y, tg.C)) {
        record_bad_row(bad, r);
      } else {
        w = tg.weight == nullptr ? acc_t(1) : static_cast<acc_t>(tg.weight[y * tg.weight_stride]);
        loss = seq_nll_row_loss(static_cast<acc_t>(lp[t * lst + b * lsb + y * lsc]), w);
      }
    }
    if (none) {
      loss_none[target_batch_first ? b * T + t : r] = static_cast<scalar_t>(loss);
    } else {
      row_loss[r] = static_cast<double>(loss);
    }
    row_w[r] = static_cast<double>(w);
  }
}

// Log-sum-exp of each row (saved) and the cross-entropy loss, one warp per row.
template <typename scalar_t, typename index_t>
__global__ void ce_forward_kernel(const scalar_t* __restrict__ x, int64_t xst, int64_t xsb,
                                  int64_t xsc, Targets<scalar_t, index_t> tg, int64_t T,
                                  bool none, bool target_batch_first,
                                  scalar_t* __restrict__ loss_none,
                                  double* __restrict__ row_loss, double* __restrict__ row_w,
                                  at::opmath_type<scalar_t>* __restrict__ lse_out, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t rows = T * tg.B;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
       r < rows; r += warps) {
    const int64_t t = r / tg.B, b = r % tg.B;
    const scalar_t* row = x + t * xst + b * xsb;
    acc_t m = -std::numeric_limits<acc_t>::infinity();
    for (int64_t c = lane; c < tg.C; c += 32) {
      const acc_t v = static_cast<acc_t>(row[c * xsc]);
      m = v > m ? v : m;
    }
    for (int off = 16; off > 0; off >>= 1) {
      const acc_t o = __shfl_xor_sync(0xffffffffu, m, off);
      m = o > m ? o : m;
    }
    acc_t sum = acc_t(0);
    for (int64_t c = lane; c < tg.C; c += 32) {
      sum += exp(static_cast<acc_t>(row[c * xsc]) - m);
    }
    for (int off = 16; off > 0; off >>= 1) {
      sum += __shfl_xor_sync(0xffffffffu, sum, off);
    }
    if (lane != 0) {
      continue;
    }
    const acc_t lse = m + log(sum);
    lse_out[r] = lse;
    const int64_t y = tg.y(t, b);
    acc_t loss = acc_t(0), w = acc_t(0);
    if (y != tg.ignore_index) {
      if (!seq_target_in_range(y, tg.C)) {
        record_bad_row(bad, r);
      } else {
        w = tg.weight == nullptr ? acc_t(1) : static_cast<acc_t>(tg.weight[y * tg.weight_stride]);
        loss = seq_ce_row_loss(lse, static_cast<acc_t>(row[y * xsc]), w);
      }
    }
    if (none) {
      loss_none[target_batch_first ? b * T + t : r] = static_cast<scalar_t>(loss);
    } else {
      row_loss[r] = static_cast<double>(loss);
    }
    row_w[r] = static_cast<double>(w);
  }
}

// The backward's per-row factor s = seq_loss_grad_scale(g, total_weight, reduction).
template <typename scalar_t>
struct GradScale {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  int64_t stride_t, stride_b;
  const acc_t* total_weight;  // a device scalar of the statistics dtype (== acc_t)
  Reduction reduction;

  __device__ __forceinline__ acc_t operator()(int64_t t, int64_t b) const {
    const acc_t gv = reduction == Reduction::None
                         ? static_cast<acc_t>(g[t * stride_t + b * stride_b])
                         : static_cast<acc_t>(g[0]);
    return seq_loss_grad_scale(gv, *total_weight, reduction);
  }
};

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

template <typename scalar_t, typename index_t>
__global__ void nll_backward_kernel(scalar_t* __restrict__ grad, Targets<scalar_t, index_t> tg,
                                    GradScale<scalar_t> gs, int64_t T, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = T * tg.B;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = r / tg.B, b = r % tg.B;
    const int64_t y = tg.y(t, b);
    if (y == tg.ignore_index) {
      continue;
    }
    if (!seq_target_in_range(y, tg.C)) {
      record_bad_row(bad, r);
      continue;
    }
    const acc_t w =
        tg.weight == nullptr ? acc_t(1) : static_cast<acc_t>(tg.weight[y * tg.weight_stride]);
    grad[r * tg.C + y] = static_cast<scalar_t>(w * gs(t, b));
  }
}

template <typename scalar_t, typename index_t>
__global__ void ce_backward_kernel(scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                   int64_t xst, int64_t xsb, int64_t xsc,
                                   const at::opmath_type<scalar_t>* __restrict__ lse,
                                   int64_t lse_st, int64_t lse_sb, Targets<scalar_t, index_t> tg,
                                   GradScale<scalar_t> gs, int64_t T, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = T * tg.B * tg.C;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = i / tg.C, c = i % tg.C;
    const int64_t t = r / tg.B, b = r % tg.B;
    const int64_t y = tg.y(t, b);
    if (y == tg.ignore_index) {
      grad[i] = scalar_t(0);
      continue;
    }
    if (!seq_target_in_range(y, tg.C)) {
      if (c == 0) {
        record_bad_row(bad, r);
      }
      grad[i] = scalar_t(0);
      continue;
    }
    const acc_t w =
        tg.weight == nullptr ? acc_t(1) : static_cast<acc_t>(tg.weight[y * tg.weight_stride]);
    const acc_t cr = w * gs(t, b);
    const acc_t p =
        exp(static_cast<acc_t>(x[t * xst + b * xsb + c * xsc]) - lse[t * lse_st + b * lse_sb]);
    grad[i] = static_cast<scalar_t>(seq_ce_grad(p, c == y, cr));
  }
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
            nll_forward_kernel<scalar_t, index_t><<<blocks_for(rows, kThreads), kThreads, 0,
                                                    stream>>>(
                log_probs.const_data_ptr<scalar_t>(), log_probs.stride(0), log_probs.stride(1),
                log_probs.stride(2),
                make_targets<scalar_t, index_t>(target, weight, ignore_index, s), s.T, none,
                target_batch_first, none ? f.loss.mutable_data_ptr<scalar_t>() : nullptr,
                none ? nullptr : f.row_loss.mutable_data_ptr<double>(),
                f.row_w.mutable_data_ptr<double>(), f.bad.mutable_data_ptr<int64_t>());
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
                               total_weight, nullptr);
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
          nll_backward_kernel<scalar_t, index_t>
              <<<blocks_for(rows, kThreads), kThreads, 0, stream>>>(
                  grad.mutable_data_ptr<scalar_t>(),
                  make_targets<scalar_t, index_t>(target, weight, ignore_index, s),
                  make_grad_scale<scalar_t>(grad_loss, total_weight, reduction,
                                            target_batch_first),
                  s.T, bad.mutable_data_ptr<int64_t>());
          C10_CUDA_KERNEL_LAUNCH_CHECK();
        });
      });
  raise_if_bad_row(op, bad, target, s, ignore_index, target_batch_first);
  return grad;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

std::tuple<at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_cuda(
    const at::Tensor& logits, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_str, bool target_batch_first) {
  const char* op = "rnn_ext::seq_cross_entropy_forward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits, target, weight, target_batch_first);
  const c10::cuda::CUDAGuard guard(logits.device());
  ForwardBuffers f = forward_buffers(logits, s, reduction, target_batch_first);
  at::Tensor lse = at::empty({s.T, s.B}, f.total_weight.options());
  const int64_t rows = s.T * s.B;
  if (rows > 0) {
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    const bool none = reduction == Reduction::None;
    AT_DISPATCH_FLOATING_TYPES_AND2(
        at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_forward_cuda", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
            ce_forward_kernel<scalar_t, index_t><<<blocks_for(rows, kWarpsPerBlock), kThreads,
                                                   0, stream>>>(
                logits.const_data_ptr<scalar_t>(), logits.stride(0), logits.stride(1),
                logits.stride(2),
                make_targets<scalar_t, index_t>(target, weight, ignore_index, s), s.T, none,
                target_batch_first, none ? f.loss.mutable_data_ptr<scalar_t>() : nullptr,
                none ? nullptr : f.row_loss.mutable_data_ptr<double>(),
                f.row_w.mutable_data_ptr<double>(), lse.mutable_data_ptr<acc_t>(),
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
  return {f.loss, lse, f.total_weight};
}

at::Tensor seq_cross_entropy_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& logits, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction_str,
    bool target_batch_first, const at::Tensor& lse, const at::Tensor& total_weight) {
  const char* op = "rnn_ext::seq_cross_entropy_backward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits, target, weight, target_batch_first);
  check_seq_loss_backward_args(op, s, logits, grad_loss, reduction, target_batch_first,
                               total_weight, &lse);
  const c10::cuda::CUDAGuard guard(logits.device());
  at::Tensor grad = at::empty({s.T, s.B, s.C}, logits.options());
  const int64_t n = grad.numel();
  if (n == 0) {
    return grad;
  }
  at::Tensor bad = at::full({}, kNoBadRow, logits.options().dtype(at::kLong));
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_backward_cuda", [&] {
        using acc_t = at::opmath_type<scalar_t>;
        RNN_EXT_DISPATCH_TARGET_CUDA(target, [&] {
          ce_backward_kernel<scalar_t, index_t><<<blocks_for(n, kThreads), kThreads, 0,
                                                  stream>>>(
              grad.mutable_data_ptr<scalar_t>(), logits.const_data_ptr<scalar_t>(),
              logits.stride(0), logits.stride(1), logits.stride(2),
              lse.const_data_ptr<acc_t>(), lse.stride(0), lse.stride(1),
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

TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_cuda);
  m.impl("seq_nll_loss_backward", &seq_nll_loss_backward_cuda);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_cuda);
  m.impl("seq_cross_entropy_backward", &seq_cross_entropy_backward_cuda);
}

}  // namespace rnn_ext
