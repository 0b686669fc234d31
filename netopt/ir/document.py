"""A network's JSON form: the document `Network.to_dict` writes and `Network.from_dict` reads.

Version 1 carried its version under `"version"`; version 2 under `"format_version"`, the key
every netopt file uses. Both read; only version 2 is written. `canonical_json` keeps the text
of version 1 whatever the format becomes: identity hashes (lookup-table keys) are taken over it,
so keys stored before a format change still match. An attribute added since (`OMIT_AT_DEFAULT`)
is written only where it differs from its default, so every earlier network keeps its text too.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, Protocol, TypeVar

from netopt.errors import FormatError
from netopt.ir.node import Node
from netopt.ir.ops import RULES, OpKind, attrs_from_dict, attrs_to_dict
from netopt.ir.versions import VERSION_KEY, version_of

__all__ = ["FORMAT", "FORMAT_VERSION", "Parts", "canonical_json", "document", "parse", "read"]

T = TypeVar("T")

FORMAT = "netopt.ir.network"
"""The document's identity, under `"format"`."""
FORMAT_VERSION = 2
"""2: the version under `format_version` (1: under `version`)."""
_LEGACY_KEY = "version"


class Described(Protocol):
    """What a document is made of: a `Network`'s fields."""

    @property
    def nodes(self) -> tuple[Node, ...]: ...
    @property
    def input_shape(self) -> tuple[int, ...]: ...
    @property
    def outputs(self) -> tuple[str, ...]: ...
    @property
    def step(self) -> int: ...
    @property
    def width_overrides(self) -> tuple[tuple[str, int], ...]: ...


class Parts(NamedTuple):
    """A document read back: what `Network(...)` and `with_widths` are given."""

    nodes: tuple[Node, ...]
    input_shape: tuple[int, ...]
    outputs: tuple[str, ...]
    step: int
    widths: dict[str, int]


def _body(net: Described) -> dict[str, Any]:
    return {
        "input_shape": list(net.input_shape),
        "step": net.step,
        "nodes": [
            {"name": n.name, "op": n.op.value, "inputs": list(n.inputs), "attrs": attrs_to_dict(n.attrs)}
            for n in net.nodes
        ],
        "outputs": list(net.outputs),
        "widths": dict(net.width_overrides),
    }


def document(net: Described) -> dict[str, Any]:
    """The current document of `net`."""
    return {"format": FORMAT, VERSION_KEY: FORMAT_VERSION, **_body(net)}


def canonical_json(net: Described) -> str:
    """The text of version 1's `to_json()`, byte for byte: what identity hashes are taken over."""
    return json.dumps({"format": FORMAT, _LEGACY_KEY: 1, **_body(net)})


def parse(text: str) -> Mapping[str, Any]:
    """The JSON object of a document's text, or a FormatError saying what is wrong."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FormatError(f"network JSON does not parse: {exc}; is the file complete?") from exc
    if not isinstance(data, dict):
        raise FormatError("network JSON must be an object written by Network.to_json()")
    return data


def read(data: Mapping[str, Any], make: Callable[[Parts], T]) -> T:
    """`make` applied to the fields of a document of any version this netopt reads."""
    _check_header(data)
    try:
        nodes = tuple(_node_from_dict(d) for d in data["nodes"])
        widths = {str(k): v for k, v in data.get("widths", {}).items()}
        return make(Parts(nodes, tuple(data["input_shape"]), tuple(data["outputs"]), int(data["step"]), widths))
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise FormatError(f"malformed network document: {exc!r}; re-export it with to_json()") from exc


def _check_header(data: Mapping[str, Any]) -> None:
    if data.get("format") != FORMAT:
        raise FormatError(
            f"not a netopt network document (format {data.get('format')!r}, expected {FORMAT!r})"
        )
    missing = None if VERSION_KEY in data else data.get(_LEGACY_KEY)  # version 1 said "version"
    version_of(data, FORMAT_VERSION, "network document", "upgrade netopt or re-export the network",
               missing=missing)


def _node_from_dict(d: Mapping[str, Any]) -> Node:
    try:
        op = OpKind(d["op"])
    except ValueError:
        known = ", ".join(k.value for k in OpKind)
        raise FormatError(f"node {d.get('name')!r} has unknown op {d['op']!r}; known: {known}") from None
    attrs = attrs_from_dict(RULES[op].attrs, dict(d.get("attrs", {})))
    return Node(str(d["name"]), op, tuple(d["inputs"]), attrs)
