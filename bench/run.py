"""resgraph's benchmarks: every number is a ratio against a reference measured in the same run.

    python -m bench                 # the full run (several minutes on 2 CPU cores)
    python -m bench --quick         # a smoke run with tiny sizes (what CI runs; no timing claims)
    python -m bench --device cuda   # forward latency on a GPU
    python -m bench --only scaling,stages   # some sections only (see SECTIONS); results go to
                                            # only-<sections>.json/.md, latest.* are left alone

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
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.fx

import resgraph
from bench import peers
from bench.references import ResidualMLP, ResNet50, TutorialResNet
from bench.timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
RESNET50 = ROOT / "examples" / "resnet50.yaml"
MLP = ROOT / "bench" / "specs" / "residual_mlp_200.yaml"
TUTORIAL = ROOT / "examples" / "tutorial.yaml"


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

        traced = torch.fx.symbolic_trace(reference)  # the peer a user might pick: the same module as an fx graph
        with torch.inference_mode():
            for _ in range(3):
                ours(x), reference(x), traced(x)
            a, b = interleaved(lambda m=ours, x=x: (m(x), sync()), lambda m=reference, x=x: (m(x), sync()),
                               rounds, inner)
            same_a, same_b = interleaved(lambda m=reference, x=x: (m(x), sync()),
                                         lambda m=reference, x=x: (m(x), sync()), rounds, inner)
            fx, fx_reference = interleaved(lambda m=traced, x=x: (m(x), sync()),
                                           lambda m=reference, x=x: (m(x), sync()), rounds, inner)
            faults = {label: page_faults(lambda m=model, x=x: (m(x), sync()))
                      for label, model in (("resgraph", ours), ("reference", reference), ("fx", traced))}
        rows.append({"case": f"{name}, batch {batch}", "resgraph_ms": a * 1e3, "reference_ms": b * 1e3,
                     "ratio": a / b, "aa_ratio": same_a / same_b, "fx_ratio": fx / fx_reference, "rounds": rounds,
                     "page_faults": faults})
    return rows


def page_faults(call: Callable[[], Any], calls: int = 3) -> int | None:
    """Minor page faults of one call (median of `calls`): pages the C allocator handed back to the
    kernel and the call touched again, each zeroed by the kernel. At large batches their count
    differs between processes with the heap's state, and moves forward times by several percent.
    None where the platform does not count them (no `resource` module: Windows)."""
    try:
        import resource
    except ImportError:
        return None
    counts = []
    for _ in range(calls):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        call()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return int(statistics.median(counts))


def export_forward(quick: bool) -> dict[str, Any]:
    """The exported `.py` module's forward vs the in-memory module's, same weights, and an A/A control."""
    import importlib.util
    import tempfile

    depth, rounds, inner = (20, 5, 20) if quick else (200, 31, 50)
    ours = resgraph.build(MLP, params={"depth": depth}, seed=0).eval()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "exported_mlp.py"
        path.write_text(resgraph.to_python(ours))
        spec = importlib.util.spec_from_file_location("exported_mlp", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    exported = getattr(module, type(ours).__name__)().eval()
    exported.load_state_dict(ours.state_dict(), strict=True)
    x = torch.randn(1, 32)
    with torch.inference_mode():
        assert torch.equal(exported(x), ours(x))
        for _ in range(5):
            ours(x), exported(x)
        a, b = interleaved(lambda: exported(x), lambda: ours(x), rounds, inner)
        same_a, same_b = interleaved(lambda: ours(x), lambda: ours(x), rounds, inner)
    return {"case": f"residual MLP, {depth} blocks, batch 1", "exported_us": a * 1e6, "in_memory_us": b * 1e6,
            "ratio": a / b, "aa_ratio": same_a / same_b}


STARTUP_COMMANDS = {
    "interpreter (python -c pass)": ["-c", "pass"],
    "interpreter again (A/A)": ["-c", "pass"],
    # What any check with pydantic models and PyYAML pays before it does anything of its own: the floor
    # under `validate` (resgraph builds its models and checks the spec on top of it).
    "floor: pydantic + PyYAML, the YAML composed": ["-c", "from pydantic import BaseModel, Field, TypeAdapter; "
                                                     "import yaml; yaml.compose(open(" + repr(str(RESNET50)) +
                                                     ").read(), Loader=yaml.CSafeLoader)"],
    # ... and what the first pydantic validator a process makes costs, whoever makes it: pydantic looks for
    # plugins in every installed distribution's entry points (importlib.metadata), then builds its schema.
    "floor: the same, one pydantic model made and used": [
        "-c", "from pydantic import BaseModel; import yaml\nclass Floor(BaseModel):\n    x: int\n"
              "Floor.model_validate({'x': 1}); yaml.compose(open(" + repr(str(RESNET50)) +
              ").read(), Loader=yaml.CSafeLoader)"],
    "resgraph --help": ["-m", "resgraph", "--help"],
    "resgraph validate examples/resnet50.yaml": ["-m", "resgraph", "validate", str(RESNET50)],
}


def cli_startup(quick: bool) -> list[dict[str, Any]]:
    """Whole-process wall time of the CLI (median of interleaved runs), against a bare interpreter.

    Byte-code is compiled first (an installed package has it; `PYTHONDONTWRITEBYTECODE` would
    otherwise make every run compile resgraph's sources again).
    """
    import compileall

    compileall.compile_dir(str(ROOT / "resgraph"), quiet=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    import resource

    times: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    cpu: dict[str, list[float]] = {name: [] for name in STARTUP_COMMANDS}
    for r in range(3 if quick else 10):
        order = list(STARTUP_COMMANDS.items())
        for name, arguments in (order if r % 2 == 0 else order[::-1]):
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            start = time.perf_counter()
            subprocess.run([sys.executable, *arguments], env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, check=True)
            times[name].append(time.perf_counter() - start)
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu[name].append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    bare = statistics.median(times["interpreter (python -c pass)"])
    return [{"command": name, "median_s": statistics.median(t), "vs_interpreter": statistics.median(t) / bare,
             "cpu_s": statistics.median(cpu[name])} for name, t in times.items()]


def registered_op_check(quick: bool) -> dict[str, Any]:
    """`resgraph.check` of a spec with n registered (uncurated) layers vs the same spec with curated
    Linear layers, in a warm process (probes cached as in any second check), and an A/A control."""
    from torch import nn

    class BenchScaled(nn.Module):
        def __init__(self, in_features: int, out_features: int) -> None:
            super().__init__()
            self.fc = nn.Linear(in_features, out_features)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x) * 0.5

    from resgraph.ops.generic import CUSTOM_OPS

    if "BenchScaled" not in CUSTOM_OPS:
        resgraph.register_op("BenchScaled", BenchScaled)
    n, rounds = (10, 3) if quick else (50, 21)

    def spec(op: str) -> str:
        layers = "".join(f"  - l{i}: {{op: {op}, out_features: 16}}\n" for i in range(n))
        return f"resgraph: 1\nname: R\ninputs:\n  x: [16]\nlayers:\n{layers}"

    curated, registered = spec("Linear"), spec("BenchScaled")
    first = time.perf_counter()
    resgraph.check(registered)  # the first check probes the class on the meta device: once per configuration
    first_s = time.perf_counter() - first
    resgraph.check(curated)
    a, b = interleaved(lambda: resgraph.check(registered), lambda: resgraph.check(curated), rounds, 1)
    same_a, same_b = interleaved(lambda: resgraph.check(curated), lambda: resgraph.check(curated), rounds, 1)
    pa, pb = interleaved(lambda: resgraph.count_parameters(registered), lambda: resgraph.count_parameters(curated),
                         rounds, 1)
    return {"layers": n, "registered_ms": a * 1e3, "curated_ms": b * 1e3, "ratio": a / b, "aa_ratio": same_a / same_b,
            "count_ratio": pa / pb, "first_check_s": first_s}


def spec_stages(quick: bool) -> list[dict[str, Any]]:
    """resgraph's own stages (load to code, no modules) vs the hand-written constructor, same run."""
    rows = []
    depth = 20 if quick else 200
    rounds = 3 if quick else 9
    cases: list[tuple[str, Path, dict[str, Any] | None, Callable[[], torch.nn.Module]]] = [
        ("residual MLP", MLP, {"depth": depth}, lambda: ResidualMLP(32, depth)),
        ("tutorial", TUTORIAL, None, TutorialResNet),
        ("ResNet-50", RESNET50, None, ResNet50)]
    for name, path, params, reference in cases:
        stage_breakdown(path, params)  # warm
        reference()
        stages: list[float] = []
        constructor: list[float] = []
        for _ in range(rounds):
            breakdown = stage_breakdown(path, params)
            stages.append(sum(v for k, v in breakdown.items() if not k.startswith("lower")))
            start = time.perf_counter()
            reference()
            constructor.append(time.perf_counter() - start)
        a, b = statistics.median(stages), statistics.median(constructor)
        rows.append({"case": f"{name}" + (f", {depth} blocks" if "MLP" in name else ""), "stages_s": a,
                     "constructor_s": b, "ratio": a / b})
    return rows


def guard_cost(quick: bool) -> dict[str, Any]:
    """The input guard's cost: the residual MLP's forward with its guard vs the same forward without it
    (same module state, a twin class whose generated forward leaves the guard out), and an A/A control."""
    from resgraph.codegen import generate_forward, input_guard
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
    # The forward ratio cannot resolve a sub-microsecond cost; time the guard's own lines alone too.
    guard = "def guard(x):\n" + "\n".join(input_guard(model.graph)) + "\n"
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(guard, "<guard>", "exec"), namespace)  # our own generated code, as lower does
    check = namespace["guard"]
    calls = 2_000 if quick else 200_000
    alone = min(timeit.repeat(lambda: check(x), number=calls, repeat=5)) / calls
    return {"case": f"residual MLP, {depth} blocks, batch 1", "guarded_us": guarded * 1e6,
            "unguarded_us": unguarded * 1e6, "ratio": guarded / unguarded, "aa_ratio": same_a / same_b,
            "overhead_ns": (guarded - unguarded) * 1e9, "guard_alone_ns": alone * 1e9}


def build_time(quick: bool) -> dict[str, Any]:
    """Spec -> ResNet-50 module vs constructing the hand-written one; where resgraph's time goes."""
    rounds = 3 if quick else 15
    resgraph.build(RESNET50)  # warm: imports and caches that a second build in a process would have
    a, b = interleaved(lambda: resgraph.build(RESNET50), lambda: ResNet50(), rounds, 1)
    same_a, same_b = interleaved(lambda: ResNet50(), lambda: ResNet50(), rounds, 1)
    return {"resgraph_s": a, "reference_s": b, "ratio": a / b, "aa_ratio": same_a / same_b,
            "stages": stage_breakdown(RESNET50)}


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


def torch_floor(spec: dict[str, Any]) -> torch.nn.Module:
    """The torch floor of a chain's build: the same modules (one Linear per layer; the skips are identity
    adds, which own nothing), constructed directly and registered on one module."""
    model = torch.nn.Module()
    width = spec["inputs"]["x"][0]
    for entry in spec["layers"]:
        (name, body), = entry.items()
        model.add_module(name, torch.nn.Linear(width, body["out_features"]))
        width = body["out_features"]
    return model


def chain(n: int) -> dict[str, Any]:
    """A spec of n small Linear layers with a skip every two layers (~1.5 n nodes)."""
    layers = [{f"l{i}": {"op": "Linear", "out_features": 8}} for i in range(n)]
    skips = [{f"s{i}": {"from": f"l{i}", "to": f"l{i + 2}"}} for i in range(0, n - 2, 2)]
    return {"resgraph": 1, "name": "Chain", "inputs": {"x": [8]}, "layers": layers, "skips": skips}


STAGES = {"validate": "resgraph.load_spec(spec)", "shapes": "check_loaded(load(spec), None)",
          "build": "resgraph.build(spec, max_params=None)", "floor": "torch_floor(spec)"}

SCALING_PROBE = """
import re, sys, time
sys.path.insert(0, {root!r})
import resgraph
from resgraph.pipeline import check_loaded, load
from bench.run import chain, torch_floor
resgraph.build(chain(10)); torch_floor(chain(10))  # imports and caches first: they are not the stage's cost
spec = chain({n})
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
open("/proc/self/clear_refs", "w").write("5")
base = kib("VmRSS")
start = time.perf_counter()
{stage}
print(time.perf_counter() - start, (kib("VmHWM") - base) / 1024)
"""


SCALING_ROUNDS = 3  # fresh processes per stage and size; the median is reported (one process is one sample)


def scaling(quick: bool) -> list[dict[str, Any]]:
    """Time and peak memory (resident, so torch's allocations count) to validate, infer shapes
    and fully build n-layer chains, each stage in a fresh process: the median of SCALING_ROUNDS
    rounds, the stages' order reversed every other round."""
    rows = []
    for n in ((100, 300) if quick else (1_000, 10_000, 100_000)):
        row: dict[str, Any] = {"layers": n, "nodes": n + len(chain(n)["skips"]) + 1}
        samples: dict[str, list[tuple[float, float]]] = {name: [] for name in STAGES}
        for round_ in range(1 if quick else SCALING_ROUNDS):
            for name in (list(STAGES) if round_ % 2 == 0 else list(reversed(STAGES))):
                code = SCALING_PROBE.format(root=str(ROOT), n=n, stage=STAGES[name])
                result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
                seconds, mib = result.stdout.split()
                samples[name].append((float(seconds), float(mib)))
        for name, taken in samples.items():
            row[f"{name}_s"] = statistics.median(seconds for seconds, _ in taken)
            row[f"{name}_peak_mib"] = statistics.median(mib for _, mib in taken)
        row["rounds"] = [{name: taken[i] for name, taken in samples.items()} for i in range(len(samples["build"]))]
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
    """The results as Markdown tables; a section that was not run (`--only`) is left out."""
    m = results["machine"]
    lines = [f"Run {results['date']} on {m['cpu']} ({m['cores']} cores, {m['threads']} threads), torch {m['torch']}, "
             f"Python {m['python']}, device {results['device']}, load average {m['load']}"
             + (" (quick mode)" if results["quick"] else ""), "",
             "| measurement | resgraph | reference | ratio | A/A | target |", "|---|---|---|---|---|---|"]
    for row in results.get("forward", []):
        lines.append(f"| forward latency, {row['case']} (vs hand-written) | {row['resgraph_ms']:.3f} ms "
                     f"| {row['reference_ms']:.3f} ms | {row['ratio']:.3f} | {row['aa_ratio']:.3f} | <= 1.00 |")
    for row in results.get("forward", []):
        lines.append(f"| torch.fx GraphModule of the hand-written module, {row['case']} | | | {row['fx_ratio']:.3f} "
                     "| | peer |")
    for row in results.get("forward", []):
        f = row["page_faults"]
        if None in f.values():
            continue
        lines.append(f"| minor page faults per forward, {row['case']} (torch.fx: {f['fx']:,}) | {f['resgraph']:,} "
                     f"| {f['reference']:,} | {f['resgraph'] / max(f['reference'], 1):.3f} | | reported |")
    if "export" in results:
        e = results["export"]
        lines.append(f"| exported .py forward vs in-memory, {e['case']} | {e['exported_us']:.1f} us "
                     f"| {e['in_memory_us']:.1f} us | {e['ratio']:.3f} | {e['aa_ratio']:.3f} | equal |")
    if "guard" in results:
        g = results["guard"]
        lines.append(f"| input guard, {g['case']} (with vs without) | {g['guarded_us']:.1f} us "
                     f"| {g['unguarded_us']:.1f} us | {g['ratio']:.3f} ({g['overhead_ns']:+.0f} ns) "
                     f"| {g['aa_ratio']:.3f} | guard alone: {g['guard_alone_ns']:.0f} ns per call |")
    if "build" in results:
        b = results["build"]
        lines.append(f"| build ResNet-50 (spec -> module) | {b['resgraph_s']:.3f} s | {b['reference_s']:.3f} s "
                     f"| {b['ratio']:.2f} | {b['aa_ratio']:.3f} | <= 1.05 |")
    for row in results.get("stages", []):
        lines.append(f"| spec stages (load to code) vs hand-written constructor, {row['case']} "
                     f"| {row['stages_s']:.4f} s | {row['constructor_s']:.4f} s | {row['ratio']:.2f} | | <= 0.5 |")
    if "memory" in results:
        mem = results["memory"]
        lines.append(f"| peak memory building ResNet-50 | {mem['resgraph_mib']:.1f} MiB "
                     f"| {mem['reference_mib']:.1f} MiB | {mem['ratio']:.2f} | | <= 1.1 |")
    if "registered" in results:
        r = results["registered"]
        lines.append(f"| check, {r['layers']} registered layers vs curated Linear (warm) | {r['registered_ms']:.1f} ms "
                     f"| {r['curated_ms']:.1f} ms | {r['ratio']:.2f} (count_parameters {r['count_ratio']:.2f}) "
                     f"| {r['aa_ratio']:.3f} | <= 1.5 |")
    if "compile" in results:
        c = results["compile"]
        model = "residual MLP, 5 blocks" if results["quick"] else "ResNet-50, batch 8"
        lines.append(f"| torch.compile (inductor) vs eager, {model} | {c['compiled_ms']:.1f} ms | "
                     f"{c['eager_ms']:.1f} ms eager | speed-up {c['speedup']:.2f}x (compile {c['compile_s']:.0f} s) "
                     "| | reported |")
    if "peers" in results:
        lines += ["", "torch.fx is measured in the forward rows above."] + peers.markdown(results["peers"])
    if "startup" in results:
        lines += ["", "CLI start-up (whole process, wall time, median of interleaved runs; byte-code compiled):", "",
                  "| command | median wall | median CPU (user + sys) | wall vs bare interpreter | target |",
                  "|---|---|---|---|---|"]
        targets = {"resgraph --help": "< 0.1 s", "resgraph validate examples/resnet50.yaml": "< 0.25 s"}
        for row in results["startup"]:
            lines.append(f"| `{row['command']}` | {row['median_s']:.3f} s | {row['cpu_s']:.3f} s "
                         f"| {row['vs_interpreter']:.2f}x "
                         f"| {targets.get(row['command'], 'reference')} |")
    if "build" in results:
        lines += ["", "Build time by stage (ResNet-50):", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {stage} | {seconds:.3f} |" for stage, seconds in results["build"]["stages"].items()]
    if "scaling" in results:
        lines += ["", "Scaling (chains of Linear layers with a skip every two layers; time, and peak memory added",
                  "by the stage, each stage in a fresh process, the median of "
                  f"{len(results['scaling'][0]['rounds'])} such processes; the floor constructs the same",
                  "Linear modules directly):", "",
                  "| layers | nodes | validate | infer shapes | full build | torch floor "
                  "| build / floor: time, memory |",
                  "|---|---|---|---|---|---|---|"]
        for row in results["scaling"]:
            cells = [f"{row[f'{s}_s']:.2f} s, {row[f'{s}_peak_mib']:.0f} MiB" for s in STAGES]
            ratio = (f"{row['build_s'] / row['floor_s']:.2f}x, "
                     f"{row['build_peak_mib'] / max(row['floor_peak_mib'], 1e-9):.2f}x")
            lines.append(f"| {row['layers']:,} | {row['nodes']:,} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (a smoke test)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="where forward latency runs")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1), help="torch.set_num_threads")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results", help="folder for latest.json/.md")
    parser.add_argument("--skip-compile", action="store_true", help="leave out the torch.compile measurement")
    parser.add_argument("--only", type=_sections, default=tuple(SECTIONS),
                        help="comma-separated sections to run: " + ",".join(SECTIONS))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "device": args.device,
        "machine": {"cpu": cpu, "cores": os.cpu_count(), "threads": args.threads, "torch": torch.__version__,
                    "python": platform.python_version(), "load": _load_average()},
    }
    sections = [s for s in args.only if not (s == "compile" and args.skip_compile)
                and not (s == "memory" and not sys.platform.startswith("linux"))]
    for section in sections:
        results[section] = SECTIONS[section](args)
    args.out.mkdir(parents=True, exist_ok=True)
    # A partial run writes files of its own, so the full run's latest.* stay whole.
    stem = "latest" if set(args.only) == set(SECTIONS) else "only-" + "-".join(args.only)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2) + "\n")
    text = markdown(results)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


# Section name -> what runs it, in the full run's order (`--only` picks some).
SECTIONS: dict[str, Callable[[argparse.Namespace], Any]] = {
    "startup": lambda args: cli_startup(args.quick),
    "forward": lambda args: forward_latency(args.quick, args.device),
    "export": lambda args: export_forward(args.quick),
    "guard": lambda args: guard_cost(args.quick),
    "build": lambda args: build_time(args.quick),
    "stages": lambda args: spec_stages(args.quick),
    "registered": lambda args: registered_op_check(args.quick),
    "scaling": lambda args: scaling(args.quick),
    "memory": lambda args: build_memory(),
    "compile": lambda args: compile_speed(args.quick),
    "peers": lambda args: peers.measure(args.quick),
}


def _sections(text: str) -> tuple[str, ...]:
    """`--only`'s value: known section names, in the order given."""
    names = tuple(name.strip() for name in text.split(",") if name.strip())
    unknown = [name for name in names if name not in SECTIONS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown) or '(none)'}; "
                                         f"choose from {', '.join(SECTIONS)}")
    return names


def _load_average() -> str:
    """The 1-minute load average at the start (other jobs on the machine make every figure noisier)."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"
