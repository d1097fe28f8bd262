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
//             grad_input = ga W_ih                       GEMMs over chunks of steps
//                                                        (elman_grads.cpp), so ga is held
//                                                        for one chunk, not all T steps
//             grad_bias = sum ga (summed as ga is produced, per block of rows, in the
//             accumulation type)
// A zero h_0 (nn.RNN's default) skips the first step's recurrent GEMM and the h_0 term of
// grad_weight_hh (unless W_hh / g0 holds an inf or NaN: 0 * inf is NaN, as nn.RNN gives).
// Only the outputs are saved for backward. Threads come from ATen (BLAS, at::parallel_for).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <algorithm>
#include <array>
#include <tuple>

#include "elman.h"
#include "vec_math.h"

namespace rnn_ext {
namespace {

// Elements below this run on one thread: the per-step work of small layers is too short to
// pay for waking the pool.
constexpr int64_t kGrain = 1 << 15;

// The backward hands ga to the weight-gradient GEMMs in chunks of at most about this many rows
// (time steps x batch) and at most half the steps: large enough for full-speed GEMMs, small
// enough that ga never needs all T steps at once.
constexpr int64_t kChunkRows = 2048;

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

// The rows of a step are processed in fixed blocks of rows (each a parallel task); each block
// keeps its own running column sums of ga (one row of `gb_blocks`, over all steps), so the bias
// gradient needs no second pass over ga and its value does not depend on the thread count.
struct RowBlocks {
  int64_t rows, count;
};

inline RowBlocks row_blocks(int64_t B, int64_t H) {
  const int64_t rows = std::max<int64_t>(1, kGrain / std::max<int64_t>(H, 1));
  return {rows, (B + rows - 1) / rows};
}

// ga_t = (gy_t + g) * phi'(h_t) for a whole step, and gb_blocks[k] += the column sums of block
// k's rows of ga_t; rows of ended sequences (t >= lengths[b]) get 0. gy_t: this step's
// gradient, rows gy_sB apart, elements gy_sH (0 or 1) apart; g: the gradient carried from the
// step after, rows g_sB apart (0: one row for all). Rows are read and written contiguously
// (streams the prefetchers follow).
template <typename scalar_t>
void preactivation_grad_step(scalar_t* ga_t, at::opmath_type<scalar_t>* gb_blocks,
                             const scalar_t* gy_t, int64_t gy_sB, int64_t gy_sH,
                             const scalar_t* g, int64_t g_sB, const scalar_t* h_t,
                             const int64_t* len,
                             int64_t t, int64_t B, int64_t H, Activation act) {
  const RowBlocks rb = row_blocks(B, H);
  at::parallel_for(0, rb.count, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      at::opmath_type<scalar_t>* gb = gb_blocks + k * H;
      for (int64_t b = k * rb.rows; b < std::min(B, (k + 1) * rb.rows); ++b) {
        const int64_t o = b * H;
        const scalar_t* gy_b = gy_t + b * gy_sB;
        if (len != nullptr && t >= len[b]) {
          std::fill(ga_t + o, ga_t + o + H, scalar_t(0));
        } else if (act == Activation::Tanh) {
          preactivation_grad_segment<scalar_t, Activation::Tanh>(ga_t + o, gb, gy_b, gy_sH,
                                                                 g + b * g_sB, h_t + o, H);
        } else {
          preactivation_grad_segment<scalar_t, Activation::Relu>(ga_t + o, gb, gy_b, gy_sH,
                                                                 g + b * g_sB, h_t + o, H);
        }
      }
    }
  });
}

// Whether every element of h (a CPU tensor) is zero, as nn.RNN's default hx is: then the
// recurrent GEMM of the first step and the h_0 term of grad_weight_hh can be skipped (each a
// B x H x H GEMM: 0.2 ms of the lesson's 8 ms step). Stops at the first nonzero (or NaN).
bool all_zero(const at::Tensor& h) {
  bool zero = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, h.scalar_type(), "all_zero", [&] {
    const at::Tensor hc = h.contiguous();
    const scalar_t* p = hc.const_data_ptr<scalar_t>();
    const int64_t n = hc.numel();
    constexpr int64_t kChunk = 256;
    for (int64_t i = 0; i < n && zero; i += kChunk) {
      const int64_t e = std::min(n, i + kChunk);
      bool nonzero = false;
      for (int64_t k = i; k < e; ++k) {
        nonzero |= !(static_cast<float>(p[k]) == 0.0f);
      }
      zero = !nonzero;
    }
  });
  return zero;
}

// Whether every element of t (a CPU tensor) is finite. A product with a zero h_0 is skipped
// only when the other factor is finite: 0 * inf is NaN, and nn.RNN, which multiplies, gives it.
bool all_finite(const at::Tensor& t) {
  bool finite = true;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, t.scalar_type(), "all_finite", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor tc = t.contiguous();
    const scalar_t* p = tc.const_data_ptr<scalar_t>();
    const int64_t n = tc.numel();
    // x * 0 is 0 for a finite x and NaN for inf or NaN; cpu_math::kLanes independent lanes, so
    // that the loop vectorises without reassociating a sum.
    using cpu_math::kLanes;
    acc_t lanes[kLanes] = {};
    int64_t k = 0;
    for (; k + kLanes <= n; k += kLanes) {
      for (int64_t j = 0; j < kLanes; ++j) {
        lanes[j] += static_cast<acc_t>(p[k + j]) * acc_t(0);
      }
    }
    for (; k < n; ++k) {
      lanes[0] += static_cast<acc_t>(p[k]) * acc_t(0);
    }
    for (int64_t j = 0; j < kLanes; ++j) {
      finite = finite && lanes[j] == acc_t(0);
    }
  });
  return finite;
}

// The zero-h_0 shortcut (all_zero), taken only when the factor it multiplies is finite.
bool zero_product(const at::Tensor& h_0, const at::Tensor& factor) {
  return all_zero(h_0) && all_finite(factor);
}

// tanh in place over n contiguous floats (cpu_math::tanh_float), in blocks of
// cpu_math::kLanes; the last, partial block goes through a local block, so no element takes a
// scalar path.
RNN_EXT_ROW_CLONES void tanh_inplace(float* p, int64_t n) {
  using cpu_math::kLanes;
  const int64_t full = n / kLanes * kLanes;
  for (int64_t i = 0; i < full; i += kLanes) {
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      p[i + k] = cpu_math::tanh_float(p[i + k]);
    }
  }
  if (full < n) {
    float tail[kLanes] = {};
    std::copy(p + full, p + n, tail);
#pragma omp simd
    for (int64_t k = 0; k < kLanes; ++k) {
      tail[k] = cpu_math::tanh_float(tail[k]);
    }
    std::copy(tail, tail + (n - full), p + full);
  }
}

// phi(t) in place. Contiguous float32 tanh, the common case, takes tanh_inplace: ATen's tanh_
// (Sleef) ran at 3.8 ns per element on an AVX2-only AMD EPYC, 12% of a forward + backward at
// the lesson's shape (T8 B512 I42 H256); other dtypes take ATen's.
void activate_(at::Tensor& t, Activation act) {
  if (act != Activation::Tanh) {
    t.relu_();
  } else if (t.scalar_type() == at::kFloat && t.is_contiguous()) {
    float* p = t.data_ptr<float>();
    at::parallel_for(0, t.numel(), kGrain, [&](int64_t a, int64_t b) {
      tanh_inplace(p + a, b - a);
    });
  } else {
    t.tanh_();
  }
}

// Forward over a validated sequence. lengths_cpu: undefined or int64 (B,) on the CPU.
std::tuple<at::Tensor, at::Tensor> elman_forward_impl(
    const at::Tensor& input_, const at::Tensor& h_0_, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, Activation act, bool reverse,
    const at::Tensor& lengths_cpu, const ElmanSizes& s) {
  // Plain variables, not a structured binding: lambdas below capture them (C++17).
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H;
  const at::Tensor input = input_.contiguous();
  const at::Tensor whh_t = weight_hh.t();
  at::Tensor output = at::empty({T, B, H}, input.options());
  at::Tensor out2d = output.view({T * B, H});
  const at::Tensor x2d = input.view({T * B, I});
  const bool has_bih = bias_ih.has_value() && bias_ih->defined();
  const bool has_bhh = bias_hh.has_value() && bias_hh->defined();
  if (has_bih || has_bhh) {
    const at::Tensor bias =
        has_bih && has_bhh ? *bias_ih + *bias_hh : (has_bih ? *bias_ih : *bias_hh);
    at::addmm_out(out2d, bias, x2d, weight_ih.t());
  } else {
    at::mm_out(out2d, x2d, weight_ih.t());
  }
  if (B == 0 || H == 0) {
    return {output, h_0_.clone(at::MemoryFormat::Contiguous)};
  }

  const bool h_0_zero = zero_product(h_0_, weight_hh);
  if (!lengths_cpu.defined()) {
    at::Tensor h_prev = h_0_;
    for (const auto step : c10::irange(T)) {
      at::Tensor out_t = output.select(0, step_time(step, T, reverse));
      if (step > 0 || !h_0_zero) {
        out_t.addmm_(h_prev, whh_t);
      }
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
    if (step > 0 || !h_0_zero) {
      out_t.addmm_(h, whh_t);
    }
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
  // Plain variables, not a structured binding: lambdas below capture them (C++17).
  const int64_t T = s.T, B = s.B, H = s.H;
  // The last dimension of the output gradient must be dense or broadcast (stride 0); the
  // other two may have any strides.
  const at::Tensor gy = grad_output_.stride(2) == 1 || grad_output_.stride(2) == 0 || H <= 1
                            ? grad_output_
                            : grad_output_.contiguous();
  const at::Tensor out = output_.contiguous();
  const at::Tensor input = input_.contiguous();
  const at::Tensor h_0 = h_0_.contiguous();
  // ga is produced chunk by chunk (time steps [c K, (c + 1) K)) and each full chunk goes to the
  // accumulator's GEMMs at once, so only K steps of it are ever held (the backward's peak
  // memory: output, grad_input and K steps of ga, under nn.RNN's).
  // At least two chunks when T > 1, so that ga never costs a whole (T, B, H).
  const int64_t K = std::clamp<int64_t>(
      std::min((kChunkRows + B - 1) / std::max<int64_t>(B, 1), (T + 1) / 2), 1, T);
  at::Tensor ga = at::empty({K, B, H}, input.options());
  const bool padded = lengths_cpu.defined() && any_length_below(lengths_cpu, T);
  ElmanGradAccumulator acc(input, H, output_mask[0], padded ? lengths_cpu : at::Tensor());
  // grad_h_n: rows g_sB apart. A broadcast one (stride 0 along B: the zero that autograd
  // hands over for an unused h_n, or an expanded row) is read as one row, not materialized.
  const bool h_n_row = grad_h_n_.stride(0) == 0 && B > 0;
  const at::Tensor grad_h_n =
      h_n_row ? grad_h_n_.select(0, 0).contiguous() : grad_h_n_.contiguous();
  const int64_t g_sB_in = h_n_row ? 0 : H;
  at::Tensor g = at::empty({B, H}, input.options());  // g = ga_t W_hh, carried to step t -/+ 1
  const int64_t* len = lengths_cpu.defined() ? lengths_cpu.const_data_ptr<int64_t>() : nullptr;
  at::Tensor g_next = len != nullptr ? at::empty_like(g) : at::Tensor();
  // g0, ga of each sequence's first step: with lengths, reversed, gathered as the steps go;
  // else ga of the last step processed, still in the buffer at the end.
  at::Tensor g0 = len != nullptr && reverse ? at::zeros({B, H}, input.options()) : at::Tensor();
  // The bias gradient, summed per block of rows in the accumulation type as ga is produced.
  const RowBlocks rb = row_blocks(B, H);
  at::Tensor gb_blocks = at::zeros({rb.count, H},
                                   input.options().dtype(at::toOpMathType(input.scalar_type())));

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                  "elman_backward", [&] {
    // Backward visits the steps in the opposite order of the forward.
    for (const auto step : c10::irange(T)) {
      const int64_t t = step_time(T - 1 - step, T, reverse);
      const int64_t c0 = t / K * K, n = std::min(T, c0 + K) - c0;  // this step's chunk
      at::Tensor ga_t = ga.select(0, t - c0);
      const at::Tensor& g_in = step == 0 ? grad_h_n : g;
      const int64_t g_sB = step == 0 ? g_sB_in : H;
      preactivation_grad_step<scalar_t>(
          ga_t.data_ptr<scalar_t>(), gb_blocks.data_ptr<at::opmath_type<scalar_t>>(),
          gy.const_data_ptr<scalar_t>() + t * gy.stride(0),
          gy.stride(1), H <= 1 ? 1 : gy.stride(2), g_in.const_data_ptr<scalar_t>(), g_sB,
          out.const_data_ptr<scalar_t>() + t * B * H, len, t, B, H, act);
      if (g0.defined()) {
        const scalar_t* src = ga_t.const_data_ptr<scalar_t>();
        scalar_t* dst = g0.data_ptr<scalar_t>();
        for (const auto b : c10::irange(B)) {
          if (t == len[b] - 1) {
            std::copy(src + b * H, src + (b + 1) * H, dst + b * H);
          }
        }
      }
      if (t == (reverse ? c0 + n - 1 : c0)) {  // the chunk's last step in backward order
        acc.add_chunk(ga.narrow(0, 0, n), c0, out, input, weight_ih, reverse);
      }
      if (step + 1 == T) {
        break;  // the last step's g is grad_h_0: computed by the accumulator from g0
      }
      if (len == nullptr) {
        at::mm_out(g, ga_t, weight_hh);
        continue;
      }
      // Ended sequences pass their gradient through unchanged.
      at::mm_out(g_next, ga_t, weight_hh);
      const scalar_t* gp = g_in.const_data_ptr<scalar_t>();
      scalar_t* gn = g_next.data_ptr<scalar_t>();
      for (const auto b : c10::irange(B)) {
        if (t >= len[b]) {
          std::copy(gp + b * g_sB, gp + b * g_sB + H, gn + b * H);
        }
      }
      std::swap(g, g_next);
    }
  });
  if (!g0.defined()) {
    const int64_t t_first = reverse ? T - 1 : 0;
    g0 = ga.select(0, t_first - t_first / K * K);
  }

  // The g buffer is free now: it becomes grad_h_0 (no further (B, H) allocation).
  auto [grad_input, grad_h_0, grad_weight_ih, grad_weight_hh] =
      acc.finish(g0, input, h_0, weight_hh, output_mask, g, zero_product(h_0, g0));
  // The blocks' sums, added in block order.
  at::Tensor grad_bias = at::empty({H}, input.options());
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, input.scalar_type(),
                                  "elman_backward_bias", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const acc_t* p = gb_blocks.const_data_ptr<acc_t>();
    scalar_t* out_b = grad_bias.mutable_data_ptr<scalar_t>();
    for (int64_t j = 0; j < H; ++j) {
      acc_t sum = 0;
      for (int64_t k = 0; k < rb.count; ++k) {
        sum += p[k * H + j];
      }
      out_b[j] = static_cast<scalar_t>(sum);
    }
  });
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
