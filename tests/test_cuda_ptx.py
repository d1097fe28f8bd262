"""A check of the persistent kernels' generated code that needs nvcc but no GPU.

The persistent kernels (csrc/cuda/elman_kernels.cuh) read, after each grid barrier, state that
other blocks wrote earlier in the same launch. The CUDA memory model makes such reads see those
writes only through the coherent path: plain (weak) or ``.cg`` loads after the barrier's
acquire. A load through the read-only, non-coherent data cache (PTX ``ld.global.nc``: what
``__ldg`` emits, and what the compiler may emit for a ``const __restrict__`` pointer it proves
unwritten in the kernel) can return stale data on the device. The host emulation of the kernels
(tests/cuda_emu) has no caches and cannot show this, so this test compiles csrc/cuda/elman_cuda.cu
to PTX for sm_90 and requires that no persistent kernel (and not the grid-barrier kernel)
contains a non-coherent load. Reference: PTX ISA, "Memory Consistency Model" and the ``ld``
instruction's ``.nc`` qualifier.

Skipped when nvcc is not found (CUDA_HOME, else /usr/local/cuda) or torch has no CUDA (the
build then compiles no CUDA sources either).
"""

from __future__ import annotations

import os
import re
import subprocess
import sysconfig
from pathlib import Path

import pytest
import torch
import torch.utils.cpp_extension as cpp_ext

ROOT = Path(__file__).resolve().parents[1]
NVCC = Path(os.environ.get("CUDA_HOME") or "/usr/local/cuda") / "bin" / "nvcc"
DTYPES = ("d", "f", "N3c104HalfE", "N3c108BFloat16E")  # mangled template arguments
TILES = ((1, 1), (1, 2), (2, 2), (4, 4))  # kTiles in csrc/cuda/persistent_plan.h

pytestmark = [
    pytest.mark.skipif(not NVCC.is_file(), reason=f"nvcc not found at {NVCC}"),
    pytest.mark.skipif(torch.version.cuda is None, reason="torch built without CUDA"),
]


@pytest.fixture(scope="module")
def ptx_entries(tmp_path_factory) -> dict[str, str]:
    """The .entry functions of elman_cuda.cu's PTX for sm_90: mangled name -> body."""
    out = tmp_path_factory.mktemp("ptx") / "elman_cuda.ptx"
    includes = [f"-I{p}" for p in cpp_ext.include_paths()]
    includes += [f"-I{ROOT / 'csrc'}", f"-I{sysconfig.get_paths()['include']}"]
    cmd = [str(NVCC), "-ptx", "-arch=compute_90", "-std=c++20", "-O3", "-DRNN_EXT_WITH_CUDA=1",
           "-DTORCH_API_INCLUDE_EXTENSION_H", "-DTORCH_EXTENSION_NAME=_C",
           *cpp_ext.COMMON_NVCC_FLAGS, *includes, str(ROOT / "csrc/cuda/elman_cuda.cu"),
           "-o", str(out)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, f"nvcc failed:\n{res.stderr[-4000:]}"
    ptx = out.read_text()
    entries = {}
    for chunk in re.split(r"\n(?=(?:\.visible |\.weak )?\.(?:entry|func)\b)", ptx):
        m = re.match(r"(?:\.visible |\.weak )?\.entry\s+(\w+)\(", chunk)
        if m:
            entries[m.group(1)] = chunk
    return entries


def _nc_loads(body: str) -> int:
    return len(re.findall(r"\bld\.global\.nc\b", body))


def test_persistent_kernels_make_no_non_coherent_loads(ptx_entries):
    persistent = {n: b for n, b in ptx_entries.items() if "persistent_" in n}
    # Every instantiation is there (a parse that found nothing would pass the check below).
    for kind in ("25persistent_forward_kernel", "26persistent_backward_kernel"):
        for dt in DTYPES:
            for rb, rj in TILES:
                name = f"_ZN7rnn_ext11cuda_detail{kind}I{dt}Li{rb}ELi{rj}EEEvNS0_14PersistentArgsE"
                assert name in persistent, f"{name} not in the PTX"
    barrier = [n for n in ptx_entries if "grid_barrier_kernel" in n]
    assert len(barrier) == 1
    for name in [*persistent, *barrier]:
        body = ptx_entries[name]
        assert _nc_loads(body) == 0, (
            f"{name}: {_nc_loads(body)} ld.global.nc (non-coherent) loads; data another block "
            f"wrote in this launch must be read with plain or .cg loads (load_cg)")
        # Positive control: the reads of other blocks' state are there, as .cg loads.
        assert re.search(r"\bld\.global\.cg\b", body), f"{name}: no ld.global.cg load"
        # No calls out of the kernel, where a load would escape this check.
        assert not re.search(r"\bcall(\.uni)?\b", body), f"{name} calls a function"


def test_check_sees_non_coherent_loads(ptx_entries):
    """The pattern does find .nc loads where they are allowed: the cuBLAS path's per-step
    kernels read only buffers that no thread of the launch writes (const __restrict__)."""
    step = [b for n, b in ptx_entries.items() if "backward_step_kernel" in n]
    assert len(step) == len(DTYPES)
    assert all(_nc_loads(b) > 0 for b in step)
