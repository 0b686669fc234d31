"""The real model libraries netopt is measured against (timm, torchvision, Ultralytics,
segmentation_models_pytorch) and the lists of architectures the coverage suite and
`benchmarks/bench_coverage.py` trace.

All four are test-only peers: `make test` installs them with `--no-deps`, since each asks for a
torch or torchvision that would replace the CPU torch with a CUDA build, and Ultralytics asks for
packages its model code never imports (polars, psutil, thop, GUI OpenCV); the Makefile's PEERS
names the few they do need. Only this module imports them, lazily. torchvision's wheel is a CUDA
build whose compiled ops do not load beside the CPU torch; its Python model code does, once the
schemas of the two operators its import registers fake kernels for (`torchvision::nms`,
`torchvision::qnms`) exist. `import_torchvision` defines them in a torch.library FRAGMENT when,
and only when, torchvision's own library did not: classification and segmentation models then
build and run; detection post-processing does not.

No weights are ever downloaded: every model is built with random initialization, Ultralytics'
detectors from the yaml files inside the package.
"""

from __future__ import annotations

import importlib
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch
from torch import Tensor, nn

from netopt.ir import Network

__all__ = ["Arch", "CLASSIFICATION", "DENSE", "ARCHITECTURES", "EDGE", "REFUSED", "import_torchvision", "import_timm",
           "import_ultralytics", "import_smp", "build", "halved"]

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


def import_ultralytics() -> ModuleType:
    """Ultralytics, its settings file (written when it is imported) in a temporary directory
    unless YOLO_CONFIG_DIR already names one."""
    import_torchvision()
    if "YOLO_CONFIG_DIR" not in os.environ:
        os.environ["YOLO_CONFIG_DIR"] = tempfile.mkdtemp(prefix="netopt-ultralytics-")
    return importlib.import_module("ultralytics")


def import_smp() -> ModuleType:
    """segmentation_models_pytorch (its encoders come from timm and torchvision)."""
    import_timm()
    return importlib.import_module("segmentation_models_pytorch")


@dataclass(frozen=True)
class Arch:
    """One architecture: its library, its name there, its family and its native input size.

    >>> [(arch.id, arch.size) for arch in EDGE if arch.family == "YOLOv8"]
    [('ultralytics:yolov8n', 320)]
    """

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
"""The classic CNNs: classification and dense prediction."""


def _yolo(name: str, family: str) -> Arch:
    return Arch("ultralytics", name, family, 320)


def _smp(name: str, family: str) -> Arch:
    return Arch("smp", name, family, 256)


EDGE: tuple[Arch, ...] = (
    _timm("mobilenetv4_conv_small", "MobileNetV4"),
    _timm("mobilenetv4_hybrid_medium", "MobileNetV4 (hybrid)", 256),
    _timm("repvit_m0_9", "RepViT"),
    _timm("ghostnetv2_100", "GhostNetV2"),
    _timm("ghostnetv3_100", "GhostNetV3"),
    _timm("fastvit_t8", "FastViT", 256),
    _timm("fastvit_mci0", "FastViT (MobileCLIP)", 256),
    _timm("efficientvit_b0", "EfficientViT (MIT)"),
    _timm("efficientvit_m0", "EfficientViT (MSRA)"),
    _timm("mobilevit_xxs", "MobileViT", 256),
    _timm("mobilevitv2_050", "MobileViTV2", 256),
    _timm("levit_128s", "LeViT"),
    _timm("tiny_vit_5m_224", "TinyViT"),
    _timm("deit_tiny_patch16_224", "DeiT"),
    _timm("vit_tiny_patch16_224", "ViT"),
    _timm("efficientformer_l1", "EfficientFormer"),
    _timm("efficientformerv2_s0", "EfficientFormerV2"),
    _timm("swiftformer_xs", "SwiftFormer"),
    _timm("shvit_s1", "SHViT"),
    _timm("poolformer_s12", "PoolFormer"),
    _timm("poolformerv2_s12", "PoolFormerV2"),
    _timm("convnextv2_atto", "ConvNeXtV2"),
    _timm("mambaout_femto", "MambaOut"),
    _timm("hgnetv2_b0", "HGNetV2"),
    _timm("edgenext_xx_small", "EdgeNeXt", 256),
    _timm("starnet_s1", "StarNet"),
    _timm("fasternet_t0", "FasterNet"),
    _timm("pvt_v2_b0", "PVTv2"),
    _timm("swin_tiny_patch4_window7_224", "Swin"),
    _timm("inception_next_atto", "InceptionNeXt"),
    _timm("rdnet_tiny", "RDNet"),
    _yolo("yolov5nu", "YOLOv5u"),
    _yolo("yolov8n", "YOLOv8"),
    _yolo("yolov10n", "YOLOv10"),
    _yolo("yolo11n", "YOLO11"),
    _yolo("yolo26n", "YOLO26"),
    _smp("Unet", "U-Net (smp)"),
    _smp("UnetPlusPlus", "U-Net++"),
    _smp("FPN", "FPN (smp)"),
    _smp("DeepLabV3", "DeepLabV3 (smp)"),
    _smp("DeepLabV3Plus", "DeepLabV3+"),
    _smp("MAnet", "MA-Net"),
    _smp("PAN", "PAN"),
    _smp("PSPNet", "PSPNet"),
    _smp("Linknet", "LinkNet"),
    _smp("UPerNet", "UPerNet"),
    _smp("Segformer", "SegFormer"),
)
"""Efficient and hybrid vision models deployed at the edge today (issue 31): timm's at the input
size of their `pretrained_cfg`, Ultralytics' nano detectors from their yaml at 320 px,
segmentation_models_pytorch networks (ResNet-18 encoder, SegFormer's own MiT-B0; 2 classes)
at 256 px."""

REFUSED: dict[str, str] = {
    "timm:resnest14d": "a sum over dims other than those of torch.stack(xs).sum(0)",  # split attention
    "timm:skresnet18": "'stack'",  # selective kernels stack branch outputs on a new dim
    "timm:nf_resnet26": "'stem.conv.gain'",  # weight standardization computes each conv's weight
    "smp:MAnet": "'decoder.center.map_softmax'",  # a softmax over the whole flattened map
}
"""What netopt still refuses, by architecture id: the op (as its one-line refusal names it) that
stops the trace. The coverage suite checks every other architecture end to end, and these for
that refusal; updated when an architecture goes through (or, wrongly, stops):
`python benchmarks/bench_coverage.py --refused` prints it as netopt treats the lists today."""

_DENSE_BUILDERS: dict[str, Callable[[], nn.Module]] = {
    "unet_resnet18": UNet,
    "unet_convtranspose_resnet18": lambda: UNet(transposed=True),
    "fpn_mobilenetv3": FPN,
    "deeplabv3_mobilenet_v3_large": _segmentation("deeplabv3_mobilenet_v3_large"),
    "lraspp_mobilenet_v3_large": _segmentation("lraspp_mobilenet_v3_large"),
}


def _from_timm(arch: Arch) -> nn.Module:
    return import_timm().create_model(arch.name, pretrained=False)  # type: ignore[no-any-return]


def _from_torchvision(arch: Arch) -> nn.Module:
    extra = {"aux_logits": False, "init_weights": True} if arch.name == "googlenet" else {}
    return import_torchvision().models.get_model(arch.name, weights=None, **extra)  # type: ignore[no-any-return]


def _from_ultralytics(arch: Arch) -> nn.Module:
    import_ultralytics()
    tasks = importlib.import_module("ultralytics.nn.tasks")
    return tasks.DetectionModel(f"{arch.name}.yaml", verbose=False)  # type: ignore[no-any-return]


_SMP_ENCODERS = {"Segformer": "mit_b0"}
"""The encoder of each smp network when not ResNet-18: SegFormer's own Mix Transformer."""


def _from_smp(arch: Arch) -> nn.Module:
    network = getattr(import_smp(), arch.name)
    return network(encoder_name=_SMP_ENCODERS.get(arch.name, "resnet18"),  # type: ignore[no-any-return]
                   encoder_weights=None, classes=2)


_BUILDERS: dict[str, Callable[[Arch], nn.Module]] = {
    "timm": _from_timm,
    "torchvision": _from_torchvision,
    "ultralytics": _from_ultralytics,
    "smp": _from_smp,
}


def build(arch: Arch) -> nn.Module:
    """The architecture with random weights, in eval mode."""
    model = _DENSE_BUILDERS[arch.name]() if arch.name in _DENSE_BUILDERS else _BUILDERS[arch.library](arch)
    return model.eval()


def halved(net: Network) -> Network:
    """Every group at the largest valid width not above half its full width (the coverage check)."""
    return net.scaled(0.5)
