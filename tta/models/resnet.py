"""CIFAR-style ResNet (He et al. 2016, section 4.2) with input normalization inside the model.

ResNet-20: 3 stages (16, 32, 64 channels) of 3 basic blocks, BatchNorm after every
convolution, 1x1-convolution shortcuts where the shape changes; about 0.27M parameters.
Data stays in [0, 1]; the model subtracts its dataset's mean and divides by its std.
"""

from __future__ import annotations

import torch
from torch import nn

FMNIST_MEAN = (0.2860, 0.2860, 0.2860)  # Fashion-MNIST training-set statistics at 28x28
FMNIST_STD = (0.3205, 0.3205, 0.3205)


class Normalize(nn.Module):
    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + self.shortcut(x))


class ResNetCifar(nn.Module):
    """ResNet-(6n+2) for 32x32 images; stages are `layer1..layer3` (GALA's blocks)."""

    def __init__(
        self,
        depth: int = 20,
        num_classes: int = 10,
        width: int = 16,
        mean: tuple[float, ...] = FMNIST_MEAN,
        std: tuple[float, ...] = FMNIST_STD,
    ) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 (20, 32, 44, 56), got {depth}")
        n = (depth - 2) // 6
        self.normalize = Normalize(mean, std)
        self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        stages, channels = [], width
        for index, out_channels in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for b in range(n):
                stride = 2 if index > 0 and b == 0 else 1
                blocks.append(BasicBlock(channels, out_channels, stride))
                channels = out_channels
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(self.normalize(x))))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.fc(torch.flatten(self.pool(out), 1))


def resnet20(num_classes: int = 10, **kwargs: object) -> ResNetCifar:
    return ResNetCifar(20, num_classes, **kwargs)
