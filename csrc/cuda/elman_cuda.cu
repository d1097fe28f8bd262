// CUDA kernels of the Elman operators: elman_forward / elman_backward (one layer, one
// direction, whole sequence) and elman_cell_forward / elman_cell_backward (one step,
// nn.RNNCell semantics), plus the AutocastCUDA kernels of the two forward operators.
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
#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/irange.h>
#include <torch/library.h>

#include <cooperative_groups.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <array>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <tuple>

#include "elman.h"

namespace rnn_ext {
namespace {

namespace cg = cooperative_groups;

constexpr int kPointwiseThreads = 256;
constexpr int kPersistentThreads = 256;  // 8 warps per block in the persistent kernels

// ---------------------------------------------------------------------------------------------
// Device helpers.

// Load that bypasses L1 (ld.global.cg): data written by other blocks of the same launch.
template <typename T>
__device__ __forceinline__ T load_cg(const T* p);
template <>
__device__ __forceinline__ float load_cg<float>(const float* p) {
  return __ldcg(p);
}
template <>
__device__ __forceinline__ double load_cg<double>(const double* p) {
  return __ldcg(p);
}
template <>
__device__ __forceinline__ c10::Half load_cg<c10::Half>(const c10::Half* p) {
  return c10::Half(__ldcg(reinterpret_cast<const unsigned short*>(p)), c10::Half::from_bits());
}
template <>
__device__ __forceinline__ c10::BFloat16 load_cg<c10::BFloat16>(const c10::BFloat16* p) {
  return c10::BFloat16(__ldcg(reinterpret_cast<const unsigned short*>(p)),
                       c10::BFloat16::from_bits());
}

// First time step that the backward visits for sequence b: the forward's last valid step.
__device__ __forceinline__ int64_t first_backward_step(const int64_t* len, int64_t b, int64_t T,
                                                       bool reverse) {
  if (reverse) {
    return 0;
  }
  return len != nullptr ? len[b] - 1 : T - 1;
}

// ga_t[b, j] for one element: (gy + g) * phi'(h), where g is what flows back through the
// state: the GEMM's g_carry (absent at the first backward step) plus grad_h_n at the step where
// the sequence's h_n was produced. Steps past the sequence's end (t >= lengths[b]) get 0.
// The same with gy_t[b, j] and h_t[b, j] already loaded.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t backward_pointwise_values(acc_t g_carry, acc_t gy, acc_t h,
                                                           const scalar_t* grad_h_n,
                                                           const int64_t* len, int64_t t,
                                                           int64_t T, bool reverse, int64_t b,
                                                           int64_t bh, Activation act) {
  if (len != nullptr && t >= len[b]) {
    return acc_t(0);
  }
  acc_t g = g_carry;
  if (grad_h_n != nullptr && t == first_backward_step(len, b, T, reverse)) {
    g += static_cast<acc_t>(grad_h_n[bh]);
  }
  return preactivation_grad<acc_t>(gy, g, h, act);
}

template <typename scalar_t, typename acc_t>
__device__ __forceinline__ acc_t backward_pointwise(acc_t g_carry, const scalar_t* gy_t,
                                                    const scalar_t* grad_h_n,
                                                    const scalar_t* h_t, const int64_t* len,
                                                    int64_t t, int64_t T, bool reverse, int64_t b,
                                                    int64_t bh, Activation act) {
  return backward_pointwise_values<scalar_t, acc_t>(
      g_carry, static_cast<acc_t>(gy_t[bh]), static_cast<acc_t>(h_t[bh]), grad_h_n, len, t, T,
      reverse, b, bh, act);
}

// ---------------------------------------------------------------------------------------------
// Path 1: fused pointwise kernels of the cuBLAS step loop.

// out_t holds a_t (x_proj + b + h W_hh^T). Writes out_t = phi(a_t); with lengths, rows whose
// sequence has ended get 0 and the running rows also write their state h.
template <typename scalar_t>
__global__ void forward_step_kernel(scalar_t* __restrict__ out_t, scalar_t* __restrict__ h,
                                    const int64_t* __restrict__ len, int64_t t, int64_t B,
                                    int64_t H, Activation act) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const scalar_t y = static_cast<scalar_t>(activate<acc_t>(static_cast<acc_t>(out_t[i]), act));
    if (len == nullptr) {
      out_t[i] = y;
    } else if (t < len[i / H]) {
      out_t[i] = y;
      h[i] = y;
    } else {
      out_t[i] = scalar_t(0);
    }
  }
}

template <typename scalar_t>
__global__ void backward_step_kernel(scalar_t* __restrict__ ga_t,
                                     const scalar_t* __restrict__ gy_t,
                                     const scalar_t* __restrict__ g_carry,
                                     const scalar_t* __restrict__ grad_h_n,
                                     const scalar_t* __restrict__ h_t,
                                     const int64_t* __restrict__ len, int64_t t, int64_t T,
                                     bool reverse, int64_t B, int64_t H, Activation act) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t n = B * H;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const acc_t gc = g_carry != nullptr ? static_cast<acc_t>(g_carry[i]) : acc_t(0);
    ga_t[i] = static_cast<scalar_t>(backward_pointwise<scalar_t, acc_t>(
        gc, gy_t, grad_h_n, h_t, len, t, T, reverse, i / H, i, act));
  }
}

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

// ---------------------------------------------------------------------------------------------
// Path 2: the persistent kernels.

// A launch plan: thread (warp w, lane l) has ks = l % KS and output group
// og = w * (32 / KS) + l / KS, gj = og % GJ, gb = og / GJ; it owns the outputs
// b = b0 + gb + r * GB (r < RB), j = j0 + gj + c * GJ (c < RJ) and sums k = ks, ks + KS, ...
struct Plan {
  int rb = 0, rj = 0;  // per-thread register tile (template parameters of the kernel)
  int ks = 1;          // lanes that split one dot product
  int gb = 1, gj = 1;  // output groups per block along b and j (gb * gj * ks = 256)
  int bt = 0, jt = 0;  // block tile: bt = gb * rb, jt = gj * rj
  int ldk = 0;         // leading dimension of the state tile in shared memory (row-major BT x H)
  int ldj = 0;         // leading dimension of the weight slice (k-major H x JT)
  int nbt = 0, njt = 0;
  size_t smem = 0;
  double cost = 0;
  bool ok = false;
  std::string why;  // when !ok
};

struct PersistentArgs {
  // Shared.
  int64_t T, B, H;
  const void* w;  // weight_hh, contiguous (H, H)
  const int64_t* len;
  bool reverse;
  Activation act;
  // Forward: out (T, B, H) holds x_proj on entry; hbuf (2, B, H), hbuf[0] = h_0.
  void* out;
  void* hbuf;
  // Backward: ga (T, B, H) output; gy, y (T, B, H); grad_h_n (B, H) or null.
  void* ga;
  const void* gy;
  const void* y;
  const void* grad_h_n;
  // Plan.
  int ks, gb, gj, ldk, ldj, njt;
};

// Loads this block's slice of the weight matrix into shared memory, k-major:
// ws[k * ldj + o] = M[j0 + o][k] with M = W_hh (forward: the output j dots W_hh[j, :]) or
// M = W_hh^T (backward: the output k dots W_hh[:, k]). Columns past H are zero.
template <typename scalar_t, typename acc_t>
__device__ void load_weight_slice(acc_t* ws, const scalar_t* w, int64_t H, int64_t j0, int jt,
                                  int ldj, bool transpose) {
  const int64_t n = static_cast<int64_t>(jt) * H;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
    int64_t o, k;
    if (!transpose) {
      o = i / H;  // consecutive threads read consecutive k of row j0 + o: coalesced
      k = i % H;
    } else {
      k = i / jt;  // consecutive threads read consecutive columns j0 + o of row k: coalesced
      o = i % jt;
    }
    const int64_t j = j0 + o;
    acc_t v = acc_t(0);
    if (j < H) {
      v = static_cast<acc_t>(transpose ? w[k * H + j] : w[j * H + k]);
    }
    ws[k * ldj + o] = v;
  }
}

// Loads rows b0 .. b0+bt-1 of a (B, H) matrix written by other blocks into the row-major
// shared tile hs[r * ldk + k]; rows past B are zero.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_state_tile(acc_t* hs, const scalar_t* src, int64_t B,
                                                int64_t H, int64_t b0, int bt, int ldk) {
  // Row by row (no division per element); the loads of a row are independent, in flight together.
  const int h = static_cast<int>(H);
  for (int r = 0; r < bt; ++r) {
    const int64_t b = b0 + r;
    acc_t* dst = hs + r * ldk;
    if (b < B) {
      const scalar_t* row = src + b * H;
      for (int k = threadIdx.x; k < h; k += blockDim.x) {
        dst[k] = static_cast<acc_t>(load_cg(row + k));
      }
    } else {
      for (int k = threadIdx.x; k < h; k += blockDim.x) {
        dst[k] = acc_t(0);
      }
    }
  }
}

// acc[r][c] = sum over k = ks, ks + KS, ... of hs[row r] * ws[col c], then summed over the
// KS lanes of the group (every one of them ends with the total).
template <typename acc_t, int RB, int RJ>
__device__ __forceinline__ void tile_dot(acc_t (&acc)[RB][RJ], const acc_t* hs, const acc_t* ws,
                                         int64_t H, int ks, int KS, int gb, int GB, int gj,
                                         int GJ, int ldk, int ldj) {
#pragma unroll
  for (int r = 0; r < RB; ++r) {
#pragma unroll
    for (int c = 0; c < RJ; ++c) {
      acc[r][c] = acc_t(0);
    }
  }
  const acc_t* hrow = hs + gb * ldk;
  const acc_t* wcol = ws + gj;
  const int h = static_cast<int>(H);
#pragma unroll 4
  for (int k = ks; k < h; k += KS) {
    acc_t hv[RB];
    acc_t wv[RJ];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
      hv[r] = hrow[r * GB * ldk + k];
    }
#pragma unroll
    for (int c = 0; c < RJ; ++c) {
      wv[c] = wcol[k * ldj + c * GJ];
    }
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        acc[r][c] += hv[r] * wv[c];
      }
    }
  }
  // The KS lanes of a group are consecutive and KS-aligned: xor over the low bits stays inside.
  for (int off = KS / 2; off > 0; off >>= 1) {
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        acc[r][c] += __shfl_xor_sync(0xffffffffu, acc[r][c], off);
      }
    }
  }
}

struct ThreadRole {
  int ks, gb, gj;
  int64_t b0, j0;
};

__device__ __forceinline__ ThreadRole thread_role(const PersistentArgs& a, int RB, int RJ) {
  const int warp = threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int og = warp * (32 / a.ks) + lane / a.ks;
  ThreadRole role;
  role.ks = lane % a.ks;
  role.gj = og % a.gj;
  role.gb = og / a.gj;
  const int bt_idx = blockIdx.x / a.njt;
  const int jt_idx = blockIdx.x % a.njt;
  role.b0 = static_cast<int64_t>(bt_idx) * a.gb * RB;
  role.j0 = static_cast<int64_t>(jt_idx) * a.gj * RJ;
  return role;
}

template <typename scalar_t, int RB, int RJ>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_forward_kernel(PersistentArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* ws = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* hs = ws + a.H * a.ldj;
  cg::grid_group grid = cg::this_grid();

  const int64_t T = a.T, B = a.B, H = a.H;
  const ThreadRole role = thread_role(a, RB, RJ);
  const int bt = a.gb * RB;
  const int jt = a.gj * RJ;
  load_weight_slice<scalar_t, acc_t>(ws, static_cast<const scalar_t*>(a.w), H, role.j0, jt,
                                     a.ldj, /*transpose=*/false);
  scalar_t* out = static_cast<scalar_t*>(a.out);
  scalar_t* hbuf = static_cast<scalar_t*>(a.hbuf);

  for (int64_t s = 0; s < T; ++s) {
    const int64_t t = a.reverse ? T - 1 - s : s;
    const scalar_t* hcur = hbuf + (s & 1) * B * H;
    scalar_t* hnext = hbuf + ((s + 1) & 1) * B * H;
    scalar_t* out_t = out + t * B * H;
    // This thread's inputs from the projection, loaded now so that they arrive during the
    // state tile's load and the dot products (they do not depend on the recurrence).
    acc_t xp[RB][RJ];
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
        const int64_t j = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
        xp[r][c] = ((r * RJ + c) % a.ks == role.ks && b < B && j < H)
                       ? static_cast<acc_t>(out_t[b * H + j])
                       : acc_t(0);
      }
    }
    load_state_tile<scalar_t, acc_t>(hs, hcur, B, H, role.b0, bt, a.ldk);
    __syncthreads();  // also orders the weight slice's load before its first use
    acc_t acc[RB][RJ];
    tile_dot<acc_t, RB, RJ>(acc, hs, ws, H, role.ks, a.ks, role.gb, a.gb, role.gj, a.gj, a.ldk,
                            a.ldj);
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        if ((r * RJ + c) % a.ks != role.ks) {
          continue;  // the KS lanes of a group share the epilogue
        }
        const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
        const int64_t j = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
        if (b >= B || j >= H) {
          continue;
        }
        const int64_t i = b * H + j;
        const acc_t y = activate<acc_t>(acc[r][c] + xp[r][c], a.act);
        if (a.len == nullptr || t < a.len[b]) {
          const scalar_t ys = static_cast<scalar_t>(y);
          out_t[i] = ys;
          hnext[i] = ys;
        } else {
          out_t[i] = scalar_t(0);
          hnext[i] = load_cg(hcur + i);
        }
      }
    }
    grid.sync();  // h_t complete everywhere; also a block barrier before hs is overwritten
  }
}

template <typename scalar_t, int RB, int RJ>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_backward_kernel(PersistentArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  acc_t* ws = reinterpret_cast<acc_t*>(smem_raw);
  acc_t* hs = ws + a.H * a.ldj;
  cg::grid_group grid = cg::this_grid();

  const int64_t T = a.T, B = a.B, H = a.H;
  const ThreadRole role = thread_role(a, RB, RJ);
  const int bt = a.gb * RB;
  const int jt = a.gj * RJ;
  load_weight_slice<scalar_t, acc_t>(ws, static_cast<const scalar_t*>(a.w), H, role.j0, jt,
                                     a.ldj, /*transpose=*/true);
  scalar_t* ga = static_cast<scalar_t*>(a.ga);
  const scalar_t* gy = static_cast<const scalar_t*>(a.gy);
  const scalar_t* y = static_cast<const scalar_t*>(a.y);
  const scalar_t* ghn = static_cast<const scalar_t*>(a.grad_h_n);
  auto step_time = [&](int64_t u) { return a.reverse ? u : T - 1 - u; };

  // Backward step 0: ga of the first visited step, with no carried gradient.
  {
    const int64_t t = step_time(0);
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        if ((r * RJ + c) % a.ks != role.ks) {
          continue;
        }
        const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
        const int64_t k = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
        if (b >= B || k >= H) {
          continue;
        }
        const int64_t off = t * B * H;
        ga[off + b * H + k] = static_cast<scalar_t>(backward_pointwise<scalar_t, acc_t>(
            acc_t(0), gy + off, ghn, y + off, a.len, t, T, a.reverse, b, b * H + k, a.act));
      }
    }
  }
  grid.sync();

  // Small register tiles load this step's gy and y before the dot products (they do not depend
  // on the recurrence); larger tiles (and float64 beyond 2 outputs) would spill registers.
  constexpr bool kPrefetch = RB * RJ <= (sizeof(acc_t) == 8 ? 2 : 4);
  for (int64_t u = 0; u + 1 < T; ++u) {
    const int64_t t = step_time(u);
    const int64_t tn = step_time(u + 1);
    const int64_t off = tn * B * H;
    acc_t gyv[RB][RJ];
    acc_t yv[RB][RJ];
    if constexpr (kPrefetch) {
#pragma unroll
      for (int r = 0; r < RB; ++r) {
#pragma unroll
        for (int c = 0; c < RJ; ++c) {
          const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
          const int64_t k = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
          const bool mine = (r * RJ + c) % a.ks == role.ks && b < B && k < H;
          gyv[r][c] = mine ? static_cast<acc_t>(gy[off + b * H + k]) : acc_t(0);
          yv[r][c] = mine ? static_cast<acc_t>(y[off + b * H + k]) : acc_t(0);
        }
      }
    }
    load_state_tile<scalar_t, acc_t>(hs, ga + t * B * H, B, H, role.b0, bt, a.ldk);
    __syncthreads();
    acc_t acc[RB][RJ];  // g[b, k] = sum_j ga_t[b, j] W_hh[j, k]
    tile_dot<acc_t, RB, RJ>(acc, hs, ws, H, role.ks, a.ks, role.gb, a.gb, role.gj, a.gj, a.ldk,
                            a.ldj);
#pragma unroll
    for (int r = 0; r < RB; ++r) {
#pragma unroll
      for (int c = 0; c < RJ; ++c) {
        if ((r * RJ + c) % a.ks != role.ks) {
          continue;
        }
        const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
        const int64_t k = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
        if (b >= B || k >= H) {
          continue;
        }
        const int64_t bh = b * H + k;
        acc_t v;
        if constexpr (kPrefetch) {
          v = backward_pointwise_values<scalar_t, acc_t>(acc[r][c], gyv[r][c], yv[r][c], ghn,
                                                         a.len, tn, T, a.reverse, b, bh, a.act);
        } else {
          v = backward_pointwise<scalar_t, acc_t>(acc[r][c], gy + off, ghn, y + off, a.len, tn,
                                                  T, a.reverse, b, bh, a.act);
        }
        ga[off + bh] = static_cast<scalar_t>(v);
      }
    }
    grid.sync();
  }
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

constexpr int kTiles[][2] = {{1, 1}, {1, 2}, {2, 2}, {4, 4}};

// Smallest value >= n that is congruent to m modulo 32 (m in [0, 32)): the padding that keeps
// the warp's shared-memory reads on distinct banks (see tile_dot's access pattern).
int pad_to_bank(int64_t n, int m) {
  int64_t v = n;
  while (v % 32 != m % 32) {
    ++v;
  }
  return static_cast<int>(v);
}

template <typename scalar_t>
Plan make_plan(int64_t B, int64_t H, bool backward) {
  using acc_t = at::opmath_type<scalar_t>;
  Plan best;
  const int device = c10::cuda::current_device();
  const cudaDeviceProp* prop = current_device_properties();
  if (!prop->cooperativeLaunch) {
    best.why = "the device does not support cooperative launches";
    return best;
  }
  if (B * H > (int64_t(1) << 31) || H > (int64_t(1) << 20)) {
    best.why = "B * H is too large";
    return best;
  }
  const size_t smem_max = prop->sharedMemPerBlockOptin;
  const int sms = prop->multiProcessorCount;
  best.why = "W_hh and the state tiles do not fit in the shared memory of co-resident blocks";
  for (const auto& tile : kTiles) {
    const int rb = tile[0], rj = tile[1];
    KernelFn fn = persistent_kernel<scalar_t>(backward, rb, rj);
    C10_CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fn),
                                        cudaFuncAttributeMaxDynamicSharedMemorySize,
                                        static_cast<int>(smem_max)));
    for (int ks = 1; ks <= 32; ks *= 2) {
      const int groups = kPersistentThreads / ks;
      for (int gj = 1; gj <= groups; gj *= 2) {
        // Padded: the leading dimensions that keep a warp's shared-memory reads on distinct
        // banks; unpadded: less shared memory (larger H fits), some bank conflicts.
        for (int padded = 1; padded >= 0; --padded) {
          const int gb = groups / gj;
          Plan p;
          p.rb = rb;
          p.rj = rj;
          p.ks = ks;
          p.gb = gb;
          p.gj = gj;
          p.bt = gb * rb;
          p.jt = gj * rj;
          // Skip tiles far larger than the problem (they only waste threads), but never the
          // smallest block tiles (ks = 32: 8 output groups): without them B = 1, H = 1 (and
          // H = 1, B = 2) had no plan at all, and `require` blamed the shared memory.
          if (ks < 32 && p.bt >= 4 * B && gb > 1) continue;
          if (ks < 32 && p.jt >= 4 * H && gj > 1) continue;
          const int ldk_padded = pad_to_bank(H, ks % 32);
          const int ldj_padded = ks > 1 ? pad_to_bank(p.jt, 32 / ks) : p.jt;
          if (padded) {
            p.ldk = ldk_padded;
            p.ldj = ldj_padded;
          } else {
            p.ldk = static_cast<int>(H);
            p.ldj = p.jt;
            if (p.ldk == ldk_padded && p.ldj == ldj_padded) {
              continue;  // the same plan as the padded one
            }
          }
          p.nbt = static_cast<int>((B + p.bt - 1) / p.bt);
          p.njt = static_cast<int>((H + p.jt - 1) / p.jt);
          p.smem = (static_cast<size_t>(H) * p.ldj + static_cast<size_t>(p.bt) * p.ldk) *
                   sizeof(acc_t);
          if (p.smem > smem_max) continue;
          const int64_t grid = static_cast<int64_t>(p.nbt) * p.njt;
          if (grid > 4 * static_cast<int64_t>(sms)) continue;
          int per_sm = 0;
          C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(
              &per_sm, fn, kPersistentThreads, p.smem));
          if (per_sm < 1 || grid > static_cast<int64_t>(per_sm) * sms) continue;
          // Cost of one step in per-thread operations: the dot products (twice when bank
          // conflicts are likely), the shuffle reduction, loading the state tile, times the
          // blocks sharing one SM.
          const double waves = std::ceil(static_cast<double>(grid) / sms);
          int lg = 0;
          while ((1 << lg) < ks) ++lg;
          const double dots = rb * rj * std::ceil(static_cast<double>(H) / ks);
          const double work = dots * (padded ? 1.0 : 2.0) + rb * rj * 2.0 * lg +
                              2.0 * std::ceil(static_cast<double>(p.bt) * H / kPersistentThreads);
          p.cost = waves * work + 1e-3 * grid;  // ties: fewer blocks, a cheaper barrier
          p.ok = true;
          if (!best.ok || p.cost < best.cost) {
            best = p;
          }
        }
      }
    }
  }
  (void)device;
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
  args.ks = p.ks;
  args.gb = p.gb;
  args.gj = p.gj;
  args.ldk = p.ldk;
  args.ldj = p.ldj;
  args.njt = p.njt;
  KernelFn fn = persistent_kernel<scalar_t>(backward, p.rb, p.rj);
  TORCH_INTERNAL_ASSERT(fn != nullptr);
  void* kargs[] = {&args};
  const cudaError_t err = cudaLaunchCooperativeKernel(
      reinterpret_cast<const void*>(fn), dim3(static_cast<unsigned>(p.nbt * p.njt)),
      dim3(kPersistentThreads), kargs, p.smem, stream);
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

at::Tensor lengths_on_device(const std::optional<at::Tensor>& lengths, const at::Device& device) {
  if (!lengths.has_value() || !lengths->defined()) {
    return at::Tensor();
  }
  return lengths->to(device, at::kLong).contiguous();
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
    PersistentArgs a{};
    a.T = T;
    a.B = B;
    a.H = H;
    a.w = w.const_data_ptr();
    a.len = len;
    a.reverse = reverse;
    a.act = act;
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
      forward_step_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(
          out_t.data_ptr<scalar_t>(), len != nullptr ? h.data_ptr<scalar_t>() : nullptr, len, t,
          B, H, act);
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
    std::array<bool, 2> output_mask) {
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
      PersistentArgs a{};
      a.T = T;
      a.B = B;
      a.H = H;
      a.w = w.const_data_ptr();
      a.len = len;
      a.reverse = reverse;
      a.act = act;
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
          backward_step_kernel<scalar_t><<<blocks, kPointwiseThreads, 0, stream>>>(
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
                           output_mask, at::Tensor());
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
                            lengths_on_device(lengths, input.device()), s, true);
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
  check_elman_backward_args(op, s, input, grad_output, grad_h_n, output);
  const c10::cuda::CUDAGuard guard(input.device());
  return elman_backward_impl(op, grad_output, grad_h_n, input, h_0, weight_ih, weight_hh, output,
                             act, reverse, lengths_on_device(lengths, input.device()), s, true,
                             output_mask);
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
                          /*reverse=*/false, at::Tensor(), s, false, {true, true});
  return {gx.squeeze(0), ghx, gwih, gwhh, gb};
}

// ---------------------------------------------------------------------------------------------
// Autocast: like nn.RNN / nn.RNNCell (rnn_tanh, rnn_relu and their cells are on autocast's
// lower-precision list), every floating CUDA argument but float64 is cast to the autocast dtype,
// then the operator runs below the autocast key. The casts are recorded by autograd.

std::tuple<at::Tensor, at::Tensor> elman_forward_autocast(
    const at::Tensor& input, const at::Tensor& h_0, const at::Tensor& weight_ih,
    const at::Tensor& weight_hh, const std::optional<at::Tensor>& bias_ih,
    const std::optional<at::Tensor>& bias_hh, c10::string_view nonlinearity, bool reverse,
    const std::optional<at::Tensor>& lengths) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::elman_forward", "")
                       .typed<decltype(elman_forward_autocast)>();
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, input), cached_cast(dt, h_0), cached_cast(dt, weight_ih),
                 cached_cast(dt, weight_hh), cached_cast(dt, bias_ih), cached_cast(dt, bias_hh),
                 nonlinearity, reverse, lengths);
}

at::Tensor elman_cell_forward_autocast(const at::Tensor& input, const at::Tensor& hx,
                                       const at::Tensor& weight_ih, const at::Tensor& weight_hh,
                                       const std::optional<at::Tensor>& bias_ih,
                                       const std::optional<at::Tensor>& bias_hh,
                                       c10::string_view nonlinearity) {
  c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::DispatchKey::AutocastCUDA);
  const auto dt = at::autocast::get_autocast_dtype(at::kCUDA);
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("rnn_ext::elman_cell_forward", "")
                       .typed<decltype(elman_cell_forward_autocast)>();
  using at::autocast::cached_cast;
  return op.call(cached_cast(dt, input), cached_cast(dt, hx), cached_cast(dt, weight_ih),
                 cached_cast(dt, weight_hh), cached_cast(dt, bias_ih), cached_cast(dt, bias_hh),
                 nonlinearity);
}

}  // namespace

TORCH_LIBRARY_IMPL(rnn_ext, CUDA, m) {
  m.impl("elman_forward", &elman_forward_cuda);
  m.impl("elman_backward", &elman_backward_cuda);
  m.impl("elman_cell_forward", &elman_cell_forward_cuda);
  m.impl("elman_cell_backward", &elman_cell_backward_cuda);
}

TORCH_LIBRARY_IMPL(rnn_ext, AutocastCUDA, m) {
  m.impl("elman_forward", &elman_forward_autocast);
  m.impl("elman_cell_forward", &elman_cell_forward_autocast);
}

}  // namespace rnn_ext
