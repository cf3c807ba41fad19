"""A cell's hyperparameter search: an Optuna study with the successive-halving pruner (ASHA)
on the validation loss, kept in a journal file in the cell directory so it resumes.

The benchmark of Heuillet et al. (2025) tunes each configuration by ASHA (Li et al.,
"A System for Massively Parallel Hyperparameter Tuning", MLSys 2020) on the validation
loss. Here that is Optuna's `SuccessiveHalvingPruner` (its ASHA) with epochs as the
resource: after each epoch the fine-tuning run's `on_epoch` reports the validation loss
(`trial.report`) and raises `optuna.TrialPruned` when the pruner says so. A trial's value
is its last epoch's validation loss (the model that is kept is the last one). No search
loop of our own: Optuna asks, samples (at random, as ASHA does, or TPE) and prunes.

Resuming (a killed cell runs again): the study lives in `<cell>/optuna.journal`
(`JournalFileBackend`, an append-only log, safe on shared file systems). Completed and
pruned trials are never run again; only `trials - finished` more are asked for. A trial
left RUNNING by a dead process is marked FAIL and its parameters are queued again
(`enqueue_trial`), so the search continues from the same point. The sampler is seeded
with the cell's seed plus the number of trials already in the study, so a resumed search
does not redraw the parameters of the first trials (Optuna does not keep sampler state).
Cells of the same seed therefore draw the same candidate sequence (common random numbers:
AT and TRADES, or two protocols, are searched over the same points; what differs is
which trials the pruner stops).
Deviation: the paper's ASHA runs trials in parallel; a cell runs its trials one after the
other (cells run in parallel instead).
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tta.harness.sweep.finetune_grid import SearchSpec

# train(params, out_dir, on_epoch) -> summary dict; on_epoch(info) with "epoch", "val_loss"
Train = Callable[[dict[str, Any], Path, Callable[[dict[str, Any]], None]], dict[str, Any]]
JOURNAL = "optuna.journal"
MAX_ATTEMPTS_FACTOR = 3  # failed trials (NaN loss) retried at most this many times the budget


def optuna_module() -> Any:
    try:
        import optuna
    except ImportError as error:  # pragma: no cover - the sweep extra installs it
        raise RuntimeError(
            "fine-tuning studies search hyperparameters with Optuna: pip install 'tta[sweep]'"
        ) from error
    return optuna


def open_study(cell_dir: Path, spec: SearchSpec, seed: int, name: str = "cell") -> Any:
    """The cell's study (created or loaded from its journal), minimising validation loss."""
    optuna = optuna_module()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    cell_dir.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(cell_dir / JOURNAL)))
    existing = {s.study_name: s for s in optuna.get_all_study_summaries(storage)}
    offset = existing[name].n_trials if name in existing else 0
    if spec.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed + offset)
    else:
        sampler = optuna.samplers.TPESampler(seed=seed + offset)
    pruner = optuna.pruners.SuccessiveHalvingPruner(
        min_resource=spec.min_resource,
        reduction_factor=spec.reduction_factor,
        min_early_stopping_rate=spec.min_early_stopping_rate,
    )
    return optuna.create_study(
        study_name=name,
        storage=storage,
        sampler=sampler,
        pruner=pruner,
        direction="minimize",
        load_if_exists=True,
    )


def finished(study: Any) -> list[Any]:
    """Completed and pruned trials (they count toward the budget and never run again)."""
    states = optuna_module().trial.TrialState
    return [
        t for t in study.get_trials(deepcopy=False) if t.state in (states.COMPLETE, states.PRUNED)
    ]


def recover(study: Any) -> int:
    """Trials a dead process left RUNNING: marked FAIL, their parameters queued again."""
    states = optuna_module().trial.TrialState
    waiting = [t.params for t in study.get_trials(deepcopy=False) if t.state == states.WAITING]
    count = 0
    for trial in study.get_trials(deepcopy=False, states=(states.RUNNING,)):
        study.tell(trial.number, state=states.FAIL)
        if trial.params and trial.params not in waiting:
            study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            waiting.append(trial.params)
        count += 1
    return count


def suggest(trial: Any, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            params[name] = trial.suggest_int(
                name, spec["low"], spec["high"], log=bool(spec.get("log", False))
            )
        else:
            low, high = float(spec["low"]), float(spec["high"])
            params[name] = trial.suggest_float(name, low, high, log=bool(spec.get("log", False)))
    return params


@dataclass
class SearchOutcome:
    best_number: int
    best_params: dict[str, Any]
    best_value: float
    best_dir: Path
    trials: list[dict[str, Any]]
    recovered: int  # trials of a dead process marked FAIL on this start


def run_search(
    cell_dir: Path,
    spec: SearchSpec,
    train: Train,
    seed: int = 0,
    echo: Callable[[str], None] = print,
) -> SearchOutcome:
    """Run the cell's search until `spec.trials` trials finished (completed or pruned)."""
    optuna = optuna_module()
    study = open_study(cell_dir, spec, seed)
    recovered = recover(study)
    if recovered:
        echo(f"resumed: {recovered} trial(s) of a dead process marked failed and queued again")
    attempts = 0
    while len(finished(study)) < spec.trials:
        if attempts >= MAX_ATTEMPTS_FACTOR * spec.trials:
            raise RuntimeError(
                f"{attempts} trials failed (non-finite validation loss?) before "
                f"{spec.trials} finished; see {cell_dir / 'log.txt'}"
            )
        attempts += 1
        trial = study.ask()
        params = suggest(trial, spec.space)
        out_dir = cell_dir / "trials" / str(trial.number)
        shutil.rmtree(out_dir, ignore_errors=True)
        epochs: list[dict[str, Any]] = []

        def on_epoch(info: dict[str, Any], trial: Any = trial, epochs: list = epochs) -> None:
            loss = float(info["val_loss"])
            step = int(info["epoch"])
            epochs.append({k: v for k, v in info.items() if isinstance(v, int | float | str)})
            if math.isfinite(loss):
                trial.report(loss, step)
                if trial.should_prune():
                    raise optuna.TrialPruned(f"pruned at epoch {step}: val_loss {loss:.4f}")

        try:
            summary = train(params, out_dir, on_epoch)
        except optuna.TrialPruned as pruned:
            trial.set_user_attr("epochs", epochs)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            echo(f"trial {trial.number} {params}: {pruned}")
            continue
        value = float(epochs[-1]["val_loss"]) if epochs else float(summary.get("val_loss", "nan"))
        trial.set_user_attr("epochs", epochs)
        trial.set_user_attr("summary", {k: v for k, v in summary.items() if _plain(v)})
        if not math.isfinite(value):
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            echo(f"trial {trial.number} {params}: non-finite validation loss, failed")
            continue
        study.tell(trial, value)
        echo(f"trial {trial.number} {params}: val_loss {value:.4f} after {len(epochs)} epochs")
    best = study.best_trial
    return SearchOutcome(
        best_number=best.number,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_dir=cell_dir / "trials" / str(best.number),
        trials=[trial_record(t) for t in study.get_trials(deepcopy=False)],
        recovered=recovered,
    )


def trial_record(trial: Any) -> dict[str, Any]:
    epochs = trial.user_attrs.get("epochs", [])
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": dict(trial.params),
        "value": trial.value,
        "epochs_run": len(epochs),
        "val_loss": [e.get("val_loss") for e in epochs],
    }


def _plain(value: Any) -> bool:
    return isinstance(value, int | float | str | bool) or value is None
