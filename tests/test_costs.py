"""Analytic costs against values calculated by hand from the MobileNetV1 paper's Table 1."""

from __future__ import annotations

import pytest
import torch

import netopt
from netopt.ir import activation_bytes, macs, params
from netopt.testing.torch_checks import module_macs, module_params
from netopt.zoo import MobileNetV1
from netopt.zoo.mobilenet import V1_BLOCKS


def hand_mobilenet_v1(width: float, res: int, classes: int = 1000) -> tuple[int, int, int]:
    """MACs, params and peak activation bytes of MobileNetV1, layer by layer as in Table 1."""
    c = int(32 * width)
    hw = res // 2
    mac = 3 * 3 * 3 * c * hw * hw  # standard 3x3 conv, stride 2
    par = 3 * 3 * 3 * c + 2 * c  # conv weights + BN gamma/beta
    peak_elems = 2 * c * hw * hw  # BN of the stem reads and writes a c x hw x hw map
    for out, stride in V1_BLOCKS:
        out = int(out * width)
        hw_out = hw // stride
        mac += 3 * 3 * c * hw_out * hw_out + c * out * hw_out * hw_out  # depthwise + pointwise
        par += 3 * 3 * c + 2 * c + c * out + 2 * out
        peak_elems = max(peak_elems, c * hw * hw + c * hw_out * hw_out, 2 * out * hw_out * hw_out,
                         c * hw_out * hw_out + out * hw_out * hw_out)
        c, hw = out, hw_out
    mac += c * classes
    par += c * classes + classes
    return mac, par, 4 * peak_elems


@pytest.mark.parametrize(("width", "res"), [(1.0, 224), (0.5, 128), (0.25, 128)])
def test_mobilenet_v1_costs_match_hand_calculation(width: float, res: int) -> None:
    net = netopt.trace(MobileNetV1(width, res).eval(), torch.randn(1, 3, res, res)).network
    assert (macs(net), params(net), activation_bytes(net)) == hand_mobilenet_v1(width, res)


def test_mobilenet_v1_matches_the_paper_figures() -> None:
    net = netopt.trace(MobileNetV1().eval(), torch.randn(1, 3, 224, 224)).network
    assert round(macs(net) / 1e6) == 569  # "569 million mult-adds", Table 8 of Howard et al.
    assert round(params(net) / 1e6, 1) == 4.2
    half = netopt.trace(MobileNetV1(0.5, 128).eval(), torch.randn(1, 3, 128, 128)).network
    assert round(macs(half) / 1e6) == 49  # "0.50 MobileNet-128: 49 million", Table 7


def test_shrunken_costs_equal_the_materialized_module() -> None:
    model = MobileNetV1(0.5, 64).eval()
    x = torch.randn(1, 3, 64, 64)
    traced = netopt.trace(model, x)
    smaller = traced.network.with_widths({g.id: g.min_width for g in traced.network.groups[::2]})
    module = traced.materialize(smaller)
    assert module_params(module) == params(smaller) < params(traced.network)
    assert module_macs(module, x) == macs(smaller) < macs(traced.network)


def test_activation_memory_counts_views_once_and_keeps_skip_tensors_alive() -> None:
    from netopt.ir import Builder

    b = Builder((4, 8, 8))
    x = b.conv(b.input, 8, 1)  # 8*64 elements
    y = b.conv(x, 8, 1)
    z = b.add_(y, x)  # x stays alive across y
    f = b.flatten(z)  # a view: no new memory
    net = b.build(b.linear(f, 2))
    # peak at the add: x, y and z live together
    assert activation_bytes(net) == 4 * 3 * 8 * 64
