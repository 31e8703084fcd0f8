"""The layering of the packages, checked on the source: no import runs against it.

Layers, lowest first: the core (`nestdnn` without its CLI), the offline stages (`pruning`,
`recovery`, `profiles`), the optimiser (`scheduler`), the on-device runtime
(`scheduler.daemon`), the REST API (`api`), and the CLI with its orchestration
(`nestdnn.cli`). A module may import its own layer and the layers below it, never one above,
and no private name (``_x``) of another package. The optimiser stays pure (no torch, no
profiles, no model files), and the core's model description and file format need no torch.
Imports inside functions count too: a lazy import is still an edge.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("nestdnn", "pruning", "recovery", "profiles", "scheduler", "scheduler.daemon", "api",
          "nestdnn.cli")
ENTRY_POINTS = {"nestdnn.__main__": "nestdnn.cli"}  # `python -m nestdnn` is the CLI
PACKAGES = ("nestdnn", "pruning", "recovery", "profiles", "scheduler", "api")
FORBIDDEN: dict[str, tuple[str, ...]] = {
    # the optimiser and simulator: numpy and pydantic only
    "scheduler": ("torch", "torchvision", "profiles", "nestdnn.nestfile", "nestdnn.nested",
                  "nestdnn.models", "nestdnn.arch"),
    # architectures as data and the .nest format are read by the torch-free daemon
    "nestdnn.arch": ("torch", "torchvision"),
    "nestdnn.nestfile": ("torch", "torchvision"),
    "nestdnn.files": ("torch",),
    "nestdnn.errors": ("torch",),
    # the device's REST layer: no torch; tritonclient is a client of /v2 (tests, benchmarks)
    "api": ("torch", "torchvision", "tritonclient"),
}


@dataclass(frozen=True)
class Edge:
    """``importer`` imports ``target`` (a module), and from it the names ``names``."""

    importer: str
    target: str
    names: tuple[str, ...]
    line: int

    def __str__(self) -> str:
        names = f" ({', '.join(self.names)})" if self.names else ""
        return f"{self.importer}:{self.line} imports {self.target}{names}"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def source_files() -> Iterator[Path]:
    for package in PACKAGES:
        yield from sorted((ROOT / package).rglob("*.py"))


def edges(path: Path) -> Iterator[Edge]:
    """Every import in a file, relative imports resolved."""
    importer = module_name(path)
    package = importer if path.name == "__init__.py" else importer.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield Edge(importer, alias.name, (), node.lineno)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            yield Edge(importer, base, tuple(a.name for a in node.names), node.lineno)


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def layer(module: str) -> int | None:
    """Index of the highest layer whose prefix the module has (None: not ours)."""
    module = ENTRY_POINTS.get(module, module)
    found = [i for i, name in enumerate(LAYERS) if within(module, name)]
    return max(found) if found else None


ALL_EDGES = [edge for path in source_files() for edge in edges(path)]


def test_the_walk_sees_the_imports() -> None:
    """The check can fail: it finds the edges it must judge."""
    assert any(e.importer == "api.app" and within(e.target, "scheduler.daemon")
               for e in ALL_EDGES)
    assert any(e.importer.startswith("nestdnn.cli") and within(e.target, "pruning")
               for e in ALL_EDGES)


def test_no_import_runs_up_the_layers() -> None:
    upward = [str(e) for e in ALL_EDGES
              if (a := layer(e.importer)) is not None and (b := layer(e.target)) is not None
              and b > a]
    assert upward == []


@pytest.mark.parametrize("scope", sorted(FORBIDDEN))
def test_pure_layers_import_nothing_heavy(scope: str) -> None:
    found = [str(e) for e in ALL_EDGES
             if within(e.importer, scope) and not within(e.importer, "scheduler.daemon")
             and any(within(e.target, banned) for banned in FORBIDDEN[scope])]
    assert found == []


def test_no_private_name_crosses_a_package() -> None:
    def top(module: str) -> str:
        return module.split(".")[0]

    private = [str(e) for e in ALL_EDGES
               if top(e.target) in PACKAGES and top(e.target) != top(e.importer)
               and (any(n.startswith("_") for n in e.names)
                    or any(p.startswith("_") and not p.startswith("__")
                           for p in e.target.split(".")))]
    assert private == []
