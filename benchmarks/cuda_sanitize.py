"""Run every rnn_ext CUDA kernel once on small inputs, for compute-sanitizer.

device_check.sh runs this under ``compute-sanitizer --tool memcheck`` (every kernel: out-of-bounds
and misaligned accesses, launch errors) and ``--tool racecheck`` / ``--tool synccheck`` (the
project's kernels only: shared-memory hazards, barrier misuse in the persistent kernels). Each
case also checks its values against the CPU operator in float64 on the same inputs, so a plain
run (no sanitizer) is a quick correctness smoke test too.

Cases, each forward and backward (every input, weight and bias gradient):
  * elman_rnn, cuBLAS step loop (RNN_EXT_CUDA_PERSISTENT=off) and persistent kernel (=require):
    tanh and relu, reverse, per-sequence lengths, H not a multiple of 32, a multi-block grid;
  * elman_cell (nn.RNNCell semantics);
  * seq_nll_loss and seq_cross_entropy with class weights and ignored targets, 'mean' and 'none'.
Dtypes: float32 and bfloat16 (``--dtypes``).

Usage: python benchmarks/cuda_sanitize.py [--device cuda] [--dtypes float32,bfloat16]
Prints one line per case and ``cuda_sanitize: N cases, K failed`` last; exit status 1 when a
case failed or raised, else 0. ``--device cpu`` runs the same cases on the CPU kernels (to try the
script without a GPU).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback

import torch

import rnn_ext

# Bounds on each result's error against float64, measured two ways (both must hold):
# ||got - ref|| / ||ref|| and max|got - ref| / max|ref| (the second sees one wrong element).
# A smoke test: tests/test_cuda.py holds the tight bounds.
TOL = {torch.float32: 1e-4, torch.bfloat16: 5e-2, torch.float64: 1e-10}

# (T, B, I, H): H = 37 is not a multiple of 32; (3, 8, 16, 300) needs several blocks in the
# persistent kernel's grid (its barrier is then a real grid-wide one).
ELMAN_SHAPES = [(4, 3, 6, 37), (3, 8, 16, 300)]


def rel(got: torch.Tensor, ref: torch.Tensor) -> float:
    """The larger of the norm-wise and the max-wise relative error of `got` against `ref`."""
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    if got.shape != ref.shape:
        raise AssertionError(f"shape {tuple(got.shape)} != reference {tuple(ref.shape)}")
    if not torch.isfinite(got).all():
        raise AssertionError("non-finite value in the result (an unwritten element?)")
    if ref.numel() == 0:
        return 0.0
    diff = got - ref
    norm = diff.norm().item() / max(ref.norm().item(), 1e-30)
    worst = diff.abs().max().item() / max(ref.abs().max().item(), 1e-30)
    return max(norm, worst)


def run_and_grads(fn, inputs, grads_out, diff):
    """Outputs of fn(*inputs) and the gradients of sum(out * g) w.r.t. inputs[i], i in diff."""
    leaves = [x.detach().clone().requires_grad_() if i in diff else x
              for i, x in enumerate(inputs)]
    outs = fn(*leaves)
    outs = outs if isinstance(outs, (tuple, list)) else (outs,)
    wrt = [x for x in leaves if x is not None and x.requires_grad]
    grads = torch.autograd.grad(outs, wrt, grads_out[: len(outs)])
    return [o.detach() for o in outs], list(grads)


def compare(name, fn, inputs, grads_out, diff, dtype, device, backward_ref=None):
    """Run fn on `device` in `dtype` and on the CPU in float64 (same rounded values).

    The gradients' reference is the float64 run's, or, with `backward_ref`, the float64
    backward given the device's outputs: backward_ref(inputs64, outs64, grads_out64) ->
    gradients. (In 16 bits the end-to-end reference is ill-conditioned for a recurrence: a relu
    flipped by the forward's rounding, or 1 - h^2 near h = +-1, moves a correct gradient by
    10-20%; given the same outputs, the backward's own error shows.)
    """
    dev_in = [x.to(device, dtype) if x is not None and x.is_floating_point()
              else (x.to(device) if x is not None else None) for x in inputs]
    dev_g = [g.to(device, dtype) for g in grads_out]
    outs, grads = run_and_grads(fn, dev_in, dev_g, diff)
    if device.type == "cuda":
        torch.cuda.synchronize()
    ref_in = [x.detach().cpu().double() if x is not None and x.is_floating_point()
              else (x.cpu() if x is not None else None) for x in dev_in]
    ref_g = [g.cpu().double() for g in dev_g]
    ref_outs, ref_grads = run_and_grads(fn, ref_in, ref_g, diff)
    if backward_ref is not None:
        ref_grads = backward_ref(ref_in, [o.cpu().double() for o in outs], ref_g)
    errs = [rel(a, b) for a, b in zip(outs + grads, ref_outs + ref_grads)]
    worst = max(errs)
    ok = worst <= TOL[dtype]
    print(f"{'ok  ' if ok else 'FAIL'} {name:<58} {str(dtype).replace('torch.', ''):<9} "
          f"max rel err {worst:.2e}", flush=True)
    return ok


def elman_backward_ref(act, reverse, lengths):
    """The float64 backward of elman_rnn given its (device) output, as compare() wants."""
    def ref(inp, outs, g):
        x, h0, wih, whh, bih, _ = inp
        gx, gh0, gwih, gwhh, gb = torch.ops.rnn_ext.elman_backward(
            g[0], g[1], x, h0, wih, whh, outs[0], act, reverse, lengths)
        return [gx, gh0, gwih, gwhh, gb, gb]
    return ref


def cell_backward_ref(act):
    def ref(inp, outs, g):
        gx, ghx, gwih, gwhh, gb = torch.ops.rnn_ext.elman_cell_backward(
            g[0], inp[0], inp[1], inp[2], inp[3], outs[0], act)
        return [gx, ghx, gwih, gwhh, gb, gb]
    return ref


def elman_cases(dtype, device, gen):
    for T, B, I, H in ELMAN_SHAPES:
        x = torch.randn(T, B, I, generator=gen)
        h0 = torch.randn(B, H, generator=gen) * 0.5
        w_ih = torch.randn(H, I, generator=gen) / I ** 0.5
        w_hh = torch.randn(H, H, generator=gen) / H ** 0.5
        b_ih, b_hh = torch.randn(H, generator=gen) * 0.1, torch.randn(H, generator=gen) * 0.1
        gy, ghn = torch.randn(T, B, H, generator=gen), torch.randn(B, H, generator=gen)
        lengths = torch.tensor([T] + [max(1, T - 1 - i % T) for i in range(B - 1)])
        for mode in ("off", "require"):
            for act, reverse, lens in (("tanh", False, None), ("relu", True, None),
                                       ("tanh", False, lengths), ("tanh", True, lengths)):
                name = (f"elman_rnn {mode:<7} T,B,I,H={T},{B},{I},{H} {act} "
                        f"{'rev' if reverse else 'fwd'}{' lengths' if lens is not None else ''}")

                def fn(x_, h0_, wi, wh, bi, bh, act=act, reverse=reverse, lens=lens, mode=mode):
                    # The mode matters on CUDA only; the CPU reference ignores it.
                    os.environ["RNN_EXT_CUDA_PERSISTENT"] = mode
                    return rnn_ext.elman_rnn(x_, h0_, wi, wh, bi, bh, act, reverse, lens)

                yield (name, fn, [x, h0, w_ih, w_hh, b_ih, b_hh], [gy, ghn], range(6),
                       elman_backward_ref(act, reverse, lens))
    os.environ["RNN_EXT_CUDA_PERSISTENT"] = "auto"
    B, I, H = 5, 7, 45
    cell_in = [torch.randn(B, I, generator=gen), torch.randn(B, H, generator=gen),
               torch.randn(H, I, generator=gen) / I ** 0.5,
               torch.randn(H, H, generator=gen) / H ** 0.5,
               torch.randn(H, generator=gen) * 0.1, torch.randn(H, generator=gen) * 0.1]
    for act in ("tanh", "relu"):
        yield (f"elman_cell B,I,H={B},{I},{H} {act}",
               lambda *a, act=act: rnn_ext.elman_cell(*a, nonlinearity=act),
               cell_in, [torch.randn(B, H, generator=gen)], range(6), cell_backward_ref(act))


def loss_cases(gen):
    T, B, C = 6, 5, 85
    scores = torch.randn(T, B, C, generator=gen)
    target = torch.randint(0, C, (B, T), generator=gen)
    target[1, 2] = target[3, 0] = -100  # ignored
    weight = torch.rand(C, generator=gen) + 0.5
    for reduction in ("mean", "none"):
        g = [torch.randn((), generator=gen) if reduction == "mean"
             else torch.randn(B, T, generator=gen)]
        yield (f"seq_nll_loss {reduction} T,B,C={T},{B},{C} weight+ignore",
               lambda s, t, w, r=reduction: rnn_ext.seq_nll_loss(
                   torch.log_softmax(s, -1), t, w, reduction=r),
               [scores, target, weight], g, [0], None)
        yield (f"seq_cross_entropy {reduction} T,B,C={T},{B},{C} weight+ignore",
               lambda s, t, w, r=reduction: rnn_ext.seq_cross_entropy(s, t, w, reduction=r),
               [scores, target, weight], g, [0], None)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--dtypes", default="float32,bfloat16")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not (torch.cuda.is_available() and rnn_ext.has_cuda_kernels()):
        print("cuda_sanitize: needs a CUDA device and rnn_ext built with its CUDA kernels",
              file=sys.stderr)
        return 2
    torch.backends.cuda.matmul.allow_tf32 = False
    n = failed = 0
    for dtype in [getattr(torch, d) for d in args.dtypes.split(",")]:
        gen = torch.Generator().manual_seed(0)
        cases = list(elman_cases(dtype, device, gen))
        cases += list(loss_cases(gen))
        for name, fn, inputs, grads_out, diff, backward_ref in cases:
            n += 1
            try:
                if not compare(name, fn, inputs, grads_out, list(diff), dtype, device,
                               backward_ref):
                    failed += 1
            except Exception as e:  # report and go on: the other kernels still get checked
                failed += 1
                print(f"ERR  {name:<58} {dtype}: {type(e).__name__}: {e}"[:400], flush=True)
                traceback.print_exc(limit=2, file=sys.stdout)
    os.environ["RNN_EXT_CUDA_PERSISTENT"] = "auto"
    print(f"cuda_sanitize: {n} cases, {failed} failed", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
