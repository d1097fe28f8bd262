"""Build rnn_ext._C: the C++ kernels always, the CUDA kernels when they can be built.

Decision (printed at build time):
  * RNN_EXT_FORCE_CPU=1            -> C++ only.
  * torch built without CUDA       -> C++ only.
  * no CUDA toolkit (nvcc) found   -> C++ only.
  * otherwise                      -> C++ and CUDA (csrc/cuda/*.cu).

TORCH_CUDA_ARCH_LIST picks the GPU architectures (default: the visible GPU's, or "9.0" when no
GPU is visible). CUDA_HOME defaults to /usr/local/cuda when it holds nvcc (torch would otherwise
guess the toolkit's root from `which nvcc`, which fails when that is a wrapper).
RNN_EXT_DEBUG=1 compiles with -O0 -g. RNN_EXT_REQUIRE_CUDA=1 makes a build that would be C++
only an error (benchmarks/device_check.sh sets it: a GPU run must not test a CPU-only build).
"""
import glob
import os
import shutil
import sys

if "CUDA_HOME" not in os.environ and "CUDA_PATH" not in os.environ and os.path.isfile(
    "/usr/local/cuda/bin/nvcc"
):
    # torch.utils.cpp_extension guesses the toolkit root from `which nvcc`; a wrapper in
    # /usr/local/bin makes it guess /usr/local, which has no lib64/libcudart.
    os.environ["CUDA_HOME"] = "/usr/local/cuda"

import torch  # noqa: E402
from setuptools import setup  # noqa: E402
from torch.utils.cpp_extension import (  # noqa: E402
    CUDA_HOME,
    BuildExtension,
    CppExtension,
    CUDAExtension,
)

HERE = os.path.dirname(os.path.abspath(__file__))


def _cuda_decision():
    if os.environ.get("RNN_EXT_FORCE_CPU", "0") not in ("", "0"):
        return False, "RNN_EXT_FORCE_CPU is set"
    if torch.version.cuda is None:
        return False, f"torch {torch.__version__} was built without CUDA"
    if CUDA_HOME is None or shutil.which(os.path.join(CUDA_HOME, "bin", "nvcc")) is None:
        return False, "no CUDA toolkit found (set CUDA_HOME to the directory holding bin/nvcc)"
    return True, f"torch {torch.__version__} (CUDA {torch.version.cuda}), nvcc in {CUDA_HOME}"


def _extension():
    debug = os.environ.get("RNN_EXT_DEBUG", "0") not in ("", "0")
    opt = ["-O0", "-g"] if debug else ["-O3"]
    # -fno-trapping-math: the CPU kernels' float loops (exp in the loss rows, tanh in the
    # forward: csrc/cpu/vec_math.h) vectorise only if GCC may compute both sides of their
    # selects; under the default -ftrapping-math it vectorised them for AVX-512 (masked) but not
    # for AVX2 or SSE, and the cross-entropy ran 4x slower than F.cross_entropy on an AVX2-only
    # AMD EPYC. The flag only lets the compiler ignore floating-point exception flags; IEEE
    # results (NaN, inf, signed zeros, rounding) are unchanged, unlike -ffast-math.
    # -Wno-psabi: the loss rows' vectors (csrc/cpu/vec_math.h, Vec<W>) are wider than the
    # baseline target's registers, and GCC notes that such arguments are passed differently per
    # target. They pass only between functions of one source file (always inlined from -O1 on),
    # all compiled with the same flags, so caller and callee agree.
    cxx = [*opt, "-fopenmp", "-fvisibility=hidden", "-fno-trapping-math", "-Wno-psabi"]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    sources += sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    use_cuda, why = _cuda_decision()
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    if use_cuda and not cuda_sources:
        use_cuda, why = False, "there are no CUDA sources in csrc/cuda"
    if use_cuda and not os.environ.get("TORCH_CUDA_ARCH_LIST") and not torch.cuda.is_available():
        # torch asks the (absent) GPU for its architecture otherwise, and fails.
        os.environ["TORCH_CUDA_ARCH_LIST"] = "9.0"
        why += "; no GPU visible, so TORCH_CUDA_ARCH_LIST=9.0"
    print(f"rnn_ext build: {'C++ and CUDA' if use_cuda else 'C++ only'} ({why})", file=sys.stderr)
    if not use_cuda and os.environ.get("RNN_EXT_REQUIRE_CUDA", "0") not in ("", "0"):
        raise RuntimeError(f"rnn_ext build: RNN_EXT_REQUIRE_CUDA is set, but the CUDA kernels "
                           f"would not be built ({why})")
    kwargs = dict(
        name="rnn_ext._C",
        include_dirs=[os.path.join(HERE, "csrc")],
        extra_link_args=["-fopenmp"],
    )
    if use_cuda:
        nvcc = [*opt, "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension(
            sources=sources + cuda_sources,
            define_macros=[("RNN_EXT_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": nvcc},
            **kwargs,
        )
    return CppExtension(sources=sources, extra_compile_args={"cxx": cxx}, **kwargs)


setup(
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
