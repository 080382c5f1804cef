"""resgraph's benchmarks: every number is a ratio against a reference measured in the same run.

    python -m bench                 # the full run (several minutes on 2 CPU cores)
    python -m bench --quick         # a smoke run with tiny sizes (what CI runs; no timing claims)
    python -m bench --device cuda   # forward latency on a GPU

Timing follows one protocol: warm-up calls first, then interleaved A/B rounds (A first in even
rounds, B first in odd ones) under `torch.inference_mode()` with a fixed thread count; each
figure is the median over rounds. Results go to bench/results/latest.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

import resgraph
from bench.references import ResidualMLP, ResNet50

ROOT = Path(__file__).resolve().parent.parent
RESNET50 = ROOT / "examples" / "resnet50.yaml"
MLP = ROOT / "bench" / "specs" / "residual_mlp_200.yaml"


def interleaved(a: Callable[[], Any], b: Callable[[], Any], rounds: int, inner: int) -> tuple[float, float]:
    """Median seconds per call of `a` and of `b`, timed in alternating order."""
    times: dict[str, list[float]] = {"a": [], "b": []}
    for r in range(rounds):
        for key, fn in ((("a", a), ("b", b)) if r % 2 == 0 else (("b", b), ("a", a))):
            start = time.perf_counter()
            for _ in range(inner):
                fn()
            times[key].append((time.perf_counter() - start) / inner)
    return statistics.median(times["a"]), statistics.median(times["b"])


def forward_latency(quick: bool, device: str) -> list[dict[str, Any]]:
    """resgraph's generated forward vs the hand-written module, same weights."""
    size, rounds = (32, 3) if quick else (224, 21)
    depth = 20 if quick else 200
    cases = [("ResNet-50", RESNET50, ResNet50(), 1, (3, size, size), {"image_size": size}),
             ("ResNet-50", RESNET50, ResNet50(), 8 if not quick else 2, (3, size, size), {"image_size": size}),
             (f"residual MLP, {depth} blocks", MLP, ResidualMLP(32, depth), 1, (32,), {"depth": depth})]
    rows = []
    for name, spec, reference, batch, shape, params in cases:
        ours = resgraph.build(spec, params=params, seed=0).to(device).eval()
        reference.load_state_dict(ours.state_dict(), strict=True)
        reference = reference.to(device).eval()
        x = torch.randn(batch, *shape, device=device)
        inner = 1 if name.startswith("ResNet") and not quick else 20 if not quick else 2

        def sync() -> None:
            if device == "cuda":
                torch.cuda.synchronize()

        with torch.inference_mode():
            for _ in range(3):
                ours(x), reference(x)
            a, b = interleaved(lambda m=ours, x=x: (m(x), sync()), lambda m=reference, x=x: (m(x), sync()),
                               rounds, inner)
        rows.append({"case": f"{name}, batch {batch}", "resgraph_ms": a * 1e3, "reference_ms": b * 1e3,
                     "ratio": a / b})
    return rows


def guard_cost(quick: bool) -> dict[str, Any]:
    """The input guard's cost: the residual MLP's forward with its guard vs the same forward without it
    (same module state, a twin class whose generated forward leaves the guard out), and an A/A control."""
    from resgraph.codegen import generate_forward
    from resgraph.lower import _generated_class

    depth, rounds, inner = (20, 5, 20) if quick else (200, 31, 50)
    model = resgraph.build(MLP, params={"depth": depth}, seed=0).eval()
    sizes = model.graph.meta.pop("sizes")
    source = generate_forward(model.graph)  # the same forward, without the guard lines
    model.graph.meta["sizes"] = sizes
    assert "raise ValueError" in model.code and "raise ValueError" not in source
    twin = _generated_class(type(model).__name__ + "Unguarded", source, type(model).__mro__[1]).__new__(
        _generated_class(type(model).__name__ + "Unguarded", source, type(model).__mro__[1]))
    twin.__dict__ = model.__dict__  # shares every submodule: only the forward's code differs
    x = torch.randn(1, 32)
    with torch.inference_mode():
        for _ in range(5):
            model(x), twin(x)
        guarded, unguarded = interleaved(lambda: model(x), lambda: twin(x), rounds, inner)
        same_a, same_b = interleaved(lambda: model(x), lambda: model(x), rounds, inner)
    return {"case": f"residual MLP, {depth} blocks, batch 1", "guarded_us": guarded * 1e6,
            "unguarded_us": unguarded * 1e6, "ratio": guarded / unguarded, "aa_ratio": same_a / same_b,
            "overhead_ns": (guarded - unguarded) * 1e9}


def build_time(quick: bool) -> dict[str, Any]:
    """Spec -> ResNet-50 module vs constructing the hand-written one; where resgraph's time goes."""
    rounds = 3 if quick else 9
    resgraph.build(RESNET50)  # warm: imports and caches that a second build in a process would have
    a, b = interleaved(lambda: resgraph.build(RESNET50), lambda: ResNet50(), rounds, 1)
    return {"resgraph_s": a, "reference_s": b, "ratio": a / b, "stages": stage_breakdown(RESNET50)}


def stage_breakdown(path: Path, params: dict[str, Any] | None = None) -> dict[str, float]:
    """Seconds per pipeline stage for one build."""
    from resgraph.codegen import generate_forward
    from resgraph.expand import expand
    from resgraph.lower import lower
    from resgraph.model import part_sizes
    from resgraph.pipeline import load
    from resgraph.resolve import resolve
    from resgraph.shapes import infer_shapes
    from resgraph.validate import validate

    marks = [("start", time.perf_counter())]
    loaded = load(path)
    marks.append(("load YAML", time.perf_counter()))
    spec = validate(loaded, params)
    marks.append(("validate (schema, top level)", time.perf_counter()))
    scope = expand(spec, loaded.source)
    marks.append(("expand (layers typed, blocks instantiated)", time.perf_counter()))
    graph = infer_shapes(resolve(scope))
    marks.append(("resolve + infer shapes", time.perf_counter()))
    part_sizes(graph)
    marks.append(("count parameters", time.perf_counter()))
    for g in [graph, *(g for _, g in graph.subgraphs())]:
        generate_forward(g)
    marks.append(("generate code", time.perf_counter()))
    lower(graph)
    marks.append(("lower (modules, weights)", time.perf_counter()))
    return {name: end - marks[i][1] for i, (name, end) in enumerate(marks[1:])}


def chain(n: int) -> dict[str, Any]:
    """A spec of n small Linear layers with a skip every two layers (~1.5 n nodes)."""
    layers = [{f"l{i}": {"op": "Linear", "out_features": 8}} for i in range(n)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, n - 2, 2)]
    return {"resgraph": 1, "name": "Chain", "inputs": {"x": [8]}, "layers": layers, "skips": skips}


STAGES = {"validate": "resgraph.load_spec(spec)", "shapes": "check_loaded(load(spec), None)",
          "build": "resgraph.build(spec, max_params=None)"}

SCALING_PROBE = """
import re, sys, time
sys.path.insert(0, {root!r})
import resgraph
from resgraph.pipeline import check_loaded, load
from bench.run import chain
resgraph.build(chain(10))  # imports and caches first: they are not the stage's cost
spec = chain({n})
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS")
start = time.perf_counter()
{stage}
print(time.perf_counter() - start, (kib("VmHWM") - base) / 1024)
"""


def scaling(quick: bool) -> list[dict[str, Any]]:
    """Time and peak memory (resident, so torch's allocations count) to validate, infer shapes
    and fully build n-layer chains, each stage in a fresh process."""
    rows = []
    for n in ((100, 300) if quick else (1_000, 10_000, 100_000)):
        row: dict[str, Any] = {"layers": n, "nodes": n + len(chain(n)["skips"]) + 1}
        for name, stage in STAGES.items():
            code = SCALING_PROBE.format(root=str(ROOT), n=n, stage=stage)
            result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            seconds, mib = result.stdout.split()
            row[f"{name}_s"], row[f"{name}_peak_mib"] = float(seconds), float(mib)
        rows.append(row)
    return rows


def compile_speed(quick: bool) -> dict[str, Any]:
    """torch.compile (inductor) vs eager on ResNet-50, batch 8: reported, not targeted.

    Quick mode compiles a 5-block residual MLP instead: the code path runs, in seconds.
    """
    if quick:
        model = resgraph.build(MLP, params={"depth": 5}, seed=0).eval()
        x = torch.randn(1, 32)
    else:
        model = resgraph.build(RESNET50, seed=0).eval()
        x = torch.randn(8, 3, 224, 224)
    compiled = torch.compile(model)
    with torch.inference_mode():
        start = time.perf_counter()
        compiled(x)
        compile_s = time.perf_counter() - start
        eager, fast = interleaved(lambda: model(x), lambda: compiled(x), 3 if quick else 7, 1)
    return {"eager_ms": eager * 1e3, "compiled_ms": fast * 1e3, "speedup": eager / fast, "compile_s": compile_s}


MEMORY_PROBE = """
import re, sys
sys.path.insert(0, {root!r})
import torch, resgraph
from bench.references import ResNet50
resgraph.build({tutorial!r})  # import everything first: imports are not the build's memory
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")  # reset the peak (VmHWM) to the current size
base = kib("VmRSS")
model = {build}
print(kib("VmHWM") - base)
"""


def build_memory() -> dict[str, Any]:
    """Peak resident memory added by building ResNet-50, each in a fresh process (Linux)."""
    peaks = {}
    for name, build in (("resgraph", f"resgraph.build({str(RESNET50)!r})"), ("reference", "ResNet50()")):
        code = MEMORY_PROBE.format(root=str(ROOT), tutorial=str(ROOT / "examples" / "tutorial.yaml"), build=build)
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        peaks[name] = int(result.stdout.strip().splitlines()[-1]) / 1024
    return {"resgraph_mib": peaks["resgraph"], "reference_mib": peaks["reference"],
            "ratio": peaks["resgraph"] / peaks["reference"]}


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    lines = [f"Run {results['date']} on {m['cpu']} ({m['threads']} threads), torch {m['torch']}, "
             f"Python {m['python']}, device {results['device']}" + (" (quick mode)" if results["quick"] else ""), "",
             "| measurement | resgraph | reference | ratio | target |", "|---|---|---|---|---|"]
    for row in results["forward"]:
        target = "<= 1.00" if "MLP" in row["case"] else "<= 1.02"
        lines.append(f"| forward latency, {row['case']} | {row['resgraph_ms']:.3f} ms | {row['reference_ms']:.3f} ms "
                     f"| {row['ratio']:.3f} | {target} |")
    g = results["guard"]
    lines.append(f"| input guard, {g['case']} (with vs without; A/A {g['aa_ratio']:.3f}) | {g['guarded_us']:.1f} us "
                 f"| {g['unguarded_us']:.1f} us | {g['ratio']:.3f} ({g['overhead_ns']:+.0f} ns) | not measurable |")
    b = results["build"]
    lines.append(f"| build ResNet-50 (spec -> module) | {b['resgraph_s']:.3f} s | {b['reference_s']:.3f} s "
                 f"| {b['ratio']:.2f} | <= 1.3 |")
    if "memory" in results:
        mem = results["memory"]
        lines.append(f"| peak memory building ResNet-50 | {mem['resgraph_mib']:.1f} MiB "
                     f"| {mem['reference_mib']:.1f} MiB | {mem['ratio']:.2f} | <= 1.1 |")
    if "compile" in results:
        c = results["compile"]
        model = "residual MLP, 5 blocks" if results["quick"] else "ResNet-50, batch 8"
        lines.append(f"| torch.compile (inductor) vs eager, {model} | {c['compiled_ms']:.1f} ms | "
                     f"{c['eager_ms']:.1f} ms eager | speed-up {c['speedup']:.2f}x (compile {c['compile_s']:.0f} s) "
                     "| reported |")
    lines += ["", "Build time by stage (ResNet-50):", "", "| stage | seconds |", "|---|---|"]
    lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in b["stages"].items()]
    lines += ["", "Scaling (chains of Linear layers with a skip every two layers; time, and peak memory added",
              "by the stage, each stage in a fresh process):", "",
              "| layers | nodes | validate | infer shapes | full build |", "|---|---|---|---|---|"]
    for row in results["scaling"]:
        cells = [f"{row[f'{s}_s']:.2f} s, {row[f'{s}_peak_mib']:.0f} MiB" for s in STAGES]
        lines.append(f"| {row['layers']:,} | {row['nodes']:,} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (a smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where forward latency runs")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for latest.json/.md")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile measurement")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "device": args.device,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version()},
        "forward": forward_latency(args.quick, args.device),
        "guard": guard_cost(args.quick),
        "build": build_time(args.quick),
        "scaling": scaling(args.quick),
    }
    if sys.platform.startswith("linux"):
        results["memory"] = build_memory()
    if not args.skip_compile:
        results["compile"] = compile_speed(args.quick)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / "latest.md").write_text(text)
    print(text)
    return 0
