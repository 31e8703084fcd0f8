"""`ModelConfig`: everything needed to rebuild a model, as plain data (JSON round trip)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nestdnn.errors import NestError

CONFIG_KEYS = ("arch", "in_channels", "num_classes", "input_size", "widths")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture, input shape, classes and the width of every channel group."""

    arch: str
    in_channels: int
    num_classes: int
    input_size: int
    widths: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "arch": self.arch,
            "in_channels": self.in_channels,
            "num_classes": self.num_classes,
            "input_size": self.input_size,
            "widths": dict(self.widths),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelConfig:
        if not isinstance(data, Mapping):
            raise NestError(f"model config must be a JSON object, got {type(data).__name__}")
        missing = [k for k in CONFIG_KEYS if k not in data]
        if missing:
            raise NestError(f"model config is missing {', '.join(missing)}")
        widths = data["widths"]
        if not isinstance(widths, Mapping) or not all(
            isinstance(k, str) and isinstance(v, int) for k, v in widths.items()
        ):
            raise NestError("model config 'widths' must map group names to integers")
        for key in ("in_channels", "num_classes", "input_size"):
            if not isinstance(data[key], int) or data[key] < 1:
                raise NestError(f"model config '{key}' must be a positive integer")
        return cls(
            arch=str(data["arch"]),
            in_channels=data["in_channels"],
            num_classes=data["num_classes"],
            input_size=data["input_size"],
            widths=dict(widths),
        )
