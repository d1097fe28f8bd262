"""The character models of fast.ai 2018 Part 1 Lesson 6 (notebook ``lesson6-rnn``), on rnn_ext.

Each class keeps the notebook's parameter names (``e``, ``l_in``, ``l_hidden``, ``l_out``,
``rnn``) and computes the notebook's formula exactly (float rounding aside); the recurrences run
on rnn_ext's fused operators instead of a Python loop of PyTorch layers:

==========================  ===========================================================
model                       recurrence and operator
==========================  ===========================================================
Char3Model, CharLoopModel   ``h = tanh(l_hidden(h + relu(l_in(e(c)))))``: an Elman
                            recurrence in disguise, one :func:`rnn_ext.ops.elman_rnn`
CharLoopConcatModel         ``h = tanh(l_hidden(relu(l_in(cat(h, e(c))))))``: two layers
                            per step; the first is an Elman cell, :func:`rnn_ext.ops.elman_cell`
CharRnn, CharSeqRnn         :class:`rnn_ext.RNN` in place of ``nn.RNN``
==========================  ===========================================================

Inputs are int64 character ids ``x`` of shape ``(B, T)`` (the notebook passes the ``T``
columns as separate arguments; a row here is one example). Outputs are log-probabilities
(``log_softmax``) over the vocabulary: ``(B, V)`` for the single-output models, ``(T, B, V)``
for :class:`CharSeqRnn`.

Every model also has ``init_hidden(bs)`` and ``step(c, h) -> (log_probs (B, V), h)``, one
character with the hidden state carried (:mod:`rnn_ext.lesson.generate` uses it to generate at
constant work per character); ``step`` runs on :func:`rnn_ext.ops.elman_cell`.
"""

from __future__ import annotations

from typing import Dict, Tuple, Type

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnn_ext
from rnn_ext.ops import elman_cell, elman_rnn

__all__ = [
    "N_HIDDEN",
    "N_FAC",
    "CharModel",
    "Char3Model",
    "CharLoopModel",
    "CharLoopConcatModel",
    "CharRnn",
    "CharSeqRnn",
    "identity_init_",
    "MODELS",
    "build_model",
]

N_HIDDEN = 256
"""The lesson's hidden size."""
N_FAC = 42
"""The lesson's embedding size (number of latent factors per character)."""


def _check_ids(x: Tensor, vocab_size: int, name: str = "x") -> None:
    if not isinstance(x, Tensor) or x.dim() != 2 or x.dtype != torch.int64:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = getattr(x, "dtype", None)
        raise ValueError(
            f"{name}: expected int64 character ids of shape (B, T), got {shape} of {dtype}"
        )
    if x.shape[1] == 0:
        raise ValueError(f"{name}: expected at least one character per row, got shape "
                         f"{tuple(x.shape)}")


class CharModel(nn.Module):
    """Base of the lesson's models: vocabulary size, sizes, and the checkpoint ``config``.

    Subclasses set ``multi_output`` (``True``: forward returns a prediction per step,
    ``(T, B, V)``; ``False``: one prediction, ``(B, V)``).
    """

    multi_output = False

    def __init__(self, vocab_size: int, n_fac: int = N_FAC, n_hidden: int = N_HIDDEN):
        super().__init__()
        if vocab_size < 1 or n_fac < 1 or n_hidden < 1:
            raise ValueError(
                f"vocab_size, n_fac and n_hidden must be >= 1, got {vocab_size}, {n_fac}, "
                f"{n_hidden}"
            )
        self.vocab_size, self.n_fac, self.n_hidden = vocab_size, n_fac, n_hidden

    @property
    def config(self) -> Dict[str, object]:
        """``{"model": name, "vocab_size", "n_fac", "n_hidden"}``: what rebuilds the model."""
        return {"model": type(self).__name__, "vocab_size": self.vocab_size,
                "n_fac": self.n_fac, "n_hidden": self.n_hidden}

    def init_hidden(self, bs: int) -> Tensor:
        """Zero hidden state ``(bs, n_hidden)`` on the model's device and dtype."""
        w = next(self.parameters())
        return w.new_zeros(bs, self.n_hidden)


class _AddLoopModel(CharModel):
    """``h_t = tanh(l_hidden(h_{t-1} + relu(l_in(e(c_t)))))``, ``h_0 = 0``; the last ``h`` -> l_out.

    This is an Elman recurrence in disguise: with ``x_t = relu(l_in(e(c_t)))`` and
    ``W = l_hidden.weight``, ``l_hidden(h + x) = x W^T + h W^T + b``, so it is
    :func:`rnn_ext.ops.elman_rnn` with ``weight_ih = weight_hh = l_hidden.weight``,
    ``bias_ih = None``, ``bias_hh = l_hidden.bias`` and tanh. Autograd adds the two gradients of
    the shared weight, so training is exact too.
    """

    def __init__(self, vocab_size: int, n_fac: int = N_FAC, n_hidden: int = N_HIDDEN):
        super().__init__(vocab_size, n_fac, n_hidden)
        self.e = nn.Embedding(vocab_size, n_fac)
        self.l_in = nn.Linear(n_fac, n_hidden)
        self.l_hidden = nn.Linear(n_hidden, n_hidden)
        self.l_out = nn.Linear(n_hidden, vocab_size)

    def _inputs(self, c: Tensor) -> Tensor:
        return F.relu(self.l_in(self.e(c)))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: int64 ``(B, T)`` ids. Returns log-probabilities of the next character, ``(B, V)``.

        Raises:
            ValueError: ``x`` is not an int64 ``(B, T)`` tensor with ``T >= 1``.
        """
        _check_ids(x, self.vocab_size)
        inp = self._inputs(x.t())  # (T, B, n_hidden)
        w = self.l_hidden.weight
        _, h = elman_rnn(inp, self.init_hidden(x.shape[0]), w, w, None, self.l_hidden.bias)
        return F.log_softmax(self.l_out(h), dim=-1)

    def step(self, c: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        """One character ``c`` (int64 ``(B,)``) from state ``h`` ``(B, n_hidden)``.

        Returns ``(log_probs (B, V), new h)``; runs on :func:`rnn_ext.ops.elman_cell`.
        """
        w = self.l_hidden.weight
        h = elman_cell(self._inputs(c), h, w, w, None, self.l_hidden.bias)
        return F.log_softmax(self.l_out(h), dim=-1), h


class Char3Model(_AddLoopModel):
    """The notebook's "Three char model": characters 1-3 predict the 4th.

    Notebook: ``in_k = relu(l_in(e(c_k)))``; ``h = 0``; three times ``h = tanh(l_hidden(h +
    in_k))``; ``log_softmax(l_out(h))``. Computed as one :func:`rnn_ext.ops.elman_rnn` over the
    three steps (see :class:`_AddLoopModel` for why it is an Elman recurrence).

    Args: vocab_size (85 for the corpus), n_fac (42), n_hidden (256).
    Forward: ``x`` int64 ``(B, 3)`` (any ``T >= 1`` is accepted) -> ``(B, vocab_size)``.
    """


class CharLoopModel(_AddLoopModel):
    """The notebook's first RNN, ``CharLoopModel``: 8 characters predict the 9th.

    Notebook: ``h = 0``; for each character ``inp = relu(l_in(e(c))); h = tanh(l_hidden(h +
    inp))``; ``log_softmax(l_out(h))``. This is an Elman recurrence in disguise (the square
    matrix ``l_hidden.weight`` applies to ``h + input``): one :func:`rnn_ext.ops.elman_rnn` with
    ``weight_ih = weight_hh = l_hidden.weight``, bias ``l_hidden.bias`` (the fused op's input
    projection is one GEMM over all steps).

    Args: vocab_size, n_fac, n_hidden. Forward: ``x (B, T)`` int64 -> ``(B, vocab_size)``.
    """


class CharLoopConcatModel(CharModel):
    """The notebook's ``CharLoopConcatModel``: concatenate the state and the input, not add.

    Notebook: ``h = 0``; for each character ``inp = cat((h, e(c)), 1); inp = relu(l_in(inp));
    h = tanh(l_hidden(inp))``; ``log_softmax(l_out(h))``.

    Two layers per step, so not one Elman recurrence; its first layer is an Elman cell:
    ``l_in(cat(h, x)) = x W_x^T + h W_h^T + b`` with ``W_h = l_in.weight[:, :n_hidden]`` and
    ``W_x = l_in.weight[:, n_hidden:]`` (the column blocks of the one matrix), so each step is
    ``u = elman_cell(e(c), h, W_x, W_h, l_in.bias, nonlinearity="relu")`` (fused) followed by
    ``h = tanh(l_hidden(u))``.

    Args: vocab_size, n_fac, n_hidden. Forward: ``x (B, T)`` int64 -> ``(B, vocab_size)``.
    """

    def __init__(self, vocab_size: int, n_fac: int = N_FAC, n_hidden: int = N_HIDDEN):
        super().__init__(vocab_size, n_fac, n_hidden)
        self.e = nn.Embedding(vocab_size, n_fac)
        self.l_in = nn.Linear(n_fac + n_hidden, n_hidden)
        self.l_hidden = nn.Linear(n_hidden, n_hidden)
        self.l_out = nn.Linear(n_hidden, vocab_size)

    def _blocks(self) -> Tuple[Tensor, Tensor]:
        w = self.l_in.weight
        return w[:, self.n_hidden:].contiguous(), w[:, :self.n_hidden].contiguous()

    def _step(self, x: Tensor, h: Tensor, w_x: Tensor, w_h: Tensor) -> Tensor:
        u = elman_cell(x, h, w_x, w_h, self.l_in.bias, None, "relu")
        return torch.tanh(self.l_hidden(u))

    def forward(self, x: Tensor) -> Tensor:
        """``x``: int64 ``(B, T)`` ids. Returns log-probabilities of the next character, ``(B, V)``.

        Raises:
            ValueError: ``x`` is not an int64 ``(B, T)`` tensor with ``T >= 1``.
        """
        _check_ids(x, self.vocab_size)
        emb = self.e(x.t())  # (T, B, n_fac)
        w_x, w_h = self._blocks()
        h = self.init_hidden(x.shape[0])
        for t in range(emb.shape[0]):
            h = self._step(emb[t], h, w_x, w_h)
        return F.log_softmax(self.l_out(h), dim=-1)

    def step(self, c: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        """One character ``c`` (int64 ``(B,)``) from state ``h``: ``(log_probs (B, V), new h)``."""
        w_x, w_h = self._blocks()
        h = self._step(self.e(c), h, w_x, w_h)
        return F.log_softmax(self.l_out(h), dim=-1), h


class _RnnModel(CharModel):
    """Embedding, :class:`rnn_ext.RNN` (tanh, one layer) and ``l_out``: the nn.RNN models."""

    def __init__(self, vocab_size: int, n_fac: int = N_FAC, n_hidden: int = N_HIDDEN):
        super().__init__(vocab_size, n_fac, n_hidden)
        self.e = nn.Embedding(vocab_size, n_fac)
        self.rnn = rnn_ext.RNN(n_fac, n_hidden)
        self.l_out = nn.Linear(n_hidden, vocab_size)

    def _outputs(self, x: Tensor) -> Tensor:
        _check_ids(x, self.vocab_size)
        h = self.init_hidden(x.shape[0]).unsqueeze(0)
        outp, _ = self.rnn(self.e(x.t()), h)
        return outp  # (T, B, n_hidden)

    def step(self, c: Tensor, h: Tensor) -> Tuple[Tensor, Tensor]:
        """One character ``c`` (int64 ``(B,)``) from state ``h`` ``(B, n_hidden)``.

        Returns ``(log_probs (B, V), new h)``; the RNN's step is :func:`rnn_ext.ops.elman_cell`
        on its ``l0`` weights.
        """
        r = self.rnn
        h = elman_cell(self.e(c), h, r.weight_ih_l0, r.weight_hh_l0, r.bias_ih_l0, r.bias_hh_l0)
        return F.log_softmax(self.l_out(h), dim=-1), h


class CharRnn(_RnnModel):
    """The notebook's ``CharRnn`` ("RNN with pytorch"): 8 characters predict the 9th.

    Notebook: ``outp, h = nn.RNN(n_fac, n_hidden)(e(stack(cs)), zeros)``;
    ``log_softmax(l_out(outp[-1]))``, with :class:`rnn_ext.RNN` in place of ``nn.RNN`` (same
    parameters ``rnn.weight_ih_l0`` ... and state dict).

    Args: vocab_size, n_fac, n_hidden. Forward: ``x (B, T)`` int64 -> ``(B, vocab_size)``.
    """

    def forward(self, x: Tensor) -> Tensor:
        """``x``: int64 ``(B, T)``. Returns log-probabilities of character ``T + 1``, ``(B, V)``."""
        return F.log_softmax(self.l_out(self._outputs(x)[-1]), dim=-1)


class CharSeqRnn(_RnnModel):
    """The notebook's multi-output ``CharSeqRnn``: a prediction after every character.

    Notebook: ``outp, h = nn.RNN(...)(e(stack(cs)), zeros)``; ``log_softmax(l_out(outp))``,
    with :class:`rnn_ext.RNN`. Trained with :func:`rnn_ext.seq_nll_loss` (the notebook's
    ``nll_loss_seq``) against targets ``(B, T)``.

    Args: vocab_size, n_fac, n_hidden. Forward: ``x (B, T)`` int64 -> ``(T, B, vocab_size)``.
    """

    multi_output = True

    def forward(self, x: Tensor) -> Tensor:
        """``x``: int64 ``(B, T)``. Returns log-probabilities ``(T, B, V)`` of each next char."""
        return F.log_softmax(self.l_out(self._outputs(x)), dim=-1)


def identity_init_(model: _RnnModel) -> _RnnModel:
    """The notebook's "Identity init!": ``rnn.weight_hh_l0 <- I`` (in place; returns the model).

    Source: Le, Jaitly and Hinton 2015, "A Simple Way to Initialize Recurrent Networks of
    Rectified Linear Units", as used in the notebook (``m.rnn.weight_hh_l0.data.copy_(
    torch.eye(n_hidden))``).

    Raises:
        TypeError: the model has no ``rnn`` (only CharRnn and CharSeqRnn have one).
    """
    if not isinstance(getattr(getattr(model, "rnn", None), "weight_hh_l0", None), Tensor):
        raise TypeError(f"identity_init_: {type(model).__name__} has no .rnn to initialise")
    with torch.no_grad():
        model.rnn.weight_hh_l0.copy_(torch.eye(model.n_hidden))
    return model


MODELS: Dict[str, Type[CharModel]] = {
    "Char3Model": Char3Model,
    "CharLoopModel": CharLoopModel,
    "CharLoopConcatModel": CharLoopConcatModel,
    "CharRnn": CharRnn,
    "CharSeqRnn": CharSeqRnn,
}
"""The lesson's models by class name (the ``"model"`` entry of a checkpoint's config)."""


def build_model(config: Dict[str, object]) -> CharModel:
    """A fresh model from a ``config`` (:attr:`CharModel.config`).

    Raises:
        ValueError: unknown ``config["model"]`` or missing sizes.
    """
    name = config.get("model")
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; expected one of {sorted(MODELS)}")
    try:
        return MODELS[name](int(config["vocab_size"]), int(config["n_fac"]),
                            int(config["n_hidden"]))
    except KeyError as e:
        raise ValueError(f"model config lacks {e.args[0]!r}") from None
