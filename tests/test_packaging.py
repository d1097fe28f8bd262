"""The source distribution (MANIFEST.in) carries every file a build and the tests need: without
MANIFEST.in, setuptools took the extension's .cpp / .cu sources from setup.py but none of the
headers they include, so `pip install rnn_ext-*.tar.gz` could not compile."""
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Tracked files a source distribution leaves out on purpose: CI's script, git's own settings and
# the committed benchmark results (data, not sources).
NOT_SHIPPED = (".ci/", ".gitignore", "benchmarks/results/")


def _tracked_files():
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout of rnn_ext")
    out = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True,
                         check=True)
    return [f for f in out.stdout.splitlines() if (ROOT / f).is_file()]


@pytest.mark.slow
def test_sdist_carries_every_source_header_and_test(tmp_path):
    tracked = _tracked_files()
    src = tmp_path / "src"  # a copy, so that the checkout gets no egg-info or dist/
    for f in tracked:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    subprocess.run([sys.executable, "setup.py", "-q", "sdist", "--dist-dir", str(tmp_path)],
                   cwd=src, check=True, capture_output=True)
    (archive,) = tmp_path.glob("rnn_ext-*.tar.gz")
    with tarfile.open(archive) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    want = [f for f in tracked if not f.startswith(NOT_SHIPPED)]
    assert any(f.endswith(".cuh") for f in want) and any(f.endswith(".h") for f in want)
    missing = [f for f in want if f not in names]
    assert not missing, f"tracked files missing from the sdist (see MANIFEST.in): {missing}"
    stray = sorted(n for n in names if n.endswith((".so", ".o", ".pyc")))
    assert not stray, f"build products in the sdist: {stray}"
