"""A two-class linear classifier whose input margins are known in closed form.

logits = (w.x + b, 0): the prediction flips where f(x) = w.x + b changes sign, so the
L-inf margin is |f(x)| / ||w||_1 and the L2 margin |f(x)| / ||w||_2 (while the box
[0, 1] does not bind: images lie in [0.3, 0.7] and margins stay below 0.3 per pixel).
"""

from __future__ import annotations

import torch
from torch import nn


class LinearTwoClass(nn.Module):
    def __init__(self, w: torch.Tensor, b: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.b = nn.Parameter(torch.tensor(float(b)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1) @ self.w + self.b
        return torch.stack([f, torch.zeros_like(f)], dim=1)

    def f(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return x.flatten(1) @ self.w + self.b

    def margin(self, x: torch.Tensor, norm: str) -> torch.Tensor:
        scale = self.w.abs().sum() if norm == "Linf" else self.w.norm()
        return (self.f(x).abs() / scale).detach()


def linear_problem(n: int = 40, seed: int = 0, norm: str = "Linf"):
    """(model, images (n, 3, 4, 4) in [0.3, 0.7], predicted labels, margins), margins in
    [0.004, 0.25] so that neither the box nor a tie interferes."""
    g = torch.Generator().manual_seed(seed)
    d = 3 * 4 * 4
    signs = torch.where(torch.rand(d, generator=g) < 0.5, -1.0, 1.0)
    w = signs * (0.5 + torch.rand(d, generator=g))
    model = LinearTwoClass(w, b=-float(w.sum()) * 0.5)  # f = 0 at the grey image
    x = 0.3 + 0.4 * torch.rand(4 * n, 3, 4, 4, generator=g)
    margins = model.margin(x, norm)
    keep = ((margins > 0.004) & (margins < 0.25)).nonzero().flatten()[:n]
    x = x[keep]
    labels = model(x).argmax(1).detach()
    return model, x, labels, model.margin(x, norm)


def test_the_closed_form_perturbations_flip_the_prediction_exactly_at_the_margin():
    model, x, y, linf = linear_problem(norm="Linf")
    f = model.f(x)
    toward = -torch.sign(f).view(-1, 1, 1, 1)
    corner = torch.sign(model.w.detach()).view(1, 3, 4, 4) * toward
    for scale, flips in ((0.999, False), (1.001, True)):
        moved = (x + scale * linf.view(-1, 1, 1, 1) * corner).clamp(0, 1)
        assert bool(((model(moved).argmax(1) != y) == flips).all())
    _, x2, y2, l2 = linear_problem(norm="L2")
    direction = (model.w.detach() / model.w.detach().norm()).view(1, 3, 4, 4)
    step = -torch.sign(model.f(x2)).view(-1, 1, 1, 1) * direction
    for scale, flips in ((0.999, False), (1.001, True)):
        moved = x2 + scale * l2.view(-1, 1, 1, 1) * step
        assert bool(((model(moved).argmax(1) != y2) == flips).all())
