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

The fx graph is then converted node by node (converter.py, with the tables in convert.py), and
the IR's own shape inference is checked against the recorded shapes, so a network the IR
describes wrongly is refused at trace time rather than mis-pruned later.
"""

from __future__ import annotations

import inspect
import operator
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import fx, nn

from netopt.bridge import modules as M
from netopt.bridge.concrete import DATA, one_input_and_defaults, plain, read_off_metadata, reads_data
from netopt.bridge.convert import DTYPE, SHAPE, SHAPES, leaf_converter
from netopt.bridge.converter import Converter, Opaque, check_shapes, get_attr, is_opaque
from netopt.bridge.count import counting_macs
from netopt.bridge.fxmeta import FED, MACS, MULTI, STAND_IN
from netopt.bridge.heads import STAND_INS, router
from netopt.bridge.traced import Traced
from netopt.errors import NetoptError, TraceError, UnsupportedOpError, first_line
from netopt.ir import Network, OpKind
from netopt.ir import params as netopt_params

__all__ = ["OpaqueWarning", "Traced", "trace"]  # Traced is defined in traced.py


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
        if route is None or is_opaque(m, path, self.opaque):
            return super().call_module(m, forward, args, kwargs)
        return route(self, m, args)  # a head traced by its parts (heads.py)

    def create_node(self, kind: str, target: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                    name: str | None = None, type_expr: Any | None = None) -> fx.Node:
        """Also the shape of a constant tensor fx keeps on the root (`torch.arange(n)` of a concrete n,
        used by a traced op): a converter reads it like a parameter's."""
        node = super().create_node(kind, target, args, kwargs, name, type_expr)
        if kind == "get_attr":
            with _untraced():
                value = get_attr(self.root, str(target))
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
        if is_opaque(m, module_qualified_name, self.opaque):
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
                return get_attr(self.root, str(target))
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
        if target not in self.stand_ins and not is_opaque(module, target, self.opaque):
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
    converter = Converter(gm, model, leaves)
    for node in gm.graph.nodes:
        converter.visit(node)
    network = converter.network(shape[1:], step)
    check_shapes(network, gm, converter.names)
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
