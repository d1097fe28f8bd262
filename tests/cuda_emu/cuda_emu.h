// Host emulation of the CUDA features that csrc/cuda/elman_kernels.cuh uses, so that the real
// kernel source runs on the CPU, off the device, in the tests (tests/test_cuda_emulated.py).
//
// Every CUDA thread of a launch is a fiber (ucontext) with a stack of its own; one host thread
// runs them all, each until it reaches a barrier. All blocks of a launch are resident at once,
// as a cooperative launch requires. The order of the turns (set_schedule; seeded, so a run is
// reproducible):
//   block-greedy (default)  the blocks in a shuffled order, each run as far as it can go (until
//                           all its threads wait) before the next: the blocks drift as far
//                           apart as the barriers allow, so a missing grid barrier lets one
//                           block read another's data before it is written, or after it is
//                           overwritten;
//   interleaved             every thread one turn per round, in a shuffled order.
// Within a block the threads' order is shuffled at every round in both. Emulated:
//   threadIdx, blockIdx, blockDim, gridDim  (x only; y = z = 0 / 1)
//   __syncthreads()                         a barrier of the block's threads
//   cooperative_groups::this_grid().sync()  a barrier of all the launch's threads
//   __shfl_xor_sync(0xffffffff, v, m)       through a per-warp exchange, between two barriers
//                                           of the warp's 32 threads (all must take part, with
//                                           the same m in [0, 32), or the launch fails)
//   __ldcg(p)                               a plain load
//   atomicMin(unsigned long long*, v)       a plain read-modify-write (turns are not preempted)
//   atomicAdd(unsigned long long*, v)       likewise
//   dynamic shared memory                   one buffer per block, filled with 0xFF bytes (NaN
//                                           in every float type) so a read of an element no
//                                           thread wrote poisons the result, and followed by
//                                           guard bytes checked after the launch
// A barrier that some threads never reach (a deadlock on the device) is reported as an error
// naming the barrier, not a hang. A missing barrier shows up as a wrong or NaN result: the
// threads of a block run in a shuffled order, so a read can come before another thread's write.
//
// Not emulated: memory ordering without barriers, L1 caching, occupancy, timing, other CUDA
// features (a kernel that uses one does not compile here).
//
// Include it after the PyTorch headers and before the kernels' header.
#pragma once

#include <ucontext.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

namespace cuda_emu {

struct Index3 {
  unsigned x = 0, y = 0, z = 0;
};

constexpr size_t kStackBytes = 64 * 1024;
constexpr size_t kGuardBytes = 256;
constexpr unsigned char kSmemPoison = 0xFF;
constexpr unsigned char kGuardByte = 0xA5;

struct Barrier {
  const char* name = "";
  unsigned expected = 0;
  unsigned arrived = 0;
  uint64_t generation = 0;
};

struct Warp {
  Barrier bar{"warp shuffle", 32};
  alignas(16) unsigned char slot[32][16];
  int lane_mask[32];
};

enum class Schedule { BlockGreedy, Interleaved };

inline uint64_t g_schedule_seed = 0;
inline Schedule g_schedule = Schedule::BlockGreedy;

// The order of the threads' turns in the launches that follow (see the top of this file).
inline void set_schedule(uint64_t seed, Schedule schedule) {
  g_schedule_seed = seed;
  g_schedule = schedule;
}

struct Block {
  Block(unsigned threads, size_t smem_bytes)
      : bar{"__syncthreads", threads},
        warps(threads / 32),
        smem(new unsigned char[smem_bytes + kGuardBytes]),
        smem_bytes(smem_bytes) {
    std::memset(smem.get(), kSmemPoison, smem_bytes);
    std::memset(smem.get() + smem_bytes, kGuardByte, kGuardBytes);
  }
  bool guard_intact() const {
    for (size_t i = 0; i < kGuardBytes; ++i) {
      if (smem[smem_bytes + i] != kGuardByte) return false;
    }
    return true;
  }
  Barrier bar;
  std::vector<Warp> warps;
  std::unique_ptr<unsigned char[]> smem;  // operator new[]: 16-byte aligned
  size_t smem_bytes;
};

struct Fiber {
  ucontext_t ctx;
  std::unique_ptr<char[]> stack;
  Index3 thread_idx, block_idx;
  Block* block = nullptr;
  Barrier* waiting = nullptr;  // the barrier this fiber waits at, or null
  uint64_t wait_generation = 0;
  bool done = false;
};

struct Launch {
  ucontext_t scheduler;
  std::vector<Fiber> fibers;
  std::vector<std::unique_ptr<Block>> blocks;
  Barrier grid{"grid.sync"};
  Index3 grid_dim, block_dim;
  const std::function<void()>* body = nullptr;
  Fiber* current = nullptr;
  std::string error;  // an exception thrown in a fiber
};

inline Launch* g_launch = nullptr;  // the running launch (one at a time)

inline Fiber& current() { return *g_launch->current; }

inline unsigned char* dynamic_smem() { return current().block->smem.get(); }

// Arrive at `b`; the last to arrive releases the others and goes on, the others wait.
inline void arrive_and_wait(Barrier& b) {
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  Fiber& f = current();
  f.waiting = &b;
  f.wait_generation = b.generation;
  swapcontext(&f.ctx, &g_launch->scheduler);
}

inline void syncthreads() { arrive_and_wait(current().block->bar); }

inline void grid_sync() { arrive_and_wait(g_launch->grid); }

template <typename T>
T shfl_xor(unsigned mask, T v, int lane_mask) {
  static_assert(sizeof(T) <= 16, "shuffle of a value over 16 bytes");
  if (mask != 0xffffffffu) {
    throw std::logic_error("cuda_emu: only full-warp shuffles are emulated");
  }
  if (lane_mask < 0 || lane_mask >= 32) {
    throw std::logic_error("cuda_emu: __shfl_xor_sync lane mask " + std::to_string(lane_mask) +
                           " is outside [0, 32)");
  }
  Fiber& f = current();
  const unsigned lane = f.thread_idx.x % 32;
  Warp& w = f.block->warps[f.thread_idx.x / 32];
  std::memcpy(w.slot[lane], &v, sizeof(T));
  w.lane_mask[lane] = lane_mask;
  arrive_and_wait(w.bar);  // every lane has written
  if (w.lane_mask[lane ^ static_cast<unsigned>(lane_mask)] != lane_mask) {
    throw std::logic_error("cuda_emu: the lanes of a warp shuffle with different lane masks");
  }
  T r;
  std::memcpy(&r, w.slot[lane ^ static_cast<unsigned>(lane_mask)], sizeof(T));
  arrive_and_wait(w.bar);  // every lane has read, before a next shuffle overwrites
  return r;
}

inline void fiber_entry() {
  Fiber& f = current();
  try {
    (*g_launch->body)();
  } catch (const std::exception& e) {
    if (g_launch->error.empty()) g_launch->error = e.what();
  }
  f.done = true;  // returns to the scheduler through uc_link
}

// Runs body() as the kernel of a launch of `grid` blocks of `block` threads (both 1-D), with
// `smem_bytes` of dynamic shared memory per block, in the order set_schedule chose. Throws
// std::runtime_error on a deadlock (threads left waiting at a barrier), an exception in a
// thread, or a block that wrote past its shared memory. Launches do not nest and are serialised.
inline void launch(unsigned grid, unsigned block, size_t smem_bytes,
                   const std::function<void()>& body) {
  if (grid == 0 || block == 0 || block % 32 != 0 || block > 1024) {
    throw std::invalid_argument("cuda_emu: a launch needs grid >= 1 and block a multiple of 32 "
                                "in [32, 1024], got grid " + std::to_string(grid) +
                                ", block " + std::to_string(block));
  }
  static std::mutex one_at_a_time;
  std::lock_guard<std::mutex> lock(one_at_a_time);
  const size_t n = static_cast<size_t>(grid) * block;
  Launch L;
  L.grid.expected = static_cast<unsigned>(n);
  L.grid_dim = Index3{grid, 1, 1};
  L.block_dim = Index3{block, 1, 1};
  L.body = &body;
  for (unsigned b = 0; b < grid; ++b) {
    L.blocks.emplace_back(new Block(block, smem_bytes));
  }
  L.fibers.resize(n);
  for (size_t i = 0; i < n; ++i) {
    Fiber& f = L.fibers[i];
    f.thread_idx = Index3{static_cast<unsigned>(i % block), 0, 0};
    f.block_idx = Index3{static_cast<unsigned>(i / block), 0, 0};
    f.block = L.blocks[i / block].get();
    f.stack.reset(new char[kStackBytes]);
    getcontext(&f.ctx);
    f.ctx.uc_stack.ss_sp = f.stack.get();
    f.ctx.uc_stack.ss_size = kStackBytes;
    f.ctx.uc_link = &L.scheduler;
    makecontext(&f.ctx, &fiber_entry, 0);
  }
  g_launch = &L;
  std::mt19937_64 rng(g_schedule_seed);
  size_t live = n;
  std::string failure;
  auto runnable = [](const Fiber& f) {
    return !f.done && (f.waiting == nullptr || f.waiting->generation != f.wait_generation);
  };
  auto resume = [&](Fiber& f) {
    f.waiting = nullptr;
    L.current = &f;
    swapcontext(&L.scheduler, &f.ctx);
    if (f.done) --live;
  };
  std::vector<size_t> order(n);  // interleaved: all threads; block-greedy: one block's
  std::vector<unsigned> blocks_order(grid);
  std::iota(blocks_order.begin(), blocks_order.end(), 0u);
  while (live > 0) {
    bool progress = false;
    if (g_schedule == Schedule::Interleaved) {
      std::iota(order.begin(), order.end(), size_t(0));
      std::shuffle(order.begin(), order.end(), rng);
      for (size_t i : order) {
        if (runnable(L.fibers[i])) {
          resume(L.fibers[i]);
          progress = true;
        }
      }
    } else {
      std::shuffle(blocks_order.begin(), blocks_order.end(), rng);
      for (unsigned b : blocks_order) {
        for (bool moved = true; moved;) {  // this block, until all its threads wait
          moved = false;
          std::iota(order.begin(), order.begin() + block, static_cast<size_t>(b) * block);
          std::shuffle(order.begin(), order.begin() + block, rng);
          for (size_t k = 0; k < block; ++k) {
            if (runnable(L.fibers[order[k]])) {
              resume(L.fibers[order[k]]);
              moved = progress = true;
            }
          }
        }
      }
    }
    if (!progress) {
      size_t waiting = 0;
      const char* at = "";
      for (const Fiber& f : L.fibers) {
        if (!f.done) {
          ++waiting;
          at = f.waiting->name;
        }
      }
      failure = "cuda_emu: deadlock: " + std::to_string(waiting) + " of " + std::to_string(n) +
                " threads wait at a barrier (" + at + ") that the others never reach";
      break;
    }
  }
  g_launch = nullptr;
  if (!L.error.empty()) {
    throw std::runtime_error("cuda_emu: a kernel thread threw: " + L.error);
  }
  if (!failure.empty()) {
    throw std::runtime_error(failure);
  }
  for (unsigned b = 0; b < grid; ++b) {
    if (!L.blocks[b]->guard_intact()) {
      throw std::runtime_error("cuda_emu: block " + std::to_string(b) +
                               " wrote past its dynamic shared memory of " +
                               std::to_string(smem_bytes) + " bytes");
    }
  }
}

}  // namespace cuda_emu

namespace cooperative_groups {
struct grid_group {
  void sync() const { cuda_emu::grid_sync(); }
};
inline grid_group this_grid() { return grid_group{}; }
}  // namespace cooperative_groups

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define threadIdx (cuda_emu::current().thread_idx)
#define blockIdx (cuda_emu::current().block_idx)
#define blockDim (cuda_emu::g_launch->block_dim)
#define gridDim (cuda_emu::g_launch->grid_dim)
#define RNN_EXT_DYNAMIC_SMEM(name) unsigned char* name = cuda_emu::dynamic_smem()

inline void __syncthreads() { cuda_emu::syncthreads(); }

template <typename T>
inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask) {
  return cuda_emu::shfl_xor(mask, v, lane_mask);
}

template <typename T>
inline T __ldcg(const T* p) {
  return *p;
}

// The threads take turns without preemption, so a read-modify-write is atomic as written.
inline unsigned long long atomicMin(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  if (v < old) *p = v;
  return old;
}

inline unsigned long long atomicAdd(unsigned long long* p, unsigned long long v) {
  const unsigned long long old = *p;
  *p = old + v;
  return old;
}
