"""`nestdnn recover`: build the multi-capacity `.nest` model from a pruning run."""

from __future__ import annotations

import argparse
import logging
import shutil
from pathlib import Path

import torch

from nestdnn import distributed
from nestdnn.distributed import Rank, add_compute_options, run_stage
from nestdnn.errors import NestError
from nestdnn.training import set_threads
from recovery.grow import RecoveryConfig, RecoveryResult, recover, work_dir_for
from recovery.levels import choose_steps, plan_levels, validate_steps
from recovery.prune_run import load_run_splits, open_prune_run

log = logging.getLogger(__name__)


def configure_recover(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Freeze-&-grow: nest K descendants of a pruning run (seed ... vanilla) into one .nest"
        " file. Level 0 is the roadmap's model as pruned; every larger level starts from its"
        " roadmap model, keeps the smaller descendant's weights frozen and trains the rest."
        " Finished levels are kept in OUT.work/ so that rerunning an interrupted command"
        " continues where it stopped (removed once OUT is written, unless --keep-work)."
    )
    parser.add_argument("--prune-dir", required=True, type=Path,
                        help="output directory of `nestdnn prune` (holds roadmap.json)")
    parser.add_argument("--out", required=True, type=Path, help="the .nest file to write")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--descendants", type=int, default=5,
                       help="K roadmap steps from seed to vanilla, evenly spread in params")
    which.add_argument("--steps", type=_parse_steps,
                       help="explicit roadmap steps instead, e.g. '0,3,6'")
    train = parser.add_argument_group("training of each grown level")
    train.add_argument("--epochs-per-level", type=float, default=1.0,
                       help="fractions allowed; level 0 (the pruned seed) is not retrained")
    train.add_argument("--batch-size", type=int, default=128)
    train.add_argument("--lr", type=float, default=0.01, help="initial SGD learning rate")
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--seed", type=int, default=0, help="data order of every level")
    train.add_argument("--distill", action="store_true",
                       help="knowledge distillation from the vanilla model")
    train.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    train.add_argument("--distill-weight", type=float, default=0.7,
                       help="share of the distillation term in the loss")
    train.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    train.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                       help="progress bars for levels, epochs and steps (default: when stderr"
                       " is a terminal)")
    add_compute_options(parser)
    data = parser.add_argument_group("data (default: as recorded in the roadmap)")
    data.add_argument("--dataset", help="override the roadmap's data set name")
    data.add_argument("--data-dir", help="override the roadmap's data directory")
    parser.add_argument("--keep-work", action="store_true",
                        help="keep OUT.work/ (the finished levels) after writing OUT")


def run_recover(args: argparse.Namespace) -> int:
    return run_stage(args, lambda device, rank: _recover(args, device, rank))


def _recover(args: argparse.Namespace, device: torch.device, rank: Rank) -> int:
    out: Path = args.out
    if out.is_dir():
        raise NestError(f"--out must be a file path, {out} is a directory")
    config = RecoveryConfig(
        epochs_per_level=args.epochs_per_level,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        distill=args.distill,
        temperature=args.temperature,
        distill_weight=args.distill_weight,
        threads=args.threads,
        progress=args.progress,
        device=str(device),
        amp=args.amp,
    )
    config.validate()
    if args.threads is not None and args.threads < 1:
        raise NestError(f"--threads must be at least 1, got {args.threads}")
    run = open_prune_run(args.prune_dir)
    steps = (
        validate_steps(run, args.steps) if args.steps is not None
        else choose_steps(run, args.descendants)
    )
    plan = plan_levels(run, steps)
    set_threads(args.threads)
    splits = load_run_splits(run, args.dataset, args.data_dir, workers=args.workers)
    log.info("recovering roadmap steps %s (smallest first) from %s", steps, run.directory)
    result = recover(run, plan, splits, out, config)
    distributed.barrier()  # every rank is done with the work dir
    if not rank.is_main:
        return 0
    if not args.keep_work:
        shutil.rmtree(work_dir_for(out))
    print(_summary_table(result))
    return 0


def _parse_steps(text: str) -> list[int]:
    try:
        return [int(item) for item in text.split(",") if item.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(
            f"steps must be comma-separated integers, got {text!r}"
        ) from e


def _summary_table(result: RecoveryResult) -> str:
    lines = [f"{'level':>5} {'step':>4} {'channels':>8} {'params':>10} {'val acc':>8}"
             f" {'from file':>9}"]
    for level, from_file in zip(result.levels, result.file_accuracies, strict=True):
        lines.append(
            f"{level.level:>5} {level.step:>4} {level.channels:>8} {level.params:>10,}"
            f" {level.val_accuracy:>8.2%} {from_file:>9.2%}"
        )
    size = result.path.stat().st_size
    lines.append(f"wrote {result.path} ({size:,} bytes)")
    return "\n".join(lines)
