"""`eta` and `eata`: Niu et al., "Efficient Test-Time Model Adaptation without Forgetting", ICML 2022.

As the official code (mr-eggplant/EATA, `eata.py` and `main.py`):

- BatchNorm normalizes with the current batch's statistics and only the norm-affine
  parameters train (`params='norm'`), as TENT (see tta/losses/tent.py, also for the one
  deliberate difference: only the BatchNorm layers are put in train mode).
- Sample selection (Eqns. 3-5): a sample counts when its entropy E < E0 = e_margin * ln C
  (`e_margin=0.4`; the code's `--e_margin` is the absolute `math.log(1000) * 0.40`) and its
  softmax is not redundant: cosine similarity with the moving average of the predictions
  of previously kept samples below `d_margin` (0.05, the ImageNet default; 0.4 for CIFAR-10
  in the paper). The average starts as the mean prediction of the first batch's reliable
  samples and then moves as m <- 0.9 m + 0.1 mean(p of this batch's kept samples). The
  filters are tta/filters/entropy.py and redundancy_filter.py, shared with the
  stand-alone sample filters.
- Loss: mean over the kept samples of coeff * E with coeff = 1 / exp(E - E0), the
  coefficient detached (the code's `coeff = 1 / (torch.exp(entropys.clone().detach() -
  e_margin))`). When no sample survives there is no update; `backward` returns None and the
  engine counts the step as skipped.
- `eata` adds the anti-forgetting Fisher penalty (Eqns. 8-9)
  `fisher_alpha * sum_i F_i (theta_i - theta_src_i)^2` (`fisher_alpha=2000`, the ImageNet
  default; 1 for CIFAR-10). F is estimated once, before adaptation, on clean source images
  with the model already configured for EATA: per batch of `fisher_batch_size` images,
  the squared gradient of the cross-entropy against the model's own argmax pseudo-labels
  (batch mean) is accumulated, and the sum is divided by the number of batches;
  `num_samples=2000` images are used (`--fisher_size`). The estimate depends on the batch
  size; `fisher_batch_size=64` because the official `main.py` builds its Fisher loader with
  `batch_size=args.test_batch_size` (64).

Clean source images arrive as `fisher_data`: a float tensor (N, C, H, W) in the model's input
range, or an iterable of such batches (or of (images, labels) pairs) of any sizes, which are
re-batched to `fisher_batch_size` (so `tta-run`'s test-size batches give the same estimate as
one tensor): `tta.adapt(model, loss="eata", fisher_data=x_clean)`. Any input the model takes
works (not only images). `tta-run` draws them from the
benchmark's source split (`Benchmark.source_samples`). The official code uses 2000 clean
ImageNet validation images; the paper describes the same estimate.

Presets (`presets`): ImageNet as mr-eggplant/EATA `main.py` (SGD 2.5e-4, momentum 0.9, batch
64, d_margin 0.05, fisher_alpha 2000, 2000 Fisher samples). CIFAR: the paper's d_margin 0.4
and fisher_alpha 1 with the continual CIFAR protocol's optimizer (Adam 1e-3, batch 200, as
TENT; the configs of mariodoebler/test-time-adaptation use the same). CIFAR-100-C uses
d_margin 0.1 (the same configs); the EATA paper has no CIFAR-100 setting.

Counts over the whole run: `n_unreliable` (removed by the entropy filter), `n_redundant`
(removed by the redundancy filter), `n_kept` (learned from); they also add to the engine's
`n_filtered_samples`. Differences from the official code, both deliberate: `reset()` also
forgets the moving average (theirs keeps it when weights are reset), so a reset model
behaves exactly as a fresh one; and a sample filter given to the engine (`keep`) is applied
before EATA's own filters.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from tta.checks import check_input, input_kind, model_dtype
from tta.context import LossContext
from tta.filters.entropy import check_margin, entropy_margin, reliable
from tta.filters.redundancy import check_d_margin, non_redundant, update_average
from tta.functional import softmax_entropy
from tta.losses.base import Loss
from tta.presets import cifar_adam, imagenet_sgd
from tta.registry import LOSSES

FisherData = torch.Tensor | Iterable[torch.Tensor] | Iterable[tuple[torch.Tensor, object]]


def sample_weights(entropy: torch.Tensor, e0: float) -> torch.Tensor:
    """EATA's per-sample weight 1 / exp(E - E0), detached from the graph."""
    return torch.exp(-(entropy.detach() - e0))


@LOSSES.register("eta")
class EtaLoss(Loss):
    """ETA: EATA's sample selection and weighting, without the Fisher penalty."""

    name = "eta"
    grad_scaling = True  # its backward goes through LossContext.backward (float16-safe)
    default_params = "norm"
    default_norm = "batch"
    presets = {
        "cifar": cifar_adam(
            options={"d_margin": 0.4}, benchmark_options={"cifar100-c": {"d_margin": 0.1}}
        ),
        "imagenet": imagenet_sgd(options={"d_margin": 0.05}),
    }

    def __init__(self, e_margin: float = 0.4, d_margin: float = 0.05) -> None:
        self.e_margin = check_margin(e_margin, f"loss {self.name!r} (e_margin)")
        self.d_margin = check_d_margin(d_margin, f"loss {self.name!r}")
        self.average: torch.Tensor | None = None
        self.n_unreliable = 0
        self.n_redundant = 0
        self.n_kept = 0

    def reset(self) -> None:
        self.average = None

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        """The weighted entropy of the samples that pass both filters now (no state change)."""
        entropy = softmax_entropy(logits)
        kept = self._kept(logits, entropy, None)[1]
        return self._weighted_entropy(entropy[kept], logits.shape[1])

    def _kept(
        self, logits: torch.Tensor, entropy: torch.Tensor, keep: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Masks (reliable, kept): entropy filter, then redundancy among the reliable."""
        is_reliable = reliable(entropy.detach(), logits.shape[1], self.e_margin)
        if keep is not None:
            is_reliable = is_reliable & keep
        probs = logits.detach().softmax(1)
        return is_reliable, is_reliable & non_redundant(probs, self.average, self.d_margin)

    def _weighted_entropy(self, entropy: torch.Tensor, num_classes: int) -> torch.Tensor:
        """Mean of coeff * E over the given samples; 0 (still differentiable) when none."""
        e0 = entropy_margin(num_classes, self.e_margin)
        return (entropy * sample_weights(entropy, e0)).sum(0) / max(len(entropy), 1)

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """The regularizer added to the loss (none for ETA)."""
        return 0.0

    def backward(
        self,
        context: LossContext,
        x: torch.Tensor,
        logits: torch.Tensor,
        keep: torch.Tensor | None,
    ) -> torch.Tensor | None:
        entropy = softmax_entropy(logits)
        is_reliable, kept = self._kept(logits, entropy, keep)
        self.average = update_average(self.average, logits.detach().softmax(1)[kept])
        sums = [is_reliable.sum(), kept.sum()] + ([] if keep is None else [keep.sum()])
        n_reliable, n_kept, *n_given = torch.stack(sums).tolist()  # one device sync
        n_in = n_given[0] if n_given else logits.shape[0]
        self.n_unreliable += n_in - n_reliable
        self.n_redundant += n_reliable - n_kept
        self.n_kept += n_kept
        context.count_filtered(n_in - n_kept)
        if n_kept == 0:
            return None
        loss = self._weighted_entropy(entropy[kept], logits.shape[1])
        loss = loss + self.penalty(context.model)
        context.backward(loss)
        return loss.detach()

    def stats(self) -> dict[str, int]:
        """Samples removed by each filter and samples learned from, over the whole run."""
        return {
            "n_unreliable": self.n_unreliable,
            "n_redundant": self.n_redundant,
            "n_kept": self.n_kept,
        }


@LOSSES.register("eata")
class EataLoss(EtaLoss):
    """EATA: ETA plus the Fisher penalty that keeps important weights near the source."""

    name = "eata"
    source_data_option = "fisher_data"  # tta-run fills it from the benchmark's source split
    default_num_samples = 2000
    presets = {
        "cifar": cifar_adam(
            options={"d_margin": 0.4, "fisher_alpha": 1.0, "num_samples": 2000},
            benchmark_options={"cifar100-c": {"d_margin": 0.1}},
        ),
        "imagenet": imagenet_sgd(
            options={"d_margin": 0.05, "fisher_alpha": 2000.0, "num_samples": 2000}
        ),
    }

    def __init__(
        self,
        e_margin: float = 0.4,
        d_margin: float = 0.05,
        fisher_alpha: float = 2000.0,
        fisher_data: FisherData | None = None,
        num_samples: int = default_num_samples,
        fisher_batch_size: int = 64,
    ) -> None:
        super().__init__(e_margin, d_margin)
        if not fisher_alpha >= 0:
            raise ValueError(f"loss 'eata': fisher_alpha must be >= 0, got {fisher_alpha!r}")
        for option, value in (
            ("num_samples", num_samples),
            ("fisher_batch_size", fisher_batch_size),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"loss 'eata': {option} must be a positive integer, got {value!r}")
        self.fisher_alpha = float(fisher_alpha)
        self.fisher_data = fisher_data
        self.num_samples = num_samples
        self.fisher_batch_size = fisher_batch_size
        self.fishers: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._penalized: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]] | None = None

    def check_model(self, model: nn.Module) -> None:
        if self.fisher_alpha == 0:
            return
        if self.fisher_data is None:
            raise ValueError(
                "loss 'eata' needs clean source images to estimate its Fisher information: "
                "pass fisher_data=<float tensor (N, C, H, W) in the model's input range, e.g. "
                "~2000 clean training images>, as in tta.adapt(model, loss='eata', "
                "fisher_data=x_clean); or use loss='eta' (EATA without the Fisher penalty)"
            )
        if isinstance(self.fisher_data, torch.Tensor):
            if self.fisher_data.ndim and len(self.fisher_data) == 0:
                raise ValueError("loss 'eata': fisher_data holds no images")
            check_fisher_batch(self.fisher_data, model)

    def configure(self, model: nn.Module) -> None:
        super().configure(model)
        if self.fisher_alpha > 0:
            self.check_model(model)
            batches = fisher_batches(
                self.fisher_data, self.num_samples, self.fisher_batch_size, model
            )
            self.fishers = fisher_information(model, batches)
            self.fisher_data = None  # the images are no longer needed
        self._penalized = None

    def penalty(self, model: nn.Module) -> torch.Tensor | float:
        """fisher_alpha * sum F (theta - theta_src)^2 over the trainable parameters."""
        if not self.fishers:
            return 0.0
        if self._penalized is None:  # the trainable set is known once the engine runs
            named = dict(model.named_parameters())
            self.fishers = {
                name: value
                for name, value in self.fishers.items()
                if name in named and named[name].requires_grad
            }
            self._penalized = [(named[n], f, s) for n, (f, s) in self.fishers.items()]
        terms = [
            (fisher * (param - source) ** 2).sum() for param, fisher, source in self._penalized
        ]
        return self.fisher_alpha * torch.stack(terms).sum() if terms else 0.0


def check_fisher_batch(images: object, model: nn.Module) -> torch.Tensor:
    """The checks of the engine's input (shape, dtype, finite values), named for fisher_data."""
    try:
        return check_input(images, input_kind(model), None, model_dtype(model))
    except (TypeError, ValueError) as error:
        raise type(error)(f"loss 'eata', fisher_data: {error}") from error


def fisher_batches(
    data: FisherData, num_samples: int, batch_size: int, model: nn.Module
) -> Iterator[torch.Tensor]:
    """Up to `num_samples` inputs from `data` in batches of `batch_size` (the last may be
    smaller), checked, on the model's device.

    A tensor is split; an iterable of batches (or of (inputs, labels) pairs) of any sizes is
    joined as it arrives and cut again, so the batches, and so the Fisher estimate, do not
    depend on how the data came batched.
    """
    device = next(model.parameters()).device
    pending: list[torch.Tensor] = []
    for piece in _fisher_pieces(data, num_samples, model):
        pending.append(piece)
        if sum(len(p) for p in pending) < batch_size:
            continue
        joined = pending[0] if len(pending) == 1 else torch.cat(pending)
        n_full = len(joined) // batch_size * batch_size
        yield from (chunk.to(device) for chunk in joined[:n_full].split(batch_size))
        pending = [joined[n_full:]] if n_full < len(joined) else []
    if pending:
        yield torch.cat(pending).to(device)


def _fisher_pieces(data: FisherData, num_samples: int, model: nn.Module) -> Iterator[torch.Tensor]:
    """The checked inputs of `data` as they arrive, cut off after `num_samples` in all."""
    remaining = num_samples
    for batch in [data] if isinstance(data, torch.Tensor) else data:
        images = batch[0] if isinstance(batch, tuple | list) else batch
        if isinstance(images, torch.Tensor) and images.ndim:
            if len(images) == 0:
                continue  # an empty batch adds nothing
            images = images[:remaining]
        yield check_fisher_batch(images, model)
        remaining -= len(images)
        if remaining <= 0:
            return


def fisher_information(
    model: nn.Module, batches: Iterable[torch.Tensor]
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """EATA's diagonal Fisher: name -> (mean over batches of squared gradients, source value).

    Per batch, the gradient of the batch-mean cross-entropy against the model's own argmax
    predictions; every floating-point parameter is covered (the penalty later keeps the
    trainable ones). The model's `requires_grad` flags and `.grad` are left as they were.
    """
    named = [(n, p) for n, p in model.named_parameters() if p.is_floating_point()]
    flags = [p.requires_grad for _, p in named]
    sums: dict[str, torch.Tensor] = {}
    n_batches = 0
    try:
        for _, param in named:
            param.requires_grad_(True)
        with torch.enable_grad():
            for images in batches:
                logits = model(images)
                loss = F.cross_entropy(logits, logits.argmax(1))
                grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
                for (name, _), grad in zip(named, grads, strict=True):
                    if grad is not None:
                        squared = grad.detach() ** 2
                        sums[name] = sums[name] + squared if name in sums else squared
                n_batches += 1
    finally:
        for (_, param), flag in zip(named, flags, strict=True):
            param.requires_grad_(flag)
    if n_batches == 0:
        raise ValueError("loss 'eata': fisher_data holds no images")
    params = dict(named)
    return {
        name: (total / n_batches, params[name].detach().clone()) for name, total in sums.items()
    }
