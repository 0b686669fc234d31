"""torch -> IR: `trace(model, example_input)` returns a `Traced`.

The model is traced with torch.fx, in eval mode, by a tracer whose proxies carry the value
each op produced on the example input. So Python that reads shapes (`x.shape[-2:]`,
`x.size(1)`: timm's 'same' padding, `view(b, -1, h, w)`, `interpolate(size=y.shape[-2:])`)
sees real ints and is specialized to the example's size, the way the IR is anyway (its
shapes are those of one input size). Every Python value computed from shapes, dtypes and
devices (`x.numel() != 0`, `x.device.type`, `x.to(x.dtype)`) is concrete too, so tensors made
from them (`torch.arange(h)`) are constants; a forward's parameters after the input take their
defaults; a detection head fx cannot follow is routed by parts (heads.py, Ultralytics' Detect).
Why not `torch.export`: it flattens the model into aten ops, losing the module boundaries
that bind IR nodes to parameters by their qualified names, the leaf modules that name an op
by what it is (a BatchNorm, a DropPath), and `opaque=[...]`. Control flow on tensor *values*
(`if x.max().item() > 0`) still cannot be traced and is refused with the node's name.

The fx graph is then converted node by node with the tables in convert.py, and the IR's own
shape inference is checked against the recorded shapes, so a network the IR describes wrongly
is refused at trace time rather than mis-pruned later.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge import tokens
from netopt.bridge.concrete import DATA, one_input_and_defaults, plain, read_off_metadata, reads_data, value_kind
from netopt.bridge.convert import (
    CHANNELS_LAST,
    DTYPE,
    METHODS,
    PIECES,
    SHAPE,
    SHAPES,
    SHUFFLE,
    SUMMED,
    Converted,
    function_converter,
    leaf_converter,
    param_path,
    pieces,
    shuffle_stage,
    sum_stage,
)
from netopt.bridge.count import counting_macs
from netopt.bridge.heads import STAND_INS, router
from netopt.bridge.traced import Traced
from netopt.errors import IRError, NetoptError, TraceError, UnsupportedOpError, first_line
from netopt.ir import INPUT, Network, Node, OpKind
from netopt.ir import params as netopt_params
from netopt.ir.ops import OpaqueAttrs

__all__ = ["OpaqueWarning", "Traced", "trace"]  # Traced is defined in traced.py

Opaque = str | type[nn.Module]


VALUE = "netopt_value"
"""Attribute of a proxy: what its op produced on the example input."""


def _value(a: Any) -> Any:
    """What `a` holds on the example input; an attribute of a proxy (`x.dtype`, `x.device`) is
    read off its owner's value, since fx makes its node only when something records it."""
    if isinstance(a, fx.proxy.Attribute):
        return getattr(_value(a.root), a.attr)
    return a.__dict__[VALUE] if isinstance(a, fx.Proxy) else a


class _ConcreteProxy(fx.Proxy):
    """A proxy that answers shape questions with the example input's real shapes."""

    @property
    def shape(self) -> Any:
        return _value(self).shape

    def size(self, dim: int | None = None) -> Any:
        value = _value(self)
        return value.size() if dim is None else value.size(dim)

    def dim(self) -> int:
        return int(_value(self).dim())

    @property
    def ndim(self) -> int:
        return self.dim()

    def __len__(self) -> int:
        return len(_value(self))

    def __getattr__(self, k: str) -> Any:
        """`x.dtype`, `x.device`, `x.is_cuda`: the example's Python values, so that code may branch on
        them (`if x.device.type != "meta"`); methods and tensors stay proxies."""
        held = getattr(self.__dict__[VALUE], k, None) if VALUE in self.__dict__ else None
        return held if held is not None and plain(held) else super().__getattr__(k)

    def __setitem__(self, index: Any, value: Any) -> None:
        """`x[...] = v` on a traced tensor: refused, naming the module whose forward does it."""
        where = [path for path in getattr(self.tracer, "module_stack", {}) if path]
        raise UnsupportedOpError(
            f"the model assigns into a tensor in place ({self.node.name}[...] = ...), which the IR does not "
            f"model; pass opaque=[{(where or [''])[-1]!r}] to keep the module that does it whole"
        )

    def __iter__(self) -> Any:
        value = _value(self)
        if isinstance(value, tuple | list):  # chunk/split results: one getitem per piece
            return iter([operator.getitem(self, i) for i in range(len(value))])
        return super().__iter__()


class _Tracer(fx.Tracer):
    """fx tracing with every op also run on the example input (see the module docstring)."""

    def __init__(self, opaque: tuple[Opaque, ...], example: torch.Tensor) -> None:
        super().__init__()
        self.opaque = opaque
        self.example = example
        self.stand_ins: dict[str, nn.Module] = {}
        self.fed: dict[str, bool] = {}  # module path: whether a call of it took a traced tensor

    def create_args_for_root(self, root_fn: Callable[..., Any], is_module: bool,
                             concrete_args: dict[str, Any] | tuple[Any, ...] | None = None) -> tuple[Any, list[Any]]:
        """A `forward(self, x, *args, **kwargs)` (Ultralytics) or `forward(self, x, mask=None,
        is_causal=False)` (timm's ViT) is traced as `forward(self, x)`: fx would make the other
        parameters proxies (`*args` cannot be unpacked, a flag would be a tensor), and netopt
        passes one input, so they take their defaults."""
        if is_module and one_input_and_defaults(inspect.unwrap(root_fn)):
            inner = root_fn

            def forward(self: nn.Module, x: Any) -> Any:
                return inner(self, x)
            root_fn = forward
        return super().create_args_for_root(root_fn, is_module, concrete_args)

    def call_module(self, m: nn.Module, forward: Callable[..., Any], args: tuple[Any, ...],
                    kwargs: dict[str, Any]) -> Any:
        path, route = self.path_of_module(m), router(m)
        found: list[bool] = []
        fx.node.map_aggregate((args, kwargs), lambda a: found.append(isinstance(a, fx.Proxy)))
        self.fed[path] = self.fed.get(path, False) or any(found)
        if route is None or _is_opaque(m, path, self.opaque):
            return super().call_module(m, forward, args, kwargs)
        return route(self, m, args)  # a head traced by its parts (heads.py)

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any | None = None) -> fx.Node:
        """Also the shape of a constant tensor fx keeps on the root (`torch.arange(n)` of a concrete n,
        used by a traced op): a converter reads it like a parameter's."""
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "get_attr":
            with _untraced():
                value = _get_attr(self.root, str(target))
            if isinstance(value, torch.Tensor):
                node.meta[SHAPE] = tuple(value.shape)
        return node

    def call_stand_in(self, target: str, stand_in: nn.Module, args: tuple[Any, ...]) -> Any:
        """A node that calls `stand_in` in place of the submodule at `target`, kept whole (opaque)."""
        self.stand_ins[target] = stand_in
        proxy = self.create_proxy("call_module", target, args, {})
        proxy.node.meta[STAND_IN] = stand_in
        return proxy

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, M.OPS_MODULES) or leaf_converter(m) is not None:
            return True
        if _is_opaque(m, module_qualified_name, self.opaque):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _ConcreteProxy(node, self)

    def create_proxy(self, kind: str, target: Any, args: Any, kwargs: Any, name: str | None = None,
                     type_expr: Any | None = None, proxy_factory_fn: Any = None) -> Any:
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        value = self._run(proxy.node, kind, target, args, kwargs)
        if reads_data(proxy.node, kind, target):
            proxy.node.meta[DATA] = True  # x.max().item() and what follows from it: never specialized
        elif read_off_metadata(kind, target, value):  # x.numel(), a.dtype == b.dtype: a constant, not a node
            self.graph.erase_node(proxy.node)
            return value
        object.__setattr__(proxy, VALUE, value)
        if isinstance(value, torch.Tensor):
            proxy.node.meta[SHAPE] = tuple(value.shape)
            proxy.node.meta[DTYPE] = value.dtype
        elif isinstance(value, tuple | list) and any(isinstance(v, torch.Tensor) for v in value):
            proxy.node.meta[MULTI] = True
            proxy.node.meta[SHAPES] = tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else () for v in value)
        return proxy

    def _run(self, node: fx.Node, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        if kind == "placeholder" and sum(n.op == "placeholder" for n in self.graph.nodes) > 1:
            raise UnsupportedOpError(
                f"the model takes more than one input ({node.name!r}); netopt adapts single-input networks: "
                "wrap the model so that it takes one tensor (or give the other parameters defaults)"
            )
        args, kwargs = fx.node.map_aggregate(args, _value), fx.node.map_aggregate(kwargs, _value)
        with _untraced():
            return self._run_untraced(node, kind, target, args, kwargs)

    def _run_untraced(self, node: fx.Node, kind: str, target: Any, args: Any, kwargs: Any) -> Any:
        try:
            if kind == "placeholder":
                return self.example
            if kind == "get_attr":
                return _get_attr(self.root, str(target))
            if kind == "call_function":
                return target(*args, **kwargs)
            if kind == "call_method":
                return getattr(args[0], target)(*args[1:], **kwargs)
            if kind == "call_module":
                return self._run_module(node, str(target), args, kwargs)
        except Exception as exc:
            what = getattr(target, "__name__", str(target))
            raise TraceError(
                f"running the model on the example input of shape {tuple(self.example.shape)} failed "
                f"at node {node.name!r} ({what}): {first_line(exc)}. Pass an input the model accepts "
                "(right channels, size and dtype)"
            ) from exc
        return None

    def _run_module(self, node: fx.Node, target: str, args: Any, kwargs: Any) -> Any:
        module = self.stand_ins.get(target) or self.root.get_submodule(target)
        if target not in self.stand_ins and not _is_opaque(module, target, self.opaque):
            return module(*args, **kwargs)
        with counting_macs(module, self.example.shape[0]) as total:
            result = module(*args, **kwargs)
        node.meta[MACS] = total()
        return result


def _untraced() -> Any:
    """While fx traces, `nn.Module.__call__` and wrapped functions are patched to record
    nodes; running an op for its value must call the originals. fx has this as a private
    helper only (torch is pinned, and a test traces through it on every run)."""
    from torch.fx._symbolic_trace import _maybe_revert_all_patches

    return _maybe_revert_all_patches()


def _get_attr(root: nn.Module, path: str) -> Any:
    value: Any = root
    for atom in path.split("."):
        value = getattr(value, atom)
    return value


def _is_opaque(m: nn.Module, qualname: str, opaque: tuple[Opaque, ...]) -> bool:
    """Named in opaque=[...], or a routed head's decoder in a network netopt built (traced again)."""
    return isinstance(m, STAND_INS) or any(o == qualname if isinstance(o, str) else isinstance(m, o) for o in opaque)


def trace(
    model: nn.Module, example_input: torch.Tensor, *, opaque: Iterable[Opaque] = (), step: int = 8
) -> Traced:
    """Trace `model` into the IR, specialized to `example_input`'s shape; the start of every adaptation.

    `opaque` names submodules (qualified names or classes) to keep whole, at full width: use it
    for blocks the IR cannot model. `step` is the channel grid of every group (default 8).

    >>> import torch, netopt
    >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.BatchNorm2d(16), torch.nn.ReLU(),
    ...                             torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(16, 10))
    >>> traced = netopt.trace(model.eval(), torch.randn(1, 3, 32, 32))
    >>> [(group.id, group.width) for group in traced.network.groups]
    [('0', 16)]
    >>> smaller = traced.materialize(traced.network.with_widths({"0": 8}))
    >>> smaller(torch.randn(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    >>> smaller.get_submodule("0")
    Conv2d(3, 8, kernel_size=(3, 3), stride=(1, 1))
    """
    if not isinstance(model, nn.Module):
        raise TraceError(f"model must be a torch.nn.Module, got {type(model).__name__}; wrap a function in a "
                         "Module whose forward calls it")
    shape = _check_input(example_input)
    leaves = tuple(opaque)
    _check_opaque(model, leaves)
    gm = _symbolic_trace(model, example_input, leaves)
    converter = _Converter(gm, model, leaves)
    for node in gm.graph.nodes:
        converter.visit(node)
    network = converter.network(shape[1:], step)
    _check_shapes(network, gm, converter.names)
    _warn_opaque_share(network, routed={n for n, m in converter.opaque_modules.items() if isinstance(m, STAND_INS)})
    return Traced(network, model, converter.binding, shape, converter.opaque_modules)


class OpaqueWarning(UserWarning):
    """Part of the model is kept whole: its parameters can never shrink."""


def _warn_opaque_share(network: Network, routed: set[str]) -> None:
    """Warn of the opaque blocks, but for a routed head's decoder (nothing around it could shrink)."""
    opaque = [n for n in network.nodes if n.op is OpKind.OPAQUE and n.name not in routed]
    if not opaque:
        return
    held = sum(n.attrs.params for n in opaque)
    total = max(1, netopt_params(network))
    warnings.warn(
        f"{len(opaque)} opaque block(s) ({', '.join(n.name for n in opaque[:5])}{', ...' if len(opaque) > 5 else ''}) "
        f"hold {held:,} of the model's {total:,} parameters ({held / total:.0%}): they and the channels "
        "around them stay at full width",
        OpaqueWarning, stacklevel=3,
    )


def _check_opaque(model: nn.Module, opaque: tuple[Opaque, ...]) -> None:
    """Every opaque=[...] entry must name a submodule (or a module class) of the model."""
    names = {name for name, _ in model.named_modules()}
    unknown = [o for o in opaque if not (isinstance(o, type) and issubclass(o, nn.Module)) and o not in names]
    if unknown:
        near = sorted(n for n in names if n and any(str(u).split(".")[0] in n for u in unknown))[:5]
        raise TraceError(f"opaque={unknown!r} names no submodule of {type(model).__name__}; give qualified names "
                         f"from model.named_modules() (e.g. {near or sorted(n for n in names if n)[:3]}) or classes")


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


def _symbolic_trace(model: nn.Module, x: torch.Tensor, opaque: tuple[Opaque, ...]) -> fx.GraphModule:
    tracer = _Tracer(opaque, x)
    was_training = model.training
    model.eval()  # what is traced is inference: dropout, drop-path and BN are leaves, not branches
    try:
        with torch.no_grad():
            graph = tracer.trace(model)
    except NetoptError:
        raise
    except Exception as exc:
        raise TraceError(
            f"torch.fx could not trace {type(model).__name__}: {first_line(exc)}. Control flow that "
            "depends on tensor values cannot be traced; pass the submodule that does it in opaque=[...]"
        ) from exc
    finally:
        model.train(was_training)
    gm = fx.GraphModule(tracer.root, graph, type(model).__name__)
    gm.meta[FED] = tracer.fed
    return gm


MULTI = "netopt_multi"
"""fx node meta key: the node returned several tensors (chunk, split, ...)."""
MACS = "netopt_macs"
"""fx node meta key: CONV/FC MACs per sample measured inside an opaque block."""
STAND_IN = "netopt_stand_in"
"""fx node meta key: the module a routed head's node calls in place of its target (heads.py)."""
FED = "netopt_fed"
"""GraphModule meta key: which module paths were called with a traced tensor."""


class _Converter:
    """Walks the fx graph, producing IR nodes and the binding to the module's parameters."""

    def __init__(self, gm: fx.GraphModule, root: nn.Module, opaque: tuple[Opaque, ...]) -> None:
        self.gm = gm
        self.root = root
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
        elif node.op == "get_attr" or param_path(node) is not None:
            return  # a parameter: the op that reads it decides (batch_norm, conv2d, layer scale, ...)
        elif (stage := shuffle_stage(node)) is not None:
            node.meta[SHUFFLE] = stage  # the view and transpose of a channel shuffle: converted at its end
        elif (summed := sum_stage(node)) is not None:
            node.meta[SUMMED] = summed  # torch.stack(xs) before .sum(0), or a partial sum(xs): one ADD at its end
        elif (step := tokens.stage(node)) is not None:
            node.meta[tokens.STAGE] = step  # a step of attention or of a token layout (tokens.py)
        elif MULTI in node.meta and (bounds := pieces(node)) is not None:
            node.meta[PIECES] = bounds  # split/chunk: each getitem of it becomes a slice
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
        params = [p for i in inputs if (p := param_path(i)) is not None]
        if params and params[0].startswith("_tensor_constant"):  # fx's name for a tensor made in forward
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) reads {params[0]!r}, a constant tensor made in forward (from "
                f"torch.arange, zeros, ...), which the IR has no input for; {self._keep_whole(node)}"
            )
        if params:
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) reads the tensor {params[0]!r} directly, which the IR "
                f"cannot shrink; pass opaque=[{_enclosing(node)!r}] to keep the module that does it whole"
            )
        missing = [i for i in inputs if not isinstance(i, fx.Node) or i not in self.names]
        if missing:
            raise UnsupportedOpError(
                f"node {node.name!r} ({kind.value}) reads {missing}, which are not traced "
                f"tensors of this model; pass opaque=[{_enclosing(node)!r}] to keep it whole"
            )
        self._follow_layout(node, kind, inputs)
        name = self._name(node)
        self.names[node] = name
        self.nodes.append(Node(name, kind, tuple(self.names[i] for i in inputs), attrs))
        if node.op != "call_module" and kind in BOUND:
            self.binding[name] = self._bound(node, kind)
        if tokens.BOUND_TO in node.meta:  # an attention's relative position bias
            self.binding[name] = node.meta[tokens.BOUND_TO]

    def _bound(self, node: fx.Node, kind: OpKind) -> str:
        """The module holding a functional op's weights (SCALE: the parameter), checked."""
        paths = [p for a in (*node.args, *node.kwargs.values()) if (p := param_path(a)) is not None]
        if kind is OpKind.SCALE:
            return self._scale_parameter(node, paths[0])
        if kind in (OpKind.CLASS_TOKEN, OpKind.POS_EMBED):
            return tokens.bound_parameter(node)
        owner_path = paths[0].rpartition(".")[0]
        owner = self.root.get_submodule(owner_path)
        need = BOUND[kind]
        if need is not None and not isinstance(owner, need):
            raise UnsupportedOpError(
                f"node {node.name!r} ({kind.value}) reads the weights of {owner_path!r}, a {type(owner).__name__}; "
                f"netopt slices such weights only from a {' or '.join(t.__name__ for t in need)}: "
                f"pass opaque=[{owner_path!r}]"
            )
        groups = _arg_groups(node)
        if kind is OpKind.CONV2D and isinstance(owner, nn.Conv2d) and groups != owner.groups:
            raise UnsupportedOpError(
                f"node {node.name!r} calls conv2d with groups={groups} on {owner_path!r} of groups={owner.groups}; "
                f"pass opaque=[{owner_path!r}]"
            )
        return owner_path

    def _keep_whole(self, node: fx.Node) -> str:
        """The fix for a constant input: keep whole the innermost module around `node` (not the one
        it calls) that takes a traced tensor, so that the block has an input in the IR."""
        stack = node.meta.get("nn_module_stack") or {}
        fed = self.gm.meta.get(FED, {})
        paths = [v[0] for v in stack.values() if v and v[0] and v[0] != node.target and fed.get(v[0])]
        if paths:
            return f"pass opaque=[{paths[-1]!r}] to keep the module that makes and uses it whole"
        return ("no submodule around it takes the model's tensors: move the code that makes and uses it into "
                "one module that does, and pass that module in opaque=[...]")

    def _scale_parameter(self, node: fx.Node, path: str) -> str:
        """A per-channel multiplier netopt slices must be a parameter (a buffer or a constant made in
        forward, `x * torch.ones(1, C, 1, 1)`, is not one the materialized layer can hold)."""
        if not isinstance(_get_attr(self.root, path), nn.Parameter):
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) multiplies by {path!r}, a tensor that is no parameter (a buffer, "
                f"or a constant made in forward); netopt scales channels by parameters only: pass "
                f"opaque=[{_enclosing(node)!r}] to keep the module that does it whole"
            )
        return path

    def _follow_layout(self, node: fx.Node, kind: OpKind, inputs: tuple[fx.Node, ...]) -> None:
        """Propagate channels-last through the ops that mean the same in NCHW; refuse the rest."""
        tokens.check_heads(node, kind, inputs)
        if CHANNELS_LAST in node.meta:
            return  # a permute decided
        last = [bool(i.meta.get(CHANNELS_LAST)) for i in inputs]
        if not any(last):
            return
        if not all(last) or kind not in CHANNELS_LAST_OK:
            raise UnsupportedOpError(
                f"node {node.name!r} ({_what(node)}) works on a channels-last tensor (after permute(0, 2, 3, 1)); "
                f"netopt models only {sorted(k.value for k in CHANNELS_LAST_OK)} there: pass "
                f"opaque=[{_enclosing(node)!r}] to keep the block whole"
            )
        node.meta[CHANNELS_LAST] = True

    def _convert(self, node: fx.Node) -> Converted:
        try:
            return self._convert_once(node)
        except UnsupportedOpError as exc:
            if "opaque=[" in str(exc):
                raise
            where = _enclosing(node)
            raise UnsupportedOpError(
                f"{exc}: pass opaque=[{where!r}] to keep the module that does it whole at full width"
            ) from exc

    def _convert_once(self, node: fx.Node) -> Converted:
        if node.op == "call_module":
            return self._module(node)
        if (found := tokens.convert(node)) is not None:
            return found
        converter = function_converter(node.target) if node.op == "call_function" else METHODS.get(str(node.target))
        converter = converter or tokens.FUNCTIONS.get(node.target) or tokens.METHODS.get(str(node.target))
        if converter is None:
            what = getattr(node.target, "__name__", str(node.target))
            raise UnsupportedOpError(
                f"node {node.name!r} calls {what!r}, an operation the IR does not model; pass "
                f"opaque=[{_enclosing(node)!r}] to keep the module that calls it whole at full width"
            )
        return converter(node)  # type: ignore[no-any-return]

    def _module(self, node: fx.Node) -> Converted:
        target = str(node.target)
        if STAND_IN in node.meta:
            return self._opaque(node, target, node.meta[STAND_IN])
        module = self.gm.get_submodule(target)
        if _is_opaque(module, target, self.opaque):
            return self._opaque(node, target, module)
        converter = leaf_converter(module)
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
        if any(True for _ in module.parameters()) or any(True for _ in module.buffers()):
            self.binding[self._name(node)] = target
        return kind, attrs, inputs

    def _opaque(self, node: fx.Node, target: str, module: nn.Module) -> Converted:
        if SHAPE not in node.meta:
            raise UnsupportedOpError(
                f"opaque block {target!r} ({type(module).__name__}) returns {value_kind(node)}, not one tensor; "
                "netopt keeps whole only a block that returns one tensor: take it out of opaque=[...] and name "
                "the submodules inside it that the IR cannot model"
            )
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
        """The module's qualified name when it is called once, else the fx node's name (with a '_'
        where it is the input's or an nn.Module attribute's, `to`: a built network's submodule may not shadow it)."""
        if STAND_IN in node.meta:  # beside its branches ('model.22.cv2...'), not above: a built network
            return f"{node.target}.decode"  # nests its submodules by name, and would put them inside the decoder
        if node.op == "call_module" and self.calls[node.target] == 1:
            return str(node.target)
        return f"{node.name}_" if node.name == INPUT or hasattr(nn.Module, node.name) else node.name

    def _live_nodes(self) -> list[Node]:
        """The nodes some output depends on: fx keeps results nothing reads (an unused piece of
        a split, a projection a model computes and drops); the network does not."""
        used = set(self.outputs)
        for node in reversed(self.nodes):
            if node.name in used:
                used.update(node.inputs)
        for name in [n for n in self.binding if n not in used]:
            del self.binding[name]
        self.opaque_modules = {k: v for k, v in self.opaque_modules.items() if k in used}
        return [n for n in self.nodes if n.name in used]

    def network(self, input_shape: tuple[int, ...], step: int) -> Network:
        self.nodes = self._live_nodes()
        names = Counter(n.name for n in self.nodes)
        clash = [n for n, c in names.items() if c > 1]
        if clash:
            raise TraceError(f"node names {clash} clash after tracing; rename the submodules")
        try:
            return Network(tuple(self.nodes), input_shape, tuple(self.outputs), step=step)
        except IRError as exc:
            raise TraceError(f"the traced model is not a valid network: {exc}") from exc


BOUND: dict[OpKind, tuple[type[nn.Module], ...] | None] = {
    OpKind.BATCHNORM: (nn.modules.batchnorm._BatchNorm,),
    OpKind.CONV2D: (nn.Conv2d, nn.Linear),  # a Linear over channels-last maps is a 1x1 conv
    OpKind.LINEAR: (nn.Linear,),
    OpKind.LAYERNORM: (nn.LayerNorm,),
    OpKind.SCALE: None,
    OpKind.GROUP_NORM: (nn.GroupNorm,),
    OpKind.CLASS_TOKEN: None,
    OpKind.POS_EMBED: None,
}
"""Functional ops that read parameters, bound to the module that holds them (SCALE: the
parameter itself), and the module type their weights are sliced from."""


def _arg_groups(node: fx.Node) -> int:
    return int(node.args[6]) if len(node.args) > 6 else int(node.kwargs.get("groups", 1))  # type: ignore[arg-type]

CHANNELS_LAST_OK = frozenset({
    OpKind.CONV2D, OpKind.LAYERNORM, OpKind.SCALE, OpKind.ADD, OpKind.MUL, OpKind.DROPOUT, OpKind.DROPPATH,
    OpKind.IDENTITY, OpKind.RELU, OpKind.RELU6, OpKind.GELU, OpKind.SILU, OpKind.HARDSWISH, OpKind.SIGMOID,
    OpKind.HARDSIGMOID, OpKind.SUB, OpKind.DIV, OpKind.NEG, OpKind.GRN, OpKind.SCALAR_AFFINE, OpKind.SLICE,
    OpKind.CONCAT, OpKind.NORMALIZE,
    OpKind.LINEAR, OpKind.CLASS_TOKEN, OpKind.POS_EMBED, OpKind.TOKEN_SELECT, OpKind.ATTENTION,  # on tokens
})
"""Ops whose meaning on an (N, H, W, C) tensor is the same op on its NCHW view (CONV2D: a Linear)."""


def _what(node: fx.Node) -> str:
    return str(node.target) if node.op != "call_function" else getattr(node.target, "__name__", str(node.target))


def _enclosing(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` ('' at the top)."""
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] for v in stack.values() if v and v[0]]
    if node.op == "call_module":
        return str(node.target)
    return paths[-1] if paths else ""


def _check_shapes(network: Network, gm: fx.GraphModule, names: Mapping[fx.Node, str]) -> None:
    """The IR's inferred shapes must equal the shapes torch produced on the example input."""
    try:
        inferred = network.shapes
    except IRError as exc:
        raise TraceError(f"the traced model breaks an IR rule: {exc}") from exc
    for fx_node, name in names.items():
        if name == INPUT or name not in inferred:
            continue
        actual = tokens.token_shape(fx_node)[1:]
        if fx_node.meta.get(CHANNELS_LAST):
            actual = (actual[-1], *actual[:-1])
        if inferred[name] != actual:
            raise TraceError(
                f"node {name!r}: the IR infers shape {inferred[name]} but torch produced {actual}; "
                "the op has semantics the IR does not model: mark its submodule opaque"
            )
