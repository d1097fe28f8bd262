"""``python -m rnn_ext train / generate / lesson`` on a tiny text, their errors, and torchrun."""

import os
import re
import signal
import subprocess
import sys

import pytest
import torch

from rnn_ext.cli import main
from rnn_ext.lesson.data import load_nietzsche
from rnn_ext.lesson.train import load_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--n-hidden", "16", "--n-fac", "6", "--no-progress", "--threads", "1"]


@pytest.fixture(autouse=True, scope="module")
def _restore_threads():
    n = torch.get_num_threads()  # main() sets --threads for the whole process
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("txt") / "tiny.txt"
    p.write_text(load_nietzsche()[:4000], encoding="utf-8")
    return str(p)


@pytest.fixture(scope="module")
def ckpt(text_file, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("ck") / "m.pt")
    assert main(["train", "--text", text_file, "--epochs", "2", "--out", out] + SMALL) == 0
    return out


def _epoch_lines(out):
    return [ln.split() for ln in out.splitlines() if re.match(r"^\s+\d+\s+\d+\.\d{4}", ln)]


def test_train_writes_checkpoint_and_prints_epochs(ckpt, text_file, capsys, tmp_path):
    c = load_checkpoint(ckpt)
    assert c["config"]["model"] == "CharSeqRnn" and c["config"]["n_hidden"] == 16
    assert c["train"]["epochs_done"] == 4 and c["train"]["recipe"] == "seq-identity"
    out = str(tmp_path / "again.pt")
    assert main(["train", "--text", text_file, "--epochs", "1", "--lr", "0.01", "--out", out,
                 "--model", "rnn"] + SMALL) == 0
    printed = capsys.readouterr().out
    assert "CharRnn" in printed and "checkpoint: " + out in printed
    assert len(_epoch_lines(printed)) == 1
    assert load_checkpoint(out)["config"]["model"] == "CharRnn"


def test_train_resume(text_file, tmp_path, capsys):
    out = str(tmp_path / "r.pt")
    assert main(["train", "--model", "seq", "--text", text_file, "--epochs", "1", "--out",
                 out] + SMALL) == 0
    capsys.readouterr()
    # continue the same schedule with 2 epochs per phase: epochs 3 and 4 are left to do
    assert main(["train", "--resume", out, "--text", text_file, "--epochs", "2"] + SMALL) == 0
    printed = capsys.readouterr().out
    assert [ln[0] for ln in _epoch_lines(printed)] == ["3", "4"]
    c = load_checkpoint(out)
    assert c["train"]["epochs_done"] == 4 and c["train"]["recipe"] == "seq"
    assert [h["epoch"] for h in c["train"]["history"]] == [1, 2, 3, 4]


def test_resume_takes_the_checkpoints_run_sizes_and_seed(text_file, tmp_path, capsys):
    """A resume that names only the checkpoint ends with the weights of the uninterrupted run
    of the same seed (7, not the default 42: the shuffles depend on it) and records that seed;
    a --model, --n-hidden or --n-fac other than the checkpoint's is an error, not ignored."""
    base = ["--text", text_file, "--no-progress", "--threads", "1"]
    sizes = ["--n-hidden", "16", "--n-fac", "6"]
    full, part = str(tmp_path / "full.pt"), str(tmp_path / "part.pt")
    assert main(["train", "--seed", "7", "--epochs", "1", "1", "--out", full] + base + sizes) == 0
    assert main(["train", "--seed", "7", "--epochs", "1", "0", "--out", part] + base + sizes) == 0
    assert main(["train", "--epochs", "1", "1", "--resume", part] + base) == 0
    a, b = load_checkpoint(full), load_checkpoint(part)
    assert b["train"]["seed"] == 7 and b["train"]["epochs_done"] == 2
    for k in a["state_dict"]:
        assert torch.equal(a["state_dict"][k], b["state_dict"][k]), k
    capsys.readouterr()
    for extra, words in ((["--model", "rnn"], "continues the run 'seq-identity'"),
                         (["--n-hidden", "64"], "has n_hidden = 16, not 64"),
                         (["--n-fac", "5"], "has n_fac = 6, not 5")):
        assert main(["train", "--resume", part] + extra + base) == 2
        err = capsys.readouterr().err
        assert words in err, err


def test_train_checks_out_first_and_says_when_nothing_was_written(text_file, tmp_path,
                                                                    capsys):
    """--out a folder is an error before any training (no epoch line printed; a new folder is
    made); lesson --markdown a folder, or in a folder that does not exist, too; --epochs 0
    says that no checkpoint was written (it was said to be)."""
    assert main(["train", "--text", text_file, "--epochs", "1", "--out", str(tmp_path)]
                + SMALL) == 2
    got = capsys.readouterr()
    assert "is a directory" in got.err and not _epoch_lines(got.out), got
    new = tmp_path / "new" / "x.pt"
    assert main(["train", "--text", text_file, "--epochs", "1", "--out", str(new)] + SMALL) == 0
    assert new.is_file()
    capsys.readouterr()
    for md, words in ((str(tmp_path), "is a directory"),
                      (str(tmp_path / "no" / "t.md"), "does not exist")):
        assert main(["lesson", "--rows", "char3", "--markdown", md] + SMALL) == 2
        got = capsys.readouterr()
        assert words in got.err and not _epoch_lines(got.out), got
    out = tmp_path / "e0.pt"
    assert main(["train", "--text", text_file, "--epochs", "0", "--out", str(out)] + SMALL) == 0
    assert "no checkpoint written" in capsys.readouterr().out and not out.exists()
    assert main(["train", "--text", str(tmp_path), "--out", str(out)] + SMALL) == 2
    assert "is a directory" in capsys.readouterr().err


def test_generate(ckpt, capsys):
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "The ", "-n", "50"]) == 0
    text = capsys.readouterr().out.rstrip("\n")
    assert text.startswith("The ") and len(text) == 54
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "The ", "-n", "20",
                 "--greedy", "--window"]) == 0
    assert len(capsys.readouterr().out.rstrip("\n")) == 24


def test_generate_into_a_closed_pipe_exits_quietly(ckpt):
    """`python -m rnn_ext generate ... | head`: the reader closes the pipe; no traceback."""
    p = subprocess.Popen([sys.executable, "-m", "rnn_ext", "generate", "--checkpoint", ckpt,
                          "--prompt", "The ", "-n", "200"], cwd=ROOT, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE)
    p.stdout.close()  # the reader is gone before anything is written
    err = p.stderr.read().decode()
    assert p.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_generate_errors(ckpt, tmp_path, capsys):
    assert main(["generate", "--checkpoint", ckpt, "--prompt", "caf\u00e9"]) == 2
    err = capsys.readouterr().err
    assert "error" in err and "'\u00e9'" in err and "vocabulary" in err
    assert main(["generate", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(open(ckpt, "rb").read()[:300])
    assert main(["generate", "--checkpoint", str(bad)]) == 2
    assert "not a readable checkpoint" in capsys.readouterr().err
    for t in ("0", "inf", "nan"):
        with pytest.raises(SystemExit):
            main(["generate", "--checkpoint", ckpt, "--temperature", t])
    assert "finite number > 0" in capsys.readouterr().err


def test_train_errors(tmp_path, capsys):
    assert main(["train", "--text", str(tmp_path / "nope.txt"), "--out",
                 str(tmp_path / "x.pt")] + SMALL) == 2
    assert "no such file" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("abc", encoding="utf-8")
    assert main(["train", "--text", str(short), "--out", str(tmp_path / "x.pt")] + SMALL) == 2
    assert "need at least 10" in capsys.readouterr().err
    assert main(["train", "--lr", "0.1", "0.2", "--epochs", "1", "2", "3", "--out",
                 str(tmp_path / "x.pt")] + SMALL) == 2
    assert "--lr has 2 values" in capsys.readouterr().err


def test_lesson_rows_and_table(text_file, capsys, tmp_path):
    md = tmp_path / "t.md"
    assert main(["lesson", "--rows", "char3", "concat", "--text", text_file, "--epochs", "1",
                 "--markdown", str(md)] + SMALL) == 0
    out = capsys.readouterr().out
    assert out.index("Char3Model") < out.index("CharLoopConcatModel")
    table = md.read_text()
    assert table.count("\n") == 4 and "| Char3Model |" in table
    assert "| CharLoopConcatModel |" in table


def _run(args, timeout=240):
    """Run a command in its own process group; on a timeout kill the whole group (torchrun's
    workers too) and fail."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    p = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        pytest.fail(f"timed out after {timeout}s: {args}")
    return subprocess.CompletedProcess(args, p.returncode, out, err)


def test_auto_device_under_torchrun_with_more_ranks_than_gpus(monkeypatch):
    from rnn_ext.lesson.recipes import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("LOCAL_RANK", "1")  # not under torchrun: LOCAL_RANK is not ours
    assert resolve_device("auto") == torch.device("cuda", 0)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    assert resolve_device("auto") == torch.device("cuda", 0)
    for rank in ("1", "-1"):
        monkeypatch.setenv("LOCAL_RANK", rank)
        with pytest.raises(ValueError, match=rf"local rank {rank}, but only 1 CUDA device.*"
                                             r"--device cpu"):
            resolve_device("auto")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ValueError, match=r"LOCAL_RANK='x' is not an integer"):
        resolve_device("auto")


def test_python_m_rnn_ext_help():
    r = _run([sys.executable, "-m", "rnn_ext", "--help"])
    assert r.returncode == 0 and "train" in r.stdout and "generate" in r.stdout


def _help(command):
    from rnn_ext.cli import build_parser
    sub = build_parser()._subparsers._group_actions[0].choices[command]
    return " ".join(sub.format_help().split())  # argparse wraps at the terminal's width


def test_subcommand_help_names_only_their_own_options():
    train, generate, lesson = _help("train"), _help("generate"), _help("lesson")
    assert "--resume: the checkpoint's" in train and "--resume" not in lesson
    assert "--resume" not in generate  # its --seed is its own
    assert "Write text with a checkpoint" in generate and "Train the notebook's six" in lesson
    assert "(default: all)" in generate  # --top-k
    # both list the notebook's runs in the notebook's order
    order = "{char3,loop,concat,rnn,seq,seq-identity}"
    assert f"--model {order}" in train and f"--rows {order}" in lesson


def test_torchrun_two_processes_same_losses(text_file, tmp_path):
    # torchrun of this interpreter's torch (a `torchrun` on PATH may belong to another Python),
    # on the CPU (gloo) also on a machine with one GPU, where 2 processes would need 2 GPUs.
    args = ["-m", "rnn_ext", "train", "--text", text_file, "--epochs", "2", "--bs", "64",
            "--device", "cpu"] + SMALL
    one = _run([sys.executable] + args + ["--out", str(tmp_path / "one.pt")])
    assert one.returncode == 0, one.stderr
    two = _run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                "--nproc_per_node=2"] + args + ["--out", str(tmp_path / "two.pt")])
    assert two.returncode == 0, two.stderr
    assert "2 processes" in two.stdout
    l1, l2 = _epoch_lines(one.stdout), _epoch_lines(two.stdout)
    assert len(l1) == len(l2) == 4  # only rank 0 prints
    for a, b in zip(l1, l2):
        assert float(a[1]) == pytest.approx(float(b[1]), abs=2e-4)
        assert float(a[2]) == pytest.approx(float(b[2]), abs=2e-4)
    s1 = load_checkpoint(tmp_path / "one.pt")["state_dict"]
    s2 = load_checkpoint(tmp_path / "two.pt")["state_dict"]
    for k in s1:
        torch.testing.assert_close(s1[k], s2[k], rtol=1e-3, atol=1e-4)
