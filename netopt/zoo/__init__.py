"""netopt's own model zoo: MobileNetV1 (width and resolution multipliers), MobileNetV2, ResNet.

Weights are never downloaded: models start random, and netopt trains and caches its own.
"""

from netopt.zoo.mobilenet import MobileNetV1, MobileNetV2, make_divisible
from netopt.zoo.resnet import ResNet, resnet_small

__all__ = ["MobileNetV1", "MobileNetV2", "ResNet", "make_divisible", "resnet_small"]
