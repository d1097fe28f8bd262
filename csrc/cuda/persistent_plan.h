// Launch plans of the persistent Elman kernels (csrc/cuda/elman_kernels.cuh): the tilings the
// planner (make_plan in csrc/cuda/elman_cuda.cu) chooses among, and the cost it ranks them by.
//
// Host code only, with no CUDA dependency: the device's figures (shared memory per block, SM
// count) and the occupancy answer come from the caller. The same candidates are run, one by
// one, by the host emulation of the kernels (tests/cuda_emu), so every tiling the planner can
// pick is checked off the device.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace rnn_ext {
namespace cuda_detail {

constexpr int kPersistentThreads = 256;  // 8 warps per block in the persistent kernels

// A launch plan: thread (warp w, lane l) has ks = l % KS and output group
// og = w * (32 / KS) + l / KS, gj = og % GJ, gb = og / GJ; it owns the outputs
// b = b0 + gb + r * GB (r < RB), j = j0 + gj + c * GJ (c < RJ) and sums k = ks, ks + KS, ...
// Block x has tile indices (x / njt, x % njt); b0 = (x / njt) * BT, j0 = (x % njt) * JT.
struct Plan {
  int rb = 0, rj = 0;  // per-thread register tile (template parameters of the kernel)
  int ks = 1;          // lanes that split one dot product
  int gb = 1, gj = 1;  // output groups per block along b and j (gb * gj * ks = 256)
  int bt = 0, jt = 0;  // block tile: bt = gb * rb, jt = gj * rj
  int ldk = 0;         // leading dimension of the state tile in shared memory (row-major BT x H)
  int ldj = 0;         // leading dimension of the weight slice (k-major H x JT)
  int nbt = 0, njt = 0;
  bool padded = false;  // ldk / ldj padded against shared-memory bank conflicts
  size_t smem = 0;      // dynamic shared memory per block, bytes
  double cost = 0;
  bool ok = false;
  std::string why;  // when !ok
};

// The register tiles (RB, RJ) the kernels are instantiated for.
constexpr int kTiles[][2] = {{1, 1}, {1, 2}, {2, 2}, {4, 4}};

// Smallest value >= n that is congruent to m modulo 32 (m in [0, 32)): the padding that keeps
// the warp's shared-memory reads on distinct banks (see tile_dot's access pattern).
inline int pad_to_bank(int64_t n, int m) {
  int64_t v = n;
  while (v % 32 != m % 32) {
    ++v;
  }
  return static_cast<int>(v);
}

// Every tiling of a (B, H) problem whose shared memory (W_hh slice plus state tile, elements
// of `acc_size` bytes) fits in `smem_max` bytes per block; rb, rj, ks, gb, gj, bt, jt, ldk,
// ldj, nbt, njt, padded and smem are set, cost and ok are not (they need the device).
inline std::vector<Plan> candidate_plans(int64_t B, int64_t H, size_t acc_size,
                                         size_t smem_max) {
  std::vector<Plan> out;
  for (const auto& tile : kTiles) {
    const int rb = tile[0], rj = tile[1];
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
          p.padded = padded != 0;
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
          // The grid in int64 first: B = 2^31 with bt = 1 wrapped to a negative int grid
          // that passed every later check (and won on cost). No plan has over 2^20 blocks
          // (make_plan keeps grids <= 4 x SMs).
          const int64_t nbt = (B + p.bt - 1) / p.bt, njt = (H + p.jt - 1) / p.jt;
          if (nbt > (int64_t(1) << 20) || njt > (int64_t(1) << 20) ||
              nbt * njt > (int64_t(1) << 20)) {
            continue;
          }
          p.nbt = static_cast<int>(nbt);
          p.njt = static_cast<int>(njt);
          p.smem = (static_cast<size_t>(H) * p.ldj + static_cast<size_t>(p.bt) * p.ldk) *
                   acc_size;
          if (p.smem > smem_max) continue;
          out.push_back(p);
        }
      }
    }
  }
  return out;
}

// Cost of one step of plan `p` on `sms` SMs, in per-thread operations: the dot products
// (twice when bank conflicts are likely), the shuffle reduction, loading the state tile, times
// the waves of blocks sharing one SM; ties go to fewer blocks (a cheaper barrier).
inline double plan_cost(const Plan& p, int64_t H, int sms) {
  const int64_t grid = static_cast<int64_t>(p.nbt) * p.njt;
  const double waves = std::ceil(static_cast<double>(grid) / sms);
  int lg = 0;
  while ((1 << lg) < p.ks) ++lg;
  const double dots = p.rb * p.rj * std::ceil(static_cast<double>(H) / p.ks);
  const double work = dots * (p.padded ? 1.0 : 2.0) + p.rb * p.rj * 2.0 * lg +
                      2.0 * std::ceil(static_cast<double>(p.bt) * H / kPersistentThreads);
  return waves * work + 1e-3 * grid;
}

}  // namespace cuda_detail
}  // namespace rnn_ext
