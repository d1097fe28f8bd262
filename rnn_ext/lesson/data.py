"""The lesson's data: the character vocabulary, its three datasets, the split and the batches.

Source of every choice: fast.ai 2018 Part 1, Lesson 6, notebook ``lesson6-rnn`` (fastai 0.7),
sections "Setup", "Three char model", "Our first RNN!" and "Multi-output model".

- vocabulary: the sorted distinct characters of the text with ``"\\0"`` inserted at index 0
  (85 entries for ``nietzsche.txt``);
- :func:`char3_dataset`: 3-character windows taken every 3 characters, target the 4th
  (the notebook's ``c1_dat .. c4_dat``, last two dropped: 200,295 rows on the corpus);
- :func:`overlapping_windows`: every 8-character window, target the 9th character
  (``range(len(idx) - cs - 1)``: 600,884 rows);
- :func:`seq_windows`: non-overlapping 8-character inputs and the same windows shifted by one as
  targets (``range(0, len(idx) - cs - 1, cs)``: 75,111 rows);
- :func:`cv_idxs`: fastai's ``get_cv_idxs`` (``np.random.seed(42)``, permutation, first 20%).
"""

from __future__ import annotations

import importlib.resources
from typing import Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "load_nietzsche",
    "read_text",
    "Vocab",
    "char3_dataset",
    "overlapping_windows",
    "seq_windows",
    "cv_idxs",
    "split_by_idx",
    "LessonData",
    "lesson_data",
    "NIETZSCHE_LENGTH",
]

NIETZSCHE_LENGTH = 600_893
"""Number of characters of the bundled ``nietzsche.txt``."""


def load_nietzsche() -> str:
    """The bundled corpus, ``rnn_ext/data/nietzsche.txt`` (600,893 characters, UTF-8), as a str.

    Read through :mod:`importlib.resources`, so it works from a wheel, an sdist or a source tree.
    """
    return (
        importlib.resources.files("rnn_ext").joinpath("data/nietzsche.txt").read_text("utf-8")
    )


def read_text(path: str) -> str:
    """Read a UTF-8 text file.

    Raises:
        FileNotFoundError: ``path`` does not exist (message names it).
        ValueError: ``path`` is a directory or unreadable, the file is not valid UTF-8, or it
            has fewer than 10 characters (too short to make a single 8-character training
            window and its target).
    """
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"--text: no such file: {path!r}") from None
    except IsADirectoryError:
        raise ValueError(f"--text: {path!r} is a directory, not a text file") from None
    except PermissionError:
        raise ValueError(f"--text: {path!r} cannot be read (permission denied)") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"--text: {path!r} is not UTF-8 text ({e})") from None
    if len(text) < 10:
        raise ValueError(f"--text: {path!r} has {len(text)} characters; need at least 10")
    return text


class Vocab:
    """A character vocabulary: index 0 is ``"\\0"`` (padding), then the text's sorted characters.

    Exactly the notebook's ``chars = sorted(list(set(text))); chars.insert(0, "\\0")``.

    Attributes:
        chars: the list of characters; ``chars[i]`` is the character of id ``i``.
        stoi: ``{character: id}``.
    """

    def __init__(self, chars: Sequence[str]):
        chars = list(chars)
        if len(set(chars)) != len(chars) or any(len(c) != 1 for c in chars):
            raise ValueError("Vocab: chars must be distinct single characters")
        self.chars: List[str] = chars
        self.stoi = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_text(cls, text: str) -> "Vocab":
        """The lesson's vocabulary of ``text`` (sorted characters, ``"\\0"`` inserted at 0).

        A ``"\\0"`` already in the text is not duplicated.
        """
        chars = sorted(set(text) - {"\0"})
        chars.insert(0, "\0")
        return cls(chars)

    def __len__(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, Vocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"Vocab({len(self)} characters)"

    def encode(self, text: str) -> Tensor:
        """Character ids of ``text``: int64 tensor of shape ``(len(text),)``.

        Raises:
            ValueError: a character of ``text`` is not in the vocabulary (names it, its position,
                and how many characters the vocabulary has).
        """
        try:
            ids = [self.stoi[c] for c in text]
        except KeyError as e:
            c = e.args[0]
            raise ValueError(
                f"character {c!r} (at position {text.index(c)}) is not in the model's "
                f"vocabulary of {len(self)} characters"
            ) from None
        return torch.tensor(ids, dtype=torch.int64)

    def decode(self, ids: Union[Tensor, Sequence[int]]) -> str:
        """The text of a sequence of ids (a 1-D tensor or list of ints in ``[0, len(self))``).

        Raises:
            ValueError: an id outside ``[0, len(self))``.
        """
        if isinstance(ids, Tensor):
            ids = ids.reshape(-1).tolist()
        out = []
        for i in ids:
            if not 0 <= i < len(self.chars):
                raise ValueError(f"id {i} is outside the vocabulary [0, {len(self.chars)})")
            out.append(self.chars[i])
        return "".join(out)


def _windows(ids: Tensor, starts: Tensor, width: int) -> Tensor:
    """``ids[starts[i] + j]`` for ``j < width``: ``(len(starts), width)`` int64."""
    return ids[starts[:, None] + torch.arange(width)]


def char3_dataset(ids: Tensor) -> Tuple[Tensor, Tensor]:
    """The "Three char model" data: ``xs (N, 3)`` and ``y (N,)``, int64.

    Row ``k`` starts at character ``i = 3k``: inputs ``i, i+1, i+2``, target ``i+3``, for ``i``
    in the notebook's ``range(0, len(idx) - 1 - cs, cs)`` minus the last two (its ``[:-2]``).
    """
    cs = 3
    starts = torch.arange(0, max(len(ids) - 1 - cs, 0), cs)[:-2]
    return _windows(ids, starts, cs), ids[starts + cs]


def overlapping_windows(ids: Tensor, cs: int = 8) -> Tuple[Tensor, Tensor]:
    """Every ``cs``-character window and the character after it: ``xs (N, cs)``, ``y (N,)``.

    ``N = len(ids) - cs - 1`` as the notebook's ``range(len(idx) - cs - 1)`` (600,884 rows for
    the corpus with ``cs = 8``).
    """
    starts = torch.arange(len(ids) - cs - 1)
    return _windows(ids, starts, cs), ids[starts + cs]


def seq_windows(ids: Tensor, cs: int = 8) -> Tuple[Tensor, Tensor]:
    """Non-overlapping ``cs``-character inputs and targets shifted by one: ``xs, ys (N, cs)``.

    Inputs start at ``range(0, len(ids) - cs - 1, cs)``, targets one character later
    (notebook's "Multi-output model": 75,111 rows for the corpus).
    """
    starts = torch.arange(0, len(ids) - cs - 1, cs)
    return _windows(ids, starts, cs), _windows(ids, starts + 1, cs)


def cv_idxs(n: int, val_pct: float = 0.2, seed: int = 42) -> np.ndarray:
    """fastai 0.7's ``get_cv_idxs``: ``np.random.seed(seed); permutation(n)[:int(val_pct * n)]``.

    Uses its own :class:`numpy.random.RandomState` (the same numbers as seeding the global
    generator, without touching it). Returns int64 indices.
    """
    return np.random.RandomState(seed).permutation(n)[: int(val_pct * n)]


def split_by_idx(val_idx, *arrays: Tensor) -> List[Tuple[Tensor, Tensor]]:
    """Split each array's rows into ``(validation, training)``; training keeps the original order.

    Returns one ``(val, trn)`` pair per array.
    """
    val_idx = torch.as_tensor(np.asarray(val_idx), dtype=torch.int64)
    n = len(arrays[0])
    mask = torch.ones(n, dtype=torch.bool)
    mask[val_idx] = False
    return [(a[val_idx], a[mask]) for a in arrays]


class LessonData:
    """Training and validation arrays with the batch size: fastai's ``ColumnarModelData``.

    Args:
        trn_x, val_x: int64 ``(N, T)`` character ids, one row per example (batch first).
        trn_y, val_y: int64 ``(N,)`` (one target) or ``(N, T)`` (a target per step).
        bs: batch size (the lesson's 512).

    Batches are ``(x, y)`` with ``x (B, T)``; the training batches are reshuffled every epoch by
    :meth:`trn_batches` with a :class:`torch.Generator` (repeatable from a seed); the last batch
    may be smaller.
    """

    def __init__(self, trn_x: Tensor, trn_y: Tensor, val_x: Tensor, val_y: Tensor,
                 bs: int = 512, vocab: Optional[Vocab] = None):
        if bs < 1:
            raise ValueError(f"bs must be >= 1, got {bs}")
        if len(trn_x) == 0:
            raise ValueError("no training examples (the text is too short)")
        self.trn_x, self.trn_y, self.val_x, self.val_y = trn_x, trn_y, val_x, val_y
        self.bs = bs
        self.vocab = vocab

    @property
    def seq_len(self) -> int:
        """Characters per example (``T``)."""
        return self.trn_x.shape[1]

    def n_batches(self, train: bool = True) -> int:
        """Number of batches of the training (or validation) set."""
        n = len(self.trn_x if train else self.val_x)
        return (n + self.bs - 1) // self.bs

    def trn_batches(self, generator: Optional[torch.Generator] = None
                    ) -> Iterator[Tuple[Tensor, Tensor]]:
        """Shuffled training batches (``torch.randperm`` with ``generator``)."""
        perm = torch.randperm(len(self.trn_x), generator=generator)
        for i in range(0, len(perm), self.bs):
            idx = perm[i:i + self.bs]
            yield self.trn_x[idx], self.trn_y[idx]

    def val_batches(self) -> Iterator[Tuple[Tensor, Tensor]]:
        """Validation batches in order."""
        for i in range(0, len(self.val_x), self.bs):
            yield self.val_x[i:i + self.bs], self.val_y[i:i + self.bs]


def lesson_data(kind: str, text: Optional[str] = None, bs: int = 512, cs: int = 8,
                vocab: Optional[Vocab] = None, val_pct: float = 0.2,
                seed: int = 42) -> LessonData:
    """One of the lesson's datasets, split and batched as in the notebook.

    Args:
        kind: ``"char3"`` (:func:`char3_dataset`), ``"overlap"`` (:func:`overlapping_windows`)
            or ``"seq"`` (:func:`seq_windows`).
        text: the corpus; the bundled ``nietzsche.txt`` when ``None``.
        bs: batch size. cs: window length for ``"overlap"`` / ``"seq"``.
        vocab: the vocabulary (built from ``text`` when ``None``).
        val_pct, seed: the validation split (:func:`cv_idxs`). The split size follows the
            notebook: ``n = len(xs)`` for ``"char3"`` (the notebook validated on one sample; a
            real split is used here) and ``"overlap"``, ``n = len(xs) - cs - 1`` for ``"seq"``.

    Raises:
        ValueError: unknown ``kind``; ``cs`` not an integer >= 1; ``val_pct`` not in [0, 1);
            a text too short for one window.
    """
    if isinstance(cs, bool) or not isinstance(cs, (int, np.integer)) or cs < 1:
        raise ValueError(f"cs (the window length) must be an integer >= 1, got {cs!r}")
    if not (isinstance(val_pct, (int, float, np.floating)) and 0 <= val_pct < 1):
        raise ValueError(f"val_pct must be a fraction in [0, 1), got {val_pct!r}")
    if text is None:
        text = load_nietzsche()
    if vocab is None:
        vocab = Vocab.from_text(text)
    ids = vocab.encode(text)
    if kind == "char3":
        xs, y = char3_dataset(ids)
        n = len(xs)
    elif kind == "overlap":
        xs, y = overlapping_windows(ids, cs)
        n = len(xs)
    elif kind == "seq":
        xs, y = seq_windows(ids, cs)
        n = max(len(xs) - cs - 1, 0)
    else:
        raise ValueError(f"kind must be 'char3', 'overlap' or 'seq', got {kind!r}")
    if len(xs) < 2:
        raise ValueError(f"the text ({len(text)} characters) is too short for the {kind!r} data")
    val_idx = cv_idxs(n, val_pct, seed)
    (val_x, trn_x), (val_y, trn_y) = split_by_idx(val_idx, xs, y)
    return LessonData(trn_x, trn_y, val_x, val_y, bs=bs, vocab=vocab)
