"""The package's imports go one way: no cycles, and never from a lower layer to a higher one.

Read from the source with `ast` (nothing is imported), so an import hidden inside a
function or under `if TYPE_CHECKING:` counts as much as one at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import NamedTuple

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "tta"

# Layers, bottom (0) to top; a module's rank is that of its longest listed prefix.
RANKS = {
    "tta.paths": 0,
    "tta.progress": 0,
    "tta.registry": 0,
    "tta.functional": 0,
    "tta.classes": 0,
    "tta.data": 1,
    "tta.models": 2,
    "tta.checks": 3,
    "tta.params": 3,
    "tta.layers": 3,
    "tta.context": 3,
    "tta.presets": 3,
    "tta.norm": 3,
    "tta.filters": 4,
    "tta.selectors": 4,
    "tta.losses": 5,
    "tta.precision": 5,  # autocast and gradient scaling for the engine; reads a loss's backward
    "tta.engine": 6,
    "tta.api": 6,
    "tta": 6,
    "tta.harness": 7,
    "tta.robust": 7,  # beside the core: uses engine/api/models/data, used by nothing below
    "tta.cli": 8,
    "tta.robust_cli": 8,
    "tta.sweep_cli": 8,
}


class Edge(NamedTuple):
    source: str
    target: str
    where: str  # "tta/x.py:12"


def module_files(package_dir: Path = PACKAGE_DIR) -> dict[str, Path]:
    """Module name -> file, for every .py file of the package (a package is its __init__)."""
    modules = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The absolute module named by a (possibly relative) `from ... import`."""
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(module: str, source: str, where: str, modules: dict[str, Path]) -> list[Edge]:
    """Every import of a package module in `source`, wherever it sits in the file."""
    is_package = modules.get(module, Path()).name == "__init__.py"
    edges = []
    for node in ast.walk(ast.parse(source)):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(node, module, is_package)
            for alias in node.names:
                name = f"{base}.{alias.name}"
                targets.append(name if name in modules else base)
        for target in targets:
            # `import tta.a.b.f` (f not a module): keep the longest prefix that is a module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != module:
                edges.append(Edge(module, target, f"{where}:{node.lineno}"))
    unique = dict.fromkeys(edges)  # `from m import a, b` is one import
    return sorted(unique, key=lambda e: int(e.where.rpartition(":")[2]))


def import_graph() -> list[Edge]:
    modules = module_files()
    edges = []
    for name, path in modules.items():
        where = path.relative_to(PACKAGE_DIR.parent).as_posix()
        edges += imports_of(name, path.read_text(), where, modules)
    return edges


def find_cycle(edges: list[Edge]) -> list[Edge] | None:
    """One cycle of the graph as the edges that make it, or None (depth-first search)."""
    outgoing: dict[str, list[Edge]] = {}
    for edge in edges:
        outgoing.setdefault(edge.source, []).append(edge)
    state: dict[str, str] = {}  # "open" while on the path, "done" after
    path: list[Edge] = []

    def visit(node: str) -> list[Edge] | None:
        state[node] = "open"
        for edge in outgoing.get(node, []):
            if state.get(edge.target) == "open":
                sources = [e.source for e in path]
                start = sources.index(edge.target) if edge.target in sources else len(path)
                return path[start:] + [edge]
            if edge.target not in state:
                path.append(edge)
                found = visit(edge.target)
                if found:
                    return found
                path.pop()
        state[node] = "done"
        return None

    for node in sorted(outgoing):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def rank(module: str) -> int:
    parts = module.split(".")
    for end in range(len(parts), 0, -1):
        prefix = ".".join(parts[:end])
        if prefix in RANKS:
            return RANKS[prefix]
    raise KeyError(module)


def _describe(edge: Edge) -> str:
    return f"{edge.where}: {edge.source} imports {edge.target}"


def test_the_graph_is_read_from_every_kind_of_import():
    """Function-level, TYPE_CHECKING, relative and `from pkg import module` imports all count."""
    source = (
        "from typing import TYPE_CHECKING\n"
        "import tta.data.base\n"
        "from . import entropy\n"
        "from tta.registry import LOSSES\n"
        "if TYPE_CHECKING:\n"
        "    from tta.engine import AdaptedModel\n"
        "def f():\n"
        "    from ..models import resnet\n"
        "    import numpy\n"
    )
    names = ["tta", "tta.data", "tta.data.base", "tta.filters", "tta.filters.entropy"]
    names += ["tta.registry", "tta.engine", "tta.models", "tta.models.resnet"]
    modules = {name: Path(name.replace(".", "/") + ".py") for name in names}
    edges = imports_of("tta.filters.x", source, "x.py", modules)
    assert [(e.target, e.where) for e in edges] == [
        ("tta.data.base", "x.py:2"),
        ("tta.filters.entropy", "x.py:3"),
        ("tta.registry", "x.py:4"),
        ("tta.engine", "x.py:6"),
        ("tta.models.resnet", "x.py:8"),
    ]


def test_find_cycle_returns_the_loop():
    edges = [
        Edge("a", "b", "a:1"),
        Edge("b", "c", "b:1"),
        Edge("c", "b", "c:2"),
        Edge("a", "d", "a:2"),
    ]
    assert find_cycle(edges) == [Edge("b", "c", "b:1"), Edge("c", "b", "c:2")]
    assert find_cycle(edges[:2] + edges[3:]) is None


def test_no_import_cycles():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle:\n  " + "\n  ".join(_describe(e) for e in cycle)


def test_every_module_has_a_layer():
    unranked = []
    for module in module_files():
        try:
            rank(module)
        except KeyError:
            unranked.append(module)
    assert not unranked, f"modules with no layer in tests/test_imports.py RANKS: {unranked}"


def test_imports_only_go_down_the_layers():
    upward = [e for e in import_graph() if rank(e.source) < rank(e.target)]
    assert not upward, "imports from a lower layer to a higher one:\n  " + "\n  ".join(
        f"{_describe(e)} (layer {rank(e.source)} -> {rank(e.target)})" for e in upward
    )
