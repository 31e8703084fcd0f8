"""Multi-process training under torchrun: the process group, sharding, collectives, launching.

``torchrun --nproc-per-node N -m nestdnn train|prune|recover ...`` (or the stages' ``--nproc
N``, which runs exactly that) starts N copies of the stage. Each joins the process group
(``process_group``: NCCL on CUDA, Gloo on the CPU), trains its share of every global batch
under DistributedDataParallel, and takes part in every evaluation and TRR pass, whose counts
and sums are all-reduced, so that every rank takes the same decisions. Only rank 0 writes
files, logs progress and prints.

Batch norms see the whole global batch (``global_batchnorm``), so N processes of batch B/N
compute what one process of batch B computes, up to floating-point noise.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

from nestdnn.device import AMP_MODES, DEVICE_CHOICES, describe_choice, resolve_device
from nestdnn.errors import NestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Rank:
    """This process's place among the processes of one run (a single process: 0 of 1)."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        """The process that writes files, logs progress and prints."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def current() -> Rank:
    """This process's rank, from the process group if one is joined."""
    if dist.is_available() and dist.is_initialized():
        return Rank(dist.get_rank(), dist.get_world_size())
    return Rank()


def launched_world_size() -> int:
    """How many processes torchrun started for this run (1 when not started by torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_world_size() -> int:
    """How many processes of this run share this machine (torchrun's LOCAL_WORLD_SIZE)."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", "1"))


@contextmanager
def process_group(device: torch.device) -> Iterator[Rank]:
    """Join torchrun's process group for the duration of a stage (no-op in a single process).

    Ranks other than 0 log errors only, so that a run's log reads like one process's. A
    collective failing because another process died becomes a one-line NestError (torchrun
    then stops every process; rerunning the command resumes from the last checkpoint).
    """
    if launched_world_size() <= 1 or dist.is_initialized():
        yield current()
        return
    if device.type not in ("cpu", "cuda"):
        raise NestError(
            f"multi-process training runs on CUDA (NCCL) or the CPU (Gloo), not on {device.type}"
        )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    rank = current()
    if not rank.is_main:
        logging.getLogger().setLevel(logging.ERROR)
    log.info("process group: %d processes (%s)", rank.world_size, dist.get_backend())
    try:
        yield rank
    except RuntimeError as e:
        if not _lost_contact(e):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        reason = re.sub(r"^\[[^\]]*\]\s*", "", first).split(". ")[0]  # no source path
        raise NestError(
            f"process {rank.rank} of {rank.world_size} lost contact with the others ({reason});"
            " rerun the same command to resume from the last checkpoint"
        ) from e
    finally:
        dist.destroy_process_group()


def _lost_contact(error: RuntimeError) -> bool:
    """True for a collective that failed because another process is gone."""
    text = str(error)
    markers = ("gloo", "NCCL", "Connection reset", "Connection closed", "Broken pipe")
    return isinstance(error, dist.DistError) or any(marker in text for marker in markers)


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if current().distributed:
        dist.barrier()


def all_reduce_sum(tensor: Tensor) -> Tensor:
    """The element-wise sum of ``tensor`` over every rank (``tensor`` itself in one process).

    The collective runs where the backend wants its tensors (the GPU for NCCL, the CPU for
    Gloo); the result comes back on ``tensor``'s device.
    """
    if not current().distributed:
        return tensor
    reduced = tensor.to(_collective_device(tensor), copy=True)
    dist.all_reduce(reduced)
    return reduced.to(tensor.device)


def _collective_device(tensor: Tensor) -> torch.device:
    if dist.get_backend() == "nccl":
        return tensor.device if tensor.device.type == "cuda" else torch.device("cuda")
    return torch.device("cpu")


def shard(count: int) -> Tensor:
    """This rank's share of ``count`` items: ``rank, rank + N, ...`` (all of them, alone)."""
    rank = current()
    return torch.arange(rank.rank, count, rank.world_size)


# --- batch norm over the global batch ------------------------------------------------------


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """A BatchNorm2d whose training-mode statistics span the batches of every rank.

    The per-channel sums are all-reduced with a differentiable collective, so gradients flow
    through the global mean and variance exactly as in one process holding the whole batch.
    Running statistics are updated from the global ones and so stay equal on every rank.
    Eval mode is plain BatchNorm2d. It works with any backend (Gloo on the CPU included).
    """

    def forward(self, input: Tensor) -> Tensor:
        if not (self.training and current().distributed):
            return super().forward(input)
        from torch.distributed.nn.functional import all_reduce

        channels = input.shape[1]
        x = input.float()
        count = x.new_tensor([input.numel() / channels])
        # Two passes (the sum, then the squared deviations from the global mean), as stable
        # as one process's batch norm even for a channel whose mean dwarfs its spread.
        sums = all_reduce(torch.cat([x.sum((0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total
        centred = x - mean.view(1, channels, 1, 1)
        var = all_reduce(centred.square().sum((0, 2, 3))) / total
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), var.detach() * total / (total - 1))
        shape = (1, channels, 1, 1)
        y = centred * torch.rsqrt(var + self.eps).view(shape)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y.to(input.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, unbiased_var: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        factor = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
        self.running_var.lerp_(unbiased_var.to(self.running_var.dtype), factor)


@contextmanager
def global_batchnorm(model: nn.Module) -> Iterator[nn.Module]:
    """Make ``model``'s BatchNorm2d layers GlobalBatchNorm2d for the duration (in place).

    Only the class changes: parameters, buffers and state_dict keys are the layers' own, so
    what is trained stays in the model.
    """
    swapped = [m for m in model.modules() if type(m) is nn.BatchNorm2d]
    for module in swapped:
        module.__class__ = GlobalBatchNorm2d
    try:
        yield model
    finally:
        for module in swapped:
            module.__class__ = nn.BatchNorm2d


# --- the stages' command line ----------------------------------------------------------------

StageBody = Callable[[torch.device, Rank], int]


def add_compute_options(parser: argparse.ArgumentParser) -> None:
    """``--device``, ``--amp``, ``--nproc`` and ``--workers`` for a stage that trains."""
    from nestdnn.data import DEFAULT_WORKERS

    group = parser.add_argument_group("compute")
    group.add_argument(
        "--device",
        default="auto",
        help=f"{DEVICE_CHOICES}: auto picks CUDA, then MPS, then the CPU",
    )
    group.add_argument(
        "--amp",
        choices=AMP_MODES,
        help="mixed precision (default: bf16 on CUDA, fp16 on GPUs without bf16, off on the"
        " CPU and MPS)",
    )
    group.add_argument(
        "--nproc",
        type=int,
        help="train with N processes on this machine under DistributedDataParallel (the same"
        " as 'torchrun --nproc-per-node N -m nestdnn ...')",
    )
    group.add_argument(
        "--workers",
        type=int,
        default=DEFAULT_WORKERS,
        help="processes decoding a streamed image folder, per training process",
    )


def run_stage(args: argparse.Namespace, body: StageBody) -> int:
    """Run a stage's ``body`` on its device: launch it under torchrun for ``--nproc N``, else
    say which device it uses (the first log line) and join torchrun's process group, if any.

    A device this machine lacks is a NestError before anything runs.
    """
    device = resolve_device(args.device)
    if args.nproc is not None and args.nproc < 1:
        raise NestError(f"--nproc must be at least 1, got {args.nproc}")
    if args.nproc is not None and args.nproc > 1 and launched_world_size() == 1:
        return launch(without_nproc(args.argv), args.nproc)
    log.info(describe_choice(device, args.device))
    with process_group(device) as rank:
        return body(device, rank)


# --- launching ---------------------------------------------------------------------------------


def launch(argv: Sequence[str], nproc: int) -> int:
    """Run ``nestdnn ARGV`` as ``nproc`` processes under torchrun on this machine; its exit code.

    ``argv`` must not ask for ``--nproc`` again (see ``without_nproc``). torchrun ends every
    process when one fails; each stage then resumes from its last checkpoint when rerun.
    """
    if nproc < 1:
        raise NestError(f"--nproc must be at least 1, got {nproc}")
    env = dict(os.environ)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    env.setdefault("OMP_NUM_THREADS", str(max(1, (cores or 1) // nproc)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc-per-node={nproc}", "-m", "nestdnn", *argv,
    ]  # fmt: skip
    log.info("launching %d processes: torchrun ... -m nestdnn %s", nproc, " ".join(argv))
    code = subprocess.run(command, env=env, check=False).returncode
    if code != 0:
        log.error(
            "a process of the %d failed (torchrun exit code %d) and torchrun stopped the"
            " others; rerun the same command to resume from the last checkpoint",
            nproc,
            code,
        )
    return code


def without_nproc(argv: Sequence[str]) -> list[str]:
    """``argv`` without its ``--nproc N`` / ``--nproc=N`` option."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            out.append(arg)
    return out
