// The Elman CUDA kernels of csrc/cuda/elman_kernels.cuh, compiled for the host and run through
// the emulation of cuda_emu.h, on CPU tensors: a Python module for tests/test_cuda_emulated.py
// (built by torch.utils.cpp_extension.load, with seq_nll_emu.cpp for the loss kernels). Two
// levels:
//   - one kernel launch: each function below prepares the kernel's arguments as
//     csrc/cuda/elman_cuda.cu does (the same buffers, the same PersistentArgs), runs one launch,
//     and returns what the host code would read back;
//   - the host code itself: csrc/cuda/elman_cuda.cu is compiled here, whole, with its CUDA calls
//     emulated by cuda_host_emu.h (RNN_EXT_CUDA_EMULATION), and its operator entry points
//     (elman_forward_cuda, ...) are exposed as they are registered for the CUDA dispatch key.
#include <torch/extension.h>

#include "cuda_emu.h"       // after the PyTorch headers, before the kernels
#include "cuda_host_emu.h"  // the CUDA runtime and c10::cuda calls of the host code

#include "cuda/elman_cuda.cu"  // the host code, and through it elman_kernels.cuh
#include "cuda/persistent_plan.h"

#include <string>
#include <tuple>
#include <vector>

namespace {

using rnn_ext::Activation;
using rnn_ext::cuda_detail::kPersistentThreads;
using rnn_ext::cuda_detail::PersistentArgs;
using rnn_ext::cuda_detail::Plan;

Activation parse_act(const std::string& s) {
  TORCH_CHECK(s == "tanh" || s == "relu", "nonlinearity must be 'tanh' or 'relu', got '", s,
              "'");
  return s == "tanh" ? Activation::Tanh : Activation::Relu;
}

py::dict plan_to_dict(const Plan& p) {
  py::dict d;
  d["rb"] = p.rb;
  d["rj"] = p.rj;
  d["ks"] = p.ks;
  d["gb"] = p.gb;
  d["gj"] = p.gj;
  d["bt"] = p.bt;
  d["jt"] = p.jt;
  d["ldk"] = p.ldk;
  d["ldj"] = p.ldj;
  d["nbt"] = p.nbt;
  d["njt"] = p.njt;
  d["padded"] = p.padded;
  d["smem"] = p.smem;
  return d;
}

Plan plan_from_dict(const py::dict& d) {
  Plan p;
  p.rb = d["rb"].cast<int>();
  p.rj = d["rj"].cast<int>();
  p.ks = d["ks"].cast<int>();
  p.gb = d["gb"].cast<int>();
  p.gj = d["gj"].cast<int>();
  p.bt = d["bt"].cast<int>();
  p.jt = d["jt"].cast<int>();
  p.ldk = d["ldk"].cast<int>();
  p.ldj = d["ldj"].cast<int>();
  p.nbt = d["nbt"].cast<int>();
  p.njt = d["njt"].cast<int>();
  p.padded = d["padded"].cast<bool>();
  p.smem = d["smem"].cast<size_t>();
  p.ok = true;
  return p;
}

// candidate_plans of persistent_plan.h, as dicts, with plan_cost for `sms` SMs.
py::list candidate_plans(int64_t B, int64_t H, int64_t acc_size, int64_t smem_max, int sms) {
  py::list out;
  for (Plan& p : rnn_ext::cuda_detail::candidate_plans(B, H, static_cast<size_t>(acc_size),
                                                        static_cast<size_t>(smem_max))) {
    py::dict d = plan_to_dict(p);
    d["cost"] = rnn_ext::cuda_detail::plan_cost(p, H, sms);
    out.append(d);
  }
  return out;
}

template <typename scalar_t>
void run_persistent(const Plan& p, PersistentArgs args, bool backward) {
  rnn_ext::cuda_detail::set_plan(args, p);
  std::function<void()> body;
#define RNN_EXT_EMU_PICK(RB, RJ)                                                              \
  if (p.rb == RB && p.rj == RJ) {                                                             \
    body = backward                                                                           \
               ? std::function<void()>([args] {                                               \
                   rnn_ext::cuda_detail::persistent_backward_kernel<scalar_t, RB, RJ>(args);  \
                 })                                                                           \
               : std::function<void()>([args] {                                               \
                   rnn_ext::cuda_detail::persistent_forward_kernel<scalar_t, RB, RJ>(args);   \
                 });                                                                          \
  }
  RNN_EXT_EMU_PICK(1, 1)
  RNN_EXT_EMU_PICK(1, 2)
  RNN_EXT_EMU_PICK(2, 2)
  RNN_EXT_EMU_PICK(4, 4)
#undef RNN_EXT_EMU_PICK
  TORCH_CHECK(body, "no kernel for the register tile ", p.rb, " x ", p.rj);
  py::gil_scoped_release no_gil;
  cuda_emu::launch(static_cast<unsigned>(p.nbt * p.njt), kPersistentThreads, p.smem, body);
}

// As elman_forward_impl's persistent branch: `x_proj` (T, B, H) is the input projection plus
// biases (what `output` holds before the launch), h_0 (B, H), weight_hh (H, H), lengths int64
// (B,) or None. Returns (output (T, B, H), h_n (B, H)).
std::tuple<at::Tensor, at::Tensor> persistent_forward(const at::Tensor& x_proj,
                                                      const at::Tensor& h_0,
                                                      const at::Tensor& weight_hh,
                                                      const std::optional<at::Tensor>& lengths,
                                                      bool reverse, const std::string& act,
                                                      const py::dict& plan) {
  const Plan p = plan_from_dict(plan);
  const int64_t T = x_proj.size(0), B = x_proj.size(1), H = x_proj.size(2);
  at::Tensor output = x_proj.contiguous().clone();
  at::Tensor hbuf = at::full({2, B, H}, std::nan(""), x_proj.options());
  hbuf.select(0, 0).copy_(h_0);
  const at::Tensor w = weight_hh.contiguous();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  PersistentArgs a = rnn_ext::cuda_detail::persistent_args(
      T, B, H, w.const_data_ptr(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
      reverse, parse_act(act));
  a.out = output.data_ptr();
  a.hbuf = hbuf.data_ptr();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x_proj.scalar_type(), "emu_fwd",
                                  [&] { run_persistent<scalar_t>(p, a, false); });
  return {output, hbuf.select(0, T & 1).clone()};
}

// As elman_backward_impl's persistent branch: grad_output and output (T, B, H), grad_h_n (B, H)
// or None, weight_hh (H, H), lengths as above. Returns ga (T, B, H), the gradient of the
// pre-activations, which the whole-sequence GEMMs then use. ga starts as NaN: an element the
// kernel does not write stays NaN.
at::Tensor persistent_backward(const at::Tensor& grad_output, const at::Tensor& output,
                               const std::optional<at::Tensor>& grad_h_n,
                               const at::Tensor& weight_hh,
                               const std::optional<at::Tensor>& lengths, bool reverse,
                               const std::string& act, const py::dict& plan) {
  const Plan p = plan_from_dict(plan);
  const int64_t T = output.size(0), B = output.size(1), H = output.size(2);
  const at::Tensor gy = grad_output.contiguous();
  const at::Tensor y = output.contiguous();
  const at::Tensor ghn = grad_h_n.has_value() ? grad_h_n->contiguous() : at::Tensor();
  at::Tensor ga = at::full({T, B, H}, std::nan(""), output.options());
  const at::Tensor w = weight_hh.contiguous();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  PersistentArgs a = rnn_ext::cuda_detail::persistent_args(
      T, B, H, w.const_data_ptr(), len.defined() ? len.const_data_ptr<int64_t>() : nullptr,
      reverse, parse_act(act));
  a.ga = ga.data_ptr();
  a.gy = gy.const_data_ptr();
  a.y = y.const_data_ptr();
  a.grad_h_n = ghn.defined() ? ghn.const_data_ptr() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, output.scalar_type(), "emu_bwd",
                                  [&] { run_persistent<scalar_t>(p, a, true); });
  return ga;
}

// One forward_step_kernel launch of `grid` x `block` threads, in place on out_t (B, H) (and on
// h (B, H) when lengths are given), as the cuBLAS path runs it at step t.
void forward_step(at::Tensor out_t, std::optional<at::Tensor> h,
                  const std::optional<at::Tensor>& lengths, int64_t t, const std::string& act,
                  int64_t grid, int64_t block) {
  TORCH_CHECK(out_t.is_contiguous() && (!h.has_value() || h->is_contiguous()));
  const int64_t B = out_t.size(0), H = out_t.size(1);
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  const Activation a = parse_act(act);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_t.scalar_type(), "emu_fstep",
                                  [&] {
    scalar_t* o = out_t.data_ptr<scalar_t>();
    scalar_t* hp = h.has_value() ? h->data_ptr<scalar_t>() : nullptr;
    const int64_t* lp = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    py::gil_scoped_release no_gil;
    cuda_emu::launch(
        static_cast<unsigned>(grid), static_cast<unsigned>(block), 0,
        [=] { rnn_ext::cuda_detail::forward_step_kernel<scalar_t>(o, hp, lp, t, B, H, a); });
  });
}

// One backward_step_kernel launch, as the cuBLAS path runs it at step t: returns ga_t (B, H).
at::Tensor backward_step(const at::Tensor& gy_t, const std::optional<at::Tensor>& g_carry,
                         const std::optional<at::Tensor>& grad_h_n, const at::Tensor& h_t,
                         const std::optional<at::Tensor>& lengths, int64_t t, int64_t T,
                         bool reverse, const std::string& act, int64_t grid, int64_t block) {
  const int64_t B = h_t.size(0), H = h_t.size(1);
  const at::Tensor gy = gy_t.contiguous(), y = h_t.contiguous();
  const at::Tensor gc = g_carry.has_value() ? g_carry->contiguous() : at::Tensor();
  const at::Tensor ghn = grad_h_n.has_value() ? grad_h_n->contiguous() : at::Tensor();
  const at::Tensor len = lengths.has_value() ? lengths->contiguous() : at::Tensor();
  at::Tensor ga = at::full({B, H}, std::nan(""), h_t.options());
  const Activation a = parse_act(act);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, h_t.scalar_type(), "emu_bstep",
                                  [&] {
    scalar_t* out = ga.data_ptr<scalar_t>();
    const scalar_t* gyp = gy.const_data_ptr<scalar_t>();
    const scalar_t* gcp = gc.defined() ? gc.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* ghp = ghn.defined() ? ghn.const_data_ptr<scalar_t>() : nullptr;
    const scalar_t* yp = y.const_data_ptr<scalar_t>();
    const int64_t* lp = len.defined() ? len.const_data_ptr<int64_t>() : nullptr;
    py::gil_scoped_release no_gil;
    cuda_emu::launch(static_cast<unsigned>(grid), static_cast<unsigned>(block), 0, [=] {
      rnn_ext::cuda_detail::backward_step_kernel<scalar_t>(out, gyp, gcp, ghp, yp, lp, t, T,
                                                           reverse, B, H, a);
    });
  });
  return ga;
}

// Kernels with a known defect, to show that the emulation catches it (the tests expect each to
// fail): "deadlock" (half a block skips a __syncthreads), "smem_overflow" (a write one element
// past the dynamic shared memory), "missing_sync" (threads read shared memory that another
// thread writes, with no barrier between), "missing_grid_sync" (a block reads what another
// writes, with only __syncthreads between; "grid_sync" is the correct control),
// "shuffle_mask_mismatch" (one lane shuffles with another lane mask). Returns what the reading
// threads read, as a float tensor of 64 elements.
at::Tensor selftest(const std::string& kind) {
  unsigned grid = 1;
  at::Tensor out = at::zeros({64}, at::kFloat);
  float* o = out.data_ptr<float>();
  std::function<void()> body;
  if (kind == "deadlock") {
    body = [] {
      if (threadIdx.x < blockDim.x / 2) __syncthreads();
    };
  } else if (kind == "smem_overflow") {
    body = [] {
      RNN_EXT_DYNAMIC_SMEM(smem);
      float* f = reinterpret_cast<float*>(smem);
      f[threadIdx.x + 1] = 1.0f;  // 64 floats of shared memory: thread 63 writes f[64]
    };
  } else if (kind == "missing_sync") {
    body = [o] {
      RNN_EXT_DYNAMIC_SMEM(smem);
      float* f = reinterpret_cast<float*>(smem);
      f[threadIdx.x] = static_cast<float>(threadIdx.x);
      // __syncthreads() belongs here
      o[threadIdx.x] = f[(threadIdx.x + 1) % blockDim.x];
    };
  } else if (kind == "missing_grid_sync" || kind == "grid_sync") {
    // Block 0 writes, block 1 reads, with only a block barrier between ("missing_grid_sync")
    // or a grid barrier (the control, "grid_sync"). Thread t of block 1 reports what it read.
    grid = 2;
    const bool with_grid_sync = kind == "grid_sync";
    at::Tensor buf = at::full({64}, std::nan(""), at::kFloat);
    float* shared_buf = buf.data_ptr<float>();
    body = [o, shared_buf, with_grid_sync] {
      if (blockIdx.x == 0) shared_buf[threadIdx.x] = 1.0f;
      if (with_grid_sync) {
        cooperative_groups::this_grid().sync();
      } else {
        __syncthreads();
      }
      if (blockIdx.x == 1) o[threadIdx.x] = shared_buf[threadIdx.x];
    };
    py::gil_scoped_release no_gil;
    cuda_emu::launch(grid, 64, 0, body);
    return out;
  } else if (kind == "shuffle_mask_mismatch") {
    body = [] {
      float v = 1.0f;
      v += __shfl_xor_sync(0xffffffffu, v, threadIdx.x == 5 ? 2 : 1);
    };
  } else {
    TORCH_CHECK(false, "unknown self-test '", kind, "'");
  }
  py::gil_scoped_release no_gil;
  cuda_emu::launch(grid, 64, 64 * sizeof(float), body);
  return out;
}

}  // namespace

// The operator entry points of csrc/cuda/elman_cuda.cu, called as the dispatcher calls them.
void register_host_code(py::module& m) {
  using OptT = std::optional<at::Tensor>;
  m.def(
      "elman_forward",
      [](const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
         const at::Tensor& weight_hh, const OptT& bias_ih, const OptT& bias_hh,
         const std::string& nonlinearity, bool reverse, const OptT& lengths) {
        return rnn_ext::elman_forward_cuda(input, h_0, weight_ih, weight_hh, bias_ih, bias_hh,
                                           nonlinearity, reverse, lengths);
      },
      py::arg("input"), py::arg("h_0"), py::arg("weight_ih"), py::arg("weight_hh"),
      py::arg("bias_ih"), py::arg("bias_hh"), py::arg("nonlinearity"), py::arg("reverse"),
      py::arg("lengths"));
  m.def(
      "elman_backward",
      [](const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
         const at::Tensor& h_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
         const at::Tensor& output, const std::string& nonlinearity, bool reverse,
         const OptT& lengths, std::array<bool, 2> output_mask) {
        return rnn_ext::elman_backward_cuda(grad_output, grad_h_n, input, h_0, weight_ih,
                                            weight_hh, output, nonlinearity, reverse, lengths,
                                            output_mask);
      },
      py::arg("grad_output"), py::arg("grad_h_n"), py::arg("input"), py::arg("h_0"),
      py::arg("weight_ih"), py::arg("weight_hh"), py::arg("output"), py::arg("nonlinearity"),
      py::arg("reverse"), py::arg("lengths"), py::arg("output_mask"));
  m.def(
      "elman_cell_forward",
      [](const at::Tensor& input, const at::Tensor& hx, const at::Tensor& weight_ih,
         const at::Tensor& weight_hh, const OptT& bias_ih, const OptT& bias_hh,
         const std::string& nonlinearity) {
        return rnn_ext::elman_cell_forward_cuda(input, hx, weight_ih, weight_hh, bias_ih,
                                                bias_hh, nonlinearity);
      });
  m.def("elman_cell_backward",
        [](const at::Tensor& grad_hy, const at::Tensor& input, const at::Tensor& hx,
           const at::Tensor& weight_ih, const at::Tensor& weight_hh, const at::Tensor& hy,
           const std::string& nonlinearity) {
          return rnn_ext::elman_cell_backward_cuda(grad_hy, input, hx, weight_ih, weight_hh, hy,
                                                   nonlinearity);
        });
  m.def(
      "lengths_on_device",
      [](const OptT& lengths, const std::string& device, int64_t T) {
        return rnn_ext::lengths_on_device("lengths_on_device", lengths, at::Device(device), T);
      },
      py::arg("lengths"), py::arg("device"), py::arg("T"),
      "elman_cuda.cu's lengths_on_device: lengths on `device` (input's) are value-checked, "
      "others copied there (the emulated entry points only reach the first case, all tensors "
      "being on the CPU).");
  m.def("persistent_plan", &rnn_ext::persistent_plan_cuda, py::arg("like"), py::arg("B"),
        py::arg("H"), py::arg("backward"));
  m.def("grid_barrier_loop", &rnn_ext::grid_barrier_loop_cuda, py::arg("counter"),
        py::arg("blocks"), py::arg("iters"), py::arg("smem") = 0);
  m.def("set_device", &cuda_host_emu::set_device, py::arg("device"),
        "The emulated device the host code runs on next (cuda_host_emu.h: 0, 1 or 2).");
  m.def(
      "set_capturing", [](bool on) { cuda_host_emu::g_capturing = on; }, py::arg("on"),
      "Whether the host code sees an active CUDA-graph capture.");
  m.def(
      "launch_counts",
      [] {
        return std::make_tuple(cuda_host_emu::g_launches, cuda_host_emu::g_cooperative_launches);
      },
      "(ordinary launches, cooperative launches) made by the host code so far.");
}

void register_seq_nll(py::module& m);  // seq_nll_emu.cpp

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "The rnn_ext CUDA kernels run on the CPU by a host emulation (tests only).";
  register_seq_nll(m);
  register_host_code(m);
  m.def(
      "set_schedule",
      [](uint64_t seed, bool interleaved) {
        cuda_emu::set_schedule(seed, interleaved ? cuda_emu::Schedule::Interleaved
                                                 : cuda_emu::Schedule::BlockGreedy);
      },
      py::arg("seed"), py::arg("interleaved") = false,
      "The order of the emulated threads' turns in later launches (cuda_emu.h): seeded, "
      "block-greedy (the default) or interleaved.");
  m.def("selftest", &selftest, py::arg("kind"));
  m.def("candidate_plans", &candidate_plans, py::arg("B"), py::arg("H"), py::arg("acc_size"),
        py::arg("smem_max"), py::arg("sms"));
  m.def("persistent_forward", &persistent_forward, py::arg("x_proj"), py::arg("h_0"),
        py::arg("weight_hh"), py::arg("lengths"), py::arg("reverse"), py::arg("act"),
        py::arg("plan"));
  m.def("persistent_backward", &persistent_backward, py::arg("grad_output"), py::arg("output"),
        py::arg("grad_h_n"), py::arg("weight_hh"), py::arg("lengths"), py::arg("reverse"),
        py::arg("act"), py::arg("plan"));
  m.def("forward_step", &forward_step, py::arg("out_t"), py::arg("h"), py::arg("lengths"),
        py::arg("t"), py::arg("act"), py::arg("grid"), py::arg("block"));
  m.def("backward_step", &backward_step, py::arg("gy_t"), py::arg("g_carry"),
        py::arg("grad_h_n"), py::arg("h_t"), py::arg("lengths"), py::arg("t"), py::arg("T"),
        py::arg("reverse"), py::arg("act"), py::arg("grid"), py::arg("block"));
}
