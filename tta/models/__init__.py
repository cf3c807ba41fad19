"""Models: the built-in CIFAR-style ResNet and its source training."""

from tta.models.resnet import ResNetCifar, resnet20

__all__ = ["ResNetCifar", "resnet20"]
