"""The package's folders are its layers: a module imports only from its own layer or the layers below it.

The data path reads top-down: input files (``inputs/``), their specs (``specs/``),
the transformation of a chunk (``transform/``), the streaming of chunks and
batches (``stream/``), then the faces at the top of the package and the original
workflow (``workflow/``). Every import counts, type-only and deferred ones too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import mlaas4hep

PACKAGE = Path(mlaas4hep.__file__).parent

# lower number: lower layer. Private helpers and errors are the floor; faces sit on the stream.
LAYERS = {
    "mlaas4hep.errors": 0,
    "mlaas4hep._checks": 0,
    "mlaas4hep._arrays": 0,
    "mlaas4hep._json": 0,
    "mlaas4hep._docstrings": 0,
    "mlaas4hep.inputs": 1,
    "mlaas4hep.specs": 2,
    "mlaas4hep.transform": 3,
    "mlaas4hep.options": 4,
    "mlaas4hep.stream": 5,
    "mlaas4hep.preprocessing": 6,
    "mlaas4hep.sequence": 7,
    "mlaas4hep.torch": 7,
    "mlaas4hep.torch_support": 7,
    "mlaas4hep.scores": 7,
    "mlaas4hep.loader_stats": 7,
    "mlaas4hep.resume": 7,
    "mlaas4hep.deploy": 7,
    "mlaas4hep.workflow": 8,
    "mlaas4hep": 9,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its body."""
    is_package = path.name == "__init__.py"
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")
            if node.level:
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:  # "from . import csv" imports a module
                if f"{target}.{alias.name}" in modules:
                    out.add(f"{target}.{alias.name}")
            if target in modules:
                out.add(target)
        elif isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names if alias.name in modules}
    out.discard(name)
    return {m for m in out if m.startswith("mlaas4hep")}


def _layer(name: str) -> int:
    while name not in LAYERS:
        name = name.rpartition(".")[0]
    return LAYERS[name]


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def test_every_module_has_a_layer() -> None:
    for name in _modules():
        assert _layer(name) >= 0


def test_no_module_imports_from_a_higher_layer() -> None:
    upward = [
        f"{name} -> {target}"
        for name, targets in _graph().items()
        for target in targets
        if _layer(target) > _layer(name) and not name.endswith("__init__") and target != "mlaas4hep"
    ]
    assert upward == []


def test_no_import_cycle() -> None:
    graph = _graph()
    # a package's __init__ re-exporting its modules is not a cycle of the modules themselves
    edges = {n: {t for t in ts if not n.startswith(t + ".")} for n, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_at_most_twelve_modules_at_the_top() -> None:
    top = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
