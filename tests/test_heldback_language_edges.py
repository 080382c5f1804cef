"""Held-back edge cases of the language-reach issues (#3, #12): expressions, constants, arithmetic
operands, attention masks, ties and block outputs at values and shapes the examples do not reach,
each checked against torch or for a located message.

The specification, as these cases pin it:

- An expression function that cannot compute its value (`log(x, 1)`: a base of 1) is an error
  at the expression's line and column, never a traceback.
"""

from __future__ import annotations

import pytest

import resgraph

HEADER = "resgraph: 1\nname: Net\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- expressions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("base", ["1", "1.0", "True", "0", "-2"])
def test_a_logarithm_to_a_base_of_1_or_not_positive_is_a_located_error(base: str) -> None:
    # Before: log(x, 1) and log(x, True) escaped as a ZeroDivisionError traceback.
    found = messages(HEADER + "inputs: {x: [4]}\nlayers:\n"
                     f"  - fc: {{op: Linear, out_features: \"${{int(log(8, {base}))}}\"}}\n")
    assert found == [f"<string>:5:43: error: in ${{int(log(8, {base}))}}: log(...) failed: the base must be a "
                     f"positive number other than 1, not {base}"]
