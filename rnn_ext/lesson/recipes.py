"""The lesson's six training runs ("rows"), with the notebook's schedules and numbers, and the
driver that trains one (used by ``python -m rnn_ext train`` and ``lesson``).

The notebook's numbers are the per-epoch ``[epoch, trn_loss, val_loss]`` lines printed in
fast.ai's ``courses/dl1/lesson6-rnn.ipynb`` (fastai 0.7, 2018). Char3Model's notebook
validation set was one sample (``val_idxs=[-1]``), so its val_loss is not comparable; a real
20% split is used here and the row compares trn_loss.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

import rnn_ext

from .data import LessonData, Vocab, lesson_data, read_text
from .models import MODELS, N_FAC, N_HIDDEN, CharModel, identity_init_
from .train import (EpochStats, fit, load_checkpoint, model_from_checkpoint, save_checkpoint,
                    set_lrs, unwrap)

__all__ = ["Recipe", "RECIPES", "LESSON_ROWS", "loss_for", "train_recipe", "TrainResult",
           "setup_distributed", "resolve_device"]


@dataclass(frozen=True)
class Recipe:
    """One of the notebook's training runs.

    Attributes:
        key: command-line name (``--model``).
        title: the row's name in the lesson's table.
        model: class name in :data:`~rnn_ext.lesson.models.MODELS`.
        data: dataset kind for :func:`~rnn_ext.lesson.data.lesson_data`.
        identity: ``rnn.weight_hh_l0 = I`` before training.
        schedule: ``((lr, epochs), ...)``: Adam, ``set_lrs`` between the phases.
        notebook: the notebook's ``(trn_loss, val_loss)`` per epoch (``val_loss`` ``None`` where
            it is not comparable).
        compare: ``"val_loss"`` or ``"trn_loss"``: the number checked against the notebook.
    """

    key: str
    title: str
    model: str
    data: str
    identity: bool
    schedule: Tuple[Tuple[float, int], ...]
    notebook: Tuple[Tuple[float, Optional[float]], ...]
    compare: str = "val_loss"

    @property
    def cs(self) -> int:
        """Characters per example."""
        return 3 if self.data == "char3" else 8


RECIPES: Dict[str, Recipe] = {r.key: r for r in [
    Recipe("char3", "Char3Model", "Char3Model", "char3", False,
           ((1e-2, 1), (1e-3, 1)),
           ((2.09627, None), (1.84525, None)), compare="trn_loss"),
    Recipe("loop", "CharLoopModel", "CharLoopModel", "overlap", False,
           ((1e-2, 1), (1e-3, 1)),
           ((2.02986, 1.99268), (1.73588, 1.75103))),
    Recipe("concat", "CharLoopConcatModel", "CharLoopConcatModel", "overlap", False,
           ((1e-3, 1), (1e-4, 1)),
           ((1.81654, 1.78501), (1.69008, 1.69936))),
    Recipe("rnn", "CharRnn", "CharRnn", "overlap", False,
           ((1e-3, 4), (1e-4, 2)),
           ((1.86065, 1.84255), (1.68014, 1.67387), (1.58828, 1.59169), (1.52989, 1.54942),
            (1.46841, 1.50966), (1.46482, 1.5039))),
    Recipe("seq", "CharSeqRnn", "CharSeqRnn", "seq", False,
           ((1e-3, 4), (1e-4, 1)),
           ((2.59241, 2.40251), (2.28474, 2.19859), (2.13883, 2.08836), (2.04892, 2.01564),
            (1.99819, 2.00106))),
    Recipe("seq-identity", "CharSeqRnn, W_hh = I", "CharSeqRnn", "seq", True,
           ((1e-2, 4), (1e-3, 4)),
           ((2.39428, 2.21111), (2.10381, 2.03275), (1.99451, 1.96393), (1.93492, 1.91763),
            (1.84035, 1.85742), (1.82896, 1.84887), (1.81879, 1.84281), (1.81337, 1.83801))),
]}
"""The notebook's runs by ``--model`` name."""

LESSON_ROWS: List[str] = ["char3", "loop", "concat", "rnn", "seq", "seq-identity"]
"""The order of the lesson's table (the notebook's order)."""


def loss_for(model: nn.Module) -> Callable:
    """``rnn_ext.seq_nll_loss`` for the multi-output model, ``F.nll_loss`` otherwise."""
    return rnn_ext.seq_nll_loss if getattr(unwrap(model), "multi_output", False) else F.nll_loss


def resolve_device(device: Optional[str]) -> torch.device:
    """``"auto"``/``None``: CUDA when available (this process's ``LOCAL_RANK`` GPU under
    torchrun, else GPU 0), else CPU. Otherwise ``torch.device(device)``.

    Raises:
        ValueError: a CUDA device asked for without CUDA, an unknown device string, or (auto,
            under torchrun) a ``LOCAL_RANK`` with no GPU of that index, or a ``WORLD_SIZE`` /
            ``LOCAL_RANK`` that is not an integer.
    """
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return _local_rank_gpu("--device auto")
        return torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"--device: {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine")
    return dev


def _env_int(name: str, default: int) -> int:
    """An integer environment variable (torchrun's WORLD_SIZE, LOCAL_RANK); ValueError naming
    it when it is set to something else."""
    raw = os.environ.get(name, "")
    try:
        return int(raw) if raw.strip() else default
    except ValueError:
        raise ValueError(f"environment variable {name}={raw!r} is not an integer") from None


def _local_rank_gpu(what: str) -> torch.device:
    """Under torchrun (``WORLD_SIZE > 1``) ``cuda:LOCAL_RANK``, else ``cuda:0``. ValueError naming
    ``what`` when LOCAL_RANK is not a GPU index of this machine (torchrun started more
    processes per node than there are GPUs, or a negative rank)."""
    if _env_int("WORLD_SIZE", 1) <= 1:
        return torch.device("cuda", 0)
    rank, count = _env_int("LOCAL_RANK", 0), torch.cuda.device_count()
    if not 0 <= rank < count:
        raise ValueError(
            f"{what}: this process is torchrun's local rank {rank}, but only {count} CUDA "
            f"device(s) are visible (indices 0..{count - 1}); start at most {count} process(es) "
            f"per node (--nproc_per_node) or pass --device cpu")
    return torch.device("cuda", rank)


def setup_distributed(device: torch.device) -> Tuple[int, int, torch.device]:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE > 1`` in the
    environment): NCCL on CUDA, gloo on CPU. Returns ``(rank, world_size, device)`` (on CUDA the
    device becomes ``cuda:LOCAL_RANK``). Without torchrun: ``(0, 1, device)``.

    Raises:
        ValueError: on CUDA, a ``LOCAL_RANK`` with no GPU of that index.
    """
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return 0, 1, device
    if device.type == "cuda":
        device = _local_rank_gpu(f"--device {device}")
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), dist.get_world_size(), device


@dataclass
class TrainResult:
    """What :func:`train_recipe` returns: the trained model (unwrapped), its vocabulary, the
    epochs' :class:`~rnn_ext.lesson.train.EpochStats` (a resumed run's included), the
    wall-clock seconds, the recipe, the schedule and ``epochs_run``, the epochs this call
    trained (each wrote the checkpoint ``out``)."""

    model: CharModel
    vocab: Vocab
    history: List[EpochStats]
    seconds: float
    recipe: Recipe
    schedule: List[Tuple[float, int]] = field(default_factory=list)
    epochs_run: int = 0


def _schedule(recipe: Recipe, lrs: Optional[Sequence[float]],
              epochs: Optional[Sequence[int]]) -> List[Tuple[float, int]]:
    """The phases ``[(lr, epochs), ...]``: the recipe's, with ``lrs`` / ``epochs`` replacing its
    rates / epoch counts (one value applies to every phase; otherwise one per phase)."""
    given = "--lr" if lrs is not None else "--epochs"
    both = lrs is not None and epochs is not None
    base_lrs = [lr for lr, _ in recipe.schedule]
    base_eps = [n for _, n in recipe.schedule]
    lrs = list(lrs) if lrs is not None else None
    epochs = list(epochs) if epochs is not None else None
    if lrs is not None and epochs is not None:
        if len(lrs) == 1:
            lrs = lrs * len(epochs)
        if len(epochs) == 1:
            epochs = epochs * len(lrs)
    else:
        if lrs is None:
            lrs = base_lrs
        if epochs is None:
            epochs = base_eps
        if len(lrs) == 1:
            lrs = lrs * len(epochs)
        if len(epochs) == 1:
            epochs = epochs * len(lrs)
    if len(lrs) != len(epochs):
        if both:
            raise ValueError(f"--lr has {len(lrs)} values and --epochs {len(epochs)}; give one "
                             "value or one per phase")
        n = len(lrs) if given == "--lr" else len(epochs)
        raise ValueError(f"{given} has {n} values but the schedule has {len(base_lrs)} phases; "
                         "give one value, one per phase, or both --lr and --epochs")
    for lr, n in zip(lrs, epochs):
        if not lr > 0:
            raise ValueError(f"--lr must be > 0, got {lr}")
        if n < 0:
            raise ValueError(f"--epochs must be >= 0, got {n}")
    return [(float(lr), int(n)) for lr, n in zip(lrs, epochs)]


def train_recipe(
    recipe: Optional[Recipe] = None,
    *,
    text: Optional[str] = None,
    text_path: Optional[str] = None,
    bs: Optional[int] = None,
    lrs: Optional[Sequence[float]] = None,
    epochs: Optional[Sequence[int]] = None,
    device: Optional[str] = None,
    seed: Optional[int] = None,
    n_fac: Optional[int] = None,
    n_hidden: Optional[int] = None,
    out: Optional[str] = None,
    resume: Optional[str] = None,
    progress: bool = True,
    log: Optional[Callable[[str], None]] = print,
) -> TrainResult:
    """Train one of the notebook's runs and optionally checkpoint it after every epoch.

    Args:
        recipe: a :class:`Recipe` (see :data:`RECIPES`); ``None``: the ``resume``
            checkpoint's, else ``RECIPES["seq-identity"]``.
        text / text_path: the corpus (a str, or a UTF-8 file); the bundled ``nietzsche.txt``
            when both are ``None``.
        bs: global batch size (split across processes under torchrun); default 512.
        lrs, epochs: the schedule's phases (default: the recipe's); one value applies to every
            phase.
        device: ``"auto"`` (default), ``"cpu"``, ``"cuda"``, ``"cuda:1"``.
        seed: ``torch.manual_seed(seed)`` before the weights are made; shuffles depend on it
            (``None``: the ``resume`` checkpoint's, else 42).
        n_fac, n_hidden: model sizes (``None``: the lesson's 42, 256; on resume the
            checkpoint's).
        out: checkpoint path, written atomically after every epoch (rank 0); ``None``: none.
        resume: a checkpoint to continue from: its run (recipe), model sizes, weights,
            optimizer state, vocabulary, and (unless given) its schedule, batch size, seed and
            text file; training continues after the epochs it had done, with the shuffles an
            uninterrupted run would have made. (The printed ``trn_loss`` is a running average
            that restarts, so the first resumed epoch's can differ from the uninterrupted
            run's; the weights and ``val_loss`` do not.)
        progress: tqdm bar on stderr. log: per-epoch lines (``None``: silent).

    Returns:
        :class:`TrainResult`.

    Raises:
        ValueError: bad schedule, device, sizes or text; on resume, a ``recipe``, ``n_fac`` or
            ``n_hidden`` given that is not the checkpoint's.
        FileNotFoundError, CheckpointError: an unreadable ``resume`` checkpoint or text file.
    """
    t0 = time.perf_counter()
    ckpt = None
    done = 0
    history: List[EpochStats] = []
    if resume is not None:
        ckpt = load_checkpoint(resume)
        info = ckpt.get("train", {})
        saved = RECIPES.get(info.get("recipe"))
        if recipe is not None and saved is not None and recipe.key != saved.key:
            raise ValueError(f"--resume: {resume!r} continues the run {saved.key!r} "
                             f"({saved.title}), not {recipe.key!r}; leave --model out")
        recipe = saved or recipe  # the checkpoint's run continues
        if recipe is None:
            raise ValueError(f"--resume: {resume!r} does not say which run it holds; give "
                             f"--model")
        if ckpt["config"].get("model") != recipe.model:
            raise ValueError(f"--resume: {resume!r} holds a {ckpt['config'].get('model')}, "
                             f"not a {recipe.model}")
        for name, given in (("n_fac", n_fac), ("n_hidden", n_hidden)):
            if given is not None and given != ckpt["config"][name]:
                raise ValueError(f"--resume: {resume!r} has {name} = {ckpt['config'][name]}, "
                                 f"not {given}; leave --{name.replace('_', '-')} out")
        if seed is None:
            seed = int(info.get("seed", 42))
        if lrs is None and epochs is None and info.get("schedule"):
            sched = [tuple(p) for p in info["schedule"]]
            lrs, epochs = [p[0] for p in sched], [p[1] for p in sched]
        if bs is None:
            bs = int(info.get("bs", 512))
        if text is None and text_path is None:
            text_path = info.get("text_path")
        done = int(info.get("epochs_done", 0))
        history = [EpochStats(**h) for h in info.get("history", [])]
        n_fac, n_hidden = ckpt["config"]["n_fac"], ckpt["config"]["n_hidden"]
    if recipe is None:
        recipe = RECIPES["seq-identity"]
    if bs is None:
        bs = 512
    seed = 42 if seed is None else seed
    n_fac = N_FAC if n_fac is None else n_fac
    n_hidden = N_HIDDEN if n_hidden is None else n_hidden
    schedule = _schedule(recipe, lrs, epochs)
    default_run = (text is None and text_path is None and bs == 512
                   and schedule == [tuple(p) for p in recipe.schedule])
    if text is None and text_path is not None:
        text = read_text(text_path)
    dev = resolve_device(device)
    rank, world, dev = setup_distributed(dev)
    if log is not None and rank != 0:
        log = None

    torch.manual_seed(seed)
    vocab = Vocab(list(ckpt["vocab"])) if ckpt is not None else None
    data: LessonData = lesson_data(recipe.data, text, bs=bs, cs=recipe.cs, vocab=vocab)
    vocab = data.vocab
    if ckpt is not None:
        model, _, _ = model_from_checkpoint(ckpt)
        model.train()
    else:
        model = MODELS[recipe.model](len(vocab), n_fac, n_hidden)
        if recipe.identity:
            identity_init_(model)
    model.vocab = vocab
    model.to(dev)
    inner = model
    if world > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    opt = torch.optim.Adam(model.parameters(), schedule[0][0] if schedule else 1e-3)
    if ckpt is not None and ckpt.get("optimizer") is not None:
        opt.load_state_dict(ckpt["optimizer"])
    loss_fn = loss_for(inner)

    if log is not None:
        where = f"{world} processes, " if world > 1 else ""
        log(f"{recipe.title}: {len(data.trn_x):,} training and {len(data.val_x):,} validation "
            f"examples of {data.seq_len} characters, vocab {len(vocab)}, bs {bs}, "
            f"{where}{dev.type}; schedule "
            + ", ".join(f"{lr:g} x{n}" for lr, n in schedule))

    def checkpoint(st: EpochStats) -> None:
        history.append(st)
        if out is not None and rank == 0:
            save_checkpoint(out, inner, vocab, optimizer=opt, train={
                "recipe": recipe.key, "schedule": [list(p) for p in schedule],
                "epochs_done": st.epoch, "bs": bs, "seed": seed, "text_path": text_path,
                "history": [h.as_dict() for h in history],
            })

    done_before = len(history)
    first = 0
    header = True
    for lr, n in schedule:
        skip = min(n, max(done - first, 0))
        first_epoch = first + skip
        first += n
        if n - skip == 0:
            continue
        set_lrs(opt, lr)
        ref = None
        if default_run:
            ref = list(recipe.notebook[first_epoch:first])
            if recipe.compare == "trn_loss":
                ref = [(t, None) for t, _ in ref]
        fit(model, data, n - skip, opt, loss_fn, seed=seed, epoch_offset=first_epoch,
            notebook=ref if default_run else None, progress=progress, log=log, header=header,
            on_epoch_end=checkpoint)
        header = False
    inner.eval()
    return TrainResult(inner, vocab, history, time.perf_counter() - t0, recipe, schedule,
                       epochs_run=len(history) - done_before)
