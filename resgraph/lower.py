"""Stage 5b, lower: a typed graph -> an ordinary `torch.nn.Module` with a generated forward.

Each op layer becomes a submodule named after it; each projection that has parameters becomes
an `nn.Sequential` named after its skip. The forward is real Python (see codegen), compiled once
per build: calling the module runs straight-line code, with no interpretation of the graph.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import hashlib
import linecache
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .codegen import generate_forward
from .errors import Diagnostic, SpecError
from .graph import Graph, NodeKind
from .projections import ProjectionPlan, step_constructor
from .spec import Spec

__all__ = ["CompiledModule", "GeneratedModule", "lower"]


class GeneratedModule(nn.Module):
    """Base class of every module with a generated forward; `code` is that forward's source."""

    code: str = ""


class CompiledModule(GeneratedModule):
    """Base class of the modules `resgraph.build` returns (block instances are GeneratedModules).

    Attributes:
        code: the source of the generated `forward` (also `type(model).code`).
        spec: the validated spec the module was built from.
    """

    def __init__(self, graph: Graph, spec: Spec, spec_text: str, spec_file: str, params: dict[str, Any]) -> None:
        super().__init__()
        self.spec = spec
        self._resgraph_graph = graph
        self._resgraph_source = (spec_text, spec_file, params)

    def __reduce_ex__(self, protocol: Any) -> Any:
        # The class is generated, so pickle by recipe: rebuild from the spec, then load the state.
        text, file, params = self._resgraph_source
        imports = getattr(self, "_resgraph_allow_imports", ())
        return (_unpickle, (text, file, params, self.state_dict(), self.training, imports))

    def __deepcopy__(self, memo: dict[int, Any]) -> CompiledModule:
        clone = type(self).__new__(type(self))
        memo[id(self)] = clone
        # Immutable after build: share them.
        shared = {"spec", "_resgraph_graph", "_resgraph_source", "_resgraph_allow_imports"}
        for key, value in self.__dict__.items():
            clone.__dict__[key] = value if key in shared else copy.deepcopy(value, memo)
        return clone


def _unpickle(text: str, file: str, params: dict[str, Any], state: dict[str, Any], training: bool,
              imports: tuple[str, ...] = ()) -> CompiledModule:
    from .api import build

    module = build(text, file=file, params=params, allow_imports=imports)
    module.load_state_dict(state)
    return module.train(training)


def lower(graph: Graph, spec: Spec, *, spec_text: str = "", spec_file: str = "<spec>",
          params: dict[str, Any] | None = None, seed: int | None = None) -> CompiledModule:
    """Instantiate the graph's modules (block instances nested) and generated forwards.

    Args:
        graph: a graph annotated by `infer_shapes`.
        seed: when given, initialise weights from this seed without touching the global RNG.
    Raises:
        SpecError: torch refused a layer's arguments (a combination the shape check cannot see).
    """
    diagnostics: list[Diagnostic] = []
    with _seeded(seed):
        cls = _generated_class(graph.name, generate_forward(graph), CompiledModule)
        module = cls(graph, spec, spec_text, spec_file, params or {})
        _add_submodules(module, graph, diagnostics)
    if diagnostics:
        raise SpecError(diagnostics)
    return module


def _lower_instance(graph: Graph, diagnostics: list[Diagnostic]) -> GeneratedModule:
    module = _generated_class(graph.name, generate_forward(graph), GeneratedModule)()
    _add_submodules(module, graph, diagnostics)
    return module


def _add_submodules(module: nn.Module, graph: Graph, diagnostics: list[Diagnostic]) -> None:
    """Submodules in graph order: layers, projections, and block instances (recursively)."""
    for node in graph.nodes.values():
        try:
            if node.layer is not None and (node.layer.torch_name or node.layer.owns_parameter):
                built = node.layer.build(node.meta["args"])
                if isinstance(built, nn.Parameter):
                    module.register_parameter(node.name, built)
                else:
                    module.add_module(node.name, built)
            elif node.kind is NodeKind.skip and node.meta["projection"].module_steps:
                module.add_module(node.name, projection_module(node.meta["projection"]))
            elif node.kind is NodeKind.block:
                assert node.call is not None
                instances = [_lower_instance(instance, diagnostics) for instance in node.meta["instances"]]
                module.add_module(node.name, nn.Sequential(*instances) if node.call.repeat is not None
                                  else instances[0])
        except (TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            diagnostics.append(Diagnostic(graph.where(node), f"{graph.label(node)}: torch rejected its "
                                                             f"arguments: {detail}"))


def projection_module(plan: ProjectionPlan) -> nn.Sequential:
    """The parameterised part of a projection, as torchvision-style `nn.Sequential`."""
    modules = []
    for step in plan.module_steps:
        name, kwargs = step_constructor(step)
        modules.append(getattr(nn, name)(**kwargs))
    return nn.Sequential(*modules)


@functools.lru_cache(maxsize=4096)
def _generated_class(name: str, source: str, base: type[GeneratedModule]) -> type[GeneratedModule]:
    """The class for one generated forward; instances with the same code share it."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    filename = f"<resgraph-generated {name} {digest}>"
    # Register the source so tracebacks and inspect.getsource show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"torch": torch}
    exec(compile(source, filename, "exec"), namespace)  # source holds only validated names and ints
    forward = namespace["forward"]
    forward.__qualname__ = f"{name}.forward"
    return type(name, (base,), {"forward": forward, "code": source, "__module__": "resgraph.generated"})


@contextlib.contextmanager
def _seeded(seed: int | None) -> Iterator[None]:
    if seed is None:
        yield
        return
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield
