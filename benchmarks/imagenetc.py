"""ImageNet-C continual: RobustBench `Standard_R50` (torchvision ResNet-50, IMAGENET1K_V1,
ImageNet normalization inside), severity 5, batch 64, RobustBench's fixed 5000 validation
images per corruption (already 224x224: no resize), the 15 corruptions in the standard order.
TENT uses its ImageNet preset: SGD, lr 2.5e-4, momentum 0.9.

Published error (%), mean over the corruptions (mariodoebler/test-time-adaptation,
benchmark.md, continual, mean of 5 seeds): source 82.0, norm (BN-1) 68.6, tent 62.6;
the zoo: eata 58.0, sar 61.9, cotta 63.1, rotta 67.3, adacontrast 65.5, rmt 59.9, lame 93.5,
roid 54.5 (--methods to run them).
CoTTA's Table 6 (82.4 / 72.1 / 66.5) averages 10 random corruption orders: shown for
reference, not the same protocol.

    python benchmarks/imagenetc.py --data-root DATA [--n-per-domain 50000]

Weights: torchvision's resnet50-0676ba61.pth in $TORCH_HOME/hub/checkpoints (downloaded when
online). Writes runs/imagenetc-continual-<time>/comparison.md and comparison.json; GPU when
present (a CPU run of 75000 ResNet-50 images takes hours).
"""

import sys

from tta.harness.reproduce import main

if __name__ == "__main__":
    sys.exit(main("imagenetc-continual"))
