// The kernel launches of the operators' host code (elman_cuda.cu, seq_nll_cuda.cu), written in
// one place so that the host emulation (tests/cuda_emu/cuda_host_emu.h, RNN_EXT_CUDA_EMULATION)
// can run that host code, whole, on the CPU: under the emulation each launch hands the kernel
// call to cuda_host_emu, which checks it as the runtime would and runs it on emulated threads.
//
//   launch_kernel(kernel, grid, block, smem, stream, args...)
//       kernel<<<grid, block, smem, stream>>>(args...); the caller checks the launch
//       (C10_CUDA_KERNEL_LAUNCH_CHECK).
//   launch_cooperative(kernel, grid, block, smem, stream, args...) -> cudaError_t
//       cudaLaunchCooperativeKernel of kernel(args...): every block resident at once, as
//       cooperative_groups::this_grid().sync() needs. Returns the runtime's error code: on an
//       error nothing was launched (cudaErrorCooperativeLaunchTooLarge: the grid does not fit
//       on the device at once), and the error is also the runtime's last error (clear it with
//       cudaGetLastError before the next launch check).
// grid and block are 1-D (blocks, threads per block); smem is dynamic shared memory per block,
// in bytes (above 48 KiB only after cudaFuncSetAttribute raised the kernel's limit).
#pragma once

#ifndef RNN_EXT_CUDA_EMULATION
#include <cuda_runtime.h>
#endif  // else cuda_host_emu.h, included first, provides the runtime's types and calls

#include <cstddef>
#include <utility>

namespace rnn_ext {
namespace cuda_detail {

template <typename T>
struct NonDeduced {
  using type = T;
};

template <typename... Params, typename... Args>
void launch_kernel(void (*kernel)(Params...), unsigned grid, unsigned block, size_t smem,
                   cudaStream_t stream, Args&&... args) {
#ifndef RNN_EXT_CUDA_EMULATION
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#else
  cuda_host_emu::launch(reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                        [&] { kernel(args...); });
#endif
}

template <typename... Params>
cudaError_t launch_cooperative(void (*kernel)(Params...), unsigned grid, unsigned block,
                               size_t smem, cudaStream_t stream,
                               typename NonDeduced<Params>::type... args) {
#ifndef RNN_EXT_CUDA_EMULATION
  void* kargs[] = {static_cast<void*>(&args)...};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(kernel), dim3(grid),
                                     dim3(block), kargs, smem, stream);
#else
  return cuda_host_emu::launch_cooperative(reinterpret_cast<const void*>(kernel), grid, block,
                                           smem, stream, [&] { kernel(args...); });
#endif
}

}  // namespace cuda_detail
}  // namespace rnn_ext
