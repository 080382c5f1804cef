"""The peers a user might pick instead of resgraph, each optional: measured where installed, else a note.

- TorchArc 2 (kengz/torcharc: a YAML/dict spec lowered to a `torch.fx.GraphModule`), on the
  200-block residual MLP, against the hand-written module. TorchArc 1 (the release on PyPI) has
  no residual add: its DAGNet merges are concat and FiLM only, so the MLP cannot be written in it.
- Ultralytics (`DetectionModel("yolov8n.yaml")`, built from its own config: no download) on
  YOLOv8n, against `examples/yolov8.yaml` at scale n with the same weights.

Neither is a test dependency. Each row times forwards and builds with `bench.run.interleaved`, beside
an A/A control of the reference against itself.
"""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml

import resgraph
from bench.references import ResidualMLP
from bench.timing import interleaved

ROOT = Path(__file__).resolve().parent.parent
MLP = ROOT / "bench" / "specs" / "residual_mlp_200.yaml"
YOLOV8 = ROOT / "examples" / "yolov8.yaml"


def torcharc_spec(width: int, depth: int) -> dict[str, Any]:
    """The residual MLP in TorchArc 2's format: per block Linear, ReLU, Linear and a `MergeSum` of the
    second Linear and the block's input, as a user of TorchArc would write it."""
    modules: dict[str, Any] = {}
    graph: dict[str, Any] = {}
    previous = "x"
    for i in range(depth):
        modules |= {f"b{i}_fc1": {"Linear": {"in_features": width, "out_features": width}},
                    f"b{i}_act": {"ReLU": None},
                    f"b{i}_fc2": {"Linear": {"in_features": width, "out_features": width}},
                    f"b{i}_add": {"MergeSum": None}}
        graph |= {f"b{i}_fc1": [previous], f"b{i}_act": [f"b{i}_fc1"], f"b{i}_fc2": [f"b{i}_act"],
                  f"b{i}_add": [[f"b{i}_fc2", previous]]}
        previous = f"b{i}_add"
    return {"modules": modules, "graph": {"input": "x", "modules": graph, "output": previous}}


def copy_weights_in_order(source: torch.nn.Module, target: torch.nn.Module) -> None:
    """Load `source`'s state into `target`, pairing entries by position (the two name them differently).

    Raises:
        ValueError: the two differ in the number, shapes or order of their entries.
    """
    ours, theirs = source.state_dict(), target.state_dict()
    shapes = [tuple(t.shape) for t in ours.values()], [tuple(t.shape) for t in theirs.values()]
    if shapes[0] != shapes[1]:
        raise ValueError(f"the two modules' state differs: {len(ours)} vs {len(theirs)} entries, or their shapes")
    target.load_state_dict(dict(zip(theirs, ours.values())), strict=True)


def ultralytics_name(name: str) -> str:
    """The Ultralytics state-dict key of a state-dict key of `examples/yolov8.yaml`'s model.

    The spec names its layers after Ultralytics' module indices (`b2_c2f` is `model.2`); the Detect
    head's per-level branches (`detect.l3.box0`, `detect.l3.box`) are Ultralytics' `cv2` (boxes) and
    `cv3` (classes), one `nn.Sequential` per level (`model.22.cv2.0.0`, `model.22.cv2.0.2`).
    """
    head, rest = name.split(".", 1)
    if head != "detect":
        index = re.search(r"\d+", head)
        assert index is not None, f"{head} is not named after an Ultralytics module index"
        return f"model.{index.group()}.{rest}"
    if rest == "dfl":
        return "model.22.dfl.conv.weight"
    level, branch, tail = rest.split(".", 2)  # l3, box0, conv.weight
    sequential = "cv2" if branch.startswith("box") else "cv3"
    position = branch.removeprefix("box").removeprefix("cls") or "2"  # the last, plain Conv2d has no digit
    return f"model.22.{sequential}.{int(level[1:]) - 3}.{position}.{tail}"


def _timed(a: Callable[[], Any], b: Callable[[], Any], rounds: int, inner: int) -> tuple[float, float, float]:
    """Median seconds of `a`, of `b`, and the A/A ratio of `b` against itself."""
    ta, tb = interleaved(a, b, rounds, inner)
    same_a, same_b = interleaved(b, b, rounds, inner)
    return ta, tb, same_a / same_b


def torcharc_residual_mlp(quick: bool) -> dict[str, Any]:
    """TorchArc 2's residual MLP vs the hand-written one (forward) and vs resgraph (build from a dict)."""
    try:
        import torcharc
    except ImportError:
        return {"note": "TorchArc is not installed here: its residual-MLP row is skipped (TorchArc 2 is on "
                        "GitHub, kengz/torcharc; PyPI has 1.2.1)"}
    if not hasattr(torcharc, "Spec"):
        return {"note": f"TorchArc {getattr(torcharc, '__version__', '1.x')} is installed: its DAGNet merges are "
                        "concat and FiLM only, so the residual MLP cannot be written in it (TorchArc 2 can)"}
    width, depth = 32, 20 if quick else 200
    rounds, inner = (3, 2) if quick else (21, 20)
    spec = torcharc_spec(width, depth)
    peer = torcharc.build(spec).eval()
    reference = ResidualMLP(width, depth).eval()
    ours = resgraph.build(MLP, params={"depth": depth}, seed=0).eval()
    copy_weights_in_order(reference, peer)
    copy_weights_in_order(reference, ours)
    x = torch.randn(1, width)
    with torch.inference_mode():
        expected = reference(x)
        torch.testing.assert_close(peer(x), expected)
        torch.testing.assert_close(ours(x), expected)
        for _ in range(3):
            peer(x), ours(x), reference(x)
        peer_s, reference_s, aa = _timed(lambda: peer(x), lambda: reference(x), rounds, inner)
        ours_s, reference2_s, _ = _timed(lambda: ours(x), lambda: reference(x), rounds, inner)
    ours_spec = yaml.safe_load(MLP.read_text())  # both builds start from a parsed dict
    build_rounds = 3 if quick else 9
    peer_build, ours_build, build_aa = _timed(
        lambda: torcharc.build(spec), lambda: resgraph.build(ours_spec, params={"depth": depth}), build_rounds, 1)
    return {"case": f"residual MLP, {depth} blocks, batch 1", "torcharc_vs_hand": peer_s / reference_s,
            "resgraph_vs_hand": ours_s / reference2_s, "aa_ratio": aa,
            "torcharc_build_s": peer_build, "resgraph_build_s": ours_build, "build_aa": build_aa}


def ultralytics_yolov8n(quick: bool) -> dict[str, Any]:
    """resgraph's YOLOv8n vs Ultralytics' own (same weights, eval mode): forward and build."""
    try:
        from ultralytics.nn.tasks import DetectionModel
    except ImportError:
        return {"note": "Ultralytics is not installed here: its YOLOv8n row is skipped (it needs torchvision, "
                        "which does not import beside torch 2.13.0; torch 2.14.1 + torchvision 0.29.1 + "
                        "ultralytics install together)"}
    size = 64 if quick else 640
    rounds = 3 if quick else 21

    def theirs() -> torch.nn.Module:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints a layer table on build
            return DetectionModel("yolov8n.yaml", nc=80, verbose=False)

    peer = theirs().eval()
    ours = resgraph.build(YOLOV8, params={"scale": "n", "image_size": size}, seed=0).eval()
    theirs_state = peer.state_dict()
    ours.load_state_dict({name: theirs_state[ultralytics_name(name)].reshape(value.shape)
                          for name, value in ours.state_dict().items()}, strict=True)
    x = torch.randn(1, 3, size, size)
    with torch.inference_mode():
        expected, _ = peer(x)
        got = ours(x)
        torch.testing.assert_close(got[0], expected, rtol=1e-4, atol=1e-3)
        for _ in range(2):
            peer(x), ours(x)
        ours_s, peer_s, aa = _timed(lambda: ours(x), lambda: peer(x), rounds, 1)
    build_rounds = 3 if quick else 9
    ours_build, peer_build, build_aa = _timed(lambda: resgraph.build(YOLOV8, params={"scale": "n"}), theirs,
                                              build_rounds, 1)
    return {"case": f"YOLOv8n, 1x3x{size}x{size}", "forward_ratio": ours_s / peer_s, "ours_ms": ours_s * 1e3,
            "peer_ms": peer_s * 1e3, "aa_ratio": aa, "build_ratio": ours_build / peer_build,
            "ours_build_s": ours_build, "peer_build_s": peer_build, "build_aa": build_aa}


def markdown(results: dict[str, Any]) -> list[str]:
    """The peers' table, or their notes."""
    lines = ["Peers (optional; each row is measured only where the peer is installed):", "",
             "| peer | case | measurement | ratio | A/A |", "|---|---|---|---|---|"]
    notes = []
    arc = results.get("torcharc", {})
    if "note" in arc:
        notes.append(arc["note"])
    elif arc:
        lines += [f"| TorchArc 2 | {arc['case']} | forward vs hand-written | {arc['torcharc_vs_hand']:.3f} | "
                  f"{arc['aa_ratio']:.3f} |",
                  f"| resgraph | {arc['case']} | forward vs hand-written | {arc['resgraph_vs_hand']:.3f} | |",
                  f"| TorchArc 2 | {arc['case']} | build from a parsed dict, resgraph vs TorchArc "
                  f"({arc['resgraph_build_s']:.3f} s vs {arc['torcharc_build_s']:.3f} s) | "
                  f"{arc['resgraph_build_s'] / arc['torcharc_build_s']:.2f} | {arc['build_aa']:.3f} |"]
    yolo = results.get("ultralytics", {})
    if "note" in yolo:
        notes.append(yolo["note"])
    elif yolo:
        lines += [f"| Ultralytics | {yolo['case']} | forward, resgraph vs Ultralytics ({yolo['ours_ms']:.1f} ms vs "
                  f"{yolo['peer_ms']:.1f} ms) | {yolo['forward_ratio']:.3f} | {yolo['aa_ratio']:.3f} |",
                  f"| Ultralytics | {yolo['case']} | build, resgraph vs Ultralytics ({yolo['ours_build_s']:.3f} s vs "
                  f"{yolo['peer_build_s']:.3f} s) | {yolo['build_ratio']:.2f} | {yolo['build_aa']:.3f} |"]
    return lines + [""] + [f"- {note}" for note in notes]


def measure(quick: bool) -> dict[str, Any]:
    """Every peer's row (or note)."""
    return {"torcharc": torcharc_residual_mlp(quick), "ultralytics": ultralytics_yolov8n(quick)}


if __name__ == "__main__":
    import argparse
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.peers", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few rounds (a smoke test)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    torch.set_num_threads(2)
    measured = measure(args.quick)
    if args.json:
        args.json.write_text(json.dumps(measured, indent=2) + "\n")
    print("\n".join(markdown(measured)))
