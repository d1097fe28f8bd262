// CPU kernels of the sequence losses: seq_nll_loss_forward / _backward and
// seq_cross_entropy_forward / _backward (schemas in csrc/rnn_ext.cpp, math in seq_nll_math.h).
//
// A row is one (t, b): rows are numbered r = t * B + b, the order of the lesson's
// `inp.view(-1, C)`. The target is read through its own strides, (B, T) or (T, B), so no
// transposed copy is made; the input is read through its strides too (the cross-entropy kernels
// need a unit stride along C, and copy the input only when it lacks one).
//
//   NLL forward      one gather per row; loss per row (none) or partial sums (mean / sum).
//   NLL backward     one pass writing the gradient: zeros and each row's one nonzero.
//   CE forward       per row: max m, sum of exp(x - m), loss from m and log_sum = log(sum)
//                    (seq_ce_row_loss); m and log_sum saved.
//   CE backward      per row: grad = c * (onehot - exp((x - m) - log_sum)), from the logits, m
//                    and log_sum only.
// Rows run in parallel (at::parallel_for) in blocks of a fixed size; the partial sums of the
// blocks are added in block order, so the result does not depend on the number of threads.
// Sums accumulate in double. float16 / bfloat16 rows are computed in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/accumulate.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <optional>
#include <tuple>
#include <type_traits>
#include <vector>

#include "loss_rows.h"
#include "seq_nll.h"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace rnn_ext {
namespace {

// About this many elements per parallel task.
constexpr int64_t kGrain = 1 << 15;

int64_t rows_per_block(int64_t elements_per_row) {
  return std::max<int64_t>(1, kGrain / std::max<int64_t>(elements_per_row, 1));
}

// ---------------------------------------------------------------------------------------------
// Row math. float: loss_rows.h, defined once per instruction set with the vector width of its
// registers (vec_math.h: RNN_EXT_VEC_MULTIVERSION), the best one picked at load time.

using cpu_rows::RowLse;

#define RNN_EXT_FLOAT_ROWS(TARGET, W)                                                          \
  TARGET RowLse<float> row_logsumexp(const float* x, int64_t C) {                              \
    return cpu_rows::row_logsumexp<W>(x, C);                                                   \
  }                                                                                            \
  TARGET void row_ce_grad(float* g, const float* x, int64_t C, RowLse<float> l, float c,       \
                          int64_t y) {                                                         \
    cpu_rows::row_ce_grad<W>(g, x, C, l, c, y);                                                \
  }
#if RNN_EXT_VEC_MULTIVERSION
RNN_EXT_FLOAT_ROWS(__attribute__((target("avx512f"))), 16)
#if RNN_EXT_HAS_X86_64_V3
RNN_EXT_FLOAT_ROWS(__attribute__((target("arch=x86-64-v3"))), 8)  // AVX2 and FMA
#endif
RNN_EXT_FLOAT_ROWS(__attribute__((target("avx2"))), 8)
RNN_EXT_FLOAT_ROWS(__attribute__((target("default"))), 4)
#else
RNN_EXT_FLOAT_ROWS(, 4)
#endif
#undef RNN_EXT_FLOAT_ROWS

// The same in double, with libm's exp.
RowLse<double> row_logsumexp(const double* x, int64_t C) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t i = 0; i < C; ++i) {
    m = x[i] > m ? x[i] : m;
  }
  double s = 0;
  for (int64_t i = 0; i < C; ++i) {
    s += std::exp(x[i] - m);
  }
  return {m, std::log(s)};
}

void row_ce_grad(double* g, const double* x, int64_t C, RowLse<double> l, double c, int64_t y) {
  for (int64_t i = 0; i < C; ++i) {
    g[i] = seq_ce_grad(std::exp(seq_ce_log_prob(x[i], l.m, l.log_sum)), i == y, c);
  }
}

// ---------------------------------------------------------------------------------------------
// What every kernel shares: the target of each row, its weight, and the out-of-range check.

template <typename scalar_t, typename index_t>
struct RowTargets {
  using acc_t = at::opmath_type<scalar_t>;
  const index_t* target;
  const scalar_t* weight;  // nullptr: every weight is 1
  int64_t weight_stride;
  int64_t ignore_index;
  SeqLossSizes s;

  int64_t y(int64_t t, int64_t b) const {
    return static_cast<int64_t>(
        target[seq_target_offset(t, b, s.target_stride_t, s.target_stride_b)]);
  }
  bool ignored(int64_t y) const { return y == ignore_index; }
  acc_t w(int64_t y) const {
    return weight == nullptr ? acc_t(1) : acc_t(weight[y * weight_stride]);
  }
};

template <typename scalar_t, typename index_t>
RowTargets<scalar_t, index_t> row_targets(const at::Tensor& target,
                                          const std::optional<at::Tensor>& weight,
                                          int64_t ignore_index, const SeqLossSizes& s) {
  const bool has_w = weight.has_value() && weight->defined();
  return {target.const_data_ptr<index_t>(),
          has_w ? weight->const_data_ptr<scalar_t>() : nullptr, has_w ? weight->stride(0) : 0,
          ignore_index, s};
}

// Records the smallest row whose target is out of range, from any thread.
struct BadRow {
  std::atomic<int64_t> row{std::numeric_limits<int64_t>::max()};
  void record(int64_t r) {
    int64_t cur = row.load();
    while (r < cur && !row.compare_exchange_weak(cur, r)) {
    }
  }
  template <typename RT>
  void raise_if_any(const char* op, const RT& rt, bool target_batch_first) const {
    const int64_t r = row.load();
    if (r != std::numeric_limits<int64_t>::max()) {
      const int64_t t = r / rt.s.B, b = r % rt.s.B;
      throw_seq_target_out_of_range(op, rt.y(t, b), rt.s.C, rt.ignore_index, t, b,
                                    target_batch_first);
    }
  }
};

// The weight of row r, whose target is y: nullopt for a row that contributes nothing (its
// target is ignore_index, or out of [0, C), which is recorded in `bad` and raised later).
template <typename RT>
inline std::optional<typename RT::acc_t> row_weight(const RT& rt, int64_t y, int64_t r,
                                                    BadRow& bad) {
  if (rt.ignored(y)) {
    return std::nullopt;
  }
  if (!seq_target_in_range(y, rt.s.C)) {
    bad.record(r);
    return std::nullopt;
  }
  return rt.w(y);
}

// Calls f(t, b, r) for rows r in [r0, r1), r = t * B + b, keeping (t, b) as counters (a 64-bit
// division per row costs more than a short row's work).
template <typename F>
inline void for_rows(int64_t r0, int64_t r1, int64_t B, const F& f) {
  int64_t t = r0 / B, b = r0 % B;
  for (int64_t r = r0; r < r1; ++r) {
    f(t, b, r);
    if (++b == B) {
      b = 0;
      ++t;
    }
  }
}

// Runs block_fn(r0, r1) -> (loss sum, weight sum) over all rows in blocks of a fixed size (from
// elements_per_row, not from the number of threads), in parallel, and adds the blocks' sums in
// block order, so the result does not depend on the number of threads.
template <typename BlockFn>
std::pair<double, double> for_each_block(const SeqLossSizes& s, int64_t elements_per_row,
                                         const BlockFn& block_fn) {
  const int64_t rows = s.T * s.B;
  const int64_t block = rows_per_block(elements_per_row);
  const int64_t n_blocks = (rows + block - 1) / block;
  std::vector<double> loss_sum(n_blocks, 0.0), weight_sum(n_blocks, 0.0);
  at::parallel_for(0, n_blocks, 1, [&](int64_t k0, int64_t k1) {
    for (int64_t k = k0; k < k1; ++k) {
      std::tie(loss_sum[k], weight_sum[k]) = block_fn(k * block, std::min(rows, (k + 1) * block));
    }
  });
  double ls = 0, ws = 0;
  for (int64_t k = 0; k < n_blocks; ++k) {
    ls += loss_sum[k];
    ws += weight_sum[k];
  }
  return {ls, ws};
}

// Runs row_fn(t, b, r, buf) -> (loss, weight) over all rows (for_each_block); writes the per-row
// loss at the target's position (reduction none) or returns the sums of loss and weight (always
// the weight sum: total_weight). row_fn returns weight 0 for ignored rows.
template <typename scalar_t, typename RowFn>
std::pair<double, double> for_each_row(const SeqLossSizes& s, int64_t elements_per_row,
                                       bool target_batch_first, Reduction reduction,
                                       scalar_t* loss_none, const RowFn& row_fn) {
  return for_each_block(s, elements_per_row, [&](int64_t r0, int64_t r1) {
    std::vector<at::opmath_type<scalar_t>> buf;  // a row converted to float, for half / bf16
    double ls = 0, ws = 0;
    for_rows(r0, r1, s.B, [&](int64_t t, int64_t b, int64_t r) {
      const auto [loss, w] = row_fn(t, b, r, buf);
      if (reduction == Reduction::None) {
        loss_none[target_batch_first ? b * s.T + t : r] = static_cast<scalar_t>(loss);
      } else {
        ls += static_cast<double>(loss);
      }
      ws += static_cast<double>(w);
    });
    return std::make_pair(ls, ws);
  });
}

// The loss and total_weight outputs, filled from the sums for mean / sum.
std::tuple<at::Tensor, at::Tensor> make_outputs(const at::Tensor& input, const SeqLossSizes& s,
                                                Reduction reduction, bool target_batch_first) {
  auto loss = reduction == Reduction::None
                  ? at::empty(seq_target_shape(s, target_batch_first), input.options())
                  : at::empty({}, input.options());
  auto total_weight =
      at::empty({}, input.options().dtype(seq_loss_stat_dtype(input.scalar_type())));
  return {loss, total_weight};
}

template <typename scalar_t>
void finish_outputs(at::Tensor& loss, at::Tensor& total_weight, Reduction reduction,
                    double loss_sum, double weight_sum) {
  using acc_t = at::opmath_type<scalar_t>;  // the statistics dtype
  *total_weight.mutable_data_ptr<acc_t>() = static_cast<acc_t>(weight_sum);
  if (reduction == Reduction::Sum) {
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(loss_sum);
  } else if (reduction == Reduction::Mean) {
    // 0 / 0 = NaN when every target is ignored, as PyTorch
    *loss.mutable_data_ptr<scalar_t>() = static_cast<scalar_t>(loss_sum / weight_sum);
  }
}

#define RNN_EXT_DISPATCH_TARGET(target, NAME, ...)                          \
  [&] {                                                                    \
    if ((target).scalar_type() == at::kByte) {                             \
      using index_t = uint8_t;                                             \
      return __VA_ARGS__();                                                \
    }                                                                      \
    using index_t = int64_t;                                               \
    return __VA_ARGS__();                                                  \
  }()

// ---------------------------------------------------------------------------------------------
// NLL

// The NLL forward over rows [r0, r1). A row's work is one gather from log_probs (a cache miss
// when C is large), so the loop runs in chunks of kChunk rows: first it reads the chunk's
// targets (row_weight: an ignored or out-of-range row gets loss 0 and is dropped; an
// out-of-range one is recorded in `bad`) and prefetches each kept row's log-probability, then it
// gathers them in a loop of a few instructions, so that many gathers are in flight at once.
// (One row at a time, the loop's own instructions, target, checks, weight and sums, bounded
// them: that loop took 1.5-2x this one's time on one thread at C = 85 and C = 10000, about
// 1.5x ATen's nll_loss_forward.) The sums are taken in row order, in double: the result is the
// row-at-a-time loop's.
template <typename scalar_t, typename index_t>
struct NllForwardRows {
  using acc_t = at::opmath_type<scalar_t>;
  static constexpr int64_t kChunk = 64;
  RowTargets<scalar_t, index_t> rt;
  const scalar_t* lp;
  int64_t st, sb, sc;   // log_probs' strides
  scalar_t* loss_none;  // the per-row loss (reduction none), else nullptr
  bool target_batch_first;

  template <bool kNone>
  std::pair<double, double> run(int64_t r0, int64_t r1, BadRow& bad) const {
    const int64_t B = rt.s.B, T = rt.s.T;
    int64_t offset[kChunk];
    int64_t out[kChunk];  // kNone: each kept row's position in loss_none
    acc_t w[kChunk];      // each kept row's class weight (1 without weights)
    double ls = 0, ws = 0;
    int64_t t = r0 / B, b = r0 % B;
    for (int64_t c0 = r0; c0 < r1; c0 += kChunk) {
      const int64_t c1 = std::min(r1, c0 + kChunk);
      int64_t n = 0;
      for (int64_t r = c0; r < c1; ++r) {
        const int64_t y = rt.y(t, b);
        const int64_t pos = target_batch_first ? b * T + t : r;
        if (const auto wy = row_weight(rt, y, r, bad)) {
          offset[n] = t * st + b * sb + y * sc;
          __builtin_prefetch(lp + offset[n]);
          w[n] = *wy;
          if constexpr (kNone) {
            out[n] = pos;
          }
          ++n;
        } else if constexpr (kNone) {
          loss_none[pos] = scalar_t(0);
        }
        if (++b == B) {
          b = 0;
          ++t;
        }
      }
      for (int64_t i = 0; i < n; ++i) {
        const acc_t loss = seq_nll_row_loss(acc_t(lp[offset[i]]), w[i]);
        if constexpr (kNone) {
          loss_none[out[i]] = static_cast<scalar_t>(loss);
        } else {
          ls += static_cast<double>(loss);
        }
        ws += static_cast<double>(w[i]);
      }
    }
    return {ls, ws};
  }
};

std::tuple<at::Tensor, at::Tensor> seq_nll_loss_forward_cpu(
    const at::Tensor& log_probs, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_str, bool target_batch_first) {
  const char* op = "rnn_ext::seq_nll_loss_forward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "log_probs", log_probs, target, weight, target_batch_first);
  // std::tie, not a structured binding: the lambdas below capture these, which Clang accepts
  // only from version 16.
  at::Tensor loss, total_weight;
  std::tie(loss, total_weight) = make_outputs(log_probs, s, reduction, target_batch_first);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, log_probs.scalar_type(), "seq_nll_loss_forward_cpu", [&] {
        RNN_EXT_DISPATCH_TARGET(target, "seq_nll_loss_forward_cpu", [&] {
          const NllForwardRows<scalar_t, index_t> rows{
              row_targets<scalar_t, index_t>(target, weight, ignore_index, s),
              log_probs.const_data_ptr<scalar_t>(),
              log_probs.stride(0),
              log_probs.stride(1),
              log_probs.stride(2),
              reduction == Reduction::None ? loss.mutable_data_ptr<scalar_t>() : nullptr,
              target_batch_first};
          BadRow bad;
          const auto sums = for_each_block(s, 1, [&](int64_t r0, int64_t r1) {
            return reduction == Reduction::None ? rows.template run<true>(r0, r1, bad)
                                                : rows.template run<false>(r0, r1, bad);
          });
          bad.raise_if_any(op, rows.rt, target_batch_first);
          finish_outputs<scalar_t>(loss, total_weight, reduction, sums.first, sums.second);
        });
      });
  return {loss, total_weight};
}

// The backward's per-row factor s (seq_loss_grad_scale), reading grad_loss through its strides.
template <typename scalar_t>
struct GradScale {
  using acc_t = at::opmath_type<scalar_t>;
  const scalar_t* g;
  int64_t stride_t, stride_b;
  acc_t total_weight;
  Reduction reduction;
  acc_t operator()(int64_t t, int64_t b) const {
    const acc_t gv = reduction == Reduction::None ? acc_t(g[t * stride_t + b * stride_b])
                                                  : acc_t(g[0]);
    return seq_loss_grad_scale(gv, total_weight, reduction);
  }
};

template <typename scalar_t>
GradScale<scalar_t> grad_scale(const at::Tensor& grad_loss, const at::Tensor& total_weight,
                               Reduction reduction, bool target_batch_first) {
  using acc_t = at::opmath_type<scalar_t>;
  const bool none = reduction == Reduction::None;
  return {grad_loss.const_data_ptr<scalar_t>(),
          none ? grad_loss.stride(target_batch_first ? 1 : 0) : 0,
          none ? grad_loss.stride(target_batch_first ? 0 : 1) : 0,
          static_cast<acc_t>(total_weight.item<double>()), reduction};
}

// The NLL gradient's storage: rows of the last dimension, of which the kernel writes only one
// element each, all others 0. Returns the tensor and whether it already reads as zeros.
//
// A large gradient (>= 32 MiB: glibc maps fresh pages for it anyway, so zeroing it means a page
// fault per page) whose rows span several pages (>= 16 KiB: a word-level vocabulary) is a fresh
// anonymous mapping: its pages read as zero and the kernel supplies each on its first touch, so
// only the pages that receive a row's nonzero are ever written (the lesson's loss at T 35, B 32,
// C 10000: ~1,100 pages touched instead of ~11,000, and no memset). The mapping is reported to
// PyTorch's memory profiler as the CPU allocator would. Elsewhere (and off Linux): at::empty,
// which the backward zeroes a block of rows at a time just before writing their nonzeros, so
// that each block is written once while in cache (at::zeros and then a scatter write it twice).
std::pair<at::Tensor, bool> sparse_rows_gradient(at::IntArrayRef sizes,
                                                 const at::TensorOptions& options) {
#if defined(__linux__)
  constexpr size_t kMinBytes = size_t(32) << 20;
  constexpr size_t kMinRowBytes = size_t(16) << 10;
  const size_t nbytes = c10::multiply_integers(sizes) * options.dtype().itemsize();
  const size_t row_bytes = (sizes.empty() ? 1 : sizes.back()) * options.dtype().itemsize();
  if (nbytes >= kMinBytes && row_bytes >= kMinRowBytes) {
    void* p = mmap(nullptr, nbytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p != MAP_FAILED) {
      const bool profiled = c10::memoryProfilingEnabled();
      if (profiled) {
        c10::reportMemoryUsageToProfiler(p, static_cast<int64_t>(nbytes), 0, 0,
                                         c10::Device(c10::kCPU));
      }
      // Its own deleter unmaps it (and tells the profiler); the storage keeps the CPU
      // allocator and stays resizable, like any other gradient (a resize reallocates through
      // the allocator and frees the mapping).
      struct Mapping {
        void* addr;
        size_t nbytes;
        bool profiled;
      };
      c10::DataPtr data(p, new Mapping{p, nbytes, profiled}, [](void* ctx) {
        const auto* m = static_cast<const Mapping*>(ctx);
        if (m->profiled) {
          c10::reportMemoryUsageToProfiler(m->addr, -static_cast<int64_t>(m->nbytes), 0, 0,
                                           c10::Device(c10::kCPU));
        }
        munmap(m->addr, m->nbytes);
        delete m;
      }, c10::Device(c10::kCPU));
      c10::Storage storage(c10::Storage::use_byte_size_t(), nbytes, std::move(data),
                           c10::GetCPUAllocator(), /*resizable=*/true);
      return {at::empty({0}, options).set_(storage, 0, sizes), true};
    }
  }
#endif
  return {at::empty(sizes, options), false};
}

at::Tensor seq_nll_loss_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& log_probs, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction_str,
    bool target_batch_first, const at::Tensor& total_weight) {
  const char* op = "rnn_ext::seq_nll_loss_backward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "log_probs", log_probs, target, weight, target_batch_first);
  check_seq_loss_backward_args(op, s, log_probs, grad_loss, reduction, target_batch_first,
                               total_weight, nullptr, nullptr);
  // All zeros but one element per row.
  at::Tensor grad;  // std::tie: see seq_nll_loss_forward_cpu
  bool zeroed;
  std::tie(grad, zeroed) = sparse_rows_gradient({s.T, s.B, s.C}, log_probs.options());
  if (grad.numel() == 0) {
    return grad;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, log_probs.scalar_type(), "seq_nll_loss_backward_cpu", [&] {
        RNN_EXT_DISPATCH_TARGET(target, "seq_nll_loss_backward_cpu", [&] {
          const auto rt = row_targets<scalar_t, index_t>(target, weight, ignore_index, s);
          const auto gs = grad_scale<scalar_t>(grad_loss, total_weight, reduction,
                                               target_batch_first);
          scalar_t* g = grad.mutable_data_ptr<scalar_t>();
          BadRow bad;
          const int64_t block = rows_per_block(s.C);
          at::parallel_for(0, s.T * s.B, block, [&](int64_t r0, int64_t r1) {
            for (int64_t k0 = r0; k0 < r1; k0 += block) {
              const int64_t k1 = std::min(r1, k0 + block);
              if (!zeroed) {  // all-zero bits are +0 in every floating dtype
                std::memset(static_cast<void*>(g + k0 * s.C), 0,
                            static_cast<size_t>((k1 - k0) * s.C) * sizeof(scalar_t));
              }
              for_rows(k0, k1, s.B, [&](int64_t t, int64_t b, int64_t r) {
                const int64_t y = rt.y(t, b);
                if (const auto w = row_weight(rt, y, r, bad)) {
                  g[r * s.C + y] = static_cast<scalar_t>(*w * gs(t, b));
                }
              });
            }
          });
          bad.raise_if_any(op, rt, target_batch_first);
        });
      });
  return grad;
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

// The logits with a unit stride along C (a copy only when they lack one).
at::Tensor rows_contiguous(const at::Tensor& logits) {
  return (logits.size(2) <= 1 || logits.stride(2) == 1) ? logits : logits.contiguous();
}

// A row of any dtype as contiguous acc_t (float for half / bfloat16): a pointer into the row
// itself when it already is acc_t, else a conversion into `buf`.
template <typename scalar_t, typename acc_t>
const acc_t* row_as_acc(const scalar_t* x, int64_t C, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    return x;
  } else {
    buf.resize(C);
    for (int64_t i = 0; i < C; ++i) {
      buf[i] = static_cast<acc_t>(x[i]);
    }
    return buf.data();
  }
}

// row_ce_grad into a row of any dtype (through `buf` when it is not acc_t).
template <typename scalar_t, typename acc_t>
void row_ce_grad_any(scalar_t* g, const acc_t* x, int64_t C, RowLse<acc_t> l, acc_t c,
                     int64_t y, std::vector<acc_t>& buf) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    row_ce_grad(g, x, C, l, c, y);
  } else {
    buf.resize(C);
    row_ce_grad(buf.data(), x, C, l, c, y);
    for (int64_t i = 0; i < C; ++i) {
      g[i] = static_cast<scalar_t>(buf[i]);
    }
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> seq_cross_entropy_forward_cpu(
    const at::Tensor& logits_in, const at::Tensor& target, const std::optional<at::Tensor>& weight,
    int64_t ignore_index, c10::string_view reduction_str, bool target_batch_first) {
  const char* op = "rnn_ext::seq_cross_entropy_forward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits_in, target, weight, target_batch_first);
  at::Tensor loss, total_weight;  // std::tie: see seq_nll_loss_forward_cpu
  std::tie(loss, total_weight) = make_outputs(logits_in, s, reduction, target_batch_first);
  auto row_max = at::empty({s.T, s.B}, total_weight.options());
  auto log_sum = at::empty({s.T, s.B}, total_weight.options());
  const at::Tensor logits = rows_contiguous(logits_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_forward_cpu", [&] {
        RNN_EXT_DISPATCH_TARGET(target, "seq_cross_entropy_forward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto rt = row_targets<scalar_t, index_t>(target, weight, ignore_index, s);
          const scalar_t* x = logits.const_data_ptr<scalar_t>();
          const int64_t st = logits.stride(0), sb = logits.stride(1);
          acc_t* m_p = row_max.mutable_data_ptr<acc_t>();
          acc_t* log_sum_p = log_sum.mutable_data_ptr<acc_t>();
          BadRow bad;
          const auto sums = for_each_row<scalar_t>(
              s, s.C, target_batch_first, reduction,
              reduction == Reduction::None ? loss.mutable_data_ptr<scalar_t>() : nullptr,
              [&](int64_t t, int64_t b, int64_t r,
                  std::vector<acc_t>& buf) -> std::pair<acc_t, acc_t> {
                const scalar_t* row = x + t * st + b * sb;
                const RowLse<acc_t> l =
                    s.C > 0 ? row_logsumexp(row_as_acc<scalar_t, acc_t>(row, s.C, buf), s.C)
                            : RowLse<acc_t>{-std::numeric_limits<acc_t>::infinity(),
                                            -std::numeric_limits<acc_t>::infinity()};
                m_p[r] = l.m;
                log_sum_p[r] = l.log_sum;
                const int64_t y = rt.y(t, b);
                const auto w = row_weight(rt, y, r, bad);
                if (!w) {
                  return {acc_t(0), acc_t(0)};
                }
                return {seq_ce_row_loss(l.m, l.log_sum, acc_t(row[y]), *w), *w};
              });
          bad.raise_if_any(op, rt, target_batch_first);
          finish_outputs<scalar_t>(loss, total_weight, reduction, sums.first, sums.second);
        });
      });
  return {loss, row_max, log_sum, total_weight};
}

at::Tensor seq_cross_entropy_backward_cpu(
    const at::Tensor& grad_loss, const at::Tensor& logits_in, const at::Tensor& target,
    const std::optional<at::Tensor>& weight, int64_t ignore_index, c10::string_view reduction_str,
    bool target_batch_first, const at::Tensor& row_max, const at::Tensor& log_sum,
    const at::Tensor& total_weight) {
  const char* op = "rnn_ext::seq_cross_entropy_backward";
  const Reduction reduction = parse_reduction(reduction_str, op);
  const SeqLossSizes s =
      check_seq_loss_args(op, "logits", logits_in, target, weight, target_batch_first);
  check_seq_loss_backward_args(op, s, logits_in, grad_loss, reduction, target_batch_first,
                               total_weight, &row_max, &log_sum);
  auto grad = at::empty({s.T, s.B, s.C}, logits_in.options());
  if (grad.numel() == 0) {
    return grad;
  }
  const at::Tensor logits = rows_contiguous(logits_in);
  AT_DISPATCH_FLOATING_TYPES_AND2(
      at::kHalf, at::kBFloat16, logits.scalar_type(), "seq_cross_entropy_backward_cpu", [&] {
        RNN_EXT_DISPATCH_TARGET(target, "seq_cross_entropy_backward_cpu", [&] {
          using acc_t = at::opmath_type<scalar_t>;
          const auto rt = row_targets<scalar_t, index_t>(target, weight, ignore_index, s);
          const auto gs = grad_scale<scalar_t>(grad_loss, total_weight, reduction,
                                               target_batch_first);
          const scalar_t* x = logits.const_data_ptr<scalar_t>();
          const int64_t st = logits.stride(0), sb = logits.stride(1);
          const acc_t* m_p = row_max.const_data_ptr<acc_t>();
          const acc_t* log_sum_p = log_sum.const_data_ptr<acc_t>();
          const int64_t m_st = row_max.stride(0), m_sb = row_max.stride(1);
          const int64_t ls_st = log_sum.stride(0), ls_sb = log_sum.stride(1);
          scalar_t* g = grad.mutable_data_ptr<scalar_t>();
          BadRow bad;
          at::parallel_for(0, s.T * s.B, rows_per_block(s.C), [&](int64_t r0, int64_t r1) {
            std::vector<acc_t> xbuf, gbuf;
            for_rows(r0, r1, s.B, [&](int64_t t, int64_t b, int64_t r) {
              scalar_t* grow = g + r * s.C;
              const int64_t y = rt.y(t, b);
              const RowLse<acc_t> l{m_p[t * m_st + b * m_sb], log_sum_p[t * ls_st + b * ls_sb]};
              const auto w = row_weight(rt, y, r, bad);
              if (!w) {
                std::fill(grow, grow + s.C, static_cast<scalar_t>(seq_ce_ignored_grad(l.log_sum)));
                return;
              }
              const acc_t c = *w * gs(t, b);
              const acc_t* xrow = row_as_acc<scalar_t, acc_t>(x + t * st + b * sb, s.C, xbuf);
              row_ce_grad_any(grow, xrow, s.C, l, c, y, gbuf);
            });
          });
          bad.raise_if_any(op, rt, target_batch_first);
        });
      });
  return grad;
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, CPU, m) {
  m.impl("seq_nll_loss_forward", &seq_nll_loss_forward_cpu);
  m.impl("seq_nll_loss_backward", &seq_nll_loss_backward_cpu);
  m.impl("seq_cross_entropy_forward", &seq_cross_entropy_forward_cpu);
  m.impl("seq_cross_entropy_backward", &seq_cross_entropy_backward_cpu);
}

}  // namespace rnn_ext
