"""An adversarially trained Fashion-MNIST ResNet-20, cached under a key of its configuration.

FGSM with a random start ("FGSM-RS", Wong, Rice & Kolter, "Fast is better than free:
Revisiting adversarial training", ICLR 2020; code locuslab/fast_adversarial): per batch,
`delta ~ U(-eps, eps)`, one signed-gradient step of `alpha = 1.25 eps`, projected onto the
eps-ball and [0, 1], then a training step on `x + delta`; the model stays in train mode
during the attack, as their code. `method='pgd'` uses PGD (`pgd_steps`, step
`2.5 eps / steps`, random start) instead (Madry et al. 2018). SGD with Nesterov momentum
0.9, weight decay 5e-4, a triangular learning-rate cycle (linear up over the first 40% of
steps, down to 0), crop-4 and flip augmentation as the source model.

Deviations, for a CPU: it starts from the shipped source model (`init='source'`;
'scratch' trains from random weights) and each epoch sees `n_train` images drawn from the
60000 (a fresh random subset per epoch), so it runs in minutes (`tta-robust train-robust`).

Lookup order, as `tta.models.source`: the cache (`$TTA_CACHE/models/<key>.pt`), the
checkpoint shipped in `tta/robust/weights/`, else train now.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from tta.data.fmnist import load_fmnist
from tta.models.resnet import ResNetCifar
from tta.models.source import TrainConfig, accuracy, augment, build_model, source_model
from tta.paths import cache_dir
from tta.progress import progress
from tta.robust.pgd import pgd

SHIPPED_DIR = Path(__file__).parent / "weights"
METHODS = ("fgsm-rs", "pgd")
INITS = ("source", "scratch")


@dataclass(frozen=True)
class RobustTrainConfig:
    """Everything that determines the robust weights (its hash names the checkpoint)."""

    arch: str = "resnet20"
    dataset: str = "fmnist"
    method: str = "fgsm-rs"
    eps: float = 8 / 255
    alpha: float = 1.25  # FGSM-RS step, in units of eps
    pgd_steps: int = 7
    init: str = "source"
    epochs: int = 2
    n_train: int = 15000  # images per epoch
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; known: {', '.join(INITS)}")
        if self.epochs < 1 or self.n_train < self.batch_size or self.eps <= 0:
            raise ValueError("need epochs >= 1, n_train >= batch_size and eps > 0")

    def key(self) -> str:
        fields = asdict(self)
        if self.init == "source":
            fields["init"] = TrainConfig().key()  # a new source model is a new robust model
        text = json.dumps(fields, sort_keys=True)
        digest = hashlib.sha256(text.encode()).hexdigest()[:10]
        return f"{self.arch}-{self.dataset}-{self.method}-{digest}"


def fgsm_rs(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    alpha: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """Wong et al.'s FGSM-RS example: uniform start, one step of `alpha`, projected."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    delta = ((x + delta).clamp(0, 1) - x).requires_grad_(True)
    loss = F.cross_entropy(model(x + delta), y)
    (grad,) = torch.autograd.grad(loss, delta)
    delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
    return (x + delta).clamp(0, 1).detach()


def triangle(step: int, total: int, peak: float = 0.4) -> float:
    """Learning-rate factor: linear 0 -> 1 over the first `peak` of the steps, then -> 0."""
    t = step / max(total, 1)
    return t / peak if t < peak else max(0.0, (1 - t) / (1 - peak))


def train_robust(config: RobustTrainConfig, data_root: str | None = None) -> dict:
    """Adversarial training as the module docstring says; returns a checkpoint dict."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    images, labels = load_fmnist("train", data_root)
    test_images, test_labels = load_fmnist("test", data_root)
    if config.init == "source":
        model = source_model(TrainConfig(), data_root)[0]
    else:
        model = build_model(TrainConfig(arch=config.arch))
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )
    steps_per_epoch = min(config.n_train, len(images)) // config.batch_size
    total = config.epochs * steps_per_epoch
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: triangle(s, total))
    x_all = torch.from_numpy(images).permute(0, 3, 1, 2)
    y_all = torch.from_numpy(labels)
    start = time.time()
    for epoch in range(config.epochs):
        model.train()
        order = torch.randperm(len(images), generator=generator)
        bar = progress(range(steps_per_epoch), desc=f"robust epoch {epoch + 1}/{config.epochs}")
        for step in bar:
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            x = augment(x_all[index].float() / 255, generator)
            y = y_all[index]
            if config.method == "fgsm-rs":
                x_adv = fgsm_rs(model, x, y, config.eps, config.alpha * config.eps, generator)
            else:
                x_adv = _pgd_train_example(model, x, y, config, epoch * steps_per_epoch + step)
            loss = F.cross_entropy(model(x_adv), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            if step % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = time.time() - start
    return {
        "state_dict": model.state_dict(),
        "config": asdict(config),
        "key": config.key(),
        "clean_accuracy": accuracy(model, test_images, test_labels),
        "train_time_s": train_seconds,
    }


def _pgd_train_example(
    model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, config: RobustTrainConfig, seed: int
) -> torch.Tensor:
    """PGD example for training: the model attacked in eval mode (`tta.robust.state`), its
    last iterate kept (Madry et al.)."""
    result = pgd(model, x, y, config.eps, steps=config.pgd_steps, early_stop=False, seed=seed)
    return result.x_adv


def checkpoint_paths(config) -> list[Path]:
    """Where the checkpoint of `config` (anything with a `key()`) is looked up, in order:
    the cache, then the weights shipped in the package."""
    name = f"{config.key()}.pt"
    return [cache_dir() / "models" / name, SHIPPED_DIR / name]


def cached_checkpoint(config, train: Callable[[], dict], retrain: bool = False) -> dict:
    """The checkpoint of `config` from `checkpoint_paths`, else `train()`, saved to the cache."""
    existing = [p for p in checkpoint_paths(config) if p.exists()]
    if existing and not retrain:
        return load_checkpoint(existing[0])
    checkpoint = train()
    path = checkpoint_paths(config)[0]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(checkpoint, path)
    return checkpoint


def robust_model(
    config: RobustTrainConfig | None = None, data_root: str | None = None, retrain: bool = False
) -> tuple[ResNetCifar, dict]:
    """The robust model for `config` (cached or shipped, else trained now) in eval mode."""
    config = config or RobustTrainConfig()
    checkpoint = cached_checkpoint(config, lambda: train_robust(config, data_root), retrain)
    model = build_model(TrainConfig(arch=config.arch))
    model.load_state_dict(checkpoint["state_dict"])
    return model.eval(), checkpoint


def load_checkpoint(path: Path) -> dict:
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # a truncated or foreign file
        raise RuntimeError(
            f"cannot read {path} ({error}); delete it and run `tta-robust train-robust`"
        ) from error
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise RuntimeError(f"{path} is not a tta checkpoint; delete it and retrain")
    return checkpoint
