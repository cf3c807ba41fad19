"""Target tasks and the `tta-robust finetune` flags: digits as 32x32 images split by seed,
every config field reachable from the command line."""

from __future__ import annotations

import argparse

import torch

from tta.robust.finetune import FinetuneConfig, load_task
from tta.robust.finetune.command import add_parser, config_from
from tta.robust.finetune.tasks import digits_to_images


def test_digits_are_32x32_in_unit_range_and_split_by_seed() -> None:
    a, b, c = load_task("digits", 0), load_task("digits", 0), load_task("digits", 1)
    assert a.num_classes == 10 and a.sizes() == {"train": 1078, "val": 359, "test": 360}
    x, y = a.train
    assert x.shape[1:] == (3, 32, 32) and 0 <= float(x.min()) and float(x.max()) <= 1
    assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey as RGB
    assert float(x[:, :, :2].abs().sum()) == 0 and float(x[:, :, :, -2:].abs().sum()) == 0
    assert torch.equal(a.test[0], b.test[0]) and not torch.equal(a.test[0], c.test[0])
    assert sorted(torch.bincount(a.test[1]).tolist())[0] >= 35  # stratified: ~36 per class
    capped = load_task("digits", 0, n_train=10, n_val=5, n_test=7)
    assert capped.sizes() == {"train": 10, "val": 5, "test": 7}


def test_digit_upsampling_keeps_the_picture() -> None:
    pixels = torch.zeros(1, 64)
    pixels[0, 3 * 8 + 4] = 16.0  # one bright pixel at row 3, column 4 of 8
    image = digits_to_images(pixels.numpy())[0, 0]
    row, col = divmod(int(image.argmax()), 32)
    assert abs(row - (2 + 3.5 * 3.5)) <= 2 and abs(col - (2 + 4.5 * 3.5)) <= 2


def test_every_config_field_has_a_flag() -> None:
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        [
            "finetune",
            "--task",
            "fmnist-unseen",
            "--eps",
            "8/255",
            "--t1",
            "12",
            "--t2",
            "37",
            "--epochs",
            "50",
            "--n-train",
            "none",
            "--val-steps",
            "3",
            "--schedule",
            "auto",
        ]
    )
    config = config_from(args)
    assert config == FinetuneConfig(
        task="fmnist-unseen",
        eps=8 / 255,
        t1=12,
        t2=37,
        epochs=50,
        n_train=None,
        val_steps=3,
        schedule="auto",
    )
