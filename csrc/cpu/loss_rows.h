// The float rows of the CPU cross-entropy (seq_nll_cpu.cpp): log-sum-exp of a row, and a row's
// gradient, in vectors of W floats (vec_math.h). seq_nll_cpu.cpp instantiates them once per
// instruction set (W = 16 for AVX-512, 8 for AVX2, 4 otherwise; RNN_EXT_VEC_MULTIVERSION);
// tests/cpu_vec/ compiles every W for the machine that runs the tests, so that the widths its
// CPU would not pick are checked too.
//
// A row is walked in blocks of W; its last, partial block is padded into a vector (-inf for the
// max and the sum, which adds exp(-inf) = 0; the row's max for the gradient, whose padded lanes
// are dropped), so no element goes through a scalar loop. The arguments of exp are x - m and
// (x - m) - log_sum, never positive for a consistent (m, log_sum). Math: seq_nll_math.h.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>

#include "seq_nll_math.h"
#include "vec_math.h"

namespace rnn_ext {
namespace cpu_rows {

// The log-sum-exp of a row in two parts: its max m and log_sum = log(sum exp(x - m)), so that
// the loss can be formed at its own magnitude (seq_ce_row_loss) and the gradient's softmax at
// its own (seq_ce_log_prob); both are saved for the backward (the log-sum-exp is m + log_sum,
// never formed: seq_nll_math.h says why).
template <typename acc_t>
struct RowLse {
  acc_t m, log_sum;
};

// The lanes of v combined pairwise by op (lane k with lane k + W/2, then the same on the W/2
// results): a tree of depth log2(W), computed in vectors of halving width.
template <int W, typename Op>
RNN_EXT_ALWAYS_INLINE float reduce_lanes(typename cpu_math::Vec<W>::F v, Op op) {
  if constexpr (W == 1) {
    return v[0];
  } else {
    typename cpu_math::Vec<W / 2>::F lo, hi;
    std::memcpy(&lo, &v, sizeof(lo));
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof(lo), sizeof(hi));
    return reduce_lanes<W / 2>(op(lo, hi), op);
  }
}

// log-sum-exp of one contiguous row of C >= 1 floats. Each pass (max, then sum) keeps two
// accumulators (two independent chains of vector operations). The order of the additions
// depends on W only, but the last bits also on whether the compiler contracted to FMA: the same
// on every machine that picks the same definition in seq_nll_cpu.cpp.
template <int W>
RNN_EXT_ALWAYS_INLINE RowLse<float> row_logsumexp(const float* x, int64_t C) {
  using cpu_math::exp_nonpositive;
  using cpu_math::load;
  using cpu_math::max_skip_nan;
  using V = typename cpu_math::Vec<W>::F;
  constexpr float kNegInf = -std::numeric_limits<float>::infinity();
  const auto max_op = [](auto a, auto b) { return max_skip_nan(a, b); };
  const auto add_op = [](auto a, auto b) { return a + b; };

  const int64_t full = C / W * W;
  const V tail = cpu_math::load_partial<W>(x + full, C - full, kNegInf);
  V m0 = tail, m1 = tail;
  int64_t i = 0;
  for (; i + 2 * W <= full; i += 2 * W) {
    m0 = max_skip_nan(load<W>(x + i), m0);
    m1 = max_skip_nan(load<W>(x + i + W), m1);
  }
  if (i < full) {
    m0 = max_skip_nan(load<W>(x + i), m0);
  }
  // A NaN is skipped by the max (or kept, in a lane it started in); either way the sum below
  // is NaN for a row that holds one, as PyTorch's.
  const float m = reduce_lanes<W>(max_skip_nan(m1, m0), max_op);
  if (std::isinf(m)) {
    // All -inf or a +inf: exp(-inf - -inf), exp(inf - inf) make log_sum NaN, as PyTorch.
    double s = 0;
    for (int64_t j = 0; j < C; ++j) {
      s += std::exp(static_cast<double>(x[j]) - m);
    }
    return {m, static_cast<float>(std::log(s))};
  }
  const V mv = cpu_math::splat<V>(m);
  V s0 = exp_nonpositive(tail - mv), s1 = V{};
  for (i = 0; i + 2 * W <= full; i += 2 * W) {
    s0 += exp_nonpositive(load<W>(x + i) - mv);
    s1 += exp_nonpositive(load<W>(x + i + W) - mv);
  }
  if (i < full) {
    s0 += exp_nonpositive(load<W>(x + i) - mv);
  }
  return {m, std::log(reduce_lanes<W>(s0 + s1, add_op))};
}

// grad[i] = c * ([i == y] - exp((x[i] - m) - log_sum)) for one contiguous row of C >= 1 floats,
// (m, log_sum) = l, 0 <= y < C.
template <int W>
RNN_EXT_ALWAYS_INLINE void row_ce_grad(float* g, const float* x, int64_t C, RowLse<float> l,
                                       float c, int64_t y) {
  using cpu_math::exp_nonpositive;
  using V = typename cpu_math::Vec<W>::F;
  const V minus_c = cpu_math::splat<V>(-c), mv = cpu_math::splat<V>(l.m),
          lsv = cpu_math::splat<V>(l.log_sum);
  const int64_t full = C / W * W;
  for (int64_t i = 0; i < full; i += W) {
    cpu_math::store(g + i,
                    minus_c * exp_nonpositive(seq_ce_log_prob(cpu_math::load<W>(x + i), mv, lsv)));
  }
  if (full < C) {
    const V xt = cpu_math::load_partial<W>(x + full, C - full, l.m);
    const V v = minus_c * exp_nonpositive(seq_ce_log_prob(xt, mv, lsv));
    for (int64_t k = 0; full + k < C; ++k) {
      g[full + k] = v[k];
    }
  }
  g[y] = seq_ce_grad(exp_nonpositive(seq_ce_log_prob(x[y], l.m, l.log_sum)), true, c);
}

}  // namespace cpu_rows
}  // namespace rnn_ext
