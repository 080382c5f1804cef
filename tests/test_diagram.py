"""Diagrams: deterministic DOT, skip edges and projections visible, blocks as clusters, Graphviz output."""

from __future__ import annotations

import html
import os
import pathlib
import re
import subprocess
import sys

import graphviz
import pytest

import resgraph
from conftest import EXAMPLES, ROOT, check_golden, needs_dot

GOLDEN = pathlib.Path(__file__).resolve().parent / "golden"
IMAGES = ROOT / "docs" / "images"


def node_count(dot: graphviz.Digraph) -> int:
    """Node statements at any cluster depth (edge statements excluded)."""
    return len(re.findall(r"^\t+(?!.* -> )\S.*\[label=", dot.source, flags=re.MULTILINE))


def test_tutorial_dot_is_golden_and_deterministic() -> None:
    source = resgraph.render(EXAMPLES / "tutorial.yaml").source
    assert source == resgraph.render(EXAMPLES / "tutorial.yaml").source
    check_golden(GOLDEN / "tutorial.dot", source)


def test_block_example_dot_is_golden() -> None:
    check_golden(GOLDEN / "resnet18_depth2.dot", resgraph.render(EXAMPLES / "resnet18.yaml", depth=2).source)


def test_skip_edges_are_dashed_coloured_and_labelled_with_name_and_merge() -> None:
    source = resgraph.render(EXAMPLES / "tutorial.yaml").source
    assert re.search(r'x -> "shortcut1/projection" \[label="shortcut1 \(add\)" color="#d1495b" '
                     r'fontcolor="#d1495b" style=dashed\]', source)
    assert '"shortcut1/projection" -> shortcut1 [color="#d1495b"' in source
    assert "res1_conv2 -> shortcut1\n" in source and "shortcut1 -> relu\n" in source  # later layers read the merge
    identity = resgraph.render(EXAMPLES / "residual_mlp.yaml").source
    assert 'act3 -> res_out [label="res_out (add)" color="#d1495b"' in identity  # no projection node


def test_projection_nodes_show_policy_reason_and_parameters() -> None:
    source = resgraph.render(EXAMPLES / "tutorial.yaml").source
    assert ('"shortcut1/projection" [label="shortcut1: auto projection\nConv2d 1x1 + BatchNorm2d\n'
            '3->64 channels\n320 params"') in source
    cropped = resgraph.render(EXAMPLES / "tutorial_literal_crop.yaml").source
    assert "shortcut1: crop projection\ncenter-crop to 28x28 + Conv2d 1x1\ncrop 32x32->28x28, 3->64 channels" in cropped


def test_inputs_and_outputs_are_drawn_distinctly() -> None:
    source = resgraph.render(EXAMPLES / "dag.yaml").source
    assert re.search(r'image \[label="image\ninput\n\(3, 64, 64\)" [^]]*shape=invhouse', source)
    assert re.search(r'"output/classifier" \[label="classifier\noutput" [^]]*shape=house', source)


def test_blocks_are_clusters() -> None:
    source = resgraph.render(EXAMPLES / "resnet18.yaml").source
    stages = re.findall(r"subgraph \"?cluster_layer(\d)\"? \{", source)
    instances = re.findall(r"subgraph \"?cluster_layer\d\.\d\"? \{", source)
    assert stages == ["1", "2", "3", "4"] and len(instances) == 8
    assert 'label="layer2.0: basic(planes=128, stride=2)"' in source


def test_depth_collapses_blocks_into_fewer_nodes() -> None:
    counts = [node_count(resgraph.render(EXAMPLES / "resnet50.yaml", depth=depth)) for depth in (1, 2, 3)]
    assert counts[0] < counts[1] < counts[2]
    top = resgraph.render(EXAMPLES / "resnet50.yaml", depth=1).source
    assert 'layer3 [label="layer3\nbottleneck ×6\n(1024, 14, 14)\n7,098,368 params"' in top
    assert counts[0] == 13  # input, 11 top-level layers, output: fits on one screen
    assert node_count(resgraph.render(EXAMPLES / "vit_b_16.yaml", depth=1)) == 14  # input, 12 layers, output


def test_fold_repeats_draws_one_instance_labelled_with_the_count() -> None:
    full = resgraph.render(EXAMPLES / "resnet34.yaml")
    folded = resgraph.render(EXAMPLES / "resnet34.yaml", fold_repeats=True)
    assert 'label="layer3: basic ×6 (first shown)"' in folded.source
    assert node_count(folded) < node_count(full) / 2


def test_what_nodes_show_is_switchable() -> None:
    plain = resgraph.render(EXAMPLES / "tutorial.yaml", shapes=False, param_counts=False, args=False).source
    assert 'res1_conv1 [label="res1_conv1\nConv2d"]' in plain
    assert "params" not in plain and "(64, 32, 32)" not in plain
    assert "rankdir=LR" in resgraph.render(EXAMPLES / "tutorial.yaml", rankdir="LR").source
    with pytest.raises(resgraph.UsageError, match="rankdir"):
        resgraph.render(EXAMPLES / "tutorial.yaml", rankdir="sideways")


@needs_dot
def test_real_graphviz_draws_svg_png_and_pdf(tmp_path: pathlib.Path) -> None:
    dot = resgraph.render(EXAMPLES / "tutorial.yaml")
    for name, magic in (("t.svg", b"<?xml"), ("t.png", b"\x89PNG"), ("t.pdf", b"%PDF")):
        assert resgraph.write_diagram(dot, str(tmp_path / name)) is None
        assert (tmp_path / name).read_bytes().startswith(magic)
    assert "<svg" in (tmp_path / "t.svg").read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.pdf", "t.png", "t.svg"]  # no temporary files


@needs_dot
def test_cli_render_and_build_diagram(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "net.png"
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/resnet18.yaml", "-o", str(out),
                             "--depth", "2", "--rankdir", "LR"], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes().startswith(b"\x89PNG")
    diagram = tmp_path / "tutorial.dot"
    result = subprocess.run([sys.executable, "-m", "resgraph", "build", "examples/tutorial.yaml", "--diagram",
                             str(diagram)], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0 and "Projections inserted: 2" in result.stdout
    assert diagram.read_text() == resgraph.render(EXAMPLES / "tutorial.yaml").source


def test_without_graphviz_the_dot_file_is_written_and_the_fix_is_named(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no `dot` on this PATH
    svg = tmp_path / "net.svg"
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o", str(svg)],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Graphviz's `dot` program is not installed" in result.stderr and "apt-get install graphviz" in result.stderr
    assert not svg.exists() and (tmp_path / "net.dot").read_text().startswith("digraph TutorialResNet {")
    dot_only = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o",
                               str(tmp_path / "only.dot")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert dot_only.returncode == 0  # the asked-for format needs no Graphviz


README_IMAGES = [("tutorial", {}), ("resnet18", {"fold_repeats": True})]


@pytest.mark.parametrize(("name", "options"), README_IMAGES)
def test_readme_image_sources_are_in_sync_with_the_specs(name: str, options: dict[str, bool]) -> None:
    """docs/images/NAME.dot equals a fresh render."""
    dot = resgraph.render(EXAMPLES / f"{name}.yaml", **options)
    assert (IMAGES / f"{name}.dot").read_text() == dot.source, "regenerate with the commands in docs/images/README.md"


@needs_dot
@pytest.mark.parametrize(("name", "options"), README_IMAGES)
def test_readme_images_are_what_graphviz_draws(name: str, options: dict[str, bool]) -> None:
    """docs/images/NAME.svg is what Graphviz draws from NAME.dot."""
    dot = resgraph.render(EXAMPLES / f"{name}.yaml", **options)

    def texts(svg: str) -> list[str]:
        return sorted(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg))

    assert texts((IMAGES / f"{name}.svg").read_text()) == texts(dot.pipe(format="svg").decode())
