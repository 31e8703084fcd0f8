"""The iterative prune-retrain loop that turns a vanilla model into a seed model and a roadmap.

Step s keeps, in every channel group, ``round_to``-rounded ``(1 - s * ratio)`` of the group's
original width (never below one channel, nor below ``round_to`` for a group at least that
wide), dropping the channels the criterion scores lowest on the *current* model. The kept
channels' weights become a smaller dense model (``NestNet.extract``), which is fine-tuned and
evaluated on the validation split. The loop stops at the first step below the minimum
accuracy (that step is discarded), after ``max_steps`` steps, or when no group can shrink.

Every finished step is written before the next begins (``step_XX.pt``, ``seed.pt``, then
``roadmap.json`` as the commit point), so rerunning an interrupted run continues after its
last finished step and reaches the same roadmap as an uninterrupted run.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.data import DatasetSplits, DataSpec
from nestdnn.errors import NestError
from nestdnn.files import atomic_write
from nestdnn.models import NestNet
from nestdnn.training import TrainConfig, evaluate, set_threads, train
from pruning.importance import Criterion, make_criterion
from pruning.roadmap import (
    ROADMAP_FILE,
    SEED_FILE,
    PruneSettings,
    Roadmap,
    RoadmapStep,
    load_roadmap,
    save_roadmap,
    step_file,
)

log = logging.getLogger(__name__)

StepCallback = Callable[[RoadmapStep, Roadmap], None]


@dataclass(frozen=True)
class PruneJob:
    """What to prune, on which data description, with which settings, into which directory."""

    vanilla_path: Path
    out: Path
    dataset: DataSpec  # how to reload the data (recorded in the roadmap)
    settings: PruneSettings
    meta: dict[str, Any] | None = None  # extra metadata for every step checkpoint
    threads: int | None = None  # torch threads (None: all cores); does not change the result


# --- the schedule ------------------------------------------------------------------------------


def scheduled_width(original: int, position: int, ratio: float, round_to: int) -> int:
    """Width of a group of ``original`` channels after ``position`` schedule steps."""
    remaining = original * (1.0 - position * ratio)
    rounded = round_to * math.floor(remaining / round_to + 0.5)
    return max(min(round_to, original), rounded)


def next_widths(
    original: Mapping[str, int], current: Mapping[str, int], ratio: float, round_to: int
) -> dict[str, int] | None:
    """The first schedule point at which some group is narrower than now; None if none is.

    The schedule is monotone, so this is also the next step of an uninterrupted run: schedule
    points that would shrink nothing (narrow groups, small ratio) are skipped.
    """
    last_position = math.ceil(1.0 / ratio) + 1  # every group is at its floor by then
    for position in range(1, last_position + 1):
        widths = {g: scheduled_width(w, position, ratio, round_to) for g, w in original.items()}
        if any(widths[g] < current[g] for g in current):
            return widths
    return None


def channels_to_keep(scores: Tensor, width: int) -> Tensor:
    """Indices of the ``width`` highest scores, ascending (ties keep the lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:width].sort().values


# --- the loop ----------------------------------------------------------------------------------


def prune(
    vanilla: NestNet,
    splits: DatasetSplits,
    job: PruneJob,
    *,
    max_steps: int | None = None,
    progress: bool = False,
    on_step: StepCallback | None = None,
) -> Roadmap:
    """Run (or resume) iterative pruning of ``vanilla``; returns the roadmap written to ``job.out``.

    Bad input raises NestError before anything is written.
    """
    job.settings.validate()
    if max_steps is not None and max_steps < 1:
        raise NestError(f"--max-steps must be at least 1, got {max_steps}")
    if job.threads is not None and job.threads < 1:
        raise NestError(f"--threads must be at least 1, got {job.threads}")
    set_threads(job.threads)
    check_model_matches_data(vanilla, splits, job.vanilla_path)
    if len(splits.val) == 0:
        raise NestError("pruning needs a validation split held out from training; it is empty")
    criterion = make_criterion(
        job.settings.criterion, triplets=job.settings.triplets, seed=job.settings.seed
    )
    if (job.out / ROADMAP_FILE).exists():
        roadmap, model = _resume(vanilla, job)
        log.info("resuming %s after step %d", job.out, roadmap.last.step)
    else:
        roadmap, model = _start(vanilla, splits, job)
        if on_step is not None:
            on_step(roadmap.last, roadmap)
    if not _should_continue(roadmap, max_steps):
        return roadmap
    roadmap.stopped = None
    while roadmap.stopped is None:
        model = _advance(model, roadmap, splits, job, criterion, max_steps, progress, on_step)
    save_roadmap(roadmap, job.out / ROADMAP_FILE)
    log.info("pruning stopped (%s); seed is step %d", roadmap.stopped, roadmap.seed_step)
    return roadmap


def _advance(
    model: NestNet,
    roadmap: Roadmap,
    splits: DatasetSplits,
    job: PruneJob,
    criterion: Criterion,
    max_steps: int | None,
    progress: bool,
    on_step: StepCallback | None,
) -> NestNet:
    """Run one step, record it if it met the minimum accuracy, or set ``roadmap.stopped``."""
    last = roadmap.last
    if max_steps is not None and last.step >= max_steps:
        roadmap.stopped = "max_steps"
        return model
    targets = next_widths(
        roadmap.steps[0].widths, last.widths, job.settings.ratio, job.settings.round_to
    )
    if targets is None:
        roadmap.stopped = "min_width"
        return model
    step = last.step + 1
    child, keep = _shrink(model, criterion, splits, targets)
    accuracy = _fine_tune(child, splits, job, step, progress)
    if accuracy < job.settings.min_accuracy:
        log.info(
            "step %d: val accuracy %.4f below the minimum %.4f; discarded",
            step,
            accuracy,
            job.settings.min_accuracy,
        )
        roadmap.stopped = "min_accuracy"
        return model
    kept = {g: [last.kept[g][i] for i in keep[g].tolist()] for g in keep}
    record = _record(child, roadmap, job, step, kept, accuracy)
    if on_step is not None:
        on_step(record, roadmap)
    return child


def _shrink(
    model: NestNet, criterion: Criterion, splits: DatasetSplits, targets: Mapping[str, int]
) -> tuple[NestNet, dict[str, Tensor]]:
    """Score the current model's channels and extract the best ``targets[g]`` of each group."""
    scores = criterion.scores(model, splits.train)
    keep = {g: channels_to_keep(scores[g], targets[g]) for g in model.groups()}
    return model.extract(keep), keep


def _fine_tune(
    model: NestNet, splits: DatasetSplits, job: PruneJob, step: int, progress: bool
) -> float:
    """Fine-tune with the shared loop for ``retrain_epochs``; return the validation accuracy."""
    settings = job.settings
    config = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed * 1000 + step,  # a distinct, reproducible stream per step
        threads=job.threads,
        progress=False,
    )
    total = _optimizer_steps(len(splits.train), settings)
    with tqdm(total=total, desc=f"step {step}", unit="batch", disable=not progress) as bar:
        result = train(model, splits, config, after_step=lambda: bar.update())
    if result.val_accuracy is None:
        raise NestError("pruning needs a validation split held out from training; it is empty")
    return result.val_accuracy


def _optimizer_steps(samples: int, settings: PruneSettings) -> int:
    """Optimizer steps of one fine-tuning (as the shared loop counts them: full batches only)."""
    per_epoch = samples // min(settings.batch_size, samples)
    return math.ceil(settings.retrain_epochs * per_epoch)


# --- starting, recording, resuming -------------------------------------------------------------


def check_model_matches_data(model: NestNet, splits: DatasetSplits, path: Path) -> None:
    """The model must take the data set's images and predict its classes."""
    config = model.config
    expected = {
        "input channels": (config.in_channels, splits.in_channels),
        "input size": (config.input_size, splits.input_size),
        "classes": (config.num_classes, splits.num_classes),
    }
    wrong = [
        f"{what} {mine} vs {theirs}" for what, (mine, theirs) in expected.items() if mine != theirs
    ]
    if wrong:
        raise NestError(
            f"{path} ({config.arch}) does not fit data set {splits.name}: {', '.join(wrong)}"
        )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _start(vanilla: NestNet, splits: DatasetSplits, job: PruneJob) -> tuple[Roadmap, NestNet]:
    """Evaluate the vanilla model, check the minimum accuracy, and record it as step 0."""
    accuracy = evaluate(vanilla, splits.val)
    if job.settings.min_accuracy > accuracy:
        raise NestError(
            f"--min-accuracy {job.settings.min_accuracy:.4f} is above the vanilla model's"
            f" validation accuracy {accuracy:.4f}; no pruned model could meet it"
        )
    roadmap = Roadmap(
        vanilla=str(job.vanilla_path),
        vanilla_sha256=file_sha256(job.vanilla_path),
        model_config=vanilla.config.to_dict(),
        dataset=job.dataset,
        settings=job.settings,
    )
    job.out.mkdir(parents=True, exist_ok=True)
    kept = {g: list(range(w)) for g, w in vanilla.groups().items()}
    _record(vanilla, roadmap, job, 0, kept, accuracy)
    return roadmap, vanilla


def _record(
    model: NestNet,
    roadmap: Roadmap,
    job: PruneJob,
    step: int,
    kept: dict[str, list[int]],
    accuracy: float,
) -> RoadmapStep:
    """Write the step's checkpoint, make it the seed, then commit it to the roadmap."""
    record = RoadmapStep(
        step=step,
        file=step_file(step),
        widths=model.groups(),
        kept=kept,
        val_accuracy=accuracy,
        params=model.count_params(),
        macs=model.count_macs(),
    )
    meta = {
        **(job.meta or {}),
        "stage": "prune",
        "roadmap_step": step,
        "criterion": job.settings.criterion,
        "val_accuracy": accuracy,
        "kept": kept,
    }
    save_checkpoint(job.out / record.file, model, **meta)
    _atomic_copy(job.out / record.file, job.out / SEED_FILE)
    roadmap.steps.append(record)
    save_roadmap(roadmap, job.out / ROADMAP_FILE)
    return record


def _atomic_copy(source: Path, target: Path) -> None:
    with source.open("rb") as src:
        atomic_write(target, lambda dst: shutil.copyfileobj(src, dst))


def _resume(vanilla: NestNet, job: PruneJob) -> tuple[Roadmap, NestNet]:
    """Load an unfinished (or finished) run from ``job.out``, refusing different settings."""
    roadmap = load_roadmap(job.out / ROADMAP_FILE)
    differences = _differences(roadmap, vanilla, job)
    if differences:
        raise NestError(
            f"{job.out} holds a pruning run made with different settings"
            f" ({'; '.join(differences)}); use the same settings to resume, or another --out"
        )
    path = job.out / roadmap.last.file
    model, _meta = load_checkpoint(path)
    if model.groups() != roadmap.last.widths:
        raise NestError(f"{path} does not have the widths the roadmap records for its step")
    return roadmap, model


def _differences(roadmap: Roadmap, vanilla: NestNet, job: PruneJob) -> list[str]:
    theirs = roadmap.settings.to_dict()
    mine = job.settings.to_dict()
    found = [f"{k} was {theirs[k]!r}, now {mine[k]!r}" for k in mine if theirs[k] != mine[k]]
    if roadmap.model_config != vanilla.config.to_dict():
        found.append("a vanilla model of another architecture or widths")
    elif roadmap.vanilla_sha256 != file_sha256(job.vanilla_path):
        found.append(f"vanilla file {roadmap.vanilla} had other weights")
    if roadmap.dataset != job.dataset:
        found.append(f"dataset was {roadmap.dataset.to_dict()}, now {job.dataset.to_dict()}")
    return found


def _should_continue(roadmap: Roadmap, max_steps: int | None) -> bool:
    """A finished run continues only if it stopped at max_steps and may now go further."""
    if roadmap.stopped is None:
        return True
    if roadmap.stopped != "max_steps":
        return False
    return max_steps is None or max_steps > roadmap.last.step
