"""Source training for DomainBed: ERM fine-tuning of a given model on the source domains.

DomainBed's ERM defaults (Gulrajani & Lopez-Paz, ICLR 2021): Adam, lr 5e-5, no weight decay,
a minibatch of 32 images from every source domain per step (concatenated), 5000 steps, 20%
of each source domain held out for training-domain validation, and the training
augmentation RandomResizedCrop(224, scale 0.7-1) + horizontal flip + ColorJitter(0.3 each)
+ RandomGrayscale. One difference: the crop is taken from the image already resized to
224x224 (the stream's input) rather than from the original file. With `eval_every`, the
weights with the best held-out accuracy are kept (training-domain validation within a run).
"""

from __future__ import annotations

import copy
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2 as T
from torch import nn

from tta.data.domainbed import DomainBed
from tta.progress import progress


@dataclass(frozen=True)
class TrainConfig:
    """DomainBed's ERM hyperparameters."""

    steps: int = 5000
    batch_size: int = 32  # per source domain
    lr: float = 5e-5
    weight_decay: float = 0.0
    holdout: float = 0.2
    eval_every: int | None = None
    augment: bool = True
    seed: int = 0


def augmentation(size: int) -> T.Compose:
    return T.Compose(
        [
            T.RandomResizedCrop(size, scale=(0.7, 1.0), antialias=True),
            T.RandomHorizontalFlip(),
            T.ColorJitter(0.3, 0.3, 0.3, 0.3),
            T.RandomGrayscale(),
        ]
    )


def split(n: int, holdout: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded `holdout` fraction of the domain is held out."""
    order = rng.permutation(n)
    cut = int(n * holdout)
    return np.sort(order[cut:]), np.sort(order[:cut])


def to_float(images: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(images).to(device).permute(0, 3, 1, 2).float().div_(255)


@torch.no_grad()
def accuracy(
    model: nn.Module, images, labels: np.ndarray, rows: np.ndarray, device: torch.device
) -> float:
    """Top-1 accuracy (%) in eval mode on the images at positions `rows`."""
    model.eval()
    correct = 0
    for start in range(0, len(rows), 64):
        index = rows[start : start + 64]
        logits = model(to_float(images[index], device))
        correct += int((logits.argmax(1).cpu().numpy() == labels[index]).sum())
    return 100.0 * correct / max(1, len(rows))


def train_source(
    model: nn.Module,
    benchmark: DomainBed,
    config: TrainConfig | None = None,
    device: torch.device | str = "cpu",
) -> dict:
    """Fine-tune `model` in place on `benchmark`'s source domains; returns a training record.

    The record holds the configuration, the source domains, the held-out accuracy per source
    domain and the time taken. The model is returned to eval mode.
    """
    config = config or TrainConfig()
    device = torch.device(device)
    benchmark.check_model(model)
    sources = benchmark.source_domains()
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    data = {}
    for domain in sources:
        images, labels = benchmark.images(domain)
        train, held = split(len(labels), config.holdout, rng)
        data[domain] = (images, labels, train, held)
    augment = augmentation(benchmark.image_size) if config.augment else None
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    model.to(device)
    best: tuple[float, dict] | None = None
    start = time.perf_counter()
    bar = progress(range(config.steps), desc=f"train {benchmark.dataset} -{benchmark.target}")
    for step in bar:
        model.train()
        xs, ys = [], []
        for images, labels, train, _ in data.values():
            index = np.sort(rng.choice(train, min(config.batch_size, len(train)), replace=False))
            batch = torch.from_numpy(images[index]).permute(0, 3, 1, 2)
            if augment is not None:
                batch = torch.stack([augment(image) for image in batch])
            xs.append(batch.to(device).float().div_(255))
            ys.append(torch.from_numpy(labels[index]).to(device))
        loss = F.cross_entropy(model(torch.cat(xs)), torch.cat(ys))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
        last = step + 1 == config.steps
        if config.eval_every and ((step + 1) % config.eval_every == 0 or last):
            score = _held_out(model, data, device)["mean"]
            if best is None or score > best[0]:
                best = (score, copy.deepcopy(model.state_dict()))
    if best is not None:
        model.load_state_dict(best[1])
    held_out = _held_out(model, data, device)
    model.eval()
    return {
        "config": asdict(config),
        "dataset": benchmark.dataset,
        "target": benchmark.target,
        "source_domains": list(sources),
        "held_out_accuracy": held_out,
        "train_time_s": time.perf_counter() - start,
    }


def _held_out(model: nn.Module, data: dict, device: torch.device) -> dict[str, float]:
    scores = {
        domain: accuracy(model, images, labels, held, device) if len(held) else float("nan")
        for domain, (images, labels, _, held) in data.items()
    }
    return {**scores, "mean": float(np.nanmean(list(scores.values())))}
