"""Coverage against the real model libraries: every architecture in `netopt.testing.peers`, the
classic CNNs (`ARCHITECTURES`) and the models deployed at the edge today (`EDGE`, issue 31).

Each is built with random weights (nothing is downloaded), traced at its native resolution,
checked equal to the original at full width, shrunk by half in every group, materialized, run,
and its parameters and CONV/FC MACs compared with the IR's. Those netopt still refuses are
listed in `peers.REFUSED` with the op that stops them, and must be refused with one line that
names the node, that op and the opaque=[...] path that would keep it: a model that fails any
other way, or that passed and now fails, fails here.

The default suite keeps to a fast, representative part of each list; the rest is marked slow
(`make test-all`), and `benchmarks/bench_coverage.py` counts everything:
- `HEAVY`: the slowest classic CNNs, large at native resolution (docs/decisions.md);
- `EDGE_DEFAULT`: one or two of each kind of edge model (timm convolutional, hybrid and
  attention models, Ultralytics' detectors with and without attention, smp's decoders); the
  whole EDGE list would take several times the default suite's share (docs/decisions.md).
"""

from __future__ import annotations

import pytest
import torch

import netopt
from netopt.bridge.count import counting_macs
from netopt.errors import UnsupportedOpError
from netopt.ir import macs, params
from netopt.testing import peers

EVERYTHING = peers.ARCHITECTURES + peers.EDGE
ACCEPTED = [a for a in peers.ARCHITECTURES if a.id not in peers.REFUSED]
EDGE_ACCEPTED = [a for a in peers.EDGE if a.id not in peers.REFUSED]
HEAVY = {"timm:vgg11", "timm:mobileone_s0", "timm:darknet53", "timm:densenet121", "timm:inception_v3",
         "timm:cspdarknet53", "timm:cspresnet50", "timm:dpn68", "timm:xception41", "timm:resnetv2_50",
         "timm:selecsls42b", "timm:res2net50_26w_4s"}
EDGE_DEFAULT = {
    "timm:mobilenetv4_conv_small", "timm:repvit_m0_9", "timm:fasternet_t0", "timm:hgnetv2_b0",
    "timm:convnextv2_atto", "timm:poolformer_s12", "timm:efficientformerv2_s0", "timm:mobilevit_xxs",
    "timm:levit_128s", "timm:deit_tiny_patch16_224", "timm:efficientvit_b0",
    "ultralytics:yolov8n", "ultralytics:yolo11n",
    "smp:Unet", "smp:FPN", "smp:PAN", "smp:Linknet", "smp:Segformer",
}


def built(arch: peers.Arch) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return peers.build(arch), torch.randn(1, 3, arch.size, arch.size)


def adapted(output: object) -> torch.Tensor:
    """The output netopt adapts: the tensor, or the first of a tuple (Ultralytics' predictions,
    before the per-level maps it returns beside them)."""
    while isinstance(output, tuple | list):
        output = output[0]
    assert isinstance(output, torch.Tensor)
    return output


def marked(archs: list[peers.Arch], fast: set[str]) -> list[object]:
    return [a if a.id in fast else pytest.param(a, marks=pytest.mark.slow) for a in archs]


def test_the_list_is_broad_and_netopt_accepts_at_least_95_percent() -> None:
    assert len(peers.CLASSIFICATION) >= 40 and len(peers.DENSE) >= 3
    assert len({a.family for a in peers.ARCHITECTURES}) >= 30
    assert set(peers.REFUSED) <= {a.id for a in EVERYTHING}
    assert len(ACCEPTED) / len(peers.ARCHITECTURES) >= 0.95


def test_the_edge_list_spans_the_libraries_and_families_of_issue_31() -> None:
    libraries = [a.library for a in peers.EDGE]
    assert len(peers.EDGE) >= 45 and len({a.id for a in EVERYTHING}) == len(EVERYTHING)
    assert libraries.count("timm") >= 30 and libraries.count("ultralytics") >= 5 and libraries.count("smp") >= 10
    assert len({a.family for a in peers.EDGE}) >= 40
    assert EDGE_DEFAULT.issubset(a.id for a in peers.EDGE)


def test_edge_timm_models_are_traced_at_the_input_size_they_were_trained_at() -> None:
    timm = peers.import_timm()
    for arch in (a for a in peers.EDGE if a.library == "timm"):
        assert timm.get_pretrained_cfg(arch.name).input_size == (3, arch.size, arch.size), arch.id


def test_netopt_accepts_at_least_95_percent_of_the_edge_list() -> None:
    """Issue 31's goal; what is accepted is checked end to end below, what is refused for its reason."""
    assert len(EDGE_ACCEPTED) / len(peers.EDGE) >= 0.95


def check_end_to_end(arch: peers.Arch) -> None:
    model, x = built(arch)
    traced = netopt.trace(model, x)
    net = traced.network
    assert net.groups, "nothing can shrink"
    with torch.no_grad():
        expected = adapted(model(x))
        assert float((adapted(traced.materialize(net).eval()(x)) - expected).abs().max()) <= 1e-4
    small = peers.halved(net)
    small.lint()
    module = traced.materialize(small).eval()
    with torch.no_grad(), counting_macs(module) as total:
        out = adapted(module(x))
    assert out.shape == expected.shape
    assert sum(p.numel() for p in module.parameters()) == params(small) < params(net)
    assert total() == macs(small) < macs(net)


@pytest.mark.parametrize("arch", marked(ACCEPTED, {a.id for a in ACCEPTED} - HEAVY), ids=lambda a: a.id)
def test_traced_equal_at_full_width_and_sizes_exact_at_half(arch: peers.Arch) -> None:
    check_end_to_end(arch)


@pytest.mark.parametrize("arch", marked(EDGE_ACCEPTED, EDGE_DEFAULT), ids=lambda a: a.id)
def test_edge_models_traced_equal_at_full_width_and_sizes_exact_at_half(arch: peers.Arch) -> None:
    check_end_to_end(arch)


@pytest.mark.parametrize("arch", marked([a for a in EVERYTHING if a.id in peers.REFUSED],
                                        {a.id for a in peers.ARCHITECTURES} | EDGE_DEFAULT), ids=lambda a: a.id)
def test_what_is_still_refused_names_the_node_the_op_and_the_fix(arch: peers.Arch) -> None:
    model, x = built(arch)
    with pytest.raises(UnsupportedOpError) as info:
        netopt.trace(model, x)
    message = str(info.value)
    assert "node '" in message and "opaque=[" in message and "\n" not in message
    assert peers.REFUSED[arch.id] in message
