"""Every example builds and runs, and the literal tutorial fails exactly as documented."""

from __future__ import annotations

import pytest
import torch

import resgraph
from conftest import BUILDING_EXAMPLES, EXAMPLES, small_params


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_example_builds_and_runs_a_forward_pass(example: str) -> None:
    model = resgraph.build(EXAMPLES / example, params=small_params(example), seed=0)
    graph = model.graph
    out = model(*model.example_inputs(batch=2))  # token ids for the language models
    outputs = out if isinstance(out, tuple) else (out,)
    for tensor, name in zip(outputs, graph.outputs):
        assert tensor.shape[1:] == graph.nodes[name].meta["type"].shape


def test_tutorial_literal_fails_naming_the_skip_both_shapes_and_the_fixes() -> None:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(EXAMPLES / "tutorial_literal.yaml")
    first, second = caught.value.diagnostics
    assert str(first.location).endswith("tutorial_literal.yaml:19:5")
    assert first.message == ("skip 'shortcut1': cannot add 'x' (3, 32, 32) to 'res1_conv2' (64, 28, 28): "
                             "the spatial size shrinks on one grid (no net stride between them): 32x32 -> 28x28")
    assert "`padding: 1` on 'res1_conv1' and 'res1_conv2'" in first.hint and "set `projection: crop`" in first.hint
    assert "'res1_conv1' (Conv2d, kernel 3, stride 1, padding 0, dilation 1): 32x32 -> 30x30" in first.hint
    assert second.message.startswith("skip 'shortcut2': cannot add 'relu' (64, 28, 28) to 'res2_conv2' (128, 24, 24)")


def test_tutorial_literal_builds_with_crop_projections() -> None:
    model = resgraph.build(EXAMPLES / "tutorial_literal_crop.yaml", seed=0)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 128, 24, 24)
    assert model.shortcut1[0].weight.shape == (64, 3, 1, 1)


def test_residual_mlp_projects_features_with_linear_layers() -> None:
    model = resgraph.build(EXAMPLES / "residual_mlp.yaml", seed=0)
    assert model.res_in[0].weight.shape == (256, 784) and model.res_in[0].bias is None
    assert model.res_mid[0].weight.shape == (128, 256)
    assert not hasattr(model, "res_out")  # 128 -> 128: identity


def test_dag_concatenates_branches_and_gates() -> None:
    model = resgraph.build(EXAMPLES / "dag.yaml", seed=0)
    code = model.code
    assert "mixed = torch.cat([branch1x1, branch3x3, branch_pool], dim=1)" in code
    assert "gated = mixed * gate" in code
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("example", BUILDING_EXAMPLES)
def test_static_parameter_count_equals_the_built_model(example: str) -> None:
    params = small_params(example)
    model = resgraph.build(EXAMPLES / example, params=params)
    assert resgraph.count_parameters(EXAMPLES / example, params=params) == sum(p.numel() for p in model.parameters())
