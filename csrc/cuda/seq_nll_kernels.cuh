// Device code of the sequence-loss CUDA kernels (NLL and cross-entropy, forward and backward).
// The host code that launches them, and what each kernel does, are in csrc/cuda/seq_nll_cuda.cu.
//
// Compiled by nvcc (seq_nll_cuda.cu), and by a host C++ compiler for the emulation of the
// kernels off the device (tests/cuda_emu/cuda_emu.h; tests/test_cuda_emulated.py runs them): so
// this file uses only what that emulation provides (thread indices, warp shuffles, atomicMin).
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cmath>
#include <cstdint>
#include <limits>

#include "../seq_nll_math.h"

namespace rnn_ext {
namespace cuda_detail {

constexpr int kThreads = 256;
constexpr int kWarpsPerBlock = kThreads / 32;
constexpr int64_t kNoBadRow = std::numeric_limits<int64_t>::max();

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

  // weight[y] (1 without a weight), y a class index.
  template <typename acc_t>
  __device__ __forceinline__ acc_t w(int64_t y) const {
    return weight == nullptr ? acc_t(1) : static_cast<acc_t>(weight[y * weight_stride]);
  }
};

__device__ __forceinline__ void record_bad_row(int64_t* bad, int64_t r) {
  atomicMin(reinterpret_cast<unsigned long long*>(bad), static_cast<unsigned long long>(r));
}

// Where a forward kernel writes its per-row results: reduction none, the loss at the target's
// position in `loss_none` ((T, B), or (B, T) when target_batch_first); mean / sum, the float64
// per-row losses `row_loss` (T * B); always the float64 row weights `row_w` (T * B).
template <typename scalar_t>
struct RowOutputs {
  bool none, target_batch_first;
  scalar_t* loss_none;
  double* row_loss;
  double* row_w;
};

// The end of row r = t * B + b of a forward kernel, shared by NLL and cross-entropy: for target
// y, the weight w = weight[y] and the loss row_loss_of(y, w); an ignored row has both 0; a target
// out of range is recorded in `bad` and gets both 0. Stores both in `out`.
template <typename scalar_t, typename index_t, typename RowLossOf>
__device__ __forceinline__ void finish_forward_row(const Targets<scalar_t, index_t>& tg,
                                                   const RowOutputs<scalar_t>& out, int64_t T,
                                                   int64_t r, int64_t t, int64_t b, int64_t* bad,
                                                   RowLossOf row_loss_of) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t y = tg.y(t, b);
  acc_t loss = acc_t(0), w = acc_t(0);
  if (y != tg.ignore_index) {
    if (!seq_target_in_range(y, tg.C)) {
      record_bad_row(bad, r);
    } else {
      w = tg.template w<acc_t>(y);
      loss = row_loss_of(y, w);
    }
  }
  if (out.none) {
    out.loss_none[out.target_batch_first ? b * T + t : r] = static_cast<scalar_t>(loss);
  } else {
    out.row_loss[r] = static_cast<double>(loss);
  }
  out.row_w[r] = static_cast<double>(w);
}

// Per-row loss and weight of the NLL, one thread per row.
template <typename scalar_t, typename index_t>
__global__ void nll_forward_kernel(const scalar_t* __restrict__ lp, int64_t lst, int64_t lsb,
                                   int64_t lsc, Targets<scalar_t, index_t> tg, int64_t T,
                                   RowOutputs<scalar_t> out, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t rows = T * tg.B;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; r < rows;
       r += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = r / tg.B, b = r % tg.B;
    finish_forward_row(tg, out, T, r, t, b, bad, [&](int64_t y, acc_t w) {
      return seq_nll_row_loss(static_cast<acc_t>(lp[t * lst + b * lsb + y * lsc]), w);
    });
  }
}

// Online log-sum-exp (one pass over a row: Milakov & Gimelshein 2018, "Online normalizer
// calculation for softmax"): a running max m and s = sum of exp(x - m) over the values seen.
// Starts at m = -inf, s = 0. A -inf value adds nothing (skipped: exp(-inf - -inf) is NaN); a
// NaN value makes s NaN, and it stays NaN.
template <typename acc_t>
__device__ __forceinline__ void lse_push(acc_t& m, acc_t& s, acc_t v) {
  if (v > m) {
    s = s * exp(m - v) + acc_t(1);
    m = v;
  } else if (v != -std::numeric_limits<acc_t>::infinity()) {
    s += exp(v - m);
  }
}

// Merges the running state (mo, so) of another part of the row into (m, s).
template <typename acc_t>
__device__ __forceinline__ void lse_merge(acc_t& m, acc_t& s, acc_t mo, acc_t so) {
  const acc_t mn = mo > m ? mo : m;
  if (mn == -std::numeric_limits<acc_t>::infinity()) {
    s += so;  // neither part saw a value above -inf (0, or NaN from a NaN value)
  } else {
    s = s * exp(m - mn) + so * exp(mo - mn);
  }
  m = mn;
}

// log_sum = log(sum exp(x - m)) of a row of C values from its merged state (lse = m + log_sum;
// the loss takes the two parts, seq_ce_row_loss, and so does the backward, seq_ce_log_prob).
// A row whose max is infinite gets what the two-pass formula of the CPU kernels gives: NaN
// (+inf: exp(inf - inf); all -inf: exp(-inf - -inf)); an empty row (C = 0), log(0) = -inf.
template <typename acc_t>
__device__ __forceinline__ acc_t lse_log_sum(acc_t m, acc_t s, int64_t C) {
  constexpr acc_t kInf = std::numeric_limits<acc_t>::infinity();
  if (m == kInf || (m == -kInf && C > 0)) {
    return std::numeric_limits<acc_t>::quiet_NaN();
  }
  return log(s);
}

// The cross-entropy's row statistics (csrc/seq_nll.h), (T, B) each: the row's max m and
// log_sum = log(sum exp(x - m)). The forward writes them contiguous (strides B and 1); the
// backward reads them through the strides of the tensors it is given.
template <typename acc_t>
struct RowStats {
  acc_t* m;
  int64_t m_st, m_sb;
  acc_t* log_sum;
  int64_t ls_st, ls_sb;
};

// Each row's max and log_sum (saved) and the cross-entropy loss, one warp per row, one pass
// over the row (lse_push per lane, lse_merge across the warp).
template <typename scalar_t, typename index_t>
__global__ void ce_forward_kernel(const scalar_t* __restrict__ x, int64_t xst, int64_t xsb,
                                  int64_t xsc, Targets<scalar_t, index_t> tg, int64_t T,
                                  RowOutputs<scalar_t> out,
                                  RowStats<at::opmath_type<scalar_t>> stats, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t rows = T * tg.B;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t r = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
       r < rows; r += warps) {
    const int64_t t = r / tg.B, b = r % tg.B;
    const scalar_t* row = x + t * xst + b * xsb;
    acc_t m = -std::numeric_limits<acc_t>::infinity(), sum = acc_t(0);
    for (int64_t c = lane; c < tg.C; c += 32) {
      lse_push(m, sum, static_cast<acc_t>(row[c * xsc]));
    }
    for (int off = 16; off > 0; off >>= 1) {
      const acc_t mo = __shfl_xor_sync(0xffffffffu, m, off);
      const acc_t so = __shfl_xor_sync(0xffffffffu, sum, off);
      lse_merge(m, sum, mo, so);
    }
    if (lane != 0) {
      continue;
    }
    const acc_t log_sum = lse_log_sum(m, sum, tg.C);
    stats.m[t * stats.m_st + b * stats.m_sb] = m;
    stats.log_sum[t * stats.ls_st + b * stats.ls_sb] = log_sum;
    finish_forward_row(tg, out, T, r, t, b, bad, [&](int64_t y, acc_t w) {
      return seq_ce_row_loss(m, log_sum, static_cast<acc_t>(row[y * xsc]), w);
    });
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
    grad[r * tg.C + y] = static_cast<scalar_t>(tg.template w<acc_t>(y) * gs(t, b));
  }
}

// The cross-entropy backward's unit of work: one warp writes up to kCeChunk classes of one row
// (each lane every 32nd), so that the row's index arithmetic (64-bit divisions), target,
// factor, max and log_sum are done and read once per unit, not once per element.
constexpr int64_t kCeChunk = 1024;

template <typename scalar_t, typename index_t>
__global__ void ce_backward_kernel(scalar_t* __restrict__ grad, const scalar_t* __restrict__ x,
                                   int64_t xst, int64_t xsb, int64_t xsc,
                                   RowStats<const at::opmath_type<scalar_t>> stats,
                                   Targets<scalar_t, index_t> tg, GradScale<scalar_t> gs,
                                   int64_t T, int64_t* bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t chunks = (tg.C + kCeChunk - 1) / kCeChunk;
  const int64_t units = T * tg.B * chunks;
  const int64_t warps = static_cast<int64_t>(gridDim.x) * kWarpsPerBlock;
  for (int64_t u = blockIdx.x * static_cast<int64_t>(kWarpsPerBlock) + threadIdx.x / 32;
       u < units; u += warps) {
    const int64_t r = u / chunks, c0 = (u % chunks) * kCeChunk;
    const int64_t c1 = c0 + kCeChunk < tg.C ? c0 + kCeChunk : tg.C;
    const int64_t t = r / tg.B, b = r % tg.B;
    scalar_t* g = grad + r * tg.C;
    const int64_t y = tg.y(t, b);
    const bool in_range = seq_target_in_range(y, tg.C);
    const acc_t log_sum = stats.log_sum[t * stats.ls_st + b * stats.ls_sb];
    if (y == tg.ignore_index || !in_range) {
      if (y != tg.ignore_index && c0 == 0 && lane == 0) {
        record_bad_row(bad, r);
      }
      const scalar_t fill = static_cast<scalar_t>(seq_ce_ignored_grad(log_sum));
      for (int64_t c = c0 + lane; c < c1; c += 32) {
        g[c] = fill;
      }
      continue;
    }
    const acc_t cr = tg.template w<acc_t>(y) * gs(t, b);
    const acc_t m = stats.m[t * stats.m_st + b * stats.m_sb];
    const scalar_t* row = x + t * xst + b * xsb;
    for (int64_t c = c0 + lane; c < c1; c += 32) {
      g[c] = static_cast<scalar_t>(seq_ce_grad(
          exp(seq_ce_log_prob(static_cast<acc_t>(row[c * xsc]), m, log_sum)), c == y, cr));
    }
  }
}

}  // namespace cuda_detail
}  // namespace rnn_ext
