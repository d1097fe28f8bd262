"""Helpers shared by the CUDA tests (tests/test_cuda.py, on a GPU) and the emulated CUDA tests
(tests/test_cuda_emulated.py, on the CPU): the Elman operators' random arguments, the relative
error the tests bound and its bounds per dtype, the capture of a CUDA graph, and the
large-logit rows of the cross-entropy accuracy tests (also in tests/test_loss.py). Not a test
module itself."""

from __future__ import annotations

import math

import torch


# Relative error bounds ||got - ref|| / ||ref|| against a float64 reference computed from the
# same rounded inputs, per dtype (outputs are rounded to the dtype every step).
REL_TOL = {torch.float64: 1e-12, torch.float32: 2e-5, torch.float16: 1e-2, torch.bfloat16: 5e-2}


def make_args(T, B, I, H, dtype, bias=True, seed=0, scale=None):
    """Random arguments of elman_forward on the CPU (the caller moves them): input (T, B, I),
    h_0 (B, H), weight_ih (H, I), weight_hh (H, H), bias_ih and bias_hh (H,) (None without
    `bias`), uniform in +-scale (default 1 / sqrt(H), nn.RNN's init; h_0 in +-0.5)."""
    g = torch.Generator().manual_seed(seed)
    s = scale if scale is not None else 1.0 / math.sqrt(max(H, 1))

    def rnd(*shape, a=1.0):
        return ((torch.rand(*shape, generator=g, dtype=torch.float64) * 2 - 1) * a).to(dtype)

    x = rnd(T, B, I)
    h0 = rnd(B, H, a=0.5)
    wih = rnd(H, I, a=s)
    whh = rnd(H, H, a=s)
    bih = rnd(H, a=s) if bias else None
    bhh = rnd(H, a=s) if bias else None
    return x, h0, wih, whh, bih, bhh


def rel_err(got: torch.Tensor, ref: torch.Tensor) -> float:
    """||got - ref|| / ||ref|| in float64 on the CPU (||got - ref|| when ref is 0); asserts the
    shapes match and got holds no NaN (an element a kernel never wrote, on a poisoned
    allocator)."""
    got = got.detach().double().cpu()
    ref = ref.detach().double().cpu()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert not torch.isnan(got).any(), "NaN in the result (an unwritten element?)"
    denom = ref.norm().item()
    diff = (got - ref).norm().item()
    return diff / denom if denom > 0 else diff


def confident_rows(T, B, C, scale, seed=0):
    """Logits of spread and offset ``scale`` (float32, (T, B, C)) and a (B, T) target that is
    each row's largest class in even columns, its second largest in odd ones: small losses
    beside large logits."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, C, generator=g) * scale + scale
    top2 = x.topk(2, dim=2).indices  # (T, B, 2)
    target = top2[..., 0].t().contiguous()
    target[:, 1::2] = top2[..., 1].t()[:, 1::2]
    return x, target


def capture_graph(fn):
    """Runs fn once on a side stream (the warm-up torch.cuda.graph's doc asks for), then
    captures it in a CUDA graph. Returns (graph, what fn returned while captured: the static
    outputs that each replay rewrites)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph, out
