"""`cmf`: Lee and Chang, "Continual Momentum Filtering on Parameter Space for Online Test-time
Adaptation", ICLR 2024.

As the official code in mariodoebler/test-time-adaptation (`classification/methods/cmf.py`,
based on the authors' code; defaults in `conf.py` `_C.CMF` and `_C.ROID`): the objective,
weights, consistency term, prior correction, model setup and presets are ROID's (the
official `CMF` class repeats ROID's `loss_calculation`; here `CMFLoss` subclasses
`ROIDLoss`, see tta/losses/roid.py). What differs is the step after the optimizer's, which
replaces ROID's weight ensemble by a Kalman-style filter over the trainable parameters
(`bayesian_filtering`, `cmf_filter`):

1. predict: the hidden parameters h move toward the source, h <- alpha h + (1 - alpha) src
   (`alpha=0.99`), and its variance v <- alpha^2 v + q;
2. update: beta = (1 - q) / (v + 1 - q), clipped below at 0.89 and set to 1 from 0.9999 on;
   v <- beta v; h <- beta h + (1 - beta) theta (theta the adapted parameters);
3. ensemble: theta <- gamma theta + (1 - gamma) h (`gamma=0.99`).

q = `q` x (number of trainable parameters) / 38400 (`Q=0.005`, `param_size_ratio`); h and v
start at the source parameters and 0. `filter_type` "lp" (the default) ensembles with the
hidden model after the update; "op" with the recovered (predicted) one, but in the official
code both names are the same object, updated in place, so the two give the same result: we
keep the option and its identical behaviour.

Deviations: only the trainable parameters are filtered (the official filters every
parameter of its hidden copy, `update_all=True`, but the others equal the source's, so
their filtered values stay the source's); `reset()` also sets v back to 0 (the official
reset reloads the models and leaves v and beta as they were), so a reset model behaves as a
fresh one. The rest as ROID (tta/losses/roid.py).
"""

from __future__ import annotations

import torch
from torch import nn

from tta.context import LossContext
from tta.losses.roid import ROIDLoss, _check_unit
from tta.registry import LOSSES

FILTER_TYPES = ("lp", "op")
PARAM_SIZE_REFERENCE = 38400  # the official divisor of the number of trainable parameters


def cmf_beta(variance: float, q: float) -> float:
    """The filter's gain (1 - q) / (v + 1 - q), clipped below at 0.89, 1 from 0.9999 on."""
    r = 1 - q
    beta = r / (variance + r)
    beta = beta if beta > 0.89 else 0.89
    return beta if beta < 0.9999 else 1.0


@torch.no_grad()
def cmf_filter(
    triples: list[tuple[nn.Parameter, torch.Tensor, torch.Tensor]],
    variance: float,
    q: float,
    alpha: float,
    gamma: float,
) -> tuple[float, float]:
    """One predict/update/ensemble step over (theta, hidden, source) triples, in place.

    Returns the new variance and the gain beta used.
    """
    variance = alpha**2 * variance + q
    beta = cmf_beta(variance, q)
    variance = beta * variance
    for param, hidden, source in triples:
        hidden.lerp_(source, 1 - alpha)  # predict
        hidden.lerp_(param, 1 - beta)  # update
        param.lerp_(hidden, 1 - gamma)  # ensemble
    return variance, beta


@LOSSES.register("cmf")
class CMFLoss(ROIDLoss):
    """ROID's objective with continual momentum filtering in place of the weight ensemble."""

    name = "cmf"

    def __init__(
        self,
        alpha: float = 0.99,
        gamma: float = 0.99,
        q: float = 0.005,
        filter_type: str = "lp",
        use_weighting: bool = True,
        use_prior_correction: bool = True,
        use_consistency: bool = True,
        momentum_probs: float = 0.9,
        temperature: float = 1 / 3,
    ) -> None:
        super().__init__(
            use_weighting=use_weighting,
            use_prior_correction=use_prior_correction,
            use_consistency=use_consistency,
            momentum_probs=momentum_probs,
            temperature=temperature,
        )
        if filter_type not in FILTER_TYPES:
            raise ValueError(
                f"loss 'cmf': filter_type must be one of {', '.join(FILTER_TYPES)}, "
                f"got {filter_type!r}"
            )
        if not q >= 0:
            raise ValueError(f"loss 'cmf': q must be >= 0, got {q!r}")
        self.alpha = _check_unit("alpha", alpha, self.name)
        self.gamma = _check_unit("gamma", gamma, self.name)
        self.q_base = float(q)
        self.filter_type = filter_type
        self.variance = 0.0
        self.beta: float | None = None
        self.hidden: dict[str, torch.Tensor] = {}

    def reset(self) -> None:
        super().reset()
        self.variance = 0.0
        self.beta = None
        self.hidden = {}  # rebuilt from the source at the next update

    def q_for(self, n_trainable: int) -> float:
        """q scaled by the number of trainable parameters, as the official `param_size_ratio`."""
        return self.q_base * n_trainable / PARAM_SIZE_REFERENCE

    def after_update(self, context: LossContext) -> None:
        """Predict, update and ensemble (see the module docstring)."""
        named = context.named_params
        if not self.hidden:
            self.hidden = {name: self.source[name].clone() for name, _ in named}
        q = self.q_for(sum(p.numel() for _, p in named))
        triples = [(p, self.hidden[name], self.source[name]) for name, p in named]
        self.variance, self.beta = cmf_filter(triples, self.variance, q, self.alpha, self.gamma)

    def stats(self) -> dict[str, int | float]:
        return {**super().stats(), "variance": self.variance}
