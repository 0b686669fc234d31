"""Detection heads that torch.fx cannot trace: traced as their per-level branches, decoded whole.

An Ultralytics YOLO `DetectionModel` walks its layer list and routes earlier outputs by index,
and its `Detect` head builds anchors from the feature maps' sizes, caches them on itself and
returns a tuple with a dict. netopt traces it with torch.fx all the same, because its tracer
runs every op on the example input as it records it (trace.py): the layer walk and the routing
by index are plain Python over concrete values, and only the head needs help. The head is
*routed*: each level's box and class branches (`cv2[i]`, `cv3[i]`, and `one2one_*` where the
head has them) are traced like any other convolutions, so their inner widths shrink, and what
follows them (the concat, DFL, anchors, strides, the decode, an end-to-end head's top-k) is one
opaque `DetectDecode` block fed the branches' final maps, whose channels (4 * reg_max box bins
and nc classes) are fixed anyway.

Why not `torch.export`: it flattens the model into aten ops, so IR nodes lose the module names
that bind them to parameters, and the head's anchors become constants of one input size with
no block to keep whole; fx keeps module boundaries, `opaque=[...]` and the leaf modules.

What netopt adapts: the decoded predictions tensor (B, 4 + nc, anchors), or (B, max_det, 6) for
an end-to-end head: what `Detect` returns in eval with `export=True`. In train mode the block
returns the head's raw dict (`{"boxes", "scores", "feats"}`, or `{"one2many", "one2one"}`), so
Ultralytics' losses take the materialized network's output as they take the original's:
`v8DetectionLoss(original)(materialized.train()(images), batch)` (the loss reads strides, nc and
reg_max off the original's head, which shrinking leaves alone). There `feats[i]` is level i's
branch maps concatenated, not the neck's map (a loss reads only their sizes). An end-to-end
head (v10, 26) detaches its one-to-one branches' inputs in training; the IR has no detach, so in
the materialized network their gradients also reach the neck.

Heads are recognised by the qualified name of their class, so netopt never imports ultralytics.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from netopt.bridge.modules import Slice
from netopt.errors import UnsupportedOpError

__all__ = ["HEADS", "STAND_INS", "DetectDecode", "RoutingTracer", "router"]

BRANCHES = ("cv2", "cv3", "one2one_cv2", "one2one_cv3")
"""A Detect head's per-level branches, in the order their maps are concatenated per level."""


class RoutingTracer(Protocol):
    """What a router needs of the tracer (trace.py's `_Tracer` is one)."""

    def path_of_module(self, mod: nn.Module) -> str: ...

    def call_stand_in(self, target: str, stand_in: nn.Module, args: tuple[Any, ...]) -> Any: ...


Router = Callable[[RoutingTracer, nn.Module, tuple[Any, ...]], Any]


class DetectDecode(nn.Module):
    """A YOLO Detect head's decoding (DFL, anchors, strides), given its branches' per-level maps.

    Holds a copy of the head whose branches are replaced by slices of the concatenated maps,
    so the head's own forward does the decoding, in eval and in training.

    >>> import torch
    >>> class Head(torch.nn.Module):  # stands in for ultralytics' Detect
    ...     nl, export = 1, False
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.cv2, self.cv3 = torch.nn.ModuleList([torch.nn.Identity()]), torch.nn.ModuleList()
    ...     def forward(self, x):
    ...         return torch.cat([self.cv2[0](x[0]), self.cv3[0](x[0])], 1).flatten(2)
    >>> decode = DetectDecode(Head(), widths=(4, 2))
    >>> decode(torch.ones(1, 4, 2, 2), torch.zeros(1, 2, 2, 2)).shape
    torch.Size([1, 6, 4])
    """

    def __init__(self, head: nn.Module, widths: Sequence[int]) -> None:
        super().__init__()
        clone: Any = copy.deepcopy(head)
        clone.export = True  # the tensor alone in eval: the (tensor, dict) tuple is not adapted
        self.levels = int(clone.nl)
        self.per_level = len(widths)
        bounds = torch.tensor((0, *widths)).cumsum(0).tolist()
        for name, start, stop in zip(BRANCHES, bounds, bounds[1:], strict=False):
            setattr(clone, name, nn.ModuleList(Slice(start, stop) for _ in range(self.levels)))
        self.head = clone

    def forward(self, *maps: Tensor) -> Any:
        k = self.per_level
        feats = [torch.cat(maps[i * k:(i + 1) * k], 1) for i in range(self.levels)]
        return self.head(feats)

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> DetectDecode:
        """Move the head's plain tensors (strides, cached anchors) too, as Ultralytics' models do."""
        super()._apply(fn, recurse)
        for name in ("stride", "anchors", "strides"):
            value = getattr(self.head, name, None)
            if isinstance(value, Tensor):
                setattr(self.head, name, fn(value))
        return self


def _route_detect(tracer: RoutingTracer, head: nn.Module, args: tuple[Any, ...]) -> Any:
    """Trace each level's branches, then one `DetectDecode` call on their maps."""
    feats = list(args[0])
    branches = [getattr(head, name) for name in BRANCHES if getattr(head, name, None) is not None]
    if len(feats) != head.nl or getattr(head, "cv2", None) is None or getattr(head, "cv3", None) is None:
        raise UnsupportedOpError(
            f"{type(head).__name__} got {len(feats)} feature maps for {head.nl} levels and has branches "
            f"{[n for n in BRANCHES if getattr(head, n, None) is not None]}; netopt routes a Detect head with "
            f"cv2 and cv3 (and one2one_*) per level: pass opaque=[{tracer.path_of_module(head)!r}]"
        )
    maps = tuple(branch[i](feats[i]) for i in range(len(feats)) for branch in branches)
    widths = [int(_out_channels(branch[0])) for branch in branches]
    return tracer.call_stand_in(tracer.path_of_module(head), DetectDecode(head, widths), maps)


def _out_channels(branch: nn.Module) -> int:
    """A branch's output channels: those of its last convolution."""
    convs = [m for m in branch.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


STAND_INS: tuple[type[nn.Module], ...] = (DetectDecode,)
"""The modules routed heads' nodes call: opaque, but nothing around them could shrink (no warning)."""

HEADS: dict[str, Router] = {
    "ultralytics.nn.modules.head.Detect": _route_detect,
    "ultralytics.nn.modules.head.v10Detect": _route_detect,
}
"""Heads traced by routing, by the qualified name of their exact class: subclasses (Segment, Pose,
OBB, ...) return more and are left to ordinary tracing or `opaque=[...]`."""


def router(m: nn.Module) -> Router | None:
    """The router of a head netopt traces by parts, or None."""
    cls = type(m)
    return HEADS.get(f"{cls.__module__}.{cls.__qualname__}")
