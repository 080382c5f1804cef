"""Run by test_distributed.py in a subprocess: FSDP2 on 2 CPU processes (gloo) vs one unsharded process.

    python tests/fsdp_worker.py OUT.json SPEC '{"param": value}' [checkpoint] [compile] [eval] [float64]

Each process builds the spec on the meta device, shards it with `resgraph.shard`, materializes
it with seed 0 and trains a few SGD steps (momentum 0.9) on its half of each global batch; rank 0 trains the
unsharded model built with seed 0 on the whole batches alongside. Then the sharded state_dict is
saved with torch.distributed.checkpoint, loaded into a second sharded model (initialised with
another seed), and gathered as a full state dict into an ordinary `resgraph.build` model.
Rank 0 writes every difference it measured to OUT.json.

Data parallelism sums each half batch's gradients in another order than one process does, so
float32 gradients of magnitude g differ by a few ulps of g; `float64` runs both models in double
precision, where differences from anything but that are visible far below 1e-6.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import tempfile
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.multiprocessing as mp
from torch._dynamo.utils import counters
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    set_model_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule

import resgraph

STEPS = 3
GLOBAL_BATCH = 4


def batch(model: torch.nn.Module, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same global batch in every process: inputs of the spec's first input's shape and dtype
    (token ids below the smallest embedding's size), regression targets of the output's shape."""
    generator = torch.Generator().manual_seed(100 + step)
    graph = model.graph
    given = graph.nodes[graph.inputs[0]].meta["type"]
    out_shape = graph.nodes[graph.outputs[0]].meta["type"].shape
    if given.dtype.startswith(("int", "uint")):
        vocabulary = min((m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)), default=2)
        x = torch.randint(0, vocabulary, (GLOBAL_BATCH, *given.shape), generator=generator,
                          dtype=getattr(torch, given.dtype))
    else:
        x = torch.randn(GLOBAL_BATCH, *given.shape, generator=generator)
    return x, torch.randn(GLOBAL_BATCH, *out_shape, generator=generator)


def sharded_model(spec: str, params: dict[str, Any], flags: set[str], mesh: Any, seed: int) -> torch.nn.Module:
    model = resgraph.build(spec, params=params, device="meta")
    if "float64" in flags:
        model.to(torch.float64)  # on meta: changes dtypes, allocates nothing
    if "checkpoint" in flags:
        resgraph.checkpoint(model)
    resgraph.shard(model, mesh=mesh)
    if "compile" in flags:
        resgraph.compile(model, backend="aot_eager")
    resgraph.materialize(model, seed=seed)
    return model.eval() if "eval" in flags else model


def full(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def worker(rank: int, world: int, port: int, out: str, spec: str, params: dict[str, Any], flags: set[str],
           folder: str) -> None:
    torch.set_num_threads(1)  # two processes on a small machine
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    mesh = init_device_mesh("cpu", (world,))
    dtype = torch.float64 if "float64" in flags else torch.float32
    model = sharded_model(spec, params, flags, mesh, seed=0)
    reference = resgraph.build(spec, params=params, seed=0).to(dtype)
    reference = reference.eval() if "eval" in flags else reference
    units = sum(isinstance(module, FSDPModule) for module in model.modules())
    report: dict[str, Any] = {"losses": [], "grad_diffs": [], "grad_max": 0.0, "fsdp_units": units}
    report["init_diff"] = max((full(p) - q).abs().max().item()
                              for p, q in zip(model.parameters(), reference.parameters()))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    reference_optimizer = torch.optim.SGD(reference.parameters(), lr=0.05, momentum=0.9)
    half = GLOBAL_BATCH // world
    for step in range(STEPS):
        x, y = (t.to(dtype) if t.is_floating_point() else t for t in batch(reference, step))
        mine = slice(rank * half, (rank + 1) * half)
        loss = torch.nn.functional.mse_loss(model(x[mine]), y[mine])
        loss.backward()
        global_loss = loss.detach().clone()
        dist.all_reduce(global_loss)  # the mean over equal halves is the mean of the halves' means
        reference_loss = torch.nn.functional.mse_loss(reference(x), y)
        reference_loss.backward()
        report["losses"].append([global_loss.item() / world, reference_loss.item()])
        pairs = list(zip(model.parameters(), reference.parameters()))
        report["grad_diffs"].append(max((full(p.grad) - q.grad).abs().max().item() for p, q in pairs))
        report["grad_max"] = max(report["grad_max"], *(q.grad.abs().max().item() for _, q in pairs))
        for opt in (optimizer, reference_optimizer):
            opt.step()
            opt.zero_grad()
    report["compiled_graphs"] = counters["stats"]["unique_graphs"]
    report["same_python_export"] = resgraph.to_python(model) == resgraph.to_python(reference)
    report["param_diff"] = max((full(p) - q).abs().max().item()
                               for p, q in zip(model.parameters(), reference.parameters()))

    # Save the sharded state and load it into a differently initialised sharded model.
    dcp.save(get_model_state_dict(model), checkpoint_id=folder)
    reloaded = sharded_model(spec, params, flags, mesh, seed=1)
    state = get_model_state_dict(reloaded)
    dcp.load(state, checkpoint_id=folder)
    set_model_state_dict(reloaded, state)
    report["reload_diff"] = max((full(p) - full(q)).abs().max().item()
                                for p, q in zip(model.parameters(), reloaded.parameters()))
    # The full (unsharded) state dict loads, strictly, into an ordinary build.
    whole = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        try:  # a .pt file holds whole weights: a sharded model is refused, not written as DTensors
            resgraph.save(model, os.path.join(folder, "sharded.pt"))
            report["pt_of_sharded"] = "written"
        except resgraph.UsageError as exc:
            report["pt_of_sharded"] = str(exc)
        plain = resgraph.build(spec, params=params, seed=1).to(dtype)
        plain.load_state_dict(whole, strict=True)
        report["full_state_keys_equal"] = list(whole) == list(reference.state_dict())
        report["full_state_diff"] = max((a - b).abs().max().item()
                                        for a, b in zip(plain.state_dict().values(), reference.state_dict().values()))
        with open(out, "w") as handle:
            json.dump(report, handle)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    out_path, spec_path, params_json, *rest = sys.argv[1:]
    with tempfile.TemporaryDirectory() as checkpoint_folder:
        # fork: the processes inherit the imports (seconds of torch.distributed) instead of redoing them
        mp.start_processes(worker, args=(2, free_port(), out_path, os.path.abspath(spec_path), json.loads(params_json),
                                         set(rest), checkpoint_folder), nprocs=2, join=True, start_method="fork")
