// CUDA kernels of the Elman operators: elman_forward / elman_backward (one layer, one
// direction, whole sequence) and elman_cell_forward / elman_cell_backward (one step,
// nn.RNNCell semantics). Their autocast kernels: csrc/autocast.cpp.
//
// Semantics: exactly those of csrc/cpu/elman_cpu.cpp (the reference); the argument checks are
// the shared ones of csrc/elman_checks.cpp, so a mistake gives the same message on every device.
// Dtypes: float32, float64, float16, bfloat16; pointwise math in at::opmath_type (float for the
// 16-bit types) through csrc/elman_math.h; GEMMs through ATen (cuBLAS, ATen's handle and
// workspace, honouring torch.backends.cuda.matmul.allow_tf32).
//
// Two paths for the recurrence (see also csrc/cuda/README.md):
//
// 1. cuBLAS step loop (always available).
//    forward   output = x W_ih^T + (b_ih + b_hh)            one GEMM over all T*B rows
//              per step: output[t] += h_{t-1} W_hh^T         one GEMM (beta = 1)
//                        output[t] = phi(output[t]), lengths masking, state update
//                                                            one fused pointwise kernel
//    backward  per step: ga_t = (gy_t + g) * phi'(h_t), masked   one fused pointwise kernel
//                        g    = ga_t W_hh                        one GEMM
//              grad_h_0 = g0 W_hh, grad_weight_ih = ga^T x, grad_weight_hh = ga^T h_prev,
//              grad_bias = sum ga, grad_input = ga W_ih      whole-sequence GEMMs
//
// 2. Persistent kernel (forward and backward): one cooperative launch runs every time step.
//    Block (bt, jt) owns the output tile rows b in [bt*BT, bt*BT+BT) x columns j in
//    [jt*JT, jt*JT+JT); it keeps its JT rows of W_hh (forward) or JT columns of W_hh
//    (backward, i.e. rows of W_hh^T) in shared memory, in the accumulation type, for all steps.
//    Per step it reads the BT rows of h_{t-1} (forward) or ga_t (backward) from global memory
//    (L2; loads that bypass L1, since other blocks wrote them), computes its tile of
//    h W_hh^T (resp. ga W_hh) with a K-split across KS lanes of a warp and shuffle reduction,
//    applies the fused epilogue (forward: + x_proj_t, phi, masking, state; backward: the next
//    step's ga = (gy + g) * phi', masking), and meets the other blocks at a grid-wide barrier.
//    The input projection and the weight gradients stay whole-sequence cuBLAS GEMMs.
//
//    Limits: all of W_hh must fit in the shared memory of the co-resident blocks, together with
//    each block's BT x H slice of the state, in the accumulation type (4 bytes for float32,
//    float16 and bfloat16, 8 for float64), in blocks of 256 threads, all resident at once.
//    The planner (make_plan) searches the tilings and takes the cheapest that fits; run on the
//    H200's figures (132 SMs, 227 KB per block, the register counts ptxas reports) it finds
//    one, for forward and backward alike, up to about
//        float32 / float16 / bfloat16:  H = 2112 (B <= 8), 1056 (B = 64), 512 (B = 512)
//        float64:                       H = 1696 (B = 1), 1184 (B = 8), 576 (B = 64), 288 (B = 512)
//    (an estimate made off the device: the occupancy the driver reports decides). It also needs
//    a device that supports cooperative launches. Beyond that the cuBLAS path runs.
//    Arithmetic: FP32 (FP64) FMA on the CUDA cores, not tensor cores: more exact than cuDNN with
//    TF32 or bf16 tensor-core GEMMs, and slower per flop; the gain is in launches and barriers.
//
//    Choice: environment variable RNN_EXT_CUDA_PERSISTENT, read at every call
//    (rnn_ext.ops.set_cuda_persistent sets it from Python):
//      "auto" (default)  persistent kernel when a plan fits and T >= 2, else cuBLAS;
//      "1" / "on"        persistent kernel whenever a plan fits (T = 1 included), else cuBLAS;
//      "0" / "off"       always cuBLAS;
//      "require"         persistent kernel, or an error saying why it cannot run (for tests).
//    The cell op always takes the cuBLAS path.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/util/irange.h>
#ifndef RNN_EXT_CUDA_EMULATION
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGraphsC10Utils.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cuda_runtime.h>
#endif  // else tests/cuda_emu/cuda_host_emu.h, included first, emulates the CUDA calls below

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "elman.h"
#include "elman_kernels.cuh"  // the device code: pointwise and persistent kernels
#include "launch.cuh"
#include "persistent_plan.h"

namespace rnn_ext {
namespace {

using namespace cuda_detail;  // NOLINT: the kernels and the plans, shared with tests/cuda_emu

constexpr int kPointwiseThreads = 256;

// Properties of the current device, read once per device. (Not
// at::cuda::getCurrentDeviceProperties: its header pulls in cuBLAS and cuSPARSE headers, which a
// minimal toolkit lacks.)
const cudaDeviceProp* current_device_properties() {
  static std::mutex mu;
  static std::map<int, cudaDeviceProp> props;
  const int device = c10::cuda::current_device();
  std::lock_guard<std::mutex> lock(mu);
  auto it = props.find(device);
  if (it == props.end()) {
    cudaDeviceProp p{};
    C10_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
    it = props.emplace(device, p).first;
  }
  return &it->second;
}

unsigned pointwise_blocks(int64_t n) {
  const int64_t want = (n + kPointwiseThreads - 1) / kPointwiseThreads;
  const int64_t cap =
      static_cast<int64_t>(current_device_properties()->multiProcessorCount) * 8;
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(want, cap)));
}

// How many blocks of kPersistentThreads threads and `smem` bytes of dynamic shared memory can
// be resident at once on the current device (the driver's occupancy answer times the SMs): the
// largest grid a cooperative launch of `kernel` may have.
int64_t resident_blocks(const void* kernel, size_t smem) {
  int per_sm = 0;
  C10_CUDA_CHECK(
      cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kPersistentThreads, smem));
  return static_cast<int64_t>(per_sm) * current_device_properties()->multiProcessorCount;
}

// ---------------------------------------------------------------------------------------------
// Planning and launching the persistent kernels.

using KernelFn = void (*)(PersistentArgs);

template <typename scalar_t>
KernelFn persistent_kernel(bool backward, int rb, int rj) {
#define RNN_EXT_PICK(RB, RJ)                                                                \
  if (rb == RB && rj == RJ) {                                                               \
    return backward ? &persistent_backward_kernel<scalar_t, RB, RJ>                         \
                    : &persistent_forward_kernel<scalar_t, RB, RJ>;                         \
  }
  RNN_EXT_PICK(1, 1)
  RNN_EXT_PICK(1, 2)
  RNN_EXT_PICK(2, 2)
  RNN_EXT_PICK(4, 4)
#undef RNN_EXT_PICK
  return nullptr;
}

// The cheapest of the candidate plans (persistent_plan.h) that the device can run: its grid is
// resident at once by the driver's occupancy answer. Plan::why says why none can run.
template <typename scalar_t>
Plan make_plan(int64_t B, int64_t H, bool backward) {
  using acc_t = at::opmath_type<scalar_t>;
  Plan best;
  const cudaDeviceProp* prop = current_device_properties();
  if (!prop->cooperativeLaunch) {
    best.why = "the device does not support cooperative launches";
    return best;
  }
  if (B < 1 || H < 1) {
    best.why = "B and H must be >= 1";
    return best;
  }
  // (Division, not B * H: the product of the diagnostic op's arbitrary int64 arguments
  // can wrap.)
  if (H > (int64_t(1) << 20) || B > (int64_t(1) << 31) / H) {
    best.why = "B * H is too large";
    return best;
  }
  const size_t smem_max = prop->sharedMemPerBlockOptin;
  const int sms = prop->multiProcessorCount;
  best.why = "W_hh and the state tiles do not fit in the shared memory of co-resident blocks";
  for (const auto& tile : kTiles) {
    KernelFn fn = persistent_kernel<scalar_t>(backward, tile[0], tile[1]);
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_max)));
  }
  for (Plan& p : candidate_plans(B, H, sizeof(acc_t), smem_max)) {
    const int64_t grid = static_cast<int64_t>(p.nbt) * p.njt;
    if (grid > 4 * static_cast<int64_t>(sms)) continue;
    const int64_t resident = resident_blocks(
        reinterpret_cast<const void*>(persistent_kernel<scalar_t>(backward, p.rb, p.rj)), p.smem);
    if (resident < 1 || grid > resident) continue;
    p.cost = plan_cost(p, H, sms);
    p.ok = true;
    if (!best.ok || p.cost < best.cost) {  // ties: the first candidate
      best = p;
    }
  }
  return best;
}

struct PlanKey {
  int device;
  at::ScalarType dtype;
  int64_t B, H;
  bool backward;
  bool operator<(const PlanKey& o) const {
    return std::tie(device, dtype, B, H, backward) <
           std::tie(o.device, o.dtype, o.B, o.H, o.backward);
  }
};

Plan cached_plan(at::ScalarType dtype, int64_t B, int64_t H, bool backward) {
  static std::mutex mu;
  static std::map<PlanKey, Plan> cache;
  const PlanKey key{c10::cuda::current_device(), dtype, B, H, backward};
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(key);
  if (it != cache.end()) {
    return it->second;
  }
  Plan p;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "rnn_ext_plan", [&] {
    p = make_plan<scalar_t>(B, H, backward);
  });
  cache.emplace(key, p);
  return p;
}

enum class PersistentMode { Off, Auto, On, Require };

PersistentMode persistent_mode() {
  const char* v = std::getenv("RNN_EXT_CUDA_PERSISTENT");
  if (v == nullptr) {
    return PersistentMode::Auto;
  }
  const std::string s(v);
  if (s.empty() || s == "auto") return PersistentMode::Auto;
  if (s == "0" || s == "off") return PersistentMode::Off;
  if (s == "1" || s == "on") return PersistentMode::On;
  if (s == "require") return PersistentMode::Require;
  TORCH_CHECK_VALUE(false, "rnn_ext: RNN_EXT_CUDA_PERSISTENT='", s,
                    "' is not one of 'auto', '0', 'off', '1', 'on', 'require'");
}

// The plan to run, or a plan with ok == false when the cuBLAS path must run.
Plan choose_persistent(const char* op, at::ScalarType dtype, const ElmanSizes& s, bool backward) {
  const PersistentMode mode = persistent_mode();
  Plan none;
  if (mode == PersistentMode::Off) {
    return none;
  }
  if (mode == PersistentMode::Auto && s.T < 2) {
    return none;
  }
  Plan p = cached_plan(dtype, s.B, s.H, backward);
  TORCH_CHECK(p.ok || mode != PersistentMode::Require, op,
              ": RNN_EXT_CUDA_PERSISTENT=require, but the persistent kernel cannot run for B = ",
              s.B, ", H = ", s.H, ", dtype ", dtype, ": ", p.why);
  return p;
}

// Launches the persistent kernel. Returns false, having launched nothing, when the driver
// finds the grid too large to be resident at once (the SMs can be fewer than the properties
// say, e.g. under MPS): the caller then runs the cuBLAS path, unless `require`.
template <typename scalar_t>
bool launch_persistent(const char* op, const Plan& p, PersistentArgs args, bool backward,
                       cudaStream_t stream) {
  set_plan(args, p);
  KernelFn fn = persistent_kernel<scalar_t>(backward, p.rb, p.rj);
  TORCH_INTERNAL_ASSERT(fn != nullptr);
  const cudaError_t err = launch_cooperative(fn, static_cast<unsigned>(p.nbt * p.njt),
                                             kPersistentThreads, p.smem, stream, args);
  if (err == cudaErrorCooperativeLaunchTooLarge) {
    (void)cudaGetLastError();  // clear it: nothing was launched
    TORCH_CHECK(persistent_mode() != PersistentMode::Require, op,
                ": RNN_EXT_CUDA_PERSISTENT=require, but the driver refused the cooperative "
                "launch of ", p.nbt * p.njt, " blocks as too large");
    return false;
  }
  C10_CUDA_CHECK(err);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return true;
}

// ---------------------------------------------------------------------------------------------
// Forward and backward over a validated sequence.

// lengths (validated by check_elman_forward_args, but for the values of lengths on the GPU) as
// a contiguous int64 tensor on `device` (input's), or an undefined tensor when absent.
//   - lengths already on `device`: their values are checked here, read back to the host (a
//     synchronisation) for check_length_values' ValueError, or, while the current stream is
//     being captured into a CUDA graph (where a read-back is not allowed), by a device-side
//     assert (at::_assert_async: a bad length stops the replay);
//   - lengths on the CPU: copied to `device`; refused during capture, where a copy from
//     pageable host memory cannot be captured.
// padded (when given) is set to whether some length is below T, read from the values already
// on the host; true (unknown) during capture.
// Call under the device guard.
at::Tensor lengths_on_device(const char* op, const std::optional<at::Tensor>& lengths,
                             const at::Device& device, int64_t T, bool* padded = nullptr) {
  if (padded != nullptr) {
    *padded = false;
  }
  if (!lengths.has_value() || !lengths->defined()) {
    return at::Tensor();
  }
  const at::Tensor& l = *lengths;
  const bool capturing =
      c10::cuda::currentStreamCaptureStatusMayInitCtx() != c10::cuda::CaptureStatus::None;
  if (l.device() != device) {
    TORCH_CHECK(!capturing, op, ": lengths is on ", l.device(), ", but the current CUDA "
                "stream is being captured into a CUDA graph, where it cannot be copied to the "
                "device; pass lengths on input's device ", device);
    if (padded != nullptr) {
      *padded = any_length_below(l, T);  // (on the CPU: the checks allow no other device)
    }
    return l.to(device, at::kLong).contiguous();
  }
  if (capturing) {
    // The message must stay under 255 characters (at::_assert_async's limit on CUDA).
    at::_assert_async(l.ge(1).logical_and(l.le(T)).all(),
                      "rnn_ext::elman: a length is outside [1, T] (checked on the device during "
                      "CUDA-graph capture)");
    if (padded != nullptr) {
      *padded = true;
    }
  } else {
    const at::Tensor on_cpu = lengths_on_cpu(l);  // the one read-back, used twice
    check_length_values(op, on_cpu, T);
    if (padded != nullptr) {
      *padded = any_length_below(on_cpu, T);
    }
  }
  return l.contiguous();
}

std::tuple<at::Tensor, at::Tensor> elman_forward_impl(
    const char* op, const at::Tensor& input_, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, Activation act, bool reverse,
    const at::Tensor& len_dev, const ElmanSizes& s, bool allow_persistent) {
  // Plain variables, not a structured binding: lambdas below capture them (C++17).
  const int64_t T = s.T, B = s.B, I = s.I, H = s.H;
  const at::Tensor input = input_.contiguous();
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
    return {output, h_0.clone(at::MemoryFormat::Contiguous)};
  }
  const int64_t* len = len_dev.defined() ? len_dev.const_data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  const Plan plan = allow_persistent ? choose_persistent(op, input.scalar_type(), s, false)
                                     : Plan();
  if (plan.ok) {
    at::Tensor hbuf = at::empty({2, B, H}, input.options());
    hbuf.select(0, 0).copy_(h_0);
    const at::Tensor w = weight_hh.contiguous();
    PersistentArgs a = persistent_args(T, B, H, w.const_data_ptr(), len, reverse, act);
    a.out = output.data_ptr();
    a.hbuf = hbuf.data_ptr();
    bool launched = false;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "elman_forward_persistent", [&] {
      launched = launch_persistent<scalar_t>(op, plan, a, false, stream);
    });
    if (launched) {
      return {output, hbuf.select(0, T & 1).clone()};
    }
    // Not launched: output still holds the input projection; the cuBLAS path follows.
  }

  const at::Tensor whh_t = weight_hh.t();
  const unsigned blocks = pointwise_blocks(B * H);
  at::Tensor h = len != nullptr ? h_0.clone(at::MemoryFormat::Contiguous) : at::Tensor();
  at::Tensor h_prev = h_0;
  for (const auto step : c10::irange(T)) {
    const int64_t t = reverse ? T - 1 - step : step;
    at::Tensor out_t = output.select(0, t);
    out_t.addmm_(len != nullptr ? h : h_prev, whh_t);
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                    "elman_forward_step", [&] {
      launch_kernel(&forward_step_kernel<scalar_t>, blocks, kPointwiseThreads, 0, stream,
                    out_t.data_ptr<scalar_t>(), len != nullptr ? h.data_ptr<scalar_t>() : nullptr,
                    len, t, B, H, act);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    h_prev = out_t;
  }
  return {output, len != nullptr ? h : h_prev.clone()};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_backward_impl(
    const char* op, const at::Tensor& grad_output_, const at::Tensor& grad_h_n_,
    const at::Tensor& input_, const at::Tensor& h_0_, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const at::Tensor& output_, Activation act, bool reverse,
    const at::Tensor& len_dev, const ElmanSizes& s, bool allow_persistent,
    std::array<bool, 2> output_mask, bool padded) {
  // Plain variables, not a structured binding: lambdas below capture them (C++17).
  const int64_t T = s.T, B = s.B, H = s.H;
  const at::Tensor gy = grad_output_.contiguous();
  const at::Tensor out = output_.contiguous();
  const at::Tensor input = input_.contiguous();
  const at::Tensor h_0 = h_0_.contiguous();
  const at::Tensor grad_h_n =
      grad_h_n_.defined() ? grad_h_n_.contiguous() : at::Tensor();
  at::Tensor ga = at::empty({T, B, H}, input.options());
  const int64_t* len = len_dev.defined() ? len_dev.const_data_ptr<int64_t>() : nullptr;
  cudaStream_t stream = c10::cuda::getCurrentCUDAStream();

  if (B > 0 && H > 0) {
    const Plan plan = allow_persistent ? choose_persistent(op, input.scalar_type(), s, true)
                                       : Plan();
    bool launched = false;
    if (plan.ok) {
      const at::Tensor w = weight_hh.contiguous();
      PersistentArgs a = persistent_args(T, B, H, w.const_data_ptr(), len, reverse, act);
      a.ga = ga.data_ptr();
      a.gy = gy.const_data_ptr();
      a.y = out.const_data_ptr();
      a.grad_h_n = grad_h_n.defined() ? grad_h_n.const_data_ptr() : nullptr;
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                      "elman_backward_persistent", [&] {
        launched = launch_persistent<scalar_t>(op, plan, a, true, stream);
      });
    }
    if (!launched) {
      at::Tensor g = at::empty({B, H}, input.options());
      const unsigned blocks = pointwise_blocks(B * H);
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, input.scalar_type(),
                                      "elman_backward_step", [&] {
        for (const auto u : c10::irange(T)) {
          const int64_t t = reverse ? u : T - 1 - u;
          at::Tensor ga_t = ga.select(0, t);
          launch_kernel(
              &backward_step_kernel<scalar_t>, blocks, kPointwiseThreads, 0, stream,
              ga_t.data_ptr<scalar_t>(), gy.const_data_ptr<scalar_t>() + t * B * H,
              u > 0 ? g.const_data_ptr<scalar_t>() : nullptr,
              grad_h_n.defined() ? grad_h_n.const_data_ptr<scalar_t>() : nullptr,
              out.const_data_ptr<scalar_t>() + t * B * H, len, t, T, reverse, B, H, act);
          C10_CUDA_KERNEL_LAUNCH_CHECK();
          if (u + 1 < T) {
            at::mm_out(g, ga_t, weight_hh);  // g = ga_t W_hh, carried to the next step
          }
        }
      });
    }
  } else {
    ga.zero_();
  }

  auto [grad_input, grad_h_0, grad_weight_ih, grad_weight_hh] =
      elman_sequence_grads(ga, out, input, h_0, weight_ih, weight_hh, len_dev, reverse,
                           output_mask, at::Tensor(), /*h_0_is_zero=*/false,
                           /*mask_padded=*/padded);
  at::Tensor grad_bias = ga.view({T * B, H}).sum(0);
  return {grad_input, grad_h_0, grad_weight_ih, grad_weight_hh, grad_bias};
}

// ---------------------------------------------------------------------------------------------
// Operator entry points.

std::tuple<at::Tensor, at::Tensor> elman_forward_cuda(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths) {
  const char* op = "rnn_ext::elman_forward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s =
      check_elman_forward_args(op, input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, lengths);
  const c10::cuda::CUDAGuard guard(input.device());
  return elman_forward_impl(op, input, h_0, weight_ih, weight_hh, bias_ih, bias_hh, act, reverse,
                            lengths_on_device(op, lengths, input.device(), s.T), s, true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_backward_cuda(
    const at::Tensor& grad_output, const at::Tensor& grad_h_n, const at::Tensor& input,
    const at::Tensor& h_0, const at::Tensor& weight_ih, const at::Tensor& weight_hh,
    const at::Tensor& output, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths, std::array<bool, 2> output_mask) {
  const char* op = "rnn_ext::elman_backward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s = check_elman_forward_args(op, input, h_0, weight_ih, weight_hh,
                                                std::nullopt, std::nullopt, lengths);
  const c10::cuda::CUDAGuard guard(input.device());
  // Before the gradients' checks, so that a bad length is reported first, as on the CPU.
  bool padded = false;
  const at::Tensor len_dev = lengths_on_device(op, lengths, input.device(), s.T, &padded);
  check_elman_backward_args(op, s, input, grad_output, grad_h_n, output);
  return elman_backward_impl(op, grad_output, grad_h_n, input, h_0, weight_ih, weight_hh, output,
                             act, reverse, len_dev, s, true, output_mask, padded);
}

at::Tensor elman_cell_forward_cuda(const at::Tensor& input, const at::Tensor& hx,
                                   const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                   const std::optional<at::Tensor>& bias_ih,
                                   const std::optional<at::Tensor>& bias_hh,
                                   c10::string_view nonlinearity) {
  const char* op = "rnn_ext::elman_cell_forward";
  const Activation act = parse_nonlinearity(nonlinearity, op);
  const ElmanSizes s =
      check_elman_cell_args(op, input, hx, weight_ih, weight_hh, bias_ih, bias_hh);
  const at::Tensor x = input.unsqueeze(0);
  const c10::cuda::CUDAGuard guard(input.device());
  auto [output, h_n] = elman_forward_impl(op, x, hx, weight_ih, weight_hh, bias_ih, bias_hh, act,
                                          /*reverse=*/false, at::Tensor(), s, false);
  return h_n;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> elman_cell_backward_cuda(
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
  // grad_hy stands in for grad_h_n in the shared check (same shape, dtype, device as hx).
  check_elman_backward_args(op, s, x, gy, grad_hy, y, "grad_hy", "grad_hy", "hy");
  const c10::cuda::CUDAGuard guard(input.device());
  auto [gx, ghx, gwih, gwhh, gb] =
      elman_backward_impl(op, gy, at::Tensor(), x, hx, weight_ih, weight_hh, y, act,
                          /*reverse=*/false, at::Tensor(), s, false, {true, true},
                          /*padded=*/false);
  return {gx.squeeze(0), ghx, gwih, gwhh, gb};
}

// ---------------------------------------------------------------------------------------------
// Diagnostics of the persistent path (schemas and their contracts: csrc/rnn_ext.cpp).

// The plan the persistent kernel would launch for (B, H) in like's dtype on like's device:
// [ok, rb, rj, ks, gb, gj, bt, jt, nbt, njt, padded, smem bytes]; all zero but ok = 0 when no
// plan fits. The same cached plan elman_forward / elman_backward take. rnn_ext/ops.py reads the
// vector by its _PLAN_FIELDS, in this order (test_host_plan_vector_matches_python_fields).
std::vector<int64_t> persistent_plan_cuda(const at::Tensor& like, int64_t B, int64_t H,
                                          bool backward) {
  const char* op = "rnn_ext::_persistent_plan";
  TORCH_CHECK_VALUE(B >= 1 && H >= 1, op, ": B and H must be >= 1, got B = ", B, ", H = ", H);
  const c10::cuda::CUDAGuard guard(like.device());
  const Plan p = cached_plan(like.scalar_type(), B, H, backward);
  if (!p.ok) {
    return std::vector<int64_t>(12, 0);
  }
  return {1, p.rb, p.rj, p.ks, p.gb, p.gj, p.bt, p.jt, p.nbt, p.njt, p.padded ? 1 : 0,
          static_cast<int64_t>(p.smem)};
}

// One cooperative launch of `blocks` blocks of the persistent kernels' size, each with `smem`
// bytes of dynamic shared memory (so that the blocks are placed on the SMs as a plan's are),
// that passes `iters` checked grid-wide barriers: counter[0] += iters, counter[1] += the
// checks that failed (counter: int64, CUDA, contiguous, at least 2 elements).
void grid_barrier_loop_cuda(const at::Tensor& counter, int64_t blocks, int64_t iters,
                            int64_t smem) {
  const char* op = "rnn_ext::_grid_barrier_loop";
  TORCH_CHECK_VALUE(counter.scalar_type() == at::kLong && counter.numel() >= 2 &&
                        counter.is_contiguous(),
                    op, ": counter must be a contiguous int64 tensor with at least 2 elements, "
                    "got dtype ", counter.scalar_type(), ", shape ", counter.sizes());
  TORCH_CHECK_VALUE(iters >= 0, op, ": iters must be >= 0, got ", iters);
  const c10::cuda::CUDAGuard guard(counter.device());
  const cudaDeviceProp* prop = current_device_properties();
  TORCH_CHECK(prop->cooperativeLaunch, op, ": the device does not support cooperative launches");
  const auto kernel = reinterpret_cast<const void*>(&grid_barrier_kernel);
  const int64_t smem_max = static_cast<int64_t>(prop->sharedMemPerBlockOptin);
  TORCH_CHECK_VALUE(smem >= 0 && smem <= smem_max, op, ": smem must be in [0, ", smem_max,
                    "] bytes (the device's shared memory per block), got ", smem);
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem)));
  const int64_t max_blocks = resident_blocks(kernel, static_cast<size_t>(smem));
  TORCH_CHECK_VALUE(blocks >= 1 && blocks <= max_blocks, op, ": blocks must be in [1, ",
                    max_blocks, "] (the blocks of ", kPersistentThreads, " threads and ", smem,
                    " bytes of shared memory resident at once on this device), got ", blocks);
  at::Tensor flags = at::full({blocks}, -1, counter.options());
  int64_t* counter_ptr = counter.mutable_data_ptr<int64_t>();
  int64_t* flags_ptr = flags.mutable_data_ptr<int64_t>();
  C10_CUDA_CHECK(launch_cooperative(&grid_barrier_kernel, static_cast<unsigned>(blocks),
                                    kPersistentThreads, static_cast<size_t>(smem),
                                    c10::cuda::getCurrentCUDAStream(), counter_ptr, flags_ptr,
                                    iters));
}

}  // namespace

#ifndef RNN_EXT_CUDA_EMULATION  // the emulation calls the functions above directly
TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("elman_forward", &elman_forward_cuda);
  m.impl("elman_backward", &elman_backward_cuda);
  m.impl("elman_cell_forward", &elman_cell_forward_cuda);
  m.impl("elman_cell_backward", &elman_cell_backward_cuda);
  m.impl("_persistent_plan", &persistent_plan_cuda);
  m.impl("_grid_barrier_loop", &grid_barrier_loop_cuda);
}
#endif

}  // namespace rnn_ext
