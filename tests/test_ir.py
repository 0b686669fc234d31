"""The IR on its own: groups, widths, lint, JSON. No torch needed here."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from netopt.errors import FormatError, IRError, LintError, WidthError
from netopt.ir import Builder, Network, Node, OpKind
from netopt.ir.ops import Conv2dAttrs


def residual_net() -> Network:
    b = Builder((3, 16, 16))
    stem = b.relu(b.bn(b.conv(b.input, 16, 3)))
    y = b.relu(b.bn(b.conv(stem, 24, 3)))
    y = b.bn(b.conv(y, 16, 3))
    s = b.add_(y, stem)
    d = b.relu(b.bn(b.conv(s, 16, 3, groups=16)))
    return b.build(b.linear(b.flatten(b.adaptive_avgpool(d)), 10))


def test_residual_operands_share_one_group_and_depthwise_follows() -> None:
    net = residual_net()
    ids = [g.id for g in net.groups]
    assert ids == ["conv2d0", "conv2d1"]
    stem = net.group("conv2d0")
    assert stem.producers == ("conv2d0", "conv2d2")
    assert set(stem.consumers) == {"conv2d1", "linear0"}
    # the depthwise conv neither starts a group nor consumes one
    assert net.layout("conv2d3")[0].group == "conv2d0"


def test_with_widths_updates_every_shape_downstream() -> None:
    net = residual_net().with_widths({"conv2d0": 8})
    net.lint()
    assert net.shape("conv2d2")[0] == 8
    assert net.shape("add0")[0] == 8
    assert net.shape("conv2d3")[0] == 8
    assert net.conv_groups("conv2d3") == 8
    assert net.shape("flatten0") == (8,)
    assert net.shape("linear0") == (10,)


def test_with_widths_is_pure_and_canonical() -> None:
    net = residual_net()
    smaller = net.with_widths({"conv2d1": 8})
    assert net.widths == {"conv2d0": 16, "conv2d1": 24}
    assert smaller.widths == {"conv2d0": 16, "conv2d1": 8}
    assert smaller.with_widths({"conv2d1": 24}) == net
    assert hash(smaller.with_widths({"conv2d1": 24})) == hash(net)
    assert {net, smaller, net.with_widths({})} == {net, smaller}


def test_concat_keeps_each_input_group_at_its_offset() -> None:
    b = Builder((3, 8, 8))
    x = b.conv(b.input, 16, 3)
    left, right = b.conv(x, 16, 1), b.conv(x, 24, 3)
    cat = b.concat(left, right)
    net = b.build(b.linear(b.flatten(b.mean(cat)), 4))
    assert [s.group for s in net.layout(cat)] == [left, right]
    smaller = net.with_widths({left: 8, right: 16})
    assert smaller.shape(cat) == (24, 8, 8)
    assert smaller.shape("linear0") == (4,)


def test_flatten_gives_each_channel_its_spatial_features() -> None:
    b = Builder((3, 8, 8))
    x = b.maxpool(b.conv(b.input, 16, 3), 4)
    net = b.build(b.linear(b.flatten(x), 5))
    assert net.layout("flatten0")[0].inner == 4
    assert net.with_widths({"conv2d0": 8}).shape("flatten0") == (32,)


def test_grouped_conv_widths_keep_divisibility() -> None:
    b = Builder((3, 8, 8))
    x = b.conv(b.input, 24, 1)
    y = b.conv(x, 48, 3, groups=6)
    net = b.build(b.linear(b.flatten(b.adaptive_avgpool(y)), 3))
    g_in, g_out = net.group("conv2d0"), net.group("conv2d1")
    assert (g_in.blocks, g_out.blocks) == (6, 6)
    assert g_in.step == 12 and g_in.valid_widths() == (12, 24)
    with pytest.raises(WidthError, match="multiple of 12"):
        net.with_widths({"conv2d1": 40})
    net.with_widths({"conv2d0": 12, "conv2d1": 36}).lint()


def test_se_excite_joins_the_group_it_scales_and_output_is_never_a_group() -> None:
    b = Builder((3, 8, 8))
    x = b.relu(b.conv(b.input, 32, 3))
    s = b.act(b.conv(b.relu(b.conv(b.adaptive_avgpool(x), 16, 1, bias=True)), 32, 1, bias=True), OpKind.SIGMOID)
    y = b.mul(x, s)
    net = b.build(b.conv(y, 10, 1))
    assert net.group("conv2d0").producers == ("conv2d0", "conv2d2")
    assert "conv2d3" not in net.widths  # the output's channels are fixed


def test_width_errors_name_value_rule_and_fix() -> None:
    net = residual_net()
    with pytest.raises(WidthError, match=r"unknown group 'nope'.*conv2d0"):
        net.with_widths({"nope": 8})
    with pytest.raises(WidthError, match=r"width 4 is invalid for group 'conv2d0'.*between 8 and 16"):
        net.with_widths({"conv2d0": 4})
    with pytest.raises(WidthError, match="valid: \\[8, 16\\]"):
        net.with_widths({"conv2d0": 12})
    with pytest.raises(WidthError, match="not a whole number"):
        net.with_widths({"conv2d0": 8.5})


def test_construction_refuses_broken_structure_with_every_problem_listed() -> None:
    nodes = (
        Node("a", OpKind.CONV2D, ("input",), Conv2dAttrs(out_channels=8, kernel_size=(3, 3))),
        Node("a", OpKind.RELU, ("zzz",)),
        Node("c", OpKind.ADD, ("a",)),
    )
    with pytest.raises(LintError) as info:
        Network(nodes, (3, 8, 8), ("a",))
    text = str(info.value)
    assert "'a' is used twice" in text
    assert "reads ['zzz']" in text
    assert "takes 2 input(s), got 1" in text
    assert len(info.value.problems) == 3


def test_shape_rule_errors_name_the_node() -> None:
    b = Builder((3, 8, 8))
    x = b.conv(b.input, 16, 3)
    bad = b.linear(x, 4)  # a linear layer on a feature map
    with pytest.raises(IRError, match=r"linear node 'linear0'.*flatten first"):
        _ = b.build(bad).shapes
    with pytest.raises(LintError, match="linear node 'linear0'"):
        b.build(bad).lint()


def test_lint_flags_dead_nodes() -> None:
    b = Builder((3, 8, 8))
    x = b.conv(b.input, 16, 3)
    b.conv(b.input, 16, 3)
    with pytest.raises(LintError, match="'conv2d1' feeds no output"):
        b.build(x).lint()


def test_json_round_trip_and_format_errors() -> None:
    net = residual_net().with_widths({"conv2d1": 16})
    assert Network.from_json(net.to_json()) == net
    doc = json.loads(net.to_json())
    doc["format_version"] = 99
    with pytest.raises(FormatError, match="version 99 is not supported"):
        Network.from_dict(doc)
    doc = json.loads(net.to_json())
    doc["nodes"][0]["op"] = "conv3d"
    with pytest.raises(FormatError, match="unknown op 'conv3d'"):
        Network.from_dict(doc)
    with pytest.raises(FormatError, match="does not parse"):
        Network.from_json(net.to_json()[:-5])
    doc = json.loads(net.to_json())
    doc["widths"] = {"conv2d1": 7}
    with pytest.raises(WidthError, match="width 7"):
        Network.from_dict(doc)


def test_ir_imports_without_torch() -> None:
    code = "import sys, netopt.ir, netopt.testing.strategies; assert 'torch' not in sys.modules, 'torch loaded'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_scaled_is_the_uniform_multiplier_on_the_grid() -> None:
    net = residual_net()
    assert net.scaled(0.5).widths == {"conv2d0": 8, "conv2d1": 8}
    assert net.scaled(0.1).widths == {"conv2d0": 8, "conv2d1": 8}  # never below the minimum
    assert net.scaled(1.0) == net
