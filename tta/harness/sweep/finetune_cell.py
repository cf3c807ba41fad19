"""One cell of a `finetune` study: search its hyperparameters on the validation split, then
evaluate the best trial's model on the test split under five threats.

1. Optuna search (`finetune_search.run_search`): each trial is `tta.robust.finetune.finetune`
   with the trial's parameters over the cell's config, in `<cell>/trials/<number>/`, its
   `on_epoch` reporting the validation loss to the pruner. The test split never enters the
   search: the trials get the task's train and validation splits, and their own end-of-run
   test evaluation (inside `finetune`) sees two validation images instead.
2. The best trial (lowest last-epoch validation loss among completed trials) is not
   retrained: its saved model (`model.pt`, written by `finetune` at the end of the run) is
   rebuilt with `build_model` and evaluated by `tta.robust.threats.threat_accuracies` on
   the test split: clean, L-inf, L2, L1 and corruption accuracy.

Heuillet et al. (2025), arXiv 2508.14079; no official code was readable here. Ours: the
best trial's model is used as it is (no retraining on train + validation), and what
`finetune_search` and `tta.robust.threats` say.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tta.harness.sweep.finetune_grid import parse_search, threat_spec
from tta.harness.sweep.finetune_search import SearchOutcome, Train, run_search
from tta.robust.finetune import FinetuneConfig, TaskData, build_model, finetune, load_task
from tta.robust.threats import threat_accuracies

Echo = Callable[[str], None]


def search_data(data: TaskData) -> TaskData:
    """The task without its test split (two validation images stand in for it)."""
    stand_in = (data.val[0][:2], data.val[1][:2])
    return TaskData(data.name, data.num_classes, data.train, data.val, stand_in)


def make_train(base: FinetuneConfig, data: TaskData) -> Train:
    """`train(params, out_dir, on_epoch)` for the search: the cell's config with `params`."""
    searched = search_data(data)

    def train(params: dict[str, Any], out_dir: Path, on_epoch) -> dict[str, Any]:
        config = FinetuneConfig.from_dict({**base.to_dict(), **params})
        result = finetune(config, out_dir, on_epoch, data=searched)
        last = result.history[-1] if result.history else {}
        keys = ("val_loss", "val_clean", "val_adv", "val_expected")
        return {**{k: last.get(k) for k in keys}, "time_s": result.time_s}

    return train


def load_trial_model(trial_dir: Path, base: FinetuneConfig) -> torch.nn.Module:
    """The model a finished trial saved (its config and class count are in model.pt)."""
    path = trial_dir / "model.pt"
    if not path.exists():
        raise FileNotFoundError(
            f"{path} is missing: the best trial did not finish its run; delete "
            f"{trial_dir.parent.parent / 'optuna.journal'} to search this cell again"
        )
    saved = torch.load(path, map_location="cpu", weights_only=False)
    config = FinetuneConfig.from_dict({**base.to_dict(), **saved["config"]})
    model, _ = build_model(config, int(saved["num_classes"]))
    model.load_state_dict(saved["state_dict"])
    return model.eval()


def run_finetune_cell(cell_dir: Path, payload: dict[str, Any], echo: Echo = print) -> dict:
    """Search, pick, evaluate; returns the cell's results (stage `finished`)."""
    identity = payload["identity"]
    device = payload["options"].get("device", "cpu")  # not part of the identity
    base = FinetuneConfig.from_dict({**identity["config"], "device": device})
    search = parse_search(identity["search"], f"{cell_dir}/config.json: search")
    spec = threat_spec(identity["evaluate"], base.eps, base.seed)
    data = load_task(base.task, base.split_seed, base.n_train, base.n_val, base.n_test)
    began = time.perf_counter()
    outcome = run_search(cell_dir, search, make_train(base, data), seed=base.seed, echo=echo)
    search_s = time.perf_counter() - began
    model = load_trial_model(outcome.best_dir, base)
    began = time.perf_counter()
    x, y = (t.to(device) for t in data.test)
    test = threat_accuracies(model.to(device), x, y, spec)
    evaluate_s = time.perf_counter() - began
    echo(
        "test: "
        + ", ".join(
            f"{k} {test[k]:.2f}" for k in ("clean", "linf", "l2", "l1", "corruption") if k in test
        )
    )
    return results(base, outcome, test, search_s, evaluate_s, data)


def results(
    base: FinetuneConfig,
    outcome: SearchOutcome,
    test: dict,
    search_s: float,
    evaluate_s: float,
    data: TaskData,
) -> dict:
    states = [t["state"] for t in outcome.trials]
    best = next(t for t in outcome.trials if t["number"] == outcome.best_number)
    return {
        "kind": "finetune",
        "stage": "finished",
        "interrupted": False,
        "config": base.to_dict(),
        "best": {
            "trial": outcome.best_number,
            "params": outcome.best_params,
            "val_loss": outcome.best_value,
            "epochs_run": best["epochs_run"],
        },
        "search": {
            "trials": outcome.trials,
            "complete": states.count("COMPLETE"),
            "pruned": states.count("PRUNED"),
            "failed": states.count("FAIL"),
            "epochs_run": sum(t["epochs_run"] for t in outcome.trials),
            "recovered": outcome.recovered,
        },
        "test": test,
        "data_sizes": data.sizes(),
        "time_s": {"search": search_s, "evaluate": evaluate_s},
    }
