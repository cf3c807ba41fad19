"""AugMix on batches of [0, 1] image tensors, as MEMO draws it (shared by `memo` and `ttaug`).

Hendrycks et al., "AugMix", ICLR 2020; the variant of MEMO's official code
(zhangmarvin/memo, `cifar-10-exps/utils/third_party.py` and `imagenet-exps/utils/
third_party.py`, `_augmix_aug`), drawn independently for every image of the batch:

- Pre-augmentation: a crop, then a horizontal flip with probability 1/2. `crop="pad"`
  (CIFAR): a random crop of the image padded with zeros by size/8 (4 pixels at 32);
  `crop="resized"` (ImageNet): a random resized crop (area 8%-100%, aspect ratio 3/4-4/3,
  ten tries, else the whole image), resized back to the image size.
- Three chains, each of 1-3 operations (uniform), each operation uniform among the nine
  below at severity 1 (`rand_lvl(1)` = U(0.1, 1) = u): autocontrast; equalize; rotate by
  int(3u) degrees; solarize above 256 - int(25.6u) (of 255); shear x or y by 0.03u;
  translate x or y by int(u size/30) pixels (signs random); posterize to 4 bits. Geometric
  operations are bilinear with a fill of 128/255.
- Mix: m x' + (1 - m) sum_i w_i chain_i(x'), x' the pre-augmented image,
  w ~ Dirichlet(1, 1, 1), m ~ Beta(1, 1).

Deviations from the PIL implementation: operations run in float on tensors (autocontrast
and equalize on 256 levels with PIL's formulas but no uint8 rounding of the result; shear
about the top-left corner as PIL, rotation about the centre as PIL); the mixing is done on
[0, 1] images instead of normalized ones (equivalent: normalization is affine and the
weights sum to one); the random numbers come from torch, not numpy; sizes follow the image
(the official code hard-codes 32 or 224).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

CROPS = ("pad", "resized")
FILL = 128 / 255
N_OPS = 9


def _uniform(n: int, low: float, high: float, device: torch.device) -> torch.Tensor:
    return torch.empty(n, device=device).uniform_(low, high)


def _signs(n: int, device: torch.device) -> torch.Tensor:
    return torch.where(torch.rand(n, device=device) > 0.5, -1.0, 1.0)


def warp(x: torch.Tensor, theta: torch.Tensor, fill: float = FILL) -> torch.Tensor:
    """Bilinear warp by per-image affine maps (output coordinates -> input, normalized);
    points outside the image take `fill`."""
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x - fill, grid, mode="bilinear", align_corners=False) + fill


def _identity(n: int, device: torch.device) -> torch.Tensor:
    return torch.eye(2, 3, device=device).repeat(n, 1, 1)


def rotate(x: torch.Tensor, degrees: torch.Tensor) -> torch.Tensor:
    """Rotation about the centre by `degrees` per image."""
    h, w = x.shape[-2:]
    a = torch.deg2rad(degrees)
    theta = _identity(len(x), x.device)
    theta[:, 0, 0], theta[:, 0, 1] = a.cos(), -a.sin() * h / w
    theta[:, 1, 0], theta[:, 1, 1] = a.sin() * w / h, a.cos()
    return warp(x, theta)


def shear(x: torch.Tensor, level: torch.Tensor, axis: int) -> torch.Tensor:
    """PIL's AFFINE (1, l, 0, 0, 1, 0) (axis 0: x' = x + l y) or (1, 0, 0, l, 1, 0) (axis 1),
    in pixel coordinates from the top-left corner."""
    h, w = x.shape[-2:]
    theta = _identity(len(x), x.device)
    if axis == 0:
        theta[:, 0, 1] = theta[:, 0, 2] = level * h / w
    else:
        theta[:, 1, 0] = theta[:, 1, 2] = level * w / h
    return warp(x, theta)


def translate(x: torch.Tensor, pixels: torch.Tensor, axis: int, fill: float = FILL) -> torch.Tensor:
    """Output pixel (x, y) takes input (x + t, y) (axis 0) or (x, y + t) (axis 1)."""
    size = x.shape[-1] if axis == 0 else x.shape[-2]
    theta = _identity(len(x), x.device)
    theta[:, axis, 2] = 2 * pixels / size
    return warp(x, theta, fill)


def _levels(x: torch.Tensor) -> torch.Tensor:
    return (x.clamp(0, 1) * 255).round()


def autocontrast(x: torch.Tensor) -> torch.Tensor:
    """Per image and channel, stretch [min, max] to [0, 1] (unchanged where max == min)."""
    lo = x.amin(dim=(-2, -1), keepdim=True)
    hi = x.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (x - lo) / span.clamp_min(1e-12), x)


def equalize(x: torch.Tensor) -> torch.Tensor:
    """PIL's histogram equalization per image and channel, on 256 levels."""
    n, c, h, w = x.shape
    levels = _levels(x).long().reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device).scatter_add_(
        1, levels, torch.ones_like(levels, dtype=torch.float32)
    )
    # PIL: step = (total - count of the last nonzero level) // 255; identity if step == 0
    last = 255 - (hist.flip(1) > 0).float().argmax(1)
    step = torch.div(h * w - hist.gather(1, last[:, None])[:, 0], 255, rounding_mode="floor")
    cumulative = torch.cumsum(hist, 1) - hist  # counts below each level
    lut = torch.div(
        torch.div(step, 2, rounding_mode="floor")[:, None] + cumulative,
        step.clamp_min(1)[:, None],
        rounding_mode="floor",
    ).clamp(max=255)
    out = lut.gather(1, levels) / 255
    out = torch.where((step > 0)[:, None], out, x.reshape(n * c, h * w))
    return out.reshape(n, c, h, w).to(x.dtype)


def solarize(x: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """Levels at or above `threshold` (of 255, per image) are inverted."""
    levels = _levels(x)
    flip = levels >= threshold.view(-1, 1, 1, 1)
    return torch.where(flip, 1 - levels / 255, x)


def posterize(x: torch.Tensor, bits: int = 4) -> torch.Tensor:
    """Keep the top `bits` bits of every 8-bit level."""
    mask = 256 - 2 ** (8 - bits)
    return (_levels(x).to(torch.uint8) & mask).to(x.dtype) / 255


def apply_op(x: torch.Tensor, op: int) -> torch.Tensor:
    """Operation `op` (0-8) of the list, at severity 1 with per-image random strength."""
    n, device, size = len(x), x.device, x.shape[-1]
    u = _uniform(n, 0.1, 1.0, device)  # rand_lvl(1)
    if op == 0:
        return autocontrast(x)
    if op == 1:
        return equalize(x)
    if op == 2:
        return rotate(x, torch.floor(u * 3) * _signs(n, device))
    if op == 3:
        return solarize(x, 256 - torch.floor(u * 25.6))
    if op in (4, 5):
        return shear(x, u * 0.03 * _signs(n, device), axis=op - 4)
    if op in (6, 7):
        size = x.shape[-1] if op == 6 else x.shape[-2]
        return translate(x, torch.floor(u * size / 30) * _signs(n, device), axis=op - 6)
    if op == 8:
        return posterize(x, 4)
    raise ValueError(f"unknown AugMix operation {op}")


def _pad_crop(x: torch.Tensor) -> torch.Tensor:
    """Random crop of the image zero-padded by size/8 (whole-pixel shifts)."""
    n, device = len(x), x.device
    h, w = x.shape[-2:]
    pad_h, pad_w = round(h / 8), round(w / 8)
    dy = torch.randint(-pad_h, pad_h + 1, (n,), device=device).float()
    dx = torch.randint(-pad_w, pad_w + 1, (n,), device=device).float()
    return translate(translate(x, dx, 0, fill=0.0), dy, 1, fill=0.0)


def _resized_crop(x: torch.Tensor, tries: int = 10) -> torch.Tensor:
    """torchvision's RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) at the image size."""
    n, device = len(x), x.device
    h, w = x.shape[-2:]
    area = torch.empty(n, tries, device=device).uniform_(0.08, 1.0) * h * w
    ratio = torch.exp(
        torch.empty(n, tries, device=device).uniform_(math.log(3 / 4), math.log(4 / 3))
    )
    cw, ch = torch.sqrt(area * ratio).round(), torch.sqrt(area / ratio).round()
    valid = (cw <= w) & (ch <= h) & (cw > 0) & (ch > 0)
    first = valid.float().argmax(1)
    found = valid.any(1)
    cw = torch.where(found, cw.gather(1, first[:, None])[:, 0], torch.tensor(float(w)))
    ch = torch.where(found, ch.gather(1, first[:, None])[:, 0], torch.tensor(float(h)))
    left = torch.floor(torch.rand(n, device=device) * (w - cw + 1))
    top = torch.floor(torch.rand(n, device=device) * (h - ch + 1))
    theta = torch.zeros(n, 2, 3, device=device)
    theta[:, 0, 0], theta[:, 1, 1] = cw / w, ch / h
    theta[:, 0, 2] = (2 * left + cw) / w - 1
    theta[:, 1, 2] = (2 * top + ch) / h - 1
    return warp(x, theta, fill=0.0)


def preaugment(x: torch.Tensor, crop: str = "pad") -> torch.Tensor:
    """The crop of `crop` ('pad' or 'resized'), then a horizontal flip with probability 1/2."""
    if crop not in CROPS:
        raise ValueError(f"unknown AugMix crop {crop!r}; known: {', '.join(CROPS)}")
    x = _pad_crop(x) if crop == "pad" else _resized_crop(x)
    flip = torch.rand(len(x), device=x.device) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)


def augmix(x: torch.Tensor, crop: str = "pad", width: int = 3, max_depth: int = 3) -> torch.Tensor:
    """One independent AugMix draw per image of a [0, 1] batch (N, C, H, W)."""
    n, device = len(x), x.device
    x = preaugment(x.clamp(0, 1), crop)
    weights = torch.distributions.Dirichlet(torch.ones(width, device=device)).sample((n,))
    m = torch.distributions.Beta(1.0, 1.0).sample((n,)).to(device)
    mix = torch.zeros_like(x)
    for chain in range(width):
        out = x
        depth = torch.randint(1, max_depth + 1, (n,), device=device)
        for position in range(max_depth):
            ops = torch.randint(0, N_OPS, (n,), device=device)
            active = depth > position
            for op in range(N_OPS):
                chosen = (active & (ops == op)).nonzero().flatten()
                if len(chosen):
                    out = out.index_copy(0, chosen, apply_op(out[chosen], op))
        mix = mix + weights[:, chain].view(-1, 1, 1, 1) * out
    m = m.view(-1, 1, 1, 1)
    return (m * x + (1 - m) * mix).clamp(0, 1)
