"""Freeze-&-grow: building the multi-capacity model level by level from the seed.

Level 0 is the smallest chosen roadmap step (the seed by default) taken as it is: pruning has
already fine-tuned it, so ``epochs_per_level`` applies to the grown levels 1..K-1 only. Level
k starts from the roadmap model of its step (channels mapped into level order, so new
channels keep the weights they had there), gets descendant k-1's trained values written into
the frozen block of every nested weight, and is trained for ``epochs_per_level`` with the
block restored after every optimizer step. Its per-descendant tensors (BN, biases) start from
its roadmap model too and are trained with it.

Each finished level is saved as a checkpoint in a work directory next to the output
(``MODEL.nest.work/level_k.pt``), so an interrupted run continues where it stopped and, being
seeded per level, writes the same file as an uninterrupted one.

Levels train on ``config.device``. Under torchrun every rank grows every level (its share of
each batch, the frozen block masked after the all-reduce and restored after every step) and
only rank 0 writes; every rank then re-measures the written file.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nestdnn import distributed
from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.data import DatasetSplits
from nestdnn.device import resolve_device
from nestdnn.errors import NestError
from nestdnn.models import ModelConfig, NestNet
from nestdnn.nested import load_descendant
from nestdnn.nestfile import NestDescendant, NestMeta, write_nest
from nestdnn.training import LossFn, TrainConfig, evaluate, train
from recovery.freeze import Freezer, overwrite_blocks
from recovery.levels import LevelPlan
from recovery.prune_run import PruneRun

log = logging.getLogger(__name__)

SETTINGS_FILE = "settings.json"


@dataclass
class RecoveryConfig:
    """How the grown levels are trained (the descendants themselves are a LevelPlan)."""

    epochs_per_level: float = 1.0
    batch_size: int = 128
    lr: float = 0.01
    weight_decay: float = 5e-4
    seed: int = 0
    distill: bool = False
    temperature: float = 4.0
    distill_weight: float = 0.7  # share of the distillation term in the loss
    threads: int | None = None
    progress: bool | None = None
    device: str = "auto"
    amp: str | None = None  # mixed precision (None: the device's default)

    def validate(self) -> None:
        if self.epochs_per_level <= 0:
            raise NestError(f"epochs per level must be positive, got {self.epochs_per_level}")
        if self.distill and self.temperature <= 0:
            raise NestError(f"distillation temperature must be positive, got {self.temperature}")
        if self.distill and not 0 < self.distill_weight <= 1:
            raise NestError(f"distillation weight must be in (0, 1], got {self.distill_weight}")

    def identity(self) -> dict[str, Any]:
        """The settings that change the result (a resumed run must use the same)."""
        runtime = ("threads", "progress", "device", "amp")
        return {k: v for k, v in asdict(self).items() if k not in runtime}


@dataclass
class LevelResult:
    """One descendant as recovered: its step, size and validation accuracy."""

    level: int
    step: int
    widths: dict[str, int]
    params: int
    val_accuracy: float
    train_seconds: float
    resumed: bool

    @property
    def channels(self) -> int:
        return sum(self.widths.values())

    def summary(self, num_levels: int) -> str:
        origin = "resumed" if self.resumed else f"{self.train_seconds:.0f} s"
        return (
            f"level {self.level}/{num_levels - 1} (roadmap step {self.step}):"
            f" {self.channels} channels, {self.params:,} params,"
            f" val {self.val_accuracy:.2%} ({origin})"
        )


@dataclass
class RecoveryResult:
    """The written multi-capacity model and every descendant's accuracy, trained and re-read."""

    path: Path
    levels: list[LevelResult]
    file_accuracies: list[float]


def work_dir_for(out: Path) -> Path:
    """Where finished levels are kept: ``MODEL.nest.work`` next to the output."""
    return out.with_name(out.name + ".work")


def recover(
    run: PruneRun, plan: LevelPlan, splits: DatasetSplits, out: Path, config: RecoveryConfig
) -> RecoveryResult:
    """Grow every level of ``plan``, write the ``.nest`` file and re-check it from disk."""
    config.validate()
    _check_data_fits(run.model_config, splits)
    device = resolve_device(config.device)
    work = work_dir_for(out)
    _claim_work_dir(work, run, plan, config)
    teacher = _load_teacher(run, device) if config.distill else None
    levels: list[LevelResult] = []
    models: list[NestNet] = []
    rank = distributed.current()
    show = (sys.stderr.isatty() if config.progress is None else config.progress) and rank.is_main
    with (
        logging_redirect_tqdm(),
        tqdm(total=plan.num_levels, desc="recover", unit="level", disable=not show) as bar,
    ):
        for level in range(plan.num_levels):
            previous = models[-1].state_dict() if models else None
            model, result = _finished_or_grown_level(
                plan, level, previous, splits, work, config, teacher
            )
            models.append(model)
            levels.append(result)
            log.info(result.summary(plan.num_levels))
            bar.set_postfix(val=f"{result.val_accuracy:.2%}")
            bar.update()
    if rank.is_main:
        write_nest(out, _descendants(models, levels), _nest_meta(run, plan, splits, config))
    distributed.barrier()  # the file exists for every rank
    file_accuracies = verify_from_file(out, splits, levels, device)
    return RecoveryResult(path=out, levels=levels, file_accuracies=file_accuracies)


def _check_data_fits(cfg: ModelConfig, splits: DatasetSplits) -> None:
    expected = (cfg.in_channels, cfg.input_size, cfg.num_classes)
    found = (splits.in_channels, splits.input_size, splits.num_classes)
    if expected != found:
        raise NestError(
            f"data set {splits.name} gives {found[0]}x{found[1]}x{found[1]} images of"
            f" {found[2]} classes; the pruned model needs {expected[0]}x{expected[1]}x"
            f"{expected[1]} and {expected[2]} classes"
        )


def _claim_work_dir(work: Path, run: PruneRun, plan: LevelPlan, config: RecoveryConfig) -> None:
    """Create the work dir, or check that the levels in it were made with the same settings."""
    settings = {
        "roadmap": run.digest,
        "steps": [s.step for s in plan.steps],
        "recovery": config.identity(),
    }
    path = work / SETTINGS_FILE
    previous = json.loads(path.read_text()) if path.is_file() else None
    distributed.barrier()  # every rank has looked before rank 0 writes
    if previous is None:
        if distributed.current().is_main:
            work.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(settings, indent=2))
        return
    if previous != settings:
        changed = sorted(k for k in settings if previous.get(k) != settings[k])
        raise NestError(
            f"{work} holds levels made with other settings ({', '.join(changed)});"
            " delete it to start over, or rerun with the original settings to resume"
        )
    log.info("resuming from %s", work)


def _load_teacher(run: PruneRun, device: torch.device) -> NestNet:
    """The vanilla model (roadmap step 0), frozen, as the distillation teacher."""
    teacher, _ = load_checkpoint(run.step_file(0), device)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def _finished_or_grown_level(
    plan: LevelPlan,
    level: int,
    previous: dict[str, Tensor] | None,
    splits: DatasetSplits,
    work: Path,
    config: RecoveryConfig,
    teacher: nn.Module | None,
) -> tuple[NestNet, LevelResult]:
    """Load level ``level`` from the work dir if it finished before, else grow and save it."""
    path = work / f"level_{level}.pt"
    step = plan.steps[level]
    device = resolve_device(config.device)
    finished = path.is_file()
    distributed.barrier()  # every rank has looked before rank 0 writes the level
    if finished:  # re-measured here: the file is checked on this device
        model, meta = load_checkpoint(path, device)
        result = LevelResult(level, step.step, plan.widths(level), model.count_params(),
                             evaluate(model, splits.val), meta["train_seconds"], resumed=True)
        return model, result
    model = level_start_model(plan, level, previous).to(device)
    seconds = 0.0
    if level > 0:
        seconds = _train_level(model, plan, level, splits, work, config, teacher)
    accuracy = evaluate(model, splits.val)
    if distributed.current().is_main:
        save_checkpoint(path, model, level=level, roadmap_step=step.step,
                        val_accuracy=accuracy, train_seconds=seconds)
        (work / f"level_{level}.train.pt").unlink(missing_ok=True)
    result = LevelResult(level, step.step, plan.widths(level), model.count_params(), accuracy,
                         seconds, resumed=False)
    return model, result


def level_start_model(
    plan: LevelPlan, level: int, previous: dict[str, Tensor] | None
) -> NestNet:
    """The roadmap model of ``level``'s step in level order, frozen block from ``previous``.

    Without ``previous`` (level 0) this is the roadmap model itself, reordered.
    """
    roadmap_model, _ = load_checkpoint(plan.files[level])
    model = roadmap_model.extract(plan.local_indices(level))
    if previous is not None:
        overwrite_blocks(model, previous, plan.widths(level - 1))
    return model


def _train_level(
    model: NestNet,
    plan: LevelPlan,
    level: int,
    splits: DatasetSplits,
    work: Path,
    config: RecoveryConfig,
    teacher: nn.Module | None,
) -> float:
    """Train level ``level`` with the previous descendant's block frozen; returns seconds.

    The block's gradient is zeroed after the backward pass (after DDP's all-reduce) and its
    values restored after every optimizer step.
    """
    freezer = Freezer(model, plan.widths(level - 1))
    train_config = TrainConfig(
        epochs=config.epochs_per_level,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        seed=config.seed * 1000 + level,
        threads=config.threads,
        progress=config.progress,
        checkpoint_path=str(work / f"level_{level}.train.pt"),
        device=config.device,
        amp=config.amp,
    )
    loss_fn = distillation_loss(teacher, config) if teacher is not None else None
    started = time.perf_counter()
    train(
        model,
        splits,
        train_config,
        before_step=freezer.mask_grads,
        after_step=freezer.restore,
        loss_fn=loss_fn,
    )
    return time.perf_counter() - started


def distillation_loss(teacher: nn.Module, config: RecoveryConfig) -> LossFn:
    """Hinton's KD: weighted soft-target KL at temperature T (scaled by T^2) plus hard CE."""
    t, w = config.temperature, config.distill_weight

    def loss(logits: Tensor, labels: Tensor, inputs: Tensor) -> Tensor:
        with torch.no_grad():
            soft_targets = F.log_softmax(teacher(inputs) / t, dim=1)
        kd = F.kl_div(F.log_softmax(logits / t, dim=1), soft_targets, reduction="batchmean",
                      log_target=True)
        return w * t * t * kd + (1 - w) * F.cross_entropy(logits, labels)

    return loss


def _descendants(models: list[NestNet], levels: list[LevelResult]) -> list[NestDescendant]:
    return [
        NestDescendant(
            state_dict={key: value.cpu() for key, value in model.state_dict().items()},
            config=model.config,
            val_accuracy=level.val_accuracy,
            roadmap_step=level.step,
        )
        for model, level in zip(models, levels, strict=True)
    ]


def _nest_meta(run: PruneRun, plan: LevelPlan, splits: DatasetSplits, config: RecoveryConfig
               ) -> NestMeta:
    return NestMeta(
        dataset=splits.name,
        class_names=list(splits.class_names),
        mean=list(splits.mean),
        std=list(splits.std),
        extra={
            "prune_dir": str(run.directory),
            "roadmap_sha256": run.digest,
            "roadmap_steps": [s.step for s in plan.steps],
            "recovery": config.identity(),
        },
    )


def verify_from_file(
    path: Path,
    splits: DatasetSplits,
    levels: list[LevelResult],
    device: torch.device | str = "cpu",
) -> list[float]:
    """Re-measure every descendant loaded from ``path`` on ``device`` (where it was measured
    when trained); it must match the trained accuracy.

    Equality shows that growing later levels left every smaller descendant untouched.
    """
    accuracies = []
    for level in levels:
        accuracy = evaluate(load_descendant(path, level.level).to(device), splits.val)
        if accuracy != level.val_accuracy:
            raise RuntimeError(
                f"descendant {level.level} of {path} scores {accuracy:.4%} on the validation"
                f" split but {level.val_accuracy:.4%} when trained: the freeze did not hold"
            )
        accuracies.append(accuracy)
    log.info("re-measured every descendant from %s: accuracies match", path)
    return accuracies
