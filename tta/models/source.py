"""Train the built-in source model on Fashion-MNIST, cached under a key of its configuration.

Lookup order for a configuration: the cache (`$TTA_CACHE/models`), then the checkpoint that
ships with the package (trained here with `tta-train`, same key), else train it now.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from tta.data.fmnist import load_fmnist
from tta.models.resnet import ResNetCifar
from tta.paths import cache_dir
from tta.progress import progress

SHIPPED_DIR = Path(__file__).parent / "weights"


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines the trained weights (its hash names the checkpoint)."""

    arch: str = "resnet20"
    dataset: str = "fmnist"
    epochs: int = 4
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    augment: str = "crop4+flip"
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.arch}-{self.dataset}-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def build_model(config: TrainConfig) -> ResNetCifar:
    if not config.arch.startswith("resnet"):
        raise ValueError(f"unknown arch {config.arch!r}; known: resnet20, resnet32, resnet44, ...")
    return ResNetCifar(int(config.arch.removeprefix("resnet")), num_classes=10)


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random 4-pixel-padded crop and horizontal flip, per image."""
    n, _, h, w = images.shape
    padded = F.pad(images, (4, 4, 4, 4))
    dy = torch.randint(0, 9, (n,), generator=generator)
    dx = torch.randint(0, 9, (n,), generator=generator)
    out = torch.stack([padded[i, :, dy[i] : dy[i] + h, dx[i] : dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(3)
    return out


@torch.no_grad()
def accuracy(model: torch.nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    """Top-1 accuracy (%) of `model` in eval mode on uint8 NHWC images."""
    model.eval()
    correct = 0
    for start in range(0, len(images), 500):
        x = torch.from_numpy(images[start : start + 500]).permute(0, 3, 1, 2).float() / 255
        correct += (model(x).argmax(1).numpy() == labels[start : start + 500]).sum()
    return float(100.0 * correct / len(images))


def train(config: TrainConfig, data_root: str | None = None) -> dict:
    """SGD with momentum, one-cycle cosine schedule; returns a checkpoint dict."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = load_fmnist("train", data_root)
    test_images, test_labels = load_fmnist("test", data_root)
    model = build_model(config).to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    steps_per_epoch = max(1, len(images) // config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps_per_epoch, pct_start=0.15
    )
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    y_all = torch.from_numpy(labels)
    start = time.time()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        bar = progress(range(steps_per_epoch), desc=f"train epoch {epoch + 1}/{config.epochs}")
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = augment(x_all[index].float() / 255, generator)
            loss = F.cross_entropy(
                model(x.contiguous(memory_format=torch.channels_last)), y_all[index]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model = model.to(memory_format=torch.contiguous_format)
    clean = accuracy(model, test_images, test_labels)
    return {
        "state_dict": model.state_dict(),
        "config": asdict(config),
        "clean_accuracy": clean,
        "train_time_s": time.time() - start,
    }


def checkpoint_paths(config: TrainConfig) -> list[Path]:
    name = f"{config.key()}.pt"
    return [cache_dir() / "models" / name, SHIPPED_DIR / name]


def load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise RuntimeError(
            f"cannot read the model checkpoint {path} ({error}); delete it and run `tta-train` "
            "to train it again"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RuntimeError(f"{path} is not a tta checkpoint; delete it and run `tta-train`")
    return checkpoint


def source_model(
    config: TrainConfig | None = None, data_root: str | None = None, retrain: bool = False
) -> tuple[ResNetCifar, dict]:
    """The trained source model for `config` (loaded if cached or shipped, else trained)."""
    config = config or TrainConfig()
    cache_path = checkpoint_paths(config)[0]
    existing = [p for p in checkpoint_paths(config) if p.exists()]
    if existing and not retrain:
        checkpoint = load_checkpoint(existing[0])
    else:
        checkpoint = train(config, data_root)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(checkpoint, cache_path)
    model = build_model(config)
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
