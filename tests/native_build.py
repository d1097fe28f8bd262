"""Builds the tests' own C++ modules (torch.utils.cpp_extension.load) in a build directory of
their own per module, Python and torch version."""

from __future__ import annotations

import os
import shutil
import sys
import time
import warnings
from pathlib import Path

import torch

STALE_LOCK_S = 15 * 60  # a build of a test module takes about a minute, 3 on a busy machine


def missing_build_requirement(*needed: Path) -> str | None:
    """Why the tests' own C++ modules cannot be built here, or None when they can: they
    compile sources of the checkout (`needed`, files under csrc/ or tests/) with the system's
    C++ compiler, which an installed package without its checkout, or a machine without `c++`,
    lacks. For a skip reason."""
    if any(not Path(p).is_file() for p in needed) or shutil.which("c++") is None:
        return "needs the source checkout (csrc/) and a C++ compiler"
    return None


def load_test_module(name, sources, include_dirs, extra_cflags):
    """Compiles `sources` into the Python module `name` (~1 min cold, cached after) and imports
    it. Its build directory is per torch version: torch up to 2.13 or so waits while a file
    named `lock` exists there (FileBaton), newer torch leaves that file behind after every build
    (it holds an OS lock on it instead), so a shared directory made the older torch wait
    forever. Where the torch in use waits on the file, a lock older than STALE_LOCK_S (left by a
    build killed midway) is removed, with a warning. RNN_EXT_EMU_VERBOSE=1 shows the build."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "torch_extensions")
    py = f"py{sys.version_info.major}{sys.version_info.minor}"
    build_dir = Path(root) / f"{name}_{py}_torch{torch.__version__.replace('+', '_')}"
    build_dir.mkdir(parents=True, exist_ok=True)
    lock = build_dir / "lock"
    if hasattr(cpp_extension, "FileBaton"):  # this torch waits while the file exists
        try:
            age = time.time() - lock.stat().st_mtime
        except FileNotFoundError:
            age = 0.0
        if age > STALE_LOCK_S:
            warnings.warn(f"removing a stale build lock {lock} (a build killed midway?)")
            lock.unlink(missing_ok=True)
    return cpp_extension.load(
        name=name,
        sources=[str(s) for s in sources],
        extra_include_paths=[str(d) for d in include_dirs],
        extra_cflags=list(extra_cflags),
        build_directory=str(build_dir),
        verbose=os.environ.get("RNN_EXT_EMU_VERBOSE", "0") not in ("", "0"),
    )
