"""Common image corruptions (Hendrycks & Dietterich, 2019) whose strength follows the image size.

The 15 standard corruptions of ImageNet-C / CIFAR-10-C plus the 4 held-out ("validation") ones
are available through a single function, :func:`corrupt`.

Why the strength depends on the image size
------------------------------------------
ImageNet-C and CIFAR-10-C use the same corruption *types* but different *constants*: a blur
radius of 10 px or Gaussian noise with std 0.38 is a meaningful shift on a 224 px photo but
destroys a 32 px image. Applying the ImageNet-C strengths to 32x32 inputs leaves a source model
near chance on about half of the corruptions, so there is nothing left for test-time adaptation
to recover and the benchmark stops measuring anything. We therefore pick the parameters by size:

* ``max(H, W) <= 64`` (CIFAR-like 32x32, our zero-padded 32x32 Fashion-MNIST): the CIFAR-10-C
  constants from ``ImageNet-C/create_c/make_cifar_c.py`` in github.com/hendrycks/robustness,
  implemented here (see :data:`CIFAR_PARAMS`). Where ``make_cifar_c.py`` hard-codes 32 px
  (glass-blur loop bounds, fog map size, frost crop, pixelate size) we use the actual size;
  elastic-transform constants, which the reference writes as fractions of the 32 px image
  size, are scaled by ``max(H, W)``. On 32x32 inputs all of these are exactly the reference.
* larger images (224 px ImageNet-C): delegated to the ``imagecorruptions`` package
  (PyPI ``imagecorruptions-imaug``), which hard-codes the ImageNet-C constants.

Implementation notes
--------------------
* The small-image path reuses the package's primitives: ``disk`` (defocus), ``clipped_zoom``
  (snow, and the zoom-blur matrices), the motion-blur kernel of its numpy port of
  ImageMagick's MotionBlurImage (the reference uses Wand/ImageMagick for motion blur and snow;
  we use this kernel with the CIFAR radius/sigma), the numba pixel shuffle of glass blur and
  the bundled frost pictures. Three pieces are re-implemented for speed with the same maths:
  the motion-blur taps (one gather instead of ``np.roll`` per tap), the plasma
  fractal of fog (also to draw from a local RNG) and zoom blur (one precomputed sparse
  interpolation matrix instead of 6-26 ``scipy.ndimage.zoom`` calls). Brightness and saturation are
  changed in closed form instead of a full RGB->HSV->RGB round trip.
* Determinism: every random draw comes from ``np.random.default_rng(seed)``. Package helpers
  that draw from numpy's *global* RNG run with the global RNG seeded from ``seed`` and its
  previous state restored afterwards, so callers' global RNG streams are not disturbed (this
  save/restore is not thread-safe; use processes, e.g. DataLoader workers, for parallelism).
  Glass blur's numba helper gets an explicit seed.
* The first ``glass_blur`` call compiles the package's numba helper (about 2 s, once per
  process); afterwards every corruption takes well under 2 ms per 32x32 image
  (``benchmarks/corruption_speed.py``).
* As in the reference, the float result is clipped to [0, 255] and converted to uint8 by
  truncation (``np.uint8``) at the very end.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import math
from collections.abc import Callable, Iterator
from io import BytesIO
from typing import Any

import cv2
import numpy as np
from imagecorruptions import corrupt as _imagenet_corrupt
from imagecorruptions.corruptions import (
    _shuffle_pixels_njit_glass_blur,
    clipped_zoom,
    disk,
    getMotionBlurKernel,
    getOptimalKernelWidth1D,
    next_power_of_2,
)
from PIL import Image
from scipy import ndimage, sparse

__all__ = [
    "ALL_CORRUPTIONS",
    "CIFAR_PARAMS",
    "HELDOUT_CORRUPTIONS",
    "SMALL_IMAGE_MAX_SIDE",
    "STANDARD_CORRUPTIONS",
    "corrupt",
]

STANDARD_CORRUPTIONS: tuple[str, ...] = (
    "gaussian_noise",
    "shot_noise",
    "impulse_noise",
    "defocus_blur",
    "glass_blur",
    "motion_blur",
    "zoom_blur",
    "snow",
    "frost",
    "fog",
    "brightness",
    "contrast",
    "elastic_transform",
    "pixelate",
    "jpeg_compression",
)
HELDOUT_CORRUPTIONS: tuple[str, ...] = ("speckle_noise", "gaussian_blur", "spatter", "saturate")
ALL_CORRUPTIONS: tuple[str, ...] = STANDARD_CORRUPTIONS + HELDOUT_CORRUPTIONS

#: Images whose longer side is at most this many pixels get the CIFAR-10-C strengths.
SMALL_IMAGE_MAX_SIDE = 64
#: Smallest accepted height and width (also the limit of the ``imagecorruptions`` package).
MIN_SIDE = 32

# CIFAR-10-C constants, one entry per severity 1..5, from make_cifar_c.py in
# github.com/hendrycks/robustness (ImageNet-C/create_c/make_cifar_c.py).
CIFAR_PARAMS: dict[str, tuple[Any, ...]] = {
    # std of additive N(0, c) noise on [0, 1] pixels
    "gaussian_noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    # photons per unit intensity: Poisson(x * c) / c
    "shot_noise": (500, 250, 100, 75, 50),
    # fraction of salt-and-pepper values
    "impulse_noise": (0.01, 0.02, 0.03, 0.05, 0.07),
    # (disk radius, anti-alias Gaussian sigma)
    "defocus_blur": ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)),
    # (Gaussian sigma, max pixel displacement, shuffle iterations)
    "glass_blur": ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)),
    # (radius, sigma) of the ImageMagick-style motion blur; angle ~ U(-45, 45) degrees
    "motion_blur": ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    # zoom factors np.arange(1, stop, 0.01), one stop per severity
    "zoom_blur": (1.06, 1.11, 1.16, 1.21, 1.26),
    # (mean, std, zoom, threshold, blur radius, blur sigma, image blend) of the snow layer
    "snow": (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    # (image weight, frost weight); frost pictures resized by 0.2 and randomly cropped
    "frost": ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)),
    # (fog strength, plasma-fractal wibble decay)
    "fog": ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)),
    # added to the HSV value channel
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    # contrast factor around the per-channel mean
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    # (displacement alpha, displacement sigma, affine max shift) as fractions of the image size
    "elastic_transform": (
        (0, 0, 0.08),
        (0.05, 0.2, 0.07),
        (0.08, 0.06, 0.06),
        (0.1, 0.04, 0.05),
        (0.1, 0.03, 0.03),
    ),
    # downscale factor before upscaling back (box filter both ways)
    "pixelate": (0.95, 0.9, 0.85, 0.75, 0.65),
    # JPEG quality
    "jpeg_compression": (80, 65, 58, 50, 40),
    # std of multiplicative noise: x + x * N(0, c)
    "speckle_noise": (0.06, 0.1, 0.12, 0.16, 0.2),
    # Gaussian sigma in pixels
    "gaussian_blur": (0.4, 0.6, 0.7, 0.8, 1),
    # (mean, std, sigma, threshold, intensity or mud sigma, mud?) of the liquid layer
    "spatter": (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
    # (scale, offset) of the HSV saturation channel
    "saturate": ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)),
}

# make_cifar_c.py draws from the first five of the six frost pictures.
_FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg")
_FROST_SCALE = 0.2
_WATER_RGB = np.array([175, 238, 238], dtype=np.float32) / 255  # pale turquoise
_MUD_RGB = np.array([63, 42, 20], dtype=np.float32) / 255  # mud brown
_SPATTER_EMBOSS = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _seeded_global_rng(seed: int) -> Iterator[None]:
    """Seed numpy's global RNG for package code that uses it; restore the old state after."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


def _draw_seed(rng: np.random.Generator) -> int:
    return int(rng.integers(2**32))


def _gaussian(
    x: np.ndarray, sigma: float, mode: str = "nearest", truncate: float = 4.0
) -> np.ndarray:
    """``skimage.filters.gaussian`` (channels last, not blurred across channels), via scipy."""
    sigmas = (sigma, sigma, 0) if x.ndim == 3 else sigma
    return ndimage.gaussian_filter(x, sigmas, mode=mode, truncate=truncate)


def _center_zoom(x: np.ndarray, factor: float) -> np.ndarray:
    """Zoom into the centre of an HxWxC array by ``factor``, keeping the HxW size."""
    h, w = x.shape[:2]
    zoomed = clipped_zoom(x, factor)
    top, left = (zoomed.shape[0] - h) // 2, (zoomed.shape[1] - w) // 2
    return zoomed[top : top + h, left : left + w]


@functools.lru_cache(maxsize=64)
def _zoom_matrix(size: int, factor: float) -> np.ndarray:
    """``_center_zoom`` along one axis as a (size x size) matrix (linear interpolation)."""
    crop = int(np.ceil(size / factor))
    top = (size - crop) // 2
    zoomed = ndimage.zoom(np.eye(size)[top : top + crop], (factor, 1), order=1)
    trim = (zoomed.shape[0] - size) // 2
    return zoomed[trim : trim + size]


@functools.lru_cache(maxsize=16)
def _zoom_blur_operator(height: int, width: int, stop: float) -> sparse.csr_array:
    """Zoom blur as one sparse (H*W x H*W) matrix acting on the row-major flattened image.

    Zoom blur averages the image with its centre zooms by 1, 1.01, ..., < stop. Each zoom is
    separable, rows @ image @ cols.T, i.e. kron(rows, cols) on the flattened image, and each
    row of ``rows``/``cols`` has two non-zeros (linear interpolation), so the sum is sparse.
    """
    factors = np.arange(1, stop, 0.01)
    total = sparse.identity(height * width, format="csr")
    for factor in factors:
        rows = sparse.csr_array(_zoom_matrix(height, factor))
        cols = sparse.csr_array(_zoom_matrix(width, factor))
        total = total + sparse.kron(rows, cols, format="csr")
    return sparse.csr_array(total / (len(factors) + 1))


def _motion_blur_fast(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """imagecorruptions' ``_motion_blur`` (numpy port of ImageMagick's MotionBlurImage).

    Same kernel and tap offsets as the package; the edge-clamped shifted copies are gathered
    with one ``np.take`` and summed with one einsum instead of two ``np.roll`` calls and a
    full-image update per tap, which makes it several times faster on small images.
    """
    width = getOptimalKernelWidth1D(radius, sigma)
    kernel = getMotionBlurKernel(width, sigma)
    point = (width * np.sin(np.deg2rad(angle)), width * np.cos(np.deg2rad(angle)))
    hypot = math.hypot(point[0], point[1])
    h, w = x.shape[:2]
    shifts = []
    for i in range(width):
        dy = -math.ceil(((i * point[0]) / hypot) - 0.5)
        dx = -math.ceil(((i * point[1]) / hypot) - 0.5)
        if abs(dy) >= h or abs(dx) >= w:  # the motion left the image
            break
        shifts.append((dy, dx))
    dy, dx = np.array(shifts).T[..., None, None]
    # tap t at pixel (r, c) reads x[r - dy[t], c - dx[t]], clamped to the image
    rows = np.clip(np.arange(h)[:, None] - dy, 0, h - 1)
    cols = np.clip(np.arange(w)[None, :] - dx, 0, w - 1)
    taps = np.take(x.reshape(h * w, -1), rows * w + cols, axis=0).reshape(len(shifts), -1)
    blurred = np.einsum("t,tp->p", kernel[: len(shifts)], taps.astype(np.float64))
    return blurred.reshape(x.shape)


def _roll(a: np.ndarray, shift: int, axis: int) -> np.ndarray:
    """``np.roll`` by +-1 without its Python overhead (it dominates on tiny arrays)."""
    if axis == 0:
        return np.concatenate((a[-shift:], a[:-shift]), axis=0)
    return np.concatenate((a[:, -shift:], a[:, :-shift]), axis=1)


def _plasma_fractal(mapsize: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square height map in [0, 1], as ``imagecorruptions.plasma_fractal``.

    Re-implemented only to draw from ``rng`` instead of numpy's global RNG and to avoid
    ``np.roll``'s per-call overhead, which dominated the package version's time at 32 px.
    """
    assert mapsize & (mapsize - 1) == 0, "mapsize must be a power of two"
    heights = np.empty((mapsize, mapsize), dtype=np.float64)
    heights[0, 0] = 0
    step = mapsize
    wibble = 100.0

    def wibbled_mean(total: np.ndarray) -> np.ndarray:
        return total / 4 + wibble * rng.uniform(-wibble, wibble, total.shape)

    while step >= 2:
        half = step // 2
        # squares: centre of each square = mean of its corners + noise
        corners = heights[0:mapsize:step, 0:mapsize:step]
        total = corners + _roll(corners, -1, 0)
        total = total + _roll(total, -1, 1)
        heights[half:mapsize:step, half:mapsize:step] = wibbled_mean(total)
        # diamonds: edge midpoints = mean of the two corners and two centres + noise
        centres = heights[half:mapsize:step, half:mapsize:step]
        corners = heights[0:mapsize:step, 0:mapsize:step]
        total = (centres + _roll(centres, 1, 0)) + (corners + _roll(corners, -1, 1))
        heights[0:mapsize:step, half:mapsize:step] = wibbled_mean(total)
        total = (centres + _roll(centres, 1, 1)) + (corners + _roll(corners, -1, 0))
        heights[half:mapsize:step, 0:mapsize:step] = wibbled_mean(total)
        step //= 2
        wibble /= decay

    heights -= heights.min()
    return heights / heights.max()


@functools.lru_cache(maxsize=32)
def _disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    return disk(radius=radius, alias_blur=alias_blur)


@functools.lru_cache(maxsize=64)
def _frost_picture(index: int, height: int, width: int) -> np.ndarray:
    """The index-th frost picture as RGB, scaled by 0.2 (or more if needed to exceed HxW)."""
    ref = importlib.resources.files("imagecorruptions") / "frost" / _FROST_FILES[index]
    with importlib.resources.as_file(ref) as path:
        bgr = cv2.imread(str(path))
    if bgr is None:
        raise FileNotFoundError(f"could not read the frost picture {ref}")
    scale = max(_FROST_SCALE, (height + 1) / bgr.shape[0], (width + 1) / bgr.shape[1])
    bgr = cv2.resize(bgr, (0, 0), fx=scale, fy=scale)
    return np.ascontiguousarray(bgr[..., ::-1])


# ---------------------------------------------------------------------------------------------
# CIFAR-10-C corruptions: (uint8 HxWx3 image, this severity's parameters, rng) -> float [0, 255]
# ---------------------------------------------------------------------------------------------


def _gaussian_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    x = img / 255.0
    return np.clip(x + rng.normal(scale=std, size=x.shape), 0, 1) * 255


def _shot_noise(img: np.ndarray, photons: float, rng: np.random.Generator) -> np.ndarray:
    x = img / 255.0
    return np.clip(rng.poisson(x * photons) / photons, 0, 1) * 255


def _impulse_noise(img: np.ndarray, amount: float, rng: np.random.Generator) -> np.ndarray:
    # salt-and-pepper per value, half salt, like skimage.util.random_noise(mode="s&p")
    hit = rng.random(img.shape) < amount
    salt = rng.random(img.shape) < 0.5
    return np.where(hit, salt * 255.0, img.astype(np.float64))


def _speckle_noise(img: np.ndarray, std: float, rng: np.random.Generator) -> np.ndarray:
    x = img / 255.0
    return np.clip(x + x * rng.normal(scale=std, size=x.shape), 0, 1) * 255


def _gaussian_blur(img: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    return np.clip(_gaussian(img / 255.0, sigma), 0, 1) * 255


def _glass_blur(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    sigma = c[0]
    x = np.uint8(_gaussian(img / 255.0, sigma) * 255)
    x = _shuffle_pixels_njit_glass_blur(x.shape[0], x.shape[1], x, c, _draw_seed(rng))
    return np.clip(_gaussian(x / 255.0, sigma), 0, 1) * 255


def _defocus_blur(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    radius, alias_blur = c
    blurred = cv2.filter2D(img / 255.0, -1, _disk_kernel(radius, alias_blur))
    return np.clip(blurred, 0, 1) * 255


def _motion_blur(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    radius, sigma = c
    angle = rng.uniform(-45, 45)
    return np.clip(_motion_blur_fast(img, radius=radius, sigma=sigma, angle=angle), 0, 255)


def _zoom_blur(img: np.ndarray, stop: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    blurred = _zoom_blur_operator(h, w, stop) @ (img / 255.0).reshape(h * w, 3)
    return np.clip(blurred.reshape(h, w, 3), 0, 1) * 255


def _snow(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    mean, std, zoom, threshold, radius, sigma, blend = c
    h, w = img.shape[:2]
    x = img.astype(np.float32) / 255
    layer = rng.normal(loc=mean, scale=std, size=(h, w))
    layer = _center_zoom(layer[..., None], zoom)[..., 0]
    layer[layer < threshold] = 0
    layer = (np.clip(layer, 0, 1) * 255).astype(np.uint8)  # 8-bit, as the reference's PNG
    angle = rng.uniform(-135, -45)
    layer = np.round(_motion_blur_fast(layer, radius=radius, sigma=sigma, angle=angle)) / 255
    layer = layer[..., None]
    gray = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
    x = blend * x + (1 - blend) * np.maximum(x, gray * 1.5 + 0.5)
    return np.clip(x + layer + np.rot90(layer, k=2), 0, 1) * 255


def _frost(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    image_weight, frost_weight = c
    h, w = img.shape[:2]
    picture = _frost_picture(int(rng.integers(len(_FROST_FILES))), h, w)
    top = rng.integers(0, picture.shape[0] - h)
    left = rng.integers(0, picture.shape[1] - w)
    crop = picture[top : top + h, left : left + w]
    return np.clip(image_weight * img + frost_weight * crop.astype(np.float64), 0, 255)


def _fog(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    strength, decay = c
    h, w = img.shape[:2]
    fractal = _plasma_fractal(next_power_of_2(max(h, w)), decay, rng)
    x = img / 255.0
    max_val = x.max()
    x = x + strength * fractal[:h, :w, None]
    return np.clip(x * max_val / (max_val + strength), 0, 1) * 255


def _brightness(img: np.ndarray, shift: float, rng: np.random.Generator) -> np.ndarray:
    # HSV value += shift. With hue and saturation fixed, RGB is proportional to the value
    # V = max(R, G, B), so this is a rescaling; black (V = 0, S = 0) becomes grey.
    x = img / 255.0
    value = x.max(axis=2, keepdims=True)
    new_value = np.clip(value + shift, 0, 1)
    grey = np.broadcast_to(new_value, x.shape).copy()
    return np.clip(np.divide(x * new_value, value, out=grey, where=value > 0), 0, 1) * 255


def _contrast(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    x = img / 255.0
    means = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - means) * factor + means, 0, 1) * 255


def _saturate(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    # HSV saturation S = (V - min) / V becomes clip(S * scale + offset, 0, 1) at fixed hue and
    # value. Each channel is V - V * S * g(hue), so g = (V - channel) / (V * S) is kept and S
    # replaced. Grey pixels (S = 0) have hue 0 in skimage's rgb2hsv, i.e. g = (0, 1, 1).
    scale, offset = c
    x = img / 255.0
    value = x.max(axis=2, keepdims=True)
    chroma = value - x.min(axis=2, keepdims=True)
    sat = np.divide(chroma, value, out=np.zeros_like(value), where=value > 0)
    new_sat = np.clip(sat * scale + offset, 0, 1)
    red_hue = np.broadcast_to(np.array([0.0, 1.0, 1.0]), x.shape).copy()
    g = np.divide(value - x, chroma, out=red_hue, where=chroma > 0)
    return np.clip(value - value * new_sat * g, 0, 1) * 255


def _elastic_transform(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    alpha, sigma, max_shift = (fraction * max(h, w) for fraction in c)
    x = img.astype(np.float32) / 255

    # random affine: move three points around the centre by up to max_shift
    center = np.float32((h, w)) // 2
    half = min(h, w) // 3
    src = np.float32([center + half, [center[0] + half, center[1] - half], center - half])
    dst = src + rng.uniform(-max_shift, max_shift, size=src.shape).astype(np.float32)
    matrix = cv2.getAffineTransform(src, dst)
    x = cv2.warpAffine(x, matrix, (w, h), borderMode=cv2.BORDER_REFLECT_101)

    # smooth random displacement field
    def field() -> np.ndarray:
        noise = rng.uniform(-1, 1, size=(h, w))
        return (_gaussian(noise, sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)

    dx, dy = field(), field()
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    coords = np.stack([rows + dy, cols + dx])
    warped = [ndimage.map_coordinates(x[..., k], coords, order=1, mode="reflect") for k in range(3)]
    return np.clip(np.stack(warped, axis=2), 0, 1) * 255


def _pixelate(img: np.ndarray, factor: float, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    small = Image.fromarray(img).resize((int(w * factor), int(h * factor)), Image.Resampling.BOX)
    return np.asarray(small.resize((w, h), Image.Resampling.BOX))


def _jpeg_compression(img: np.ndarray, quality: int, rng: np.random.Generator) -> np.ndarray:
    buffer = BytesIO()
    Image.fromarray(img).save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return np.asarray(decoded.convert("RGB"))


def _spatter(img: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    mean, std, sigma, threshold, intensity, mud = c
    x = img.astype(np.float32) / 255
    liquid = _gaussian(rng.normal(loc=mean, scale=std, size=img.shape[:2]), sigma)
    liquid[liquid < threshold] = 0

    if not mud:  # water drops: embossed outlines of the liquid blobs
        liquid8 = (np.clip(liquid, 0, 1) * 255).astype(np.uint8)
        dist = cv2.distanceTransform(255 - cv2.Canny(liquid8, 50, 150), cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        dist = cv2.filter2D(dist, cv2.CV_8U, _SPATTER_EMBOSS)
        dist = cv2.blur(dist, (3, 3)).astype(np.float32)
        mask = liquid8 * dist
        peak = mask.max()
        mask = mask / peak * intensity if peak > 0 else mask
        return np.clip(x + mask[..., None] * _WATER_RGB, 0, 1) * 255

    # mud: opaque brown blobs
    mask = _gaussian((liquid > threshold).astype(np.float32), intensity)
    mask[mask < 0.8] = 0
    mask = mask[..., None]
    return np.clip(x * (1 - mask) + _MUD_RGB * mask, 0, 1) * 255


_CIFAR_FUNCS: dict[str, Callable[[np.ndarray, Any, np.random.Generator], np.ndarray]] = {
    "gaussian_noise": _gaussian_noise,
    "shot_noise": _shot_noise,
    "impulse_noise": _impulse_noise,
    "defocus_blur": _defocus_blur,
    "glass_blur": _glass_blur,
    "motion_blur": _motion_blur,
    "zoom_blur": _zoom_blur,
    "snow": _snow,
    "frost": _frost,
    "fog": _fog,
    "brightness": _brightness,
    "contrast": _contrast,
    "elastic_transform": _elastic_transform,
    "pixelate": _pixelate,
    "jpeg_compression": _jpeg_compression,
    "speckle_noise": _speckle_noise,
    "gaussian_blur": _gaussian_blur,
    "spatter": _spatter,
    "saturate": _saturate,
}


# ---------------------------------------------------------------------------------------------
# public entry point
# ---------------------------------------------------------------------------------------------


def _validate(image: Any, name: Any, severity: Any, seed: Any) -> None:
    if not isinstance(name, str) or name not in _CIFAR_FUNCS:
        raise ValueError(f"unknown corruption {name!r}; known: {', '.join(ALL_CORRUPTIONS)}")
    if isinstance(severity, bool) or not isinstance(severity, (int, np.integer)):
        raise ValueError(f"severity must be an int in 1..5, got {severity!r}")
    if not 1 <= severity <= 5:
        raise ValueError(f"severity must be in 1..5, got {severity}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    expected = "an HxWx3 uint8 numpy array"
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be {expected}, got {type(image).__name__}")
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"image must be {expected}, got shape {image.shape} with dtype {image.dtype}"
        )
    if image.shape[0] < MIN_SIDE or image.shape[1] < MIN_SIDE:
        raise ValueError(
            f"image must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got "
            f"{image.shape[0]}x{image.shape[1]}"
        )


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(x, 0, 255).astype(np.uint8)


def corrupt(image: np.ndarray, name: str, severity: int, seed: int) -> np.ndarray:
    """Apply corruption ``name`` at ``severity`` (1..5) to ``image``.

    image: HxWx3 uint8 with H, W >= 32; returns HxWx3 uint8 of the same shape. Images with
    ``max(H, W) <= 64`` get the CIFAR-10-C strengths, larger ones the ImageNet-C strengths (via
    the ``imagecorruptions`` package). Deterministic for (image, name, severity, seed); numpy's
    global RNG state is left as it was.
    """
    _validate(image, name, severity, seed)
    image = np.ascontiguousarray(image)
    severity, seed = int(severity), int(seed)

    if max(image.shape[:2]) > SMALL_IMAGE_MAX_SIDE:
        kwargs = {"seed": seed % 2**32} if name in ("glass_blur", "impulse_noise") else {}
        with _seeded_global_rng(seed):
            out = _imagenet_corrupt(image, severity=severity, corruption_name=name, **kwargs)
        return _to_uint8(out)

    rng = np.random.default_rng(seed)
    return _to_uint8(_CIFAR_FUNCS[name](image, CIFAR_PARAMS[name][severity - 1], rng))
