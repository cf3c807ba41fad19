"""The network being fine-tuned: a pretrained backbone, a new linear head, and which of its
parameters train under a protocol (full, linear probing, partial = the last k blocks).

Backbones: `fmnist` = the shipped Fashion-MNIST ResNet-20 (`tta.models.source`, 10
classes); `fmnist5` = a ResNet-20 trained the same way on Fashion-MNIST classes 0-4 only
(`pretrain.py`, shipped in `tta/robust/weights`), for the `fmnist-unseen` task; `auto` =
`fmnist` for digits, `fmnist5` for fmnist-unseen; anything else is a `tta-run --model` spec
(`timm:<name>`, `torchvision:<name>`, `<ckpt>,arch=`; `tta.models.zoo.load_model`).

Frozen parts stay in eval mode during training, so linear probing and partial fine-tuning
leave the frozen BatchNorm statistics (and every frozen weight) exactly as they were.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.models.resnet import ResNetCifar

AUTO = {"digits": "fmnist", "fmnist-unseen": "fmnist5"}


def resolve_backbone(backbone: str, task: str) -> str:
    return AUTO[task] if backbone == "auto" else backbone


def load_backbone(name: str, data_root: str | None = None) -> tuple[nn.Module, dict]:
    """The pretrained network `name` (eval mode) and an info dict for the model card."""
    if name == "fmnist":
        from tta.models.source import source_model

        model, checkpoint = source_model(data_root=data_root)
        return model, {
            "backbone": name,
            "pretrained_on": "fashion-mnist (10 classes)",
            "checkpoint": checkpoint["config"],
        }
    if name == "fmnist5":
        from tta.robust.finetune.pretrain import fmnist5_model

        model, checkpoint = fmnist5_model(data_root=data_root)
        return model, {
            "backbone": name,
            "pretrained_on": "fashion-mnist classes 0-4",
            "checkpoint": checkpoint["config"],
            "key": checkpoint["key"],
        }
    from tta.models.zoo import load_model

    model, info = load_model(name)
    return model.eval(), {"backbone": name, **{k: str(v) for k, v in info.items()}}


def new_head(model: nn.Module, num_classes: int, seed: int) -> nn.Module:
    """Replace the classifier by a fresh linear layer (initialised from `seed`)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        if isinstance(getattr(model, "fc", None), nn.Linear):
            model.fc = nn.Linear(model.fc.in_features, num_classes)
        elif hasattr(model, "reset_classifier"):  # timm
            model.reset_classifier(num_classes)
        else:
            raise ValueError(
                f"cannot find the classifier of {type(model).__name__}: fine-tuning needs a "
                "model with a linear `.fc` (ResNets) or timm's reset_classifier"
            )
    return model


def head_of(model: nn.Module) -> nn.Module:
    if isinstance(getattr(model, "fc", None), nn.Linear):
        return model.fc
    if hasattr(model, "get_classifier"):
        return model.get_classifier()
    raise ValueError(f"cannot find the classifier of {type(model).__name__}")


def blocks_of(model: nn.Module) -> list[nn.Module]:
    """The residual blocks in forward order (CIFAR ResNets and torchvision/timm ResNets)."""
    stages = [getattr(model, f"layer{i}", None) for i in range(1, 5)]
    stages = [s for s in stages if isinstance(s, nn.Sequential)]
    if not stages and hasattr(model, "blocks"):  # timm ViTs
        return list(model.blocks)
    if not stages:
        raise ValueError(
            f"partial fine-tuning needs residual stages layer1.. (ResNets) or .blocks (ViTs); "
            f"{type(model).__name__} has neither: use protocol full or linear"
        )
    return [block for stage in stages for block in stage]


def trainable_modules(model: nn.Module, protocol: str, last_k: int = 1) -> list[nn.Module]:
    """The modules that train: everything (full), the head (linear), or the last `last_k`
    blocks and the head (partial)."""
    if protocol == "full":
        return [model]
    head = head_of(model)
    if protocol == "linear":
        return [head]
    if protocol == "partial":
        blocks = blocks_of(model)
        if last_k > len(blocks):
            raise ValueError(f"last_k={last_k} but the backbone has {len(blocks)} blocks")
        return blocks[-last_k:] + [head]
    raise ValueError(f"unknown protocol {protocol!r}; known: full, linear, partial")


def prepare(model: nn.Module, protocol: str, last_k: int = 1) -> list[nn.Parameter]:
    """Freeze what the protocol keeps fixed; return the parameters to optimise."""
    modules = trainable_modules(model, protocol, last_k)
    model.requires_grad_(False)
    for module in modules:
        module.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def set_training(model: nn.Module, protocol: str, last_k: int = 1) -> None:
    """Train mode for the trainable modules only; frozen ones stay in eval mode."""
    model.eval()
    for module in trainable_modules(model, protocol, last_k):
        module.train()


def is_builtin_resnet(model: nn.Module) -> bool:
    return isinstance(model, ResNetCifar)
