"""What every fx-node converter shares: the meta keys trace.py writes on fx nodes, the `Converted`
triple a converter returns, reading a call's arguments, the channel layout of a tensor, and the
refusal that names the node."""

from __future__ import annotations

from typing import Any

from torch import fx

from netopt.errors import UnsupportedOpError
from netopt.ir.ops import OpKind

__all__ = ["CHANNELS_LAST", "PIECES", "SHAPES", "SHAPE", "DTYPE", "Converted", "pair", "opt_pair", "float_pair",
           "first", "refuse", "arg_at", "channels_last", "channel_count", "param_path",
           "MULTI", "MACS", "STAND_IN", "FED"]

CHANNELS_LAST = "netopt_channels_last"
"""fx node meta key: the tensor is an NCHW map permuted to (N, H, W, C)."""
PIECES = "netopt_pieces"
"""fx node meta key: the channel ranges [start, stop) of the pieces a split/chunk returned."""
SHAPES = "netopt_shapes"
"""fx node meta key: the shapes of the tensors a node returned as a tuple."""
SHAPE = "netopt_shape"
DTYPE = "netopt_dtype"
"""fx node meta key: the dtype of the tensor the node returned on the example input."""

Converted = tuple[OpKind, Any, tuple[fx.Node, ...]]


def pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def opt_pair(v: Any) -> tuple[int | None, int | None]:
    return (v, v) if v is None or isinstance(v, int) else (v[0], v[1])


def first(node: fx.Node) -> tuple[fx.Node, ...]:
    return (node.args[0],) if node.args else (node.kwargs["input"],)  # type: ignore[return-value]


def refuse(node: fx.Node, what: str, fix: str) -> UnsupportedOpError:
    """The caller adds the opaque=[...] path of the enclosing module where `fix` has none."""
    return UnsupportedOpError(f"node {node.name!r}: {what}" + (f"; {fix}" if fix else ""))


def channels_last(x: Any) -> bool:
    return isinstance(x, fx.Node) and bool(x.meta.get(CHANNELS_LAST))


def channel_count(node: fx.Node, x: fx.Node) -> int:
    """The channel count of `x` (last dim when channels-last, else dim 1)."""
    shape = x.meta[SHAPE]
    return int(shape[-1] if channels_last(x) or len(shape) == 2 else shape[1])


def float_pair(v: Any) -> tuple[float, float]:
    return (float(v), float(v)) if isinstance(v, int | float) else (float(v[0]), float(v[1]))


def arg_at(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


_VIEWS = frozenset({"reshape", "view", "expand", "unsqueeze", "squeeze", "flatten", "expand_as", "view_as"})


def param_path(x: Any) -> str | None:
    """The qualified name of the parameter or buffer `x` reads (directly or through a view)."""
    while isinstance(x, fx.Node):
        if x.op == "get_attr":
            return str(x.target)
        name = x.target if x.op == "call_method" else getattr(x.target, "__name__", None)
        if name not in _VIEWS or not x.args:
            return None
        x = x.args[0]
    return None



MULTI = "netopt_multi"
"""fx node meta key: the node returned several tensors (chunk, split, ...)."""
MACS = "netopt_macs"
"""fx node meta key: CONV/FC MACs per sample measured inside an opaque block."""
STAND_IN = "netopt_stand_in"
"""fx node meta key: the module a routed head's node calls in place of its target (heads.py)."""
FED = "netopt_fed"
"""GraphModule meta key: which module paths were called with a traced tensor."""
