"""A small ResNet (He et al. 2016) with basic blocks, CIFAR-style: ResNet-8/14/20..."""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["ResNet", "resnet_small"]


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.downsample: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out += self.downsample(x)
        return self.relu(out)


class ResNet(nn.Module):
    """`blocks` basic blocks per stage, stages of `widths` channels (stride 2 between stages)."""

    def __init__(self, blocks: int = 1, widths: tuple[int, ...] = (16, 32, 64),
                 num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0]), nn.ReLU()
        )
        stages, c = [], widths[0]
        for i, w in enumerate(widths):
            stage = [BasicBlock(c if j == 0 else w, w, 2 if (i > 0 and j == 0) else 1) for j in range(blocks)]
            stages.append(nn.Sequential(*stage))
            c = w
        self.layers = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.pool(self.layers(self.stem(x))).flatten(1))


def resnet_small(depth: int = 8, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """CIFAR ResNet of `depth` = 6n + 2 layers (ResNet-8: n=1, ResNet-20: n=3)."""
    if (depth - 2) % 6:
        raise ValueError(f"depth {depth} is not 6n + 2 (8, 14, 20, 32, ...); pick one of those")
    return ResNet((depth - 2) // 6, num_classes=num_classes, in_channels=in_channels)
