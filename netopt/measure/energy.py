"""Energy: an analytical per-layer model from the IR (`EnergyModel`) and RAPL counters (`RaplEnergy`).

`EnergyModel` follows the methodology of Eyeriss (Chen, Emer, Sze, ISCA 2016) as used by
Yang, Chen, Sze, "Designing Energy-Efficient Convolutional Neural Networks using
Energy-Aware Pruning" (CVPR 2017), where NetAdapt's energy numbers come from:

    E_layer = E_compute + E_data
            = MACs * e_MAC + sum over levels l of accesses_l * e_l

with the levels register file (RF), inter-PE network (NoC), global buffer and DRAM, and the
costs normalized to one MAC (defaults: MAC 1, RF 1, NoC 2, buffer 6, DRAM 200). The result is
in units of one MAC's energy, `"E_MAC"`. Access counts per layer, batch 1, at current widths
(M = MACs, and X one of I ifmap, W weights (+ bias), O ofmap elements):

- CONV / FC (depthwise and grouped included): compute M; RF 4M (each MAC reads ifmap,
  weight and psum and writes the psum); NoC sum_X max(X, M / rf_reuse) (a datum delivered
  to a PE serves up to `rf_reuse` MACs from its RF, so a datum with more reuse than that is
  delivered again); buffer sum_X max(X, M / array_reuse) (one buffer read, multicast over
  the array, serves up to `array_reuse` MACs); DRAM W (weights are read once an inference).
- Other ops are vector ops of `ops` MAC-equivalents (activation, unfolded BN: O; max/avg
  pool: O*kh*kw; adaptive pool and mean: I; add/mul: O*(inputs-1), or O with a scalar;
  concat: 0): compute ops; RF 3*ops (two operands read, one result written); NoC and
  buffer: every input element read once and every output element written once.
- Views (flatten, dropout, identity) cost nothing. With `fold_bn` (default) a BatchNorm whose
  input is a CONV/FC read by nothing else is folded into its weights, as at inference, and
  costs nothing; otherwise it is a vector op.
- DRAM traffic of activations: a tensor bigger than the global buffer is written to DRAM
  once by its producer and read once by each reader; one that fits stays on chip. The
  network input is read from DRAM by each reader; network outputs are written once.
- Opaque blocks: compute and RF as MAC layers (4 per MAC); NoC and buffer: inputs, output
  and parameters once; DRAM: parameters once plus the activation rule.

Not modeled: the dataflow mapping search of Eyeriss (reuse is capped by two constants instead
of an optimized row-stationary mapping), tiling refetches from DRAM when a layer's working
set exceeds the buffer, zero-skipping and compression, fusing activations into the
producing layer, batch > 1, control and leakage energy. The model is monotone: shrinking
any channel group never increases any term, so budgets behave like the latency ones.

`RaplEnergy` (`netopt.measure.rapl`, re-exported here) measures instead: millijoules an
inference from Linux powercap RAPL package counters, as codecarbon and Zeus read them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from netopt.errors import MeasurementError
from netopt.frozen import Frozen
from netopt.ir import INPUT, Network, Node, OpKind, layer_macs, layer_params
from netopt.ir.costs import attention_scores, talking_macs
from netopt.ir.ops import ALIASING, MAC_OPS, RULES, EcaAttrs, Energy, OpaqueAttrs, PoolAttrs, ScalarAttrs, UpsampleAttrs
from netopt.ir.single_head import head_dims
from netopt.ir.tokens import AttentionAttrs
from netopt.measure.base import Fingerprint, settings_from
from netopt.measure.rapl import RaplDomain, RaplEnergy, RaplSettings, counter_delta, find_rapl_domains

if TYPE_CHECKING:
    pass

__all__ = [
    "Accelerator",
    "Accesses",
    "EnergyCosts",
    "EnergyModel",
    "LayerEnergy",
    "RaplDomain",
    "RaplEnergy",
    "RaplSettings",
    "counter_delta",
    "find_rapl_domains",
    "total_by_level",
]

ENERGY_MODEL_VERSION = 1
"""Bump when a formula changes, so lookup tables keyed by the fingerprint are not mixed."""


class EnergyCosts(Frozen):
    """Energy of one access at each level, normalized to one MAC (Eyeriss / Yang et al. 2017)."""

    model_config = ConfigDict(allow_inf_nan=False)

    mac: float = Field(1.0, gt=0, description="one multiply-accumulate (the unit)")
    rf: float = Field(1.0, gt=0, description="one register-file access inside a PE")
    noc: float = Field(2.0, gt=0, description="one transfer over the inter-PE network")
    buffer: float = Field(6.0, gt=0, description="one global-buffer access")
    dram: float = Field(200.0, gt=0, description="one off-chip DRAM access")


class Accelerator(Frozen):
    """The few facts about the hardware the access counts need (defaults: Eyeriss-like)."""

    model_config = ConfigDict(allow_inf_nan=False)

    buffer_kib: float = Field(108.0, gt=0, description="global buffer size (Eyeriss: 108 KiB)")
    bytes_per_element: int = Field(2, ge=1, le=16, description="bytes of one datum (Eyeriss: 16 bit)")
    rf_reuse: int = Field(16, ge=1, description="MACs one datum serves per delivery into a PE's RF")
    array_reuse: int = Field(256, ge=1, description="MACs one global-buffer read serves over the PE array")
    fold_bn: bool = Field(True, description="fold BatchNorm after CONV/FC into its weights (inference)")

    @field_validator("array_reuse")
    @classmethod
    def _at_least_rf_reuse(cls, value: int, info: ValidationInfo) -> int:
        rf_reuse = info.data.get("rf_reuse", 1)
        if value < rf_reuse:
            raise ValueError(f"must be >= rf_reuse ({rf_reuse}): the array reuses what each RF reuses")
        return value

    @property
    def buffer_bytes(self) -> float:
        return self.buffer_kib * 1024


@dataclass(frozen=True)
class LayerEnergy:
    """Energy of one layer by where it is spent, in units of one MAC (E_MAC)."""

    compute: float = 0.0
    rf: float = 0.0
    noc: float = 0.0
    buffer: float = 0.0
    dram: float = 0.0

    @property
    def total(self) -> float:
        return self.compute + self.rf + self.noc + self.buffer + self.dram

    @property
    def data(self) -> float:
        """Data-movement energy (E_data): everything but the computation."""
        return self.rf + self.noc + self.buffer + self.dram


@dataclass(frozen=True)
class Accesses:
    """How often a layer uses each level: MACs (or MAC-equivalent ops), then accesses per level."""

    compute: float = 0.0
    rf: float = 0.0
    noc: float = 0.0
    buffer: float = 0.0
    dram: float = 0.0

    def priced(self, costs: EnergyCosts) -> LayerEnergy:
        """The energy of these accesses under a cost table."""
        return LayerEnergy(self.compute * costs.mac, self.rf * costs.rf, self.noc * costs.noc,
                           self.buffer * costs.buffer, self.dram * costs.dram)

    def plus_dram(self, extra: float) -> Accesses:
        return Accesses(self.compute, self.rf, self.noc, self.buffer, self.dram + extra)


# --- the analytical model ---------------------------------------------------------------------


def _elements(net: Network, name: str) -> int:
    return math.prod(net.shape(name))


def _out_ops(net: Network, node: Node) -> int:
    return _elements(net, node.name)


def _in_ops(net: Network, node: Node) -> int:
    return _elements(net, node.inputs[0])


def _window_ops(net: Network, node: Node) -> int:
    assert isinstance(node.attrs, PoolAttrs)
    return _elements(net, node.name) * math.prod(node.attrs.kernel_size)


def _combine_ops(net: Network, node: Node) -> int:
    scalar = isinstance(node.attrs, ScalarAttrs) and node.attrs.scalar is not None
    return _elements(net, node.name) * (1 if scalar else max(1, len(node.inputs) - 1))


def _no_ops(net: Network, node: Node) -> int:
    return 0


def _norm_ops(net: Network, node: Node) -> int:
    return 4 * _out_ops(net, node)  # mean, variance, normalize, affine


def _l2norm_ops(net: Network, node: Node) -> int:
    return 2 * _out_ops(net, node)  # square and sum across the channels, divide


def _resize_ops(net: Network, node: Node) -> int:
    bilinear = isinstance(node.attrs, UpsampleAttrs) and node.attrs.mode == "bilinear"
    return 4 * _out_ops(net, node) if bilinear else 0  # nearest: a copy, its cost is the data moved


def _attention_ops(net: Network, node: Node) -> int:
    assert isinstance(node.attrs, EcaAttrs)  # pool, a k-tap filter across the channels, gate, product
    return 2 * _out_ops(net, node) + net.shape(node.name)[0] * (node.attrs.kernel_size + 1)


def _score_ops(net: Network, node: Node) -> int:
    """Softmax attention: per head q k^T and scores x v (N * M * (qk_dim + v_dim) MACs), and
    exp, sum and divide per score; with talking heads, their two 1x1 convs across the heads."""
    assert isinstance(node.attrs, AttentionAttrs)
    if node.attrs.linear:  # k^T [v, 1], then q times it: (M + N) MACs per element of k^T [v, 1]
        q, k = net.shape(node.inputs[0]), net.shape(node.inputs[1])
        return attention_scores(net, node) * (math.prod(q[1:]) + math.prod(k[1:]))
    if node.attrs.channels:  # cross-covariance: N MACs a score in q^ k^T and as many in it times v; q and k's
        c, n = net.shape(node.inputs[0])[0], math.prod(net.shape(node.inputs[0])[1:])  # L2 norms: 2 an element
        return attention_scores(net, node) * (2 * n + 3) + 4 * c * n
    _, qk_dim, v_dim = head_dims(node.attrs, net.shape(node.inputs[0])[0], net.shape(node.inputs[2])[0])
    return attention_scores(net, node) * (qk_dim + v_dim + 3) + talking_macs(net, node)


def _additive_ops(net: Network, node: Node) -> int:
    """Additive attention on (D, N) tokens: q w (N * D MACs), its norm over the tokens (2N), the
    weighted query summed over the tokens (2 N * D) and its product with k (N * D)."""
    d, n = net.shape(node.inputs[0])
    return 4 * n * d + 2 * n


def _context_ops(net: Network, node: Node) -> int:
    """Separable attention: exp, sum and divide per element of q (its softmax over the last axis),
    a multiply and an add per element of k (the context) and a multiply per output element."""
    return 3 * _elements(net, node.inputs[0]) + 2 * _elements(net, node.inputs[1]) + _out_ops(net, node)


_PRICED: dict[Energy, Callable[[Network, Node], int]] = {
    Energy.PER_OUTPUT: _out_ops,
    Energy.PER_INPUT: _in_ops,
    Energy.WINDOW: _window_ops,
    Energy.COMBINE: _combine_ops,
    Energy.NORM: _norm_ops,
    Energy.L2NORM: _l2norm_ops,
    Energy.RESIZE: _resize_ops,
    Energy.ATTENTION: _attention_ops,
    Energy.SCORES: _score_ops,
    Energy.ADDITIVE: _additive_ops,
    Energy.CONTEXT: _context_ops,
    Energy.MOVE: _no_ops,
}
"""MAC-equivalent operations of each kind of vector op (ir.ops.RULES says which kind an op is);
MAC layers, opaque blocks and views are costed apart."""

_COSTED_APART = frozenset({Energy.MAC, Energy.OPAQUE, Energy.VIEW})


def uncosted_ops() -> list[OpKind]:
    """Op kinds the model would silently price at zero: must be empty (checked at construction)."""
    return [k for k in OpKind if RULES[k].energy not in _PRICED and RULES[k].energy not in _COSTED_APART]


@dataclass(frozen=True)
class _Plan:
    """Where each tensor lives: its storage owner, and which owners go through DRAM."""

    owner: Mapping[str, str]
    in_dram: frozenset[str]
    written: frozenset[str]


def _folds(net: Network, node: Node, readers: Mapping[str, int]) -> bool:
    """A BatchNorm right after a CONV/FC that nothing else reads folds into its weights."""
    if node.op is not OpKind.BATCHNORM or node.inputs[0] == INPUT:
        return False
    producer = net.node(node.inputs[0]).op
    return producer in MAC_OPS and readers[node.inputs[0]] == 1


def _owners(net: Network, fold_bn: bool) -> dict[str, str]:
    """The node whose tensor holds each output: itself, unless it is a view or a folded BN."""
    readers: dict[str, int] = {}
    for node in net.nodes:
        for name in node.inputs:
            readers[name] = readers.get(name, 0) + 1
    owner = {INPUT: INPUT}
    for node in net.nodes:
        alias = node.op in ALIASING or (fold_bn and _folds(net, node, readers))
        owner[node.name] = owner[node.inputs[0]] if alias else node.name
    return owner


def _plan(net: Network, acc: Accelerator) -> _Plan:
    """Tensors over the buffer size spill to DRAM; the input starts there, outputs end there."""
    owner = _owners(net, acc.fold_bn)
    spilled = {o for o in set(owner.values())
               if _elements(net, o) * acc.bytes_per_element > acc.buffer_bytes}
    written = (spilled | {owner[out] for out in net.outputs}) - {INPUT}
    return _Plan(owner, frozenset(spilled | {INPUT}), frozenset(written))


def _mac_layer(net: Network, node: Node, acc: Accelerator) -> Accesses:
    """CONV/FC: 4 RF accesses a MAC; NoC and buffer fetches capped by the reuse each level exploits."""
    m = float(layer_macs(net, node))
    operands = (_elements(net, node.inputs[0]), layer_params(net, node), _elements(net, node.name))
    noc = float(sum(max(x, m / acc.rf_reuse) for x in operands))
    buffer = float(sum(max(x, m / acc.array_reuse) for x in operands))
    return Accesses(m, 4 * m, noc, buffer, float(operands[1]))


def _opaque(net: Network, node: Node) -> Accesses:
    """An opaque block: its MACs, and its inputs, output and parameters moved once."""
    assert isinstance(node.attrs, OpaqueAttrs)
    m = float(node.attrs.macs)
    moved = float(sum(_elements(net, i) for i in node.inputs) + _elements(net, node.name) + node.attrs.params)
    return Accesses(m, 4 * m, moved, moved, float(node.attrs.params))


def _vector(net: Network, node: Node) -> Accesses:
    """An elementwise, pooling or concat op: its ops, and every element in and out moved once."""
    ops = float(_PRICED[RULES[node.op].energy](net, node))
    moved = float(sum(_elements(net, i) for i in node.inputs) + _elements(net, node.name))
    return Accesses(ops, 3 * ops, moved, moved, 0.0)


def _activation_dram(net: Network, node: Node, plan: _Plan) -> float:
    """Reads of DRAM-resident inputs plus the write of a spilled or final output."""
    reads = sum(_elements(net, i) for i in node.inputs if plan.owner[i] in plan.in_dram)
    write = _elements(net, node.name) if node.name in plan.written else 0
    return float(reads + write)


def _accesses(net: Network, node: Node, plan: _Plan, acc: Accelerator) -> Accesses:
    if plan.owner[node.name] != node.name:
        return Accesses()  # a view or a folded BatchNorm: its producer did the work
    if node.op in MAC_OPS:
        core = _mac_layer(net, node, acc)
    elif node.op is OpKind.OPAQUE:
        core = _opaque(net, node)
    else:
        core = _vector(net, node)
    return core.plus_dram(_activation_dram(net, node, plan))


def _validated(cls: type[BaseModel], value: BaseModel | Mapping[str, Any] | None, what: str) -> Any:
    """A settings model from an instance, a mapping (checked, one-line ConfigError) or defaults."""
    if isinstance(value, cls):
        return value
    return settings_from(cls, dict(value or {}), what)


class EnergyModel:
    """Analytical inference energy of a network from its IR, in units of one MAC (E_MAC).

        model = EnergyModel(costs={"dram": 100}, accelerator={"buffer_kib": 64})
        model.estimate(net)          # total, E_MAC
        model.breakdown(net)         # {node: LayerEnergy(compute, rf, noc, buffer, dram)}
    """

    unit = "E_MAC"

    def __init__(self, costs: EnergyCosts | Mapping[str, Any] | None = None,
                 accelerator: Accelerator | Mapping[str, Any] | None = None) -> None:
        missing = uncosted_ops()
        if missing:
            raise MeasurementError(
                f"EnergyModel has no cost for op kinds {[k.value for k in missing]}; price their kind of "
                "work in _PRICED in netopt/measure/energy.py (an op priced at zero would bias every estimate)"
            )
        self.costs: EnergyCosts = _validated(EnergyCosts, costs, "EnergyModel costs")
        self.accelerator: Accelerator = _validated(Accelerator, accelerator, "EnergyModel accelerator")

    def __repr__(self) -> str:
        return f"EnergyModel(costs={self.costs!r}, accelerator={self.accelerator!r})"

    @property
    def fingerprint(self) -> Fingerprint:
        """The cost table and hardware facts: equal fingerprints give equal estimates."""
        return Fingerprint({
            "estimator": "energy-model", "version": ENERGY_MODEL_VERSION, "unit": self.unit,
            **{f"cost_{k}": v for k, v in self.costs.model_dump().items()},
            **self.accelerator.model_dump(),
        })

    def accesses(self, network: Network) -> dict[str, Accesses]:
        """Operations and accesses of every node at each level, before pricing (a removed
        residual branch's nodes have none: they do not run)."""
        network = network.reduced()
        plan = _plan(network, self.accelerator)
        return {n.name: _accesses(network, n, plan, self.accelerator) for n in network.nodes}

    def breakdown(self, network: Network) -> dict[str, LayerEnergy]:
        """Energy of every node by level, in E_MAC (views and folded BNs are all zeros)."""
        return {name: a.priced(self.costs) for name, a in self.accesses(network).items()}

    def estimate(self, network: Network) -> float:
        """Total energy of one inference (batch 1) at the network's current widths, in E_MAC."""
        return sum(e.total for e in self.breakdown(network).values())


def total_by_level(breakdown: Mapping[str, LayerEnergy]) -> LayerEnergy:
    """Sum a breakdown over layers: where the network's energy goes, level by level."""
    names = [f.name for f in fields(LayerEnergy)]
    return LayerEnergy(*(sum(getattr(e, k) for e in breakdown.values()) for k in names))
