"""Stage 7, lower: a typed graph -> an ordinary `nn.Module` with a generated forward.

The specification:

- every node that owns something (`ownership.owns`) becomes the attribute named after it, in
  graph order: a layer's torch module, a learned tensor as an `nn.Parameter` of shape
  (1, *shape), a projecting skip's module steps as an `nn.Sequential` (torchvision's keys:
  `down.0.weight`), a block call's instance module, and `repeat: N` as an `nn.Sequential` of N;
- nodes that own nothing (inputs, code ops, identity and code-only projections) add nothing;
- the module computes exactly what the same network written by hand computes, with the same
  weights, and owns exactly the parameters shape inference counted;
- the helpers a forward calls (`codegen.HELPERS`, e.g. a runtime crop) are defined beside it, so
  the module runs at every input size its layers admit;
- `seed` makes initialisation deterministic without touching the global RNG;
- torch refusing a layer's arguments is a SpecError located at that layer.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgraph.codegen import generate_forward
from resgraph.errors import SpecError
from resgraph.expand import expand
from resgraph.graph import Graph, GraphBuilder
from resgraph.loader import load_text
from resgraph.lower import GeneratedModule, lower, projection_module
from resgraph.ownership import Owns, graph_parameters, owned_parameters, owns
from resgraph.resolve import resolve
from resgraph.shapes import infer_shapes, total_parameters
from resgraph.spec import BlockCall
from resgraph.validate import validate


def unit(qualname: str, channels: int) -> Graph:
    """An instance of a block `unit`: conv 3x3 -> ReLU, plus its input (an identity skip)."""
    b = GraphBuilder("Unit")
    b.input("x")
    b.layer("conv", "Conv2d", out_channels=channels, kernel_size=3, padding=1)
    b.layer("relu", "ReLU")
    b.skip("s", "x", "relu")
    graph = b.build()
    graph.qualname, graph.block = qualname, "unit"
    return graph


def network() -> Graph:
    """A small network with one node of every ownership kind (see `OWNED`)."""
    b = GraphBuilder("Net")
    b.input("x", [3, 8, 8])
    b.layer("stem", "Conv2d", out_channels=4, kernel_size=3, padding=1)
    b.layer("act", "ReLU")
    b.block("stage", BlockCall.model_validate({"block": "unit", "repeat": 2}),
            [unit("stage.0.", 4), unit("stage.1.", 4)])
    b.layer("down", "Conv2d", out_channels=8, kernel_size=3, stride=2, padding=1)
    b.skip("shortcut", "act", "down")  # 4->8 channels, /2: Conv2d + BatchNorm2d
    b.skip("padded", "stage", "down", projection="pad")  # subsample + zero-pad: code only
    b.layer("pos", "parameter", shape=[8, 4, 4], init="normal")
    b.layer("sum", "add", ["down", "pos"], input=["down", "pos"])
    b.block("head", BlockCall.model_validate({"block": "unit"}), [unit("head.", 8)])
    b.layer("flat", "Flatten")
    b.layer("fc", "Linear", out_features=3)
    return infer_shapes(b.build())


OWNED = [("stem", Owns.module, nn.Conv2d), ("act", Owns.module, nn.ReLU), ("stage", Owns.repeat, nn.Sequential),
         ("down", Owns.module, nn.Conv2d), ("shortcut", Owns.projection, nn.Sequential),
         ("pos", Owns.parameter, nn.Parameter), ("head", Owns.block, GeneratedModule),
         ("flat", Owns.module, nn.Flatten), ("fc", Owns.module, nn.Linear)]


class HandWrittenUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv(x)) + x


class HandWritten(nn.Module):
    """`network()` written by a person, with the same attribute names."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.act = nn.ReLU()
        self.stage = nn.Sequential(HandWrittenUnit(4), HandWrittenUnit(4))
        self.down = nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.shortcut = nn.Sequential(nn.Conv2d(4, 8, 1, stride=2, bias=False), nn.BatchNorm2d(8))
        self.pos = nn.Parameter(torch.zeros(8, 4, 4))
        self.head = HandWrittenUnit(8)
        self.flat = nn.Flatten()
        self.fc = nn.Linear(128, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = self.act(self.stem(x))  # (N, 4, 8, 8)
        stage = self.stage(act)
        down = self.down(stage) + self.shortcut(act)  # (N, 8, 4, 4)
        down = down + F.pad(stage[:, :, ::2, ::2], (0, 0, 0, 0, 2, 2))
        return self.fc(self.flat(self.head(down + self.pos)))  # (N, 3)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return network()


@pytest.fixture(scope="module")
def module(graph: Graph) -> GeneratedModule:
    return lower(graph, seed=0)


# --- what the module owns ------------------------------------------------------------------------------------

def test_owned_attributes_follow_ownership_in_graph_order(graph: Graph, module: GeneratedModule) -> None:
    assert [(node.name, owns(node)) for node in graph.nodes.values() if owns(node) is not Owns.nothing] == [
        (name, kind) for name, kind, _ in OWNED]
    assert [name for name, _ in module.named_children()] == [name for name, kind, _ in OWNED if kind.is_module]
    for name, _, cls in OWNED:
        assert isinstance(getattr(module, name), cls), name
    # Nodes that own nothing add nothing: inputs, the add layer, the code-only projection.
    for name in ("x", "sum", "padded"):
        assert owns(graph.nodes[name]) is Owns.nothing and not hasattr(module, name)


def test_the_module_is_of_a_class_named_after_the_graph_holding_its_forward(graph: Graph,
                                                                          module: GeneratedModule) -> None:
    assert type(module).__name__ == "Net" and isinstance(module, GeneratedModule)
    assert module.code == type(module).code == generate_forward(graph)


def test_a_learned_tensor_is_a_parameter_of_exactly_its_declared_shape(module: GeneratedModule) -> None:
    """Without `batch: true` it has no batch dim; the forward broadcasts it over the batch."""
    assert isinstance(module.pos, nn.Parameter) and module.pos.shape == (8, 4, 4)
    assert dict(module.named_parameters())["pos"] is module.pos
    assert module.pos.std() > 0  # init: normal


def test_a_projection_is_a_sequential_named_after_its_skip(module: GeneratedModule) -> None:
    conv, norm = module.shortcut
    assert isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d)
    assert (conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.bias) == (4, 8, (1, 1), (2, 2),
                                                                                              None)
    assert {"shortcut.0.weight", "shortcut.1.weight", "shortcut.1.bias", "shortcut.1.running_mean",
            "shortcut.1.running_var", "shortcut.1.num_batches_tracked"} <= set(module.state_dict())


def test_projection_module_builds_only_the_module_steps(graph: Graph) -> None:
    assert len(projection_module(graph.nodes["padded"].meta["projection"])) == 0
    assert [type(m) for m in projection_module(graph.nodes["shortcut"].meta["projection"])] == [nn.Conv2d,
                                                                                                nn.BatchNorm2d]


def test_repeat_is_a_sequential_of_instances_and_a_single_call_is_the_instance(module: GeneratedModule) -> None:
    first, second = module.stage
    assert type(first).__name__ == "Unit" and type(first) is type(second)  # one class per distinct source
    assert [name for name, _ in first.named_children()] == ["conv", "relu"]
    assert type(module.head).__name__ == "Unit" and module.head.conv.in_channels == 8
    keys = set(module.state_dict())
    assert {"stage.0.conv.weight", "stage.1.conv.bias", "head.conv.weight"} <= keys


def test_the_module_owns_exactly_the_parameters_shape_inference_counted(graph: Graph, module: GeneratedModule) -> None:
    for node in graph.nodes.values():
        assert owned_parameters(module, node) == node.meta.get("params", 0), node.name
    total = sum(p.numel() for p in module.parameters())
    assert graph_parameters(module, graph) == total == total_parameters(graph)
    for instance in graph.nodes["stage"].instances:
        assert graph_parameters(module, instance) == total_parameters(instance)


# --- it computes the hand-written network ---------------------------------------------------------------------

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_outputs_equal_a_hand_written_module_with_the_same_weights(graph: Graph, mode: str) -> None:
    lowered = lower(graph, seed=1)
    reference = HandWritten()
    reference.load_state_dict(lowered.state_dict(), strict=True)
    getattr(lowered, mode)()
    getattr(reference, mode)()
    x = torch.randn(4, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(lowered(x), reference(x))
    if mode == "train":  # the projection's running statistics were updated alike
        assert torch.equal(lowered.shortcut[1].running_mean, reference.shortcut[1].running_mean)


def test_gradients_reach_every_parameter(graph: Graph) -> None:
    lowered = lower(graph, seed=0)
    lowered(torch.randn(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in lowered.parameters())


def test_lowering_reads_the_base_class_it_is_given(graph: Graph) -> None:
    class Base(GeneratedModule):
        def describe(self) -> str:
            return f"{type(self).__name__} with {len(list(self.children()))} children"

    lowered = lower(graph, base=Base, seed=0)
    assert isinstance(lowered, Base) and lowered.describe() == "Net with 8 children"
    assert not isinstance(lowered.head, Base)  # instances derive from GeneratedModule only


# --- seed --------------------------------------------------------------------------------------------------

def test_a_seed_makes_initialisation_deterministic_without_touching_the_global_rng(graph: Graph) -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first, second, other = lower(graph, seed=7), lower(graph, seed=7), lower(graph, seed=8)
    assert torch.equal(torch.get_rng_state(), before)
    first_state, second_state = first.state_dict(), second.state_dict()
    assert all(torch.equal(first_state[key], second_state[key]) for key in first_state)
    assert not torch.equal(first.stem.weight, other.stem.weight)
    assert not torch.equal(first.pos, other.pos)  # learned tensors are seeded too


def test_without_a_seed_lowering_draws_from_the_global_rng(graph: Graph) -> None:
    torch.manual_seed(5)
    first = lower(graph)
    torch.manual_seed(5)
    second = lower(graph)
    assert torch.equal(first.stem.weight, second.stem.weight)
    assert not torch.equal(first.stem.weight, lower(graph).stem.weight)


# --- helpers beside the forward: one module, every input size -------------------------------------------------

def test_a_module_with_a_runtime_crop_runs_at_other_input_sizes() -> None:
    b = GraphBuilder("Net")
    b.input("x", [4, 8, 8])
    b.layer("conv", "Conv2d", out_channels=8, kernel_size=5)
    b.skip("s", "x", "conv", projection="crop")  # one grid: x is centre-cropped by 2 on each side
    module = lower(infer_shapes(b.build()), seed=0)
    assert "_center_crop(x, conv)" in module.code
    with torch.no_grad():
        for size in [(8, 8), (11, 16)]:
            x = torch.randn(2, 4, *size)
            assert torch.equal(module(x), module.conv(x) + module.s(x[:, :, 2:-2, 2:-2]))


# --- torch's refusals become located errors ----------------------------------------------------------------------

REFUSED = """\
resgraph: 1
name: M
inputs: {x: [3, 8, 8]}
blocks:
  pair:
    layers:
      - inner: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
layers:
  - conv: {op: Conv2d, out_channels: 4, kernel_size: 3, padding: 1}
  - body: {block: pair}
  - act: {op: ReLU}
"""


def test_torch_refusing_the_arguments_is_a_spec_error_at_each_refused_layer() -> None:
    loaded = load_text(REFUSED, "spec.yaml")
    graph = infer_shapes(resolve(expand(validate(loaded), loaded.source)))
    # No curated op lets such arguments through today (their shape rules check what torch checks), so
    # they are altered after shape inference, as a shape rule that missed one of torch's checks would.
    for node in (graph.nodes["conv"], graph.nodes["body"].instances[0].nodes["inner"]):
        node.meta["args"] = {**node.meta["args"], "padding": "same", "stride": 2}
    with pytest.raises(SpecError) as caught:
        lower(graph)
    assert [str(d.location) + ": " + d.message for d in caught.value.diagnostics] == [
        "spec.yaml:7:9: layer 'body.inner' (Conv2d): torch rejected its arguments: "
        "padding='same' is not supported for strided convolutions",
        "spec.yaml:9:5: layer 'conv' (Conv2d): torch rejected its arguments: "
        "padding='same' is not supported for strided convolutions",
    ]


def test_a_global_module_registration_hook_sees_every_child_lowering_adds(graph: Graph) -> None:
    """Lowering adds children without add_module's attribute probe, but a global module registration hook
    (torch's `register_module_module_registration_hook`) still sees each one, and what it returns is used,
    as add_module does."""
    from torch.nn.modules.module import register_module_module_registration_hook

    seen: list[str] = []

    def hook(parent: nn.Module, name: str, child: nn.Module) -> nn.Module | None:
        seen.append(name)
        return nn.Identity() if name == "act" else None

    handle = register_module_module_registration_hook(hook)
    try:
        hooked = lower(graph, seed=0)
    finally:
        handle.remove()
    every_child = [name.rpartition(".")[2] for name, _ in lower(graph, seed=0).named_modules() if name]
    assert sorted(seen) == sorted(every_child)
    assert isinstance(hooked.act, nn.Identity)


def test_lowering_adds_the_same_children_as_add_module(graph: Graph, module: GeneratedModule) -> None:
    """The children, their names and order, and the parameters they register, are those add_module would
    give (`lower._add_child` skips only its probe for an attribute that cannot exist)."""
    twin = type(module)()
    for name, child in module.named_children():
        twin.add_module(name, child)
    assert list(twin.named_children()) == list(module.named_children())
    assert list(twin.state_dict()) == [key for key in module.state_dict() if "." in key]


def test_lowering_uses_add_module_where_torch_keeps_no_hook_registry(graph: Graph,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """Where a torch release keeps its registration hooks elsewhere, every child goes through add_module
    (the registry is private to torch), and the model is the same."""
    from resgraph import lower as lowering

    direct = lower(graph, seed=0)
    monkeypatch.setattr(lowering, "_MODULE_HOOKS", None)
    probed: list[str] = []
    original = nn.Module.add_module

    def add_module(self: nn.Module, name: str, child: nn.Module | None) -> None:
        probed.append(name)
        original(self, name, child)

    monkeypatch.setattr(nn.Module, "add_module", add_module)
    through_add_module = lower(graph, seed=0)
    assert sorted(probed) == sorted(name.rpartition(".")[2] for name, _ in direct.named_modules() if name)
    assert list(through_add_module.state_dict()) == list(direct.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(through_add_module.state_dict().values(),
                                                 direct.state_dict().values()))
