"""Held-back cases of the language-reach issues (#3, #12): specs an expert writes for networks the
examples do not cover, checked against hand-written torch, and the mistakes they exposed.

The specification, as these cases pin it:

- A block parameter may not take a name resgraph binds in block bodies (`index`, `repeats`,
  `block_index`, `num_blocks`, `in_channels`, `in_features`, `in_shape`, `in_shapes`): it is an
  error at the parameter's key. A top-level parameter may (U-Net's `in_channels` sizes its input),
  and inside a block the built-in name wins.
- `is` / `is not` in an expression test for None (`owner is None`); on other values they are a
  located error, never a traceback.
- `to: call.out` on a skip says that a skip cannot merge into one output of a block call, and what
  to write instead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resgraph
from resgraph.expressions import ExpressionError, evaluate
from resgraph.spec import BUILTIN_NAMES

HEADER = "resgraph: 1\nname: Net\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- built-in names -------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(BUILTIN_NAMES))
def test_a_block_parameter_named_like_a_builtin_is_an_error_at_its_key(name: str) -> None:
    found = messages(HEADER + "blocks:\n  b:\n    params: {" + name + ": 2}\n    layers:\n"
                     "      - fc: {op: Linear, out_features: 4}\n"
                     "inputs: {x: [4]}\nlayers:\n  - s: {block: b, repeat: 2}\n")
    assert found == [f"<string>:5:14: error: block 'b': parameter {name!r} would hide the built-in name {name!r} "
                     f"({BUILTIN_NAMES[name]})\n  hint: rename the parameter (e.g. {name}_value); inside a block, "
                     f"`{name}` already means {BUILTIN_NAMES[name]}"]


def test_a_top_level_parameter_named_in_channels_does_not_hide_a_blocks_input_size() -> None:
    # Before: the block's `${in_channels}` read the top-level parameter (3), not its input's size (12),
    # and `index` the parameter (5) instead of the instance's position.
    model = resgraph.build(HEADER + "params: {in_channels: 3, index: 5}\n"
                           "blocks:\n  se:\n    layers:\n"
                           "      - fc: {op: Linear, out_features: \"${in_channels + index}\"}\n"
                           "inputs: {x: [\"${in_channels}\", 4]}\n"
                           "layers:\n  - f: {op: Flatten}\n  - s: {block: se, repeat: 2}\n")
    assert (model.s[0].fc.in_features, model.s[0].fc.out_features) == (12, 12)
    assert (model.s[1].fc.in_features, model.s[1].fc.out_features) == (12, 13)


# --- expressions ----------------------------------------------------------------------------------

def test_is_none_tests_a_null_parameter() -> None:
    assert evaluate("1 if owner is None else 2", {"owner": None}) == 1
    assert evaluate("owner is not None", {"owner": "left"}) is True
    assert evaluate("None is owner", {"owner": 0}) is False


def test_is_between_values_is_a_located_error_not_a_traceback() -> None:
    with pytest.raises(ExpressionError, match="'is' only tests for None") as caught:
        evaluate("width is 3", {"width": 3})
    assert caught.value.offset == 0
    found = messages(HEADER + "params: {w: 4}\ninputs: {x: [4]}\nlayers:\n"
                     "  - fc: {op: Linear, out_features: \"${8 if w is not 4 else 4}\"}\n")
    assert found == ["<string>:6:44: error: in ${8 if w is not 4 else 4}: 'is not' only tests for None "
                     "(x is not None); compare values with !="]
