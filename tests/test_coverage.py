"""Coverage against the real model libraries: every architecture in `netopt.testing.peers`.

Each is built with random weights (nothing is downloaded), traced at its native resolution,
checked equal to the original at full width, shrunk by half in every group, materialized, run,
and its parameters and CONV/FC MACs compared with the IR's. The few that netopt still refuses
are listed in `REFUSED` with the reason, and must be refused with one line that names the
node, the op and the opaque=[...] path that would keep it.
"""

from __future__ import annotations

import pytest
import torch

import netopt
from netopt.bridge.count import counting_macs
from netopt.errors import UnsupportedOpError
from netopt.ir import macs, params
from netopt.testing import peers

REFUSED = {
    "timm:resnest14d": "split attention reshapes channels into (radix, C/radix) and takes a softmax across radix",
    "timm:skresnet18": "selective kernels stack branch outputs on a new dim and softmax across it",
    "timm:nf_resnet26": "weight standardization computes each conv's weight in forward (batch_norm of the weight)",
}


def built(arch: peers.Arch) -> tuple[torch.nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    return peers.build(arch), torch.randn(1, 3, arch.size, arch.size)


ACCEPTED = [a for a in peers.ARCHITECTURES if a.id not in REFUSED]
HEAVY = {"timm:vgg11", "timm:mobileone_s0", "timm:darknet53", "timm:densenet121", "timm:inception_v3",
         "timm:cspdarknet53", "timm:cspresnet50", "timm:dpn68", "timm:xception41", "timm:resnetv2_50",
         "timm:selecsls42b", "timm:res2net50_26w_4s"}
"""Architectures that take over 2.5 s each here (large at native resolution): traced by `make
test-all` (CI runs the default suite), and counted with the rest by benchmarks/bench_coverage.py."""


def test_the_list_is_broad_and_netopt_accepts_at_least_95_percent() -> None:
    assert len(peers.CLASSIFICATION) >= 40 and len(peers.DENSE) >= 3
    assert len({a.family for a in peers.ARCHITECTURES}) >= 30
    assert set(REFUSED) <= {a.id for a in peers.ARCHITECTURES}
    assert len(ACCEPTED) / len(peers.ARCHITECTURES) >= 0.95


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a.id in HEAVY else a for a in ACCEPTED],
                         ids=lambda a: a.id)
def test_traced_equal_at_full_width_and_sizes_exact_at_half(arch: peers.Arch) -> None:
    model, x = built(arch)
    traced = netopt.trace(model, x)
    net = traced.network
    assert net.groups, "nothing can shrink"
    with torch.no_grad():
        assert float((traced.materialize(net).eval()(x) - model(x)).abs().max()) <= 1e-4
    small = peers.halved(net)
    small.lint()
    module = traced.materialize(small).eval()
    with torch.no_grad(), counting_macs(module) as total:
        out = module(x)
    assert out.shape == model(x).shape
    assert sum(p.numel() for p in module.parameters()) == params(small) < params(net)
    assert total() == macs(small) < macs(net)


@pytest.mark.parametrize("arch_id", sorted(REFUSED))
def test_what_is_still_refused_names_the_node_the_op_and_the_fix(arch_id: str) -> None:
    (arch,) = [a for a in peers.ARCHITECTURES if a.id == arch_id]
    model, x = built(arch)
    with pytest.raises(UnsupportedOpError) as info:
        netopt.trace(model, x)
    message = str(info.value)
    assert "node '" in message and "opaque=[" in message and "\n" not in message
