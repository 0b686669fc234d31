"""What the token tracer knows about an fx node: its stage, its meta keys and the shape the IR sees.

netopt.bridge.tokens (attention and token layouts) and netopt.bridge.windows (windows, patches
and flattened tokens) both read these; a `Stage` is a rearranging step that is no IR node.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import fx

from netopt.bridge.convert import CHANNELS_LAST, SHAPE, SHAPES
from netopt.errors import UnsupportedOpError

__all__ = ["STAGE", "BOUND_TO", "HEADS", "WINDOWED", "HEADS_LAST", "FLAT", "ROLLED", "Stage", "node_name",
           "first_input", "shape_of", "is_tokens", "stage_of", "is_heads", "dims_of", "enclosing", "refuse",
           "split_dim", "piece_bounds", "dim_arg", "on_dim0", "second_arg", "heads_on_map", "mark_tokens",
           "to_heads", "token_shape", "WINDOW_MAP"]

STAGE = "netopt_token_stage"
"""fx node meta key: the `Stage` an attention or layout step is at (the node is no IR node)."""
BOUND_TO = "netopt_bound_to"
"""fx node meta key: the module holding the parameter an attention node reads (its position bias)."""
HEADS = "netopt_heads"
"""fx node meta key: the (B, N, C) token shape of a tensor split into heads (B, heads, N, dim)."""
WINDOWED = "netopt_windowed"
"""fx node meta key: ((B, N, C), (H, W, wh, ww, sh, sw)) of tokens in windows (B * windows, wh * ww, C):
the token shape the IR sees (the grid's, row-major) and the grid, window and shift they came from."""
HEADS_LAST = "netopt_heads_last"
"""fx node meta key: a heads tensor still laid out (B, N, heads, dim), before its permute(0, 2, 1, 3)."""
FLAT = "netopt_flat"
"""fx node meta key: (B, C, N) of tokens flattened to (B * N, C) for a BatchNorm1d (LeViT), as the IR sees them."""
ROLLED = "netopt_rolled"
"""fx node meta key: the shift (sh, sw) a map merged from shifted windows still has to be rolled back by."""
WINDOW_MAP = "netopt_window_map"
"""fx node meta key: ((B, C, H, W), (H, W, wh, ww)) of a map cut into windows that are the batch
(B * windows, C, wh, ww), as the IR sees it (the whole map; netopt.bridge.window_maps)."""


@dataclass(frozen=True)
class Stage:
    """A rearranging step: `kind` says which, `src` the IR tensor (or heads tensor) it reads."""

    kind: str  # flat, split, parts, unbound, t, scores, probs, probs_t, merged, chw, cf_split, cf_parts
    src: fx.Node
    parts: int = 1
    heads: int = 0
    dim: int = 0
    k: fx.Node | None = None
    scale: float = 1.0
    bounds: tuple[tuple[int, int], ...] = ()
    bias: fx.Node | None = None  # the `attention_biases[:, attention_bias_idxs]` lookup added to the scores
    window: tuple[int, ...] = ()  # (H, W, wh, ww, sh, sw) of a window partition or merge under way
    masked: bool = False  # a position bias plus Swin's mask of shifted windows
    v: fx.Node | None = None  # linear attention's v (k^T [v, 1] and what follows)
    eps: float = 0.0  # linear attention's normalizer offset
    temperature: fx.Node | None = None  # cross-covariance attention's (heads, 1, 1) temperature (netopt.bridge.xca)
    talking: tuple[str, ...] = ()  # the talking-head convs the scores went through (netopt.bridge.talking)
    row: int = -1  # the head's row of a (heads, N, N) position bias indexed per head (cascaded heads)


def node_name(node: fx.Node) -> str | None:
    if node.op == "call_method":
        return str(node.target)
    if node.op == "call_function":
        return getattr(node.target, "__name__", None)
    return None


def first_input(node: fx.Node) -> Any:
    return node.args[0] if node.args else node.kwargs.get("input")


def shape_of(x: Any) -> tuple[int, ...]:
    return tuple(x.meta.get(SHAPE, ())) if isinstance(x, fx.Node) else ()


def is_tokens(x: Any) -> bool:
    """A (B, N, C) token tensor, not split into heads."""
    return isinstance(x, fx.Node) and bool(x.meta.get(CHANNELS_LAST)) and len(shape_of(x)) == 3


def stage_of(x: Any) -> Stage | None:
    return x.meta.get(STAGE) if isinstance(x, fx.Node) else None


def is_heads(x: Any) -> bool:
    return isinstance(x, fx.Node) and HEADS in x.meta


def dims_of(node: fx.Node, rank: int) -> tuple[int, ...]:
    args: Any = node.args[1:]
    if len(args) == 1 and isinstance(args[0], list | tuple):
        args = args[0]
    args = args or node.kwargs.get("dims", ()) or (node.kwargs.get("dim0"), node.kwargs.get("dim1"))
    return tuple(d % rank for d in args if isinstance(d, int))


def enclosing(node: fx.Node) -> str:
    """The qualified name of the innermost module whose forward made `node` ('' at the top)."""
    paths = [v[0] for v in (node.meta.get("nn_module_stack") or {}).values() if v and v[0]]
    return str(node.target) if node.op == "call_module" else (paths[-1] if paths else "")


def refuse(node: fx.Node, what: str) -> UnsupportedOpError:
    return UnsupportedOpError(f"node {node.name!r}: {what}")


def split_dim(node: fx.Node) -> int | None:
    """The dim a split or chunk of a rank-4 tensor cuts along."""
    dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
    return dim % 4 if isinstance(dim, int) else None


def piece_bounds(node: fx.Node, dim: int) -> tuple[tuple[int, int], ...]:
    """The ranges [start, stop) along `dim` of the pieces a split or chunk returned."""
    ends = [0, *(shape[dim] for shape in node.meta.get(SHAPES, ()))]
    return tuple((sum(ends[:i + 1]), sum(ends[:i + 2])) for i in range(len(ends) - 1))


def dim_arg(node: fx.Node, default: int = 0) -> int:
    return int(node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", default))  # type: ignore[arg-type]


def on_dim0(node: fx.Node) -> bool:
    return dim_arg(node) == 0


def second_arg(node: fx.Node) -> Any:
    return node.args[1] if len(node.args) > 1 else node.kwargs.get("other")


def heads_on_map(x: Any) -> bool:
    """Heads of a map (B, h, dim, N), whose IR tensor is the map (B, h*dim, H, W)."""
    return is_heads(x) and len(x.meta[HEADS]) == 4


def mark_tokens(node: fx.Node, tokens: bool) -> None:
    node.meta[CHANNELS_LAST] = tokens


def to_heads(node: fx.Node, shape: tuple[int, ...]) -> None:
    """`node` is a token tensor (B, N, C) split into heads (B, heads, N, dim), or a map (B, C, H, W)
    split into heads (B, heads, dim, H*W); `shape` is the tensor the IR sees."""
    node.meta[HEADS] = shape
    mark_tokens(node, len(shape) == 3)


def token_shape(node: fx.Node) -> tuple[int, ...]:
    """The shape the IR sees for `node`: a heads tensor's token shape, windowed tokens' the grid's,
    else its own."""
    if WINDOW_MAP in node.meta:
        return tuple(node.meta[WINDOW_MAP][0])
    if HEADS in node.meta:
        return tuple(node.meta[HEADS])
    if FLAT in node.meta:
        return tuple(node.meta[FLAT])
    return tuple(node.meta[WINDOWED][0] if WINDOWED in node.meta else node.meta[SHAPE])
