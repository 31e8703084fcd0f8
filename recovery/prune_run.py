"""The pruning run recovery starts from: its roadmap, step checkpoints and data set.

Reads what `nestdnn prune` wrote in its output directory (``roadmap.json``, ``step_XX.pt``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from pathlib import Path

from nestdnn.data import DEFAULT_WORKERS, DatasetSplits
from nestdnn.errors import NestError
from nestdnn.models import ModelConfig
from pruning.roadmap import ROADMAP_FILE, Roadmap, RoadmapStep, load_roadmap


@dataclass(frozen=True)
class PruneRun:
    """A finished pruning run: the roadmap read from its directory, with the file's digest."""

    directory: Path
    roadmap: Roadmap
    digest: str

    @property
    def model_config(self) -> ModelConfig:
        return ModelConfig.from_dict(self.roadmap.model_config)

    @property
    def seed_step(self) -> int:
        return self.roadmap.seed_step

    def step(self, index: int) -> RoadmapStep:
        steps = self.roadmap.steps
        if not 0 <= index < len(steps):
            raise NestError(
                f"step {index} is not in the roadmap of {self.directory}"
                f" (it has steps 0..{len(steps) - 1})"
            )
        return steps[index]

    def step_file(self, index: int) -> Path:
        return self.directory / self.step(index).file


def open_prune_run(prune_dir: str | Path) -> PruneRun:
    """Read ``prune_dir/roadmap.json``; a missing or unfinished run is a NestError."""
    directory = Path(prune_dir)
    path = directory / ROADMAP_FILE
    if not path.is_file():
        raise NestError(f"no roadmap in {directory}: {path} not found (run `nestdnn prune` first)")
    roadmap = load_roadmap(path)
    if roadmap.stopped is None:
        raise NestError(
            f"the pruning run in {directory} has not finished (no seed model yet);"
            " rerun its `nestdnn prune` command to complete it"
        )
    return PruneRun(directory, roadmap, hashlib.sha256(path.read_bytes()).hexdigest())


def load_run_splits(
    run: PruneRun,
    dataset: str | None = None,
    data_dir: str | Path | None = None,
    workers: int = DEFAULT_WORKERS,
) -> DatasetSplits:
    """The data set (and train/val split) the roadmap records, optionally from elsewhere
    (``workers`` decode it if it is a streamed image folder)."""
    spec = run.roadmap.dataset
    if dataset is not None:
        spec = replace(spec, name=dataset)
    if data_dir is not None:
        spec = replace(spec, data_dir=str(data_dir))
    return spec.load(workers=workers)
