// The float rows of the CPU cross-entropy (csrc/cpu/loss_rows.h) at every vector width the
// extension instantiates (W = 4, 8, 16), compiled for the machine that runs the tests: the
// extension itself runs only the width its CPU picks at load time (RNN_EXT_VEC_MULTIVERSION).
// Used by tests/test_loss.py.
#include <torch/extension.h>

#include <tuple>

#include "cpu/loss_rows.h"

namespace {

template <int W>
std::tuple<at::Tensor, at::Tensor> logsumexp_rows_w(const at::Tensor& x) {
  const int64_t R = x.size(0), C = x.size(1);
  auto m = at::empty({R}, x.options()), log_sum = at::empty({R}, x.options());
  for (int64_t r = 0; r < R; ++r) {
    const auto l = rnn_ext::cpu_rows::row_logsumexp<W>(x.const_data_ptr<float>() + r * C, C);
    m.mutable_data_ptr<float>()[r] = l.m;
    log_sum.mutable_data_ptr<float>()[r] = l.log_sum;
  }
  return {m, log_sum};
}

template <int W>
at::Tensor ce_grad_rows_w(const at::Tensor& x, const at::Tensor& m, const at::Tensor& log_sum,
                          const at::Tensor& c, const at::Tensor& y) {
  const int64_t R = x.size(0), C = x.size(1);
  // NaN-filled, so that an element the row function does not write fails the comparison.
  auto g = at::full({R, C}, std::numeric_limits<float>::quiet_NaN(), x.options());
  for (int64_t r = 0; r < R; ++r) {
    rnn_ext::cpu_rows::row_ce_grad<W>(g.mutable_data_ptr<float>() + r * C,
                                      x.const_data_ptr<float>() + r * C, C,
                                      {m.const_data_ptr<float>()[r],
                                       log_sum.const_data_ptr<float>()[r]},
                                      c.const_data_ptr<float>()[r], y.const_data_ptr<int64_t>()[r]);
  }
  return g;
}

void check(const at::Tensor& x) {
  TORCH_CHECK(x.dim() == 2 && x.size(1) >= 1 && x.scalar_type() == at::kFloat &&
                  x.is_contiguous(),
              "x: expected a contiguous float32 (R, C >= 1) tensor, got ", x.sizes());
}

// x: (R, C) float32 -> (m (R), log_sum (R)).
std::tuple<at::Tensor, at::Tensor> logsumexp_rows(const at::Tensor& x, int64_t W) {
  check(x);
  switch (W) {
    case 4: return logsumexp_rows_w<4>(x);
    case 8: return logsumexp_rows_w<8>(x);
    case 16: return logsumexp_rows_w<16>(x);
  }
  TORCH_CHECK(false, "W: expected 4, 8 or 16, got ", W);
}

// x: (R, C) float32, m, log_sum, c: (R,) float32, y: (R,) int64 in [0, C) -> grad (R, C).
at::Tensor ce_grad_rows(const at::Tensor& x, const at::Tensor& m, const at::Tensor& log_sum,
                        const at::Tensor& c, const at::Tensor& y, int64_t W) {
  check(x);
  switch (W) {
    case 4: return ce_grad_rows_w<4>(x, m, log_sum, c, y);
    case 8: return ce_grad_rows_w<8>(x, m, log_sum, c, y);
    case 16: return ce_grad_rows_w<16>(x, m, log_sum, c, y);
  }
  TORCH_CHECK(false, "W: expected 4, 8 or 16, got ", W);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("logsumexp_rows", &logsumexp_rows);
  m.def("ce_grad_rows", &ce_grad_rows);
}
