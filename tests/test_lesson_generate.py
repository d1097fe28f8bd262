"""get_next / get_next_n (the notebook's greedy functions), sampling, and stateful generation."""

import pytest
import torch

from rnn_ext.lesson.data import Vocab, lesson_data
from rnn_ext.lesson.generate import generate, get_next, get_next_n, sample_next
from rnn_ext.lesson.models import CharLoopConcatModel, CharRnn, CharSeqRnn
from rnn_ext.lesson.train import fit

import rnn_ext

TEXT = "for those the same. " * 60


@pytest.fixture(scope="module")
def trained():
    """A small CharSeqRnn trained on a repetitive text (a few seconds)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    d = lesson_data("seq", TEXT, bs=32)
    torch.manual_seed(0)
    m = CharSeqRnn(len(d.vocab), 8, 32)
    fit(m, d, 30, torch.optim.Adam(m.parameters(), 1e-2), rnn_ext.seq_nll_loss, seed=0,
        progress=False, log=None)
    m.vocab = d.vocab
    torch.set_num_threads(n)
    return m


def test_get_next_on_trained_model(trained):
    assert get_next(trained, "for thos") == "e"
    assert get_next_n(trained, "for thos", 12) == "for those the same. "


def test_get_next_n_slides_the_window(trained):
    text = get_next_n(trained, "for thos", 10)
    inp = "for thos"
    for i in range(10):
        c = get_next(trained, inp)
        assert text[8 + i] == c
        inp = inp[1:] + c


def test_get_next_is_argmax_of_a_fixed_model():
    v = Vocab.from_text("abc")
    m = CharRnn(len(v), 3, 4)
    with torch.no_grad():
        m.l_out.weight.zero_()
        m.l_out.bias.copy_(torch.tensor([0.0, 0.0, 0.0, 5.0]))
    assert get_next(m, "ab", v) == "c"
    assert get_next_n(m, "ab", 3, v) == "abccc"
    with pytest.raises(ValueError, match="'z'"):
        get_next(m, "az", v)
    with pytest.raises(ValueError, match="at least one"):
        get_next(m, "", v)


@pytest.mark.parametrize("cls", [CharSeqRnn, CharLoopConcatModel])
def test_stateful_greedy_equals_rereading_everything(cls):
    """Carrying the state equals running the model over the whole text from the start."""
    torch.manual_seed(1)
    v = Vocab.from_text("abcdefg")
    m = cls(len(v), 4, 16)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.8)
    out = generate(m, "abc", 15, v, greedy=True)
    for i in range(3, len(out)):
        full = m(v.encode(out[:i])[None])
        lp = full[-1] if m.multi_output else full
        lp[:, 0] = float("-inf")
        assert v.chars[int(lp.argmax())] == out[i]


def test_sampling_is_repeatable_and_respects_top_k(trained):
    g = lambda: torch.Generator().manual_seed(5)  # noqa: E731
    a = generate(trained, "for thos", 100, temperature=1.0, generator=g())
    b = generate(trained, "for thos", 100, temperature=1.0, generator=g())
    assert a == b and len(a) == 108 and a.startswith("for thos")
    assert generate(trained, "for thos", 30, top_k=1, generator=g()) == \
        generate(trained, "for thos", 30, greedy=True)
    assert "\0" not in generate(trained, "for", 200, temperature=5.0, generator=g())
    w = generate(trained, "for thos", 20, greedy=True, stateful=False)
    assert w == get_next_n(trained, "for thos", 20)


def test_sample_next_checks():
    lp = torch.log_softmax(torch.tensor([[9.0, 1.0, 2.0, 3.0]]), -1)
    assert sample_next(lp, greedy=True).tolist() == [3]  # id 0 (padding) never drawn
    assert sample_next(lp, top_k=1).tolist() == [3]
    counts = torch.bincount(sample_next(lp.expand(2000, 4), top_k=2,
                                        generator=torch.Generator().manual_seed(0)), minlength=4)
    assert counts[0] == 0 and counts[1] == 0 and counts[2] > 0 and counts[3] > counts[2]
    with pytest.raises(ValueError, match="temperature"):
        sample_next(lp, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(lp, top_k=0)
    with pytest.raises(ValueError, match="n must be"):
        generate(CharRnn(4, 2, 3), "a", -1, Vocab.from_text("abc"))


def test_vocabulary_must_fit_the_model():
    """A model without .vocab (trained with fit on another text) is not silently read with the
    bundled corpus's 85 characters: a vocabulary of another size than the model's vocab_size
    is a ValueError; the right one works."""
    m = CharRnn(4, 2, 3)
    with pytest.raises(ValueError, match="bundled corpus's vocabulary.*vocab_size = 4"):
        get_next_n(m, "ab", 3)
    with pytest.raises(ValueError, match="vocab has 3 characters.*vocab_size = 4"):
        generate(m, "ab", 3, Vocab.from_text("ab"))
    v = Vocab.from_text("abc")
    assert len(get_next_n(m, "ab", 3, v)) == 5 and len(generate(m, "ab", 3, v)) == 5


def test_errors_keep_the_mode_and_name_the_problem():
    """get_next_n checks its text even for n = 0; an unknown character leaves the model in its
    mode; a model with non-finite weights is a ValueError in every generator (it printed NUL
    characters or failed inside torch.multinomial)."""
    v = Vocab.from_text("abc")
    m = CharRnn(len(v), 2, 3)
    m.train()
    with pytest.raises(ValueError, match="at least one character"):
        get_next_n(m, "", 0, v)
    with pytest.raises(ValueError):
        get_next_n(m, "a€", 0, v)
    with pytest.raises(ValueError):
        get_next(m, "a€", v)
    assert m.training
    with torch.no_grad():
        m.l_out.weight.fill_(float("nan"))
    for f in (lambda: get_next(m, "ab", v), lambda: generate(m, "ab", 2, v),
              lambda: generate(m, "ab", 2, v, greedy=True, stateful=False)):
        with pytest.raises(ValueError, match="not finite"):
            f()
    assert m.training


def test_tiny_temperature_is_greedy_and_infinite_is_an_error():
    lp = torch.log_softmax(torch.tensor([[0.0, 1.0, 2.0, 3.0], [0.0, 5.0, 1.0, 2.0]]), -1)
    for t in (1e-40, 1e-50, 5e-324):  # also below float32's range
        assert sample_next(lp, temperature=t).tolist() == [3, 1]
    masked = torch.tensor([[0.0, 1.0, float("-inf"), 3.0]])  # -inf: probability 0, legal
    assert sample_next(masked, greedy=True).tolist() == [3]
    assert sample_next(masked, top_k=2).tolist() in ([1], [3])
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="NaN or \\+inf"):
            sample_next(torch.tensor([[0.0, bad, 1.0, 2.0]]))
    for t in (float("inf"), float("nan"), -1.0):
        with pytest.raises(ValueError, match="finite number > 0"):
            sample_next(lp, temperature=t)
