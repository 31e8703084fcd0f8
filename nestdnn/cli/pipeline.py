"""The offline pipeline as a list of CLI stages: train -> prune -> recover -> profile.

A `PipelinePlan` says how hard each stage works; `pipeline_stages` turns it into the exact
`nestdnn` command lines a user would type, each with the file it produces. `nestdnn demo`
runs them in-process one after another, `benchmarks/reproduce.py` runs them as separate
processes (several apps side by side). A stage whose output exists (and is valid) is reused,
and every stage resumes its own interrupted work, so an interrupted pipeline continues where
it stopped.

Layout for an app NAME under a root directory::

    ROOT/NAME/train/    vanilla.pt, train.json       (nestdnn train)
    ROOT/NAME/prune/    roadmap.json, seed.pt, ...   (nestdnn prune)
    MODELS/NAME.nest, MODELS/NAME.profile.json       (nestdnn recover, nestdnn profile)
    ROOT/NAME/NAME.profile.png
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nestdnn.errors import NestError


@dataclass(frozen=True)
class PipelinePlan:
    """One app's offline pipeline: model, data and the effort spent at every stage."""

    name: str
    arch: str
    width_mult: float
    data_args: tuple[str, ...]  # `nestdnn train` data options, e.g. ("--dataset", "fashion-mnist")
    train_epochs: float
    prune_ratio: float
    prune_retrain_epochs: float
    prune_max_steps: int
    descendants: int
    epochs_per_level: float
    accuracy_drop: float = 0.03  # the seed may lose this much validation accuracy vs vanilla
    min_accuracy: float | None = None  # an absolute floor instead of accuracy_drop
    prune_round_to: int = 1  # keep pruned widths a multiple of this
    prune_min_retrain_steps: int | None = None  # fine-tuning floor (default: the CLI's)
    profile_backends: str = "torch,onnxruntime"  # the daemon serves onnxruntime by default
    profile_runs: int = 50
    threads: int | None = None  # training threads (default: the CLI's)


@dataclass(frozen=True)
class PipelineDirs:
    """Where one app's artifacts live."""

    root: Path  # ROOT/NAME
    models: Path
    name: str

    @classmethod
    def under(cls, root: Path, name: str, models: Path | None = None) -> PipelineDirs:
        return cls(root / name, models or root / "models", name)

    @property
    def train(self) -> Path:
        return self.root / "train"

    @property
    def prune(self) -> Path:
        return self.root / "prune"

    @property
    def vanilla(self) -> Path:
        return self.train / "vanilla.pt"

    @property
    def nest(self) -> Path:
        return self.models / f"{self.name}.nest"

    @property
    def profile(self) -> Path:
        return self.models / f"{self.name}.profile.json"

    @property
    def profile_plot(self) -> Path:
        return self.root / f"{self.name}.profile.png"


@dataclass(frozen=True)
class Stage:
    """One `nestdnn` command: its arguments (built when it runs) and the file it produces."""

    name: str
    output: Path
    command: Callable[[], list[str]]  # built late: it may read the previous stage's output
    valid: Callable[[], bool] | None = None

    def done(self) -> bool:
        """True when the output exists (and passes ``valid``), so the stage can be skipped."""
        return self.output.exists() and (self.valid is None or self.valid())


def pipeline_stages(plan: PipelinePlan, dirs: PipelineDirs) -> list[Stage]:
    """The four stages of ``plan`` writing under ``dirs``, in order."""
    threads = ["--threads", str(plan.threads)] if plan.threads else []
    dataset = list(plan.data_args[:2])  # later stages read the rest from the checkpoint
    floor = plan.prune_min_retrain_steps
    min_retrain_steps = [] if floor is None else ["--min-retrain-steps", str(floor)]

    def train() -> list[str]:
        return [
            "train", "--arch", plan.arch, "--width-mult", str(plan.width_mult),
            *plan.data_args, "--epochs", str(plan.train_epochs), *threads,
            "--out", str(dirs.train),
        ]  # fmt: skip

    def prune() -> list[str]:
        return [
            "prune", "--model", str(dirs.vanilla), *dataset, "--criterion", "trr",
            "--min-accuracy", str(seed_accuracy_floor(plan, dirs)),
            "--ratio", str(plan.prune_ratio), "--retrain-epochs", str(plan.prune_retrain_epochs),
            "--max-steps", str(plan.prune_max_steps), "--round-to", str(plan.prune_round_to),
            *min_retrain_steps, *threads, "--out", str(dirs.prune),
        ]  # fmt: skip

    def recover() -> list[str]:
        steps = len(_read_json(dirs.prune / "roadmap.json")["steps"])
        return [
            "recover", "--prune-dir", str(dirs.prune),
            "--descendants", str(min(plan.descendants, steps)),
            "--epochs-per-level", str(plan.epochs_per_level), *threads, "--out", str(dirs.nest),
        ]  # fmt: skip

    def profile() -> list[str]:
        dirs.profile_plot.parent.mkdir(parents=True, exist_ok=True)
        return [
            "profile", str(dirs.nest), *dataset, "--backends", plan.profile_backends,
            "--threads", "1", "--runs", str(plan.profile_runs), "--out", str(dirs.profile),
            "--plot", str(dirs.profile_plot),
        ]  # fmt: skip

    return [
        Stage("train", dirs.train / "train.json", train),
        Stage("prune", dirs.prune / "roadmap.json", prune, lambda: pruning_finished(dirs.prune)),
        Stage("recover", dirs.nest, recover),
        Stage("profile", dirs.profile, profile, lambda: profile_matches(dirs.profile, dirs.nest)),
    ]


def seed_accuracy_floor(plan: PipelinePlan, dirs: PipelineDirs) -> float:
    """The seed's minimum validation accuracy: the plan's floor, or vanilla's minus the drop."""
    if plan.min_accuracy is not None:
        return plan.min_accuracy
    vanilla_val = _read_json(dirs.train / "train.json")["val_accuracy"]
    return round(max(0.0, vanilla_val - plan.accuracy_drop), 4)


def pruning_finished(prune_dir: Path) -> bool:
    """True once the roadmap records why pruning stopped (seed.pt exists after every step)."""
    try:
        return _read_json(prune_dir / "roadmap.json").get("stopped") is not None
    except NestError:
        return False


def profile_matches(profile: Path, nest: Path) -> bool:
    """A profile is reusable only if it was measured on this exact .nest file."""
    from nestdnn.files import file_sha256
    from profiles.schema import load_profile

    try:
        return load_profile(profile).model.sha256 == file_sha256(nest)
    except NestError:
        return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise NestError(f"cannot read {path}: {e}") from e
