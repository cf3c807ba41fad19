"""Shared test fixtures: tiny models and tiny data made here, never downloaded."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

torch.set_num_threads(1)


class TinyNet(nn.Module):
    """Conv -> BN -> ReLU -> conv -> BN -> pool -> linear: small, with BatchNorm."""

    def __init__(self, num_classes: int = 5, channels: int = 3) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 6, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn2(self.conv2(out)))
        return self.fc(out.mean((2, 3)))


class NoNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.fc = nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x).mean((2, 3)))


def make_tiny_net(seed: int = 0) -> TinyNet:
    """A TinyNet whose BatchNorm running statistics are not the identity (as a trained model)."""
    torch.manual_seed(seed)
    model = TinyNet()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


@pytest.fixture
def tiny_net() -> TinyNet:
    return make_tiny_net()


@pytest.fixture
def images() -> torch.Tensor:
    return torch.rand(16, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def fake_fmnist(directory, n_train: int = 120, n_test: int = 60, seed: int = 0) -> None:
    """Write a tiny Fashion-MNIST look-alike (IDX .gz) with class-dependent bright bars."""
    from tta.data.fmnist import FILES, write_idx

    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 60, (n, 28, 28)).astype(np.uint8)
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label : 5 + 2 * label, 4:24] = 220
        images_name, labels_name = FILES[split]
        write_idx(directory / images_name, images)
        write_idx(directory / labels_name, labels)


@pytest.fixture
def fmnist_root(tmp_path, monkeypatch):
    """A data root holding a tiny fake Fashion-MNIST, with tta's cache inside tmp_path."""
    root = tmp_path / "data"
    fake_fmnist(root / "fashion-mnist")
    monkeypatch.setenv("TTA_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TTA_DATA", raising=False)
    monkeypatch.setenv("TTA_QUIET", "1")
    return root
