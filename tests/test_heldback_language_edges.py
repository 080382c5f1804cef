"""Held-back edge cases of the language-reach issues (#3, #12): expressions, constants, arithmetic
operands, attention masks, ties and block outputs at values and shapes the examples do not reach,
each checked against torch or for a located message.

The specification, as these cases pin it:

- An expression function that cannot compute its value (`log(x, 1)`: a base of 1) is an error
  at the expression's line and column, never a traceback.
"""

from __future__ import annotations

import pytest
import torch

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


# --- numbers torch takes as scalars --------------------------------------------------------------

BIG = 99999999999999999999999  # past int64 and uint64: torch raises OverflowError converting it


@pytest.mark.parametrize(("body", "column", "field"), [
    (f"{{op: add, scalar: {BIG}}}", 18, "scalar"),
    (f"{{op: sub, scalar: {BIG}}}", 18, "scalar"),
    (f"{{op: div, scalar: {BIG}}}", 18, "scalar"),
    (f"{{op: mul, scalar: {BIG}}}", 18, "scalar"),
    (f"{{op: clamp, min: -{BIG}}}", 20, "min"),
    (f"{{op: pow, exponent: {BIG}}}", 18, "exponent"),
])
def test_a_whole_number_operand_past_what_torch_converts_is_refused_at_its_key(body: str, column: int,
                                                                              field: str) -> None:
    # Before: the model built, and its first forward raised OverflowError ("int too big to convert").
    found = messages(HEADER + f"inputs: {{x: [4]}}\nlayers:\n  - a: {body}\n")
    value = -BIG if field == "min" else BIG
    assert found == [f"<string>:5:{column}: error: layer 'a' ({body.split(',')[0][5:]}): {field}={value} is a whole "
                     "number outside what torch takes as a scalar (-9223372036854775808 to 18446744073709551615); "
                     f"write it as a float, {float(value):g}"]


@pytest.mark.parametrize("body", [f"{{op: full, shape: [4], value: {BIG}}}",
                                  f"{{op: full, shape: [4], value: {BIG}, dtype: float64}}",
                                  f"{{op: arange, start: 0, stop: 3, step: {BIG}, dtype: float64}}"])
def test_a_constant_whose_scalar_torch_cannot_convert_is_a_located_error(body: str) -> None:
    # Before: `full` escaped from resgraph.build as an OverflowError traceback.
    found = messages(HEADER + f"inputs: {{x: [4]}}\nlayers:\n  - c: {body}\n")
    assert len(found) == 1 and found[0].startswith("<string>:5:8: error: layer 'c' (")
    assert found[0].endswith(f"holds {BIG}, a whole number outside what torch takes as a scalar "
                             "(-9223372036854775808 to 18446744073709551615); write it as a float, 1e+23")


def test_the_largest_whole_numbers_torch_takes_and_the_same_number_as_a_float_still_build() -> None:
    model = resgraph.build(HEADER + "inputs: {x: [4]}\nlayers:\n  - a: {op: clamp, max: 18446744073709551615}\n"
                           "  - b: {op: mul, scalar: 1.0e+23}\n  - c: {op: full, shape: [4], value: 1.0e+23}\n"
                           "  - d: {op: add, input: [b, c]}\n")
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), x.clamp(max=18446744073709551615) * 1e23 + torch.full((4,), 1e23))
