"""The iterative prune-retrain loop that turns a vanilla model into a seed model and a roadmap.

Every step keeps a *fraction* of each channel group's original width: ``round_to``-rounded
(never below one channel, nor below ``round_to`` for a group at least that wide), dropping
the channels the criterion scores lowest on the *current* model. A step lowers the fraction
by the ratio in force (schedule points that would shrink nothing are skipped). The kept
channels' weights become a smaller dense model (``NestNet.extract``), which is fine-tuned for
``retrain_epochs`` but at least ``min_retrain_steps`` optimizer steps, and evaluated on the
validation split.

A try below the minimum accuracy is discarded and the step is retried from the same model
with half the ratio, down to ``ratio_floor``; the halved ratio stays in force for the later
steps. A retry cuts every group the discarded try cut by a smaller share of its width, or
not at all: where rounding makes a smaller ratio cut a group as deeply, that group is held
back for the rest of the run and the others are cut (``next_try``). The loop stops when no
try down to the floor meets the minimum (``min_accuracy``), after ``max_steps`` steps, or
when no group can shrink (``min_width``). The roadmap records every try (``attempts``).

Every finished step is written before the next begins (``step_XX.pt``, ``seed.pt``, then
``roadmap.json`` as the commit point), and so is every discarded try, so rerunning an
interrupted run continues where it stopped and reaches the same roadmap as an uninterrupted
run. Under torchrun every rank runs this loop (fine-tuning, scoring and evaluating its
share, taking the same decisions from all-reduced figures) and only rank 0 writes.
"""

from __future__ import annotations

import hashlib
import logging
import math
import shutil
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from nestdnn import distributed
from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.data import DatasetSplits, DataSpec
from nestdnn.device import resolve_device
from nestdnn.errors import NestError
from nestdnn.files import atomic_write
from nestdnn.models import NestNet
from nestdnn.training import (
    TrainConfig,
    evaluate,
    model_device,
    plan_batches,
    set_threads,
    train,
)
from pruning.importance import Criterion, Scores, make_criterion
from pruning.roadmap import (
    ROADMAP_FILE,
    SEED_FILE,
    PruneAttempt,
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
    # How, not what (the result does not depend on these beyond floating-point noise):
    threads: int | None = None  # torch threads (None: all cores)
    device: str = "auto"
    amp: str | None = None  # mixed precision of fine-tuning (None: the device's default)


# --- the schedule ------------------------------------------------------------------------------


def scheduled_width(original: int, fraction: float, round_to: int) -> int:
    """Width of a group of ``original`` channels at ``fraction`` of it."""
    rounded = round_to * math.floor(original * fraction / round_to + 0.5)
    return max(min(round_to, original), rounded)


def next_widths(
    original: Mapping[str, int],
    current: Mapping[str, int],
    fraction: float,
    ratio: float,
    round_to: int,
    held: Collection[str] = (),
) -> tuple[float, dict[str, int]] | None:
    """The first schedule point below ``fraction``, in steps of ``ratio``, at which some group
    not ``held`` is narrower than now, and its widths (held groups keep theirs); None if no
    such group can shrink any more.

    Points that would shrink nothing (narrow groups, small ratio) are skipped, so a run that
    never retries follows ``1 - s * ratio`` exactly.
    """
    point = fraction
    while True:
        point = round(point - ratio, 9)  # no drift: 1 - 0.1 - 0.1 - 0.1 is 0.7
        widths = {
            g: current[g] if g in held else scheduled_width(w, point, round_to)
            for g, w in original.items()
        }
        if any(widths[g] < current[g] for g in current):
            return point, widths
        if point <= 0:  # every group is at its floor
            return None


def held_groups(
    original: Mapping[str, int], widths: Mapping[str, int], fraction: float, round_to: int
) -> set[str]:
    """Groups a retry held back: wider than the schedule says at ``fraction``."""
    return {g for g, w in original.items() if widths[g] > scheduled_width(w, fraction, round_to)}


def relative_cuts(current: Mapping[str, int], targets: Mapping[str, int]) -> dict[str, float]:
    """The share of its current width ``targets`` removes from each group it narrows."""
    return {g: 1 - targets[g] / current[g] for g in current if targets[g] < current[g]}


def next_try(
    roadmap: Roadmap, ratio: float, failed: Mapping[str, int] | None
) -> tuple[float, dict[str, int]] | None:
    """The fraction and widths the next try at ``ratio`` prunes to, or None.

    After a discarded try (``failed``: its widths), a retry cuts every group that try cut by
    a smaller share of its width, or not at all: a group that a smaller ratio would cut as
    deeply (rounding: an 8-wide group at ``round_to`` 4 can only halve) is held back, and the
    schedule is searched again without it. A held group keeps its width for the rest of the
    run (it is wider than the schedule at every later step's fraction).
    """
    settings = roadmap.settings
    last = roadmap.last
    original = roadmap.steps[0].widths
    fraction = fraction_of(roadmap, last)
    held = set() if last.step == 0 else held_groups(original, last.widths, fraction,
                                                     settings.round_to)  # fmt: skip
    limits = {} if failed is None else relative_cuts(last.widths, failed)
    while True:
        found = next_widths(original, last.widths, fraction, ratio, settings.round_to, held)
        if found is None:
            return None
        cuts = relative_cuts(last.widths, found[1])
        too_deep = {g for g, cut in cuts.items() if g in limits and cut >= limits[g]}
        if not too_deep:
            return found
        held |= too_deep


def channels_to_keep(scores: Tensor, width: int) -> Tensor:
    """Indices of the ``width`` highest scores, ascending (ties keep the lower index)."""
    order = torch.argsort(scores, descending=True, stable=True)
    return order[:width].sort().values


def retry_ratios(roadmap: Roadmap) -> list[float]:
    """The ratios the next step may try, in order: the ratio in force (the last try's, or
    half of it after a discarded try), then halvings down to the settings' floor."""
    settings = roadmap.settings
    ratio = settings.ratio
    if roadmap.attempts:
        last = roadmap.attempts[-1]
        ratio = last.ratio if last.accepted else last.ratio / 2
    ratios = []
    while ratio >= settings.ratio_floor * (1 - 1e-9):
        ratios.append(ratio)
        ratio /= 2
    return ratios


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
    device = resolve_device(job.device)
    set_threads(job.threads)
    check_model_matches_data(vanilla, splits, job.vanilla_path)
    if len(splits.val) == 0:
        raise NestError("pruning needs a validation split held out from training; it is empty")
    criterion = make_criterion(
        job.settings.criterion, triplets=job.settings.triplets, seed=job.settings.seed
    )
    resuming = (job.out / ROADMAP_FILE).exists()
    distributed.barrier()  # every rank has looked before rank 0 writes
    if resuming:
        roadmap, model = _resume(vanilla, job)
        log.info("resuming %s after step %d", job.out, roadmap.last.step)
    else:
        roadmap, model = _start(vanilla.to(device), splits, job)
        if on_step is not None:
            on_step(roadmap.last, roadmap)
    if not _should_continue(roadmap, max_steps):
        return roadmap
    roadmap.stopped = None
    show = progress and distributed.current().is_main
    with tqdm(desc="pruning", unit="try", disable=not show, leave=False) as bar:
        while roadmap.stopped is None:
            model = _advance(model.to(device), roadmap, splits, job, criterion, max_steps,
                             progress, on_step)  # fmt: skip
            bar.update()
            bar.set_postfix(params=f"{roadmap.last.params / roadmap.steps[0].params:.1%}")
    _commit(roadmap, job)
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
    """Try the next step (retrying at smaller ratios), record it if a try met the minimum
    accuracy, or set ``roadmap.stopped``; returns the model to prune next."""
    last = roadmap.last
    if max_steps is not None and last.step >= max_steps:
        roadmap.stopped = "max_steps"
        return model
    settings = job.settings
    step = last.step + 1
    discarded = [a.widths for a in roadmap.attempts if a.step == step]
    scores: Scores | None = None
    for ratio in retry_ratios(roadmap):
        found = next_try(roadmap, ratio, discarded[-1] if discarded else None)
        if found is None:
            if not discarded:
                roadmap.stopped = "min_width"
                return model
            continue  # nothing left to cut less at this ratio: a smaller one may find some
        fraction, targets = found
        scores = criterion.scores(model, splits.train) if scores is None else scores
        keep = {g: channels_to_keep(scores[g], targets[g]) for g in model.groups()}
        child = model.extract({g: k.to(model_device(model)) for g, k in keep.items()})
        accuracy = _fine_tune(child, splits, job, step, progress)
        attempt = PruneAttempt(
            step=step, ratio=ratio, fraction=fraction, widths=targets,
            params=child.count_params(), val_accuracy=accuracy,
            accepted=accuracy >= settings.min_accuracy,
            retrain_steps=_retrain_steps(len(splits.train), settings),
        )  # fmt: skip
        roadmap.attempts.append(attempt)
        if attempt.accepted:
            kept = {g: [last.kept[g][i] for i in keep[g].tolist()] for g in keep}
            record = _record(child, roadmap, job, step, kept, accuracy, fraction)
            if on_step is not None:
                on_step(record, roadmap)
            return child
        log.info(
            "step %d at ratio %g: val accuracy %.4f below the minimum %.4f; discarded",
            step, ratio, accuracy, settings.min_accuracy,
        )  # fmt: skip
        discarded.append(targets)
        _commit(roadmap, job)
    roadmap.stopped = "min_accuracy"
    return model


def fraction_of(roadmap: Roadmap, step: RoadmapStep) -> float:
    """The schedule fraction of a step; for a roadmap written before fractions were recorded,
    the point of its constant-ratio schedule with the step's widths."""
    if step.fraction is not None:
        return step.fraction
    settings = roadmap.settings
    original = roadmap.steps[0].widths
    for position in range(math.ceil(1.0 / settings.ratio) + 2):
        fraction = round(1.0 - position * settings.ratio, 9)
        widths = {g: scheduled_width(w, fraction, settings.round_to) for g, w in original.items()}
        if widths == step.widths:
            return fraction
    raise NestError(f"step {step.step}'s widths are not on its roadmap's schedule")


def _fine_tune(
    model: NestNet, splits: DatasetSplits, job: PruneJob, step: int, progress: bool
) -> float:
    """Fine-tune with the shared loop; return the validation accuracy."""
    settings = job.settings
    config = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.batch_size,
        lr=settings.lr,
        seed=settings.seed * 1000 + step,  # a distinct, reproducible stream per step
        min_steps=settings.min_retrain_steps,
        threads=job.threads,
        progress=progress,
        device=job.device,
        amp=job.amp,
    )
    result = train(model, splits, config)
    if result.val_accuracy is None:
        raise NestError("pruning needs a validation split held out from training; it is empty")
    return result.val_accuracy


def _retrain_steps(samples: int, settings: PruneSettings) -> int:
    """Optimizer steps of one fine-tuning (as the shared loop counts them)."""
    config = TrainConfig(
        epochs=settings.retrain_epochs,
        batch_size=settings.batch_size,
        min_steps=settings.min_retrain_steps,
    )
    return plan_batches(samples, config, distributed.current().world_size).total_steps


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
    if distributed.current().is_main:
        job.out.mkdir(parents=True, exist_ok=True)
    kept = {g: list(range(w)) for g, w in vanilla.groups().items()}
    _record(vanilla, roadmap, job, 0, kept, accuracy, 1.0)
    return roadmap, vanilla


def _record(
    model: NestNet,
    roadmap: Roadmap,
    job: PruneJob,
    step: int,
    kept: dict[str, list[int]],
    accuracy: float,
    fraction: float,
) -> RoadmapStep:
    """Write the step's checkpoint, make it the seed, then commit it to the roadmap (rank 0
    writes; every rank records it)."""
    record = RoadmapStep(
        step=step,
        file=step_file(step),
        widths=model.groups(),
        kept=kept,
        val_accuracy=accuracy,
        params=model.count_params(),
        macs=model.count_macs(),
        fraction=fraction,
    )
    roadmap.steps.append(record)
    if not distributed.current().is_main:
        return record
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
    save_roadmap(roadmap, job.out / ROADMAP_FILE)
    return record


def _commit(roadmap: Roadmap, job: PruneJob) -> None:
    """Write the roadmap as it is now (rank 0 only)."""
    if distributed.current().is_main:
        save_roadmap(roadmap, job.out / ROADMAP_FILE)


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
    model, _meta = load_checkpoint(path, resolve_device(job.device))
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
