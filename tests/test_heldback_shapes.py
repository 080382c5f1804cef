"""Held-back cases of shapes at every input size (issue 11), compared with torch itself: pools with
dilation and padding, 1-d maps read by Upsample, chunk and split along a free dim, empty outputs of
uncurated ops, Upsample's area mode, sizes torch.export specialises (MaxPool1d, RNNs), and the fixes
hints propose (strides that floor, maps shrunk on one grid, targets grown past their source, strided
'same' convolutions, sizes written as symbols)."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import resgraph
from resgraph.errors import SpecError


def _spec(input_shape: list[int], layers: str, skips: str = "") -> str:
    return (f"resgraph: 1\nname: Net\ninputs:\n  x: {input_shape}\nlayers:\n{layers}"
            + (f"skips:\n{skips}" if skips else ""))


def _torch_runs(module: torch.nn.Module, shape: tuple[int, ...]) -> bool:
    try:
        module(torch.zeros(1, *shape))
    except RuntimeError:
        return False
    return True


def _errors(spec: str, **kwargs: object) -> str:
    with pytest.raises(SpecError) as info:
        resgraph.build(spec, **kwargs)
    return str(info.value)


# --- a pool's padding is checked against its kernel as written, dilation aside, as torch checks it ---

@pytest.mark.parametrize("dims", [1, 2, 3])
@pytest.mark.parametrize(("kernel", "padding", "dilation"), [(2, 2, 3), (3, 2, 2), (3, 2, 3), (5, 3, 2), (2, 1, 3),
                                                              (4, 2, 2), (1, 1, 3)])
def test_a_max_pool_builds_exactly_where_torch_accepts_its_padding(dims: int, kernel: int, padding: int,
                                                                   dilation: int) -> None:
    """A dilated kernel of 2 spans 4, but torch refuses padding 2 on it ('pad should be smaller than or equal
    to half of kernel size'): the build passed and the model failed at its first forward."""
    shape = (2, *[12] * dims)
    spec = _spec(list(shape), f"  - pool: {{op: MaxPool{dims}d, kernel_size: {kernel}, padding: {padding}, "
                              f"dilation: {dilation}}}\n")
    pool = getattr(torch.nn, f"MaxPool{dims}d")(kernel, padding=padding, dilation=dilation)
    if _torch_runs(pool, shape):
        model = resgraph.build(spec)
        assert model(torch.zeros(1, *shape)).shape == pool(torch.zeros(1, *shape)).shape
    else:
        message = _errors(spec)
        assert "layer 'pool'" in message and f"padding={padding} must be at most half the kernel size" in message


# --- a 2-dim input that Upsample reads is a (C, L) signal: its length is free, its channels fixed ---

@pytest.mark.parametrize("layers", [
    "  - up: {op: Upsample, scale_factor: 2, mode: linear}\n  - conv: {op: Conv1d, out_channels: 4, kernel_size: 3}\n",
    "  - up: {op: Upsample, scale_factor: 1.5}\n",
], ids=["linear-then-conv1d", "nearest"])
def test_a_signal_read_by_upsample_keeps_its_length_free(layers: str) -> None:
    """Upsample resizes the last dim of an (N, C, L) tensor; the input was taken as a (L, F) sequence, so
    the guard fixed the length at its declared 10 and called the channels 'L' ('must be (N, L, 10)')."""
    model = resgraph.build(_spec([3, 10], layers), seed=0)
    reference = torch.nn.Sequential(*model.children())  # the same modules, no guard
    for length in range(1, 40):
        x = torch.randn(2, 3, length)
        assert _torch_runs(reference, (3, length)) == (length >= 2 or "conv" not in layers), length
        if _torch_runs(reference, (3, length)):
            torch.testing.assert_close(model(x), reference(x))
        else:
            with pytest.raises(ValueError, match=r"input 'x' must be \(N, 3, L\) with L >= 2"):
                model(x)
    with pytest.raises(ValueError, match=r"must be \(N, 3, L\)"):
        model(torch.randn(2, 4, 10))  # the channels are the fixed dim


# --- a stride that floors: the hint names each layer that does not round as its stride, with a fix that works ---

def _hint(spec: str) -> str:
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    return diagnostic.hint or ""


@pytest.mark.parametrize(("layers", "fix", "fixed"), [
    # a kernel-3 pool that already has ceil_mode: ceil_mode was proposed; padding 1 (without it) rounds up
    ("  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1}\n"
     "  - p1: {op: MaxPool2d, kernel_size: 3, stride: 2, ceil_mode: true}\n",
     "`padding: 1` and drop `ceil_mode: true` on 'p1'", {"stride: 2, ceil_mode: true": "stride: 2, padding: 1"}),
    # a dilated conv whose padding 1 is short of its span of 5: `padding: 1` on a kernel-3 conv was proposed
    ("  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, stride: 2, padding: 1, dilation: 2}\n",
     "`padding: 2` on 'c1'", {"padding: 1, dilation: 2": "padding: 2, dilation: 2"}),
    # an even kernel, which no padding makes round up, and a pool without ceil_mode
    ("  - c1: {op: Conv2d, out_channels: 8, kernel_size: 4, stride: 2, padding: 1}\n"
     "  - p1: {op: MaxPool2d, kernel_size: 2}\n",
     "`kernel_size: 5` and `padding: 2` on 'c1' and `ceil_mode: true` on 'p1'",
     {"kernel_size: 4, stride: 2, padding: 1": "kernel_size: 5, stride: 2, padding: 2",
      "kernel_size: 2}": "kernel_size: 2, ceil_mode: true}"}),
    # a pool of stride 3 over a kernel of 2, in 1-d
    ("  - c1: {op: Conv1d, out_channels: 8, kernel_size: 1}\n  - p1: {op: AvgPool1d, kernel_size: 2, stride: 3}\n",
     "`ceil_mode: true` on 'p1'", {"stride: 3}": "stride: 3, ceil_mode: true}"}),
], ids=["pool-with-ceil-mode", "dilated-conv", "even-kernel-and-pool", "pool-1d-stride-3"])
def test_a_floored_stride_names_each_layer_and_the_setting_that_rounds_it_up(layers: str, fix: str,
                                                                             fixed: dict[str, str]) -> None:
    """The fix was boilerplate ('`padding: 1` on a kernel-3 conv, `ceil_mode: true` on a pool'): wrong for a
    dilated conv already padded 1, for an even kernel, and for a pool that already had ceil_mode. The fix the
    hint names now makes the skip fit at every size at which torch runs the layers."""
    shape = [4, 34] if "Conv1d" in layers else [4, 12, 12] if "dilation" in layers else [4, 33, 33]
    spec = _spec(shape, layers, "  - s: {from: x, to: " + ("p1" if "p1" in layers else "c1") + "}\n")
    hint = _hint(spec)
    assert hint.endswith(f"make {'them' if ' and `' in fix.split(' on ')[1] else 'it'} round up as the strides do: "
                         f"{fix}"), hint
    if "dilation" in layers:  # 12 is even: no odd size met the stride, the padding fell short of the span
        assert "a layer gave less than its stride does: 'c1' gave 5x5 where a stride of 2 gives 6x6" in hint
    for old, new in fixed.items():
        spec = spec.replace(old, new)
    model = resgraph.build(spec, seed=0)
    layers_alone = torch.nn.Sequential(*(m for name, m in model.named_children() if name != "s"))
    for size in range(1, 65):
        sample = (4, size) if len(shape) == 2 else (4, size, size)
        if _torch_runs(layers_alone, sample):  # the skip fits wherever the layers run
            assert model(torch.zeros(2, *sample)).shape == layers_alone(torch.zeros(2, *sample)).shape, size


# --- torch.export specialises a MaxPool1d's length: dynamic_shapes() leaves what it reads static ---

_POOLED_SIGNAL = """\
resgraph: 1
name: Net
inputs:
  x: [4, 31]
  y: [4, 20]
blocks:
  down:
    layers:
      - conv: {op: Conv1d, out_channels: 4, kernel_size: 3, padding: 1}
      - pool: {op: MaxPool1d, kernel_size: 2, ceil_mode: true}
layers:
  - a: {block: down, input: x}
  - b: {op: Conv1d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1, input: y}
  - am: {op: mean, dim: 2, input: a}
  - bm: {op: mean, dim: 2, input: b}
  - out: {op: add, input: [am, bm]}
"""


def test_export_with_dynamic_shapes_keeps_a_max_pooled_length_static_and_the_others_dynamic() -> None:
    """`torch.export.export(model, model.example_inputs(), dynamic_shapes=model.dynamic_shapes())` (and
    `resgraph.to_onnx`, which uses it) failed with 'Constraints violated ... specialized it to be a constant
    (31)' for any model whose MaxPool1d reads a free length (here inside a block)."""
    model = resgraph.build(_POOLED_SIGNAL, seed=0).eval()
    program = resgraph.export_program(model)
    for length in (9, 20, 57):  # y's length stays dynamic
        x, y = torch.randn(2, 4, 31), torch.randn(2, 4, length)
        torch.testing.assert_close(program.module()(x, y), model(x, y))
    # x's is static in the program, as torch.export made it; the eager model still takes any length
    with pytest.raises(Exception, match="Guard failed|expected"):
        program.module()(torch.randn(2, 4, 30), torch.randn(2, 4, 20))
    assert model(torch.randn(2, 4, 30), torch.randn(2, 4, 20)).shape == (2, 4)


def test_a_max_pools_channels_stay_dynamic_in_an_export() -> None:
    """Only the pooled length is specialised: token ids (L,) embedded to (L, 10) are pooled over the 10
    with L as channels, and an export with `dynamic_shapes()` takes any L (it was held at 7)."""
    spec = ("resgraph: 1\nname: TokPool\ninputs:\n  tok: {shape: [7], dtype: int64}\nlayers:\n"
            "  - e: {op: Embedding, num_embeddings: 20, embedding_dim: 10}\n  - mp: {op: MaxPool1d, kernel_size: 2}\n")
    model = resgraph.build(spec, seed=0).eval()
    (dims,) = model.dynamic_shapes()
    assert sorted(dims) == [0, 1]
    program = resgraph.export_program(model)
    for length in (2, 12, 40):
        tokens = torch.randint(0, 20, (3, length))
        torch.testing.assert_close(program.module()(tokens), model(tokens))


# --- a map shrunk on one grid: the paddings proposed are ones torch takes, proposed together ---------

_SHRINKING_POOLS = ("  - p: {op: MaxPool2d, kernel_size: %s, stride: 1}\n"
                    "  - q: {op: AvgPool2d, kernel_size: 5, stride: 1}\n"
                    "  - r: {op: MaxPool2d, kernel_size: 3, stride: 1, dilation: %s}\n")


def _fits_wherever_the_layers_run(spec: str, skip: str = "s") -> None:
    model = resgraph.build(spec, seed=0)
    layers_alone = torch.nn.Sequential(*(m for name, m in model.named_children() if name != skip))
    ran = 0
    for size in range(1, 40):
        if _torch_runs(layers_alone, (4, size, size)):
            ran += 1
            x = torch.randn(2, 4, size, size)
            assert model(x).shape == layers_alone(x).shape, size
    assert ran > 20


def test_the_paddings_that_keep_each_pools_size_are_one_fix_that_works() -> None:
    """They were alternatives ('keep the size with `padding: 1` on 'p' and 'r'; or keep the size with `padding: 2`
    on 'q''), though each layer needs its own."""
    spec = _spec([4, 12, 12], _SHRINKING_POOLS % (3, 1), "  - s: {from: x, to: r}\n")
    hint = _hint(spec)
    assert "Fix: keep the size with `padding: 1` on 'p' and 'r' and `padding: 2` on 'q'; or set `projection: crop`" \
        in hint, hint
    fixed = spec.replace("kernel_size: 3, stride: 1", "kernel_size: 3, stride: 1, padding: 1").replace(
        "kernel_size: 5, stride: 1", "kernel_size: 5, stride: 1, padding: 2")
    _fits_wherever_the_layers_run(fixed)


@pytest.mark.parametrize(("kernel", "dilation"), [(2, 1), (3, 2)], ids=["kernel-2", "dilated-kernel-3"])
def test_no_padding_is_proposed_that_torch_refuses_on_a_pool(kernel: int, dilation: int) -> None:
    """A kernel-2 pool was given `padding: same` (pools take no 'same'), a dilated kernel-3 pool `padding: 2`
    (torch: at most half the kernel, 1); padding the others alone leaves the skip unfit, so no padding is
    proposed. With a kernel of 2 the margins are odd at every size, and a crop 'at an input size where the
    margins are even' was proposed all the same."""
    spec = _spec([4, 12, 12], _SHRINKING_POOLS % (kernel, dilation), "  - s: {from: x, to: r}\n")
    hint = _hint(spec)
    fixes = hint.split("Fix:")[1] if "Fix:" in hint else ""
    assert "padding" not in fixes, hint
    # torch: no padding keeps a kernel-2 pool's size, and a kernel of 3 takes at most 1, dilation aside
    pools = [torch.nn.MaxPool2d(kernel, stride=1, padding=p, dilation=dilation) for p in range(kernel // 2 + 1)]
    assert all(pool(torch.zeros(1, 4, 12, 12)).shape[-1] != 12 for pool in pools)
    if kernel == 3:
        assert not _torch_runs(torch.nn.MaxPool2d(3, stride=1, padding=2, dilation=2), (4, 12, 12))
    if kernel == 2:
        assert "crop" not in hint, hint
        with pytest.raises(SpecError, match="off-centre"):  # as a crop is, at every size
            resgraph.check(spec.replace("to: r}", "to: r, projection: crop}"))
    else:
        assert hint.endswith("Fix: set `projection: crop` on this skip (the maps share a grid, so a centre crop "
                             "aligns them)"), hint
        _fits_wherever_the_layers_run(spec.replace("to: r}", "to: r, projection: crop}"))


# --- a target grown past its source without an upsample: no `size:` to give it ----------------------

def test_a_conv_padded_past_its_kernel_is_given_the_padding_that_keeps_its_size() -> None:
    """15 -> 17 by `padding: 2` on a kernel of 3: the fix was 'give the upsampling layer an explicit `size:`',
    and there is no upsampling layer."""
    spec = _spec([4, 15, 15], "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 2}\n",
                 "  - s: {from: x, to: c}\n")
    hint = _hint(spec)
    assert hint.endswith("the target grew past the source. Fix: keep the size with `padding: 1` on 'c'"), hint
    _fits_wherever_the_layers_run(spec.replace("padding: 2", "padding: 1"))


@pytest.mark.parametrize("transposed", ["kernel_size: 2, stride: 2",
                                        "kernel_size: 3, stride: 2, padding: 1, output_padding: 1"],
                         ids=["kernel-2", "kernel-3-output-padding"])
def test_a_transposed_conv_that_grew_past_the_source_is_given_the_input_sizes_that_fit(transposed: str) -> None:
    spec = _spec([4, 15, 15], "  - c: {op: Conv2d, out_channels: 4, kernel_size: 3, stride: 2, padding: 1}\n"
                 f"  - t: {{op: ConvTranspose2d, out_channels: 4, {transposed}}}\n", "  - s: {from: x, to: t}\n")
    hint = _hint(spec)
    assert hint.endswith("the target grew past the source. Fix: an input size at which this skip fits: 'x' 14x14 "
                         "(or 16x16, 12x12)"), hint
    model = resgraph.build(spec.replace("[4, 15, 15]", "[4, 14, 14]"), seed=0)
    layers_alone = torch.nn.Sequential(model.c, model.t)
    for size in (12, 14, 16):  # torch gives the source's size back at each size proposed
        x = torch.randn(2, 4, size, size)
        assert layers_alone(x).shape == x.shape and model(x).shape == x.shape


@pytest.mark.filterwarnings("ignore:The tensor attributes")  # (torch's own, of an RNN's flat weights)
@pytest.mark.parametrize("recurrent", ["LSTM", "GRU", "RNN"])
def test_export_with_dynamic_shapes_keeps_a_recurrent_sequence_static(recurrent: str) -> None:
    """The sequence an RNN reads is free (the eager model takes any length), but torch.export specialises it:
    exporting with `model.dynamic_shapes()` failed ('Constraints violated'). An attention layer's stays dynamic."""
    spec = _spec([12, 8], f"  - r: {{op: {recurrent}, input_size: 8, hidden_size: 16, output: 0}}\n")
    model = resgraph.build(spec, seed=0).eval()
    x = torch.randn(2, 12, 8)
    torch.testing.assert_close(resgraph.export_program(model).module()(x), model(x))
    assert model(torch.randn(2, 5, 8)).shape == (2, 5, 16)
    attention = resgraph.build(_spec([12, 8], "  - t: {op: TransformerEncoderLayer, nhead: 2, dim_feedforward: 16}\n"),
                               seed=0).eval()
    program = resgraph.export_program(attention)
    for length in (5, 12, 30):
        x = torch.randn(2, length, 8)
        torch.testing.assert_close(program.module()(x), attention(x))


# --- a strided 'same' convolution: the padding that gives what it would ----------------------------

@pytest.mark.parametrize(("kernel", "stride", "dilation"), [(3, 2, 1), (5, 2, 1), (3, 3, 2), (7, 4, 1)])
def test_a_strided_same_convolution_is_refused_at_its_padding_with_the_padding_that_rounds_up(
        kernel: int, stride: int, dilation: int) -> None:
    """torch refuses padding='same' with a stride; the error was at the layer, with no fix."""
    spec = _spec([3, 16, 16], f"  - conv: {{op: Conv2d, out_channels: 4, kernel_size: {kernel}, stride: {stride}, "
                              f"dilation: {dilation}, padding: same}}\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    (diagnostic,) = caught.value.diagnostics
    assert diagnostic.location.column == spec.splitlines()[5].index("padding") + 1
    padding = dilation * (kernel - 1) // 2
    assert diagnostic.hint == (f"`padding: {padding}` gives ceil(size / stride) at every size, what a strided 'same' "
                               "would give")
    conv = torch.nn.Conv2d(3, 4, kernel, stride=stride, padding=padding, dilation=dilation)
    for size in range(dilation * (kernel - 1) + 1 - 2 * padding, 40):
        assert conv(torch.zeros(1, 3, size, size)).shape[-1] == -(-size // stride), size


# --- chunk and split along a free dim: the number of pieces is decided, not the length ------------

@pytest.mark.parametrize(("cut", "pieces_of"), [
    ("{op: chunk, chunks: 3, dim: 2, outputs: [a, b, c]}", lambda x: x.chunk(3, dim=2)),
    ("{op: split, split_size: 4, dim: 2, outputs: [a, b, c]}", lambda x: x.split(4, dim=2)),
], ids=["chunk", "split"])
def test_a_map_cut_along_a_free_dim_works_wherever_torch_gives_the_pieces_named(cut: str, pieces_of: Any) -> None:
    """Cutting fixed the length at its declared size (`H = 12`): torch's chunk(3) of 9 or 15 rows gives the
    same three pieces, and resgraph refused them."""
    model = resgraph.build(_spec([4, 12, 6], f"  - s: {cut}\n  - o: {{op: concat, input: [a, b], dim: 1}}\n"),
                           seed=0)
    accepted = []
    for size in range(1, 40):
        x = torch.randn(2, 4, size, 6)
        pieces = pieces_of(x)
        if len(pieces) == 3:  # (as many pieces as names: resgraph's rule; the first two are whole)
            torch.testing.assert_close(model(x), torch.cat([pieces[0], pieces[1]], 1))
            accepted.append(size)
        else:
            with pytest.raises(ValueError, match="input 'x' must be"):
                model(x)
    assert len(accepted) > 3


# --- an uncurated op the meta device lets give an empty output -----------------------------------

@pytest.mark.parametrize("op", ["UpsamplingBilinear2d", "UpsamplingNearest2d"])
def test_an_uncurated_op_builds_exactly_where_torch_runs_it_and_never_to_an_empty_output(op: str) -> None:
    """Scaled by 0.6, a 1x1 map has no rows: the meta device, where uncurated ops are probed, gave (4, 0, 0);
    the model built and failed at its first forward ('Input and output sizes should be greater than 0'). (An
    empty output torch computes, a negative ZeroPad2d's, is refused too: every size stays at least 1.)"""
    module = getattr(torch.nn, op)(scale_factor=0.6)
    for size in range(1, 6):
        spec = _spec([4, size, size], f"  - u: {{op: {op}, scale_factor: 0.6}}\n")
        if _torch_runs(module, (4, size, size)):
            assert resgraph.build(spec)(torch.zeros(2, 4, size, size)).shape == module(
                torch.zeros(2, 4, size, size)).shape
        else:
            message = _errors(spec)  # (the meta device refuses it for nearest, as the CPU does; not for bilinear)
            assert f"layer 'u' ({op})" in message
            assert "empty output (4, 0, 0)" in message or "greater than 0" in message


# --- Upsample's `area` mode, which torch's Upsample takes ---------------------------------------

@pytest.mark.parametrize(("factor", "dims"), [(0.5, 2), (1.7, 2), (0.3, 1), (2.5, 3)])
def test_upsample_in_area_mode_sizes_and_computes_as_torch_does(factor: float, dims: int) -> None:
    """`mode: area` (F.interpolate's adaptive average) was refused as an unknown mode."""
    shape = [3, *[9] * dims]
    model = resgraph.build(_spec(shape, f"  - up: {{op: Upsample, scale_factor: {factor}, mode: area}}\n"))
    upsample = torch.nn.Upsample(scale_factor=factor, mode="area")
    for size in range(4, 14):
        x = torch.randn(2, 3, *[size] * dims)
        torch.testing.assert_close(model(x), upsample(x))
    assert "align_corners applies only to the interpolating modes" in _errors(
        _spec(shape, f"  - up: {{op: Upsample, scale_factor: {factor}, mode: area, align_corners: false}}\n"))


# --- an input size written as a symbol -------------------------------------------------------------

def test_an_input_size_written_as_a_symbol_says_sizes_are_examples() -> None:
    """`x: [3, H, W]` was answered 'expected an integer >= 1, got string 'H'', with no word that the declared
    sizes are examples and the model takes every size its layers admit."""
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [3, H, W]\n  t: {shape: [L], dtype: int64}\nlayers:\n"
            "  - c: {op: Conv2d, out_channels: 8, kernel_size: 3, input: x}\n")
    with pytest.raises(SpecError) as caught:
        resgraph.check(spec)
    found = [(d.location.line, d.location.column, d.message, d.hint) for d in caught.value.diagnostics]
    assert [(line, column) for line, column, _, _ in found] == [(4, 10), (4, 13), (5, 15)]
    assert found[0][2] == "input 'x': dim 1 of the shape: expected an integer >= 1, got string 'H'"
    assert all(hint.startswith("input sizes are examples, not symbols: write one (e.g. 224), or a parameter")
               for _, _, _, hint in found)
    sized = spec.replace("x: [3, H, W]", 'x: [3, "${size}", "${size}"]').replace("[L]", "[7]").replace(
        "inputs:", "params: {size: 32}\ninputs:")
    report = resgraph.valid_sizes(sized, high=64)
    assert report.of("x")[1].valid == tuple(range(3, 65))  # a 3x3 conv: every size from 3


# --- an add or mul skip broadcasts as torch does, over sizes that are 1 at every input size ---

_CONTEXT = ("  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1}\n"
            "  - pooled: {op: %s, input: x}\n"
            "  - context: {op: Conv2d, out_channels: %d, kernel_size: 1}\n"
            "  - out: {op: Conv2d, out_channels: 8, kernel_size: 1, input: conv}\n")


@pytest.mark.parametrize("merge", ["add", "mul"])
@pytest.mark.parametrize("pool", ["AdaptiveAvgPool2d, output_size: 1", "mean, dim: 2, keepdim: true",
                                  "MaxPool2d, kernel_size: 16"])
def test_a_source_that_broadcasts_into_its_target_merges_without_a_projection(merge: str, pool: str) -> None:
    """A GCNet context (C, 1, 1) added to, or an SE gate multiplying, a (C, H, W) map is torch's
    broadcast: no projection, whatever scale the pooled source comes from (a 16x16 max pool is on a
    grid 16 times coarser, which its broadcast dims never meet). A (C, 1, W) mean over the rows
    broadcasts over them alone."""
    spec = _spec([8, 16, 16], _CONTEXT % (pool, 8), f"  - s: {{from: context, to: out, merge: {merge}}}\n")
    model = resgraph.build(spec, seed=0)
    assert resgraph.check(spec).nodes["s"].meta["projection"].is_identity
    combine = torch.add if merge == "add" else torch.mul
    sizes = resgraph.valid_sizes(spec, low=1, high=40).dims
    for size in (16, 17, 31) if "MaxPool" in pool else (5, 16, 23):
        x = torch.randn(2, 8, size, size)
        pooled = x.mean(2, keepdim=True) if pool.startswith("mean") else model.pooled(x)
        expected = combine(model.out(model.conv(x)), model.context(pooled))
        torch.testing.assert_close(model(x), expected)
    # a max pool gives 1 only at 16..31: there, and only there, the broadcast is what torch runs
    admitted = tuple(range(16, 32)) if "MaxPool" in pool else tuple(range(1, 41))
    assert [d.valid for d in sizes if d.name == "H"] == [admitted]


@pytest.mark.parametrize("merge", ["add", "mul"])
def test_a_broadcast_source_whose_channels_alone_differ_gets_the_1x1_conv_alone(merge: str) -> None:
    """(4, 1, 1) into (8, 16, 16): the 1x1 conv gives the target's channels and keeps the source's 1x1,
    with no norm over a 1x1 map; the source's coarser grid (a 16x16 max pool) is no stride to take."""
    spec = _spec([8, 16, 16], _CONTEXT % ("MaxPool2d, kernel_size: 16", 4),
                 f"  - s: {{from: context, to: out, merge: {merge}}}\n")
    plan = resgraph.check(spec).nodes["s"].meta["projection"]
    assert [step.kind.value for step in plan.steps] == ["conv"] and plan.output.shape == (8, 1, 1)
    assert plan.steps[0].args["stride"] == 1
    model = resgraph.build(spec, seed=0)
    combine = torch.add if merge == "add" else torch.mul
    x = torch.randn(2, 8, 20, 20)
    torch.testing.assert_close(model(x), combine(model.out(model.conv(x)), model.s(model.context(model.pooled(x)))))


def test_an_add_skip_never_grows_its_target_and_a_source_that_broadcasts_nowhere_is_refused() -> None:
    # (8, 16, 16) into a global pool's (8, 1, 1): projected to the target, as before (torch's x + y would grow it)
    spec = _spec([8, 16, 16], "  - pool: {op: AdaptiveAvgPool2d, output_size: 1}\n",
                 "  - s: {from: x, to: pool}\n")
    graph = resgraph.check(spec)
    assert graph.nodes["s"].meta["type"].shape == (8, 1, 1)
    assert [step.kind.value for step in graph.nodes["s"].meta["projection"].steps] == ["conv", "norm"]
    # (8, 1, 16) against (8, 8, 8): 16 meets 8, which torch refuses at every size
    spec = _spec([8, 16, 16], "  - m: {op: mean, dim: 2, keepdim: true}\n"
                              "  - conv: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, stride: 2, "
                              "input: x}\n", "  - s: {from: m, to: conv, merge: add}\n")
    assert "skip 's': cannot add 'm' (8, 1, 16) to 'conv' (8, 8, 8)" in _errors(spec)


# --- ops that drop or reorder dims keep the spatial grid of the dims they keep ---

@pytest.mark.parametrize("drop", ["{op: select, dim: 2, index: 0}", "{op: mean, dim: 2}"])
def test_a_skip_across_a_select_or_mean_takes_the_stride_the_layers_took(drop: str) -> None:
    """(4, 3, 9, 9) -> select D -> (4, 9, 9) -> two stride-2 convs -> (8, 3, 3): the grid is known, so the
    projection steps by 4 (as the convs: 17 -> 9 -> 5, and 17 -> 5 at /4) and fits at every size; with
    the grid lost it stepped by 3 (9 -> 3 at the declared size only) and admitted 1, 2, 3, 5, 6 and 9."""
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [4, 3, 9, 9]\nlayers:\n"
            f"  - flat: {drop}\n"
            "  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, stride: 2}\n"
            "  - c2: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, stride: 2}\n"
            "skips:\n  - s: {from: flat, to: c2}\n")
    assert resgraph.check(spec).nodes["s"].meta["projection"].reason == "4->8 channels, /4"
    sizes = {d.name: d.valid for d in resgraph.valid_sizes(spec, low=1, high=40).dims}
    assert sizes["H"] == sizes["W"] == tuple(range(1, 41))
    model = resgraph.build(spec, seed=0)
    for size in (1, 8, 17, 30):
        x = torch.randn(2, 4, 3, size, size)
        assert model(x).shape == (2, 8, -(-size // 4), -(-size // 4))


def test_a_transpose_moves_each_dims_grid_with_it() -> None:
    """A (2, 1)-strided map transposed is on a (1, 2) grid: a skip from the input, transposed too, steps
    by (1, 2), and fits at every size as the layers do."""
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [4, 9, 12]\nlayers:\n"
            "  - c1: {op: Conv2d, out_channels: 8, kernel_size: 3, padding: 1, stride: [2, 1]}\n"
            "  - t: {op: transpose, dim0: 2, dim1: 3}\n"
            "  - xt: {op: transpose, dim0: 2, dim1: 3, input: x}\n"
            "  - c2: {op: Conv2d, out_channels: 8, kernel_size: 1, input: t}\n"
            "skips:\n  - s: {from: xt, to: c2}\n")
    assert resgraph.check(spec).nodes["s"].meta["projection"].reason == "4->8 channels, /1x2"
    model = resgraph.build(spec, seed=0)
    for h, w in ((9, 12), (7, 5), (1, 1), (16, 3)):
        assert model(torch.randn(2, 4, h, w)).shape == (2, 8, w, -(-h // 2))


# --- chunk and split outputs in skips ---

def test_a_skip_reads_and_merges_into_a_chunks_outputs_by_their_own_names() -> None:
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [8, 16, 16]\n  y: [4, 16, 16]\nlayers:\n"
            "  - parts: {op: chunk, chunks: 2, outputs: [value, gate], input: x}\n"
            "  - out: {op: mul, input: [value, gate]}\n"
            "skips:\n  - s1: {from: y, to: gate}\n  - s2: {from: value, to: out, merge: concat}\n")
    model = resgraph.build(spec)
    x, y = torch.randn(2, 8, 16, 16), torch.randn(2, 4, 16, 16)
    value, gate = x.chunk(2, 1)
    torch.testing.assert_close(model(x, y), torch.cat([value, value * (gate + y)], 1))


def test_a_chunk_read_by_its_own_name_or_as_a_call_names_the_output_to_write() -> None:
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [8, 16, 16]\nlayers:\n"
            "  - parts: {op: chunk, chunks: 2, outputs: [value, gate]}\n"
            "  - out: {op: mul, input: [value, gate]}\n"
            "skips:\n  - s1: {from: parts.value, to: out}\n  - s2: {from: x, to: parts.gate}\n"
            "  - s3: {from: parts, to: out}\n")
    assert _errors(spec).splitlines() == [
        "<string>:9:16: error: skip 's1': from: 'parts' is a chunk with 2 outputs, not one node (in 'parts.value')",
        "  hint: write 'value' alone: a chunk's outputs are nodes of their own names",
        "<string>:10:23: error: skip 's2': to: 'parts' is a chunk with 2 outputs, not one node (in 'parts.gate')",
        "  hint: write 'gate' alone: a chunk's outputs are nodes of their own names",
        "<string>:11:16: error: skip 's3': from: 'parts' is a chunk with 2 outputs, not one node",
        "  hint: read one of its outputs: value, gate",
    ]


# --- a concat's wrong dim is blamed on its `dim:` ---

def test_a_concats_wrong_dim_is_located_at_its_dim_key_with_the_dim_that_fits() -> None:
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: [8, 16, 16]\n  y: [8, 16, 8]\nlayers:\n"
            "  - a: {op: concat, input: [x, y], dim: 5}\n"
            "  - b: {op: concat, input: [x, y], dim: 1}\n"
            "  - c: {op: concat, input: [x, y]}\n"
            "  - conv: {op: Conv2d, out_channels: 8, kernel_size: 1, input: x}\n"
            "  - conv2: {op: Conv2d, out_channels: 8, kernel_size: 1, input: x}\n"
            "skips:\n  - s1: {from: x, to: conv, merge: concat, dim: 4}\n"
            "  - s2: {from: x, to: conv2, merge: concat, dim: -4}\n")
    assert _errors(spec).splitlines() == [
        "<string>:7:36: error: layer 'a' (concat): dim=5 is out of range for a tensor of 4 dims (batch included)",
        "  hint: use a dim between 1 and 3 (or -3 to -1)",
        "<string>:8:36: error: layer 'b' (concat): concat along dim 1 needs all other dims equal, got (8, 16, 16), "
        "(8, 16, 8)",
        "  hint: `dim: 3` joins them (the batch is dim 0), if that is the dim meant",
        # no dim written: the layer itself
        "<string>:9:5: error: layer 'c' (concat): concat along dim 1 needs all other dims equal, got (8, 16, 16), "
        "(8, 16, 8)",
        "  hint: `dim: 3` joins them (the batch is dim 0), if that is the dim meant",
        "<string>:13:44: error: skip 's1': dim=4 is out of range for a tensor of 4 dims (batch included)",
        "  hint: use a dim between 1 and 3 (or -3 to -1)",
        "<string>:14:45: error: skip 's2': dim=-4 is the batch dimension; use a dim between 1 and 3",
    ]
    for dim in (3, -1):  # torch agrees on the dim that fits
        fixed = spec.split("  - a:")[0] + f"  - b: {{op: concat, input: [x, y], dim: {dim}}}\n"
        x, y = torch.randn(2, 8, 16, 16), torch.randn(2, 8, 16, 8)
        torch.testing.assert_close(resgraph.build(fixed)(x, y), torch.cat([x, y], dim))


# --- skip errors in a block with scaled widths name the channels the model has ---

def test_skip_errors_in_a_width_scaled_block_name_the_scaled_channel_counts() -> None:
    spec = ("resgraph: 1\nname: Net\nscale: {width: 0.5, divisor: 8}\ninputs:\n  x: [16, 8, 8]\n"
            "blocks:\n  unit:\n    params: {width: required}\n    layers:\n"
            "      - c1: {op: Conv2d, out_channels: \"${width}\", kernel_size: 3, padding: 1}\n"
            "      - c2: {op: Conv2d, out_channels: \"${width // 2}\", kernel_size: 3, padding: 1}\n"
            "    skips:\n      - r: {from: c1, to: c2, projection: pad}\n"
            "layers:\n  - u: {block: unit, with: {width: 64}}\n  - v: {block: unit, input: x, with: {width: 32}}\n")
    errors = _errors(spec)
    # width 64 is 32 channels under width 0.5, and 64 // 2 = 32 is 16
    assert "skip 'u.r': cannot add 'c1' (32, 8, 8) to 'c2' (16, 8, 8): pad cannot reduce 32 channels to 16" in errors
    assert "skip 'v.r': cannot add 'c1' (16, 8, 8) to 'c2' (8, 8, 8): pad cannot reduce 16 channels to 8" in errors


# --- a concat layer's default dim is the channels or features, as a concat skip's ---

def test_a_concat_layer_joins_features_of_sequences_and_channels_of_maps_by_default() -> None:
    spec = ("resgraph: 1\nname: Net\ninputs:\n  x: {shape: [10, 16], layout: features_last}\n"
            "  y: {shape: [10, 8], layout: features_last}\n  z: [4, 8, 8]\nlayers:\n"
            "  - a: {op: concat, input: [x, y]}\n  - b: {op: concat, input: [z, z]}\n"
            "  - c: {op: concat, input: [x, x], dim: 1}\n"
            "  - d: {op: Linear, out_features: 8, input: x}\n"
            "skips:\n  - s: {from: y, to: d, merge: concat}\noutputs: [a, b, c, d]\n")
    model = resgraph.build(spec, seed=0)
    x, y, z = torch.randn(2, 10, 16), torch.randn(2, 10, 8), torch.randn(2, 4, 8, 8)
    a, b, c, d = model(x, y, z)
    torch.testing.assert_close(a, torch.cat([x, y], -1))
    torch.testing.assert_close(b, torch.cat([z, z], 1))
    torch.testing.assert_close(c, torch.cat([x, x], 1))
    torch.testing.assert_close(d, torch.cat([y, model.d(x)], -1))  # the skip: one rule for both
    graph = resgraph.check(spec)
    assert [graph.nodes[n].meta["type"].shape for n in "abcs"] == [(10, 24), (8, 8, 8), (20, 16), (10, 16)]
    source = resgraph.to_python(model)
    assert "torch.cat([x, y], dim=-1)" in source and "torch.cat([z, z], dim=1)" in source
