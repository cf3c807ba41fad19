"""CIFAR-10-C continual (CoTTA's protocol): RobustBench WRN-28-10 `Standard`, severity 5,
batch 200, all 10000 images of each of the 15 corruptions in the standard order, no reset.

Published error (%), mean over the corruptions:
  source 43.5  (per corruption 72.3 65.7 72.9 46.9 54.3 34.8 42.0 25.1 41.3 26.0 9.3 46.7
               26.6 58.5 30.3; DequanWang/tent README and CoTTA Table 2)
  norm   20.4  (BN statistics of the test batch; tent README, CoTTA Table 2)
  tent   20.7  (CoTTA Table 2, TENT-continual) / 20.0 (mariodoebler/test-time-adaptation,
               benchmark.md, mean of 5 seeds)
  GALA paper: pl 88.72, pl+gala 28.68, shot 89.33, shot+gala 20.46 (--methods to run them)
  the zoo (mariodoebler/test-time-adaptation, continual, mean of 5 seeds): eata 17.9,
  sar 20.4, cotta 16.5, rotta 19.3, adacontrast 18.5, rmt 17.0, lame 64.3, roid 16.2
  (--methods eata,sar,cotta,rotta,adacontrast,rmt,lame,roid; each runs its --method preset)

    python benchmarks/cifar10c_continual.py --data-root DATA --model-dir MODELS \
        [--methods source,norm,tent,pl+gala,shot+gala]

Data: <DATA>/CIFAR-10-C/*.npy (or --download). Model: <MODELS>/cifar10/corruptions/Standard.pt
(downloaded by robustbench when online). Writes runs/cifar10c-continual-<time>/comparison.md
and comparison.json; uses the GPU when there is one.
"""

import sys

from tta.harness.reproduce import main

if __name__ == "__main__":
    sys.exit(main("cifar10c-continual"))
