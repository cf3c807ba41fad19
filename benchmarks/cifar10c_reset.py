"""CIFAR-10-C reset-each-shift (TENT's example): RobustBench WRN-28-10 `Standard`, severity 5,
batch 200, 10000 images per corruption, the model reset to the source weights before each.

Published error (%), mean over the 15 corruptions (DequanWang/tent README; CoTTA Table 2):
  source 43.5  (72.3 65.7 72.9 46.9 54.3 34.8 42.0 25.1 41.3 26.0 9.3 46.7 26.6 58.5 30.3)
  norm   20.4  (28.1 26.1 36.3 12.8 35.3 14.2 12.1 17.3 17.4 15.3 8.4 12.6 23.8 19.7 27.3)
  tent   18.6  (24.8 23.5 33.0 12.0 31.8 13.7 10.8 15.9 16.2 13.7 7.9 12.1 22.0 17.3 24.2;
               CoTTA calls it TENT-online*)

    python benchmarks/cifar10c_reset.py --data-root DATA --model-dir MODELS

Writes runs/cifar10c-reset-<time>/comparison.md and comparison.json; GPU when present.
"""

import sys

from tta.harness.reproduce import main

if __name__ == "__main__":
    sys.exit(main("cifar10c-reset"))
