"""RobustBench models by name, built with robustbench's own architectures and loader.

A checkpoint is read from `<model_dir>/<dataset>/<threat_model>/<name>.pt` (robustbench's
layout); when it is missing robustbench downloads it from Google Drive, and when that fails
(no internet) the error says where the file was expected and where to get it. ImageNet
`Standard_R50` is torchvision's ResNet-50 (IMAGENET1K_V1 weights, fetched into torch's hub
cache, not `model_dir`) behind ImageNet normalization.

Input range, per family (checked in robustbench 1.1.1's model zoo): every zoo model takes
images in [0, 1] - robustbench evaluates them on `ToTensor()` output - and those that need
normalization carry it inside. CIFAR-10 `Standard` (WRN-28-10) was trained on unnormalized
[0, 1] inputs and has no normalization layer; `Hendrycks2020AugMix_WRN` and
`Hendrycks2020AugMix_ResNeXt` (CIFAR-10/100) subtract 0.5 and divide by 0.5 (`mu`/`sigma`
buffers); ImageNet models, `Standard_R50` included, sit behind an `ImageNormalizer` with
ImageNet's mean and std. `find_normalization` reports what a loaded model carries.
"""

from __future__ import annotations

import difflib
import os
import warnings
from pathlib import Path

from torch import nn

from tta.models.normalized import find_normalization
from tta.models.robustbench_import import import_robustbench
from tta.paths import cache_dir

DATASETS = {"cifar10": 10, "cifar100": 100, "imagenet": 1000}
THREAT_MODELS = ("corruptions", "Linf", "L2")  # searched in this order for a bare name
INPUT_SIZES = {"cifar10": 32, "cifar100": 32, "imagenet": 224}
TRUST_HINT = (
    "torch >= 2.6 loads only tensors by default; if you trust the file, set "
    "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1 to let torch unpickle it"
)


def default_model_dir() -> Path:
    """`$TTA_CACHE/models/robustbench` (robustbench's own default is ./models)."""
    return cache_dir() / "models" / "robustbench"


def checkpoint_path(
    model_dir: str | os.PathLike, dataset: str, threat_model: str, name: str
) -> Path:
    return Path(model_dir) / dataset / threat_model / f"{name}.pt"


def zoo(dataset: str) -> dict:
    """robustbench's model table of `dataset`: {threat model value: {name: entry}}."""
    import_robustbench()
    from robustbench.model_zoo import model_dicts
    from robustbench.model_zoo.enums import BenchmarkDataset

    return {
        threat.value: models for threat, models in model_dicts[BenchmarkDataset(dataset)].items()
    }


def find_threat_model(name: str, dataset: str, threat_model: str | None = None) -> str:
    """The threat model under which robustbench lists `name` for `dataset`, or a clear error."""
    table = zoo(dataset)
    if threat_model is not None:
        if threat_model not in table:
            raise ValueError(
                f"unknown threat model {threat_model!r}; known: {', '.join(sorted(table))}"
            )
        if name in table[threat_model]:
            return threat_model
        candidates = [threat_model]
    else:
        candidates = [t for t in THREAT_MODELS if t in table]
        for threat in candidates:
            if name in table[threat]:
                return threat
    names = sorted({n for t in candidates for n in table[t]})
    close = difflib.get_close_matches(name, names, n=5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise ValueError(
        f"{name!r} is not a robustbench {dataset} model ({'/'.join(candidates)}){hint} "
        "Other model forms: torchvision:<name>[:<weights>], timm:<name>, <path>,arch=<arch>"
    )


def from_torch_hub(name: str, dataset: str) -> bool:
    """robustbench builds ImageNet `Standard*` from torchvision's pretrained weights."""
    return dataset == "imagenet" and "Standard" in name


def torch_hub_file(url: str) -> Path:
    from torch.hub import get_dir

    return Path(get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def _download_source(entry: dict, name: str, dataset: str) -> str:
    gdrive = entry.get("gdrive_id")
    if from_torch_hub(name, dataset):
        from torchvision.models import ResNet50_Weights

        return ResNet50_Weights.IMAGENET1K_V1.url
    ids = gdrive if isinstance(gdrive, list) else [gdrive]
    return ", ".join(f"https://drive.google.com/uc?id={i}" for i in ids if i) or "the timm hub"


def is_web_page(path: Path) -> bool:
    """Google Drive answers a failed download with HTML, which robustbench saves as the .pt."""
    with path.open("rb") as handle:
        return handle.read(1) == b"<"


def _explain(
    error: Exception, name: str, dataset: str, threat: str, path: Path, existed: bool, url: str
) -> Exception:
    """A user-facing error for a failed robustbench load: what was expected where, and why."""
    what = f"robustbench model {name!r} ({dataset}, {threat})"
    if from_torch_hub(name, dataset):
        return FileNotFoundError(
            f"{what} is torchvision's ResNet-50 and needs its IMAGENET1K_V1 weights at "
            f"{torch_hub_file(url)} "
            f"(downloaded from {url} when online; offline, copy the file there or set "
            f"TORCH_HOME): {type(error).__name__}: {error}"
        )
    if not existed:
        leftover = f" Delete the incomplete {path} first." if path.exists() else ""
        return FileNotFoundError(
            f"{what}: no checkpoint at {path}, and downloading it failed "
            f"({type(error).__name__}: {error}). With internet, robustbench downloads it there "
            f"from {url}; offline, download that file elsewhere and copy it to {path}, or pass "
            f"the model directory that holds <dataset>/<threat_model>/<name>.pt.{leftover}"
        )
    if path.is_file() and is_web_page(path):
        return RuntimeError(
            f"{path} is a web page, not a checkpoint (a failed Google Drive download); delete "
            f"it and download {url} again"
        )
    hint = TRUST_HINT if "weights_only" in str(error).lower() else "delete it and download again"
    return RuntimeError(f"cannot load {what} from {path}: {error}. {hint} ({url})")


def load_robustbench(
    name: str,
    dataset: str,
    model_dir: str | os.PathLike | None = None,
    threat_model: str | None = None,
) -> tuple[nn.Module, dict]:
    """A robustbench zoo model in eval mode, and facts about it for the protocol card."""
    if dataset not in DATASETS:
        raise ValueError(
            f"robustbench model {name!r} needs a dataset among {', '.join(DATASETS)}, got "
            f"{dataset!r}"
        )
    threat = find_threat_model(name, dataset, threat_model)
    entry = zoo(dataset)[threat][name]
    model_dir = Path(model_dir) if model_dir is not None else default_model_dir()
    path = checkpoint_path(model_dir, dataset, threat, name)
    ensemble = isinstance(entry.get("gdrive_id"), list)
    files = (
        [Path(f"{path}_m{i}.pt") for i in range(len(entry["gdrive_id"]))] if ensemble else [path]
    )
    existed = all(f.is_file() for f in files)
    url = _download_source(entry, name, dataset)
    from robustbench.utils import load_model as robustbench_load

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.filterwarnings("ignore", category=UserWarning, module="torchvision")
            model = robustbench_load(
                name, model_dir=str(model_dir), dataset=dataset, threat_model=threat
            )
    except Exception as error:  # download (requests, gdown), unpickling or state-dict errors
        raise _explain(error, name, dataset, threat, path, existed, url) from error
    normalization = find_normalization(model)
    info = {
        "model": name,
        "model_source": "robustbench",
        "dataset": dataset,
        "threat_model": threat,
        "checkpoint": str(torch_hub_file(url) if from_torch_hub(name, dataset) else path),
        "num_classes": DATASETS[dataset],
        "normalization": {
            **(normalization or {"mean": None, "std": None}),
            "where": "inside the model (robustbench)" if normalization else "none: [0, 1] inputs",
        },
        "input_size": [3, INPUT_SIZES[dataset], INPUT_SIZES[dataset]],
    }
    return model.eval(), info
