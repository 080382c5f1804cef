"""Run by test_export.py in a subprocess: DDP on 2 CPU processes (gloo) vs one process.

Both see the same global batch (each DDP rank half of it); the gradients must agree. Writes the
largest absolute difference to the file named by argv[1].
"""

from __future__ import annotations

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

import resgraph

SPEC = os.path.join(os.path.dirname(__file__), "..", "examples", "residual_mlp.yaml")
GLOBAL_BATCH = 8


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return torch.randn(GLOBAL_BATCH, 784, generator=generator), torch.randn(GLOBAL_BATCH, 10, generator=generator)


def gradients(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad()
    torch.nn.functional.mse_loss(model(x), y).backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def worker(rank: int, world: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    model = resgraph.build(SPEC, seed=0).eval()  # eval: dropout off, so both runs are deterministic
    ddp = DistributedDataParallel(model)
    x, y = batch()
    half = GLOBAL_BATCH // world
    ddp_grads = gradients(ddp, x[rank * half:(rank + 1) * half], y[rank * half:(rank + 1) * half])
    if rank == 0:
        single = resgraph.build(SPEC, seed=0).eval()
        reference = gradients(single, x, y)
        worst = max((ddp_grads[f"module.{k}"] - v).abs().max().item() for k, v in reference.items())
        with open(out, "w") as handle:
            handle.write(f"{worst} {len(reference)}")
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    mp.spawn(worker, args=(2, free_port(), sys.argv[1]), nprocs=2, join=True)
