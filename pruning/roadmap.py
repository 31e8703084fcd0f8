"""The filter-pruning roadmap: settings of a pruning run and its ordered steps (``roadmap.json``).

The JSON layout is the contract in ``docs/formats.md``. Besides the fields listed there, the
file records what else decides the result (``triplets``, ``batch_size``, ``lr``) and the
SHA-256 of the vanilla checkpoint, so that resuming can refuse a run made differently, and
every attempt at a step (``attempts``: kept or discarded, at which ratio).

Roadmaps written before retries existed still load: they have no ``attempts``, their steps
no ``fraction``, and their settings read as what they were then (no fine-tuning floor,
``min_ratio`` equal to ``ratio``: no retry).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from nestdnn.data import DataSpec
from nestdnn.errors import NestError
from nestdnn.files import atomic_write

FORMAT = "nestdnn-roadmap"
VERSION = 1
ROADMAP_FILE = "roadmap.json"
SEED_FILE = "seed.pt"
STOP_REASONS = ("min_accuracy", "max_steps", "min_width")
DEFAULT_MIN_RETRAIN_STEPS = 200


def step_file(step: int) -> str:
    return f"step_{step:02d}.pt"


@dataclass(frozen=True)
class PruneSettings:
    """Everything that decides which channels a pruning run keeps and how it fine-tunes."""

    criterion: str
    ratio: float
    min_accuracy: float
    retrain_epochs: float
    round_to: int = 1
    seed: int = 0
    triplets: int = 256
    batch_size: int = 128
    lr: float = 0.01
    min_retrain_steps: int = DEFAULT_MIN_RETRAIN_STEPS  # fine-tuning floor, in optimizer steps
    min_ratio: float | None = None  # retries halve the ratio down to this; None: ratio / 4

    @property
    def ratio_floor(self) -> float:
        """The smallest ratio a retry may use."""
        return self.ratio / 4 if self.min_ratio is None else self.min_ratio

    def validate(self) -> None:
        checks = [
            (0 < self.ratio < 1, f"--ratio must be in (0, 1), got {self.ratio}"),
            (
                0 <= self.min_accuracy <= 1,
                f"--min-accuracy must be in [0, 1] (a fraction, e.g. 0.9), got {self.min_accuracy}",
            ),
            (
                self.retrain_epochs > 0 and math.isfinite(self.retrain_epochs),
                f"--retrain-epochs must be positive, got {self.retrain_epochs}",
            ),
            (self.round_to >= 1, f"--round-to must be at least 1, got {self.round_to}"),
            (self.triplets >= 1, f"--triplets must be at least 1, got {self.triplets}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be positive, got {self.lr}"),
            (
                self.min_retrain_steps >= 0,
                f"--min-retrain-steps must be >= 0, got {self.min_retrain_steps}",
            ),
            (
                self.min_ratio is None or 0 < self.min_ratio <= self.ratio,
                f"--min-ratio must be in (0, --ratio], got {self.min_ratio}",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise NestError(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class RoadmapStep:
    """One kept model: per group its kept channels in the vanilla model's numbering."""

    step: int
    file: str
    widths: dict[str, int]
    kept: dict[str, list[int]]
    val_accuracy: float
    params: int
    macs: int
    fraction: float | None = None  # of every group's original width (None: an older roadmap)

    @property
    def total_width(self) -> int:
        return sum(self.widths.values())

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PruneAttempt:
    """One try at pruning step ``step``: kept (it became that step) or discarded."""

    step: int
    ratio: float  # of the original widths removed by this try
    fraction: float  # of the original widths the try kept
    widths: dict[str, int]
    params: int
    val_accuracy: float
    accepted: bool
    retrain_steps: int  # optimizer steps of its fine-tuning

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Roadmap:
    """A pruning run: the vanilla model it started from, its settings, and its steps so far."""

    vanilla: str
    vanilla_sha256: str
    model_config: dict[str, Any]
    dataset: DataSpec
    settings: PruneSettings
    steps: list[RoadmapStep] = field(default_factory=list)
    stopped: str | None = None  # None while the run is unfinished
    attempts: list[PruneAttempt] = field(default_factory=list)

    @property
    def seed_step(self) -> int:
        """Every recorded step met the minimum accuracy, so the seed is the last one."""
        return self.steps[-1].step

    @property
    def last(self) -> RoadmapStep:
        return self.steps[-1]

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "vanilla": self.vanilla,
            "vanilla_sha256": self.vanilla_sha256,
            "model_config": self.model_config,
            "dataset": self.dataset.to_dict(),
            **self.settings.to_dict(),
            "steps": [s.to_dict() for s in self.steps],
            "seed_step": self.seed_step,
            "stopped": self.stopped,
            "attempts": [a.to_dict() for a in self.attempts],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "roadmap") -> Roadmap:
        """Parse and check a roadmap; any problem raises NestError naming ``source``."""
        if not isinstance(data, Mapping) or data.get("format") != FORMAT:
            raise NestError(f"{source} is not a nestdnn roadmap (format is not {FORMAT!r})")
        if data.get("version") != VERSION:
            raise NestError(f"{source} has roadmap version {data.get('version')}, need {VERSION}")
        data = {**_older_settings(data), **data}
        setting_names = [f.name for f in fields(PruneSettings)]
        required = ["vanilla", "model_config", "dataset", "steps", "stopped", *setting_names]
        missing = [key for key in required if key not in data]
        if missing:
            raise NestError(f"{source} is missing {', '.join(missing)}")
        if not isinstance(data["model_config"], Mapping) or not isinstance(
            data["model_config"].get("widths"), Mapping
        ):
            raise NestError(f"{source}: 'model_config' must be an object with 'widths'")
        if not isinstance(data["steps"], list):
            raise NestError(f"{source}: 'steps' must be a list")
        steps = [_parse_step(raw, f"{source} step {i}") for i, raw in enumerate(data["steps"])]
        attempts = data.get("attempts", [])
        if not isinstance(attempts, list):
            raise NestError(f"{source}: 'attempts' must be a list")
        settings = PruneSettings(**{name: data[name] for name in setting_names})
        roadmap = cls(
            vanilla=data["vanilla"],
            vanilla_sha256=data.get("vanilla_sha256", ""),
            model_config=dict(data["model_config"]),
            dataset=DataSpec.from_dict(data["dataset"], f"{source} 'dataset'"),
            settings=settings,
            steps=steps,
            stopped=data["stopped"],
            attempts=[_parse_attempt(a, f"{source} attempt {i}") for i, a in enumerate(attempts)],
        )
        roadmap.check(source)
        return roadmap

    def check(self, source: str = "roadmap") -> None:
        """Steps numbered 0.., widths shrinking, kept channels ascending and nested."""
        if not self.steps:
            raise NestError(f"{source} has no steps")
        if self.stopped is not None and self.stopped not in STOP_REASONS:
            raise NestError(f"{source} has unknown stop reason {self.stopped!r}")
        previous: RoadmapStep | None = None
        for index, step in enumerate(self.steps):
            where = f"{source} step {index}"
            if step.step != index:
                raise NestError(f"{where} is numbered {step.step}")
            if set(step.kept) != set(self.model_config["widths"]) or set(step.widths) != set(
                step.kept
            ):
                raise NestError(f"{where} does not list every channel group of the model")
            for group, kept in step.kept.items():
                _check_kept(where, group, kept, step.widths[group], previous)
            if previous is not None and step.total_width >= previous.total_width:
                raise NestError(f"{where} is not smaller than step {index - 1}")
            previous = step


def _older_settings(data: Mapping[str, Any]) -> dict[str, Any]:
    """The settings a roadmap from before retries was made with (no floor, no retry)."""
    return {"min_retrain_steps": 0, "min_ratio": data.get("ratio")}


def _parse_step(raw: Any, where: str) -> RoadmapStep:
    """One step entry with the right keys and JSON types (consistency is checked later)."""
    names = [f.name for f in fields(RoadmapStep)]
    required = [name for name in names if name != "fraction"]  # older roadmaps lack it
    if not isinstance(raw, Mapping) or not set(required) <= set(raw) <= set(names):
        raise NestError(f"{where} must be an object with exactly {', '.join(names)}")
    widths, kept = raw["widths"], raw["kept"]
    if not isinstance(widths, Mapping) or not all(isinstance(w, int) for w in widths.values()):
        raise NestError(f"{where}: 'widths' must map groups to integers")
    if not isinstance(kept, Mapping) or not all(
        isinstance(k, list) and all(isinstance(c, int) for c in k) for k in kept.values()
    ):
        raise NestError(f"{where}: 'kept' must map groups to lists of channel indices")
    return RoadmapStep(**raw)


def _parse_attempt(raw: Any, where: str) -> PruneAttempt:
    names = [f.name for f in fields(PruneAttempt)]
    if not isinstance(raw, Mapping) or sorted(raw) != sorted(names):
        raise NestError(f"{where} must be an object with exactly {', '.join(names)}")
    if not isinstance(raw["widths"], Mapping) or not isinstance(raw["accepted"], bool):
        raise NestError(f"{where}: 'widths' must be an object and 'accepted' a boolean")
    return PruneAttempt(**raw)


def _check_kept(
    where: str, group: str, kept: list[int], width: int, previous: RoadmapStep | None
) -> None:
    if len(kept) != width or kept != sorted(set(kept)):
        raise NestError(f"{where}: group {group} must list {width} distinct ascending channels")
    if previous is not None and not set(kept) <= set(previous.kept[group]):
        raise NestError(f"{where}: group {group} keeps channels the previous step removed")


def load_roadmap(path: str | Path) -> Roadmap:
    """Read and check ``roadmap.json`` (or the roadmap in a pruning output directory)."""
    path = Path(path)
    if path.is_dir():
        path = path / ROADMAP_FILE
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError as e:
        raise NestError(f"roadmap not found: {path}") from e
    except (OSError, json.JSONDecodeError) as e:
        raise NestError(f"cannot read roadmap {path}: {e}") from e
    return Roadmap.from_dict(data, str(path))


def save_roadmap(roadmap: Roadmap, path: Path) -> None:
    """Write the roadmap JSON atomically (temporary file in the same directory, then rename)."""
    text = json.dumps(roadmap.to_dict(), indent=2) + "\n"
    atomic_write(path, text)
