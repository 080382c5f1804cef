"""Held-back edge cases of the language-reach issues (#3, #12): expressions, constants, arithmetic
operands, attention masks, ties and block outputs at values and shapes the examples do not reach,
each checked against torch or for a located message.

The specification, as these cases pin it:

- An expression function that cannot compute its value (`log(x, 1)`: a base of 1) is an error
  at the expression's line and column, never a traceback.
- A number torch takes as a scalar (an arithmetic operand, a clamp bound, an exponent, `full`'s
  value, `arange`'s ends, an activation's slope or bound) must be one it can convert for the dtype
  it computes in; otherwise an error at its key, exactly where torch would fail at run time.
- Attention masks follow torch's dtype rule (bool, or float of the query's dtype or float32).
- Ties may chain but not close a cycle; a tie's "did you mean" never names the tied parameter
  itself, and a target that is a buffer or a parameter its module lacks is said to be so.
- A value that no alternative of a union takes is one message; a computed op's unknown argument
  reads as a literal op's.
- A layer reading a block call refused elsewhere (`collect` without `repeat`, a block whose
  `outputs:` are refused) is left out quietly; an in-place op on a block's value names the block.
- `-.5` is a number. Positions counted over an input fit their integer dtype (a free length is
  bounded so, by the guard) and are counted in it; torch has no bool `arange`.
- `scale:` composes with widths read from a block's input (`${in_channels * t}`, `scaled(out)`):
  MobileNetV2 so written equals torchvision's `width_mult` (a reference written out here).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import resgraph

HEADER = "resgraph: 1\nname: Net\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


def build_messages(text: str) -> list[str]:
    """Errors found when the model is built (ties are checked there), on the meta device."""
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.build(text, device="meta")
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


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16", "bfloat16", "int64", "int32"])
@pytest.mark.parametrize("exponent", [1e39, 3.5e38, 70000.0, 2.5, 2**40, 2**64 - 1, 3])
def test_an_exponent_is_refused_exactly_where_torch_cannot_convert_it_for_the_input(dtype: str,
                                                                                    exponent: float) -> None:
    """torch converts an exponent to a float16, bfloat16 or integer input's dtype, and takes it as a double
    with a float32 or float64 input or as a float power of integers: `x.pow(1e39)` on float32 is inf where
    |x| > 1 and 0 where |x| < 1, as it should be (it was refused as "more than float32 holds")."""
    x = torch.tensor([[0.5, 1.0, 2.0, 3.0]] if dtype in ("float32", "float64", "float16", "bfloat16")
                     else [[0, 1, 2, 3]]).to(getattr(torch, dtype))
    text = (HEADER + f"inputs: {{x: {{shape: [4], dtype: {dtype}}}}}\n"
            f"layers:\n  - a: {{op: pow, exponent: {exponent!r}}}\n")
    try:
        expected = x.pow(exponent)
    except RuntimeError:  # "value cannot be converted to type c10::Half without overflow"
        (found,) = messages(text)
        assert found.startswith(f"<string>:5:18: error: layer 'a' (pow): exponent={exponent!r} is ")
        return
    torch.testing.assert_close(resgraph.build(text)(x), expected, equal_nan=True)


# --- attention masks ------------------------------------------------------------------------------

SDPA = (HEADER + "inputs:\n  q: {{shape: [2, 8, 4], dtype: {query}}}\n  m: {{shape: [1, 8, 8], dtype: {mask}}}\n"
        "layers:\n  - a: {{op: scaled_dot_product_attention, input: [q, q, q, m]}}\n")


@pytest.mark.parametrize(("query", "mask"), [("float32", "float64"), ("float32", "float16"), ("float64", "bfloat16"),
                                             ("float32", "int64")])
def test_an_sdpa_mask_of_a_dtype_torch_refuses_with_the_query_is_a_located_error(query: str, mask: str) -> None:
    # Before: a float mask of any float dtype was accepted, and the first forward raised torch's
    # "Expected attn_mask dtype to be bool or float or to match query dtype".
    also = "" if query == "float32" else " or float32"
    assert messages(SDPA.format(query=query, mask=mask)) == [
        f"<string>:7:5: error: layer 'a' (scaled_dot_product_attention): the mask must be bool or a float mask of "
        f"the query's dtype ({query}){also}, got {mask}"]


@pytest.mark.parametrize(("query", "mask"), [("float64", "float32"), ("float64", "float64"), ("float32", "bool")])
def test_an_sdpa_mask_torch_takes_with_the_query_equals_torch(query: str, mask: str) -> None:
    model = resgraph.build(SDPA.format(query=query, mask=mask))
    q = torch.randn(3, 2, 8, 4, dtype=getattr(torch, query))
    m = torch.rand(3, 1, 8, 8) > 0.3 if mask == "bool" else torch.randn(3, 1, 8, 8, dtype=getattr(torch, mask))
    torch.testing.assert_close(model(q, m), torch.nn.functional.scaled_dot_product_attention(q, q, q, attn_mask=m))


def test_a_float32_mask_with_a_float64_query_in_multihead_attention_equals_torch() -> None:
    # torch takes a float32 mask with any query (sdpa's rule); the check said "of the query's dtype" only.
    # (A float64 query is declared float32 and the built model converted: its weights are float32.)
    model = resgraph.build(HEADER + "inputs:\n  x: [5, 8]\n  m: [5, 5]\nlayers:\n"
                           "  - a: {op: MultiheadAttention, num_heads: 2, input: [x, x, x, m], masks: [attn_mask]}\n"
                           ).double()
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True).double()
    reference.load_state_dict(model.a.state_dict())
    x, m = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 5)
    expected = reference(x, x, x, attn_mask=m.repeat_interleave(2, 0), need_weights=False)[0]
    torch.testing.assert_close(model(x, m), expected)


MASK_DTYPES = ["bool", "float32", "float64", "float16", "bfloat16", "int64"]


def _mask(dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.rand(shape) > 0.3 if dtype == "bool" else torch.zeros(shape).to(getattr(torch, dtype))


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask and attn_mask is deprecated")
@pytest.mark.parametrize("padding", MASK_DTYPES)
@pytest.mark.parametrize("attn", MASK_DTYPES)
def test_multihead_attention_takes_two_masks_exactly_where_torch_does(attn: str, padding: str) -> None:
    """Given both, torch adds the masks (a bool one as a float mask of the query's dtype) and sdpa takes
    the sum: a float16 attn_mask beside a bool key_padding_mask runs (the sum is float32), where each
    was checked alone and refused; two float16 masks do not run."""
    x = torch.randn(3, 5, 8)
    reference = torch.nn.MultiheadAttention(8, 2, batch_first=True)
    a, k = _mask(attn, (3, 2, 5, 5)), _mask(padding, (3, 5))
    try:
        for training in (True, False):
            reference.train(training)
            reference(x, x, x, need_weights=False, attn_mask=a.reshape(6, 5, 5), key_padding_mask=k)
    except (RuntimeError, AssertionError):  # (torch asserts "only bool and floating types" of a mask)
        torch_runs = False
    else:
        torch_runs = True
    text = (HEADER + f"inputs:\n  x: [5, 8]\n  k: {{shape: [5], dtype: {padding}}}\n"
            f"  a: {{shape: [2, 5, 5], dtype: {attn}}}\nlayers:\n  - m: {{op: MultiheadAttention, num_heads: 2, "
            "input: [x, x, x, k, a], masks: [key_padding_mask, attn_mask]}\n")
    if not torch_runs:
        (found,) = messages(text)
        assert found.startswith("<string>:8:5: error: layer 'm' (MultiheadAttention): ")
        assert "int64" in found if "int64" in (attn, padding) else "are added into one" in found
        return
    model = resgraph.build(text, seed=0)
    reference.load_state_dict(model.m.state_dict())
    for training in (True, False):
        model.train(training), reference.train(training)
        torch.manual_seed(0)
        expected = reference(x, x, x, need_weights=False, attn_mask=a.reshape(6, 5, 5), key_padding_mask=k)[0]
        torch.manual_seed(0)
        torch.testing.assert_close(model(x, k, a), expected)


# --- ties -----------------------------------------------------------------------------------------

LINEARS = HEADER + "inputs: {x: [4]}\nlayers:\n"


def test_ties_that_form_a_cycle_are_one_error_at_the_tie_that_closes_it() -> None:
    # Before: a.weight -> b.weight -> a.weight built; the summary counted the shared weight at no row
    # (rows 4 + 4, total 24) and each row said it was tied to the other.
    found = build_messages(LINEARS + "  - a: {op: Linear, out_features: 4, tie: {weight: c.weight}}\n"
                               "  - b: {op: Linear, out_features: 4, tie: {weight: a.weight}}\n"
                               "  - c: {op: Linear, out_features: 4, tie: {weight: b.weight}}\n")
    assert found == ["<string>:7:38: error: layer 'c' (Linear): tie: 'b.weight' leads back to 'c.weight' through "
                     "other ties (c.weight -> b.weight -> a.weight -> c.weight), so no parameter in the cycle owns "
                     "the shared tensor\n  hint: remove one tie of the cycle: the parameter it leaves keeps its own "
                     "tensor, and the others share it"]


def test_a_chain_of_ties_shares_its_first_parameter_counted_once() -> None:
    model = resgraph.build(LINEARS + "  - a: {op: Linear, out_features: 4}\n"
                                     "  - b: {op: Linear, out_features: 4, tie: {weight: a.weight}}\n"
                                     "  - c: {op: Linear, out_features: 4, tie: {weight: b.weight}}\n", seed=0)
    assert model.c.weight is model.b.weight is model.a.weight
    assert [row.params for row in resgraph.summary(model).rows[1:]] == [20, 4, 4]
    assert sum(p.numel() for p in model.parameters()) == resgraph.summary(model).total_params == 28
    x = torch.randn(2, 4)
    w = model.a.weight
    expected = ((x @ w.T + model.a.bias) @ w.T + model.b.bias) @ w.T + model.c.bias
    torch.testing.assert_close(model(x), expected)


@pytest.mark.parametrize(("layers", "message"), [
    # Before: "did you mean 'b.weight'?", the tied parameter itself, which is an error of its own.
    ("  - a: {op: Linear, out_features: 4}\n  - b: {op: Linear, out_features: 4, tie: {weight: nope.weight}}\n",
     "'nope.weight' is not a parameter of the model; did you mean 'a.weight'?"),
    ("  - a: {op: Linear, out_features: 4, bias: false}\n  - b: {op: Linear, out_features: 4, tie: {bias: a.bias}}\n",
     "'a.bias' is not a parameter of the model: 'a' has no parameter 'bias' (its parameters: weight)"),
    ("  - a: {op: BatchNorm1d}\n  - b: {op: Linear, out_features: 4, tie: {bias: a.running_mean}}\n",
     "'a.running_mean' is not a parameter of the model: it is a buffer (a constant or a running statistic), and only "
     "parameters are tied"),
    ("  - k: {op: full, shape: [4], value: 0.5}\n  - b: {op: Linear, out_features: 4, input: x, tie: {bias: k}}\n",
     "'k' is not a parameter of the model: it is a buffer (a constant or a running statistic), and only "
     "parameters are tied"),
])
def test_a_tie_to_what_is_not_a_parameter_says_what_it_is_and_never_suggests_itself(layers: str, message: str) -> None:
    found = build_messages(LINEARS + layers)
    column = 48 if "input: x" in layers else 38
    assert found == [f"<string>:6:{column}: error: layer 'b' (Linear): tie: {message}\n  hint: name a parameter by "
                     "its path from the model's root, as state_dict does (e.g. wte.weight)"]


# --- one mistake, one message ---------------------------------------------------------------------

@pytest.mark.parametrize(("body", "message"), [
    # Before, each was said once per alternative of the key's union: "expected true or false",
    # "expected a finite number" twice and "expected a list", all at one place.
    ("{op: full, shape: [4], value: .inf}", "value: expected a finite number, got number inf"),
    ("{op: constant, value: [1, .inf]}", "value.1: expected a finite number, got number inf"),
    ("{op: parameter, shape: [2], init: [1, .nan]}", "init.1: expected a finite number, got number nan"),
    ("{op: parameter, shape: [2], init: .nan}", "init: expected a finite number, got number nan"),
    ("{op: add, scalar: .inf}", "scalar: expected a finite number, got number inf"),
    ("{op: Conv1d, out_channels: 2, kernel_size: \"${1.5}\"}", "kernel_size: expected an integer, got number 1.5"),
    ("{op: Conv1d, out_channels: 2, kernel_size: 3, padding: \"${'sam'}\"}",
     "padding: expected 'same' or 'valid', got string 'sam'; did you mean 'same'?"),
    ("{op: parameter, shape: [2], init: \"${'zero'}\"}",
     "init: expected 'zeros', 'ones', 'normal', 'trunc_normal' or 'uniform', got string 'zero'; did you mean 'zeros'?"),
])
def test_a_value_no_alternative_of_a_union_takes_is_one_message(body: str, message: str) -> None:
    found = messages(HEADER + f"inputs: {{x: [1, 8]}}\nlayers:\n  - c: {body}\n")
    assert len(found) == 1 and found[0].split(": ", 2)[2].split("): ", 1)[1] == message, found


def test_a_computed_value_of_no_kind_a_union_takes_names_every_kind_once() -> None:
    found = messages(HEADER + "inputs: {x: [1, 8]}\nlayers:\n"
                     "  - c: {op: Conv1d, out_channels: 2, kernel_size: \"${None}\"}\n")
    assert found == ["<string>:5:52: error: layer 'c' (Conv1d): kernel_size: expected an integer or a list, got null"]


# --- block outputs --------------------------------------------------------------------------------

BLOCK = "blocks:\n  b:\n    layers:\n      - fc: {op: Linear, out_features: 4}\n"


@pytest.mark.parametrize("call", ["{block: b, collect: true}", "{block: b, repeat: 0, collect: true}"])
def test_a_refused_collecting_call_is_one_error_not_also_a_count_at_its_reader(call: str) -> None:
    # Before: the concat reading `s.*` also said "takes at least 2 input(s), got 1", as if `s` had one value.
    found = messages(HEADER + BLOCK + f"inputs: {{x: [4]}}\nlayers:\n  - s: {call}\n"
                     "  - cat: {op: concat, input: [s.*]}\n")
    assert len(found) == 1 and "layer 's'" in found[0], found


def test_an_inplace_op_on_a_value_a_block_returns_names_the_block_not_the_model() -> None:
    # Before: "but it is an input or output of the model", where `a` is one of block 'two's outputs.
    found = messages(HEADER + "blocks:\n  two:\n    layers:\n      - a: {op: Linear, out_features: 4, input: x}\n"
                     "      - r: {op: ReLU, inplace: true}\n      - b: {op: Linear, out_features: 6, input: x}\n"
                     "    outputs: [a, b]\ninputs: {x: [4]}\nlayers:\n  - h: {block: two}\n"
                     "  - cat: {op: concat, input: [h.*]}\n")
    assert found == ["<string>:7:23: error: layer 'h.r' (ReLU): inplace: true would overwrite 'a', but it is an input "
                     "or output of block 'two'\n  hint: remove `inplace: true`"]


# --- numbers --------------------------------------------------------------------------------------

@pytest.mark.parametrize(("written", "value"), [("-.5", -0.5), ("+.25", 0.25), ("-.5e1", -5.0), (".5", 0.5)])
def test_a_signed_fraction_without_a_leading_digit_is_a_number(written: str, value: float) -> None:
    # Before: YAML 1.1 reads `.5` as a float but `-.5` as the string '-.5' ("expected a number, got
    # string '-.5'"); YAML 1.2 and every ML config read it as -0.5.
    model = resgraph.build(HEADER + f"params: {{shift: {written}}}\ninputs: {{x: [4]}}\nlayers:\n"
                           f"  - a: {{op: add, scalar: {written}}}\n  - b: {{op: add, scalar: \"${{shift}}\"}}\n")
    x = torch.randn(2, 4)
    torch.testing.assert_close(model(x), x + value + value)
    assert resgraph.loader.load_value(written, "shift") == value
    assert resgraph.loader.load_text(f"a: '{written}'").data == {"a": written}  # quoted, it stays text


# (op, its arguments, the input's dtype, the key blamed, or None where torch takes it)
ACTIVATION_SCALARS = [
    ("LeakyReLU", {"negative_slope": 1e39}, "float32", "negative_slope"),
    ("LeakyReLU", {"negative_slope": -1e39}, "bfloat16", "negative_slope"),
    ("LeakyReLU", {"negative_slope": 70000.0}, "float16", None),  # (computed in float32)
    ("ELU", {"alpha": 1e39}, "float32", "alpha"),
    ("ELU", {"alpha": 1e39}, "float64", None),
    ("CELU", {"alpha": -1e39}, "float16", "alpha"),
    ("Softplus", {"beta": 1e39}, "float32", "beta"),
    ("Softplus", {"threshold": -1e39}, "float32", "threshold"),
    ("Hardtanh", {"max_val": 1e39}, "float32", "max_val"),
    ("Hardtanh", {"max_val": 70000.0}, "float16", "max_val"),  # (the input's own dtype)
    ("Hardtanh", {"max_val": 70000.0}, "float32", None),
    ("Hardtanh", {"min_val": -3e9}, "int32", "min_val"),
    ("Hardtanh", {"min_val": -3e9}, "int64", None),
]


@pytest.mark.parametrize(("op", "arguments", "dtype", "blamed"), ACTIVATION_SCALARS)
def test_an_activation_argument_its_kernel_cannot_convert_is_refused_at_its_key_exactly_when_torch_fails(
        op: str, arguments: dict, dtype: str, blamed: str | None) -> None:
    # Before: the model built, and its first forward raised "value cannot be converted to type float
    # without overflow".
    x = (torch.arange(-6, 6) if dtype.startswith("int") else torch.randn(12)).to(getattr(torch, dtype)).reshape(2, 6)
    reference = getattr(torch.nn, op)(**arguments)
    written = ", ".join(f"{key}: {value!r}" for key, value in arguments.items())
    text = HEADER + f"inputs: {{x: {{shape: [6], dtype: {dtype}}}}}\nlayers:\n  - a: {{op: {op}, {written}}}\n"
    if blamed is None:
        torch.testing.assert_close(resgraph.build(text)(x), reference(x))
        return
    with pytest.raises((RuntimeError, OverflowError)):
        reference(x)
    found = messages(text)
    assert len(found) == 1 and f"error: layer 'a' ({op}): {blamed}=" in found[0], found


NESTED = (HEADER + "blocks:\n  two:\n    layers:\n      - a: {op: Linear, out_features: 4, input: x}\n"
          "      - b: {op: Linear, out_features: 6, input: x}\n    outputs: [a, b]\n"
          "  outer:\n    layers:\n      - t: {block: two}\n    outputs: [t.*]\ninputs: {x: [4]}\nlayers:\n"
          "  - o: {block: outer}\n")


@pytest.mark.parametrize("reader", ["  - c: {op: concat, input: [o.*]}\n",
                                    "  - d: {op: Linear, out_features: 3, input: o.a}\n",
                                    "  - e: {op: Linear, out_features: 3, input: x}\n"
                                    "skips:\n  - s: {from: o.b, to: e}\n",
                                    "outputs: [o.*]\n"])
def test_a_block_whose_outputs_are_refused_is_one_error_and_its_readers_stay_quiet(reader: str) -> None:
    # Before: each reader of the call also got "'o.*': 'o' has one value, read as 'o'", as if the
    # block had the one output it was refused.
    assert messages(NESTED + reader) == [
        "<string>:12:15: error: block 'outer': outputs: 't.*': a block's outputs are named one by one, since its "
        "callers read them by name\n  hint: list them: t.a, t.b"]


# --- constants ------------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "column"), [("{op: arange, input: x, dim: 1, dtype: bool}", 46),
                                              ("{op: arange, stop: 2, dtype: bool}", 37)])
def test_a_bool_arange_which_torch_has_not_is_refused_at_its_dtype(body: str, column: int) -> None:
    # Before: counted over an input, the model built and its first forward raised NotImplementedError
    # ("arange_cpu" not implemented for 'Bool'); as a constant, torch's words at the layer.
    with pytest.raises(NotImplementedError):
        torch.arange(2, dtype=torch.bool)
    assert messages(HEADER + f"inputs: {{x: [5, 4]}}\nlayers:\n  - p: {body}\n") == [
        f"<string>:5:{column}: error: layer 'p' (arange): dtype: torch has no bool arange: write an integer or float "
        "dtype (int64 is the default)"]


def test_int32_positions_counted_over_an_input_that_would_wrap_round_are_refused() -> None:
    # Before: the positions were computed in int32 and silently wrapped: [0, 1e9, 2e9, -1294967296, ...].
    spec = (HEADER + "inputs: {{x: [{length}, 4]}}\nlayers:\n"
            "  - p: {{op: arange, input: x, dim: 1, step: 1000000000, dtype: int32}}\n")
    assert messages(spec.format(length=5)) == [
        "<string>:5:57: error: layer 'p' (arange): the positions run from 0 to 4000000000 over dim 1 of (5, 4), "
        "outside the range of int32 (-2147483648 to 2147483647), where torch wraps them round\n  hint: write dtype: "
        "int64 (the default), or a smaller start or step"]
    model = resgraph.build(spec.format(length=3))  # fits at 3, so longer inputs are refused by the guard
    assert model(torch.randn(2, 3, 4)).tolist() == [[0, 10**9, 2 * 10**9]] * 2
    with pytest.raises(ValueError, match=r"with 1 <= L <= 3"):
        model(torch.randn(2, 5, 4))


@pytest.mark.parametrize(("body", "message"), [
    # a fixed length (the features dim): plain arithmetic, refused where it passes int64
    ("{op: arange, input: x, dim: -1, start: 9223372036854775806}",
     "the positions run from 9223372036854775806 to 9223372036854775809 over dim -1 of (5, 4), outside the range of "
     "int64 (-9223372036854775808 to 9223372036854775807), where torch wraps them round\n  hint: write a smaller "
     "start or step"),
    # a free length: size arithmetic, bounded at 2^62 (the message said "reaches -more than 2^62")
    ("{op: arange, input: x, dim: 1, start: -9223372036854775000, step: -1}",
     "its size arithmetic reaches below -2^62, which no tensor size can be (torch counts sizes in 64 bits); make the "
     "arguments that grow or shift sizes (padding, dilation, stride, scale, ...) smaller"),
])
def test_int64_positions_past_int64_are_refused(body: str, message: str) -> None:
    found = messages(HEADER + f"inputs: {{x: [5, 4]}}\nlayers:\n  - p: {body}\n")
    assert len(found) == 1 and found[0].split("(arange): ", 1)[1] == message, found
    fits = resgraph.build(HEADER + "inputs: {x: [5, 2]}\nlayers:\n"
                          "  - p: {op: arange, input: x, dim: -1, start: 9223372036854775806}\n")
    assert fits(torch.randn(1, 5, 2)).tolist() == [[2**63 - 2, 2**63 - 1]]


@pytest.mark.parametrize(("written", "dtype"), [("step: 2.0", "int64"), ("start: 1.0, step: 3.0", "int32"),
                                                ("start: 4.0", "int64")])
def test_whole_float_start_and_step_count_positions_in_the_integer_dtype(written: str, dtype: str) -> None:
    # Before: `positions * 2.0` made float32 positions where the spec (and the summary) say int64.
    model = resgraph.build(HEADER + "inputs: {x: [5, 4]}\nlayers:\n"
                           f"  - p: {{op: arange, input: x, dim: 1, {written}, dtype: {dtype}}}\n")
    arguments = dict(part.split(": ") for part in written.split(", "))
    start, step = int(float(arguments.get("start", 0))), int(float(arguments.get("step", 1)))
    for length in (5, 7):
        found = model(torch.randn(2, length, 4))
        assert found.dtype == getattr(torch, dtype)
        assert found.tolist() == [list(range(start, start + step * length, step))] * 2


@pytest.mark.parametrize("extra", ["bogus: 1", "out_featurs: 3", "in_features: 4"])
def test_a_computed_op_with_an_argument_it_does_not_take_reads_as_a_literal_op_does(extra: str) -> None:
    # Before: "layer 'b' (Linear): bogus: unknown key", with no list of what Linear takes, no "did you
    # mean" and nothing about a width inferred from the input.
    literal, computed = (messages(HEADER + "inputs: {x: [4]}\nlayers:\n"
                                  f"  - b: {{op: {op}, {extra}, out_features: 4}}\n")
                         for op in ("Linear", "\"${'Linear'}\""))
    assert [m.split(": ", 1)[1] for m in computed] == [m.split(": ", 1)[1] for m in literal]
    assert len(literal) == 1 and "unknown key" not in literal[0]


# --- scale: composed with expressions, against a reference ------------------------------------------

def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's `_make_divisible`."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def conv_bn_relu6(inp: int, out: int, kernel: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(inp, out, kernel, stride, (kernel - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(out), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, inp: int, out: int, stride: int, t: int) -> None:
        super().__init__()
        hidden = int(round(inp * t))
        self.residual = stride == 1 and inp == out
        layers = [conv_bn_relu6(inp, hidden, 1)] if t != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, out, 1, bias=False),
                   nn.BatchNorm2d(out)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


STAGES = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]


class MobileNetV2Reference(nn.Module):
    """torchvision's MobileNetV2(width_mult=w), written out: widths by make_divisible, the last conv
    kept at 1280 below width 1, each expansion from the (scaled) width it reads."""

    def __init__(self, w: float) -> None:
        super().__init__()
        inp, last = make_divisible(32 * w), make_divisible(1280 * max(1.0, w))
        features = [conv_bn_relu6(3, inp, 3, 2)]
        for t, c, n, s in STAGES:
            out = make_divisible(c * w)
            for i in range(n):
                features.append(InvertedResidual(inp, out, s if i == 0 else 1, t))
                inp = out
        features.append(conv_bn_relu6(inp, last, 1))
        self.features = nn.Sequential(*features)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, 1000))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(nn.functional.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


MOBILENET_V2 = """resgraph: 1
name: MobileNetV2
params:
  w: 1.0
  stages: [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2], [6, 320, 1, 1]]
scale: {width: "${w}"}
blocks:
  ir:
    params: {out: required, stride: 1, t: 6}
    layers:
      - expand:    {op: Conv2d, out_channels: "${in_channels * t}", kernel_size: 1, bias: false, when: "${t != 1}"}
      - expand_bn: {op: BatchNorm2d, when: "${t != 1}"}
      - expand_act: {op: ReLU6, inplace: true, when: "${t != 1}"}
      - dw:        {op: Conv2d, out_channels: "${in_channels * t}", kernel_size: 3, stride: "${stride}", padding: 1,
                    groups: "${in_channels * t}", bias: false}
      - dw_bn:     {op: BatchNorm2d}
      - dw_act:    {op: ReLU6, inplace: true}
      - project:   {op: Conv2d, out_channels: "${out}", kernel_size: 1, bias: false}
      - project_bn: {op: BatchNorm2d}
    skips:
      - residual: {from: x, to: project_bn, projection: none, when: "${stride == 1 and in_channels == scaled(out)}"}
  stage:
    params: {row: required}
    layers:
      - blocks: {block: ir, repeat: "${row[2]}",
                 with: {t: "${row[0]}", out: "${row[1]}", stride: "${row[3] if index == 0 else 1}"}}
inputs:
  x: [3, 64, 64]
layers:
  - stem:     {op: Conv2d, out_channels: 32, kernel_size: 3, stride: 2, padding: 1, bias: false}
  - stem_bn:  {op: BatchNorm2d}
  - stem_act: {op: ReLU6, inplace: true}
  - stages:   {block: stage, repeat: "${len(stages)}", scale: false, with: {row: "${stages[index]}"}}
  - head:     {op: Conv2d, out_channels: "${1280 if w <= 1 else scaled(1280)}", kernel_size: 1, bias: false}
  - head_bn:  {op: BatchNorm2d}
  - head_act: {op: ReLU6, inplace: true}
  - pool:     {op: AdaptiveAvgPool2d, output_size: 1}
  - flatten:  {op: Flatten}
  - dropout:  {op: Dropout, p: 0.2}
  - classifier: {op: Linear, out_features: 1000}
"""


@pytest.mark.parametrize(("width", "count"), [(0.35, 1677128), (0.5, 1968680), (1.4, 6108776)])
def test_mobilenet_v2_written_from_input_sizes_equals_torchvisions_width_mult(width: float, count: int) -> None:
    # A block whose expansion reads `in_channels` and whose residual compares `scaled(out)` follows
    # `scale:` as torchvision's width_mult does: same widths, count and outputs (weights by order).
    model = resgraph.build(MOBILENET_V2, params={"w": width}, seed=0).eval()
    reference = MobileNetV2Reference(width).eval()
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in reference.parameters()) == count
    ours, theirs = list(model.state_dict().values()), list(reference.state_dict())
    reference.load_state_dict(dict(zip(theirs, ours)))
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(model(x), reference(x))
