"""fit, set_lrs, the shown losses, repeatability, checkpoints (atomic, weights_only), resume,
and DistributedDataParallel on two processes (gloo) against one process."""

import math
import os
import pathlib
import socket

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import rnn_ext
from rnn_ext.lesson import train as train_mod
from rnn_ext.lesson.data import lesson_data, load_nietzsche
from rnn_ext.lesson.models import CharRnn, CharSeqRnn
from rnn_ext.lesson.recipes import RECIPES, train_recipe
from rnn_ext.lesson.train import (BETA, CheckpointError, debiased_average, fit, load_checkpoint,
                                  model_from_checkpoint, save_checkpoint, set_lrs)

TEXT = load_nietzsche()[:6000]


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _small(cls=CharSeqRnn, seed=0):
    d = lesson_data("seq" if cls is CharSeqRnn else "overlap", TEXT, bs=64)
    torch.manual_seed(seed)
    m = cls(len(d.vocab), 8, 24)
    return d, m


def test_set_lrs():
    p = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    opt = torch.optim.Adam([{"params": p[:1]}, {"params": p[1:]}], 1e-3)
    set_lrs(opt, 0.5)
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    set_lrs(opt, [0.1, 0.2])
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.2]
    set_lrs(opt, np.array([0.3, 0.4]))  # fastai's differential rates are numpy arrays
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.4]
    set_lrs(opt, torch.tensor([0.5, 0.6], dtype=torch.float64))
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.6]
    assert all(type(g["lr"]) is float for g in opt.param_groups)
    set_lrs(opt, [0.1])  # one rate in a sequence: every group, as fastai.core.set_lrs
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.1]
    set_lrs(opt, np.float32(0.25))
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]
    with pytest.raises(ValueError, match="3 rates for 2 parameter groups"):
        set_lrs(opt, [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="3 rates for 2 parameter groups"):
        set_lrs(opt, np.array([0.1, 0.2, 0.3]))
    with pytest.raises(ValueError, match=r"1-D, got shape \(2, 1\)"):
        set_lrs(opt, np.array([[0.1], [0.2]]))
    for bad in (-0.1, float("nan"), float("inf"), [0.1, float("nan")]):
        with pytest.raises(ValueError, match="finite and >= 0"):
            set_lrs(opt, bad)
    assert [g["lr"] for g in opt.param_groups] == [0.25, 0.25]  # a refused call changes nothing


def test_debiased_average_is_fastai():
    losses = [3.0, 2.0, 2.5, 1.0]
    avg = 0.0
    for i, l in enumerate(losses, 1):
        avg = avg * 0.98 + l * 0.02
        expected = avg / (1 - 0.98 ** i)
    shown, a, n = debiased_average(losses)
    assert n == 4 and math.isclose(shown, expected) and math.isclose(a, avg)
    assert debiased_average([5.0])[0] == pytest.approx(5.0)  # debiased: the first loss itself
    # continuing gives the same as all at once
    s1, a1, n1 = debiased_average(losses[:2])
    assert debiased_average(losses[2:], BETA, a1, n1)[0] == pytest.approx(shown)


def test_fit_prints_learns_and_is_repeatable(capsys):
    d, m = _small()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    stats = fit(m, d, 3, opt, rnn_ext.seq_nll_loss, seed=1, progress=False,
                notebook=[(2.5, 2.4), None, (1.0, 1.1)])
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[:3] == ["epoch", "trn_loss", "val_loss"] and "notebook:" in out[0]
    assert out[1].split()[:5] == ["1", f"{stats[0].trn_loss:.4f}", f"{stats[0].val_loss:.4f}",
                                  "2.5000", "2.4000"]
    assert [s.epoch for s in stats] == [1, 2, 3]
    assert stats[-1].val_loss < stats[0].val_loss < math.log(len(d.vocab))
    # val_loss is the mean over the validation batches of each batch's mean loss
    m.eval()
    with torch.no_grad():
        per = [float(rnn_ext.seq_nll_loss(m(x), y)) for x, y in d.val_batches()]
    assert stats[-1].val_loss == pytest.approx(sum(per) / len(per), rel=1e-6)
    d2, m2 = _small()
    stats2 = fit(m2, d2, 3, torch.optim.Adam(m2.parameters(), 1e-2), rnn_ext.seq_nll_loss,
                 seed=1, progress=False, log=None)
    assert [s.trn_loss for s in stats2] == [s.trn_loss for s in stats]
    for a, b in zip(m.parameters(), m2.parameters()):
        assert torch.equal(a, b)


def test_fit_trn_loss_is_the_debiased_average_of_batch_losses():
    d, m = _small(CharRnn)
    losses = []

    def loss_fn(out, y):
        loss = F.nll_loss(out, y)
        losses.append(float(loss.detach()))
        return loss

    opt = torch.optim.SGD(m.parameters(), 0.1)
    stats = fit(m, d, 2, opt, loss_fn, seed=0, progress=False, log=None)
    n1 = d.n_batches()
    val_n = d.n_batches(train=False)
    trn_losses = losses[:n1] + losses[n1 + val_n:2 * n1 + val_n]
    assert stats[0].trn_loss == pytest.approx(debiased_average(trn_losses[:n1])[0], rel=1e-6)
    assert stats[1].trn_loss == pytest.approx(debiased_average(trn_losses)[0], rel=1e-6)


# ---- checkpoints --------------------------------------------------------------------------

def test_checkpoint_roundtrip(tmp_path):
    d, m = _small()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    fit(m, d, 1, opt, rnn_ext.seq_nll_loss, progress=False, log=None)
    path = tmp_path / "c.pt"
    save_checkpoint(path, m, d.vocab, optimizer=opt, train={"epochs_done": 1})
    ckpt = load_checkpoint(path)
    assert ckpt["vocab"] == "".join(d.vocab.chars) and ckpt["train"]["epochs_done"] == 1
    m2, vocab, _ = model_from_checkpoint(str(path))
    assert vocab == d.vocab and m2.vocab == d.vocab and not m2.training
    x = d.val_x[:5]
    m.eval()
    with torch.no_grad():
        torch.testing.assert_close(m2(x), m(x), rtol=0, atol=0)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    d, m = _small()
    path = tmp_path / "c.pt"
    save_checkpoint(path, m, d.vocab)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    with torch.no_grad():
        for p in m.parameters():
            p.add_(1.0)

    def crashing_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 half a zip file")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(train_mod.torch, "save", crashing_save)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, m, d.vocab)
    monkeypatch.undo()
    sd = load_checkpoint(path)["state_dict"]
    for k, v in before.items():
        assert torch.equal(sd[k], v)
    assert [p.name for p in tmp_path.iterdir()] == ["c.pt"]  # no temporary file left


def test_checkpoint_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(bad)
    d, m = _small()
    good = tmp_path / "good.pt"
    save_checkpoint(good, m, d.vocab)
    data = good.read_bytes()
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(trunc)
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(2)}, other)
    with pytest.raises(CheckpointError, match="not an rnn_ext lesson checkpoint"):
        load_checkpoint(other)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def test_checkpoint_cannot_run_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"format": train_mod.CHECKPOINT_FORMAT, "config": {}, "vocab": "ab",
                "state_dict": {}, "x": _Evil(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(evil)
    assert not marker.exists()


def test_resume_continues_exactly(tmp_path):
    rec = RECIPES["seq-identity"]
    kw = dict(text=TEXT, bs=64, n_fac=8, n_hidden=24, progress=False, log=None, device="cpu")
    full = train_recipe(rec, lrs=[0.01], epochs=[3], out=str(tmp_path / "full.pt"), **kw)
    part = train_recipe(rec, lrs=[0.01], epochs=[1], out=str(tmp_path / "part.pt"), **kw)
    resumed = train_recipe(rec, lrs=[0.01], epochs=[3], out=str(tmp_path / "part.pt"),
                           resume=str(tmp_path / "part.pt"), **kw)
    assert [h.epoch for h in resumed.history] == [1, 2, 3]
    assert resumed.history[0] == part.history[0]
    for a, b in zip(full.model.parameters(), resumed.model.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [h.val_loss for h in resumed.history[1:]] == [h.val_loss for h in full.history[1:]]
    assert load_checkpoint(tmp_path / "part.pt")["train"]["epochs_done"] == 3


# ---- DistributedDataParallel, 2 processes, gloo --------------------------------------------

def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, bs, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", rank=rank, world_size=world)
    try:
        d, m = _small()
        d.bs = bs
        ddp = torch.nn.parallel.DistributedDataParallel(m)
        opt = torch.optim.Adam(ddp.parameters(), 1e-2)
        stats = fit(ddp, d, 2, opt, rnn_ext.seq_nll_loss, seed=3, progress=False, log=None)
        torch.save({"stats": [s.as_dict() for s in stats], "state": m.state_dict()},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


@pytest.mark.parametrize("bs", [64, 51])  # 51: odd global batches split 26 + 25
def test_ddp_two_processes_match_one(tmp_path, bs):
    torch.multiprocessing.spawn(_ddp_worker, args=(2, _free_port(), bs, str(tmp_path)),
                                nprocs=2, join=True)
    d, m = _small()
    d.bs = bs
    stats = fit(m, d, 2, torch.optim.Adam(m.parameters(), 1e-2), rnn_ext.seq_nll_loss, seed=3,
                progress=False, log=None)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        for s, g in zip(stats, got["stats"]):
            assert g["trn_loss"] == pytest.approx(s.trn_loss, rel=1e-4)
            assert g["val_loss"] == pytest.approx(s.val_loss, rel=1e-4)
        for k, v in m.state_dict().items():
            torch.testing.assert_close(got["state"][k], v, rtol=1e-4, atol=1e-5)
