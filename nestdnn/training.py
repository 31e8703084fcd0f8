"""The training loop shared by every stage (vanilla training, pruning fine-tuning, recovery).

Each epoch draws a seeded permutation of the training split (torch's DistributedSampler, for
one process or many) and cuts it into global batches; in-memory data is augmented per batch
with a seeded generator, so a run is reproducible and resuming from an epoch checkpoint
continues exactly where the interrupted run would have gone. Fractional epochs run a prefix
of an epoch's batches, `min_steps` sets a floor on the optimizer steps, and the learning-rate
schedule spans all steps of the run.

The run computes on `device` (`nestdnn.device`), optionally in mixed precision. Under
torchrun (`nestdnn.distributed`) every process trains its share of each global batch under
DistributedDataParallel with batch norms over the global batch, so the weights match one
process's with the same global batch up to floating-point noise; evaluation is sharded and
its counts all-reduced; only rank 0 writes the state file and shows progress.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from nestdnn import distributed
from nestdnn.checkpoint import atomic_torch_save, load_state_dict_checked, load_torch_file
from nestdnn.data import DatasetSplits, ImageData, StreamingImages, batches_of
from nestdnn.device import AMP_MODES, Amp, autocast, grad_scaler, resolve_amp, resolve_device
from nestdnn.errors import NestError

log = logging.getLogger(__name__)

LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
"""(logits, labels, inputs) -> scalar loss; inputs let a distillation loss query a teacher."""
Augment = Callable[[Tensor, torch.Generator], Tensor]
StepHook = Callable[[], None]

SCHEDULES = ("cosine", "constant")
STATE_KIND = "nestdnn-train-state"
# Fields that do not change what is computed (beyond floating-point noise): a resumed run
# may differ in these.
RUNTIME_FIELDS = frozenset(
    {"threads", "progress", "eval_batch_size", "checkpoint_path", "device", "amp"}
)


@dataclass
class TrainConfig:
    """Hyper-parameters of one training run (SGD with momentum, cosine schedule by default)."""

    epochs: float = 10.0
    batch_size: int = 128  # the global batch: split between the processes of a torchrun
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
    min_steps: int = 0  # at least this many optimizer steps, however few `epochs` make
    threads: int | None = None  # None: every core this process may use (shared under torchrun)
    eval_batch_size: int = 512
    progress: bool | None = None  # None: show progress bars when stderr is a terminal
    checkpoint_path: str | None = None  # resumable state, written after every epoch
    device: str = "auto"  # see nestdnn.device.resolve_device
    amp: str | None = None  # bf16, fp16 or off; None: bf16/fp16 on CUDA, off elsewhere

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
            (self.min_steps >= 0, f"minimum steps must be >= 0, got {self.min_steps}"),
            (self.threads is None or self.threads >= 1, "threads must be at least 1"),
            (self.eval_batch_size >= 1, "eval batch size must be at least 1"),
            (
                self.amp is None or self.amp in AMP_MODES,
                f"--amp must be one of {', '.join(AMP_MODES)}, got {self.amp}",
            ),
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

    epochs: float  # as run: more than asked when `min_steps` decided
    steps: int
    seconds: float
    history: list[EpochStats] = field(default_factory=list)
    resumed_epochs: int = 0
    device: str = "cpu"
    amp: str = "off"
    processes: int = 1

    @property
    def val_accuracy(self) -> float | None:
        return self.history[-1].val_accuracy if self.history else None


@dataclass(frozen=True)
class BatchPlan:
    """How a run cuts the training split: global batches, each shared by the processes."""

    batch_size: int  # global
    local_batch_size: int  # per process
    steps_per_epoch: int
    total_steps: int

    @property
    def num_epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)

    def steps_in(self, epoch: int) -> int:
        return min(self.steps_per_epoch, self.total_steps - epoch * self.steps_per_epoch)


def plan_batches(samples: int, config: TrainConfig, processes: int = 1) -> BatchPlan:
    """Batches of a run over ``samples`` training samples (the last partial batch is dropped)."""
    if samples == 0:
        raise NestError("cannot train on an empty training split")
    if config.batch_size % processes:
        raise NestError(
            f"the batch size {config.batch_size} must be a multiple of the number of"
            f" processes ({processes}): every process takes an equal share of each batch"
        )
    batch_size = min(config.batch_size, samples - samples % processes)
    if batch_size == 0:
        raise NestError(f"{samples} training samples cannot be shared by {processes} processes")
    steps_per_epoch = samples // batch_size
    total_steps = max(math.ceil(config.epochs * steps_per_epoch), config.min_steps)
    return BatchPlan(batch_size, batch_size // processes, steps_per_epoch, total_steps)


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None) -> int:
    """Set torch's intra-op thread count and return it (default: this process's share of the
    available cores, when torchrun started several processes on this machine)."""
    count = threads or max(1, available_cores() // distributed.local_world_size())
    torch.set_num_threads(count)
    return count


def train(
    model: nn.Module,
    splits: DatasetSplits,
    config: TrainConfig,
    *,
    before_step: StepHook | None = None,
    after_step: StepHook | None = None,
    loss_fn: LossFn | None = None,
) -> TrainResult:
    """Train `model` in place on `splits.train`, evaluating on `splits.val` after each epoch.

    The model is moved to the configured device and stays there. `before_step` runs between
    the backward pass (gradients all-reduced, under torchrun) and the optimizer step (e.g. to
    mask gradients), `after_step` after every optimizer step (e.g. to restore frozen
    weights); `loss_fn` replaces the default cross-entropy (with the configured label
    smoothing).
    """
    config.validate()
    rank = distributed.current()
    device = resolve_device(config.device)
    amp = resolve_amp(config.amp, device)
    threads = set_threads(config.threads)
    plan = plan_batches(len(splits.train), config, rank.world_size)
    model.to(device)
    loss_fn = loss_fn or _cross_entropy(config.label_smoothing)
    state_path = Path(config.checkpoint_path) if config.checkpoint_path else None
    result = TrainResult(
        epochs=plan.total_steps / plan.steps_per_epoch,
        steps=plan.total_steps,
        seconds=0.0,
        device=str(device),
        amp=amp,
        processes=rank.world_size,
    )
    identity = _identity(config, splits)
    with distributed.global_batchnorm(model) if rank.distributed else nullcontext():
        net = _parallel(model, device) if rank.distributed else model
        optimizer = torch.optim.SGD(
            model.parameters(),
            lr=config.lr,
            momentum=config.momentum,
            nesterov=config.nesterov and config.momentum > 0,
            weight_decay=config.weight_decay,
        )
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, _lr_factor(config.schedule, plan.total_steps)
        )
        scaler = grad_scaler(device, amp)
        step = _Step(optimizer, scheduler, scaler, before_step, after_step)
        if state_path is not None and state_path.exists():
            _resume(state_path, identity, model, step, result)
        log.info(
            "training %d steps (%.3g epochs of %d batches of %d) on %s%s, %s%s",
            plan.total_steps,
            result.epochs,
            plan.steps_per_epoch,
            plan.batch_size,
            device,
            "" if amp == "off" else f" ({amp} mixed precision)",
            f"{rank.world_size} processes x {threads} threads"
            if rank.distributed
            else f"{threads} threads",
            f", resuming after epoch {result.resumed_epochs}" if result.resumed_epochs else "",
        )
        show = _show_progress(config.progress) and rank.is_main
        augment = _augmenter(config, splits, rank) if config.augment else None
        run = _Run(net, model, splits, config, plan, device, amp, step, loss_fn, augment, show)
        with tqdm(
            total=plan.num_epochs,
            initial=result.resumed_epochs,
            desc="epochs",
            unit="epoch",
            disable=not show,
            leave=False,
        ) as epochs_bar:
            for epoch in range(result.resumed_epochs, plan.num_epochs):
                stats = run.epoch(epoch)
                result.history.append(stats)
                result.seconds += stats.seconds
                log.info(_epoch_line(stats, plan.num_epochs))
                if state_path is not None and rank.is_main:
                    _save_state(state_path, identity, model, step, result)
                epochs_bar.update()
                if stats.val_accuracy is not None:
                    epochs_bar.set_postfix(val=f"{stats.val_accuracy:.2%}")
    return result


@torch.inference_mode()
def evaluate(model: nn.Module, dataset: ImageData, batch_size: int = 512) -> float:
    """Top-1 accuracy of `model` on `dataset` (eval mode, on the model's device; the model's
    mode is restored). Under torchrun every rank scores a share and the counts are summed,
    so every rank must call it."""
    if len(dataset) == 0:
        raise NestError("cannot evaluate on an empty data set")
    device = model_device(model)
    indices = distributed.shard(len(dataset))
    was_training = model.training
    model.eval()
    counts = torch.zeros(2, dtype=torch.int64, device=device)
    try:
        for images, labels in batches_of(dataset, indices.split(batch_size)):
            predictions = model(images.to(device)).argmax(1)
            counts[0] += (predictions == labels.to(device)).sum()
            counts[1] += len(labels)
    finally:
        model.train(was_training)
    correct, total = distributed.all_reduce_sum(counts).tolist()
    return correct / total


def model_device(model: nn.Module) -> torch.device:
    """Where the model's weights are (the CPU for a model without any)."""
    tensor = next(model.parameters(), None)
    if tensor is None:
        tensor = next(model.buffers(), None)
    return torch.device("cpu") if tensor is None else tensor.device


# --- one epoch ---------------------------------------------------------------------------------


@dataclass
class _Step:
    """What one optimizer step does after the forward pass: the optimizer, its schedule, the
    fp16 loss scaler, and the caller's hooks around the update."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    before: StepHook | None
    after: StepHook | None

    def __call__(self, loss: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.before is not None:
            self.before()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.after is not None:
            self.after()

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]


def _parallel(model: nn.Module, device: torch.device) -> DistributedDataParallel:
    """The model under DDP; buffers are not broadcast: global batch norm keeps them equal."""
    device_ids = None if device.type == "cpu" else [device]
    return DistributedDataParallel(model, device_ids=device_ids, broadcast_buffers=False)


@dataclass
class _Run:
    """Everything an epoch needs: the model (and its DDP wrapper), data, plan and step."""

    net: nn.Module  # what the forward pass calls: the model, or DDP around it
    model: nn.Module
    splits: DatasetSplits
    config: TrainConfig
    plan: BatchPlan
    device: torch.device
    amp: Amp
    step: _Step
    loss_fn: LossFn
    augment: Augment | None
    show: bool

    def epoch(self, epoch: int) -> EpochStats:
        """One epoch (or the run's last partial one) and the validation accuracy after it."""
        started = time.perf_counter()
        rank = distributed.current()
        steps = self.plan.steps_in(epoch)
        # model-side randomness (dropout), distinct per process
        torch.manual_seed(_epoch_seed(self.config.seed, epoch) + 7919 * rank.rank)
        lr = self.step.lr
        batches = _epoch_batches(
            self.splits.train, self.config, self.plan, epoch, self.augment, self.device
        )
        self.net.train()
        totals = torch.zeros(3, dtype=torch.float64, device=self.device)  # loss, correct, seen
        desc = f"epoch {epoch + 1}/{self.plan.num_epochs}"
        with tqdm(total=steps, desc=desc, unit="batch", disable=not self.show, leave=False) as bar:
            for index, (images, labels) in enumerate(batches):
                totals += self._train_step(images, labels)
                bar.update()
                if self.show and index % 20 == 0:
                    loss, accuracy = (totals[:2] / totals[2]).tolist()
                    bar.set_postfix(loss=f"{loss:.4f}", acc=f"{accuracy:.2%}")
        loss_sum, correct, seen = distributed.all_reduce_sum(totals).tolist()
        val = self.splits.val
        val_accuracy = evaluate(self.model, val, self.config.eval_batch_size) if len(val) else None
        seconds = time.perf_counter() - started
        return EpochStats(epoch + 1, steps, loss_sum / seen, correct / seen, val_accuracy, lr,
                          seconds)  # fmt: skip

    def _train_step(self, images: Tensor, labels: Tensor) -> Tensor:
        """One optimizer step; returns (loss sum, correct, samples) of the batch."""
        x = images.to(self.device, non_blocking=True)
        y = labels.to(self.device, non_blocking=True)
        with autocast(self.device, self.amp):
            logits = self.net(x)
            loss = self.loss_fn(logits, y, x)
        self.step(loss)
        correct = (logits.detach().argmax(1) == y).sum()
        return torch.stack([loss.detach() * len(y), correct, y.new_tensor(len(y))]).double()


def _epoch_batches(
    data: ImageData,
    config: TrainConfig,
    plan: BatchPlan,
    epoch: int,
    augment: Augment | None,
    device: torch.device,
) -> Iterator[tuple[Tensor, Tensor]]:
    """This process's share of every batch of the epoch, augmented.

    DistributedSampler deals a seeded permutation out to the processes in turn, so batch k
    of every process together make up global batch k of one process (positions k*B..k*B+B-1
    of the same permutation), whatever the number of processes.
    """
    rank = distributed.current()
    seed = _epoch_seed(config.seed, epoch)
    sampler = DistributedSampler(
        range(len(data)),
        num_replicas=rank.world_size,
        rank=rank.rank,
        shuffle=True,
        seed=_epoch_seed(config.seed, 0),
        drop_last=True,
    )
    sampler.set_epoch(epoch)
    steps = plan.steps_in(epoch)
    order = torch.tensor(list(sampler))[: steps * plan.local_batch_size]
    rows = order.view(steps, plan.local_batch_size)
    gen = torch.Generator().manual_seed(seed)
    if isinstance(data, StreamingImages):
        if config.augment:
            data = data.with_augment(_streaming_augment(config, data.side))
        workers_gen = torch.Generator().manual_seed(seed + 7919 * rank.rank)
        yield from batches_of(
            data, list(rows), generator=workers_gen, pin_memory=device.type == "cuda"
        )
        return
    for images, labels in batches_of(data, list(rows)):
        yield (images if augment is None else augment(images, gen)), labels


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


def _crop_padding(config: TrainConfig, input_size: int) -> int:
    return config.crop_padding if config.crop_padding is not None else max(1, input_size // 8)


def _augmenter(config: TrainConfig, splits: DatasetSplits, rank: distributed.Rank) -> Augment:
    """Batched crop and flip of in-memory images; under torchrun each process draws the
    global batch's random numbers and keeps its own samples' (positions rank, rank + N, ...),
    so that the processes together augment exactly as one process would."""
    padding = _crop_padding(config, splits.input_size)
    # Pad with black: the normalised value of a zero pixel.
    fill = -torch.tensor(splits.mean) / torch.tensor(splits.std)
    shard = (rank.rank, rank.world_size)

    def augment(x: Tensor, gen: torch.Generator) -> Tensor:
        if padding:
            x = random_crop(x, padding, fill, gen, shard)
        if config.flip:
            x = random_flip(x, gen, shard)
        return x

    return augment


def _streaming_augment(config: TrainConfig, side: int) -> Callable[[Tensor], Tensor]:
    """The same crop and flip for streamed images: torchvision transforms of each uint8
    image (padded with black), run in the DataLoader workers."""
    from torchvision.transforms import v2

    padding = _crop_padding(config, side)
    steps: list[Callable[[Tensor], Tensor]] = []
    if padding:
        steps.append(v2.RandomCrop(side, padding=padding, fill=0))
    if config.flip:
        steps.append(v2.RandomHorizontalFlip())
    return v2.Compose(steps)


Shard = tuple[int, int]
"""(rank, world size): which samples of a global batch a process holds."""


def random_crop(
    x: Tensor, padding: int, fill: Tensor, gen: torch.Generator, shard: Shard = (0, 1)
) -> Tensor:
    """Pad a (N, C, H, W) batch by `padding` with per-channel `fill`, crop each sample back.

    `shard` (rank, world size): the batch is that process's share of a global batch of
    N x world size samples, whose offsets are drawn.
    """
    n, c, h, w = x.shape
    padded = fill.to(x.dtype).view(1, c, 1, 1).repeat(n, 1, h + 2 * padding, w + 2 * padding)
    padded[:, :, padding : padding + h, padding : padding + w] = x
    rank, world = shard
    top = torch.randint(0, 2 * padding + 1, (n * world, 1), generator=gen)[rank::world]
    left = torch.randint(0, 2 * padding + 1, (n * world, 1), generator=gen)[rank::world]
    rows = (top + torch.arange(h)).view(n, h, 1)
    cols = (left + torch.arange(w)).view(n, 1, w)
    cropped = padded.permute(0, 2, 3, 1)[torch.arange(n).view(n, 1, 1), rows, cols]
    return cropped.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, gen: torch.Generator, shard: Shard = (0, 1)) -> Tensor:
    """Flip each sample of a (N, C, H, W) batch horizontally with probability 1/2 (`shard`:
    as for `random_crop`)."""
    rank, world = shard
    flip = torch.rand(len(x) * world, generator=gen)[rank::world] < 0.5
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
    step: _Step,
    result: TrainResult,
) -> None:
    atomic_torch_save(
        {
            "kind": STATE_KIND,
            "identity": identity,
            "epochs_done": result.history[-1].epoch,
            "model": model.state_dict(),
            "optimizer": step.optimizer.state_dict(),
            "scheduler": step.scheduler.state_dict(),
            "scaler": step.scaler.state_dict(),  # empty unless fp16
            "history": [asdict(s) for s in result.history],
            "seconds": result.seconds,
        },
        path,
    )


def _resume(
    path: Path,
    identity: dict[str, Any],
    model: nn.Module,
    step: _Step,
    result: TrainResult,
) -> None:
    """Restore model, optimizer, schedule, loss scale and history from a state file written
    by `train` (on any device: tensors are read onto the CPU, then copied where they go)."""
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
    step.optimizer.load_state_dict(state["optimizer"])
    step.scheduler.load_state_dict(state["scheduler"])
    if step.scaler.is_enabled() and state.get("scaler"):
        step.scaler.load_state_dict(state["scaler"])
    result.history = [EpochStats(**s) for s in state["history"]]
    result.resumed_epochs = state["epochs_done"]
    result.seconds = state["seconds"]
