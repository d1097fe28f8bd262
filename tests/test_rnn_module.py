"""rnn_ext.RNN / rnn_ext.RNNCell against torch.nn.RNN / torch.nn.RNNCell (the reference).

Every test builds the PyTorch module, copies its weights into rnn_ext's, runs both on the same
input and compares outputs, final states and the gradients of the input, hx and every parameter.
"""

import copy
import pickle
import warnings

import pytest
import torch
import torch.nn as nn
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch.nn.utils import parametrize
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence

import rnn_ext
from rnn_ext import RNN, RNNCell, convert_rnn

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-5, atol=1e-6)}


def _pair(seed, dtype, **kwargs):
    """nn.RNN and rnn_ext.RNN with the same (independent copies of the) weights."""
    torch.manual_seed(seed)
    ref = nn.RNN(dtype=dtype, **kwargs)
    ours = RNN(dtype=dtype, **kwargs)
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _run(module, make_input, hx, g_out, g_h):
    """Forward and backward; returns (output tensor, h_n, grad of the input leaf, grad of hx,
    grads of the parameters in order)."""
    x_leaf, inp = make_input()
    hx = None if hx is None else hx.clone().requires_grad_()
    out, h_n = module(inp, hx)
    out_t = out.data if isinstance(out, PackedSequence) else out
    loss = (out_t * g_out(out_t)).sum() + (h_n * g_h(h_n)).sum()
    params = list(module.parameters())
    grads = torch.autograd.grad(
        loss, [x_leaf] + ([hx] if hx is not None else []) + params, allow_unused=True
    )
    return out_t, h_n, grads, out


def _compare(a, b, dtype):
    for u, v in zip(a, b):
        if u is None or v is None:
            assert u is None and v is None
        else:
            torch.testing.assert_close(u, v, **TOL[dtype])


rnn_configs = st.fixed_dictionaries(
    dict(
        num_layers=st.integers(1, 3),
        bidirectional=st.booleans(),
        batch_first=st.booleans(),
        bias=st.booleans(),
        nonlinearity=st.sampled_from(["tanh", "relu"]),
        layout=st.sampled_from(["padded", "packed_sorted", "packed_unsorted", "unbatched"]),
        T=st.integers(1, 5),
        B=st.integers(1, 4),
        input_size=st.integers(1, 4),
        hidden_size=st.integers(1, 5),
        give_hx=st.booleans(),
        eval_mode=st.booleans(),
        seed=st.integers(0, 2**31 - 1),
    )
)


def _check_against_nn_rnn(cfg, dtype, data):
    ctor = {k: cfg[k] for k in ("num_layers", "bidirectional", "batch_first", "bias",
                                "nonlinearity", "input_size", "hidden_size")}
    ref, ours = _pair(cfg["seed"], dtype, **ctor)
    if cfg["eval_mode"]:
        ref.eval()
        ours.eval()
    T, B, layout = cfg["T"], cfg["B"], cfg["layout"]
    D = 2 if cfg["bidirectional"] else 1
    bf = cfg["batch_first"]
    scale = 1.0 if cfg["nonlinearity"] == "tanh" else 0.5
    x = torch.randn(T, B, cfg["input_size"], dtype=dtype)
    if layout == "unbatched":
        x = x[:, 0]
    if bf and layout != "unbatched":
        x = x.transpose(0, 1).contiguous()
    lengths = None
    if layout.startswith("packed"):
        lengths = data.draw(st.lists(st.integers(1, T), min_size=B, max_size=B), label="lengths")
        lengths[data.draw(st.integers(0, B - 1), label="longest")] = T
        if layout == "packed_sorted":
            lengths = sorted(lengths, reverse=True)

    def make_input():
        leaf = x.clone().requires_grad_()
        if lengths is None:
            return leaf, leaf
        packed = pack_padded_sequence(
            leaf, lengths, batch_first=bf, enforce_sorted=layout == "packed_sorted"
        )
        return leaf, packed

    hx = None
    if cfg["give_hx"]:
        hx = torch.randn(ctor["num_layers"] * D, B, ctor["hidden_size"], dtype=dtype) * scale
        if layout == "unbatched":
            hx = hx[:, 0]
    # Fixed random weights for the loss, the same for both modules.
    gen = torch.Generator().manual_seed(cfg["seed"] % 1000)
    cache = {}

    def weights_like(t):
        key = tuple(t.shape)
        if key not in cache:
            cache[key] = torch.randn(t.shape, generator=gen, dtype=dtype)
        return cache[key]

    r = _run(ref, make_input, hx, weights_like, weights_like)
    o = _run(ours, make_input, hx, weights_like, weights_like)
    assert r[0].shape == o[0].shape and r[1].shape == o[1].shape
    _compare(r[:2], o[:2], dtype)
    _compare(r[2], o[2], dtype)
    if isinstance(r[3], PackedSequence):
        assert isinstance(o[3], PackedSequence)
        assert torch.equal(r[3].batch_sizes, o[3].batch_sizes)
        for a, b in ((r[3].sorted_indices, o[3].sorted_indices),
                     (r[3].unsorted_indices, o[3].unsorted_indices)):
            assert (a is None and b is None) or torch.equal(a, b)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=rnn_configs, data=st.data())
def test_rnn_matches_nn_rnn_float64(cfg, data):
    _check_against_nn_rnn(cfg, torch.float64, data)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=rnn_configs, data=st.data())
def test_rnn_matches_nn_rnn_float32(cfg, data):
    _check_against_nn_rnn(cfg, torch.float32, data)


@settings(max_examples=40, deadline=None)
@given(
    B=st.integers(0, 4), input_size=st.integers(1, 4), hidden_size=st.integers(1, 5),
    bias=st.booleans(), nonlinearity=st.sampled_from(["tanh", "relu"]),
    batched=st.booleans(), give_hx=st.booleans(), seed=st.integers(0, 2**31 - 1),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_cell_matches_nn_rnncell(B, input_size, hidden_size, bias, nonlinearity, batched,
                                 give_hx, seed, dtype):
    torch.manual_seed(seed)
    ref = nn.RNNCell(input_size, hidden_size, bias, nonlinearity, dtype=dtype)
    ours = RNNCell(input_size, hidden_size, bias, nonlinearity, dtype=dtype)
    ours.load_state_dict(ref.state_dict(), strict=True)
    if not batched:
        B = 1
    x = torch.randn(B, input_size, dtype=dtype)
    hx = torch.randn(B, hidden_size, dtype=dtype) if give_hx else None
    if not batched:
        x = x[0]
        hx = None if hx is None else hx[0]
    g = None
    results = []
    for m in (ref, ours):
        xl = x.clone().requires_grad_()
        hl = None if hx is None else hx.clone().requires_grad_()
        y = m(xl, hl)
        if g is None:
            g = torch.randn_like(y)
        grads = torch.autograd.grad((y * g).sum(), [xl] + ([hl] if hl is not None else [])
                                    + list(m.parameters()))
        results.append((y, *grads))
    assert results[0][0].shape == results[1][0].shape
    _compare(results[0], results[1], dtype)


# ---------------------------------------------------------------------------------------------
# Module surface: parameters, init, repr, state_dict, flatten_parameters


@pytest.mark.parametrize("kwargs", [
    dict(input_size=3, hidden_size=4),
    dict(input_size=3, hidden_size=4, num_layers=3, bias=False, bidirectional=True),
    dict(input_size=2, hidden_size=5, num_layers=2, nonlinearity="relu", batch_first=True,
         dropout=0.25),
])
def test_rnn_surface_is_nn_rnn(kwargs):
    torch.manual_seed(7)
    ref = nn.RNN(**kwargs)
    torch.manual_seed(7)
    ours = RNN(**kwargs)
    assert isinstance(ours, nn.RNNBase) and ours.mode == ref.mode
    assert repr(ours) == repr(ref)
    # Same names, shapes, order and initial values (same initialisation from the same seed).
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
    for (_, p), (_, q) in zip(ours.named_parameters(), ref.named_parameters()):
        assert p.shape == q.shape and torch.equal(p, q)
    assert ours._flat_weights_names == ref._flat_weights_names
    ours.flatten_parameters()
    # state_dict both ways, strict.
    back = nn.RNN(**kwargs)
    back.load_state_dict(ours.state_dict(), strict=True)
    ours.load_state_dict(ref.state_dict(), strict=True)
    assert list(ours.state_dict()) == list(ref.state_dict())


def test_activation_follows_mode_as_nn_rnn():
    """nn.RNN.forward picks tanh or relu from self.mode (set once from nonlinearity); changing
    nonlinearity afterwards changes nothing, changing mode switches the activation, an unknown
    mode is an AssertionError with nn.RNN's message."""
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for attr, value in (("nonlinearity", "relu"), ("mode", "RNN_RELU"), ("mode", "RNN_TANH")):
        torch.manual_seed(3)
        ref = nn.RNN(3, 4, nonlinearity="relu" if value == "RNN_TANH" else "tanh").double()
        ours = RNN(3, 4, nonlinearity="relu" if value == "RNN_TANH" else "tanh").double()
        ours.load_state_dict(ref.state_dict())
        setattr(ref, attr, value)
        setattr(ours, attr, value)
        for a, b in zip(ours(x), ref(x)):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    ref, ours = nn.RNN(3, 4), RNN(3, 4)
    ref.mode = ours.mode = "LSTM"
    with pytest.raises(AssertionError) as want:
        ref(x.float())
    with pytest.raises(AssertionError) as got:
        ours(x.float())
    assert str(got.value) == str(want.value) == "mode must be RNN_TANH or RNN_RELU, got LSTM"


@pytest.mark.parametrize("name", ["weight_ih_l0", "weight_hh_l1_reverse", "bias_hh_l1"])
def test_a_parameter_on_another_device_is_nn_rnns_error(name):
    """Any parameter (not only the first) on another device than the input raises nn.RNN's
    RuntimeError, message for message (meta: the other device every machine has; it used to
    give uninitialised values)."""
    x = torch.randn(5, 2, 3)
    errors = []
    for cls in (nn.RNN, RNN):
        m = cls(3, 4, num_layers=2, bidirectional=True)
        setattr(m, name, nn.Parameter(torch.empty_like(getattr(m, name), device="meta")))
        with pytest.raises(RuntimeError) as info:
            m(x)
        errors.append(str(info.value))
    assert errors[1] == errors[0] == ("Input and parameter tensors are not at the same device, "
                                      "found input tensor at cpu and parameter tensor at meta")


def test_cell_surface_is_nn_rnncell():
    for kwargs in (dict(input_size=3, hidden_size=4),
                   dict(input_size=3, hidden_size=4, bias=False, nonlinearity="relu")):
        torch.manual_seed(3)
        ref = nn.RNNCell(**kwargs)
        torch.manual_seed(3)
        ours = RNNCell(**kwargs)
        assert isinstance(ours, nn.RNNCell)
        assert repr(ours) == repr(ref)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in ref.named_parameters()]
        for p, q in zip(ours.parameters(), ref.parameters()):
            assert torch.equal(p, q)
        nn.RNNCell(**kwargs).load_state_dict(ours.state_dict(), strict=True)
        ours.load_state_dict(ref.state_dict(), strict=True)


def test_device_and_dtype_arguments():
    m = RNN(3, 4, device="cpu", dtype=torch.float64)
    assert all(p.dtype == torch.float64 and p.device.type == "cpu" for p in m.parameters())
    out, h = m(torch.randn(2, 1, 3, dtype=torch.float64))
    assert out.dtype == h.dtype == torch.float64
    c = RNNCell(3, 4, dtype=torch.float64)
    assert c(torch.randn(2, 3, dtype=torch.float64)).dtype == torch.float64


def test_module_to_dtype_after_construction():
    ref, ours = _pair(0, torch.float32, input_size=3, hidden_size=4, num_layers=2)
    ref.double()
    ours.double()
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    _compare(ref(x), ours(x), torch.float64)


def test_batch_of_zero_sequences():
    ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4, bidirectional=True)
    x = torch.randn(5, 0, 3, dtype=torch.float64)
    for a, b in zip(ref(x), ours(x)):
        assert a.shape == b.shape


# ---------------------------------------------------------------------------------------------
# Dropout and train/eval


def test_dropout_warning_like_nn_rnn():
    with warnings.catch_warnings(record=True) as w_ref:
        warnings.simplefilter("always")
        nn.RNN(3, 4, dropout=0.5)
    with warnings.catch_warnings(record=True) as w_ours:
        warnings.simplefilter("always")
        RNN(3, 4, dropout=0.5)
    assert len(w_ref) == len(w_ours) == 1
    assert str(w_ours[0].message) == str(w_ref[0].message)
    assert w_ours[0].category is w_ref[0].category


def test_dropout_eval_mode_equals_nn_rnn():
    ref, ours = _pair(1, torch.float64, input_size=3, hidden_size=4, num_layers=3, dropout=0.7,
                      bidirectional=True)
    ref.eval()
    ours.eval()
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    _compare(ref(x), ours(x), torch.float64)


def test_dropout_one_in_training_equals_nn_rnn():
    # p = 1 zeroes every layer output but the last: deterministic, so comparable exactly.
    ref, ours = _pair(2, torch.float64, input_size=3, hidden_size=4, num_layers=2, dropout=1.0)
    x = torch.randn(4, 2, 3, dtype=torch.float64)
    _compare(ref(x), ours(x), torch.float64)


@pytest.mark.parametrize("cls", [nn.RNN, RNN])
def test_dropout_statistics(cls):
    """Layer 0 outputs the constant b > 0; layer 1 (relu, W_ih = I, W_hh = 0, no bias effect)
    outputs dropout(b): each entry is 0 or b / (1 - p), zero with probability p. Run for nn.RNN
    and rnn_ext.RNN alike: the same law."""
    p, H = 0.3, 8
    torch.manual_seed(0)
    m = cls(H, H, num_layers=2, nonlinearity="relu", dropout=p, dtype=torch.float64)
    b = torch.linspace(0.5, 1.5, H, dtype=torch.float64)
    with torch.no_grad():
        m.weight_ih_l0.zero_()
        m.weight_hh_l0.zero_()
        m.bias_ih_l0.copy_(b)
        m.bias_hh_l0.zero_()
        m.weight_ih_l1.copy_(torch.eye(H))
        m.weight_hh_l1.zero_()
        m.bias_ih_l1.zero_()
        m.bias_hh_l1.zero_()
    m.train()
    out, _ = m(torch.randn(1, 2000, H, dtype=torch.float64))
    kept = out != 0
    assert torch.allclose(out[kept], (b / (1 - p)).expand_as(out)[kept])
    frac = 1 - kept.double().mean().item()
    # 16000 Bernoulli(0.3) draws: sd 0.0036; allow 6 sd.
    assert abs(frac - p) < 0.022
    # Different masks on two calls (training mode draws fresh randomness).
    assert not torch.equal(m(torch.zeros(1, 50, H, dtype=torch.float64))[0],
                           m(torch.zeros(1, 50, H, dtype=torch.float64))[0])


# ---------------------------------------------------------------------------------------------
# Errors: the same type and message as nn.RNN


def _raises(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001  (we compare whatever was raised)
        return e
    raise AssertionError("no exception raised")


def _x(*shape, dtype=torch.float32, device="cpu"):
    return torch.randn(*shape, dtype=dtype, device=device)


RNN_FORWARD_ERRORS = {
    "input_4d": (dict(), lambda: (_x(1, 5, 2, 3),)),
    "input_1d": (dict(), lambda: (_x(3),)),
    "input_size": (dict(), lambda: (_x(5, 2, 2),)),
    "hx_shape": (dict(), lambda: (_x(5, 2, 3), _x(2, 3, 4))),
    "hx_2d_for_3d": (dict(), lambda: (_x(5, 2, 3), _x(2, 4))),
    "hx_3d_for_2d": (dict(), lambda: (_x(5, 3), _x(2, 1, 4))),
    "hx_unbatched_shape": (dict(), lambda: (_x(5, 3), _x(2, 5))),
    "hx_shape_batch_first": (dict(batch_first=True), lambda: (_x(2, 5, 3), _x(2, 5, 4))),
    "hx_shape_bidirectional": (dict(bidirectional=True), lambda: (_x(5, 2, 3), _x(2, 2, 4))),
    "input_dtype": (dict(), lambda: (_x(5, 2, 3, dtype=torch.float64),)),
    "input_int": (dict(), lambda: (torch.ones(5, 2, 3, dtype=torch.int64),)),
    "zero_length": (dict(), lambda: (_x(0, 2, 3),)),
    "zero_length_unbatched": (dict(), lambda: (_x(0, 3),)),
    "zero_length_batch_first": (dict(batch_first=True), lambda: (_x(2, 0, 3),)),
    "hx_device": (dict(), lambda: (_x(5, 2, 3), _x(2, 2, 4, device="meta"))),
    "input_device": (dict(), lambda: (_x(5, 2, 3, device="meta"),)),
    "packed_hx_shape": (dict(), lambda: (
        pack_padded_sequence(_x(5, 3, 3), [5, 3, 2]), _x(2, 2, 4))),
    "packed_hx_2d": (dict(), lambda: (pack_padded_sequence(_x(5, 3, 3), [5, 3, 2]), _x(2, 4))),
    "packed_input_size": (dict(), lambda: (pack_padded_sequence(_x(5, 3, 2), [5, 3, 2]),)),
    # data of the wrong rank or dtype: nn.RNN's checks of data come before those of batch_sizes
    "packed_3d_data": (dict(), lambda: (PackedSequence(_x(10, 1, 3), torch.tensor([5, 3])),)),
    "packed_dtype": (dict(), lambda: (
        PackedSequence(_x(10, 3, dtype=torch.float64), torch.tensor([5, 3])),)),
}


@pytest.mark.parametrize("case", sorted(RNN_FORWARD_ERRORS))
def test_rnn_forward_errors_match_nn_rnn(case):
    kwargs, make_args = RNN_FORWARD_ERRORS[case]
    kwargs = dict(input_size=3, hidden_size=4, num_layers=2, **kwargs)
    args = make_args()
    e_ref = _raises(lambda: nn.RNN(**kwargs)(*args))
    e_ours = _raises(lambda: RNN(**kwargs)(*args))
    assert type(e_ours) is type(e_ref)
    assert str(e_ours) == str(e_ref)


def test_a_parameter_set_to_none_is_a_type_error_naming_it():
    # nn.RNN: "TypeError: expected Tensor as element 1 in argument 2, but got NoneType" (from
    # its kernel); ours was an AttributeError of the device check.
    x = _x(5, 2, 3)
    for cls in (nn.RNN, RNN):
        m = cls(3, 4)
        m.weight_hh_l0 = None
        with pytest.raises(TypeError, match="weight_hh_l0 must be a Tensor, got NoneType"
                           if cls is RNN else "expected Tensor"):
            m(x)


def test_rnn_hx_dtype_error():
    # nn.RNN fails inside a matmul ("mat1 and mat2 must have the same dtype"); ours says the
    # same thing in the module's terms. Same exception type.
    args = (_x(5, 2, 3), _x(2, 2, 4, dtype=torch.float64))
    e_ref = _raises(lambda: nn.RNN(3, 4, 2)(*args))
    e_ours = _raises(lambda: RNN(3, 4, 2)(*args))
    assert type(e_ours) is type(e_ref) is RuntimeError
    assert "dtype" in str(e_ref) and "dtype" in str(e_ours)
    assert "torch.float64" in str(e_ours) and "torch.float32" in str(e_ours)


CTOR_ERRORS = [
    ((3, 4), dict(nonlinearity="sigmoid")),
    ((3, 4, 1, "sigmoid"), dict()),
    ((3, 4), dict(proj_size=2)),
    ((3, 4), dict(dropout=1.5)),
    ((3, 4), dict(dropout=-0.1)),
    ((3, 4), dict(dropout=True)),
    ((3, 4), dict(dropout="0.1")),
    ((3, 4), dict(bias=1)),
    ((3, 4), dict(batch_first="yes")),
    ((3.0, 4), dict()),
    ((0, 4), dict()),
    ((3, 4.0), dict()),
    ((3, 0), dict()),
    ((3, 4, 0), dict()),
]


@pytest.mark.parametrize("args,kwargs", CTOR_ERRORS)
def test_rnn_constructor_errors_match_nn_rnn(args, kwargs):
    e_ref = _raises(lambda: nn.RNN(*args, **kwargs))
    e_ours = _raises(lambda: RNN(*args, **kwargs))
    assert type(e_ours) is type(e_ref)
    assert str(e_ours) == str(e_ref)


CELL_ERRORS = {
    "input_3d": (dict(), lambda: (_x(1, 2, 3),)),
    "hx_3d": (dict(), lambda: (_x(2, 3), _x(1, 2, 4))),
    "input_size": (dict(), lambda: (_x(2, 2),)),
    "input_size_unbatched": (dict(), lambda: (_x(2),)),
    "batch": (dict(), lambda: (_x(2, 3), _x(3, 4))),
    "hidden_size": (dict(), lambda: (_x(2, 3), _x(2, 5))),
    "unbatched_hx_2d": (dict(), lambda: (_x(3), _x(2, 4))),
    "batched_hx_1d": (dict(), lambda: (_x(2, 3), _x(4))),
    "nonlinearity": (dict(nonlinearity="sigmoid"), lambda: (_x(2, 3),)),
}


@pytest.mark.parametrize("case", sorted(CELL_ERRORS))
def test_cell_errors_match_nn_rnncell(case):
    kwargs, make_args = CELL_ERRORS[case]
    args = make_args()
    e_ref = _raises(lambda: nn.RNNCell(3, 4, **kwargs)(*args))
    e_ours = _raises(lambda: RNNCell(3, 4, **kwargs)(*args))
    assert type(e_ours) is type(e_ref)
    assert str(e_ours) == str(e_ref)


@pytest.mark.parametrize("which", ["input", "hx"])
def test_cell_dtype_errors(which):
    x = _x(2, 3, dtype=torch.float64 if which == "input" else torch.float32)
    hx = _x(2, 4, dtype=torch.float64 if which == "hx" else torch.float32)
    e_ref = _raises(lambda: nn.RNNCell(3, 4)(x, hx))
    e_ours = _raises(lambda: RNNCell(3, 4)(x, hx))
    assert type(e_ours) is type(e_ref) is RuntimeError
    assert "dtype" in str(e_ours) and "dtype" in str(e_ref)


def test_cell_constructor_errors_match():
    for args in ((3, 4.0), (-1, 3)):
        e_ref = _raises(lambda: nn.RNNCell(*args))
        e_ours = _raises(lambda: RNNCell(*args))
        assert type(e_ours) is type(e_ref) and str(e_ours) == str(e_ref)


# ---------------------------------------------------------------------------------------------
# Conversion


def test_round_trip_nn_rnn_to_rnn_ext_and_back():
    torch.manual_seed(0)
    ref = nn.RNN(3, 5, num_layers=2, bidirectional=True, batch_first=True).double().eval()
    x = torch.randn(2, 6, 3, dtype=torch.float64)
    out0, h0 = ref(x)
    ours = RNN.from_torch(ref)
    assert type(ours) is RNN and not ours.training
    assert all(p is q for p, q in zip(ours.parameters(), ref.parameters()))
    out1, h1 = ours(x)
    torch.testing.assert_close(out1, out0, **TOL[torch.float64])
    torch.testing.assert_close(h1, h0, **TOL[torch.float64])
    back = ours.to_torch()
    assert type(back) is nn.RNN
    assert all(p is q for p, q in zip(back.parameters(), ref.parameters()))
    out2, h2 = back(x)
    assert torch.equal(out2, out0) and torch.equal(h2, h0)
    assert repr(back) == repr(ours) == repr(ref)


def test_round_trip_cell():
    torch.manual_seed(0)
    ref = nn.RNNCell(3, 4, nonlinearity="relu")
    x, hx = torch.randn(2, 3), torch.randn(2, 4)
    ours = RNNCell.from_torch(ref)
    assert type(ours) is RNNCell
    torch.testing.assert_close(ours(x, hx), ref(x, hx), **TOL[torch.float32])
    back = ours.to_torch()
    assert type(back) is nn.RNNCell and torch.equal(back(x, hx), ref(x, hx))


def test_from_torch_rejects_other_modules():
    with pytest.raises(TypeError, match="torch.nn.RNN"):
        RNN.from_torch(nn.GRU(3, 4))
    with pytest.raises(TypeError, match="torch.nn.RNNCell"):
        RNNCell.from_torch(nn.Linear(3, 4))


class _MyRNN(nn.RNN):
    """A user subclass: convert_rnn must leave it alone (it may override forward)."""


class _Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Linear(4, 3), nn.RNN(3, 5, batch_first=True))
        self.blocks = nn.ModuleList([
            nn.ModuleDict({"rnn": nn.RNN(5, 5, num_layers=2, bidirectional=True)}),
            nn.RNNCell(10, 6, nonlinearity="relu"),
        ])
        self.shared = self.encoder[1]
        self.custom = _MyRNN(3, 2)
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        y, _ = self.encoder(x)
        y, h = self.blocks[0]["rnn"](y.transpose(0, 1))
        cell = self.blocks[1]
        hx = None
        for t in range(y.shape[0]):
            hx = cell(y[t], hx)
        z, _ = self.custom(self.encoder[0](x).transpose(0, 1))
        return self.head(hx), h, z


def test_convert_rnn_nested_model():
    torch.manual_seed(0)
    model = _Nested().double()
    model.blocks.eval()
    x = torch.randn(2, 4, 4, dtype=torch.float64)
    expected = model(x)
    params_before = dict(model.named_parameters())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    assert convert_rnn(model) is model
    assert type(model.encoder[1]) is RNN
    assert model.shared is model.encoder[1]
    assert type(model.blocks[0]["rnn"]) is RNN
    assert type(model.blocks[1]) is RNNCell
    assert type(model.custom) is _MyRNN
    assert not model.blocks[0]["rnn"].training and not model.blocks[1].training
    assert model.encoder[1].training
    params_after = dict(model.named_parameters())
    assert params_after.keys() == params_before.keys()
    assert all(params_after[k] is params_before[k] for k in params_before)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    got = model(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[torch.float64])
    # The optimizer built before the swap still trains the model's parameters.
    sum(t.sum() for t in got).backward()
    w = model.blocks[0]["rnn"].weight_hh_l0_reverse
    before = w.detach().clone()
    opt.step()
    assert not torch.equal(w, before)
    # Converting again changes nothing.
    assert convert_rnn(model) is model and type(model.encoder[1]) is RNN


def test_from_torch_refuses_subclasses():
    """A subclass's own forward would be lost silently (convert_rnn leaves them alone)."""
    class Doubled(nn.RNN):
        def forward(self, *args):
            out, h = super().forward(*args)
            return 2 * out, h

    class MyCell(nn.RNNCell):
        pass

    with pytest.raises(TypeError, match="got Doubled, a subclass of torch.nn.RNN"):
        RNN.from_torch(Doubled(3, 4))
    with pytest.raises(TypeError, match="got MyCell, a subclass of torch.nn.RNNCell"):
        RNNCell.from_torch(MyCell(3, 4))
    with pytest.raises(TypeError, match="a subclass of rnn_ext.RNN"):
        RNN.from_torch(type("Mine", (RNN,), {})(3, 4))
    assert type(RNN.from_torch(RNN(3, 4))) is RNN  # exact classes, parametrized or not, pass
    m = nn.RNN(3, 4)
    parametrize.register_parametrization(m, "weight_hh_l0", nn.Identity())
    assert isinstance(RNN.from_torch(m), RNN)


@pytest.mark.parametrize("how", ["convert_rnn", "from_torch"])
def test_hook_handles_made_before_conversion_still_remove(how):
    """nn.Module hooks are removed through their handle; the converted module must honour a
    handle returned before the conversion (forward, pre-forward, full backward, state_dict)."""
    for ref_cls, our_cls, args in ((nn.RNN, RNN, (torch.randn(2, 1, 3, requires_grad=True),)),
                                   (nn.RNNCell, RNNCell, (torch.randn(1, 3, requires_grad=True),))):
        m = ref_cls(3, 4)
        calls = []
        handles = [
            m.register_forward_hook(lambda *a: calls.append("fwd")),
            m.register_forward_hook(lambda *a, **k: calls.append("fwd_kw"), with_kwargs=True,
                                    always_call=True),
            m.register_forward_pre_hook(lambda *a: calls.append("pre")),
            m.register_full_backward_hook(lambda *a: calls.append("bwd")),
            m.register_state_dict_post_hook(lambda *a: calls.append("sd")),
        ]
        new = convert_rnn(m) if how == "convert_rnn" else our_cls.from_torch(m)
        assert type(new) is our_cls
        out = new(*args)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        new.state_dict()
        assert sorted(calls) == ["bwd", "fwd", "fwd_kw", "pre", "sd"]
        for h in handles:
            h.remove()
        calls.clear()
        out = new(*args)
        (out[0] if isinstance(out, tuple) else out).sum().backward()
        new.state_dict()
        assert calls == []


def test_convert_rnn_on_a_bare_module():
    m = nn.RNN(3, 4)
    c = convert_rnn(m)
    assert type(c) is RNN and c.weight_ih_l0 is m.weight_ih_l0
    assert type(convert_rnn(nn.RNNCell(3, 4))) is RNNCell


# ---------------------------------------------------------------------------------------------
# Current weights: tying, parametrizations, functional_call; compile; pickling


def test_weight_tying_matches_nn_rnn():
    ref, ours = _pair(0, torch.float64, input_size=4, hidden_size=4, num_layers=2)
    for m in (ref, ours):
        m.weight_hh_l1 = m.weight_hh_l0
        m.weight_ih_l1 = m.weight_ih_l0
    assert len(list(ours.parameters())) == 6
    x = torch.randn(3, 2, 4, dtype=torch.float64)
    res = []
    for m in (ref, ours):
        out, h = m(x)
        res.append((out, h, *torch.autograd.grad(out.sum() + h.sum(), list(m.parameters()))))
    _compare(res[0], res[1], torch.float64)
    # In-place change of the tied weight is seen by the forward.
    with torch.no_grad():
        ours.weight_hh_l0.mul_(0.5)
        ref.weight_hh_l0.mul_(0.5)
    _compare(ref(x), ours(x), torch.float64)


class _Symmetric(nn.Module):
    def forward(self, w):
        return w.triu() + w.triu(1).transpose(0, 1)


@pytest.mark.parametrize("parametrize_first", [False, True])
def test_parametrization_uses_current_weight(parametrize_first):
    ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4, num_layers=2)
    if parametrize_first:
        parametrize.register_parametrization(ref, "weight_hh_l1", _Symmetric())
        ours = RNN.from_torch(ref)
        assert isinstance(ours, RNN) and parametrize.is_parametrized(ours, "weight_hh_l1")
    else:
        for m in (ref, ours):
            parametrize.register_parametrization(m, "weight_hh_l1", _Symmetric())
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    res = []
    for m in (ref, ours):
        out, h = m(x)
        res.append((out, h, *torch.autograd.grad((out ** 2).sum(), list(m.parameters()))))
    _compare(res[0], res[1], torch.float64)
    # Changing the underlying tensor changes the forward at once.
    before = ours(x)[0]
    with torch.no_grad():
        ours.parametrizations.weight_hh_l1.original.mul_(-1)
        if not parametrize_first:
            ref.parametrizations.weight_hh_l1.original.mul_(-1)
    after = ours(x)[0]
    assert not torch.allclose(before, after)
    _compare(ref(x), ours(x), torch.float64)
    if parametrize_first:
        assert type(convert_rnn(nn.Sequential(ours.to_torch()))[0]).__bases__ == (RNN,)


class _Counted(nn.Module):
    """An identity parametrization that counts its evaluations."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, w):
        self.calls += 1
        return w


@pytest.mark.parametrize("kwargs", [{}, dict(num_layers=2, bidirectional=True, bias=False)],
                         ids=["1-layer", "2-layer-bidir-nobias"])
def test_parametrizations_evaluated_as_often_as_under_nn_rnn(kwargs):
    # A parametrization with state (spectral_norm's power iteration in training mode) changes
    # with every evaluation, so the number of evaluations per forward is part of nn.RNN's
    # behaviour: every weight, the first one included, as often as there.
    calls = []
    for m in _pair(0, torch.float64, input_size=3, hidden_size=4, **kwargs):
        counters = {name: _Counted() for name in m._flat_weights_names}
        for name, c in counters.items():
            parametrize.register_parametrization(m, name, c)
        x = torch.randn(5, 2, 3, dtype=torch.float64)
        per_forward = []
        for _ in range(2):
            for c in counters.values():
                c.calls = 0
            m(x)
            per_forward.append({name: c.calls for name, c in counters.items()})
        calls.append(per_forward)
    assert all(n >= 1 for n in calls[0][0].values())  # nn.RNN reads every weight
    assert calls[1] == calls[0]


def test_spectral_norm_state_and_outputs_match_nn_rnn():
    from torch.nn.utils.parametrizations import spectral_norm
    ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4)
    for m in (ref, ours):
        torch.manual_seed(1)  # the same initial power-iteration vectors
        spectral_norm(m, "weight_hh_l0")
    torch.manual_seed(2)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for _ in range(3):  # training mode: each evaluation runs a power iteration
        _compare(ref(x), ours(x), torch.float64)
        sn_ref = ref.parametrizations.weight_hh_l0[0]
        sn_ours = ours.parametrizations.weight_hh_l0[0]
        torch.testing.assert_close(sn_ours._u, sn_ref._u, rtol=0, atol=1e-14)
        torch.testing.assert_close(sn_ours._v, sn_ref._v, rtol=0, atol=1e-14)


def test_functional_call_uses_given_parameters():
    ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4, bidirectional=True)
    torch.manual_seed(1)
    params = {k: torch.randn_like(v) for k, v in ours.named_parameters()}
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    got = torch.func.functional_call(ours, params, (x,))
    expected = torch.func.functional_call(ref, params, (x,))
    _compare(got, expected, torch.float64)
    assert not torch.allclose(got[0], ours(x)[0])
    # Gradients reach the substituted parameters (ordinary autograd; torch.func.grad over the
    # custom operator is not supported: its autograd is a C++ torch::autograd::Function).
    leaves = {k: v.clone().requires_grad_() for k, v in params.items()}
    grads = []
    for m in (ours, ref):
        out, h = torch.func.functional_call(m, leaves, (x,))
        grads.append(torch.autograd.grad(out.sum() + h.sum(), list(leaves.values())))
    _compare(grads[0], grads[1], torch.float64)


class _Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = RNN(3, 6, num_layers=2, batch_first=True, bidirectional=True)
        self.out = nn.Linear(12, 2)

    def forward(self, x):
        y, h = self.rnn(x)
        return self.out(y), h


def test_torch_compile_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = _Tagger()
    x = torch.randn(4, 5, 3)
    expected = model(x)
    g_expected = torch.autograd.grad(expected[0].sum() + expected[1].sum(),
                                     list(model.parameters()))
    compiled = torch.compile(model, fullgraph=True)
    got = compiled(x)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, **TOL[torch.float32])
    g_got = torch.autograd.grad(got[0].sum() + got[1].sum(), list(model.parameters()))
    for a, b in zip(g_got, g_expected):
        torch.testing.assert_close(a, b, **TOL[torch.float32])


def test_deepcopy_and_pickle():
    ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4, num_layers=2)
    x = torch.randn(3, 2, 3, dtype=torch.float64)
    for clone in (copy.deepcopy(ours), pickle.loads(pickle.dumps(ours))):
        assert type(clone) is RNN
        _compare(clone(x), ref(x), torch.float64)


def test_exports():
    assert rnn_ext.RNN is RNN and rnn_ext.RNNCell is RNNCell and rnn_ext.convert_rnn is convert_rnn


def test_double_backward_gradgradcheck():
    torch.manual_seed(0)
    m = RNN(2, 3, num_layers=2, bidirectional=True, dtype=torch.float64)
    x = torch.randn(3, 2, 2, dtype=torch.float64, requires_grad=True)
    hx = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)

    def f(x, hx, w):
        out, h = torch.func.functional_call(m, {"weight_hh_l0": w}, (x, hx), strict=False)
        return out, h

    w = m.weight_hh_l0.detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(f, (x, hx, w))
    assert torch.autograd.gradgradcheck(f, (x, hx, w))


@pytest.mark.cuda
@pytest.mark.skipif(
    not (torch.cuda.is_available() and rnn_ext.has_cuda_kernels()),
    reason="needs a CUDA device and a build with the CUDA kernels"
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cuda_matches_nn_rnn(dtype):
    # cuDNN's float32 RNN uses TF32 tensor cores by default (torch.backends.cudnn.allow_tf32 is
    # True): about 1e-3 relative error, far outside rtol=1e-5. Compare against IEEE float32.
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        _check_cuda_matches_nn_rnn(dtype)
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _check_cuda_matches_nn_rnn(dtype):
    torch.manual_seed(0)
    ref = nn.RNN(5, 16, num_layers=2, bidirectional=True, batch_first=True).to("cuda", dtype)
    ours = RNN.from_torch(copy.deepcopy(ref))
    x = torch.randn(4, 7, 5, device="cuda", dtype=dtype)
    lengths = [7, 3, 5, 1]
    res = []
    for m in (ref, ours):
        xl = x.clone().requires_grad_()
        packed = pack_padded_sequence(xl, lengths, batch_first=True, enforce_sorted=False)
        out, h = m(packed)
        loss = (out.data ** 2).sum() + h.sum()
        res.append((out.data, h, *torch.autograd.grad(loss, [xl] + list(m.parameters()))))
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else TOL[dtype]
    for a, b in zip(res[0], res[1]):
        torch.testing.assert_close(b, a, **tol)
    cell_ref = nn.RNNCell(5, 16).to("cuda", dtype)
    cell = RNNCell.from_torch(copy.deepcopy(cell_ref))
    torch.testing.assert_close(cell(x[:, 0]), cell_ref(x[:, 0]), **tol)


def test_cpu_autocast_like_nn_rnn():
    """Under autocast nn.RNN / nn.RNNCell run in the autocast dtype (bfloat16 on the CPU);
    so do rnn_ext's, with float32 gradients for float32 parameters."""
    ref, ours = _pair(0, torch.float32, input_size=3, hidden_size=8, num_layers=2,
                      bidirectional=True)
    x = torch.randn(6, 4, 3)
    res = []
    for m in (ref, ours):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, h = m(x)
        assert out.dtype == h.dtype == torch.bfloat16
        grads = torch.autograd.grad(out.float().sum() + h.float().sum(), list(m.parameters()))
        assert all(g.dtype == torch.float32 for g in grads)
        res.append((out.float(), h.float(), *grads))
    for a, b in zip(res[0], res[1]):
        torch.testing.assert_close(b, a, rtol=5e-2, atol=5e-2)
    torch.manual_seed(0)
    cell_ref = nn.RNNCell(3, 8)
    cell = RNNCell.from_torch(copy.deepcopy(cell_ref))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_ref, y = cell_ref(x[0]), cell(x[0])
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), y_ref.float(), rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("batch_sizes, match", [
    ([3, -1, 4], r"non-negative and non-increasing .*got \[3, -1, 4\]"),  # aborted the process
    ([3, 0, 2], r"non-increasing .*got \[3, 0, 2\]"),  # dropped 2 rows silently
    ([2, 3], r"non-increasing"),
    ([-1], r"non-negative"),
])
def test_malformed_packed_sequence_is_an_error(batch_sizes, match):
    n = max(sum(batch_sizes), 0)
    ps = PackedSequence(torch.randn(n, 3), torch.tensor(batch_sizes))
    with pytest.raises(RuntimeError):
        nn.RNN(3, 4)(ps)
    with pytest.raises(RuntimeError, match=match):
        RNN(3, 4)(ps)


def test_packed_sequence_batch_sizes_checks():
    with pytest.raises(RuntimeError, match="sum to 5 but its data has 6 rows"):
        RNN(3, 4)(PackedSequence(torch.randn(6, 3), torch.tensor([3, 2])))
    with pytest.raises(RuntimeError, match="1-D int64 CPU tensor, got shape \\(2,\\), "
                                           "dtype torch.int32"):
        RNN(3, 4)(PackedSequence(torch.randn(5, 3), torch.tensor([3, 2], dtype=torch.int32)))


@pytest.mark.parametrize("batch_sizes", [[0], [0, 0]])
@pytest.mark.parametrize("with_hx", [False, True])
def test_packed_sequence_of_no_sequences_matches_nn_rnn(batch_sizes, with_hx):
    """batch_sizes all 0: nn.RNN returns empty data and h_n of batch 0 (rnn_ext raised)."""
    ref, ours = _pair(0, torch.float32, input_size=3, hidden_size=4, num_layers=2,
                      bidirectional=True)
    ps = PackedSequence(torch.randn(0, 3), torch.tensor(batch_sizes))
    hx = torch.randn(4, 0, 4) if with_hx else None
    (o_ref, h_ref), (o, h) = ref(ps, hx), ours(ps, hx)
    assert o.data.shape == o_ref.data.shape == (0, 8) and h.shape == h_ref.shape == (4, 0, 4)
    assert torch.equal(o.batch_sizes, o_ref.batch_sizes) and o.data.dtype == o_ref.data.dtype
    assert o.data.requires_grad == o_ref.data.requires_grad
    assert h.requires_grad == h_ref.requires_grad
    for m, (out, h_n) in ((ref, (o_ref, h_ref)), (ours, (o, h))):  # backward works in both
        grads = torch.autograd.grad(out.data.sum() + h_n.sum(), list(m.parameters()))
        assert all(not g.any() for g in grads)


@pytest.mark.parametrize("kind", ["rnn", "cell"])
def test_bias_updated_in_place_between_forward_and_backward(kind):
    """nn.RNN / nn.RNNCell do not save their biases for backward, so updating one in place
    (an optimizer step on another loss, say) before backward is allowed and the gradients are
    the forward's. rnn_ext raised autograd's "modified by an inplace operation"; double
    backward, which recomputes the forward, refuses it with a message that says why."""
    torch.manual_seed(0)
    if kind == "rnn":
        ref, ours = _pair(0, torch.float64, input_size=3, hidden_size=4, num_layers=2)
        x = torch.randn(5, 2, 3, dtype=torch.float64)
    else:
        ref = nn.RNNCell(3, 4, dtype=torch.float64)
        ours = RNNCell(3, 4, dtype=torch.float64)
        ours.load_state_dict(ref.state_dict())
        x = torch.randn(2, 3, dtype=torch.float64)
    grads = []
    for m in (ref, ours):
        out = m(x)
        y = out[0] if isinstance(out, tuple) else out
        with torch.no_grad():
            for name, p in m.named_parameters():
                if name.startswith("bias"):
                    p.add_(1.0)
        grads.append(torch.autograd.grad(y.square().sum(), list(m.parameters())))
    for a, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, e, **TOL[torch.float64])

    out = ours(x)
    y = out[0] if isinstance(out, tuple) else out
    with torch.no_grad():
        (ours.bias_hh_l0 if kind == "rnn" else ours.bias_hh).mul_(2)
    with pytest.raises(RuntimeError, match="bias_hh was modified by an in-place operation after "
                                           "the forward.*double backward"):
        torch.autograd.grad(y.square().sum(), list(ours.parameters()), create_graph=True)
