"""The structural model IR: ops, networks, channel groups and analytic costs. Imports no torch."""

from netopt.ir.builder import Builder
from netopt.ir.costs import activation_bytes, layer_macs, layer_params, macs, params
from netopt.ir.groups import INPUT, ChannelGroup, Layout, Segment
from netopt.ir.network import FORMAT_VERSION, Network, Node
from netopt.ir.ops import RULES, OpKind, Role

__all__ = [
    "Builder",
    "ChannelGroup",
    "FORMAT_VERSION",
    "INPUT",
    "Layout",
    "Network",
    "Node",
    "OpKind",
    "RULES",
    "Role",
    "Segment",
    "activation_bytes",
    "layer_macs",
    "layer_params",
    "macs",
    "params",
]
