"""Print the time per image of every corruption on small (32x32 by default) images.

    python benchmarks/corruption_speed.py [--num-images 200] [--size 32]

Each corruption is warmed up first (glass_blur compiles a numba helper once, about 2 s) and then
timed over ``--num-images`` synthetic images, cycling through the severities 1..5. Both wall
time and this process's CPU time are printed; on a busy machine the CPU time is the steadier.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from tta.data.corruptions import ALL_CORRUPTIONS, corrupt


def make_images(num_images: int, size: int, seed: int = 0) -> np.ndarray:
    """Smooth colour gradients with a bright square and mild noise, (N, size, size, 3) uint8."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / (size - 1)
    images = np.empty((num_images, size, size, 3), dtype=np.uint8)
    for i in range(num_images):
        a, b, c = rng.uniform(0.2, 0.8, size=3)
        image = np.stack([a * xx + 0.2, b * yy + 0.1, c * (1 - xx * yy)], axis=-1)
        top, left = rng.integers(0, size // 2, size=2)
        image[top : top + size // 3, left : left + size // 3] = rng.uniform(0.5, 1, size=3)
        image += rng.normal(scale=0.02, size=image.shape)
        images[i] = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    return images


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-images", type=int, default=200)
    parser.add_argument("--size", type=int, default=32)
    args = parser.parse_args()

    images = make_images(args.num_images, args.size)
    print(f"{args.num_images} images of {args.size}x{args.size}, severities 1..5 in turn")
    print(f"{'corruption':<20}{'wall ms/image':>14}{'cpu ms/image':>14}")
    for name in ALL_CORRUPTIONS:
        for severity in range(1, 6):  # warm-up: numba compilation, frost pictures, caches
            corrupt(images[0], name, severity, seed=0)
        wall, cpu = time.perf_counter(), time.process_time()
        for i, image in enumerate(images):
            corrupt(image, name, severity=1 + i % 5, seed=i)
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        print(f"{name:<20}{1e3 * wall / len(images):>14.3f}{1e3 * cpu / len(images):>14.3f}")


if __name__ == "__main__":
    main()
