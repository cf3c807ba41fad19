"""The learned pseudo-margin for models that are not margin-consistent (Ngnawé et al.,
NeurIPS 2024, section 5): a small MLP regresses normalized input margins from what the
model computes anyway (its logits, or its penultimate features), and replaces the logit
margin as the detection score.

As the paper: MLP d -> 512 -> 512 -> 1 with ReLU and a sigmoid output, MSE on
`d_in / max d_in` (max over the training split), Adam lr 1e-4, trained on a held-out split
and evaluated on the test split; inputs used raw. Deviations from the official notebook
(`notebook/modeling.py`, `CNET(depth=4)` and `DeepNet`): it stacks three 512-wide linear
layers, the first without activation, and regresses `sqrt(d_in)` unnormalized; we follow
the paper's description. Full-batch steps (the notebook's batch 5000 covers its whole
held-out split too); `epochs` defaults to the notebook's 500. Samples whose margin is inf
(no adversarial point found) are clipped to the largest finite margin.
"""

from __future__ import annotations

import torch
from torch import nn

from tta.robust.state import attack_state


class PseudoMargin(nn.Module):
    """d -> 512 -> 512 -> 1, ReLU, sigmoid: a margin in [0, 1] (of the training maximum)."""

    def __init__(self, in_features: int, hidden: int = 512) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(in_features, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, 1),
        )

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(inputs)).squeeze(1)


def margin_targets(d_in: torch.Tensor) -> tuple[torch.Tensor, float]:
    """`d_in / max d_in` with inf clipped to the largest finite margin; and that maximum."""
    finite = d_in[torch.isfinite(d_in)]
    if finite.numel() == 0 or float(finite.max()) <= 0:
        raise ValueError("the pseudo-margin needs some finite, positive input margins")
    top = float(finite.max())
    return torch.clamp(d_in, max=top) / top, top


def fit_pseudo_margin(
    inputs: torch.Tensor,
    d_in: torch.Tensor,
    epochs: int = 500,
    lr: float = 1e-4,
    seed: int = 0,
) -> PseudoMargin:
    """Train the MLP on (inputs, d_in) of the held-out split; returns it in eval mode."""
    if inputs.ndim != 2 or inputs.shape[0] != d_in.shape[0]:
        raise ValueError(f"inputs must be (N, d) for N={d_in.shape[0]}, got {tuple(inputs.shape)}")
    targets, _ = margin_targets(d_in.float())
    with torch.random.fork_rng(devices=[]):  # seeded init, the global RNG untouched
        torch.manual_seed(seed)
        model = PseudoMargin(inputs.shape[1])
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    inputs = inputs.detach().float()
    model.train()
    for _ in range(epochs):
        loss = nn.functional.mse_loss(model(inputs), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


def last_linear(model: nn.Module) -> nn.Linear:
    """The classifier head: the last `nn.Linear` registered in the model."""
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(
            f"{type(model).__name__} has no nn.Linear head: use the logits as the "
            "pseudo-margin's input (--pseudo logits)"
        )
    return linears[-1]


@torch.no_grad()
def logits_and_features(
    model: nn.Module, x: torch.Tensor, batch_size: int = 500, features: bool = True
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits and (when `features`) penultimate features, the input of the last linear
    layer, computed in batches; features are None when not asked for."""
    logits, found = [], []
    with attack_state(model) as net:
        seen: list[torch.Tensor] = []
        handle = None
        if features:
            head = last_linear(net)
            handle = head.register_forward_hook(
                lambda m, args, out: seen.append(args[0].flatten(1))
            )
        try:
            for begin in range(0, x.shape[0], batch_size):
                seen.clear()
                logits.append(net(x[begin : begin + batch_size]))
                if features:
                    found.append(seen[-1])
        finally:
            if handle is not None:
                handle.remove()
    return torch.cat(logits), (torch.cat(found) if features else None)
