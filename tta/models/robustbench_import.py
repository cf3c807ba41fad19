"""Import robustbench 1.1.1 as PyPI ships it: in one place, and only when a model needs it.

`import robustbench` fails on a fresh install for two packaging reasons:

- `robustbench.eval` does `from autoattack import AutoAttack`, but its dependency
  `pyautoattack` installs that code as the module `pyautoattack`; no `autoattack` exists.
  We alias `autoattack` (and its submodules) to `pyautoattack` when `autoattack` is missing.
- `robustbench.loaders` does `import pkg_resources`, which setuptools >= 81 no longer ships
  (and a fresh venv may have no setuptools). It calls one function, `resource_filename`,
  to find its list of ImageNet images. When the real `pkg_resources` is missing we lend a
  module with only that function, for the duration of the import; robustbench keeps its
  reference and nothing else in the process sees the stand-in afterwards.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType

INSTALL_HINT = "pip install 'tta[models]'  (robustbench 1.1.1 and timm)"


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def alias_autoattack() -> None:
    """Make `import autoattack` (and `autoattack.state`) resolve to `pyautoattack`."""
    if "autoattack" in sys.modules or _importable("autoattack") or not _importable("pyautoattack"):
        return
    package = importlib.import_module("pyautoattack")
    importlib.import_module("pyautoattack.state")
    for name, module in list(sys.modules.items()):
        if name == "pyautoattack" or name.startswith("pyautoattack."):
            sys.modules.setdefault("autoattack" + name.removeprefix("pyautoattack"), module)
    sys.modules.setdefault("autoattack", package)


def pkg_resources_stand_in() -> ModuleType:
    """A `pkg_resources` with only `resource_filename`, the one function robustbench calls."""
    module = ModuleType("pkg_resources", "tta's stand-in: resource_filename only")

    def resource_filename(package_or_module: str, resource: str) -> str:
        spec = importlib.util.find_spec(package_or_module)
        if spec is None or spec.origin is None:
            raise ImportError(f"cannot locate {package_or_module!r} to find {resource!r}")
        return str(Path(spec.origin).parent / resource)

    module.resource_filename = resource_filename
    return module


@contextmanager
def lend_pkg_resources() -> Iterator[None]:
    """Provide the stand-in `pkg_resources` while the block runs, if the real one is missing."""
    if "pkg_resources" in sys.modules or _importable("pkg_resources"):
        yield
        return
    stand_in = pkg_resources_stand_in()
    sys.modules["pkg_resources"] = stand_in
    try:
        yield
    finally:
        if sys.modules.get("pkg_resources") is stand_in:
            del sys.modules["pkg_resources"]


def import_robustbench() -> ModuleType:
    """`robustbench` with `robustbench.utils` and its model zoo imported, or a clear error."""
    if "robustbench.utils" in sys.modules:
        return sys.modules["robustbench"]
    if not _importable("robustbench"):
        raise RuntimeError(f"robustbench models need robustbench: {INSTALL_HINT}")
    alias_autoattack()
    try:
        with lend_pkg_resources(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its imports warn about deprecated torch/timm APIs
            import robustbench
            import robustbench.model_zoo
            import robustbench.utils  # noqa: F401
    except ImportError as error:
        raise RuntimeError(
            f"robustbench is installed but cannot be imported ({error}); reinstall with "
            f"{INSTALL_HINT}"
        ) from error
    return robustbench
