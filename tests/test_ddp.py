"""rnn_ext.RNN / RNNCell under DistributedDataParallel: 2 CPU processes (gloo) give the same
gradients as one process on the whole batch (the reference)."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import rnn_ext

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)

WORLD_SIZE = 2


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.rnn = rnn_ext.RNN(3, 4, num_layers=2, bidirectional=True, dtype=torch.float64)
        self.cell = rnn_ext.RNNCell(8, 5, nonlinearity="relu", dtype=torch.float64)

    def forward(self, x):
        y, h_n = self.rnn(x)
        hx = None
        for t in range(y.shape[0]):
            hx = self.cell(y[t], hx)
        # A mean over the batch, so the average of the ranks' losses is the whole batch's loss.
        return (y ** 2).mean() + h_n.sin().mean() + hx.mean()


def _loss_grads(model, x):
    model.zero_grad()
    model(x).backward()
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def _worker(rank, init_file, state, x, out_path):
    dist.init_process_group(
        "gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE
    )
    try:
        model = _Model()
        model.load_state_dict(state, strict=True)
        ddp = nn.parallel.DistributedDataParallel(model)
        b = x.shape[1] // WORLD_SIZE
        ddp(x[:, rank * b:(rank + 1) * b]).backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        torch.save(grads, f"{out_path}.{rank}")
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_same_gradients_as_one(tmp_path):
    torch.manual_seed(0)
    model = _Model()
    x = torch.randn(5, 6, 3, dtype=torch.float64)
    expected = _loss_grads(model, x)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    out_path = str(tmp_path / "grads")
    mp.spawn(_worker, args=(str(tmp_path / "init"), state, x, out_path), nprocs=WORLD_SIZE,
             join=True)
    for rank in range(WORLD_SIZE):
        got = torch.load(f"{out_path}.{rank}")
        assert got.keys() == expected.keys()
        for name in expected:
            torch.testing.assert_close(got[name], expected[name], rtol=1e-10, atol=1e-12,
                                       msg=f"{name} on rank {rank}")
    assert os.path.exists(f"{out_path}.1")
