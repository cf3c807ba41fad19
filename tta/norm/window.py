"""BatchNorm over a sliding window of the last W test samples, for small or single-image batches.

With batch size 1, a BatchNorm that normalizes with the current batch's statistics (TENT,
the `norm` baseline) sees one image: its statistics are those of one sample and adaptation
collapses. `WindowBatchNorm` normalizes with the statistics of the last `window` samples
instead: the current batch plus the most recent `window - B` samples before it.

Each forward pass stores its samples' per-channel mean and mean square (detached); the
normalization combines them with the current batch's (which carry the gradient, so TENT's
update still flows through the current images). Approximation: stored statistics were
computed with the weights of their own time, as in any running estimate. The window lives in
persistent buffers, so `AdaptedModel.reset()` (and episodic resets) empty it like any other
state. Methods that forward a batch several times per step (steps > 1, SAR's second pass)
store it each time.

Cost: no extra forward pass and 2 x window x channels floats per BatchNorm layer, unlike
re-forwarding a buffer of the last W inputs (mariodoebler/test-time-adaptation's approach).
"""

from __future__ import annotations

import torch
from torch import nn

from tta.norm.base import NormMode, batchnorm_modules
from tta.registry import NORMS


def check_window(window: int | None) -> None:
    """The window is None (off) or a positive int; refused before the model is touched."""
    if window is not None and (
        isinstance(window, bool) or not isinstance(window, int) or window < 1
    ):
        raise ValueError(f"norm 'window': window must be a positive int (samples), got {window!r}")


class WindowBatchNorm(nn.modules.batchnorm._BatchNorm):
    """A BatchNorm (1d/2d/3d) that normalizes with statistics over the last `window` samples."""

    def __init__(self, source: nn.modules.batchnorm._BatchNorm, window: int) -> None:
        check_window(window)
        super().__init__(source.num_features, source.eps, source.momentum, source.affine, False)
        self.window = window
        self.weight, self.bias = source.weight, source.bias
        device = source.weight.device if source.weight is not None else None
        self.register_buffer("window_mean", torch.zeros(window, source.num_features, device=device))
        self.register_buffer("window_sq", torch.zeros(window, source.num_features, device=device))
        self.register_buffer("window_count", torch.zeros((), dtype=torch.long, device=device))
        self._count = 0  # window_count on the host: no device sync per forward

    def _load_from_state_dict(self, *args, **kwargs) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._count = int(self.window_count)  # reset() loads the empty source window

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (batch, {self.num_features}, ...), got {tuple(x.shape)}")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        dims = [d for d in range(x.ndim) if d != 1]
        sample_dims = dims[1:]
        xf = x.float()
        mean_i = xf.mean(sample_dims) if sample_dims else xf  # (B, C)
        sq_i = (xf * xf).mean(sample_dims) if sample_dims else xf * xf
        batch = x.shape[0]
        past = min(self._count, max(self.window - batch, 0))
        mean_sum = mean_i.sum(0)
        sq_sum = sq_i.sum(0)
        if past:
            mean_sum = mean_sum + self.window_mean[-past:].sum(0)
            sq_sum = sq_sum + self.window_sq[-past:].sum(0)
        count = batch + past
        mean = mean_sum / count
        var = (sq_sum / count - mean * mean).clamp_min(0)
        self._remember(mean_i.detach(), sq_i.detach())
        shape = [1, -1] + [1] * (x.ndim - 2)
        out = (xf - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(x.dtype)

    @torch.no_grad()
    def _remember(self, mean_i: torch.Tensor, sq_i: torch.Tensor) -> None:
        keep = mean_i[-self.window :]
        k = keep.shape[0]
        self.window_mean.copy_(torch.cat([self.window_mean[k:], keep]))
        self.window_sq.copy_(torch.cat([self.window_sq[k:], sq_i[-self.window :]]))
        self._count = min(self._count + k, self.window)
        self.window_count.fill_(self._count)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, window={self.window}"


def use_window_statistics(model: nn.Module, window: int) -> int:
    """Replace every BatchNorm of `model` by a `WindowBatchNorm` sharing its affine parameters.

    Parameter names are unchanged (`layer1.0.bn1.weight`), so `params='norm'` and layer
    selectors see the same layers. Returns the number of layers replaced.
    """
    check_window(window)
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(
                child, WindowBatchNorm
            ):
                setattr(parent, name, WindowBatchNorm(child, window))
                replaced += 1
    if not replaced and not batchnorm_modules(model):
        raise ValueError(
            f"norm 'window' needs BatchNorm layers, but {type(model).__name__} has none"
        )
    return replaced


@NORMS.register("window")
class WindowNorm(NormMode):
    """Statistics of the last `window` test samples (64 by default): batch size 1 works."""

    name = "window"

    def __init__(self, window: int = 64) -> None:
        check_window(window)
        self.window = window

    def configure(self, model: nn.Module) -> None:
        use_window_statistics(model, self.window)

    def options(self) -> dict:
        return {"window": self.window}
