"""Files and helpers of the installed `robustbench` package, used without importing it.

`import robustbench` runs its `__init__`, which imports `autoattack` (installed from PyPI as
the module `pyautoattack`) and `pkg_resources` (gone from setuptools >= 81), so it fails on
a current environment. The data side needs only two things from it: the Zenodo downloader
(`robustbench/zenodo_download.py`, which needs only `requests` and `tqdm`) and the list of
5000 ImageNet validation images RobustBench evaluates on (`helper_files/`). Both are read
straight from the package directory.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

NOT_INSTALLED = "robustbench is not installed (`pip install robustbench`)"


def package_dir(name: str = "robustbench") -> Path | None:
    """The directory of an installed package, found without importing it."""
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def helper_file(name: str) -> Path | None:
    """`robustbench/helper_files/<name>` if robustbench is installed and ships it."""
    directory = package_dir()
    path = directory / "helper_files" / name if directory else None
    return path if path is not None and path.is_file() else None


def zenodo_module() -> ModuleType:
    """robustbench's `zenodo_download` module, loaded from its file."""
    directory = package_dir()
    path = directory / "zenodo_download.py" if directory else None
    if path is None or not path.is_file():
        raise RuntimeError(f"cannot download: {NOT_INSTALLED}")
    spec = importlib.util.spec_from_file_location("_tta_robustbench_zenodo", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
