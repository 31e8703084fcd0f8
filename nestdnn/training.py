"""The training loop shared by every stage (vanilla training, pruning fine-tuning, recovery).

Data stays in memory as tensors: each epoch draws a seeded permutation (and seeded
augmentation), so a run is reproducible and resuming from an epoch checkpoint continues
exactly where the interrupted run would have gone. Fractional epochs run a prefix of an
epoch's batches; the learning-rate schedule spans all steps of the run.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import TensorDataset
from tqdm import tqdm

from nestdnn.checkpoint import atomic_torch_save, load_state_dict_checked, load_torch_file
from nestdnn.data import DatasetSplits
from nestdnn.errors import NestError

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(logits, labels, inputs) -> scalar loss; inputs let a distillation loss query a teacher."""
Augment = Callable[[Tensor, torch.Generator], Tensor]

SCHEDULES = ("cosine", "constant")
STATE_KIND = "nestdnn-train-state"
# Fields that do not change what is computed: a resumed run may differ in these.
RUNTIME_FIELDS = frozenset({"threads", "progress", "eval_batch_size", "checkpoint_path"})


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (SGD with momentum, cosine schedule by default)."""

    epochs: float = 10.0
    batch_size: int = 128
    lr: float = 0.05
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    label_smoothing: float = 0.0
    augment: bool = False
    crop_padding: int | None = None  # None: input_size // 8 (at least 1)
    flip: bool = True  # horizontal flips, when augmenting
    seed: int = 0
    threads: int | None = None  # None: every core this process may use
    eval_batch_size: int = 512
    progress: bool | None = None  # None: show a progress bar when stderr is a terminal
    checkpoint_path: str | None = None  # resumable state, written after every epoch

    def validate(self) -> None:
        checks = [
            (self.epochs > 0, f"epochs must be positive, got {self.epochs}"),
            (self.batch_size >= 1, f"batch size must be at least 1, got {self.batch_size}"),
            (self.lr > 0, f"learning rate must be positive, got {self.lr}"),
            (0 <= self.momentum < 1, f"momentum must be in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight decay must be >= 0, got {self.weight_decay}"),
            (self.schedule in SCHEDULES, f"schedule must be one of {', '.join(SCHEDULES)}"),
            (0 <= self.label_smoothing < 1, "label smoothing must be in [0, 1)"),
            (self.crop_padding is None or self.crop_padding >= 0, "crop padding must be >= 0"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.eval_batch_size >= 1, "eval batch size must be at least 1"),
        ]
        for ok, message in checks:
            if not ok:
                raise NestError(message)


@dataclass
class EpochStats:
    epoch: int
    steps: int
    loss: float
    train_accuracy: float
    val_accuracy: float | None
    lr: float
    seconds: float


@dataclass
class TrainResult:
    """What a run did; `seconds` counts training time across resumed runs too."""

    epochs: float
    steps: int
    seconds: float
    history: list[EpochStats] = field(default_factory=list)
    resumed_epochs: int = 0

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else None


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count (default: all available cores) and return it."""
    count = threads or available_cores()
    torch.set_num_threads(count)
    return count


def train(
    model: nn.Module,
    splits: DatasetSplits,
    config: TrainConfig,
    *,
    after_step: Callable[[], None] | None = None,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train `model` in place on `splits.train`, evaluating on `splits.val` after each epoch.

    `after_step` runs after every optimizer step (e.g. to restore frozen weights); `loss_fn`
    replaces the default cross-entropy (with the configured label smoothing).
    """
    config.validate()
    threads = set_threads(config.threads)
    images, labels = splits.train.tensors
    if len(images) == 0:
        raise NestError("cannot train on an empty training split")
    batch_size = min(config.batch_size, len(images))
    steps_per_epoch = len(images) // batch_size  # the last partial batch is dropped
    total_steps = math.ceil(config.epochs * steps_per_epoch)
    num_epochs = math.ceil(total_steps / steps_per_epoch)
    loss_fn = loss_fn or _cross_entropy(config.label_smoothing)
    augment = _augmenter(config, splits) if config.augment else None
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        nesterov=config.nesterov and config.momentum > 0,
        weight_decay=config.weight_decay,
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(config.schedule, total_steps)
    )
    state_path = Path(config.checkpoint_path) if config.checkpoint_path else None
    result = TrainResult(epochs=config.epochs, steps=total_steps, seconds=0.0)
    identity = _identity(config, splits)
    if state_path is not None and state_path.exists():
        _resume(state_path, identity, model, optimizer, scheduler, result)
    log.info(
        "training %d steps (%g epochs of %d batches of %d) on %d threads%s",
        total_steps,
        config.epochs,
        steps_per_epoch,
        batch_size,
        threads,
        f", resuming after epoch {result.resumed_epochs}" if result.resumed_epochs else "",
    )
    for epoch in range(result.resumed_epochs, num_epochs):
        started = time.perf_counter()
        steps = min(steps_per_epoch, total_steps - epoch * steps_per_epoch)
        gen = torch.Generator().manual_seed(_epoch_seed(config.seed, epoch))
        torch.manual_seed(_epoch_seed(config.seed, epoch))  # model-side randomness (dropout)
        order = torch.randperm(len(images), generator=gen)[: steps * batch_size]
        lr = optimizer.param_groups[0]["lr"]
        loss, accuracy = _run_epoch(
            model,
            (images, labels),
            order.view(steps, batch_size),
            optimizer,
            scheduler,
            loss_fn=loss_fn,
            augment=augment,
            gen=gen,
            after_step=after_step,
            progress=_show_progress(config.progress),
            desc=f"epoch {epoch + 1}/{num_epochs}",
        )
        val_accuracy = (
            evaluate(model, splits.val, config.eval_batch_size) if len(splits.val) else None
        )
        stats = EpochStats(
            epoch + 1, steps, loss, accuracy, val_accuracy, lr, time.perf_counter() - started
        )
        result.history.append(stats)
        result.seconds += stats.seconds
        log.info(_epoch_line(stats, num_epochs))
        if state_path is not None:
            _save_state(state_path, identity, model, optimizer, scheduler, result)
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: TensorDataset, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `dataset` (eval mode; the model's mode is restored)."""
    images, labels = dataset.tensors
    if len(images) == 0:
        raise NestError("cannot evaluate on an empty data set")
    was_training = model.training
    model.eval()
    try:
        correct = sum(
            int((model(images[i : i + batch_size]).argmax(1) == labels[i : i + batch_size]).sum())
            for i in range(0, len(images), batch_size)
        )
    finally:
        model.train(was_training)
    return correct / len(images)


def _run_epoch(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    batches: Tensor,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    *,
    loss_fn: LossFn,
    augment: Augment | None,
    gen: torch.Generator,
    after_step: Callable[[], None] | None,
    progress: bool,
    desc: str,
) -> tuple[float, float]:
    """One pass over `batches` (rows of sample indices); returns mean loss and accuracy."""
    images, labels = data
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    with tqdm(batches, desc=desc, disable=not progress, leave=False, unit="batch") as bar:
        for step, idx in enumerate(bar):
            x, y = images[idx], labels[idx]
            if augment is not None:
                x = augment(x, gen)
            logits = model(x)
            loss = loss_fn(logits, y, x)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if after_step is not None:
                after_step()
            total_loss += loss.item() * len(y)
            correct += int((logits.detach().argmax(1) == y).sum())
            seen += len(y)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.2%}")
    return total_loss / seen, correct / seen


def _cross_entropy(label_smoothing: float) -> LossFn:
    def loss(logits: Tensor, labels: Tensor, _inputs: Tensor) -> Tensor:
        return F.cross_entropy(logits, labels, label_smoothing=label_smoothing)

    return loss


def _lr_factor(schedule: str, total_steps: int) -> Callable[[int], float]:
    if schedule == "constant":
        return lambda _step: 1.0
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / total_steps))


def _epoch_seed(seed: int, epoch: int) -> int:
    return seed * 1_000_003 + epoch


def _show_progress(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _epoch_line(stats: EpochStats, num_epochs: int) -> str:
    val = "" if stats.val_accuracy is None else f" val {stats.val_accuracy:.2%}"
    return (
        f"epoch {stats.epoch}/{num_epochs}: loss {stats.loss:.4f} train {stats.train_accuracy:.2%}"
        f"{val} lr {stats.lr:.4g} ({stats.seconds:.1f} s)"
    )


# --- augmentation ----------------------------------------------------------------------------


def _augmenter(config: TrainConfig, splits: DatasetSplits) -> Augment:
    padding = (
        config.crop_padding if config.crop_padding is not None else max(1, splits.input_size // 8)
    )
    # Pad with black: the normalised value of a zero pixel.
    fill = -torch.tensor(splits.mean) / torch.tensor(splits.std)

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        if padding:
            x = random_crop(x, padding, fill, gen)
        if config.flip:
            x = random_flip(x, gen)
        return x

    return augment


def random_crop(x: Tensor, padding: int, fill: Tensor, gen: torch.Generator) -> Tensor:
    """Pad a (N, C, H, W) batch by `padding` with per-channel `fill`, crop each sample back."""
    n, c, h, w = x.shape
    padded = fill.to(x.dtype).view(1, c, 1, 1).repeat(n, 1, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    top = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen)
    left = torch.randint(0, 2 * padding + 1, (n, 1), generator=gen)
    rows = (top + torch.arange(h)).view(n, h, 1)
    cols = (left + torch.arange(w)).view(n, 1, w)
    cropped = padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows, cols]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Flip each sample of a (N, C, H, W) batch horizontally with probability 1/2."""
    flip = torch.rand(len(x), generator=gen) < 0.5
    return torch.where(flip.view(-1, 1, 1, 1), x.flip(3), x)


# --- resumable state -------------------------------------------------------------------------


def _identity(config: TrainConfig, splits: DatasetSplits) -> dict[str, Any]:
    """What must match for a saved state to be resumed: settings and a data fingerprint."""
    settings = {k: v for k, v in asdict(config).items() if k not in RUNTIME_FIELDS}
    data = {
        "dataset": splits.name,
        "class_names": list(splits.class_names),
        "sizes": [len(splits.train), len(splits.val), len(splits.test)],
        "input_shape": [splits.in_channels, splits.input_size, splits.input_size],
    }
    return {**settings, **data}


def _save_state(
    path: Path,
    identity: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    result: TrainResult,
) -> None:
    atomic_torch_save(
        {
            "kind": STATE_KIND,
            "identity": identity,
            "epochs_done": result.history[-1].epoch,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "history": [asdict(s) for s in result.history],
            "seconds": result.seconds,
        },
        path,
    )


def _resume(
    path: Path,
    identity: dict[str, Any],
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    result: TrainResult,
) -> None:
    """Restore model, optimizer, schedule and history from a state file written by `train`."""
    state = load_torch_file(path, "training state")
    if not isinstance(state, dict) or state.get("kind") != STATE_KIND:
        raise NestError(f"{path} is not a nestdnn training state file")
    if state.get("identity") != identity:
        saved = state.get("identity") or {}
        changed = sorted(k for k, v in identity.items() if saved.get(k) != v)
        raise NestError(
            f"{path} was written by a run with different settings or data"
            f" ({', '.join(changed)});"
            " delete it to start over, or use the original settings to resume"
        )
    load_state_dict_checked(model, state["model"], path)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    result.history = [EpochStats(**s) for s in state["history"]]
    result.resumed_epochs = state["epochs_done"]
    result.seconds = state["seconds"]
