"""AdaContrast's image views, as torch ops on a batch of [0, 1] images, drawn per image.

The official loaders (mariodoebler/test-time-adaptation `augmentations/
transforms_adacontrast.py`, `get_augmentation_versions("twss", "moco-v2-light")`; DianCh/
AdaContrast `moco/loader.py`) transform each PIL image on its own, so every random draw here
is per image:

- weak (`weak_view`, "plain"): resize to the image size and a random crop of that size
  (both the identity at the benchmarks' sizes), horizontal flip w.p. 0.5;
- strong (`strong_view`, "moco-v2-light"): w.p. 0.8 torchvision's ColorJitter(0.4, 0.4,
  0.4, 0.1) (brightness, contrast, saturation factors U(0.6, 1.4) and a hue shift
  U(-0.1, 0.1), in a random order per image), grayscale w.p. 0.2, w.p. 0.5 a Gaussian blur
  with sigma U(0.1, 2.0), horizontal flip w.p. 0.5.

Saturation, hue and grayscale change only 3-channel images (as torchvision leaves 1-channel
ones). Deviation: PIL's GaussianBlur(radius=sigma) approximates the Gaussian by box blurs;
ours is the exact Gaussian (13 taps, reflected borders; replicated on images of 6 pixels
or fewer).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

BLUR_TAPS = 13  # covers 3 sigma at the largest sigma, 2.0


def _uniform(n: int, low: float, high: float, like: torch.Tensor) -> torch.Tensor:
    """n draws of U(low, high), shaped (n, 1, 1, 1) to scale images."""
    return torch.empty(n, 1, 1, 1, dtype=like.dtype).uniform_(low, high).to(like.device)


def _chance(n: int, p: float, like: torch.Tensor) -> torch.Tensor:
    """n coin flips with P(True) = p, shaped (n, 1, 1, 1)."""
    return (torch.rand(n, 1, 1, 1) < p).to(like.device)


def gray(x: torch.Tensor) -> torch.Tensor:
    """Luma of RGB images (ITU-R 601-2, as torchvision) as 3 channels; 1-channel unchanged."""
    if x.shape[1] != 3:
        return x
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)


def shift_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue of RGB images by `shift` (fraction of a turn, one per image) in HSV,
    as torchvision's `adjust_hue`; other images are returned unchanged."""
    if x.shape[1] != 3:
        return x
    r, g, b = x.unbind(1)
    high, low = x.max(1).values, x.min(1).values
    chroma = high - low
    safe = torch.where(chroma == 0, torch.ones_like(chroma), chroma)
    rc, gc, bc = (high - r) / safe, (high - g) / safe, (high - b) / safe
    h = torch.where(high == r, bc - gc, torch.where(high == g, 2.0 + rc - bc, 4.0 + gc - rc))
    h = torch.where(chroma == 0, torch.zeros_like(h), h)
    h = (h / 6.0 + 1.0) % 1.0
    s = chroma / torch.where(high == 0, torch.ones_like(high), high)
    h = (h + shift.view(-1, 1, 1)) % 1.0
    i = torch.floor(h * 6.0)
    f = h * 6.0 - i
    i = i.long() % 6
    v = high
    p, q, t = v * (1 - s), v * (1 - s * f), v * (1 - s * (1 - f))
    choices = (
        (v, t, p),
        (q, v, p),
        (p, v, t),
        (p, q, v),
        (t, p, v),
        (v, p, q),
    )
    out = torch.zeros_like(x)
    for k, channels in enumerate(choices):
        out = torch.where((i == k).unsqueeze(1), torch.stack(channels, 1), out)
    return out


def color_jitter(x: torch.Tensor) -> torch.Tensor:
    """ColorJitter(0.4, 0.4, 0.4, 0.1) with factors and op order drawn per image."""
    n = x.shape[0]
    brightness = _uniform(n, 0.6, 1.4, x)
    contrast = _uniform(n, 0.6, 1.4, x)
    saturation = _uniform(n, 0.6, 1.4, x)
    hue = _uniform(n, -0.1, 0.1, x).flatten()
    order = torch.rand(n, 4).argsort(1).to(x.device)  # a random permutation per image
    for slot in range(4):
        op = order[:, slot].view(-1, 1, 1, 1)
        mean = gray(x).mean(dim=(1, 2, 3), keepdim=True)
        candidates = (
            (brightness * x).clamp(0, 1),
            (contrast * x + (1 - contrast) * mean).clamp(0, 1),
            (saturation * x + (1 - saturation) * gray(x)).clamp(0, 1),
            shift_hue(x, hue),
        )
        x = torch.where(op == 0, candidates[0], x)
        for k in range(1, 4):
            x = torch.where(op == k, candidates[k], x)
    return x


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with one sigma per image (`sigma` of shape (n,))."""
    n, c, h, w = x.shape
    half = (BLUR_TAPS - 1) / 2
    taps = torch.linspace(-half, half, BLUR_TAPS, dtype=x.dtype, device=x.device)
    kernel = torch.exp(-0.5 * (taps.view(1, -1) / sigma.view(-1, 1).to(x)) ** 2)
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, 0)  # (n*c, taps)
    pad = BLUR_TAPS // 2
    mode = "reflect" if min(h, w) > pad else "replicate"
    out = F.pad(x.reshape(1, n * c, h, w), (pad, pad, pad, pad), mode=mode)
    out = F.conv2d(out, kernel.view(n * c, 1, 1, -1), groups=n * c)
    out = F.conv2d(out, kernel.view(n * c, 1, -1, 1), groups=n * c)
    return out.view(n, c, h, w)


def random_flip(x: torch.Tensor) -> torch.Tensor:
    """Each image flipped left-right with probability 0.5."""
    return torch.where(_chance(x.shape[0], 0.5, x), x.flip(-1), x)


def weak_view(x: torch.Tensor) -> torch.Tensor:
    """AdaContrast's weak view ("plain" at the image's own size): a random flip per image."""
    return random_flip(x)


def strong_view(x: torch.Tensor) -> torch.Tensor:
    """AdaContrast's strong view ("moco-v2-light"), drawn per image (see the module docstring)."""
    n = x.shape[0]
    x = x.clamp(0, 1)
    x = torch.where(_chance(n, 0.8, x), color_jitter(x), x)
    x = torch.where(_chance(n, 0.2, x), gray(x), x)
    sigma = torch.empty(n).uniform_(0.1, 2.0)
    x = torch.where(_chance(n, 0.5, x), gaussian_blur(x, sigma), x)
    return random_flip(x)
