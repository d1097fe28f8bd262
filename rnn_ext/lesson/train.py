"""The lesson's training loop (fastai 0.7's ``fit`` and ``set_lrs``) and checkpoints.

``fit`` follows fastai 0.7 (``fastai/model.py``): per batch ``zero_grad``, forward, loss,
backward, ``opt.step``; per epoch it prints the epoch, ``trn_loss`` (the debiased exponential
moving average of the batch losses, ``avg = 0.98 avg + 0.02 loss``, shown as
``avg / (1 - 0.98 ** n_batches)``, reset at each ``fit`` call) and ``val_loss`` (the mean of
the validation batches' losses).

Under ``torch.distributed`` (``torchrun``; :mod:`rnn_ext.lesson.distributed`) each global
batch of ``bs`` rows is split across the processes and the loss is scaled so that the averaged
gradient of :class:`~torch.nn.parallel.DistributedDataParallel` equals the gradient of the whole
batch's mean loss: the same steps as one process, up to float rounding. Losses are summed across
processes before they are shown; only rank 0 prints.

Checkpoints are plain dictionaries of tensors and Python types, written atomically and read with
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import math
import os
import pickle
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from .data import LessonData, Vocab
from .models import CharModel, build_model

__all__ = [
    "BETA",
    "set_lrs",
    "debiased_average",
    "EpochStats",
    "fit",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "model_from_checkpoint",
    "unwrap",
]

BETA = 0.98
"""fastai 0.7's ``avg_mom``: the smoothing of the shown training loss."""

CHECKPOINT_FORMAT = "rnn_ext.lesson.checkpoint"
CHECKPOINT_VERSION = 1


def set_lrs(opt: torch.optim.Optimizer, lr: Union[float, Sequence[float], np.ndarray]) -> None:
    """Set the learning rate of every parameter group (fastai 0.7's ``set_lrs``).

    Args:
        opt: any :class:`torch.optim.Optimizer`.
        lr: one rate for all groups, or one per group (a list, tuple, 1-D numpy array or
            tensor, as fastai's differential rates ``np.array([1e-4, 1e-3, 1e-2])``); a sequence
            of one rate applies it to every group, as fastai does.

    Raises:
        ValueError: a sequence whose length is neither 1 nor the number of groups; a rate that
            is negative, NaN or infinite; an array of more than one dimension.
    """
    groups = opt.param_groups
    if isinstance(lr, (np.ndarray, torch.Tensor)):
        if lr.ndim > 1:
            raise ValueError(f"set_lrs: lr must be a number or 1-D, got shape {tuple(lr.shape)}")
        lrs = [float(r) for r in lr.reshape(-1)]  # (a 0-d array: one rate)
    elif isinstance(lr, (list, tuple)):
        lrs = [float(r) for r in lr]
    else:
        lrs = [float(lr)]
    if len(lrs) == 1:
        lrs = lrs * len(groups)
    if len(lrs) != len(groups):
        raise ValueError(f"set_lrs: got {len(lrs)} rates for {len(groups)} parameter groups")
    for r in lrs:
        if not (math.isfinite(r) and r >= 0):
            raise ValueError(f"set_lrs: learning rate must be finite and >= 0, got {r}")
    for g, r in zip(groups, lrs):
        g["lr"] = r


def debiased_average(losses: Sequence[float], beta: float = BETA, avg: float = 0.0,
                     n: int = 0) -> Tuple[float, float, int]:
    """fastai 0.7's shown training loss after more batch ``losses``.

    ``avg = beta * avg + (1 - beta) * loss`` per batch; the shown value is
    ``avg / (1 - beta ** n)`` with ``n`` the number of batches so far.

    Returns:
        ``(shown, avg, n)``; pass ``avg`` and ``n`` back to continue (a ``fit`` call continues
        across its epochs and starts again at ``avg = 0, n = 0``).
    """
    for loss in losses:
        avg = avg * beta + float(loss) * (1 - beta)
        n += 1
    shown = avg / (1 - beta ** n) if n else math.nan
    return shown, avg, n


@dataclass
class EpochStats:
    """One epoch's numbers: ``epoch`` (counted from 1 across ``fit`` calls via
    ``epoch_offset``), ``trn_loss``, ``val_loss`` (nats per character), ``seconds`` (wall clock
    of training and validation), ``chars_per_s`` (training characters per second, all processes)."""

    epoch: int
    trn_loss: float
    val_loss: float
    seconds: float
    chars_per_s: float

    def as_dict(self) -> Dict[str, float]:
        """The fields as a plain dict (what checkpoints store)."""
        return asdict(self)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel (or the model itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _world() -> Tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def _fmt(x: Optional[float]) -> str:
    return "" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def fit(
    model: nn.Module,
    data: LessonData,
    epochs: int,
    opt: torch.optim.Optimizer,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    *,
    seed: Optional[int] = None,
    epoch_offset: int = 0,
    notebook: Optional[Sequence[Optional[Tuple[float, float]]]] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
    header: bool = True,
    on_epoch_end: Optional[Callable[[EpochStats], None]] = None,
) -> List[EpochStats]:
    """Train ``model`` for ``epochs`` epochs (fastai 0.7's ``fit(m, md, epochs, opt, crit)``).

    Args:
        model: maps a batch ``x`` (int64 ``(B, T)``) to log-probabilities; may be wrapped in
            DistributedDataParallel. Batches are moved to its parameters' device.
        data: :class:`~rnn_ext.lesson.data.LessonData`.
        epochs: number of epochs (>= 0).
        opt: the optimizer (its learning rate is used as is; see :func:`set_lrs`).
        loss_fn: ``loss_fn(output, y)`` -> scalar mean loss (``F.nll_loss`` or
            :func:`rnn_ext.seq_nll_loss`).
        seed: shuffles epoch ``e`` with ``torch.Generator().manual_seed(seed * 1000 + e)``
            (repeatable, also across a resume); ``None`` uses the global generator.
        epoch_offset: epochs already trained (numbers the printed epochs and the shuffles).
        notebook: the notebook's ``(trn_loss, val_loss)`` for each epoch of this call, printed
            beside ours (``None`` entries print nothing).
        progress: show a tqdm bar (characters per second) on stderr, on rank 0.
        log: where the per-epoch lines go (``print``); ``None`` prints nothing. Rank 0 only.
        header: print the column names first.
        on_epoch_end: called with each epoch's :class:`EpochStats` on every process.

    Returns:
        One :class:`EpochStats` per epoch.

    Raises:
        ValueError: ``epochs < 0``.
    """
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    rank, world = _world()
    device = _device_of(model)
    inner = unwrap(model)
    log = log if rank == 0 else None
    if log is not None and header:
        nb = "   notebook: trn_loss  val_loss" if notebook is not None else ""
        log(f"{'epoch':>5}  {'trn_loss':>8}  {'val_loss':>8}{nb}")
    avg, n_avg = 0.0, 0
    stats: List[EpochStats] = []
    seq_len = data.seq_len
    for e in range(epochs):
        epoch = epoch_offset + e + 1
        gen = None
        if seed is not None:
            gen = torch.Generator().manual_seed(seed * 1000 + epoch)
        t0 = time.perf_counter()
        model.train()
        n_chars = len(data.trn_x) * seq_len
        bar = tqdm(total=n_chars, unit="char", unit_scale=True, file=sys.stderr, leave=False,
                   desc=f"epoch {epoch}", disable=not progress or rank != 0, mininterval=0.5)
        batch_losses: List[Tensor] = []
        for i, (x, y) in enumerate(data.trn_batches(gen)):
            n = len(x)
            if world > 1:
                xs, ys = x.tensor_split(world), y.tensor_split(world)
                x_r, y_r = xs[rank], ys[rank]
            else:
                x_r, y_r = x, y
            n_r = len(x_r)
            if n_r == 0:  # fewer rows than processes: take part with a zero-weight row
                x_r, y_r = x[:1], y[:1]
            x_r = x_r.to(device, non_blocking=True)
            y_r = y_r.to(device, non_blocking=True)
            loss = loss_fn(model(x_r), y_r)
            weight = n_r / n  # this process's share of the global batch's mean loss
            opt.zero_grad(set_to_none=True)
            (loss * (weight * world)).backward()  # DDP divides the summed gradients by world
            opt.step()
            batch_losses.append(loss.detach() * weight)
            if not bar.disable:
                bar.update(n * seq_len)
                if i % 20 == 0:
                    bar.set_postfix(loss=f"{_running(batch_losses) * world:.3f}", refresh=False)
        bar.close()
        losses = torch.stack(batch_losses).float()
        if world > 1:
            dist.all_reduce(losses)
        trn_loss, avg, n_avg = debiased_average(losses.tolist(), BETA, avg, n_avg)
        t_train = time.perf_counter() - t0
        val_loss = _validate(inner, data, loss_fn, rank, world, device)
        seconds = time.perf_counter() - t0
        st = EpochStats(epoch, trn_loss, val_loss, seconds, n_chars / max(t_train, 1e-9))
        stats.append(st)
        if log is not None:
            line = f"{epoch:>5}  {trn_loss:8.4f}  {_fmt(val_loss):>8}"
            ref = notebook[e] if notebook is not None and e < len(notebook) else None
            if ref is not None:
                line += f"   {'':9} {_fmt(ref[0]):>8}  {_fmt(ref[1]):>8}"
            line += f"   ({seconds:.1f}s, {st.chars_per_s / 1e3:.0f}k char/s)"
            log(line)
        if on_epoch_end is not None:
            on_epoch_end(st)
    return stats


def _running(batch_losses: List[Tensor]) -> float:
    """The debiased average over the last (up to 50) batches, for the progress bar only
    (this process's share of the batch under distributed training)."""
    shown, _, _ = debiased_average(torch.stack(batch_losses[-50:]).tolist())
    return shown


@torch.no_grad()
def _validate(model: nn.Module, data: LessonData, loss_fn, rank: int, world: int,
              device: torch.device) -> float:
    """Mean over the validation batches of each batch's mean loss (nan without validation data)."""
    if len(data.val_x) == 0:
        return math.nan
    model.eval()
    per_batch = []
    for x, y in data.val_batches():
        n = len(x)
        if world > 1:
            x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
        if len(x) == 0:
            per_batch.append(torch.zeros((), device=device))
            continue
        loss = loss_fn(model(x.to(device, non_blocking=True)), y.to(device, non_blocking=True))
        per_batch.append(loss.float() * (len(x) / n))
    losses = torch.stack(per_batch)
    if world > 1:
        dist.all_reduce(losses)
    model.train()
    return float(losses.mean())


# ---------------------------------------------------------------------------------------------
# Checkpoints


class CheckpointError(RuntimeError):
    """A file that is not a readable rnn_ext lesson checkpoint (corrupt, truncated, foreign, or
    holding objects that ``torch.load(weights_only=True)`` refuses)."""


def save_checkpoint(path: str, model: nn.Module, vocab: Vocab, *,
                    optimizer: Optional[torch.optim.Optimizer] = None,
                    train: Optional[Dict[str, object]] = None) -> None:
    """Write a checkpoint atomically: the previous file at ``path`` survives any failure.

    The checkpoint is a dict of tensors and plain Python types only, so that
    :func:`load_checkpoint` can read it with ``torch.load(weights_only=True)``:
    ``{"format", "version", "config" (the model's :attr:`~CharModel.config`), "vocab" (str: the
    characters in id order), "state_dict" (CPU tensors), "optimizer" (its state_dict or None),
    "train" (dict of plain values: schedule, epochs done, history, ...)}``.

    It is written with :func:`torch.save` to a temporary file in the same directory, flushed to
    disk (``fsync``) and moved over ``path`` with :func:`os.replace` (atomic on POSIX and
    Windows). On an exception the temporary file is removed and the exception re-raised.

    Raises:
        OSError: the directory cannot be written.
    """
    inner = unwrap(model)
    obj = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": dict(inner.config),
        "vocab": "".join(vocab.chars),
        "state_dict": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "train": dict(train or {}),
    }
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp",
                               dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def load_checkpoint(path: str, map_location: Union[str, torch.device] = "cpu") -> Dict:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Uses ``torch.load(path, weights_only=True)``: only tensors and plain Python types are
    unpickled, so a checkpoint can never run code.

    Returns:
        The checkpoint dict (see :func:`save_checkpoint`).

    Raises:
        FileNotFoundError: no file at ``path``.
        CheckpointError: the file is corrupt or truncated, holds other objects (refused by
            ``weights_only``), or is not an rnn_ext lesson checkpoint.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint not found: {path!r}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        blocked = [ln for ln in lines if "GLOBAL" in ln]
        if blocked:
            raise CheckpointError(
                f"{path!r}: refused: it holds objects other than tensors and plain Python "
                f"values, which could run code (torch.load weights_only=True: {blocked[0]})"
            ) from None
        detail = lines[-2] if len(lines) >= 2 else (lines[0] if lines else "")
        raise CheckpointError(
            f"{path!r} is not a readable checkpoint (corrupt or not a torch.save file?): "
            f"{detail}"
        ) from None
    except Exception as e:  # zip errors, truncation, EOF: torch raises several types
        raise CheckpointError(
            f"{path!r} is not a readable checkpoint (corrupt or truncated?): "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
        ) from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path!r} is not an rnn_ext lesson checkpoint")
    for key, typ in (("config", dict), ("vocab", str), ("state_dict", dict)):
        if not isinstance(ckpt.get(key), typ):
            raise CheckpointError(f"{path!r}: checkpoint lacks a valid {key!r} entry")
    if ckpt.get("version", 0) > CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path!r}: checkpoint version {ckpt['version']} is newer than this rnn_ext "
            f"understands ({CHECKPOINT_VERSION})"
        )
    return ckpt


def model_from_checkpoint(ckpt: Union[str, Dict],
                          device: Union[str, torch.device, None] = None
                          ) -> Tuple[CharModel, Vocab, Dict]:
    """Rebuild the model and vocabulary of a checkpoint (a path or a loaded dict).

    Returns:
        ``(model, vocab, ckpt)``: the model in eval mode on ``device`` (CPU by default) with
        ``model.vocab`` set, the :class:`~rnn_ext.lesson.data.Vocab`, the checkpoint dict.

    Raises:
        FileNotFoundError, CheckpointError: as :func:`load_checkpoint`; also a checkpoint whose
        weights do not fit its configuration.
    """
    path = ckpt if not isinstance(ckpt, dict) else "checkpoint"
    if not isinstance(ckpt, dict):
        ckpt = load_checkpoint(ckpt)
    try:
        model = build_model(ckpt["config"])
        model.load_state_dict(ckpt["state_dict"])
        vocab = Vocab(list(ckpt["vocab"]))
    except (ValueError, RuntimeError, KeyError) as e:
        raise CheckpointError(f"{path!r}: inconsistent checkpoint: {e}") from None
    if len(vocab) != model.vocab_size:
        raise CheckpointError(
            f"{path!r}: vocabulary has {len(vocab)} characters but the model {model.vocab_size}"
        )
    model.vocab = vocab
    if device is not None:
        model.to(device)
    model.eval()
    return model, vocab, ckpt
