"""The house (README, Architecture): imports run one way between rooms, with no circles.

Read from the source with :mod:`ast`, function-level imports included, so a lazy import
cannot hide a back edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("app", "models", "index")

# room -> the rooms it may import (besides itself).
ALLOWED: dict[str, set[str]] = {
    "models.imaging": set(),
    "index": set(),
    "models": {"models.imaging"},
    "models.training": {"models", "models.imaging", "index"},
    "app.service": {"app", "models", "models.imaging", "index"},
    "app.api": {"app", "app.service", "models", "models.imaging", "index"},
    "app": {"app.api", "app.service", "models", "models.imaging", "models.training", "index"},
}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                subs = {f"{node.module}.{a.name}" for a in node.names} & modules.keys()
                targets |= subs or {node.module}
        edges[name] = {t for t in targets if t in modules and t != name}
    return edges


def _room(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and f"{parts[0]}.{parts[1]}" in ALLOWED:
        return f"{parts[0]}.{parts[1]}"
    return parts[0]


def test_imports_follow_the_arrows() -> None:
    edges = _imports(_modules())
    against = sorted(
        f"{a} -> {b}" for a, targets in edges.items() for b in targets
        if _room(a) != _room(b) and _room(b) not in ALLOWED[_room(a)]
    )
    assert not against


def test_no_import_circle() -> None:
    edges = _imports(_modules())
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        if module in path:
            raise AssertionError("import circle: " + " -> ".join([*path[path.index(module):],
                                                                 module]))
        if module in done:
            return
        for target in sorted(edges[module]):
            visit(target, [*path, module])
        done.add(module)

    for module in sorted(edges):
        visit(module, [])
