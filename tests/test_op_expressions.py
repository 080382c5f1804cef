"""`op` written as a `${...}` expression, and the `log`/`exp` expression functions.

An op expression is evaluated like every other value, in its scope (parameters, block
parameters, `index`), before the body is typed as the op it names; its mistakes are reported at
the op, after evaluation, as for a literal op.
"""

from __future__ import annotations

import jsonschema
import pytest
import torch
from torch import nn

import resgraph
from resgraph.expressions import ExpressionError, evaluate
from resgraph.schema import published_schema

HEAD = "resgraph: 1\nname: T\n"

SPEC = HEAD + """params: {use_hs: true}
inputs: {x: [3, 8, 8]}
layers:
  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3}
  - act: {op: "${'Hardswish' if use_hs else 'ReLU'}", inplace: true}
"""


@pytest.mark.parametrize(("use_hs", "expected"), [(True, nn.Hardswish), (False, nn.ReLU)])
def test_op_expression_chooses_the_op_per_parameter(use_hs: bool, expected: type[nn.Module]) -> None:
    model = resgraph.build(SPEC, params={"use_hs": use_hs})
    assert type(model.act) is expected and model.act.inplace
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), expected()(model.conv(x)))


def test_op_expression_reads_block_parameters_and_the_instance_index() -> None:
    # MobileNetV3's pattern: the activation depends on the stage, one block for all of them.
    spec = HEAD + """blocks:
  unit:
    params: {hs: false}
    layers:
      - fc: {op: Linear, out_features: 6}
      - act: {op: "${'Hardswish' if hs or index == 2 else 'ReLU'}"}
inputs: {x: [6]}
layers:
  - stage: {block: unit, repeat: 3}
  - last: {block: unit, with: {hs: true}}
"""
    model = resgraph.build(spec)
    acts = [type(model.stage[i].act) for i in range(3)] + [type(model.last.act)]
    assert acts == [nn.ReLU, nn.ReLU, nn.Hardswish, nn.Hardswish]


def test_op_expression_is_valid_under_the_published_schema() -> None:
    # Editors see the body as a computed op (its arguments are checked once it is evaluated).
    body = {"op": "${'Hardswish' if use_hs else 'ReLU'}", "inplace": True}
    spec = {"resgraph": 1, "name": "T", "inputs": {"x": [4]}, "layers": [{"act": body}]}
    jsonschema.validate(spec, published_schema())
    assert resgraph.check(SPEC) is not None


@pytest.mark.parametrize(("body", "message", "column"), [
    ("{op: \"${'ReLUx'}\"}", "layer 'act' (ReLUx): unknown op 'ReLUx': not a resgraph op or a torch.nn layer "
                             "class; did you mean 'ReLU'?", 11),
    ("{op: \"${'Conv2d'}\", kernel_size: 3}", "layer 'act' (Conv2d): missing required argument 'out_channels'", 10),
    ("{op: \"${'Hardswish'}\", inplace: 3}", "layer 'act' (Hardswish): inplace: expected true or false, got "
                                             "integer 3", 42),
    ("{op: \"${3}\"}", "layer 'act': op: expected a string, got integer 3", 16),
    ("{op: \"${'ReLU' if use_hx else 'GELU'}\"}", "in ${'ReLU' if use_hx else 'GELU'}: unknown name 'use_hx'; "
                                                  "did you mean 'use_hs'?", 28),
])
def test_op_expression_errors_are_located_at_the_op(body: str, message: str, column: int) -> None:
    spec = HEAD + f"params: {{use_hs: true}}\ninputs: {{x: [3, 8, 8]}}\nlayers:\n  - act: {body}\n"
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.message == message
    assert (diagnostic.location.line, diagnostic.location.column) == (6, column)


# --- log and exp ---------------------------------------------------------------------------------

def regnet_widths(w_0: int, w_a: float, w_m: float, depth: int, quantum: int = 8) -> list[int]:
    """torchvision's RegNet `BlockParams.from_init_params`, per block, in plain Python."""
    import math
    widths = []
    for i in range(depth):
        capacity = round(math.log((i * w_a + w_0) / w_0) / math.log(w_m))
        widths.append(int(round(w_0 * w_m ** capacity / quantum) * quantum))
    return widths


def test_log_and_exp_give_regnet_stage_widths() -> None:
    expression = "int(round(w_0 * w_m ** round(log((i * w_a + w_0) / w_0) / log(w_m)) / 8) * 8)"
    names = {"w_0": 48, "w_a": 27.89, "w_m": 2.09}  # RegNetY-400MF
    widths = [evaluate(expression, {**names, "i": i}) for i in range(16)]
    assert widths == regnet_widths(48, 27.89, 2.09, 16)
    # torchvision's RegNetY-400MF: stage widths 48, 104, 208, 440 with depths 1, 3, 6, 6
    assert widths == [48] + [104] * 3 + [208] * 6 + [440] * 6
    assert evaluate("exp(log(7))", {}) == pytest.approx(7) and evaluate("log(8, 2)", {}) == 3.0


def test_regnet_widths_in_a_spec() -> None:
    spec = HEAD + """params: {w_0: 48, w_a: 27.89, w_m: 2.09}
blocks:
  unit:
    params: {capacity: "${round(log((block_index * w_a + w_0) / w_0) / log(w_m))}"}
    layers:
      - fc: {op: Linear, out_features: "${int(round(w_0 * w_m ** capacity / 8) * 8)}"}
inputs: {x: [4]}
layers:
  - body: {block: unit, repeat: 16}
"""
    model = resgraph.build(spec)
    assert [model.body[i].fc.out_features for i in range(16)] == regnet_widths(48, 27.89, 2.09, 16)


@pytest.mark.parametrize(("expression", "message"), [
    ("log(0)", "log(...) failed: math domain error"),
    ("log(-1, 2)", "log(...) failed: math domain error"),
    ("exp(50)", "number is too large"),
])
def test_log_and_exp_errors(expression: str, message: str) -> None:
    with pytest.raises(ExpressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        evaluate(expression, {})
