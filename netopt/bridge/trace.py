"""torch -> IR: `trace(model, example_input)` returns a `Traced`.

The model is traced symbolically with torch.fx, run once on the example input to record
every tensor's shape, and converted node by node with the tables in convert.py. The IR's own
shape inference is then checked against the recorded shapes, so a network the IR describes
wrongly is refused at trace time rather than mis-pruned later.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge.convert import FUNCTIONS, METHODS, MODULES, Converted
from netopt.bridge.count import counting_macs
from netopt.errors import IRError, TraceError, UnsupportedOpError, first_line
from netopt.ir import INPUT, Network, Node, OpKind
from netopt.ir.ops import OpaqueAttrs

if TYPE_CHECKING:
    from netopt.bridge.select import FilterSelector

__all__ = ["Traced", "trace"]

Opaque = str | type[nn.Module]


@dataclass(frozen=True)
class Traced:
    """A torch model and its IR: `network` at full width, bound to `module`'s weights.

    `binding` maps IR node names to the qualified names of the submodules that hold their
    parameters. Materializing reads the module's weights as they are at that moment.
    """

    network: Network
    module: nn.Module
    binding: Mapping[str, str]
    example_shape: tuple[int, ...]
    opaque: Mapping[str, nn.Module] = field(default_factory=dict)

    def materialize(self, network: Network | None = None, selector: FilterSelector | None = None) -> fx.GraphModule:
        """A physically smaller torch module for `network`, keeping the selected filters."""
        from netopt.bridge.materialize import materialize

        return materialize(self, network if network is not None else self.network, selector)

    def example_input(self) -> torch.Tensor:
        """A random tensor of the example input's shape (for export and measurement)."""
        return torch.randn(self.example_shape)


class _Tracer(fx.Tracer):
    def __init__(self, opaque: tuple[Opaque, ...]) -> None:
        super().__init__()
        self.opaque = opaque

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, M.OPS_MODULES) or _is_opaque(m, module_qualified_name, self.opaque):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_opaque(m: nn.Module, qualname: str, opaque: tuple[Opaque, ...]) -> bool:
    return any(o == qualname if isinstance(o, str) else isinstance(m, o) for o in opaque)


def trace(
    model: nn.Module, example_input: torch.Tensor, *, opaque: Iterable[Opaque] = (), step: int = 8
) -> Traced:
    """Trace `model` into the IR.

    `opaque` names submodules (qualified names or classes) to keep whole, at full width: use it
    for blocks the IR cannot model. `step` is the channel grid of every group (default 8).
    """
    shape = _check_input(example_input)
    leaves = tuple(opaque)
    gm = _symbolic_trace(model, leaves)
    _propagate_shapes(model, gm, example_input, leaves)
    converter = _Converter(gm, leaves)
    for node in gm.graph.nodes:
        converter.visit(node)
    network = converter.network(shape[1:], step)
    _check_shapes(network, gm, converter.names)
    return Traced(network, model, converter.binding, shape, converter.opaque_modules)


def _check_input(x: Any) -> tuple[int, ...]:
    if not isinstance(x, torch.Tensor):
        raise TraceError(
            f"example_input must be a torch.Tensor, got {type(x).__name__}; "
            "pass a batch like torch.randn(1, 3, 224, 224)"
        )
    if x.dim() not in (2, 4) or not x.is_floating_point():
        raise TraceError(
            f"example_input has shape {tuple(x.shape)} and dtype {x.dtype}; netopt needs a float "
            "batch of images (N, C, H, W) or of vectors (N, F), e.g. torch.randn(1, 3, 224, 224)"
        )
    return tuple(x.shape)


def _symbolic_trace(model: nn.Module, opaque: tuple[Opaque, ...]) -> fx.GraphModule:
    tracer = _Tracer(opaque)
    try:
        graph = tracer.trace(model)
    except Exception as exc:
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {exc}. Control flow that depends "
            "on tensor values cannot be traced; pass the submodule that does it in opaque=[...]"
        ) from exc
    return fx.GraphModule(tracer.root, graph, type(model).__name__)


SHAPE = "netopt_shape"
"""fx node meta key: the shape of the tensor the node produced on the example input."""
MULTI = "netopt_multi"
"""fx node meta key: the node returned several tensors (chunk, split, ...)."""
MACS = "netopt_macs"
"""fx node meta key: CONV/FC MACs per sample measured inside an opaque block."""


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once, recording each tensor's shape; names the node that fails."""

    def __init__(self, gm: fx.GraphModule, model_name: str, x: torch.Tensor, opaque: tuple[Opaque, ...]) -> None:
        super().__init__(gm)
        self.where = f"running {model_name} on the example input of shape {tuple(x.shape)}"
        self.batch = x.shape[0]
        self.opaque = opaque

    def run_node(self, n: fx.Node) -> Any:
        try:
            result = self._run_counting(n) if self._is_opaque(n) else super().run_node(n)
        except Exception as exc:
            raise TraceError(
                f"{self.where} failed at node {n.name!r}: {first_line(exc)}. "
                "Pass an input the model accepts (right channels, size and dtype)"
            ) from exc
        if isinstance(result, torch.Tensor):
            n.meta[SHAPE] = tuple(result.shape)
        elif isinstance(result, tuple | list) and any(isinstance(r, torch.Tensor) for r in result):
            n.meta[MULTI] = True
        return result

    def _is_opaque(self, n: fx.Node) -> bool:
        if n.op != "call_module":
            return False
        return _is_opaque(self.module.get_submodule(str(n.target)), str(n.target), self.opaque)

    def _run_counting(self, n: fx.Node) -> Any:
        with counting_macs(self.module.get_submodule(str(n.target)), self.batch) as total:
            result = super().run_node(n)
        n.meta[MACS] = total()
        return result


def _propagate_shapes(model: nn.Module, gm: fx.GraphModule, x: torch.Tensor, opaque: tuple[Opaque, ...]) -> None:
    was_training = model.training
    gm.eval()
    try:
        with torch.no_grad():
            _ShapeRecorder(gm, type(model).__name__, x, opaque).run(x)
    finally:
        gm.train(was_training)


class _Converter:
    """Walks the fx graph, producing IR nodes and the binding to the module's parameters."""

    def __init__(self, gm: fx.GraphModule, opaque: tuple[Opaque, ...]) -> None:
        self.gm = gm
        self.opaque = opaque
        self.names: dict[fx.Node, str] = {}
        self.nodes: list[Node] = []
        self.outputs: list[str] = []
        self.binding: dict[str, str] = {}
        self.opaque_modules: dict[str, nn.Module] = {}
        self.calls = Counter(n.target for n in gm.graph.nodes if n.op == "call_module")
        self.inputs_seen = 0

    def visit(self, node: fx.Node) -> None:
        if node.op == "placeholder":
            self._placeholder(node)
        elif node.op == "output":
            self._output(node)
        elif node.op == "get_attr":
            raise UnsupportedOpError(
                f"node {node.name!r} reads the tensor {node.target!r} directly, which the IR "
                "cannot shrink; move that computation into a submodule and pass it in opaque=[...]"
            )
        elif SHAPE in node.meta or MULTI in node.meta:
            self._tensor_op(node)
        # other nodes compute Python values (x.size(0), ...) that only feed reshapes

    def _placeholder(self, node: fx.Node) -> None:
        self.inputs_seen += 1
        if self.inputs_seen > 1:
            raise UnsupportedOpError(
                f"the model takes more than one input ({node.name!r}); netopt adapts "
                "single-input networks: wrap the model so that it takes one tensor"
            )
        self.names[node] = INPUT

    def _output(self, node: fx.Node) -> None:
        value = node.args[0]
        values = value if isinstance(value, tuple | list) else (value,)
        for v in values:
            if not isinstance(v, fx.Node) or v not in self.names:
                raise UnsupportedOpError(
                    f"the model returns {type(v).__name__} values that are not traced tensors; "
                    "return a tensor (or a tuple of tensors)"
                )
            self.outputs.append(self.names[v])

    def _tensor_op(self, node: fx.Node) -> None:
        kind, attrs, inputs = self._convert(node)
        missing = [i for i in inputs if not isinstance(i, fx.Node) or i not in self.names]
        if missing:
            raise UnsupportedOpError(
                f"node {node.name!r} ({kind.value}) reads {missing}, which are not traced "
                "tensors of this model; mark the enclosing submodule opaque"
            )
        name = self._name(node)
        self.names[node] = name
        self.nodes.append(Node(name, kind, tuple(self.names[i] for i in inputs), attrs))

    def _convert(self, node: fx.Node) -> Converted:
        if node.op == "call_module":
            return self._module(node)
        table: Mapping[Any, Any] = FUNCTIONS if node.op == "call_function" else METHODS
        converter = table.get(node.target)
        if converter is None:
            what = getattr(node.target, "__name__", str(node.target))
            raise UnsupportedOpError(
                f"node {node.name!r} calls {what!r}, an operation the IR does not model; "
                "mark the submodule that calls it as opaque (trace(..., opaque=['path.to.block']))"
                " to keep it at full width"
            )
        return converter(node)  # type: ignore[no-any-return]

    def _module(self, node: fx.Node) -> Converted:
        target = str(node.target)
        module = self.gm.get_submodule(target)
        if _is_opaque(module, target, self.opaque):
            return self._opaque(node, target, module)
        converter = MODULES.get(type(module))
        if converter is None:
            raise UnsupportedOpError(
                f"node {node.name!r} calls {target!r}, a {type(module).__name__}, which the IR "
                f"does not model; pass opaque=[{target!r}] to keep it whole at full width"
            )
        if self.calls[target] > 1 and any(True for _ in module.parameters()):
            raise UnsupportedOpError(
                f"module {target!r} ({type(module).__name__}) is called {self.calls[target]} times: "
                "shared weights cannot be pruned per call; mark it opaque or unshare it"
            )
        kind, attrs, inputs = converter(node, module)
        if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers()):
            self.binding[self._name(node)] = target
        return kind, attrs, inputs

    def _opaque(self, node: fx.Node, target: str, module: nn.Module) -> Converted:
        out = node.meta[SHAPE]
        attrs = OpaqueAttrs(
            module_type=type(module).__qualname__, out_shape=tuple(out[1:]),
            params=sum(p.numel() for p in module.parameters()), macs=int(node.meta.get(MACS, 0)),
        )
        self.opaque_modules[self._name(node)] = module
        self.binding[self._name(node)] = target
        inputs = tuple(a for a in node.args if isinstance(a, fx.Node))
        return OpKind.OPAQUE, attrs, inputs

    def _name(self, node: fx.Node) -> str:
        """The module's qualified name when it is called once, else the fx node's name."""
        if node.op == "call_module" and self.calls[node.target] == 1:
            return str(node.target)
        return node.name if node.name != INPUT else f"{INPUT}_"

    def network(self, input_shape: tuple[int, ...], step: int) -> Network:
        names = Counter(n.name for n in self.nodes)
        clash = [n for n, c in names.items() if c > 1]
        if clash:
            raise TraceError(f"node names {clash} clash after tracing; rename the submodules")
        try:
            return Network(tuple(self.nodes), input_shape, tuple(self.outputs), step=step)
        except IRError as exc:
            raise TraceError(f"the traced model is not a valid network: {exc}") from exc


def _check_shapes(network: Network, gm: fx.GraphModule, names: Mapping[fx.Node, str]) -> None:
    """The IR's inferred shapes must equal the shapes torch produced on the example input."""
    try:
        inferred = network.shapes
    except IRError as exc:
        raise TraceError(f"the traced model breaks an IR rule: {exc}") from exc
    for fx_node, name in names.items():
        if name == INPUT:
            continue
        actual = tuple(fx_node.meta[SHAPE][1:])
        if inferred[name] != actual:
            raise TraceError(
                f"node {name!r}: the IR infers shape {inferred[name]} but torch produced {actual}; "
                "the op has semantics the IR does not model: mark its submodule opaque"
            )
