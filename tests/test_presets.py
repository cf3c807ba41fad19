"""Presets: `--method` fills the settings, explicit flags win (argument parsing only)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from tta.cli import run_main, run_parser, to_config
from tta.harness.config import resolve
from tta.harness.setup import source_data
from tta.presets import FAMILIES, PRESETS, Preset, family_of, methods, preset
from tta.registry import LOSSES

ISSUE_4_METHODS = ["tent", "eta", "eata", "sar", "pl", "shot-im", "shot", "cotta", "deyo", "lame"]


def resolved(*argv: str):
    return resolve(to_config(run_parser().parse_args(list(argv))))


def test_without_method_the_defaults_are_unchanged():
    args = resolved()
    assert (args.loss, args.optimizer, args.lr, args.momentum, args.batch_size) == (
        "tent",
        "adam",
        1e-3,
        0.9,
        200,
    )
    assert args.params is None and args.loss_options == {} and args.preset_family is None
    args = resolved("--loss", "tent", "--selector", "gala")
    assert (args.loss, args.selector, args.lr, args.batch_size) == ("tent", "gala", 1e-3, 200)


def test_method_fills_loss_optimizer_and_options_from_the_benchmark_family():
    args = resolved("--method", "eata")  # fmnist-c -> cifar
    assert args.preset_family == "cifar" and args.loss == "eata"
    assert (args.optimizer, args.lr, args.batch_size) == ("adam", 1e-3, 200)
    assert args.loss_options == {"d_margin": 0.4, "fisher_alpha": 1.0, "num_samples": 2000}
    args = resolved("--method", "eata", "--preset-family", "imagenet")
    assert (args.optimizer, args.lr, args.momentum, args.batch_size) == ("sgd", 2.5e-4, 0.9, 64)
    assert args.loss_options["fisher_alpha"] == 2000.0 and args.loss_options["d_margin"] == 0.05


def test_explicit_flags_override_the_preset():
    args = resolved(
        "--method",
        "eata",
        "--preset-family",
        "imagenet",
        "--lr",
        "0.01",
        "--batch-size",
        "32",
        "--optimizer",
        "adam",
        "--momentum",
        "0.5",
        "--params",
        "all",
        "--loss-option",
        "d_margin=0.2",
    )
    assert (args.optimizer, args.lr, args.momentum, args.batch_size) == ("adam", 0.01, 0.5, 32)
    assert args.params == "all"
    assert args.loss_options["d_margin"] == 0.2 and args.loss_options["fisher_alpha"] == 2000.0


def test_sar_learning_rate_follows_an_overridden_batch_size():
    assert resolved("--method", "sar", "--preset-family", "imagenet").lr == 2.5e-4
    args = resolved("--method", "sar", "--preset-family", "imagenet", "--batch-size", "16")
    assert args.lr == pytest.approx(2 * 2.5e-4 * 16 / 64)
    args = resolved(
        "--method", "sar", "--preset-family", "imagenet", "--batch-size", "16", "--lr", "1"
    )
    assert args.lr == 1.0


def test_benchmark_specific_options_and_families():
    assert preset("eata", "cifar", "cifar100-c").options["d_margin"] == 0.1
    assert preset("eata", "cifar", "cifar10-c").options["d_margin"] == 0.4
    assert [family_of(b) for b in ("fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c")] == [
        "cifar",
        "cifar",
        "cifar",
        "imagenet",
    ]
    with pytest.raises(ValueError, match="--preset-family"):
        family_of("pacs")


def test_conflicts_and_unknown_names_are_clear_errors(capsys):
    with pytest.raises(ValueError, match="pass one of them"):
        resolved("--method", "eata", "--loss", "tent")
    with pytest.raises(ValueError, match="pass --method too"):
        resolved("--preset-family", "cifar")
    assert run_main(["--method", "nope"]) == 2
    assert "no preset for method 'nope'" in capsys.readouterr().err


def test_every_issue_4_method_has_both_families():
    for method in ISSUE_4_METHODS:
        for family in FAMILIES:
            assert (method, family) in PRESETS, (method, family)


@pytest.mark.parametrize("key", sorted(PRESETS), ids=lambda key: "-".join(key))
def test_preset_options_are_accepted_by_the_loss(key):
    method, _ = key
    accepted = inspect.signature(LOSSES.get(method)).parameters
    assert set(PRESETS[key].options) <= set(accepted), (method, set(accepted))
    assert PRESETS[key].optimizer in ("adam", "sgd") and PRESETS[key].lr > 0


# Every preset as it was when the table moved into the methods' files:
# (optimizer, lr, batch size, momentum, params, options), and the per-benchmark options.
CIFAR = ("adam", 1e-3, 200, 0.9, None)
IMAGENET = ("sgd", 2.5e-4, 64, 0.9, None)
EXPECTED = {
    "tent": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "eta": {"cifar": (*CIFAR, {"d_margin": 0.4}), "imagenet": (*IMAGENET, {"d_margin": 0.05})},
    "eata": {
        "cifar": (*CIFAR, {"d_margin": 0.4, "fisher_alpha": 1.0, "num_samples": 2000}),
        "imagenet": (*IMAGENET, {"d_margin": 0.05, "fisher_alpha": 2000.0, "num_samples": 2000}),
    },
    "sar": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "pl": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "shot-im": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "shot": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "cotta": {
        "cifar": (*CIFAR, {"ap": 0.92, "rst": 0.01, "alpha": 0.999}),
        "imagenet": (
            "sgd",
            0.01,
            64,
            0.9,
            None,
            {"ap": 0.1, "rst": 0.001, "alpha": 0.999, "symmetric": True},
        ),
    },
    "deyo": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "lame": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "t3a": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "memo": {
        "cifar": ("sgd", 0.005, 200, 0.0, None, {"n_augmentations": 32, "crop": "pad"}),
        "imagenet": (
            "sgd",
            2.5e-4,
            64,
            0.0,
            None,
            {"n_augmentations": 64, "crop": "resized", "prior_strength": 16},
        ),
    },
    "ttaug": {
        "cifar": (*CIFAR, {"n_augmentations": 32, "crop": "pad"}),
        "imagenet": (*IMAGENET, {"n_augmentations": 64, "crop": "resized"}),
    },
    "roid": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "cmf": {"cifar": (*CIFAR, {}), "imagenet": (*IMAGENET, {})},
    "rdumb": {"cifar": (*CIFAR, {"d_margin": 0.4}), "imagenet": (*IMAGENET, {"d_margin": 0.05})},
    "adacontrast": {
        "cifar": ("sgd", 2e-4, 200, 0.9, None, {}),
        "imagenet": ("sgd", 2e-4, 64, 0.9, None, {}),
    },
    "rotta": {
        "cifar": ("adam", 1e-3, 64, 0.9, None, {}),
        "imagenet": ("adam", 1e-3, 64, 0.9, None, {}),
    },
    "rmt": {
        "cifar": (*CIFAR, {"aux_optimizer": "adam", "aux_lr": 1e-3}),
        "imagenet": (
            "sgd",
            0.01,
            64,
            0.9,
            None,
            {"aux_optimizer": "sgd", "aux_lr": 0.01, "source_batch_size": 64},
        ),
    },
    "santa": {
        "cifar": (*CIFAR, {"aux_optimizer": "adam", "aux_lr": 1e-3}),
        "imagenet": (
            "sgd",
            0.01,
            64,
            0.9,
            None,
            {"aux_optimizer": "sgd", "aux_lr": 0.01, "source_batch_size": 64},
        ),
    },
}
BENCHMARK_CHANGES = {
    ("eta", "cifar100-c"): {"d_margin": 0.1},
    ("eata", "cifar100-c"): {"d_margin": 0.1},
    ("cotta", "cifar100-c"): {"ap": 0.72},
}
BENCHMARKS = ("fmnist-c", "cifar10-c", "cifar100-c", "imagenet-c")


def as_tuple(found: Preset) -> tuple:
    fields = (found.optimizer, found.lr, found.batch_size, found.momentum, found.params)
    return (*fields, dict(found.options))


def test_every_method_and_benchmark_has_exactly_its_preset():
    assert methods() == sorted(EXPECTED)
    for method, families in EXPECTED.items():
        for family in FAMILIES:
            assert as_tuple(PRESETS[(method, family)]) == families[family], (method, family)
            for benchmark in BENCHMARKS:
                if family_of(benchmark) != family:
                    continue
                expected = families[family]
                changes = BENCHMARK_CHANGES.get((method, benchmark), {})
                found = preset(method, family, benchmark)
                assert as_tuple(found) == (*expected[:5], {**expected[5], **changes}), (
                    method,
                    benchmark,
                )
                assert found.lr_for(200) == expected[1], (method, benchmark)
    # SAR's ImageNet learning rate follows its batch-size rule; no other preset has a rule
    sar = preset("sar", "imagenet")
    assert [sar.lr_for(size) for size in (64, 32, 16)] == [2.5e-4, 2.5e-4, 2 * 2.5e-4 * 16 / 64]
    assert [key for key in PRESETS if PRESETS[key].lr_rule] == [("sar", "imagenet")]


def test_presets_are_declared_in_the_methods_own_files():
    for method in methods():
        declared = LOSSES.get(method).presets
        assert set(declared) == set(FAMILIES), method
        for family, found in declared.items():
            assert all(family_of(name) == family for name in found.benchmark_options), method


def test_methods_without_presets_say_which_have_them():
    for method in ("source", "norm", "entropy", "nope"):
        assert (method, "cifar") not in PRESETS
        with pytest.raises(ValueError, match=f"no preset for method '{method}'.*eata"):
            preset(method, "cifar")
    with pytest.raises(ValueError, match="unknown preset family 'mnist'"):
        preset("tent", "mnist")


def test_source_data_comes_in_test_size_batches_for_losses_that_need_it():
    class FakeBenchmark:
        def source_samples(self, n, seed=0):
            rng = np.random.default_rng(seed)
            return rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8), np.zeros(n, np.int64)

    args = resolved("--method", "eata", "--batch-size", "3", "--loss-option", "num_samples=7")
    data = source_data(args, FakeBenchmark(), torch.device("cpu"))
    batches = list(data["fisher_data"])
    assert [tuple(b.shape) for b in batches] == [(3, 3, 4, 4), (3, 3, 4, 4), (1, 3, 4, 4)]
    assert all(b.dtype == torch.float32 and 0 <= b.min() and b.max() <= 1 for b in batches)
    assert source_data(resolved("--method", "eta"), FakeBenchmark(), torch.device("cpu")) == {}


def test_source_data_from_a_benchmark_without_source_images_is_a_clear_error():
    class NoSource:
        def source_samples(self, n, seed=0):
            raise NotImplementedError("imagenet-c has no source samples")

    with pytest.raises(ValueError, match="needs clean source images.*eta instead of eata"):
        source_data(resolved("--method", "eata"), NoSource(), torch.device("cpu"))
