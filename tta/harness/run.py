"""One run: a `RunConfig` in, a `RunResult` out, and `save` to write it.

The command line, the reproduction scripts and multi-seed runs all go through `run`. A run
is: the source baseline, the all-layers baseline (the same loss and parameters with
selector 'all', when the run's selector is another), then the adapted stream, with
forgetting measured on clean images before and after it. A Ctrl-C at any stage (`STAGES`)
stops the run: `stage` says where, `finished_domains` which domains have every number, and
every mean is over those same domains, baselines and adapted alike.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from torch import nn

from tta.data.base import Benchmark
from tta.harness.all_layers import all_layers_config, all_layers_errors
from tta.harness.brittleness import BrittlenessMonitor, calibrated_threshold
from tta.harness.config import (
    RunConfig,
    brittleness_options,
    check_names,
    method_notes,
    resolve,
)
from tta.harness.forgetting import clean_error, clean_images
from tta.harness.metrics import stream_curve
from tta.harness.plots import plot_brittleness, plot_errors, plot_stream
from tta.harness.results import (
    Baseline,
    format_card,
    format_table,
    mean_of,
    mean_or_none,
    versions,
    write_results,
)
from tta.harness.setup import (
    build_adapted,
    build_benchmark,
    build_model,
    build_spec,
    method_card,
    pick_device,
)
from tta.harness.source_cache import source_errors
from tta.harness.stream import StreamResult, StreamSpec, peak_memory_mb, run_stream
from tta.harness.threads import choose_threads, torch_threads
from tta.harness.trace import write_trace
from tta.paths import data_roots

# Where a run can stop, in order; "finished" means it ran to the end.
STAGES = (
    "model",
    "data",
    "method",
    "calibrate",
    "source",
    "all-layers",
    "adapt",
    "forgetting",
    "finished",
)


@dataclass
class RunResult:
    """What a run produced; `per_domain` and the means cover `finished_domains` only."""

    config: RunConfig
    stage: str = "model"
    card: dict = field(default_factory=dict)
    method: dict = field(default_factory=dict)  # the method part of the card
    spec: StreamSpec | None = None
    adapted: StreamResult = field(default_factory=StreamResult)
    source: StreamResult | None = None
    all_layers: StreamResult | None = None
    all_layers_method: dict = field(default_factory=dict)  # the baseline's method card
    clean_error_before: float | None = None
    clean_error_after: float | None = None
    threads: str = ""
    counters: dict = field(default_factory=dict)
    peak_memory_mb: float = 0.0
    loss_stats: dict = field(default_factory=dict)
    sample_filter_stats: dict = field(default_factory=dict)
    trace: dict = field(default_factory=dict)
    layer_names: list[str] = field(default_factory=list)
    brittleness: BrittlenessMonitor | None = None

    @property
    def interrupted(self) -> bool:
        return self.stage != "finished"

    @property
    def label(self) -> str:
        return f"{self.config.loss}+{self.config.selector}"

    @property
    def all_layers_label(self) -> str:
        return f"{self.config.loss}+all"

    @property
    def n_finished(self) -> int:
        """Domains finished by the adapted pass and by every baseline that ran."""
        passes = (self.adapted, self.source, self.all_layers)
        return min(len(p.per_domain) for p in passes if p is not None)

    @property
    def per_domain(self) -> list[dict]:
        return self.adapted.per_domain[: self.n_finished]

    @property
    def source_per_domain(self) -> list[dict]:
        return self.source.per_domain[: self.n_finished] if self.source is not None else []

    @property
    def all_layers_per_domain(self) -> list[dict]:
        return self.all_layers.per_domain[: self.n_finished] if self.all_layers else []

    @property
    def mean_error(self) -> float | None:
        return mean_or_none(self.per_domain)

    @property
    def forgetting(self) -> float | None:
        """Clean error after the stream minus before it, in points (EATA's forgetting)."""
        if self.clean_error_before is None or self.clean_error_after is None:
            return None
        return self.clean_error_after - self.clean_error_before

    def baselines(self) -> list[Baseline]:
        """The baselines that ran, in the order they are shown beside the run."""
        shown = []
        if self.source is not None:
            shown.append(Baseline("source", "source", self.source_per_domain))
        if self.all_layers is not None:
            shown.append(Baseline("all_layers", self.all_layers_label, self.all_layers_per_domain))
        return shown

    def stream(self) -> dict:
        """Error per batch (windows of batches on long streams) with the domain boundaries."""
        adapted, spec = self.adapted, self.spec
        domains = spec.domains() if spec else []
        starts = adapted.domain_start_batches
        if spec is not None and spec.setting == "mixed":
            domains = [(f"{len(domains)} domains mixed", None)]
        return stream_curve(adapted.batch_n, adapted.batch_wrong, starts, domains[: len(starts)])

    def results(self) -> dict:
        """The results.json payload (the selector's trace summary is added by `save`)."""
        adapted = self.adapted
        return {
            "protocol": self.card,
            "stage": self.stage,
            "interrupted": self.interrupted,
            "finished_domains": [
                {"domain": d["domain"], "severity": d["severity"]} for d in self.per_domain
            ],
            "n_domains": len(self.spec.domains()) if self.spec else None,
            "per_domain": self.per_domain,
            "mean_error": self.mean_error,
            "source_per_domain": self.source_per_domain,
            "source_mean_error": mean_or_none(self.source_per_domain) if self.source else None,
            "all_layers_per_domain": self.all_layers_per_domain,
            "all_layers_mean_error": mean_or_none(self.all_layers_per_domain)
            if self.all_layers
            else None,
            "all_layers_method": self.all_layers_method or None,
            "ece": adapted.overall_ece(self.n_finished),
            "mean_ece": mean_of(self.per_domain, "ece"),
            "clean_error_before": self.clean_error_before,
            "clean_error_after": self.clean_error_after,
            "forgetting": self.forgetting,
            "stream": self.stream(),
            "time_s": adapted.time_s,
            "images_per_s": adapted.n_images / adapted.time_s if adapted.time_s else 0.0,
            "peak_memory_mb": self.peak_memory_mb,
            **self.counters,
            "selector": None,
            "loss_stats": self.loss_stats,
            "sample_filter_stats": self.sample_filter_stats,
            "versions": versions(),
            "seed": self.config.seed,
            "brittleness": self.brittleness.results(self.n_finished) if self.brittleness else None,
        }


Echo = Callable[[str], None]


def run(
    config: RunConfig,
    *,
    benchmark: Benchmark | None = None,
    model: tuple[nn.Module, dict] | None = None,
    echo: Echo = print,
) -> RunResult:
    """Resolve `config`, build the run and stream it: source baseline, then adaptation.

    `benchmark` and `model` (a module and its card info; copied, never changed) replace the
    ones the config names, so a caller can load them once for several runs. Options are
    checked (ValueError) before anything is built; a Ctrl-C returns the partial result.
    """
    if benchmark is not None:
        config = replace(config, benchmark=benchmark.name)
    config = resolve(config)
    for note in method_notes(config):
        echo(note)
    check_names(config, registered_benchmark=benchmark is None)
    data_roots(config.data_root)  # an explicit data root that does not exist fails here
    device = pick_device(config.device)
    threads, why = choose_threads(config.threads)
    result = RunResult(config, threads=f"{threads} ({why})")
    with torch_threads(threads):
        try:
            _execute(result, benchmark, model, device, echo)
        except KeyboardInterrupt:
            pass  # result.stage says where it stopped
    return result


def _execute(
    result: RunResult,
    benchmark: Benchmark | None,
    model: tuple[nn.Module, dict] | None,
    device: torch.device,
    echo: Echo,
) -> None:
    config = result.config
    benchmark = benchmark or build_benchmark(config)
    spec = result.spec = build_spec(config, benchmark)
    torch.manual_seed(config.seed)
    net, info = build_model(config, benchmark) if model is None else copy.deepcopy(model)
    net = net.to(device)
    run_facts = {"device": str(device), "threads": result.threads}
    result.card = {**spec.card(), **info, **run_facts}
    wants_all_layers = config.selector != "all" and not config.no_all_layers
    # Copies before `tta.adapt` changes the model (TENT-style methods change BatchNorm).
    monitored = config.brittleness is not None
    needs_source = wants_all_layers or not config.no_source or monitored
    pristine = copy.deepcopy(net) if needs_source else None
    result.stage = "data"
    benchmark.prepare(spec.domains(), spec.n_per_domain, spec.seed)
    clean, forgetting_note = clean_images(benchmark, config.forgetting, config.seed)
    result.stage = "method"
    adapted = build_adapted(config, net, benchmark, device)
    result.method = method_card(config, adapted)
    baseline = all_layers_config(config, result.method)
    result.card = {**spec.card(), **benchmark.describe(), **result.method, **info}
    result.card.update(
        run_facts,
        all_layers_baseline=_baseline_note(config, baseline),
        forgetting=forgetting_note,
    )
    result.layer_names = [layer.name for layer in adapted.layers]
    result.counters = adapted.counters.as_dict()
    echo("protocol card:\n" + format_card(result.card))
    if clean is not None:
        result.clean_error_before = clean_error(adapted, *clean, spec.batch_size, device)
    if monitored:
        result.stage = "calibrate"
        options = brittleness_options(config)
        threshold = calibrated_threshold(pristine, benchmark, options, info, device)
        result.card["brittleness"] = _brittleness_note(threshold.to_dict(), options)
        echo(f"brittleness monitor: {result.card['brittleness']}")
        result.brittleness = BrittlenessMonitor(pristine, threshold, options)
    if not config.no_source:
        result.stage = "source"
        source_model = copy.deepcopy(pristine) if baseline is not None else pristine
        result.source = source_errors(source_model, spec, benchmark, info, device)
        if result.source.interrupted:
            return
    if baseline is not None:
        result.stage = "all-layers"
        result.all_layers, result.all_layers_method = all_layers_errors(
            baseline, pristine, spec, benchmark, info, device
        )
        if result.all_layers.interrupted:
            return
    result.stage = "adapt"
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    result.adapted = run_stream(
        adapted, spec, benchmark, device, desc=result.label, observer=result.brittleness
    )
    result.counters = result.adapted.counters
    result.peak_memory_mb = peak_memory_mb(device)
    result.trace = adapted.selector.trace() or {}
    result.loss_stats = adapted.loss.stats()
    result.sample_filter_stats = adapted.sample_filter.stats() if adapted.sample_filter else {}
    if result.adapted.interrupted:
        return
    if clean is not None:
        result.stage = "forgetting"
        result.clean_error_after = clean_error(adapted, *clean, spec.batch_size, device)
    result.stage = "finished"


def _brittleness_note(threshold: dict, options) -> str:
    """What the card says about the brittleness monitor."""
    attacked = (
        f"; APGD-CE ({options.steps} steps) on the last {options.robust_batches} batch(es) "
        "of every domain, source and adapted"
        if options.robust_batches
        else ""
    )
    return (
        f"logit margin <= {threshold['threshold']:.4g}, flagging {100 * options.tpr:.0f}% of "
        f"the {threshold['nonrobust_share']:.1f}% of {threshold['n_images']} clean images "
        f"non-robust at L-inf eps {options.eps:.4g} (input margins by "
        f"{threshold['method']}){attacked}"
    )


def _baseline_note(config: RunConfig, baseline: RunConfig | None) -> str:
    """What the card says about the all-layers baseline."""
    if baseline is not None:
        return f"{config.loss}+all, params {baseline.params} (cached once run)"
    if config.selector == "all":
        return "none (the selector is all)"
    return "off (--no-all-layers)" if config.no_all_layers else "none (the loss trains nothing)"


def output_dir(config: RunConfig) -> Path:
    """`config.out`, else runs/<time>-<loss>-<selector>."""
    return Path(
        config.out or f"runs/{time.strftime('%Y%m%d-%H%M%S')}-{config.loss}-{config.selector}"
    )


def save(result: RunResult, out_dir: Path) -> dict:
    """results.json, results.csv, errors.png, stream.png and the selector trace; returns the
    payload. Plots are skipped when no domain finished."""
    payload = result.results()
    if result.trace and result.per_domain:
        payload["selector"] = write_trace(
            out_dir,
            result.trace,
            result.layer_names,
            result.adapted.domain_starts,
            [d["domain"] for d in result.adapted.per_domain],
        )
    baselines = result.baselines()
    write_results(out_dir, payload, baselines)
    if result.per_domain:
        plot_errors(result.per_domain, baselines, result.label, out_dir / "errors.png")
        plot_stream(payload["stream"], baselines, result.label, out_dir / "stream.png")
        if payload["brittleness"]:
            brittle = payload["brittleness"]
            plot_brittleness(
                brittle["curve_source"],
                brittle["curve_adapted"],
                result.label,
                brittle["threshold"]["threshold"],
                out_dir / "brittleness.png",
            )
    return payload


def report(result: RunResult, out_dir: Path) -> str:
    """The per-domain table, calibration and forgetting, the work done, and what finished
    when interrupted."""
    adapted, counters = result.adapted, result.counters
    speed = adapted.n_images / adapted.time_s if adapted.time_s else 0.0
    lines = [format_table(result.per_domain, result.baselines(), result.label)]
    ece = adapted.overall_ece(result.n_finished)
    if ece is not None:
        lines.append(f"ECE over all {sum(d['n'] for d in result.per_domain)} images: {ece:.2f}%")
    if result.forgetting is not None:
        lines.append(
            f"forgetting (clean error after - before the stream): {result.forgetting:+.2f} "
            f"points ({result.clean_error_before:.2f}% -> {result.clean_error_after:.2f}%)"
        )
    if result.brittleness is not None and result.per_domain:
        lines.append(brittleness_table(result.brittleness.per_domain(result.n_finished)))
    if counters:
        lines.append(
            f"{adapted.n_images} images in {adapted.time_s:.1f} s ({speed:.0f} img/s); "
            f"forward {counters['n_forward']}, backward {counters['n_backward']}, "
            f"skipped {counters['n_skipped']}; results in {out_dir}/"
        )
    if result.interrupted:
        total = len(result.spec.domains()) if result.spec else "?"
        lines.append(
            f"interrupted during {result.stage}: {result.n_finished} of {total} domain(s) "
            f"finished; their results are written to {out_dir}/"
        )
    return "\n".join(lines)


def brittleness_table(rows: list[dict]) -> str:
    """Brittle share (and robust accuracy where attacked) per domain, source vs adapted."""

    def cell(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    lines = ["domain            brittle% src  adapted   robust% src  adapted  (n attacked)"]
    for r in rows:
        name = r["domain"] if r["severity"] is None else f"{r['domain']}-{r['severity']}"
        lines.append(
            f"{name[:17]:17s} {cell(r['brittle_source']):>12s} {cell(r['brittle_adapted']):>8s}"
            f" {cell(r['robust_source']):>13s} {cell(r['robust_adapted']):>8s}  ({r['n_attacked']})"
        )
    return "\n".join(lines)


def run_and_save(
    config: RunConfig,
    out_dir: Path | None = None,
    *,
    benchmark: Benchmark | None = None,
    model: tuple[nn.Module, dict] | None = None,
    echo: Echo = print,
) -> RunResult:
    """`run`, `save` (in `out_dir`, default `output_dir`) and echo the `report`."""
    result = run(config, benchmark=benchmark, model=model, echo=echo)
    out_dir = out_dir or output_dir(result.config)
    save(result, out_dir)
    echo(report(result, out_dir))
    return result
