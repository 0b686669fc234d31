"""netopt on torchvision's CNN families, written with torchvision's own forward-pass idioms.

Every family (see families.py) is traced, linted, materialized at full width (it must
reproduce the model), at random valid widths (lint, parameter count and MACs must agree with
the IR; the pruned module must equal the original with the removed channels' weights zeroed),
saved and reloaded, and exported to ONNX. Family-specific checks pin down the channel groups
the IR must form. A ShuffleNetV2 channel shuffle exercises refusal and the opaque path.
"""

from __future__ import annotations

import copy
import functools
import random
from pathlib import Path

import numpy as np
import onnxruntime
import pytest
import torch
from families import FAMILIES, ShuffleUnit, SqueezeExcitation, make, make_shufflenet
from torch import Tensor, nn

import netopt
from netopt.bridge import expand, kept_channels
from netopt.errors import UnsupportedOpError
from netopt.ir import Network, OpKind, macs, params

NAMES = list(FAMILIES)
WIDTHS = ["min", "rand0", "rand1"]


@functools.cache
def traced_family(name: str) -> tuple[nn.Module, Tensor, netopt.Traced]:
    """Family `name`, its input batch and its trace; shared by the tests, which must not mutate it."""
    model, x = make(name)
    return model, x, netopt.trace(model, x)


def widths_for(net: Network, how: str) -> dict[str, int]:
    """Every group at its minimum ("min"), or at a seeded random valid width ("randN")."""
    if how == "min":
        return {g.id: g.min_width for g in net.groups}
    rng = random.Random(f"{how}:{net.input_shape}:{len(net.nodes)}")
    return {g.id: rng.choice(g.valid_widths()) for g in net.groups}


def hook_macs(module: nn.Module, x: Tensor) -> int:
    """CONV/FC multiply-accumulates of one sample, counted by forward hooks on the module."""
    total = 0

    def count(m: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> None:
        nonlocal total
        if isinstance(m, nn.Conv2d):
            kh, kw = m.kernel_size
            total += out[0].numel() * (m.in_channels // m.groups) * kh * kw
        else:
            assert isinstance(m, nn.Linear)
            total += m.in_features * m.out_features

    hooks = [m.register_forward_hook(count) for m in module.modules() if isinstance(m, nn.Conv2d | nn.Linear)]
    try:
        with torch.no_grad():
            module(x[:1])
    finally:
        for h in hooks:
            h.remove()
    return total


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def run(module: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return module(x)


def group_of(net: Network, name: str) -> str:
    """The group owning the output channels of IR node `name` (a conv or linear)."""
    layout = net.layout(name)
    assert len(layout) == 1, f"{name} has a composite layout {layout}"
    return layout[0].group


def prunable(net: Network) -> set[str]:
    return {g.id for g in net.groups}


# --- every family ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_trace_lints_and_has_prunable_groups(name: str) -> None:
    _, _, traced = traced_family(name)
    net = traced.network
    net.lint()
    assert len(net.groups) > 0
    for g in net.groups:
        assert g.min_width <= g.full_width and g.valid_widths()[-1] == g.full_width
        assert all(w % g.step == 0 for w in g.valid_widths()[:-1])
    assert Network.from_json(net.to_json()) == net


@pytest.mark.parametrize("name", NAMES)
def test_full_width_materialize_reproduces_the_model(name: str) -> None:
    model, x, traced = traced_family(name)
    module = traced.materialize(traced.network)
    assert not module.training
    out = run(module, x)
    assert out.shape == run(model, x).shape
    assert float((out - run(model, x)).abs().max()) <= 1e-5
    assert n_params(module) == n_params(model) == params(traced.network)
    assert hook_macs(module, x) == hook_macs(model, x) == macs(traced.network)
    assert netopt.trace(module, x).network == traced.network  # the built module traces back


def storages(module: nn.Module) -> set[int]:
    return {t.untyped_storage().data_ptr() for t in [*module.parameters(), *module.buffers()]}


@pytest.mark.parametrize("name", NAMES)
def test_materialized_module_shares_no_tensor_with_the_model(name: str) -> None:
    model, _, traced = traced_family(name)
    full = traced.network
    for net in (full, full.with_widths(widths_for(full, "rand0"))):
        assert not storages(traced.materialize(net)) & storages(model)  # fine-tuning one leaves it alone


@pytest.mark.parametrize("how", WIDTHS)
@pytest.mark.parametrize("name", NAMES)
def test_random_widths_materialize_with_matching_costs(name: str, how: str) -> None:
    model, x, traced = traced_family(name)
    widths = widths_for(traced.network, how)
    smaller = traced.network.with_widths(widths)
    smaller.lint()
    assert smaller.widths == {**traced.network.full_widths, **widths}
    module = traced.materialize(smaller)
    out = run(module, x)
    assert out.shape == run(model, x).shape
    assert torch.isfinite(out).all()
    assert n_params(module) == params(smaller)
    assert hook_macs(module, x) == macs(smaller)
    again = netopt.trace(module, x).network  # the smaller module, traced afresh, costs the same
    assert (macs(again), params(again)) == (macs(smaller), params(smaller))
    if how == "min":
        assert params(smaller) < params(traced.network) and macs(smaller) < macs(traced.network)


def zero_removed_inputs(traced: netopt.Traced, smaller: Network) -> nn.Module:
    """A copy of the traced model whose conv/linear layers ignore the channels `smaller` drops."""
    model = copy.deepcopy(traced.module)
    net, kept = traced.network, kept_channels(traced, smaller)
    with torch.no_grad():
        for node in net.nodes:
            if node.op not in (OpKind.CONV2D, OpKind.LINEAR):
                continue
            layer = model.get_submodule(traced.binding[node.name])
            c_in = net.shape(node.inputs[0])[0]
            groups = getattr(layer, "groups", 1)
            if groups == c_in > 1:  # depthwise: channel-wise, reads no dropped channel into a kept one
                continue
            keep = set(expand(net, net.layout(node.inputs[0]), kept).tolist())
            in_per, out_per = c_in // groups, layer.weight.shape[0] // groups
            for i in sorted(set(range(c_in)) - keep):
                block = i // in_per
                layer.weight[block * out_per:(block + 1) * out_per, i % in_per] = 0
    return model


@pytest.mark.parametrize("how", WIDTHS)
@pytest.mark.parametrize("name", NAMES)
def test_pruned_module_equals_the_model_with_dropped_channels_ignored(name: str, how: str) -> None:
    _, x, traced = traced_family(name)
    smaller = traced.network.with_widths(widths_for(traced.network, how))
    reference = zero_removed_inputs(traced, smaller)
    diff = float((run(traced.materialize(smaller), x) - run(reference, x)).abs().max())
    assert diff <= 1e-5


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trips_into_a_fresh_materialization(name: str, tmp_path: Path) -> None:
    _, x, traced = traced_family(name)
    smaller = traced.network.with_widths(widths_for(traced.network, "rand0"))
    module = traced.materialize(smaller)
    torch.save(module.state_dict(), tmp_path / "pruned.pt")
    other = traced.materialize(smaller)
    with torch.no_grad():  # scramble it, so that only the loaded weights can make it match
        for t in [*other.parameters(), *other.buffers()]:
            if t.is_floating_point():
                t.copy_(torch.rand_like(t) + 0.5)
    assert float((run(other, x) - run(module, x)).abs().max()) > 1e-3
    other.load_state_dict(torch.load(tmp_path / "pruned.pt", weights_only=True), strict=True)
    assert torch.equal(run(other, x), run(module, x))


def onnx_outputs(module: nn.Module, x: Tensor, path: Path) -> np.ndarray:
    torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"], output_names=["y"])
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(["y"], {"x": x.numpy()})[0])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", NAMES)
def test_pruned_module_exports_to_onnx(name: str, tmp_path: Path) -> None:
    _, x, traced = traced_family(name)
    module = traced.materialize(traced.network.with_widths(widths_for(traced.network, "rand0")))
    got = onnx_outputs(module, x, tmp_path / f"{name}.onnx")
    np.testing.assert_allclose(got, run(module, x).numpy(), rtol=0, atol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_classifier_output_is_never_in_a_group(name: str) -> None:
    _, _, traced = traced_family(name)
    net = traced.network
    head = FAMILIES[name].classifier
    assert net.node(head).op in (OpKind.LINEAR, OpKind.CONV2D)
    assert group_of(net, head) not in prunable(net)
    assert all(head not in g.producers for g in net.groups)
    for out in net.outputs:
        assert not {s.group for s in net.layout(out)} & prunable(net)


# --- family-specific structure ----------------------------------------------------------------


@pytest.mark.parametrize("name", ["resnet_basic", "resnet_bottleneck", "resnext"])
def test_resnet_residual_producers_are_coupled_per_stage(name: str) -> None:
    model, _, traced = traced_family(name)
    net = traced.network
    last = "conv2" if name == "resnet_basic" else "conv3"
    stage_groups = []
    for k in range(1, 5):
        stage = getattr(model, f"layer{k}")
        producers = [f"layer{k}.{i}.{last}" for i in range(len(stage))]
        if stage[0].downsample is not None:
            producers.append(f"layer{k}.0.downsample.0")
        elif k == 1:
            producers.append("conv1")  # no projection: the stem feeds the first residual add
        gids = {group_of(net, p) for p in producers}
        assert len(gids) == 1, f"layer{k}: residual producers split over groups {gids}"
        (gid,) = gids
        assert gid in prunable(net)
        assert set(producers) <= set(net.group(gid).producers)
        stage_groups.append(gid)
    assert len(set(stage_groups)) == 4
    stem_coupled = model.layer1[0].downsample is None
    assert (group_of(net, "conv1") == stage_groups[0]) == stem_coupled
    # the inner bottleneck convs keep their own groups
    for k in range(1, 5):
        assert group_of(net, f"layer{k}.0.conv1") not in stage_groups


def se_modules(model: nn.Module) -> list[tuple[str, str]]:
    """(SE module name, name of the conv whose output it scales) for every SqueezeExcitation."""
    pairs = []
    for name, module in model.named_modules():
        for child_name, child in module.named_children():
            if isinstance(child, SqueezeExcitation):
                siblings = [n for n, _ in module.named_children()]
                before = siblings[siblings.index(child_name) - 1]
                prefix = f"{name}." if name else ""
                pairs.append((f"{prefix}{child_name}", f"{prefix}{before}.0"))
    return pairs


@pytest.mark.parametrize("name", ["mobilenet_v3", "efficientnet", "regnet_y"])
def test_se_excite_conv_shares_the_group_of_the_tensor_it_scales(name: str) -> None:
    model, _, traced = traced_family(name)
    net = traced.network
    pairs = se_modules(model)
    assert len(pairs) >= 3
    coupled = []
    for se, conv in pairs:
        assert isinstance(model.get_submodule(conv), nn.Conv2d)
        gid = group_of(net, conv)  # for a depthwise conv: the group of the expand conv it follows
        assert group_of(net, f"{se}.fc2") == gid
        assert group_of(net, f"{se}.fc1") != gid
        if gid in prunable(net):
            coupled.append(gid)
            assert f"{se}.fc2" in net.group(gid).producers
            assert f"{se}.fc1" in net.group(gid).consumers
    assert coupled, "no SE-scaled group is prunable"


def test_squeezenet_concat_keeps_the_expand_groups_separate() -> None:
    model, _, traced = traced_family("squeezenet")
    net = traced.network
    fires = [n for n, m in model.named_modules() if type(m).__name__ == "Fire"]
    concats = [n for n in net.nodes if n.op is OpKind.CONCAT]
    assert len(fires) == len(concats) == 4
    for i, (fire, cat) in enumerate(zip(fires, concats, strict=True)):
        e1, e3 = group_of(net, f"{fire}.expand1x1"), group_of(net, f"{fire}.expand3x3")
        assert e1 != e3 and {e1, e3} <= prunable(net)
        assert [(s.group, s.inner) for s in net.layout(cat.name)] == [(e1, 1), (e3, 1)]
        reader = f"{fires[i + 1]}.squeeze" if i + 1 < len(fires) else "classifier.1"
        assert reader in net.group(e1).consumers and reader in net.group(e3).consumers
    squeeze = group_of(net, f"{fires[0]}.squeeze")
    smaller = net.with_widths({squeeze: 8, group_of(net, f"{fires[0]}.expand3x3"): 8})
    assert smaller.shape(concats[0].name)[0] == 16 + 8


@pytest.mark.parametrize("name", ["regnet_x", "regnet_y", "resnext"])
def test_grouped_conv_groups_keep_whole_blocks(name: str) -> None:
    model, _, traced = traced_family(name)
    net = traced.network
    grouped = [
        (n, m) for n, m in model.named_modules()
        if isinstance(m, nn.Conv2d) and 1 < m.groups < m.in_channels
    ]
    assert grouped
    by_id = {g.id: g for g in net.groups}
    for conv, m in grouped:
        for gid in (net.layout(net.node(conv).inputs[0])[0].group, group_of(net, conv)):
            group = by_id[gid]  # both sides of a grouped conv stay prunable, in whole blocks
            assert group.blocks > 1 and group.blocks % m.groups == 0
            assert group.step % group.blocks == 0
            assert all(w % group.blocks == 0 for w in group.valid_widths())
        if name.startswith("regnet"):
            assert m.in_channels // m.groups == 8  # group width 8


# --- the unsupported op and the opaque path ---------------------------------------------------


def test_channel_shuffle_is_traced_with_the_groups_around_it_kept_whole() -> None:
    model, x = make_shufflenet()
    traced = netopt.trace(model, x)
    net = traced.network
    assert [n.op for n in net.nodes].count(OpKind.CHANNEL_SHUFFLE) == 2
    assert float((run(traced.materialize(net), x) - run(model, x)).abs().max()) <= 1e-5
    for shuffle in (n for n in net.nodes if n.op is OpKind.CHANNEL_SHUFFLE):  # interleaved: kept whole
        assert not {s.group for s in net.layout(shuffle.inputs[0])} & prunable(net)
    smaller = net.with_widths({g.id: g.min_width for g in net.groups})
    smaller.lint()
    module = traced.materialize(smaller)
    assert n_params(module) == params(smaller) < params(net)
    assert float((run(module, x) - run(zero_removed_inputs(traced, smaller), x)).abs().max()) <= 1e-5


class Rolled(nn.Module):
    """An op the IR does not model (a roll across channels) inside a block."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.block = nn.Sequential(nn.Conv2d(8, 8, 1))

    def forward(self, x: Tensor) -> Tensor:
        return torch.roll(self.block(self.conv(x)), 1, dims=1).mean((2, 3))


def test_an_unmodelled_op_is_refused_naming_the_node_and_the_fix() -> None:
    with pytest.raises(UnsupportedOpError) as info:
        netopt.trace(Rolled().eval(), torch.randn(1, 3, 8, 8))
    assert "node 'roll'" in str(info.value) and "opaque" in str(info.value)


OPAQUE = {"names": ["stage.0", "stage.1"], "parent": ["stage"], "class": [ShuffleUnit]}


@functools.cache
def traced_opaque(which: str) -> tuple[nn.Module, Tensor, netopt.Traced]:
    model, x = make_shufflenet()
    return model, x, netopt.trace(model, x, opaque=OPAQUE[which])


@pytest.mark.parametrize("which", list(OPAQUE))
def test_opaque_blocks_are_kept_whole(which: str) -> None:
    model, x, traced = traced_opaque(which)
    net = traced.network
    net.lint()
    blocks = [n.name for n in net.nodes if n.op is OpKind.OPAQUE]
    assert blocks == (["stage"] if which == "parent" else ["stage.0", "stage.1"])
    assert float((run(traced.materialize(net), x) - run(model, x)).abs().max()) <= 1e-5
    # the groups feeding and leaving the opaque blocks stay at full width
    assert group_of(net, "conv1.0") not in prunable(net)
    assert all("conv1.0" not in g.producers for g in net.groups)
    assert prunable(net) == {"conv5.0"}
    smaller = net.with_widths({"conv5.0": 8})
    smaller.lint()
    module = traced.materialize(smaller)
    assert run(module, x).shape == (2, 10)
    assert n_params(module) == params(smaller)
    assert params(smaller) == params(net) - 40 * (32 + 2 + 10)
    assert float((run(module, x) - run(zero_removed_inputs(traced, smaller), x)).abs().max()) <= 1e-5


def test_opaque_blocks_count_their_macs() -> None:
    _, x, traced = traced_opaque("names")
    assert macs(traced.network) == hook_macs(traced.materialize(), x)


def test_materialized_opaque_blocks_are_copies() -> None:
    model, x = make_shufflenet()  # not the cached trace: this test may change the model's weights
    traced = netopt.trace(model, x, opaque=["stage"])
    before = run(model, x)
    first, second = traced.materialize(), traced.materialize()
    with torch.no_grad():  # what short-term fine-tuning of one candidate does to its weights
        for p in first.parameters():
            p.mul_(0.5)
    assert torch.equal(run(model, x), before)
    assert torch.equal(run(second, x), before)
