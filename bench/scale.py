"""Benchmarks of training at scale: regional vs whole-model compilation, activation checkpointing
memory, and a 7B-parameter meta build.

    python -m bench.scale            # the full run (about half an hour on 2 CPU cores)
    python -m bench.scale --quick    # a smoke run: tiny models, no timing or memory claims

Every measurement runs in a fresh process: compile times with an empty inductor cache (a cold
compile, as a first run sees it), peak memory with a fresh resident-set peak. A training step
is a forward and a backward pass (loss: mean of squared outputs); steady-state time is the
median over steps after the compiled code is warm. Results go to bench/results/scale.json and
.md; docs/benchmarks.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
VIT = ROOT / "examples" / "vit_b_16.yaml"
RESNET50 = ROOT / "examples" / "resnet50.yaml"

# name -> (spec, params, input shape, batch) for the full run and for --quick.
MODELS: dict[str, tuple[Path, dict[str, Any], tuple[int, ...], int]] = {
    "ViT-B/16": (VIT, {"image_size": 64}, (3, 64, 64), 8),  # 12 blocks; 17 tokens instead of 197
    "ResNet-50": (RESNET50, {"image_size": 64}, (3, 64, 64), 8),  # 16 blocks of 8 distinct forwards
}
QUICK_MODELS: dict[str, tuple[Path, dict[str, Any], tuple[int, ...], int]] = {
    "ViT-B/16": (VIT, {"image_size": 16, "patch": 8, "hidden": 32, "depth": 3, "heads": 2, "mlp": 64},
                 (3, 16, 16), 2),
    "ResNet-50": (RESNET50, {"image_size": 32, "depths": [1, 1, 1, 1]}, (3, 32, 32), 2),
}
MEMORY_MODELS: dict[str, tuple[Path, dict[str, Any], tuple[int, ...], int]] = {
    "ViT-B/16": (VIT, {}, (3, 224, 224), 8),
    "ResNet-50": (RESNET50, {}, (3, 224, 224), 8),
}
# ViT-B/16 at Llama-2-7B's width and depth: 6,720,689,128 parameters.
VIT_7B = {"hidden": 4096, "depth": 32, "heads": 32, "mlp": 17408}


def _run_probe(function: str, *args: Any, env: dict[str, str] | None = None) -> Any:
    """Call `bench.scale.<function>(*args)` in a fresh Python process; its JSON result."""
    code = (f"import json, sys\nsys.path.insert(0, {str(ROOT)!r})\nfrom bench import scale\n"
            f"print(json.dumps(scale.{function}(*{args!r})))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, **(env or {})}, timeout=3600)
    if result.returncode != 0:
        raise RuntimeError(f"{function}{args} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def _model_and_input(spec: str, params: dict[str, Any], shape: list[int], batch: int) -> tuple[Any, Any]:
    import torch

    import resgraph

    model = resgraph.build(spec, params=params, seed=0)
    return model, torch.randn(batch, *shape, generator=torch.Generator().manual_seed(0))


def compile_probe(spec: str, params: dict[str, Any], shape: list[int], batch: int, mode: str, backend: str,
                  steps: int) -> dict[str, Any]:
    """One model's training step, eager or compiled whole or by block: first-step and steady times."""
    import torch
    from torch._dynamo.utils import counters

    import resgraph

    torch.set_num_threads(2)
    torch._dynamo.reset()  # --quick runs every probe in one process
    counters.clear()
    model, x = _model_and_input(spec, params, shape, batch)
    run: Any = model
    if mode == "whole":
        run = torch.compile(model, backend=backend)
    elif mode == "regional":
        resgraph.compile(model, backend=backend)

    def step() -> None:
        model.zero_grad(set_to_none=False)
        run(x).square().mean().backward()

    start = time.perf_counter()
    step()  # compiles, for the compiled modes
    first = time.perf_counter() - start
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {"first_s": first, "step_ms": statistics.median(times) * 1e3,
            "graphs": counters["stats"]["unique_graphs"]}


def regional_compile(quick: bool) -> list[dict[str, Any]]:
    """Cold compile time and steady training-step time: eager, whole-model and regional torch.compile."""
    backend = "aot_eager" if quick else "inductor"
    rows = []
    for name, (spec, params, shape, batch) in (QUICK_MODELS if quick else MODELS).items():
        row: dict[str, Any] = {"model": name, "batch": batch, "shape": list(shape)}
        for mode in ("eager", "whole", "regional"):
            with tempfile.TemporaryDirectory() as cache:  # an empty inductor cache: a cold compile
                args = (str(spec), params, list(shape), batch, mode, backend, 2 if quick else 10)
                row[mode] = (compile_probe(*args) if quick else
                             _run_probe("compile_probe", *args, env={"TORCHINDUCTOR_CACHE_DIR": cache}))
        rows.append(row)
    return rows


def memory_probe(spec: str, params: dict[str, Any], shape: list[int], batch: int, checkpointed: bool) -> dict[str, Any]:
    """Peak resident memory one training step adds (Linux): activations and temporaries.

    Gradients are allocated before the baseline, so what the step adds is what it keeps for the
    backward pass plus its temporaries. The caller fixes glibc's mmap threshold, so large freed
    blocks return to the system and the resident peak follows live memory.
    """
    import torch

    import resgraph

    torch.set_num_threads(2)
    model, x = _model_and_input(spec, params, shape, batch)
    if checkpointed:
        resgraph.checkpoint(model)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    with open("/proc/self/clear_refs", "w") as refs:
        refs.write("5")  # reset the peak (VmHWM) to the current size
    base = _kib("VmRSS")
    start = time.perf_counter()
    model(x).square().mean().backward()
    seconds = time.perf_counter() - start
    checksum = sum(p.grad.double().square().sum().item() for p in model.parameters())
    return {"peak_mib": (_kib("VmHWM") - base) / 1024, "step_s": seconds, "grad_checksum": checksum}


def checkpoint_memory(quick: bool) -> list[dict[str, Any]]:
    """Peak memory of a training step with and without activation checkpointing of every block."""
    rows = []
    for name, (spec, params, shape, batch) in (QUICK_MODELS if quick else MEMORY_MODELS).items():
        row: dict[str, Any] = {"model": name, "batch": batch, "shape": list(shape)}
        for key, checkpointed in (("plain", False), ("checkpointed", True)):
            row[key] = _run_probe("memory_probe", str(spec), params, list(shape), batch, checkpointed,
                                  env={"MALLOC_MMAP_THRESHOLD_": "131072"})
        plain, checked = row["plain"]["grad_checksum"], row["checkpointed"]["grad_checksum"]
        row["grad_checksum_rel_diff"] = abs(plain - checked) / max(abs(plain), 1e-30)
        rows.append(row)
    return rows


def _kib(field: str) -> int:
    """A /proc/self/status field (VmRSS, VmHWM) in KiB. (getrusage's ru_maxrss would not do: it
    survives exec, so a child would report its parent's peak.)"""
    import re

    with open("/proc/self/status") as status:
        return int(re.search(field + r":\s+(\d+)", status.read()).group(1))  # type: ignore[union-attr]


def rss_probe(build: bool, params: dict[str, Any]) -> dict[str, Any]:
    """Seconds and peak resident memory of `resgraph build --device meta` (or of importing torch)."""
    start = time.perf_counter()
    import torch  # noqa: F401

    if build:
        import contextlib
        import io

        from resgraph.cli import main

        args = ["build", str(VIT), "--device", "meta", *(f"--set={k}={v}" for k, v in params.items())]
        with contextlib.redirect_stdout(io.StringIO()) as out:
            assert main(args) == 0
        total = next(line for line in out.getvalue().splitlines() if line.startswith("Total params"))
    seconds = time.perf_counter() - start
    peak = _kib("VmHWM") / 1024
    return {"seconds": seconds, "peak_mib": peak, **({"total": total} if build else {})}


def meta_build(quick: bool) -> dict[str, Any]:
    """A 6.7B-parameter spec built on meta with its summary, against `import torch` alone."""
    params = {"hidden": 256, "depth": 4, "heads": 4, "mlp": 1024} if quick else VIT_7B
    return {"import_torch": _run_probe("rss_probe", False, params), "build": _run_probe("rss_probe", True, params)}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Run {results['date']} on {m['cpu']} ({m['cores']} cores, 2 threads), torch {m['torch']}, "
             f"Python {m['python']}, CPU only (no GPU)" + (" (quick mode)" if results["quick"] else ""), "",
             "Regional vs whole-model torch.compile (inductor; cold cache; training step = forward + backward):", "",
             "| model, input | eager step | whole: compile (first step) | whole: step | regional: compile "
             "(first step) | regional: step | graphs whole / regional |", "|---|---|---|---|---|---|---|"]
    for row in results["compile"]:
        e, w, r = row["eager"], row["whole"], row["regional"]
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"| {row['model']}, {row['batch']}x{shape} | {e['step_ms']:.0f} ms | {w['first_s']:.1f} s | "
                     f"{w['step_ms']:.0f} ms | {r['first_s']:.1f} s | {r['step_ms']:.0f} ms | "
                     f"{w['graphs']} / {r['graphs']} |")
    lines += ["", "Activation checkpointing of every block (peak resident memory a training step adds; one step):",
              "", "| model, input | plain | checkpointed | ratio | step time plain / checkpointed | "
              "gradient checksum rel. diff |", "|---|---|---|---|---|---|"]
    for row in results["checkpoint"]:
        p, c = row["plain"], row["checkpointed"]
        shape = "x".join(map(str, row["shape"]))
        lines.append(f"| {row['model']}, {row['batch']}x{shape} | {p['peak_mib']:.0f} MiB | {c['peak_mib']:.0f} MiB | "
                     f"{c['peak_mib'] / p['peak_mib']:.2f} | {p['step_s']:.2f} s / {c['step_s']:.2f} s | "
                     f"{row['grad_checksum_rel_diff']:.1e} |")
    meta = results["meta"]
    added = meta["build"]["peak_mib"] - meta["import_torch"]["peak_mib"]
    lines += ["", "Meta build of ViT-B/16 at 7B scale (`resgraph build examples/vit_b_16.yaml --device meta "
              + " ".join(f"--set {k}={v}" for k, v in (VIT_7B.items() if not results["quick"] else [])) + "`):", "",
              "| process | seconds | peak resident memory |", "|---|---|---|",
              f"| `python -c \"import torch\"` | {meta['import_torch']['seconds']:.1f} s | "
              f"{meta['import_torch']['peak_mib']:.0f} MiB |",
              f"| build on meta + summary ({meta['build']['total']}) | {meta['build']['seconds']:.1f} s | "
              f"{meta['build']['peak_mib']:.0f} MiB (+{added:.0f} MiB) |"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.scale", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny models, aot_eager backend (a smoke test)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for scale.json/.md")
    args = parser.parse_args(argv)
    import torch

    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick,
        "machine": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "compile": regional_compile(args.quick),
        "checkpoint": checkpoint_memory(args.quick) if sys.platform.startswith("linux") else [],
        "meta": meta_build(args.quick),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "scale.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / "scale.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
