"""The lesson's data against the notebook's printed values (fast.ai lesson6-rnn, fastai 0.7)."""

import numpy as np
import pytest
import torch

from rnn_ext.lesson.data import (NIETZSCHE_LENGTH, Vocab, char3_dataset, cv_idxs, lesson_data,
                                 load_nietzsche, overlapping_windows, seq_windows, split_by_idx)


@pytest.fixture(scope="module")
def corpus():
    text = load_nietzsche()
    vocab = Vocab.from_text(text)
    return text, vocab, vocab.encode(text)


def test_corpus_and_vocab(corpus):
    text, vocab, ids = corpus
    assert len(text) == NIETZSCHE_LENGTH == 600_893
    assert len(vocab) == 85
    assert vocab.chars[0] == "\0" and vocab.chars[1:] == sorted(set(text))
    assert ids[:10].tolist() == [40, 42, 29, 30, 25, 27, 29, 1, 1, 1]
    assert "".join(vocab.chars[1:-6]) == (
        "\n !\"'(),-.0123456789:;=?ABCDEFGHIJKLMNOPQRSTUVWXYZ[]_abcdefghijklmnopqrstuvwxy")
    assert vocab.decode(ids[:70]) == text[:70]


def test_encode_decode_errors():
    v = Vocab.from_text("abca")
    assert v.chars == ["\0", "a", "b", "c"]
    assert v.encode("cab").tolist() == [3, 1, 2]
    with pytest.raises(ValueError, match=r"'z' \(at position 1\) is not in"):
        v.encode("az")
    with pytest.raises(ValueError, match="outside"):
        v.decode([4])
    assert Vocab.from_text("a\0b").chars == ["\0", "a", "b"]


def test_char3_dataset(corpus):
    _, _, ids = corpus
    xs, y = char3_dataset(ids)
    assert xs.shape == (200295, 3) and y.shape == (200295,)
    # the notebook's x1[:4], x2[:4], x3[:4], y[:4]
    assert xs[:4].t().tolist() == [[40, 30, 29, 1], [42, 25, 1, 43], [29, 27, 1, 45]]
    assert y[:4].tolist() == [30, 29, 1, 40]


def test_overlapping_windows(corpus):
    _, _, ids = corpus
    xs, y = overlapping_windows(ids)
    assert xs.shape == (600884, 8) and y.shape == (600884,)
    assert xs[:8, :8].tolist() == [
        [40, 42, 29, 30, 25, 27, 29, 1], [42, 29, 30, 25, 27, 29, 1, 1],
        [29, 30, 25, 27, 29, 1, 1, 1], [30, 25, 27, 29, 1, 1, 1, 43],
        [25, 27, 29, 1, 1, 1, 43, 45], [27, 29, 1, 1, 1, 43, 45, 40],
        [29, 1, 1, 1, 43, 45, 40, 40], [1, 1, 1, 43, 45, 40, 40, 39]]
    assert y[:8].tolist() == [1, 1, 43, 45, 40, 40, 39, 43]
    k = 123_456
    assert xs[k].tolist() == ids[k:k + 8].tolist() and int(y[k]) == int(ids[k + 8])


def test_seq_windows(corpus):
    _, _, ids = corpus
    xs, ys = seq_windows(ids)
    assert xs.shape == ys.shape == (75111, 8)
    assert xs[:3].tolist() == [[40, 42, 29, 30, 25, 27, 29, 1], [1, 1, 43, 45, 40, 40, 39, 43],
                               [33, 38, 31, 2, 73, 61, 54, 73]]
    assert ys[:3].tolist() == [[42, 29, 30, 25, 27, 29, 1, 1], [1, 43, 45, 40, 40, 39, 43, 33],
                               [38, 31, 2, 73, 61, 54, 73, 2]]


def test_cv_idxs_is_fastai_get_cv_idxs():
    state = np.random.get_state()
    np.random.seed(42)
    expected = np.random.permutation(600884)[: int(0.2 * 600884)]
    np.random.set_state(state)
    got = cv_idxs(600884)
    assert np.array_equal(got, expected)


def test_split_and_lesson_data():
    x = torch.arange(10)[:, None]
    (vx, tx), = split_by_idx([7, 2], x)
    assert vx.view(-1).tolist() == [7, 2] and tx.view(-1).tolist() == [0, 1, 3, 4, 5, 6, 8, 9]
    d = lesson_data("seq")
    assert len(d.val_x) == int(0.2 * (75111 - 9)) == 15020
    assert len(d.trn_x) + len(d.val_x) == 75111
    assert d.n_batches() == (60091 + 511) // 512
    batches = list(d.trn_batches(torch.Generator().manual_seed(0)))
    assert sum(len(b[0]) for b in batches) == len(d.trn_x)
    assert all(b[0].shape[1] == 8 and b[1].shape[1] == 8 for b in batches)
    with pytest.raises(ValueError, match="kind"):
        lesson_data("nope", text="abcdefghijklmnop")
    with pytest.raises(ValueError, match="too short"):
        lesson_data("overlap", text="abcdefghi")


@pytest.mark.parametrize("kwargs, match", [
    ({"cs": 0}, r"cs \(the window length\) must be an integer >= 1, got 0"),
    ({"cs": -3}, "got -3"),
    ({"cs": 2.5}, "got 2.5"),
    ({"cs": True}, "got True"),
    ({"val_pct": -0.2}, r"val_pct must be a fraction in \[0, 1\), got -0.2"),
    ({"val_pct": 1.0}, "got 1.0"),
    ({"val_pct": float("nan")}, "got nan"),
    ({"val_pct": "0.2"}, "got '0.2'"),
])
def test_lesson_data_refuses_bad_cs_and_val_pct(kwargs, match):
    """A negative val_pct used to slice ``permutation(n)[:-k]``: nearly every row became a
    validation row, silently; cs = 0 made empty windows."""
    with pytest.raises(ValueError, match=match):
        lesson_data("overlap", text="abcdefghijklmnopqrstuvwxyz" * 4, **kwargs)


def test_lesson_data_val_pct_zero_and_numpy_cs():
    d = lesson_data("overlap", text="abcdefghijklmnopqrstuvwxyz" * 4, cs=np.int64(4), val_pct=0)
    assert len(d.val_x) == 0 and d.trn_x.shape == (104 - 4 - 1, 4)
