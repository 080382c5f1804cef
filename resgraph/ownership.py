"""What each node owns in the built module: one answer, read by lowering, the Python export, the
summary, the diagram and parameter counting.

A node owns at most one attribute of its graph's module, named after the node:

| node                                     | owns                | attribute holds               |
|------------------------------------------|---------------------|-------------------------------|
| layer whose op is a torch.nn module      | `Owns.module`       | that module                   |
| layer whose op is a learned tensor       | `Owns.parameter`    | an `nn.Parameter`             |
| layer whose op is a constant tensor      | `Owns.buffer`       | a buffer (`register_buffer`)  |
| layer whose op is code (add, reshape...) | `Owns.nothing`      |                               |
| skip whose projection has module steps   | `Owns.projection`   | an `nn.Sequential` of them    |
| block call                               | `Owns.block`        | the instance's module         |
| block call with `repeat: N`              | `Owns.repeat`       | an `nn.Sequential` of N       |
| input, or a skip with no module steps    | `Owns.nothing`      |                               |

>>> from resgraph import check
>>> graph = check("resgraph: 1\\nname: M\\ninputs: {x: [4]}\\nlayers:\\n  - fc: {op: Linear, out_features: 4}\\n"
...               "  - act: {op: ReLU}\\n  - out: {op: add, input: [fc, act]}\\n")
>>> [owns(node).value for node in graph.nodes.values()]
['nothing', 'module', 'module', 'nothing']

A layer with `tie: {weight: wte.weight}` owns its module, but that parameter is another node's:
`tied_parameters` lists every tie of a graph and its block instances, and `owned_tensors` leaves
tied parameters to their owner, so each shared tensor is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .graph import BlockNode, Graph, LayerNode, Node, SkipNode

__all__ = ["Owns", "Tie", "graph_parameters", "output_names", "owned_parameters", "owned_tensors", "owns",
           "tied_parameters", "unique_name"]


class Owns(str, Enum):
    nothing = "nothing"
    module = "module"
    parameter = "parameter"
    buffer = "buffer"
    projection = "projection"
    block = "block"
    repeat = "repeat"

    @property
    def is_module(self) -> bool:
        """True when the attribute is an nn.Module (everything owned but a learned tensor or a buffer)."""
        return self not in (Owns.nothing, Owns.parameter, Owns.buffer)


_LAYER_OWNS = {"module": Owns.module, "parameter": Owns.parameter, "buffer": Owns.buffer, None: Owns.nothing}


def owns(node: Node) -> Owns:
    """What `node` owns in its graph's module (its attribute is always `node.name`)."""
    if isinstance(node, LayerNode):
        return _LAYER_OWNS[node.layer.owned()]
    if isinstance(node, SkipNode):
        plan = node.meta["projection"]
        return Owns.projection if plan.steps and plan.module_steps else Owns.nothing  # most skips have no steps
    if isinstance(node, BlockNode):
        return Owns.repeat if node.repeated else Owns.block
    return Owns.nothing


@dataclass(frozen=True)
class Tie:
    """One tie: the parameter `attribute` of the layer at `owner` (a path from the model's root) is
    the model's parameter `target`; `node` and `graph` locate the layer that declares it."""

    owner: str
    attribute: str
    target: str
    node: LayerNode
    graph: Graph

    @property
    def path(self) -> str:
        """The tied parameter's own path (`lm_head.weight`), a second name of `target`."""
        return f"{self.owner}.{self.attribute}"


def tied_parameters(graph: Graph) -> Iterator[Tie]:
    """Every tie of a graph and of its block instances, in graph order (instances depth first)."""
    for node in graph.nodes.values():
        if isinstance(node, LayerNode) and node.layer.tie:
            for attribute, target in node.layer.tie.items():
                yield Tie(graph.qualname + node.name, attribute, target, node, graph)
        elif isinstance(node, BlockNode):
            for instance in node.instances:
                yield from tied_parameters(instance)


def in_tie_order(ties: Iterable[Tie]) -> list[Tie]:
    """`ties` in the order to set them: a tie whose target is itself tied comes after that tie, so a
    chain (`c` to `b.weight`, `b` to `a.weight`) shares the last target's tensor whatever the order
    of its layers (set in graph order, `c` above `b` took `b`'s own tensor, replaced just after).
    A cycle of ties (refused where ties are checked) keeps graph order."""
    ties = list(ties)
    target_of = {tie.path: tie.target for tie in ties}

    def depth(tie: Tie) -> int:
        seen, target = {tie.path}, tie.target
        while target in target_of and target not in seen:
            seen.add(target)
            target = target_of[target]
        return len(seen)

    return sorted(ties, key=depth)  # (stable: graph order within a depth)


def owned_tensors(module: Any, node: Node, prefix: str = "") -> list[Any]:
    """The parameters `node` owns in a built model `module` (`prefix`: its instance's path from the
    model's root). Buffers are not parameters, and a tied parameter belongs to the node it is tied to."""
    kind = owns(node)
    if kind in (Owns.nothing, Owns.buffer):
        return []
    if kind is Owns.parameter:
        return [module.get_parameter(prefix + node.name)]
    if isinstance(node, BlockNode):  # its instances' nodes, so that ties inside them are left out too
        return [tensor for instance in node.instances for inner in instance.nodes.values()
                for tensor in owned_tensors(module, inner, instance.qualname)]
    tied = set(node.layer.tie or ()) if isinstance(node, LayerNode) else set()
    owned = module.get_submodule(prefix + node.name).named_parameters()
    return [tensor for name, tensor in owned if name not in tied]


def owned_parameters(module: Any, node: Node, prefix: str = "") -> int:
    """The number of parameters `node` owns in a built `module` (`prefix`: its instance's path)."""
    return sum(p.numel() for p in owned_tensors(module, node, prefix))


def graph_parameters(module: Any, graph: Graph) -> int:
    """The number of parameters a graph's nodes own in `module` (a block instance: its qualname's)."""
    return sum(owned_parameters(module, node, graph.qualname) for node in graph.nodes.values())


def output_names(graph: Graph) -> list[str]:
    """The spec's names for a graph's outputs (the layer a skip merges into, not the skip's name).

    An output that is also an input, or named twice, or named as a stored tensor (a parameter or
    buffer node's attribute, which the exporter writes as an initializer of that name), gets a
    suffix: ONNX values are named once. The ONNX export and `model.name_outputs` (torch.export) use
    them.
    """
    names: list[str] = []
    taken = set(graph.inputs) | {name for name, node in graph.nodes.items()  # only a layer stores a tensor
                                 if isinstance(node, LayerNode) and owns(node) in (Owns.parameter, Owns.buffer)}
    for node in graph.outputs:
        name = unique_name(graph.nodes[node].var, taken)
        taken.add(name)
        names.append(name)
    return names


def unique_name(base: str, taken: set[str]) -> str:
    """`base`, or `base_1`, `base_2`, ... : the first not in `taken` (ONNX values are named once)."""
    name, index = base, 1
    while name in taken:
        name, index = f"{base}_{index}", index + 1
    return name
