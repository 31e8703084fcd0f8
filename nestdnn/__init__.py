"""nestdnn core: model families, channel groups, data, training and the multi-capacity format."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from nestdnn.nested import NestedModel, load_descendant

__all__ = ["NestedModel", "load_descendant"]


def __getattr__(name: str) -> Any:
    """Import the `.nest` reader (and torch) only when one of its names is used."""
    if name in __all__:
        from nestdnn import nested

        return getattr(nested, name)
    raise AttributeError(f"module 'nestdnn' has no attribute {name!r}")
