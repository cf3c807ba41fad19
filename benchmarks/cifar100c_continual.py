"""CIFAR-100-C continual (CoTTA's protocol): RobustBench `Hendrycks2020AugMix_ResNeXt`
(ResNeXt-29, AugMix), severity 5, batch 200, 10000 images per corruption, no reset.

Published error (%), mean over the 15 corruptions:
  source 46.4  (CoTTA Table 4; per corruption 73.0 68.0 39.4 29.3 54.1 30.8 28.8 39.5 45.8
               50.3 29.5 55.1 37.2 74.7 41.2; also the GALA paper's 46.40)
  norm   35.4  (CoTTA Table 4, BN Stats Adapt)
  tent   60.9  (CoTTA Table 4, TENT-continual) / 62.2 (mariodoebler/test-time-adaptation)
  GALA paper: pl+gala 33.69, shot+gala 32.87 (--methods to run them)
  the zoo (mariodoebler/test-time-adaptation, continual, mean of 5 seeds): eata 32.2,
  sar 32.0, cotta 32.8, rotta 34.8, adacontrast 33.5, rmt 30.2, lame 98.5, roid 29.3

    python benchmarks/cifar100c_continual.py --data-root DATA --model-dir MODELS

Model: <MODELS>/cifar100/corruptions/Hendrycks2020AugMix_ResNeXt.pt. Writes
runs/cifar100c-continual-<time>/comparison.md and comparison.json; GPU when present.
"""

import sys

from tta.harness.reproduce import main

if __name__ == "__main__":
    sys.exit(main("cifar100c-continual"))
