// Device code of the Elman CUDA kernels: the fused pointwise kernels of the cuBLAS step loop
// and the persistent (cooperative) forward and backward kernels. The host code that plans and
// launches them, and the design of both paths, are in csrc/cuda/elman_cuda.cu.
//
// Compiled by nvcc (elman_cuda.cu), and by a host C++ compiler for the emulation of the kernels
// off the device (tests/cuda_emu/cuda_emu.h provides threadIdx, __syncthreads, grid barriers,
// warp shuffles and shared memory; tests/test_cuda_emulated.py runs them): so this file uses
// only those CUDA features, and declares its dynamic shared memory through
// RNN_EXT_DYNAMIC_SMEM, which the emulation defines for itself.
#pragma once

#include <ATen/OpMathType.h>
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>

#include "../elman_math.h"
#include "persistent_plan.h"

#if defined(__CUDACC__)
#include <cooperative_groups.h>
#define RNN_EXT_DYNAMIC_SMEM(name) extern __shared__ __align__(16) unsigned char name[]
#endif

namespace rnn_ext {
namespace cuda_detail {

namespace cg = cooperative_groups;  // the emulation has its own cooperative_groups::this_grid

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
__device__ __forceinline__ int64_t load_cg<int64_t>(const int64_t* p) {
  return static_cast<int64_t>(__ldcg(reinterpret_cast<const long long*>(p)));
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
// state: the GEMM's g_carry, except at the sequence's first backward step, where g is only
// grad_h_n (the step where the sequence's h_n was produced). Steps past the sequence's end
// (t >= lengths[b]) get 0. The carry into the first backward step is ignored, not added:
// with lengths it is (0 of the padded step after it) @ W_hh, which is 0 for a finite W_hh
// but NaN for a non-finite one, and the CPU operator (like nn.RNN on a PackedSequence) does
// not let that NaN into the valid steps.
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
  if (t == first_backward_step(len, b, T, reverse)) {
    g = grad_h_n != nullptr ? static_cast<acc_t>(grad_h_n[bh]) : acc_t(0);
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

// ---------------------------------------------------------------------------------------------
// Path 2: the persistent kernels (plans: persistent_plan.h).

// The arguments of both persistent kernels (one struct: a cooperative launch passes an array
// of argument pointers).
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

// The arguments both kernels share (host side); the rest are set by the caller and set_plan.
inline PersistentArgs persistent_args(int64_t T, int64_t B, int64_t H, const void* weight_hh,
                                      const int64_t* len, bool reverse, Activation act) {
  PersistentArgs a{};
  a.T = T;
  a.B = B;
  a.H = H;
  a.w = weight_hh;
  a.len = len;
  a.reverse = reverse;
  a.act = act;
  return a;
}

// Copies a plan's layout into the kernel arguments (host side).
inline void set_plan(PersistentArgs& a, const Plan& p) {
  a.ks = p.ks;
  a.gb = p.gb;
  a.gj = p.gj;
  a.ldk = p.ldk;
  a.ldj = p.ldj;
  a.njt = p.njt;
}

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

// Calls f(r, c, b, j) for each output (b, j) of this thread's register tile that it finishes:
// the KS lanes of a group, which all end tile_dot with every total, take the tile's outputs
// round-robin (output (r, c) goes to lane ks = (r * RJ + c) % KS); outputs past (B, H) are
// skipped. r and c are compile-time after unrolling, so f may index register arrays with them.
template <int RB, int RJ, typename F>
__device__ __forceinline__ void for_each_owned(const PersistentArgs& a, const ThreadRole& role,
                                               F&& f) {
#pragma unroll
  for (int r = 0; r < RB; ++r) {
#pragma unroll
    for (int c = 0; c < RJ; ++c) {
      if ((r * RJ + c) % a.ks != role.ks) {
        continue;
      }
      const int64_t b = role.b0 + role.gb + static_cast<int64_t>(r) * a.gb;
      const int64_t j = role.j0 + role.gj + static_cast<int64_t>(c) * a.gj;
      if (b < a.B && j < a.H) {
        f(r, c, b, j);
      }
    }
  }
}

template <typename scalar_t, int RB, int RJ>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_forward_kernel(PersistentArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  RNN_EXT_DYNAMIC_SMEM(smem_raw);
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
    acc_t xp[RB][RJ] = {};
    for_each_owned<RB, RJ>(a, role, [&](int r, int c, int64_t b, int64_t j) {
      xp[r][c] = static_cast<acc_t>(out_t[b * H + j]);
    });
    load_state_tile<scalar_t, acc_t>(hs, hcur, B, H, role.b0, bt, a.ldk);
    __syncthreads();  // also orders the weight slice's load before its first use
    acc_t acc[RB][RJ];
    tile_dot<acc_t, RB, RJ>(acc, hs, ws, H, role.ks, a.ks, role.gb, a.gb, role.gj, a.gj, a.ldk,
                            a.ldj);
    for_each_owned<RB, RJ>(a, role, [&](int r, int c, int64_t b, int64_t j) {
      const int64_t i = b * H + j;
      if (a.len == nullptr || t < a.len[b]) {
        const scalar_t ys = static_cast<scalar_t>(activate<acc_t>(acc[r][c] + xp[r][c], a.act));
        out_t[i] = ys;
        hnext[i] = ys;
      } else {
        out_t[i] = scalar_t(0);
        hnext[i] = load_cg(hcur + i);
      }
    });
    grid.sync();  // h_t complete everywhere; also a block barrier before hs is overwritten
  }
}

template <typename scalar_t, int RB, int RJ>
__global__ void __launch_bounds__(kPersistentThreads)
    persistent_backward_kernel(PersistentArgs a) {
  using acc_t = at::opmath_type<scalar_t>;
  RNN_EXT_DYNAMIC_SMEM(smem_raw);
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
    const int64_t off = t * B * H;
    for_each_owned<RB, RJ>(a, role, [&](int, int, int64_t b, int64_t k) {
      ga[off + b * H + k] = static_cast<scalar_t>(backward_pointwise<scalar_t, acc_t>(
          acc_t(0), gy + off, ghn, y + off, a.len, t, T, a.reverse, b, b * H + k, a.act));
    });
  }
  grid.sync();

  // Small register tiles load this step's gy and y before the dot products (they do not depend
  // on the recurrence); larger tiles (and float64 beyond 2 outputs) would spill registers.
  constexpr bool kPrefetch = RB * RJ <= (sizeof(acc_t) == 8 ? 2 : 4);
  for (int64_t u = 0; u + 1 < T; ++u) {
    const int64_t t = step_time(u);
    const int64_t tn = step_time(u + 1);
    const int64_t off = tn * B * H;
    acc_t gyv[RB][RJ] = {};
    acc_t yv[RB][RJ] = {};
    if constexpr (kPrefetch) {
      for_each_owned<RB, RJ>(a, role, [&](int r, int c, int64_t b, int64_t k) {
        gyv[r][c] = static_cast<acc_t>(gy[off + b * H + k]);
        yv[r][c] = static_cast<acc_t>(y[off + b * H + k]);
      });
    }
    load_state_tile<scalar_t, acc_t>(hs, ga + t * B * H, B, H, role.b0, bt, a.ldk);
    __syncthreads();
    acc_t acc[RB][RJ];  // g[b, k] = sum_j ga_t[b, j] W_hh[j, k]
    tile_dot<acc_t, RB, RJ>(acc, hs, ws, H, role.ks, a.ks, role.gb, a.gb, role.gj, a.gj, a.ldk,
                            a.ldj);
    for_each_owned<RB, RJ>(a, role, [&](int r, int c, int64_t b, int64_t k) {
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
    });
    grid.sync();
  }
}

// ---------------------------------------------------------------------------------------------
// Diagnostics: the cost of the persistent kernels' grid-wide barrier alone.

// `iters` grid-wide barriers, as the persistent kernels meet once per step (the same block
// size, the same cooperative_groups barrier), each checked: before barrier i every block's
// thread 0 writes its epoch i to flags[block] (flags start below 0); after it, it reads its
// neighbour's flag, which a barrier that held leaves at i or i + 1 (the neighbour may already
// be past the next write), never below i. Block 0's thread 0 adds `iters` to counter[0];
// the blocks add the number of failed checks to counter[1]. flags: int64 (gridDim.x).
// Timed by benchmarks/bench_cuda.py (through rnn_ext::_grid_barrier_loop) at a plan's grid;
// a step of the persistent kernels also writes state and reads others' between barriers.
__global__ void __launch_bounds__(kPersistentThreads)
    grid_barrier_kernel(int64_t* counter, int64_t* flags, int64_t iters) {
  cg::grid_group grid = cg::this_grid();
  const unsigned next = (blockIdx.x + 1) % gridDim.x;
  unsigned long long failed = 0;
  for (int64_t i = 0; i < iters; ++i) {
    if (threadIdx.x == 0) {
      flags[blockIdx.x] = i;
    }
    grid.sync();
    if (threadIdx.x == 0 && load_cg(flags + next) < i) {
      ++failed;
    }
  }
  if (threadIdx.x == 0) {
    if (failed != 0) {
      atomicAdd(reinterpret_cast<unsigned long long*>(counter + 1), failed);
    }
    if (blockIdx.x == 0) {
      counter[0] += iters;
    }
  }
}

}  // namespace cuda_detail
}  // namespace rnn_ext
