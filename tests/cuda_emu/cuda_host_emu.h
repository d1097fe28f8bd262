// Host emulation of the CUDA runtime and c10::cuda calls that the operators' host code makes
// (csrc/cuda/elman_cuda.cu, seq_nll_cuda.cu, and the launches of csrc/cuda/launch.cuh), so that
// this host code, compiled for the host with RNN_EXT_CUDA_EMULATION defined, runs whole on CPU
// tensors: ATen's CPU kernels stand in for cuBLAS and the ATen reductions, cuda_emu.h runs the
// kernels. tests/test_cuda_emulated.py compares the result with the CPU operators.
//
// The emulated devices (set_device; the host code caches per device, as on a GPU):
//   0  an H200's SM (227 KiB of shared memory per block, 228 KiB per SM, 8 blocks of 256
//      threads at most), 4 of them, cooperative launches supported;
//   1  the same without cooperative launches;
//   2  the same, but the "driver" refuses every cooperative launch as too large (as when MPS
//      leaves fewer SMs than the properties say).
// What the emulated runtime checks, as the driver does:
//   - a launch whose dynamic shared memory exceeds the kernel's limit (48 KiB, or what
//     cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) set) fails, and the
//     occupancy query then answers 0 blocks;
//   - a cooperative grid larger than the blocks resident at once (occupancy x SMs) fails with
//     cudaErrorCooperativeLaunchTooLarge, launching nothing;
//   - a failed launch leaves its error as the runtime's last error, which cudaGetLastError
//     returns and clears and C10_CUDA_KERNEL_LAUNCH_CHECK raises (so host code that does not
//     clear a handled error fails at its next launch check, as on the device).
// The occupancy answer counts threads and shared memory only (no registers).
// Capture (set_capturing): c10::cuda::currentStreamCaptureStatusMayInitCtx reports an active
// CUDA-graph capture, so the host code's capture branches run.
//
// Include after cuda_emu.h and before csrc/cuda/*.cu.
#pragma once

#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <map>
#include <string>

#ifndef RNN_EXT_CUDA_EMULATION
#error "define RNN_EXT_CUDA_EMULATION (the host code leaves out its CUDA headers then)"
#endif

// ---------------------------------------------------------------------------------------------
// The runtime API's types and calls used by the host code.

enum cudaError_t {
  cudaSuccess = 0,
  cudaErrorInvalidValue = 1,
  cudaErrorCooperativeLaunchTooLarge = 720,
};

enum cudaFuncAttribute { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 };

struct CUstream_st;
using cudaStream_t = CUstream_st*;

struct cudaDeviceProp {
  int multiProcessorCount = 0;
  size_t sharedMemPerBlockOptin = 0;
  int cooperativeLaunch = 0;
};

namespace cuda_host_emu {

struct Device {
  int sms;
  size_t smem_optin, smem_per_sm, smem_reserved;
  int cooperative;
  bool refuse_cooperative;
};

constexpr Device kDevices[] = {
    {4, 232448, 233472, 1024, 1, false},
    {4, 232448, 233472, 1024, 0, false},
    {4, 232448, 233472, 1024, 1, true},
};
constexpr int kNumDevices = sizeof(kDevices) / sizeof(kDevices[0]);
constexpr size_t kDefaultSmemLimit = 48 * 1024;
constexpr int kMaxThreadsPerSm = 2048;

inline int g_device = 0;
inline bool g_capturing = false;
inline std::map<std::pair<int, const void*>, size_t> g_smem_limit;  // (device, kernel) -> bytes
inline int64_t g_launches = 0, g_cooperative_launches = 0;
// The runtime's last error (set by a failed launch; cudaGetLastError returns and clears it).
inline cudaError_t g_last_error = cudaSuccess;

inline const Device& device() { return kDevices[g_device]; }

inline void set_device(int d) {
  TORCH_CHECK(d >= 0 && d < kNumDevices, "cuda_host_emu: device must be in [0, ", kNumDevices,
              "), got ", d);
  g_device = d;
  g_last_error = cudaSuccess;
}

inline size_t smem_limit(const void* kernel) {
  auto it = g_smem_limit.find({g_device, kernel});
  return it == g_smem_limit.end() ? kDefaultSmemLimit : it->second;
}

// Blocks of `threads` threads and `smem` bytes resident on one SM at once (0: cannot launch).
inline int blocks_per_sm(const void* kernel, int threads, size_t smem) {
  if (smem > smem_limit(kernel) || threads <= 0) return 0;
  const int by_threads = kMaxThreadsPerSm / threads;
  const size_t by_smem = device().smem_per_sm / (smem + device().smem_reserved);
  return static_cast<int>(std::min<size_t>(by_threads, by_smem));
}

inline cudaError_t fail(cudaError_t e) {
  g_last_error = e;
  return e;
}

// An ordinary launch (launch_kernel in csrc/cuda/launch.cuh): checked as the runtime checks it,
// then run on emulated threads. A launch the runtime would refuse is an error here at once.
inline void launch(const void* kernel, unsigned grid, unsigned block, size_t smem, cudaStream_t,
                   const std::function<void()>& body) {
  TORCH_CHECK(smem <= smem_limit(kernel), "cuda_host_emu: a launch with ", smem,
              " bytes of dynamic shared memory, above the kernel's limit of ",
              smem_limit(kernel), " (cudaFuncSetAttribute)");
  ++g_launches;
  cuda_emu::launch(grid, block, smem, body);
}

// A cooperative launch (launch_cooperative in csrc/cuda/launch.cuh): refused, with the error
// code the runtime gives (also left as the last error), when the kernel's shared-memory limit
// is exceeded, the device has no cooperative launch, or the grid is not resident at once.
inline cudaError_t launch_cooperative(const void* kernel, unsigned grid, unsigned block,
                                      size_t smem, cudaStream_t,
                                      const std::function<void()>& body) {
  if (smem > smem_limit(kernel) || !device().cooperative) {
    return fail(cudaErrorInvalidValue);
  }
  const int64_t resident =
      static_cast<int64_t>(blocks_per_sm(kernel, static_cast<int>(block), smem)) * device().sms;
  if (device().refuse_cooperative || static_cast<int64_t>(grid) > resident) {
    return fail(cudaErrorCooperativeLaunchTooLarge);
  }
  ++g_cooperative_launches;
  cuda_emu::launch(grid, block, smem, body);
  return cudaSuccess;
}

}  // namespace cuda_host_emu

inline cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int d) {
  if (d < 0 || d >= cuda_host_emu::kNumDevices) return cudaErrorInvalidValue;
  const auto& dev = cuda_host_emu::kDevices[d];
  p->multiProcessorCount = dev.sms;
  p->sharedMemPerBlockOptin = dev.smem_optin;
  p->cooperativeLaunch = dev.cooperative;
  return cudaSuccess;
}

inline cudaError_t cudaFuncSetAttribute(const void* kernel, cudaFuncAttribute attr, int value) {
  if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize || value < 0 ||
      static_cast<size_t>(value) > cuda_host_emu::device().smem_optin) {
    return cudaErrorInvalidValue;
  }
  cuda_host_emu::g_smem_limit[{cuda_host_emu::g_device, kernel}] = static_cast<size_t>(value);
  return cudaSuccess;
}

inline cudaError_t cudaOccupancyMaxActiveBlocksPerMultiprocessor(int* n, const void* kernel,
                                                                 int threads, size_t smem) {
  *n = cuda_host_emu::blocks_per_sm(kernel, threads, smem);
  return cudaSuccess;
}

inline cudaError_t cudaGetLastError() {
  const cudaError_t e = cuda_host_emu::g_last_error;
  cuda_host_emu::g_last_error = cudaSuccess;
  return e;
}

// ---------------------------------------------------------------------------------------------
// c10::cuda

namespace c10 {
namespace cuda {

struct CUDAGuard {
  explicit CUDAGuard(at::Device) {}
};

struct EmulatedStream {
  operator cudaStream_t() const { return nullptr; }  // NOLINT: converts as CUDAStream does
};

inline EmulatedStream getCurrentCUDAStream() { return {}; }

inline int current_device() { return cuda_host_emu::g_device; }

enum class CaptureStatus { None, Active, Invalidated };

inline CaptureStatus currentStreamCaptureStatusMayInitCtx() {
  return cuda_host_emu::g_capturing ? CaptureStatus::Active : CaptureStatus::None;
}

}  // namespace cuda
}  // namespace c10

#define C10_CUDA_CHECK(EXPR)                                                               \
  do {                                                                                     \
    const cudaError_t rnn_ext_emu_err = (EXPR);                                            \
    TORCH_CHECK(rnn_ext_emu_err == cudaSuccess, "CUDA error (emulated): ", #EXPR, " -> ", \
                static_cast<int>(rnn_ext_emu_err));                                        \
  } while (0)
#define C10_CUDA_KERNEL_LAUNCH_CHECK() C10_CUDA_CHECK(cudaGetLastError())

