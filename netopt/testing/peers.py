"""The real model libraries netopt is measured against: timm and torchvision, and the list of
architectures the coverage suite and `benchmarks/bench_coverage.py` trace.

Both libraries are test-only peers (`make test` installs them with `--no-deps`, so they never
pull a CUDA torch). torchvision's wheel is a CUDA build whose compiled ops do not load beside
the CPU torch; its Python model code does, once the schemas of the two operators its import
registers fake kernels for (`torchvision::nms`, `torchvision::qnms`) exist. `import_torchvision`
defines them in a torch.library FRAGMENT when, and only when, torchvision's own library did not:
classification and segmentation models then build and run; detection post-processing does not.
No weights are ever downloaded: every model is built with random initialization.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from netopt.ir import Network

__all__ = ["Arch", "CLASSIFICATION", "DENSE", "ARCHITECTURES", "import_torchvision", "import_timm", "build", "halved"]

_SCHEMAS = {
    "nms": "nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
    "qnms": "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
}
_FRAGMENT: list[Any] = []  # keeps the library object (and so its definitions) alive


def import_torchvision() -> ModuleType:
    """torchvision, importable beside the CPU torch (see the module docstring)."""
    missing = [name for name in _SCHEMAS if not _has_op(name)]
    if missing and not _FRAGMENT:
        lib = torch.library.Library("torchvision", "FRAGMENT")
        for name in missing:
            lib.define(_SCHEMAS[name])
        _FRAGMENT.append(lib)
    import torchvision

    return torchvision


def _has_op(name: str) -> bool:
    try:
        torch._C._dispatch_find_schema_or_throw(f"torchvision::{name}", "")
    except RuntimeError:
        return False
    return True


def import_timm() -> ModuleType:
    import_torchvision()  # timm imports torchvision's feature extraction
    import timm

    return timm


@dataclass(frozen=True)
class Arch:
    """One architecture: its library, its name there, its family and its native input size."""

    library: str
    name: str
    family: str
    size: int = 224

    @property
    def id(self) -> str:
        return f"{self.library}:{self.name}"


def _timm(name: str, family: str, size: int = 224) -> Arch:
    return Arch("timm", name, family, size)


def _tv(name: str, family: str, size: int = 224) -> Arch:
    return Arch("torchvision", name, family, size)


CLASSIFICATION: tuple[Arch, ...] = (
    _timm("mobilenetv2_100", "MobileNetV2"),
    _timm("mobilenetv3_large_100", "MobileNetV3"),
    _timm("mobilenetv3_small_100", "MobileNetV3"),
    _timm("tf_mobilenetv3_large_100", "MobileNetV3 (TF 'same' padding)"),
    _timm("efficientnet_b0", "EfficientNet"),
    _timm("tf_efficientnet_b0", "EfficientNet (TF 'same' padding)"),
    _timm("efficientnet_lite0", "EfficientNet"),
    _timm("tf_efficientnetv2_b0", "EfficientNetV2", 192),
    _timm("tinynet_a", "EfficientNet", 192),
    _timm("mnasnet_100", "MnasNet"),
    _timm("semnasnet_100", "MnasNet"),
    _timm("fbnetc_100", "FBNet"),
    _timm("spnasnet_100", "Single-Path NAS"),
    _timm("hardcorenas_a", "HardCoRe-NAS"),
    _timm("lcnet_050", "PP-LCNet"),
    _timm("ghostnet_100", "GhostNet"),
    _timm("mixnet_s", "MixNet"),
    _timm("tf_mixnet_s", "MixNet (TF 'same' padding)"),
    _timm("rexnet_100", "ReXNet"),
    _timm("regnetx_002", "RegNet"),
    _timm("regnety_002", "RegNet"),
    _timm("repvgg_a0", "RepVGG"),
    _timm("mobileone_s0", "MobileOne"),
    _timm("cspdarknet53", "CSP/Darknet", 256),
    _timm("cspresnet50", "CSP/Darknet", 256),
    _timm("darknet53", "CSP/Darknet", 256),
    _timm("densenet121", "DenseNet"),
    _timm("dpn68", "DPN"),
    _timm("convnext_atto", "ConvNeXt"),
    _timm("hrnet_w18_small", "HRNet"),
    _timm("resnet18", "ResNet"),
    _timm("resnet50", "ResNet"),
    _timm("resnet50d", "ResNet"),
    _timm("resnetv2_50", "ResNet (pre-activation)"),
    _timm("seresnet50", "SE-ResNet"),
    _timm("ecaresnet26t", "ECA-ResNet", 256),
    _timm("res2net50_26w_4s", "Res2Net"),
    _timm("resnest14d", "ResNeSt"),
    _timm("skresnet18", "SK-ResNet"),
    _timm("nf_resnet26", "NF-ResNet"),
    _timm("resnext26ts", "ResNeXt", 256),
    _timm("dla34", "DLA"),
    _timm("ese_vovnet19b_dw", "VoVNet"),
    _timm("selecsls42b", "SelecSLS"),
    _timm("gernet_s", "GENet"),
    _timm("inception_v3", "Inception", 299),
    _timm("xception41", "Xception", 299),
    _timm("vgg11", "VGG"),
    _tv("resnet18", "ResNet"),
    _tv("resnext50_32x4d", "ResNeXt"),
    _tv("mobilenet_v2", "MobileNetV2"),
    _tv("mobilenet_v3_small", "MobileNetV3"),
    _tv("efficientnet_b0", "EfficientNet"),
    _tv("mnasnet0_5", "MnasNet"),
    _tv("shufflenet_v2_x0_5", "ShuffleNetV2"),
    _tv("regnet_x_400mf", "RegNet"),
    _tv("densenet121", "DenseNet"),
    _tv("squeezenet1_0", "SqueezeNet"),
    _tv("googlenet", "Inception"),
    _tv("convnext_tiny", "ConvNeXt"),
)
"""Classification CNNs, at the input size each was trained at."""


class _Out(nn.Module):
    """A torchvision segmentation model returns {"out": map}; netopt adapts a tensor-valued model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)["out"]  # type: ignore[no-any-return]


def _conv_bn_relu(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class UNet(nn.Module):
    """A U-Net decoder on a timm encoder: upsample (bilinear, or a learned 2x2 transposed conv as
    in the original U-Net), concatenate the skip, two convs, per level."""

    def __init__(self, encoder: str = "resnet18", classes: int = 2, transposed: bool = False) -> None:
        super().__init__()
        self.encoder = import_timm().create_model(encoder, features_only=True, pretrained=False)
        chans = self.encoder.feature_info.channels()
        ups: list[nn.Module] = []
        blocks, c = [], chans[-1]
        for skip in reversed(chans[:-1]):
            up = nn.ConvTranspose2d(c, c // 2, 2, stride=2) if transposed else \
                nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False)
            ups.append(up)
            c_up = c // 2 if transposed else c
            blocks.append(nn.Sequential(_conv_bn_relu(c_up + skip, skip), _conv_bn_relu(skip, skip)))
            c = skip
        self.ups = nn.ModuleList(ups)
        self.decoder = nn.ModuleList(blocks)
        self.head = nn.Conv2d(c, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder(x)
        y = feats[-1]
        for up, block, skip in zip(self.ups, self.decoder, reversed(feats[:-1]), strict=True):
            y = block(torch.cat([up(y), skip], dim=1))
        return self.head(y)  # type: ignore[no-any-return]


class FPN(nn.Module):
    """torchvision's FeaturePyramidNetwork on a timm encoder, with a segmentation head on P2."""

    def __init__(self, encoder: str = "mobilenetv3_large_100", classes: int = 2) -> None:
        super().__init__()
        tv = import_torchvision()
        self.encoder = import_timm().create_model(encoder, features_only=True, pretrained=False,
                                                  out_indices=(1, 2, 3, 4))
        self.fpn = tv.ops.FeaturePyramidNetwork(self.encoder.feature_info.channels(), 64)
        self.head = nn.Conv2d(64, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        feats = self.encoder(x)
        pyramid = self.fpn({str(i): f for i, f in enumerate(feats)})
        return self.head(pyramid["0"])  # type: ignore[no-any-return]


def _segmentation(name: str) -> Callable[[], nn.Module]:
    def make() -> nn.Module:
        tv = import_torchvision()
        model = tv.models.get_model(name, weights=None, weights_backbone=None, num_classes=21, aux_loss=False)
        return _Out(model)
    return make


DENSE: tuple[Arch, ...] = (
    Arch("netopt", "unet_resnet18", "U-Net (timm encoder)", 256),
    Arch("netopt", "unet_convtranspose_resnet18", "U-Net (transposed convs, timm encoder)", 256),
    Arch("netopt", "fpn_mobilenetv3", "FPN (torchvision FPN on a timm encoder)", 256),
    _tv("deeplabv3_mobilenet_v3_large", "DeepLabV3", 256),
    _tv("lraspp_mobilenet_v3_large", "LR-ASPP", 256),
)
"""Dense prediction: a per-pixel output at (a fraction of) the input resolution."""

ARCHITECTURES: tuple[Arch, ...] = CLASSIFICATION + DENSE

_DENSE_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "unet_resnet18": UNet,
    "unet_convtranspose_resnet18": lambda: UNet(transposed=True),
    "fpn_mobilenetv3": FPN,
    "deeplabv3_mobilenet_v3_large": _segmentation("deeplabv3_mobilenet_v3_large"),
    "lraspp_mobilenet_v3_large": _segmentation("lraspp_mobilenet_v3_large"),
}


def build(arch: Arch) -> nn.Module:
    """The architecture with random weights, in eval mode."""
    if arch.name in _DENSE_BUILDERS:
        model = _DENSE_BUILDERS[arch.name]()
    elif arch.library == "timm":
        model = import_timm().create_model(arch.name, pretrained=False)
    else:
        extra = {"aux_logits": False, "init_weights": True} if arch.name == "googlenet" else {}
        model = import_torchvision().models.get_model(arch.name, weights=None, **extra)
    return model.eval()


def halved(net: Network) -> Network:
    """Every group at the largest valid width not above half its full width (the coverage check)."""
    return net.scaled(0.5)
