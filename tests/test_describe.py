"""Options: a bad one is refused with the valid ones listed; `describe()` records every
setting that ran, defaults included."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import make_tiny_net

import tta
from tta.registry import LOSSES, Registry, describe_value

GALA_DEFAULTS = {
    "threshold": 0.75,
    "window": 20,
    "granularity": "module",
    "variant": "single",
    "block_patterns": None,
    "damping": None,
    "damping_steps": 3,
}
KEYS = {
    "loss",
    "loss_options",
    "norm",
    "norm_options",
    "params",
    "n_trainable",
    "selector",
    "selector_options",
    "sample_filter",
    "sample_filter_options",
    "optimizer",
    "lr",
    "momentum",
    "steps",
    "episodic",
}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"loss": "eta", "d_margn": 0.1}, r"unknown option\(s\) 'd_margn' for loss 'eta'; "),
        ({"loss": "eta", "d_margn": 0.1}, r"valid options: e_margin, d_margin$"),
        ({"loss": "tent", "lr_": 1}, r"for loss 'tent'; it takes no options$"),
        ({"loss": "sar", "rh": 1}, r"'rh' for loss 'sar'; valid options: margin, rho, "),
        ({"loss": "entropy", "margin": 1}, r"for loss 'entropy'; it takes no options$"),
        (
            {"selector": "gala", "selector_options": {"treshold": 0.5}},
            r"'treshold' for selector 'gala'; valid options: threshold, window, granularity, ",
        ),
        (
            {"sample_filter": "entropy", "sample_filter_options": {"e_margin": 0.5}},
            r"'e_margin' for sample filter 'entropy'; valid options: margin$",
        ),
    ],
)
def test_a_bad_option_lists_the_valid_ones(tiny_net, kwargs, message):
    running_mean = tiny_net.bn1.running_mean.clone()
    with pytest.raises(ValueError, match=message):
        tta.adapt(tiny_net, **kwargs)
    assert torch.equal(tiny_net.bn1.running_mean, running_mean), "model left untouched"


def test_a_factory_that_fails_on_its_arguments_lists_the_options_too():
    registry = Registry("thing")
    registry.register("two")(lambda a, b=1: (a, b))
    with pytest.raises(
        ValueError, match=r"bad options for thing 'two': .*'a'.*valid options: a, b"
    ):
        registry.create("two")
    assert registry.create("two", a=3) == (3, 1)
    assert registry.resolved_options("two", {"a": 3}) == {"a": 3, "b": 1}


def test_describe_records_the_defaults_that_ran(tiny_net):
    adapted = tta.adapt(tiny_net, loss="tent", selector="gala")
    card = adapted.describe()
    assert KEYS <= set(card)
    assert card["selector_options"] == GALA_DEFAULTS
    assert (card["loss"], card["loss_options"], card["params"]) == (
        "tent",
        {},
        "all",  # GALA searches every layer
    )
    assert (card["norm"], card["norm_options"]) == ("batch", {})
    n_params = sum(p.numel() for p in tiny_net.parameters())
    assert card["n_trainable"] == n_params  # every parameter: GALA searches them all
    assert (card["optimizer"], card["lr"], card["momentum"]) == ("adam", 1e-3, None)
    assert (card["steps"], card["episodic"]) == (1, False)
    assert (card["sample_filter"], card["sample_filter_options"]) == (None, {})
    json.dumps(card, allow_nan=False)


def test_describe_records_given_options_over_defaults(tiny_net):
    adapted = tta.adapt(
        tiny_net,
        loss="eta",
        params=["bn1", "fc"],
        selector="gala",
        selector_options={"threshold": 0.5},
        sample_filter="entropy",
        optimizer="sgd",
        lr=0.01,
        momentum=0.5,
        steps=2,
        episodic=True,
        d_margin=0.4,
    )
    card = adapted.describe()
    assert card["loss_options"] == {"e_margin": 0.4, "d_margin": 0.4}
    assert card["selector_options"] == {**GALA_DEFAULTS, "threshold": 0.5}
    assert (card["sample_filter"], card["sample_filter_options"]) == ("entropy", {"margin": 0.4})
    assert card["params"] == ["bn1", "fc"] and card["n_trainable"] == 12 + 8 * 5 + 5
    assert (card["optimizer"], card["lr"], card["momentum"]) == ("sgd", 0.01, 0.5)
    assert (card["steps"], card["episodic"]) == (2, True)


def test_describe_names_the_resolved_parameter_set():
    # SAR resolves its default to a list of names; on this net that is every norm parameter
    assert tta.adapt(make_tiny_net(), loss="sar").describe()["params"] == "norm"
    adapted = tta.adapt(make_tiny_net(), loss="entropy")
    assert adapted.describe()["params"] == "all"
    assert adapted.describe()["n_trainable"] == sum(p.numel() for p in adapted.model.parameters())
    card = tta.adapt(make_tiny_net(), loss="source").describe()
    assert (card["params"], card["n_trainable"], card["optimizer"], card["lr"]) == (
        None,
        0,
        None,
        None,
    )


def test_describe_shortens_data_options(images):
    def card(fisher_data):
        adapted = tta.adapt(make_tiny_net(), loss="eata", fisher_data=fisher_data)
        return adapted.describe()["loss_options"]

    options = card(images)
    assert options == {
        "e_margin": 0.4,
        "d_margin": 0.05,
        "fisher_alpha": 2000.0,
        "fisher_data": "<tensor (16, 3, 8, 8)>",
        "num_samples": 2000,
        "fisher_batch_size": 64,
    }
    assert card(b for b in images.split(4))["fisher_data"] == "<iterable>"
    assert card([images[:8], images[8:]])["fisher_data"] == "<list of 2>"


def test_describe_value():
    assert describe_value(float("inf")) == "inf"
    assert describe_value((1, "a", [2.5, None])) == [1, "a", [2.5, None]]
    assert describe_value({"a": torch.zeros(2)}) == {"a": "<tensor (2,)>"}
    assert describe_value(object()) == "<object>"
    assert LOSSES.resolved_options("pl") == {"threshold": 0.9}
