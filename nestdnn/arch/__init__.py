"""Architectures as data, without torch: configs, channel groups, layer graphs, the registry.

The torch modules (`nestdnn.models`), the `.nest` reader's tensor layout, MAC counts and the
ONNX graphs of the inference backend all derive from a family's `Graph`; see
`nestdnn.arch.graph`. Families register themselves (`nestdnn.arch.registry`); importing this
package imports every family module.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from nestdnn.arch import mobilenet, resnet, vgg  # noqa: F401 (each module registers its family)
from nestdnn.arch.config import ModelConfig
from nestdnn.arch.graph import INPUT, Graph, GroupAxes, TensorSpec
from nestdnn.arch.registry import Family, get_family, list_archs, register_family
from nestdnn.errors import NestError

__all__ = [
    "ARCHS",
    "INPUT",
    "Family",
    "Graph",
    "GroupAxes",
    "ModelConfig",
    "TensorSpec",
    "check_config",
    "check_widths",
    "default_widths",
    "full_widths",
    "get_family",
    "list_archs",
    "model_graph",
    "register_family",
]

ARCHS: tuple[str, ...] = list_archs()


def full_widths(arch: str, input_size: int) -> dict[str, int]:
    """Widths of the architecture at width multiplier 1 (the upper bound of any config)."""
    return get_family(arch).full_widths(arch, input_size)


def default_widths(arch: str, input_size: int, width_mult: float = 1.0) -> dict[str, int]:
    """The widths at ``width_mult``: the family's own rule if it has one, else every group's
    full width scaled (rounded, at least 1)."""
    if not 0 < width_mult <= 1:
        raise NestError(f"width_mult must be in (0, 1], got {width_mult}")
    family = get_family(arch)
    if family.scale_widths is not None:
        return family.scale_widths(arch, input_size, width_mult)
    return {g: max(1, math.floor(w * width_mult + 0.5))
            for g, w in full_widths(arch, input_size).items()}


def check_widths(widths: Mapping[str, int], limits: Mapping[str, int], arch: str,
                 context: str = "") -> None:
    """``widths`` must name exactly ``arch``'s groups (``limits``), each within 1..its limit.

    ``context`` (e.g. "descendant 2") prefixes the message of the NestError.
    """
    prefix = f"{context}: " if context else ""
    unknown = sorted(set(widths) - set(limits))
    missing = sorted(set(limits) - set(widths))
    if unknown or missing:
        raise NestError(
            f"{prefix}widths do not match {arch}'s channel groups"
            + (f"; unknown: {', '.join(unknown[:5])}" if unknown else "")
            + (f"; missing: {', '.join(missing[:5])}" if missing else "")
        )
    for group, width in widths.items():
        if not 1 <= width <= limits[group]:
            raise NestError(
                f"{prefix}width of group '{group}' is {width}; {arch} allows 1..{limits[group]}"
            )


def check_config(config: ModelConfig | Mapping[str, object]) -> ModelConfig:
    """A valid config with its widths in the family's declaration order, or a NestError."""
    if not isinstance(config, ModelConfig):
        config = ModelConfig.from_dict(config)
    family = get_family(config.arch)
    limits = family.full_widths(config.arch, config.input_size)
    check_widths(config.widths, limits, config.arch)
    if config.input_size < family.min_input_size:
        raise NestError(
            f"input_size must be at least {family.min_input_size}, got {config.input_size}"
        )
    return ModelConfig(config.arch, config.in_channels, config.num_classes, config.input_size,
                       {g: config.widths[g] for g in limits})


def model_graph(config: ModelConfig | Mapping[str, object]) -> Graph:
    """The layer graph of a (validated) config."""
    config = check_config(config)
    return get_family(config.arch).graph(config)
