"""`fmnist5`: a ResNet-20 trained on Fashion-MNIST classes 0-4 only, the backbone for the
`fmnist-unseen` task (classes 5-9), cached under a key of its configuration.

Training as the shipped source model (`tta.models.source.train`: SGD with Nesterov
momentum, one-cycle schedule, crop-4 and flip augmentation via `tta.models.source.augment`)
on the 30000 training images of classes 0-4, fewer epochs. Lookup order as
`tta.models.source`: the cache (`$TTA_CACHE/models/<key>.pt`), the checkpoint shipped in
`tta/robust/weights/`, else train now (`tta-robust finetune --pretrain-only`).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from tta.models.resnet import ResNetCifar
from tta.models.source import augment
from tta.progress import progress
from tta.robust.train import SHIPPED_DIR, cached_checkpoint, checkpoint_paths

__all__ = ["SHIPPED_DIR", "Pretrain5Config", "checkpoint_paths", "fmnist5_model", "train_fmnist5"]


@dataclass(frozen=True)
class Pretrain5Config:
    """Everything that determines the fmnist5 weights (its hash names the checkpoint)."""

    arch: str = "resnet20"
    classes: tuple[int, ...] = (0, 1, 2, 3, 4)
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def key(self) -> str:
        text = json.dumps(asdict(self), sort_keys=True)
        return f"{self.arch}-fmnist5-{hashlib.sha256(text.encode()).hexdigest()[:10]}"


def train_fmnist5(config: Pretrain5Config, data_root: str | None = None) -> dict:
    """Train as the module docstring says; returns a checkpoint dict."""
    from tta.data.fmnist import load_fmnist
    from tta.robust.finetune.tasks import seen_classes_train

    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    x_all, y_all = seen_classes_train(data_root)
    model = ResNetCifar(int(config.arch.removeprefix("resnet")), num_classes=len(config.classes))
    optimizer = torch.optim.SGD(
        model.parameters(),
        config.lr,
        config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    steps = len(y_all) // config.batch_size
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, config.lr, total_steps=config.epochs * steps, pct_start=0.15
    )
    start = time.time()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(y_all), generator=generator)
        bar = progress(range(steps), desc=f"fmnist5 epoch {epoch + 1}/{config.epochs}")
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = augment(x_all[index].float() / 255, generator)
            loss = F.cross_entropy(model(x), y_all[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    seconds = time.time() - start
    images, labels = load_fmnist("test", data_root)
    keep = torch.isin(torch.from_numpy(labels), torch.tensor(config.classes))
    x_test = torch.from_numpy(images).permute(0, 3, 1, 2)[keep]
    y_test = torch.from_numpy(labels)[keep]
    model.eval()
    with torch.no_grad():
        correct = sum(
            int((model(x_test[b : b + 500].float() / 255).argmax(1) == y_test[b : b + 500]).sum())
            for b in range(0, len(y_test), 500)
        )
    return {
        "state_dict": model.state_dict(),
        "config": asdict(config),
        "key": config.key(),
        "clean_accuracy": 100.0 * correct / len(y_test),
        "train_time_s": seconds,
    }


def fmnist5_model(
    config: Pretrain5Config | None = None, data_root: str | None = None, retrain: bool = False
) -> tuple[ResNetCifar, dict]:
    """The fmnist5 backbone (cached or shipped, else trained now) in eval mode."""
    config = config or Pretrain5Config()
    checkpoint = cached_checkpoint(config, lambda: train_fmnist5(config, data_root), retrain)
    model = ResNetCifar(int(config.arch.removeprefix("resnet")), num_classes=len(config.classes))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint
