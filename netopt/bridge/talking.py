"""fx -> IR for attention on a map whose heads a reshape lays out, with talking heads (EfficientFormerV2).

timm's Attention2d and Attention2dDownsample make q, k and v with 1x1 convs (and BatchNorm) on a map
and view each as heads (B, heads, dim, N): q and v permuted to (B, heads, N, dim), k as it is (q may
come from another resolution: the downsampling block's strided query). The scores `q @ k`, scaled
and plus a relative position bias, may be mixed across the heads by a 1x1 conv before the softmax
and by another after it (talking heads, Shazeer et al. 2020); `(attn @ v).transpose(2, 3)` reshaped
to (B, C, H, W) is a map again. The IR sees one ATTENTION on the three maps (`talking` set when the
convs are there), so the heads shrink as one group: a removed head takes its q, k and v channels,
its row of the position bias and its row and column of both talking-head convs with it. That is
exact in the sense the property tests use: once a head's q, k and v filters and every weight that
reads the head (the convs' columns) are zero, removing it leaves the output unchanged.

The steps are stages of netopt.bridge.tokens (`Stage`, meta `STAGE`): `stage` reads this form's,
`convert` emits its ATTENTION and the map after it; the converter asks them before tokens.py.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import Tensor, fx, nn

from netopt.bridge.convert import Converted
from netopt.bridge.stages import (
    BOUND_TO,
    HEADS,
    Stage,
    dims_of,
    enclosing,
    first_input,
    node_name,
    second_arg,
    shape_of,
    stage_of,
    to_heads,
)
from netopt.errors import UnsupportedOpError
from netopt.ir import OpKind
from netopt.ir.ops import AttentionAttrs, NoAttrs

__all__ = ["HEADS_T", "TALKING", "stage", "convert", "talking_convs", "keep_talking_heads"]

HEADS_T = "netopt_map_heads_t"
"""fx node meta key: the output of an attention on maps, laid out (B, heads, N, dim) until its transpose(2, 3)."""

TALKING = ("talking_head1", "talking_head2")
"""The names of the talking-head convs in the module that holds them (timm's, and netopt's Attention's)."""

_DROPS = (nn.Dropout, nn.Identity)


def stage(node: fx.Node) -> Stage | None:
    """The stage `node` is at in this form, or None (netopt.bridge.tokens then decides)."""
    x = first_input(node)
    st = stage_of(x)
    if st is None:
        return _output_t(node, x)
    if node.op == "call_module":
        return _module_on_scores(node, st)
    name = node_name(node)
    if name == "permute" and st.kind == "cf_split" and dims_of(node, 4) == (0, 1, 3, 2):
        return replace(st, kind="cf_t")  # q or v: (B, heads, N, dim)
    if name == "permute" and st.kind == "cf_split" and dims_of(node, 4) == (0, 1, 2, 3):
        return st  # k as laid out: (B, heads, dim, N)
    other = stage_of(second_arg(node))
    if name == "matmul" and st.kind == "cf_t" and other is not None and other.kind == "cf_split" \
            and (other.heads, other.dim) == (st.heads, st.dim):
        return Stage("scores", st.src, heads=st.heads, dim=st.dim, k=other.src)
    return None


def _output_t(node: fx.Node, x: Any) -> Stage | None:
    """`(attn @ v).transpose(2, 3)`: this form's attention output as the map's heads (B, heads, dim, N)."""
    if node_name(node) == "transpose" and isinstance(x, fx.Node) and x.meta.get(HEADS_T) \
            and sorted(dims_of(node, 4)) == [2, 3]:
        return Stage("heads_map", x)
    return None


def _module_on_scores(node: fx.Node, st: Stage) -> Stage | None:
    """A talking-head conv on this form's scores (before the softmax) or probabilities (after it),
    or dropout on them; None for anything else (a softmax module: tokens.py's)."""
    if not st.heads or st.kind not in ("scores", "probs"):
        return None
    module = node.graph.owning_module.get_submodule(str(node.target))  # type: ignore[union-attr]
    if isinstance(module, _DROPS) and st.kind == "probs":
        return st
    if not isinstance(module, nn.Conv2d):
        return None
    if len(st.talking) != (st.kind == "probs") or not _mixes_heads(module, st.heads):
        raise _refuse(node, f"{node.target!r} ({module}) on the attention {st.kind}; netopt models talking heads as "
                            "a 1x1 conv with a bias across all the heads before the softmax and another after it")
    return replace(st, talking=(*st.talking, str(node.target)))


def _mixes_heads(conv: nn.Conv2d, heads: int) -> bool:
    return conv.in_channels == conv.out_channels == heads and conv.kernel_size == (1, 1) and conv.groups == 1 \
        and conv.stride == (1, 1) and conv.padding == (0, 0) and conv.bias is not None


def convert(node: fx.Node) -> Converted | None:
    """This form's ATTENTION (at `probs @ v`) and its output reshaped into the map; None otherwise."""
    name, st = node_name(node), stage_of(first_input(node))
    if st is None:
        return None
    if name in ("reshape", "view") and st.kind == "heads_map":
        if shape_of(node) != tuple(st.src.meta[HEADS]):
            raise _refuse(node, f"a reshape of attention heads (B, heads, dim, N) to {shape_of(node)}, not to the "
                                f"map {tuple(st.src.meta[HEADS])} of the queries")
        return OpKind.IDENTITY, NoAttrs(), (st.src,)
    if name == "matmul" and st.kind == "probs" and st.heads:
        return _attention(node, st, stage_of(second_arg(node)))
    return None


def _attention(node: fx.Node, st: Stage, v: Stage | None) -> Converted:
    if v is None or v.kind != "cf_t" or v.heads != st.heads or len(st.talking) == 1 or st.masked:
        raise _refuse(node, "attention on a map whose v is not the map's heads permuted to (B, heads, N, dim), or "
                            "with one talking-head conv only")
    q, k = st.src, st.k
    assert k is not None
    b, _, *hw = shape_of(q)
    to_heads(node, (b, st.heads * v.dim, *hw))
    node.meta[HEADS_T] = True
    attrs = AttentionAttrs(qk_dim=st.dim, v_dim=v.dim, scale=st.scale, bias_positions=_bind(node, st),
                           talking=bool(st.talking))
    return OpKind.ATTENTION, attrs, (q, k, v.src)


def _bind(node: fx.Node, st: Stage) -> int:
    """Bind the attention to the one module that holds its position bias and talking heads; the
    bias's positions R (0: none)."""
    owners = {path.rpartition(".")[0] for path in st.talking}
    positions = 0
    if st.bias is not None:
        table, idxs = _lookup(node, st.bias)
        owner = str(table.target).rpartition(".")[0]
        if (str(table.target), str(idxs.target)) != (f"{owner}.attention_biases", f"{owner}.attention_bias_idxs") \
                or shape_of(table)[0] != st.heads:
            raise _refuse(node, f"attention scores plus {table.target!r}[:, {idxs.target!r}]; a relative position "
                                "bias is modelled as attention_biases[:, attention_bias_idxs] of one module")
        owners.add(owner)
        positions = shape_of(table)[1]
    if len(owners) > 1 or (st.talking and st.talking != tuple(f"{min(owners)}.{n}" for n in TALKING)):
        raise _refuse(node, f"talking heads {list(st.talking)} that are not the submodules {list(TALKING)} of the "
                            "module holding the position bias (as timm's EfficientFormerV2 names them)")
    if owners:
        node.meta[BOUND_TO] = min(owners)
    return positions


def _lookup(node: fx.Node, bias: fx.Node) -> tuple[fx.Node, fx.Node]:
    """The table and index of `attention_biases[:, attention_bias_idxs]`."""
    index: Any = bias.args[1] if node_name(bias) == "getitem" else None
    if not isinstance(index, tuple) or len(index) != 2 or not isinstance(index[1], fx.Node):
        raise _refuse(node, "attention scores plus a bias that is no attention_biases[:, attention_bias_idxs]")
    return bias.args[0], index[1]  # type: ignore[return-value]


def _refuse(node: fx.Node, what: str) -> UnsupportedOpError:
    """The refusal naming the attention module around `node` (a talking-head conv's parent) as the fix."""
    where = str(node.target).rpartition(".")[0] if node.op == "call_module" else enclosing(node)
    return UnsupportedOpError(f"node {node.name!r}: {what}; pass opaque=[{where!r}] to keep the module that does "
                              "it whole at full width")


def talking_convs(module: nn.Module) -> list[nn.Conv2d]:
    """The talking-head convs of an attention module, before and after the softmax."""
    return [m for name in TALKING if isinstance(m := module.get_submodule(name), nn.Conv2d)]


def keep_talking_heads(layer: nn.Module, src: nn.Module, heads: Tensor) -> None:
    """Copy into `layer`'s talking-head convs the rows and columns of the kept `heads` of `src`'s.

    >>> import torch
    >>> from netopt.bridge.token_modules import Attention
    >>> src, layer = Attention(4, 4, 0.5, talking=3), Attention(4, 4, 0.5, talking=2)
    >>> keep_talking_heads(layer, src, torch.tensor([0, 2]))
    >>> torch.equal(layer.talking_head1.weight[:, :, 0, 0], src.talking_head1.weight[[0, 2]][:, [0, 2], 0, 0])
    True
    """
    for into, conv in zip(talking_convs(layer), talking_convs(src), strict=True):
        weight = conv.weight.detach().index_select(0, heads).index_select(1, heads).contiguous()
        into.weight = nn.Parameter(weight, conv.weight.requires_grad)
        if conv.bias is not None:
            into.bias = nn.Parameter(conv.bias.detach().index_select(0, heads), conv.bias.requires_grad)
