"""Stage 7, lower: a typed graph -> an ordinary `torch.nn.Module` with a generated forward.

What each node owns (a layer's module, a learned tensor, a constant buffer, a projection's
`nn.Sequential`, block instances) is decided by `ownership.owns`; this stage only builds it, then
ties parameters (`tie:`) once the whole model exists, so a tie may name any parameter of it. The forward is real Python
(see codegen), compiled once per distinct source: calling the module runs straight-line code,
with no interpretation of the graph. Lowering knows nothing of specs or files: the API layer
(`api.CompiledModule`) adds the build record and the graph to the module it returns.

>>> from resgraph import check
>>> module = lower(check("resgraph: 1\\nname: Tiny\\ninputs: {x: [4]}\\n"
...                       "layers:\\n  - fc: {op: Linear, out_features: 2}\\n"))
>>> type(module).__name__, module.fc
('Tiny', Linear(in_features=4, out_features=2, bias=True))
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import linecache
from collections.abc import Iterator
from types import CodeType
from typing import Any, TypeVar

import torch
from torch import nn

from .codegen import HELPERS, functions_of, generate_forward, helpers_used
from .distributed import checkpointed_class, is_dtensor
from .errors import Diagnostic, SpecError, UsageError
from .graph import RESERVED_NAMES, BlockNode, Graph, LayerNode, Node, SkipNode
from .ownership import Owns, Tie, in_tie_order, owns, tied_parameters
from .projections import ProjectionPlan, step_constructor
from .suggest import did_you_mean

__all__ = ["GeneratedModule", "build_owned", "lower", "owned_units", "projection_module", "require_weights", "seeded",
           "tie_parameters"]


class GeneratedModule(nn.Module):
    """Base class of every module with a generated forward; `code` is that forward's source."""

    code: str = ""

    def __reduce_ex__(self, protocol: Any) -> Any:
        # A block instance pickled alone (`torch.save(model.layer1[0])`; a whole model pickles by its
        # build record, see CompiledModule): its class is generated, so no import can find it by name.
        # It travels as its generated source, from which `_unpickled_instance` makes the class again.
        cls = type(self)
        checkpointed = getattr(cls, "_checkpointed", False)
        generated = cls.__mro__[1] if checkpointed else cls
        if generated.__module__ != "resgraph.generated" or "code" not in generated.__dict__:
            if any(is_dtensor(tensor) for tensor in self.state_dict().values()):  # FSDP2's FSDP<name> class
                raise UsageError(f"cannot pickle block instance {cls.__name__.removeprefix('FSDP')}: it is sharded "
                                 "(resgraph.shard), and a file of it would hold only this process's shards; gather "
                                 "the whole model's weights (get_model_state_dict with full_state_dict=True), or save "
                                 "the shards with torch.distributed.checkpoint")
            return super().__reduce_ex__(protocol)  # (a class of the user's own, derived from a generated one)
        return _unpickled_instance, (generated.__name__, generated.code, checkpointed), self.__getstate__()


def _unpickled_instance(name: str, source: str, checkpointed: bool) -> GeneratedModule:
    """An empty block instance of the generated class of `source` (see `GeneratedModule.__reduce_ex__`);
    pickle then restores its state. The class is made again where no instance of it was made before
    (another process), else found in `_generated_class`'s cache."""
    made = _generated_class(name, source, GeneratedModule)
    if checkpointed:
        made = checkpointed_class(made)
    return made.__new__(made)


M = TypeVar("M", bound=GeneratedModule)


def lower(graph: Graph, *, base: type[M] = GeneratedModule, seed: int | None = None) -> M:  # type: ignore[assignment]
    """Instantiate the graph's modules (block instances nested) and generated forwards.

    Args:
        graph: a graph annotated by `infer_shapes`.
        base: the class the top-level module's generated class derives from.
        seed: when given, initialise weights from this seed without touching the global RNG.
    Raises:
        SpecError: torch refused a layer's arguments (a combination the shape check cannot see), or
            a `tie` names a parameter that does not exist or has another shape.
        UsageError: `seed` is outside the range torch accepts.
    """
    diagnostics: list[Diagnostic] = []
    classes = _generated_classes(graph, base)
    with seeded(seed):
        module = _instance_of(graph, classes)
        _add_owned(module, graph, diagnostics, classes)
    if not diagnostics:
        diagnostics = tie_parameters(module, graph)
    if diagnostics:
        raise SpecError(diagnostics)
    return module  # type: ignore[return-value]


def _generated_classes(graph: Graph, base: type[GeneratedModule]) -> dict[int, Any]:
    """The generated class of the graph (deriving from `base`) and of each block instance below it, by
    the graph's id; where making one failed, the exception, which `_instance_of` raises where that
    graph is lowered, as if it had been made there.

    All are made before any module is built: code generation between the layers' initialisations,
    which sweep megabytes of weights through the caches, took ResNet-50's build 1.1 ms; together
    beforehand, 0.74 ms."""
    classes: dict[int, Any] = {}
    for instance, instance_base in [(graph, base), *((instance, GeneratedModule) for _, instance in graph.subgraphs())]:
        try:
            classes[id(instance)] = _generated_class(instance.name, generate_forward(instance), instance_base)
        except Exception as exc:  # (raised where it was raised when classes were made as needed)
            classes[id(instance)] = exc
    return classes


def _instance_of(graph: Graph, classes: dict[int, Any]) -> GeneratedModule:
    """A new module of `graph`'s generated class (see `_generated_classes`)."""
    made = classes[id(graph)]
    if isinstance(made, Exception):
        raise made
    return made()  # type: ignore[no-any-return]


def _add_owned(module: nn.Module, graph: Graph, diagnostics: list[Diagnostic], classes: dict[int, Any]) -> None:
    """What each node owns, in graph order: layers, projections, and block instances (recursively),
    each instance of its class in `classes` (`_generated_classes`)."""
    # Owns' members bound once: on Python 3.11 each lookup on an Enum class takes about 0.1 us, up to
    # three per node here (a 100,000-layer chain has 150,000 nodes).
    nothing, parameter, buffer = Owns.nothing, Owns.parameter, Owns.buffer
    for node in graph.nodes.values():
        kind = owns(node)
        if kind is nothing:
            continue
        try:
            owned = (_block_module(node, kind, diagnostics, classes) if isinstance(node, BlockNode)
                     else build_owned(node))
        except (TypeError, ValueError, RuntimeError) as exc:
            detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            diagnostics.append(Diagnostic(graph.where(node), f"{graph.label(node)}: torch rejected its "
                                                             f"arguments: {detail}"))
            continue
        if kind is parameter:
            module.register_parameter(node.name, owned)
        elif kind is buffer:
            assert isinstance(node, LayerNode)
            module.register_buffer(node.name, owned, persistent=node.layer.persistent)  # type: ignore[attr-defined]
        else:
            _add_child(module, node.name, owned)


def _block_module(node: BlockNode, kind: Owns, diagnostics: list[Diagnostic], classes: dict[int, Any]) -> nn.Module:
    """A block call's instance, or for `repeat: N` the nn.Sequential of its instances."""
    instances = []
    for instance in node.instances:
        module = _instance_of(instance, classes)
        _add_owned(module, instance, diagnostics, classes)
        instances.append(module)
    return _sequential(instances) if kind is Owns.repeat else instances[0]


def _add_child(module: nn.Module, name: str, child: Any) -> None:
    """`module.add_module(name, child)` for a module just made from a generated class and a node name.

    add_module first asks `hasattr(module, name)`, which for a name the module lacks raises and
    catches an AttributeError in `nn.Module.__getattr__`: 2.4 us, a third of lowering's own time
    (ResNet-50's 175 children, 0.4 ms). Here the answer is known: node names are validated
    identifiers outside `graph.RESERVED_NAMES` (nn.Module's attributes and the generated class's),
    unique in their graph, so none is an attribute yet (a reserved name, which only a graph built by
    hand can hold, goes through add_module, which refuses it). The type check stays, and with a
    global module registration hook installed (`nn.modules.module.register_module_module_registration_hook`)
    add_module itself runs, which calls it.
    """
    if _MODULE_HOOKS is None or _MODULE_HOOKS or not isinstance(child, nn.Module) or name in RESERVED_NAMES:
        module.add_module(name, child)  # (raises the TypeError for what is no module)
    else:
        module._modules[name] = child


def _sequential(modules: list[nn.Module]) -> nn.Sequential:
    """`nn.Sequential(*modules)`, each added as `_add_child` adds it (named "0", "1", ...)."""
    sequential = nn.Sequential()
    for index, child in enumerate(modules):
        _add_child(sequential, str(index), child)
    return sequential


# torch's registry of global module registration hooks: a dict, empty unless a hook is installed;
# None where a torch release keeps it elsewhere (add_module is then always used: private to torch).
_MODULE_HOOKS: dict[Any, Any] | None = getattr(torch.nn.modules.module, "_global_module_registration_hooks", None)


def tie_parameters(module: nn.Module, graph: Graph) -> list[Diagnostic]:
    """Make every tied parameter (`tie: {weight: wte.weight}`) the very tensor it names.

    `module` is the model lowered from `graph`; ties are set in `in_tie_order`. Applying them again
    (after `to_empty` re-creates the parameters) is harmless.

    Returns:
        One located diagnostic per tie that cannot hold: its layer has no such parameter, the
        target is not a parameter of the model, it closes a cycle of ties, or their shapes differ.
        Nothing is tied then.
    """
    diagnostics: list[Diagnostic] = []
    resolved = []
    ties = list(tied_parameters(graph))
    known = dict(module.named_parameters(remove_duplicate=False)) if ties else {}
    cycles = _tie_cycles(ties) if ties else {}
    for tie in ties:
        where, label = tie.graph.where(tie.node, "tie"), tie.graph.label(tie.node)
        own = dict(module.get_submodule(tie.owner).named_parameters(remove_duplicate=False))
        if tie.attribute not in own:
            diagnostics.append(Diagnostic(where, f"{label}: tie: it has no parameter {tie.attribute!r} (its "
                                                 f"parameters: {', '.join(own) or 'none'})"
                                                 f"{did_you_mean(tie.attribute, own)}"))
        elif (head := tie.target.split(".")[0]) in graph.left_out and tie.target not in known:
            line = graph.left_out[head]
            diagnostics.append(Diagnostic(where, f"{label}: tie: {tie.target!r} is a parameter of layer {head!r}, "
                                                 f"which is left out: its `when:`{f' (line {line})' if line else ''} "
                                                 "is false",
                                          "give the tied layer the same `when:`, or tie it to another parameter"))
        elif tie.target not in known or tie.target == tie.path:
            if tie.target == tie.path:
                why = "is the parameter itself"
            else:  # (a suggestion is never the tied parameter's own path: tying it to itself is an error)
                why = "is not a parameter of the model" + _not_a_parameter(
                    module, tie, did_you_mean(tie.target, [name for name in known if name != tie.path]))
            diagnostics.append(Diagnostic(where, f"{label}: tie: {tie.target!r} {why}",
                                          "name a parameter by its path from the model's root, as state_dict "
                                          "does (e.g. wte.weight)"))
        elif (cycle := cycles.get(tie.path)) is not None:
            diagnostics.append(Diagnostic(where, f"{label}: tie: {tie.target!r} leads back to {tie.path!r} through "
                                                 f"other ties ({' -> '.join(cycle)}), so no parameter in the cycle "
                                                 "owns the shared tensor",
                                          "remove one tie of the cycle: the parameter it leaves keeps its own "
                                          "tensor, and the others share it"))
        elif own[tie.attribute].shape != known[tie.target].shape:
            diagnostics.append(Diagnostic(where, f"{label}: tie: its {tie.attribute} has shape "
                                                 f"{tuple(own[tie.attribute].shape)}, but {tie.target} has "
                                                 f"{tuple(known[tie.target].shape)}",
                                          "tied parameters must have equal shapes"))
        else:
            resolved.append(tie)
    if diagnostics:
        return diagnostics
    for tie in in_tie_order(resolved):
        parent, _, leaf = f"{tie.owner}.{tie.attribute}".rpartition(".")
        setattr(module.get_submodule(parent), leaf, module.get_parameter(tie.target))
    return []


def _not_a_parameter(module: nn.Module, tie: Tie, suggestion: str) -> str:
    """What follows "is not a parameter of the model" for a tie's target: that it is a buffer
    (`bn.running_mean`, a `constant`); else `suggestion` (a did-you-mean), where there is one; else
    that its module has no such parameter (a Linear written with `bias: false`), where that module
    exists."""
    if tie.target in dict(module.named_buffers(remove_duplicate=False)):
        return ": it is a buffer (a constant or a running statistic), and only parameters are tied"
    parent, _, leaf = tie.target.rpartition(".")
    if suggestion or not parent:
        return suggestion
    try:
        owner = module.get_submodule(parent)
    except AttributeError:
        return ""
    names = [name for name, _ in owner.named_parameters(recurse=False)]
    return f": {parent!r} has no parameter {leaf!r} (its parameters: {', '.join(names) or 'none'})"


def _tie_cycles(ties: list[Tie]) -> dict[str, list[str]]:
    """The cycles of ties (`a.weight -> b.weight -> a.weight`: each tied to the next, so none owns
    the tensor), by the path of the tie that closes each: its last in graph order (one error per
    cycle), mapped to the cycle's paths from it round to it. A chain (`c -> b -> a`, `a` untied) is
    no cycle: `a` owns the tensor."""
    target_of = {tie.path: tie.target for tie in ties}
    order = {tie.path: index for index, tie in enumerate(ties)}
    cycles: dict[str, list[str]] = {}
    for tie in ties:
        cycle, path = [tie.path], tie.target
        while path in target_of and path not in cycle:
            cycle.append(path)
            path = target_of[path]
        if path == tie.path and max(order[member] for member in cycle) == order[tie.path]:
            cycles[tie.path] = [*cycle, tie.path]
    return cycles


def build_owned(node: Node) -> Any:
    """What a layer or skip node owns, freshly built and initialised (a module, an nn.Parameter or
    a buffer tensor)."""
    if isinstance(node, LayerNode):
        return node.layer.build(node.meta["args"])
    assert isinstance(node, SkipNode), node
    return projection_module(node.meta["projection"])


def owned_units(graph: Graph) -> Iterator[tuple[str, Node]]:
    """(qualified attribute name, node) of every layer and skip that owns something, block
    instances included, in the order `lower` builds them: the order their initialisation draws
    from the random number generator, so replaying it reproduces a seeded build (see
    `model.materialize`)."""
    for node in graph.nodes.values():
        if isinstance(node, BlockNode):
            for instance in node.instances:
                yield from owned_units(instance)
        elif owns(node) is not Owns.nothing:
            yield graph.qualname + node.name, node


def projection_module(plan: ProjectionPlan) -> nn.Sequential:
    """The parameterised part of a projection, as torchvision-style `nn.Sequential`."""
    modules = []
    for step in plan.module_steps:
        name, kwargs = step_constructor(step)
        modules.append(getattr(nn, name)(**kwargs))
    return _sequential(modules)


@functools.lru_cache(maxsize=4096)
def _generated_class(name: str, source: str, base: type[GeneratedModule]) -> type[GeneratedModule]:
    """The class for one generated forward; instances with the same code share it."""
    digest = hashlib.sha1(source.encode()).hexdigest()[:10]
    filename = f"<resgraph-generated {name} {digest}>"
    # Register the source so tracebacks and inspect.getsource show the generated lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    namespace: dict[str, Any] = {"torch": torch}
    for helper in helpers_used(source):  # functions the forward calls (codegen.HELPERS)
        exec(compile(HELPERS[helper], f"<resgraph helper {helper}>", "exec"), namespace)
    # One function at a time (a long forward comes in parts: see codegen.MAX_STATEMENTS), each
    # at its own lines of the source, so the compiler's memory stays that of one part.
    methods: dict[str, Any] = {"code": source, "__module__": "resgraph.generated"}
    for function_name, first_line, text in functions_of(source):
        code = _moved_down(compile(text, filename, "exec"), first_line)  # source holds only validated names
        exec(code, namespace)
        function = methods[function_name] = namespace.pop(function_name)
        function.__qualname__ = f"{name}.{function_name}"
    return type(name, (base,), methods)


def _moved_down(code: CodeType, lines: int) -> CodeType:
    """`code`, and the code nested in it, as if its text had started `lines` lines further down:
    equal to compiling the text after `lines` blank lines (line tables count from
    `co_firstlineno`), without the compiler reading them (a 100,000-layer chain's 150 parts sit
    after 11 million lines in all, a fifth of their compile time)."""
    consts = tuple(_moved_down(const, lines) if isinstance(const, CodeType) else const for const in code.co_consts)
    return code.replace(co_firstlineno=code.co_firstlineno + lines, co_consts=consts)


@contextlib.contextmanager
def seeded(seed: int | None) -> Iterator[None]:
    """Draw from a CPU generator seeded with `seed` inside the block, leaving the global one as it
    was; with None, draw from the global generator."""
    if seed is None:
        yield
        return
    if isinstance(seed, bool) or not isinstance(seed, int) or not -(2**63) <= seed < 2**64:
        raise UsageError(f"seed {seed!r} is not usable: a seed is a whole number from -2**63 to 2**64 - 1")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def require_weights(module: nn.Module, action: str) -> None:
    """Refuse to `action` (save, export to ONNX) a model built on the meta device: it has no weights.

    Raises:
        UsageError: naming a tensor that holds no data, and the ways on.
    """
    meta = next((key for key, tensor in module.state_dict().items() if tensor.is_meta), None)
    if meta is not None:
        raise UsageError(f"{type(module).__name__} was built with device='meta' and has no weights to {action} "
                         f"({meta} holds no data): resgraph.materialize it first, or write its code (.py)")
