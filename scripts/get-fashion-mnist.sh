#!/bin/sh
# Install Debian's Fashion-MNIST when it is missing and we can; otherwise say what happens next.
DIR=/usr/share/datasets/fashion-mnist
if [ -f "$DIR/t10k-images-idx3-ubyte.gz" ]; then
    exit 0
fi
if command -v apt-get >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ]; then
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) && exit 0
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        (sudo apt-get update -qq && sudo apt-get install -y -qq dataset-fashion-mnist) && exit 0
    fi
fi
echo "Fashion-MNIST is not in $DIR and could not be installed with apt-get;" \
     "tta-run will look in \$TTA_DATA and --data-root, then download it with torchvision." >&2
