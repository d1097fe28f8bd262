"""Writing text with a trained character model.

- :func:`get_next` / :func:`get_next_n`: the notebook's greedy functions (``lesson6-rnn``, "Test
  model"): the model re-reads the last window of characters from a zero state for every new
  character and the most likely character is taken.
- :func:`generate`: sampling (temperature, top-k) or greedy, *stateful*: the hidden state is
  carried from character to character with the models' ``step`` (on
  :func:`rnn_ext.ops.elman_cell`), so each new character costs one step, whatever the length.
  With ``stateful=False`` it re-reads the last ``window`` characters instead, like the notebook.
"""

from __future__ import annotations

import functools
import math
from typing import Optional

import torch
from torch import Tensor

from .data import Vocab, load_nietzsche
from .models import CharModel

__all__ = ["get_next", "get_next_n", "sample_next", "generate", "default_vocab"]


@functools.lru_cache(maxsize=1)
def default_vocab() -> Vocab:
    """The vocabulary of the bundled corpus (85 characters), as the notebook's ``chars``."""
    return Vocab.from_text(load_nietzsche())


def _vocab_of(model: CharModel, vocab: Optional[Vocab]) -> Vocab:
    """``vocab``, else ``model.vocab``, else the bundled corpus's; ValueError when its size is
    not the model's ``vocab_size`` (a model trained on another text, without its vocabulary:
    its ids would be read as other characters, or fall outside the embedding)."""
    if vocab is None:
        vocab = getattr(model, "vocab", None)
        if vocab is None:
            vocab = default_vocab()
            where = "the bundled corpus's vocabulary (the default: the model has no .vocab)"
        else:
            where = "model.vocab"
    else:
        where = "vocab"
    size = getattr(model, "vocab_size", None)
    if size is not None and size != len(vocab):
        raise ValueError(f"{where} has {len(vocab)} characters, but the model was built for "
                         f"vocab_size = {size}: pass the vocabulary of the text it was trained "
                         f"on (vocab=...)")
    return vocab


def _check_finite(log_probs: Tensor) -> None:
    """ValueError for NaN or +inf log-probabilities, or a row with no finite one (ids >= 1);
    -inf (probability 0) is fine."""
    lp = log_probs[..., 1:]
    if bool(lp.isnan().any()) or bool((lp == float("inf")).any()) or not bool(
            lp.isfinite().any(-1).all()):
        raise ValueError("the log-probabilities are NaN or +inf, or a row has no finite one: "
                         "a model whose weights are not finite (a training run that diverged, "
                         "e.g. too high a --lr?)")


def _device(model) -> torch.device:
    return next(model.parameters()).device


def _last_log_probs(model: CharModel, ids: Tensor) -> Tensor:
    """Log-probabilities ``(B, V)`` of the character after the rows of ``ids`` ``(B, T)``."""
    out = model(ids)
    return out[-1] if getattr(model, "multi_output", False) else out


@torch.no_grad()
def get_next(model: CharModel, text: str, vocab: Optional[Vocab] = None) -> str:
    """The most likely next character after ``text`` (the notebook's ``get_next``).

    The model reads all of ``text`` from a zero hidden state (the notebook passes 3 characters
    to Char3Model and 8 to the others); for the multi-output CharSeqRnn the last step's
    prediction is used.

    Args:
        model: a lesson model. text: at least one character, all in the vocabulary.
        vocab: the model's vocabulary; default ``model.vocab`` (set by checkpoints) or the
            bundled corpus's.

    Raises:
        ValueError: empty ``text``, a character not in the vocabulary (named), a vocabulary
            whose size is not the model's ``vocab_size``, or non-finite model output.
    """
    vocab = _vocab_of(model, vocab)
    if len(text) == 0:
        raise ValueError("get_next: text must have at least one character")
    ids = vocab.encode(text).to(_device(model))[None]
    was_training = model.training
    model.eval()
    try:
        log_probs = _last_log_probs(model, ids)
    finally:
        model.train(was_training)
    _check_finite(log_probs)
    return vocab.chars[int(log_probs[0].argmax())]


def get_next_n(model: CharModel, text: str, n: int, vocab: Optional[Vocab] = None) -> str:
    """``text`` followed by ``n`` greedy characters (the notebook's ``get_next_n``).

    Each step calls :func:`get_next` on the window ``text[-len(text):]`` that slides by one
    character (``inp = inp[1:] + c``), exactly as the notebook.

    Raises:
        ValueError: ``n < 0``, empty ``text``, a character not in the vocabulary (also when
            ``n == 0``), or as :func:`get_next`.
    """
    if n < 0:
        raise ValueError(f"get_next_n: n must be >= 0, got {n}")
    if len(text) == 0:
        raise ValueError("get_next_n: text must have at least one character")
    vocab = _vocab_of(model, vocab)  # resolved and checked once, not per character
    vocab.encode(text)  # its characters are checked even when n == 0
    res, inp = text, text
    for _ in range(n):
        c = get_next(model, inp, vocab)
        res += c
        inp = inp[1:] + c
    return res


def sample_next(log_probs: Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                greedy: bool = False, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draw one id per row of ``log_probs`` ``(B, V)``: int64 ``(B,)``.

    ``greedy`` takes the argmax. Otherwise the distribution ``softmax(log_probs /
    temperature)`` restricted to its ``top_k`` most likely ids (all when ``None``) is sampled
    with :func:`torch.multinomial` (Holtzman et al. 2020 discuss top-k; temperature as in
    Hinton et al. 2015). Id 0 (the ``"\\0"`` padding) is never drawn.

    Raises:
        ValueError: ``temperature`` not a finite number > 0, ``top_k < 1``, or ``log_probs``
            not finite (a model with NaN or inf weights).
    """
    if not greedy and not (temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number > 0, got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    _check_finite(log_probs)
    # float64 (a copy): a temperature below float32's range must not become 0.
    logits = log_probs.to(torch.float64, copy=True)
    if logits.shape[-1] > 1:
        logits[:, 0] = float("-inf")
    if greedy:
        return logits.argmax(-1)
    # Shifted so that the largest is 0 before the division: a tiny temperature then gives 0
    # and -inf (the argmax), not inf - inf = NaN.
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(1).to(logits.device)


@torch.no_grad()
def generate(model: CharModel, prompt: str, n: int, vocab: Optional[Vocab] = None, *,
             temperature: float = 1.0, top_k: Optional[int] = None, greedy: bool = False,
             stateful: bool = True, window: int = 8,
             generator: Optional[torch.Generator] = None) -> str:
    """``prompt`` followed by ``n`` generated characters.

    Args:
        model: a lesson model (eval mode is used; the mode is restored).
        prompt: at least one character, all in the vocabulary.
        n: characters to add (>= 0).
        vocab: default ``model.vocab`` or the bundled corpus's.
        temperature, top_k, greedy: see :func:`sample_next`.
        stateful: carry the hidden state (one ``model.step`` per character, constant work per
            character); ``False``: re-read the last ``window`` characters from a zero state for
            each character (the notebook's way, the context the models were trained with).
        generator: a :class:`torch.Generator` for repeatable sampling.

    Raises:
        ValueError: empty prompt, a prompt character not in the vocabulary (named), ``n < 0``,
            bad ``temperature`` / ``top_k`` / ``window``, a vocabulary whose size is not the
            model's ``vocab_size``, non-finite model output (NaN or inf weights).
    """
    vocab = _vocab_of(model, vocab)
    if len(prompt) == 0:
        raise ValueError("prompt must have at least one character")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    ids = vocab.encode(prompt).to(_device(model))
    was_training = model.training
    model.eval()
    out = []
    try:
        if stateful:
            h = model.init_hidden(1)
            for c in ids:
                log_probs, h = model.step(c.view(1), h)
            for _ in range(n):
                c = sample_next(log_probs, temperature, top_k, greedy, generator)
                out.append(int(c))
                log_probs, h = model.step(c, h)
        else:
            ctx = ids.tolist()
            for _ in range(n):
                x = torch.tensor([ctx[-window:]], dtype=torch.int64, device=ids.device)
                c = sample_next(_last_log_probs(model, x), temperature, top_k, greedy,
                                generator)
                out.append(int(c))
                ctx.append(int(c))
    finally:
        model.train(was_training)
    return prompt + vocab.decode(out)
