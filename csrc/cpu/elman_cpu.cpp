// CPU kernels of the Elman operators: elman_forward / elman_backward (one layer, one direction,
// whole sequence) and elman_cell_forward / elman_cell_backward (one step, nn.RNNCell semantics).
//
// The fusion (README.md, "The operators"):
//   forward   output = x W_ih^T + (b_ih + b_hh)          one GEMM for all T steps, written in place
//             per step: output[t] += h_{t-1} W_hh^T      one GEMM (beta = 1) into the same buffer
//                       output[t] = phi(output[t])       one in-place pass
//   backward  per step: ga_t = (gy_t + g) * phi'(h_t)    one pass (elman_math.h)
//                       g    = ga_t W_hh                 one GEMM
//             grad_weight_ih = ga^T x, grad_weight_hh = ga^T h_prev,
//             grad_bias = sum ga (summed as ga is produced, in the accumulation type),
//             grad_input = ga W_ih                       whole-sequence GEMMs
// Only the outputs are saved for backward. Threads come from ATen (BLAS, at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#include "elman.h"

namespace rnn_ext {
namespace {

// Elements below this run on one thread: the per-step work of small layers is too short to
// pay for waking the pool.
constexpr int64_t kGrain = 1 << 15;

// Time index of the s-th step processed.
inline int64_t step_time(int64_t s, int64_t T, bool reverse) {
  return reverse ? T - 1 - s : s;
}

// After output[t] = phi(a_t) for every row, apply the lengths: rows whose sequence has ended
// (t >= lengths[b]) get output 0 and keep their state; the others copy their output into h.
template <typename scalar_t>
void mask_step_forward(scalar_t* out_t, scalar_t* h, const int64_t* len, int64_t t, int64_t B,
                       int64_t H) {
  at::parallel_for(0, B, std::max<int64_t>(1, kGrain / std::max<int64_t>(H, 1)),
                   [&](int64_t b0, int64_t b1) {
                     for (int64_t b = b0; b < b1; ++b) {
                       scalar_t* o = out_t + b * H;
                       if (t < len[b]) {
                         std::copy(o, o + H, h + b * H);
                       } else {
                         std::fill(o, o + H, scalar_t(0));
                       }
                     }
                   });
}

// A segment of one row of the backward pointwise step: ga = (gy + g) * phi'(h) (elman_math.h),
// and the bias gradient's running column sums gb += ga. gy is read with stride gy_sH, 1 or 0:
// out.sum().backward() hands us a stride-0 gradient, which is read as it is, not copied.
template <typename scalar_t, Activation kAct>
inline void preactivation_grad_segment(scalar_t* __restrict__ ga,
                                       at::opmath_type<scalar_t>* __restrict__ gb,
                                       const scalar_t* __restrict__ gy, int64_t gy_sH,
                                       const scalar_t* __restrict__ g,
                                       const scalar_t* __restrict__ h, int64_t n) {
  using acc_t = at::opmath_type<scalar_t>;
  if (gy_sH == 1) {
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = preactivation_grad<acc_t>(gy[j], g[j], h[j], kAct);
      ga[j] = static_cast<scalar_t>(v);
      gb[j] += v;
    }
  } else {
    const acc_t gy0 = gy[0];
    for (int64_t j = 0; j < n; ++j) {
      const acc_t v = preactivation_grad<acc_t>(gy0, g[j], h[j], kAct);
      ga[j] = static_cast<scalar_t>(v);
      gb[j] += v;
    }
  }
}

// ga_t = (gy_t + g) * phi'(h_t) for a whole step, and gb += the column sums of ga_t (so the
// bias gradient needs no second pass over ga); rows of ended sequences (t >= lengths[b]) get 0.
// gy_t: this step's gradient, rows gy_sB apart, elements gy_sH (0 or 1) apart. Threads split
// the columns, so each owns its slice of gb.
template <typename scalar_t>
void preactivation_grad_step(scalar_t* ga_t, at::opmath_type<scalar_t>* gb, const scalar_t* gy_t,
                             int64_t gy_sB, int64_t gy_sH, const scalar_t* g, const scalar_t* h_t,
                             const int64_t* len, int64_t t, int64_t B, int64_t H, Activation act) {
  at::parallel_for(0, H, std::max<int64_t>(16, kGrain / std::max<int64_t>(B, 1)),
                   [&](int64_t j0, int64_t j1) {
    const int64_t n = j1 - j0;
    for (int64_t b = 0; b < B; ++b) {
      const int64_t o = b * H + j0;
      const scalar_t* gy_b = gy_t + b * gy_sB + j0 * gy_sH;
      if (len != nullptr && t >= len[b]) {
        std::fill(ga_t + o, ga_t + o + n, scalar_t(0));
      } else if (act == Activation::Tanh) {
        preactivation_grad_segment<scalar_t, Activation::Tanh>(ga_t + o, gb + j0, gy_b, gy_sH,
                                                               g + o, h_t + o, n);
      } else {
        preactivation_grad_segment<scalar_t, Activation::Relu>(ga_t + o, gb + j0, gy_b, gy_sH,
                                                               g + o, h_t + o, n);
      }
    }
  });
}

void activate_(at::Tensor& t, Activation act) {
  if (act == Activation::Tanh) {
    t.tanh_();
  } else {
    t.relu_();
  }
}

// Forward over a validated sequence. lengths_cpu: undefined or int64 (B,) on the CPU.
std::tuple<at::Tensor, at::Tensor> elman_forward_impl(
    const at::Tensor& input_, const at::Tensor& h_0_, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, Activation act, bool reverse,
    const at::Tensor& lengths_cpu, const ElmanSizes& s) {
  const auto [T, B, I, H] = s;
  const at::Tensor input = input_.contiguous();
  const at::Tensor whh_t = weight_hh.t();
  at::Tensor output = at::empty({T, B, H}, input.options());
  at::Tensor out2d = output.view({T * B, H});
  const at::Tensor x2d = input.view({T * B, I});
  const bool has_bih = bias_ih.has_value() && bias_ih->defined();
  const bool has_bhh = bias_hh.has_value() && bias_hh->defined();
  if (has_bih || has_bhh) {
    const at::Tensor bias = has_bih && has_bhh ? *bias_ih + *bias_hh : (has_bih ? *bias_ih : *bias_hh);
    at::addmm_out(out2d, bias, x2d, weight_ih.t());
  } else {
    at::mm_out(out2d, x2d, weight_ih.t());
  }
  if (B == 0 || H == 0) {
    return {output, h_0_.clone(at::MemoryFormat::Contiguous)};
  }

  if (!lengths_cpu.defined()) {
    at::Tensor h_prev = h_0_;
    for (const auto step : c10::irange(T)) {
      at::Tensor out_t = output.select(0, step_time(step, T, reverse));
      out_t.addmm_(h_prev, whh_t);
      activate_(out_t, act);
      h_prev = out_t;
    }
    return {output, h_prev.clone()};
  }

  // Padded batch: the state lives in its own buffer, advanced only for running sequences.
  at::Tensor h = h_0_.clone(at::MemoryFormat::Contiguous);
  const int64_t* len = lengths_cpu.const_data_ptr<int64_t>();
  for (const auto step : c10::irange(T)) {
    const int64_t t = step_time(step, T, reverse);
    at::Tensor out_t = output.select(0, t);
    out_t.addmm_(h, whh_t);
    activate_(out_t, act);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                    "elman_forward_mask", [&] {
      mask_step_forward<scalar_t>(out_t.data_ptr<scalar_t>(), h.data_ptr<scalar_t>(), len, t, B,
                                  H);
    });
  }
  return {output, h};
}

// Backward over a validated sequence; see the file comment for the math.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_backward_impl(
    const at::Tensor& grad_output_, const at::Tensor& grad_h_n_, const at::Tensor& input_,
    const at::Tensor& h_0_, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output_, Activation act, bool reverse, const at::Tensor& lengths_cpu,
    const ElmanSizes& s, std::array<bool, 2> output_mask) {
  const auto [T, B, I, H] = s;
  // The last dimension of the output gradient must be dense or broadcast (stride 0); the
  // other two may have any strides.
  const at::Tensor gy = grad_output_.stride(2) == 1 || grad_output_.stride(2) == 0 || H <= 1
                            ? grad_output_
                            : grad_output_.contiguous();
  const at::Tensor out = output_.contiguous();
  const at::Tensor input = input_.contiguous();
  const at::Tensor h_0 = h_0_.contiguous();
  at::Tensor ga = at::empty({T, B, H}, input.options());
  at::Tensor g = grad_h_n_.clone(at::MemoryFormat::Contiguous);
  const int64_t* len = lengths_cpu.defined() ? lengths_cpu.const_data_ptr<int64_t>() : nullptr;
  at::Tensor g_next = len != nullptr ? at::empty_like(g) : at::Tensor();
  // The bias gradient, summed in the accumulation type as ga is produced.
  at::Tensor gb = at::zeros({H}, input.options().dtype(at::toOpMathType(input.scalar_type())));

  if (B > 0 && H > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                    "elman_backward", [&] {
      // Backward visits the steps in the opposite order of the forward.
      for (const auto step : c10::irange(T)) {
        const int64_t t = step_time(T - 1 - step, T, reverse);
        at::Tensor ga_t = ga.select(0, t);
        preactivation_grad_step<scalar_t>(
            ga_t.data_ptr<scalar_t>(), gb.data_ptr<at::opmath_type<scalar_t>>(),
            gy.const_data_ptr<scalar_t>() + t * gy.stride(0),
            gy.stride(1), H <= 1 ? 1 : gy.stride(2), g.const_data_ptr<scalar_t>(),
            out.const_data_ptr<scalar_t>() + t * B * H, len, t, B, H, act);
        if (step + 1 == T) {
          break;  // the last step's g is grad_h_0: computed below from g0, when wanted
        }
        if (len == nullptr) {
          at::mm_out(g, ga_t, weight_hh);
          continue;
        }
        // Ended sequences pass their gradient through unchanged.
        at::mm_out(g_next, ga_t, weight_hh);
        const scalar_t* gp = g.const_data_ptr<scalar_t>();
        scalar_t* gn = g_next.data_ptr<scalar_t>();
        for (const auto b : c10::irange(B)) {
          if (t >= len[b]) {
            std::copy(gp + b * H, gp + (b + 1) * H, gn + b * H);
          }
        }
        std::swap(g, g_next);
      }
    });
  } else {
    ga.zero_();
  }

  // The g buffer is free now: it becomes grad_h_0 (no further (B, H) allocation).
  auto [grad_input, grad_h_0, grad_weight_ih, grad_weight_hh] =
      elman_sequence_grads(ga, out, input, h_0, weight_ih, weight_hh, lengths_cpu, reverse,
                           output_mask, g);
  at::Tensor grad_bias = gb.to(input.scalar_type());
  return {grad_input, grad_h_0, grad_weight_ih, grad_weight_hh, grad_bias};
}

// ---------------------------------------------------------------------------------------------
// Operator entry points.

std::tuple<at::Tensor, at::Tensor> elman_forward_cpu(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths) {
  const char* op = "rnn_ext::elman_forward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s =
      check_elman_forward_args(op, input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, lengths);
  return elman_forward_impl(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, act, reverse,
                            lengths_on_cpu(lengths), s);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_backward_cpu(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& h_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths, std::array<bool, 2> output_mask) {
  const char* op = "rnn_ext::elman_backward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s = check_elman_forward_args(op, input, h_0, weight_ih, weight_hh,
                                                std::nullopt, std::nullopt, lengths);
  check_elman_backward_args(op, s, input, grad_output, grad_h_n, output);
  return elman_backward_impl(grad_output, grad_h_n, input, h_0, weight_ih, weight_hh, output, act,
                             reverse, lengths_on_cpu(lengths), s, output_mask);
}

at::Tensor elman_cell_forward_cpu(const at::Tensor& input, const at::Tensor& hx,
                                  const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                  const std::optional<at::Tensor>& bias_ih,
                                  const std::optional<at::Tensor>& bias_hh,
                                  c10::string_view nonlinearity) {
  const char* op = "rnn_ext::elman_cell_forward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s =
      check_elman_cell_args(op, input, hx, weight_ih, weight_hh, bias_ih, bias_hh);
  const at::Tensor x = input.unsqueeze(0);
  auto [output, h_n] = elman_forward_impl(x, hx, weight_ih, weight_hh, bias_ih, bias_hh, act,
                                          /*reverse=*/false, at::Tensor(), s);
  return h_n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_cell_backward_cpu(
    const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& hx,
    const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& hy,
    c10::string_view nonlinearity) {
  const char* op = "rnn_ext::elman_cell_backward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s = check_elman_cell_args(op, input, hx, weight_ih, weight_hh, std::nullopt,
                                             std::nullopt);
  const at::Tensor x = input.unsqueeze(0);
  const at::Tensor gy = grad_hy.unsqueeze(0);
  const at::Tensor y = hy.unsqueeze(0);
  const at::Tensor zero = at::zeros_like(hx);
  check_elman_backward_args(op, s, x, gy, zero, y, "grad_hy", "grad_hy", "hy");
  auto [gx, ghx, gwih, gwhh, gb] = elman_backward_impl(gy, zero, x, hx, weight_ih, weight_hh, y,
                                                       act, /*reverse=*/false, at::Tensor(), s,
                                                       {true, true});
  return {gx.squeeze(0), ghx, gwih, gwhh, gb};
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, CPU, m) {
  m.impl("elman_forward", &elman_forward_cpu);
  m.impl("elman_backward", &elman_backward_cpu);
  m.impl("elman_cell_forward", &elman_cell_forward_cpu);
  m.impl("elman_cell_backward", &elman_cell_backward_cpu);
}

}  // namespace rnn_ext
