"""Robust fine-tuning runs: linear probing leaves the backbone bit-identical, partial
fine-tuning only its last block, a run killed mid-epoch resumes from its last checkpoint
to the same weights, outputs and the on_epoch contract (an exception stops the run)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tta.models.resnet import ResNetCifar
from tta.robust.finetune import FinetuneConfig, TaskData, finetune

EPS = 8 / 255
CONFIG = FinetuneConfig(
    objective="at",
    eps=EPS,
    schedule="auto",
    patience=1,
    tolerance=0.5,
    epochs=4,
    batch_size=8,
    lr=0.01,
    warmup_epochs=1,
    augment="crop+flip",
    train_steps=3,
    eval_steps=3,
)


def tiny_net() -> ResNetCifar:
    torch.manual_seed(0)
    return ResNetCifar(depth=8, num_classes=10, width=4)


def split(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """8x8 images whose class is the brighter half (left/right), with noise."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 + 0.2 * torch.rand(n, 3, 8, 8, generator=g)
    x[y == 0, :, :, :4] += 0.3
    x[y == 1, :, :, 4:] += 0.3
    return x.clamp(0, 1), y


def tiny_data() -> TaskData:
    return TaskData("halves", 2, split(32, 0), split(16, 1), split(16, 2))


def backbone_state(model: torch.nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("fc.")}


def test_linear_probing_leaves_the_backbone_bit_identical() -> None:
    model = tiny_net()
    before = backbone_state(model)
    config = FinetuneConfig(**{**CONFIG.to_dict(), "protocol": "linear", "schedule": "fixed"})
    result = finetune(config, data=tiny_data(), model=model)
    after = backbone_state(result.model)
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BN statistics
    assert result.model.fc.out_features == 2
    assert all(h["attacked_steps"] == 4 for h in result.history)  # fixed: attacked throughout


def test_partial_trains_only_the_last_block_and_the_head() -> None:
    model = tiny_net()
    before = backbone_state(model)
    config = FinetuneConfig(**{**CONFIG.to_dict(), "protocol": "partial", "last_k": 1})
    after = backbone_state(finetune(config, data=tiny_data(), model=model).model)
    changed = {
        k.split(".")[0] + "." + k.split(".")[1]
        for k in before
        if not torch.equal(before[k], after[k])
    }
    assert changed == {"layer3.0"}  # depth 8: one block per stage; the last is layer3.0


KILLED_RUN = """
import os, signal, sys
import torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
import test_finetune_train as t
import tta.robust.finetune.trainer as trainer
real, calls = trainer.objective_loss, [0]
def dying(*args, **kwargs):
    calls[0] += 1
    if calls[0] == {kill_at}:  # mid-epoch: SIGKILL, nothing runs after it
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*args, **kwargs)
trainer.objective_loss = dying
trainer.finetune(t.CONFIG, {out!r}, data=t.tiny_data(), model=t.tiny_net())
"""


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path) -> None:
    whole = finetune(CONFIG, tmp_path / "whole", data=tiny_data(), model=tiny_net())
    out = tmp_path / "killed"
    script = KILLED_RUN.format(tests=str(Path(__file__).parent), kill_at=4 * 2 + 2, out=str(out))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env={"OMP_NUM_THREADS": "1", "TTA_QUIET": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]  # killed, not finished
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 2 and not (out / "results.json").exists()
    resumed = finetune(CONFIG, out, data=tiny_data(), model=tiny_net())
    assert resumed.resumed_at_epoch == 2
    assert resumed.schedule["found_t1"] == whole.schedule["found_t1"] == 2.0  # auto's plateau
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # bit for bit
    strip = [{k: v for k, v in h.items() if k != "time_s"} for h in whole.history]
    assert strip == [{k: v for k, v in h.items() if k != "time_s"} for h in resumed.history]
    assert resumed.test == {**whole.test, "seconds": resumed.test["seconds"]}
    results = json.loads((out / "results.json").read_text())
    assert results["resumed_at_epoch"] == 2 and len(results["history"]) == 4
    assert (
        (out / "model.pt").exists() and (out / "card.md").exists() and (out / "curves.png").exists()
    )


def test_on_epoch_can_stop_the_run_and_another_config_is_refused(tmp_path: Path) -> None:
    class Pruned(Exception):
        pass

    seen = []

    def prune_after_first(log: dict) -> None:
        seen.append(log)
        raise Pruned

    with pytest.raises(Pruned):
        finetune(CONFIG, tmp_path, prune_after_first, data=tiny_data(), model=tiny_net())
    assert [log["epoch"] for log in seen] == [1]
    assert {"eps", "val_clean", "val_adv", "val_expected", "val_loss", "train_loss"} <= seen[
        0
    ].keys()
    assert seen[0]["eps"] == 0.0 and seen[0]["attacked_steps"] == 0  # auto: clean until T1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["epoch"] == 1
    other = FinetuneConfig(**{**CONFIG.to_dict(), "lr": 0.02})
    with pytest.raises(ValueError, match=r"another configuration .*'lr'"):
        finetune(other, tmp_path, data=tiny_data(), model=tiny_net())
