"""Held-back cases of a new user's first hour: what a newcomer types and what resgraph answers.

The specification, as these cases pin it:

- A dtype is written one way (float32, int64, ...). torch's other spellings are refused with the
  dtype they stand for in torch: `float` is float32 and `int` is int32 (not Python's float64 and
  int64), `long` int64, `half` float16, `double` float64; `short` (int16) is not declarable.
"""

from __future__ import annotations

import pytest

import resgraph

HEADER = "resgraph: 1\nname: Net\n"


def messages(text: str) -> list[str]:
    with pytest.raises(resgraph.SpecError) as caught:
        resgraph.check(text)
    return [d.format() for d in caught.value.diagnostics]


# --- dtypes: torch's aliases ----------------------------------------------------------------------

@pytest.mark.parametrize(("written", "meant"), [
    ("float", "float32"), ("int", "int32"), ("long", "int64"), ("half", "float16"), ("double", "float64"),
    ("torch.float", "float32"), ("torch.float32", "float32"), ("torch.long", "int64")])
def test_a_torch_dtype_alias_is_refused_with_the_dtype_torch_gives_it(written: str, meant: str) -> None:
    found = messages(HEADER + f"inputs:\n  x: {{shape: [8], dtype: {written}}}\nlayers:\n"
                     f"  - c: {{op: full, shape: [8], value: 1, dtype: {written}}}\n")
    assert len(found) == 2
    assert found[0].startswith("<string>:4:26: error: input 'x': dtype:")
    assert found[1].startswith("<string>:6:48: error: layer 'c' (full): dtype:")
    for message in found:
        assert f"did you mean {meant!r}?" in message, message


def test_an_alias_of_a_dtype_a_spec_cannot_declare_says_so() -> None:
    found = messages(HEADER + "inputs:\n  x: {shape: [8], dtype: short}\nlayers:\n  - r: {op: ReLU}\n")
    assert len(found) == 1
    assert "torch.short is int16, which a spec cannot declare: write int32 or int64" in found[0]
    assert "did you mean" not in found[0]


# --- valid_sizes in a REPL ------------------------------------------------------------------------

def test_a_size_report_echoes_in_one_line_and_keeps_every_size() -> None:
    report = resgraph.valid_sizes("examples/unet.yaml")
    shown = repr(report)
    assert len(shown) < 400, shown
    assert shown.startswith("SizeReport(1..2048: DimSizes(x.C = 1, fixed), DimSizes(x.H: H in {188 + 16k}, "
                            "declared 572, 117 valid, 1931 failing)")
    assert "square x: size in {188 + 16k}" in shown
    height = report.dims[1]
    assert len(repr(height)) < 200
    assert (len(height.valid), len(height.failures)) == (117, 1931)  # the data stays
    assert height.failures[1] == "enc1.conv1"


# --- chunk / split: a mistake of the whole layer is said of the layer ----------------------------

def test_a_chunk_with_too_many_outputs_names_the_chunk_layer() -> None:
    found = messages(HEADER + "inputs:\n  x: [32]\nlayers:\n  - up: {op: Linear, out_features: 128}\n"
                     "  - parts: {op: chunk, chunks: 2, outputs: [value, gate, extra]}\n"
                     "  - gated: {op: mul, input: [value, gate]}\n")
    assert found == ["<string>:7:5: error: layer 'parts' (chunk): dim 1 of (128,) splits into 2 pieces [64, 64], "
                     "but 3 outputs are named"]


def test_a_chunk_in_a_block_is_named_with_its_instance() -> None:
    found = messages(HEADER + "inputs:\n  x: [32]\nblocks:\n  glu:\n    layers:\n"
                     "      - up: {op: Linear, out_features: 64}\n"
                     "      - halves: {op: split, split_size: 22, dim: -1, outputs: [a, b]}\n"
                     "      - m: {op: mul, input: [a, b]}\nlayers:\n  - g: {block: glu}\n")
    assert len(found) == 1
    assert found[0].startswith("<string>:9:9: error: layer 'g.halves' (split): dim -1 of (64,) splits into 3 pieces")


# --- count_parameters takes what summary takes -----------------------------------------------------

def test_count_parameters_takes_a_built_model_as_summary_does() -> None:
    import torch

    spec = "examples/tutorial.yaml"
    model = resgraph.build(spec, seed=0)
    expected = resgraph.count_parameters(spec)
    assert expected == resgraph.summary(model).total_params == sum(p.numel() for p in model.parameters())
    assert resgraph.count_parameters(model) == expected
    assert resgraph.count_parameters(torch.compile(model)) == expected  # (compiling is lazy: nothing runs)
    assert resgraph.count_parameters(resgraph.check(spec)) == expected
    with pytest.raises(resgraph.UsageError) as caught:
        resgraph.count_parameters(torch.nn.Linear(2, 2))
    assert "count_parameters" in str(caught.value) and "Linear" in str(caught.value)


# --- messages that say what is true ---------------------------------------------------------------

UNET_SHRUNK = HEADER + """inputs:
  x: [3, 64, 64]
layers:
  - enc:  {op: Conv2d, out_channels: 16, kernel_size: 3, padding: 1}
  - down: {op: MaxPool2d, kernel_size: 2}
  - mid:  {op: Conv2d, out_channels: 16, kernel_size: 3}
  - up:   {op: ConvTranspose2d, out_channels: 16, kernel_size: 2, stride: 2}
skips:
  - s: {from: enc, to: up, merge: concat}
"""


def test_a_map_shrunk_between_strides_that_cancel_is_not_said_to_have_no_stride() -> None:
    (found,) = messages(UNET_SHRUNK)
    assert ("cannot concat 'enc' (16, 64, 64) into 'up' (16, 60, 60): the spatial size shrinks on one grid "
            "(no net stride between them): 64x64 -> 60x60") in found
    assert "'down' (MaxPool2d, kernel 2, stride 2" in found  # the hint names the strides that cancel


def test_an_input_size_below_one_is_named_as_a_dim_of_the_shape() -> None:
    found = messages(HEADER + "inputs:\n  x: [0, -1]\n  y: {shape: [4, 0]}\nlayers:\n  - r: {op: ReLU, input: x}\n")
    assert found == ["<string>:4:7: error: input 'x': dim 0 of the shape: must be at least 1, got integer 0",
                     "<string>:4:10: error: input 'x': dim 1 of the shape: must be at least 1, got integer -1",
                     "<string>:5:18: error: input 'y': dim 1 of the shape: must be at least 1, got integer 0"]


def test_a_map_skipped_into_a_linear_after_a_flatten_is_told_a_layer_that_works() -> None:
    (found,) = messages(HEADER + "inputs: {x: [3, 32, 32]}\nlayers:\n"
                        "  - c: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
                        "  - p: {op: AdaptiveAvgPool2d, output_size: 1}\n  - f: {op: Flatten}\n"
                        "  - fc: {op: Linear, out_features: 8}\nskips:\n  - s: {from: c, to: fc}\n")
    assert "add a Flatten" not in found  # (the target already follows one)
    assert found.endswith("hint: a skip joins values with the same number of dims: average the source to (8,) in "
                          "a layer of its own, `- c_mean: {op: mean, dim: [2, 3], input: c}`, and start the skip from "
                          "c_mean (give the layer written after it an `input:` naming what it read before)")
    # what it proposes validates, and adds the channel means to fc's output
    fixed = (HEADER + "inputs: {x: [3, 32, 32]}\nlayers:\n"
             "  - c: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
             "  - c_mean: {op: mean, dim: [2, 3], input: c}\n"
             "  - p: {op: AdaptiveAvgPool2d, output_size: 1, input: c}\n  - f: {op: Flatten}\n"
             "  - fc: {op: Linear, out_features: 8}\nskips:\n  - s: {from: c_mean, to: fc}\n")
    import torch

    model = resgraph.build(fixed, seed=0)
    x = torch.randn(2, 3, 32, 32)
    features = model.c(x)
    expected = model.fc(features.mean((2, 3))) + features.mean((2, 3))
    torch.testing.assert_close(model(x), expected)


def test_a_misspelt_summary_column_reads_as_sentences() -> None:
    with pytest.raises(resgraph.UsageError) as caught:
        resgraph.summary("examples/tutorial.yaml", columns="op,parms")
    assert str(caught.value) == ("unknown summary column 'parms'; did you mean 'params'? The columns are op, "
                                 "input_shape, output_shape, kernel, params, trainable, macs, param_memory, "
                                 "activation_memory, connected_to (or default, all)")


def test_a_tuple_written_as_in_python_is_one_error_saying_write_a_list() -> None:
    found = messages(HEADER + "inputs: {x: [3, 8, 8]}\nlayers:\n"
                     "  - c: {op: Conv2d, out_channels: 4, kernel_size: (3, 3), stride: (1,1)}\n"
                     "  - d:\n      op: Conv2d\n      out_channels: 4\n      kernel_size: (3, 3)\n")
    assert found == [
        "<string>:5:51: error: layer 'c' (Conv2d): kernel_size: (3, 3) is a Python tuple, which YAML does not have "
        "(it read the string '(3' and a key '3)': in a {...} mapping a comma ends a value); write a list: [3, 3]",
        "<string>:5:67: error: layer 'c' (Conv2d): stride: (1, 1) is a Python tuple, which YAML does not have "
        "(it read the string '(1' and a key '1)': in a {...} mapping a comma ends a value); write a list: [1, 1]",
        "<string>:9:20: error: layer 'd' (Conv2d): kernel_size: (3, 3) is a Python tuple, which YAML does not have "
        "(it read the string '(3, 3)'); write a list: [3, 3]"]


# --- a concat skip joins along the channels / features --------------------------------------------

def test_a_concat_skip_between_sequences_joins_the_features_by_default() -> None:
    """A concat skip with no `dim` between (N, L, C) values joined along dim 1, the positions, and
    silently inserted a Linear to make the features fit: (N, 20, 16). It joins the features now."""
    import torch

    spec = (HEADER + "inputs: {x: [10, 32]}\nlayers:\n  - fc: {op: Linear, out_features: 16}\n  - act: {op: ReLU}\n"
            "skips:\n  - s: {from: x, to: act, merge: concat}\n")
    model = resgraph.build(spec, seed=0)
    x = torch.randn(2, 10, 32)
    torch.testing.assert_close(model(x), torch.cat([x, torch.relu(model.fc(x))], dim=-1))  # (N, 10, 48)
    assert resgraph.count_parameters(spec) == 32 * 16 + 16  # no projection
    generated = resgraph.to_python(model)
    assert "dim=-1" in generated
    # written, `dim: 1` still joins the positions (the features then need a projection)
    written = resgraph.build(spec.replace("merge: concat}", "merge: concat, dim: 1}"), seed=0)
    assert written(x).shape == (2, 20, 16)


def test_a_concat_skip_between_maps_still_joins_the_channels() -> None:
    import torch

    spec = (HEADER + "inputs: {x: [3, 8, 8]}\nlayers:\n  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, "
            "padding: 1}\nskips:\n  - s: {from: x, to: c, merge: concat}\n")
    model = resgraph.build(spec, seed=0)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(model(x), torch.cat([x, model.c(x)], dim=1))
