"""The python/ lesson scripts: all compile and import rnn_ext; the setup section runs."""

import glob
import os
import py_compile
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = sorted(glob.glob(os.path.join(ROOT, "python", "lesson6_*.py")))


def test_one_script_per_notebook_section():
    names = [os.path.basename(s) for s in SCRIPTS]
    assert names == ["lesson6_0_setup.py", "lesson6_1_three_char_model.py",
                     "lesson6_2_first_rnn.py", "lesson6_3_rnn_with_pytorch.py",
                     "lesson6_4_multi_output.py", "lesson6_5_identity_init.py"]
    for s in SCRIPTS:
        py_compile.compile(s, doraise=True)
        assert "rnn_ext" in open(s, encoding="utf-8").read()


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_help_prints_the_docstring_and_trains_nothing(script):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "Run: python python/" + os.path.basename(script) in r.stdout
    assert "--threads" in r.stdout
    assert "epoch" not in r.stdout and "corpus length" not in r.stdout


def test_negative_threads_is_a_usage_error():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, SCRIPTS[0], "--threads", "-1"], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "--threads must be >= 0, got -1" in r.stderr
    assert "corpus length" not in r.stdout


def test_setup_script_prints_the_notebooks_values():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, SCRIPTS[0]], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "corpus length: 600893" in r.stdout and "total chars: 85" in r.stdout
    assert "[40, 42, 29, 30, 25, 27, 29, 1, 1, 1]" in r.stdout
