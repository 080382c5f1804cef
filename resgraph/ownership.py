"""What each node owns in the built module: one answer, read by lowering, the Python export, the
summary, the diagram and parameter counting.

A node owns at most one attribute of its graph's module, named after the node:

| node                                     | owns                | attribute holds               |
|------------------------------------------|---------------------|-------------------------------|
| layer whose op is a torch.nn module      | `Owns.module`       | that module                   |
| layer whose op is a learned tensor       | `Owns.parameter`    | an `nn.Parameter`             |
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
"""

from __future__ import annotations

from enum import Enum
from typing import Any

from .graph import BlockNode, Graph, LayerNode, Node, SkipNode

__all__ = ["Owns", "graph_parameters", "owned_parameters", "owned_tensors", "owns"]


class Owns(str, Enum):
    nothing = "nothing"
    module = "module"
    parameter = "parameter"
    projection = "projection"
    block = "block"
    repeat = "repeat"

    @property
    def is_module(self) -> bool:
        """True when the attribute is an nn.Module (everything owned but a learned tensor)."""
        return self not in (Owns.nothing, Owns.parameter)


def owns(node: Node) -> Owns:
    """What `node` owns in its graph's module (its attribute is always `node.name`)."""
    if isinstance(node, LayerNode):
        if node.layer.owns_parameter:
            return Owns.parameter
        return Owns.nothing if node.layer.code_only else Owns.module
    if isinstance(node, SkipNode):
        return Owns.projection if node.meta["projection"].module_steps else Owns.nothing
    if isinstance(node, BlockNode):
        return Owns.repeat if node.repeated else Owns.block
    return Owns.nothing


def owned_tensors(module: Any, node: Node, prefix: str = "") -> list[Any]:
    """The parameters `node` owns in a built `module` (`prefix`: its instance's path)."""
    kind = owns(node)
    if kind is Owns.nothing:
        return []
    if kind is Owns.parameter:
        return [module.get_parameter(prefix + node.name)]
    return list(module.get_submodule(prefix + node.name).parameters())


def owned_parameters(module: Any, node: Node, prefix: str = "") -> int:
    """The number of parameters `node` owns in a built `module` (`prefix`: its instance's path)."""
    return sum(p.numel() for p in owned_tensors(module, node, prefix))


def graph_parameters(module: Any, graph: Graph) -> int:
    """The number of parameters a graph's nodes own in `module` (a block instance: its qualname's)."""
    return sum(owned_parameters(module, node, graph.qualname) for node in graph.nodes.values())
