"""The model registry: one `Family` per architecture family, registered by its own module.

As torchvision's ``register_model``: a family module builds graphs and declares its channel
groups, and registers itself; nothing else in the code names a family. Adding a family is
one module under ``nestdnn/arch/`` plus its import in ``nestdnn/arch/__init__.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from nestdnn.arch.config import ModelConfig
from nestdnn.arch.graph import Graph
from nestdnn.errors import NestError


@dataclass(frozen=True)
class Family:
    """An architecture family: its arch names, channel groups and layer graph."""

    name: str
    archs: tuple[str, ...]
    full_widths: Callable[[str, int], dict[str, int]]
    """(arch, input size) -> every channel group, in declaration order, at its full width."""
    graph: Callable[[ModelConfig], Graph]
    """The layer graph of a config (widths already validated)."""
    min_input_size: int = 8
    scale_widths: Callable[[str, int, float], dict[str, int]] | None = None
    """(arch, input size, width multiplier) -> widths, where the family has its own rule
    (MobileNetV2 rounds to multiples of 8, as torchvision); None: every full width scaled."""


_FAMILIES: dict[str, Family] = {}
_BY_ARCH: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    """Make ``family``'s archs buildable; an arch name may belong to one family only."""
    taken = [arch for arch in family.archs if arch in _BY_ARCH]
    if family.name in _FAMILIES or taken:
        raise ValueError(f"family {family.name!r} or arch {taken} is already registered")
    _FAMILIES[family.name] = family
    _BY_ARCH.update(dict.fromkeys(family.archs, family))
    return family


def get_family(arch: str) -> Family:
    """The family of ``arch``; an unknown arch is a NestError listing the known ones."""
    family = _BY_ARCH.get(arch)
    if family is None:
        raise NestError(f"unknown arch '{arch}'; choose one of {', '.join(list_archs())}")
    return family


def list_archs() -> tuple[str, ...]:
    """Every registered arch name, family by family."""
    return tuple(_BY_ARCH)
