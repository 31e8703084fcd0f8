"""`nestdnn prune`: iterative filter pruning of a vanilla model into a seed model and a roadmap."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nestdnn.checkpoint import load_checkpoint
from nestdnn.data import DATA_META_KEYS, DEFAULT_VAL_FRACTION, DataSpec, recorded_data_spec
from nestdnn.distributed import Rank, add_compute_options, run_stage
from nestdnn.errors import NestError
from nestdnn.models import ModelConfig
from pruning.importance import CRITERIA
from pruning.prune import PruneJob, prune
from pruning.roadmap import (
    DEFAULT_MIN_RETRAIN_STEPS,
    ROADMAP_FILE,
    PruneSettings,
    Roadmap,
    RoadmapStep,
)


def configure_prune(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Prune a vanilla model step by step: each step removes RATIO x the original width of"
        " every channel group (lowest importance first), fine-tunes, and evaluates on the"
        " validation split. A step below --min-accuracy is retried with half the ratio, down"
        " to --min-ratio; the last step that meets --min-accuracy is the seed. Writes"
        " OUT/roadmap.json (with every try), OUT/step_XX.pt and OUT/seed.pt after every step:"
        " rerunning the same command after an interruption continues where it stopped."
    )
    parser.add_argument("--model", required=True, type=Path, help="the vanilla checkpoint")
    data = parser.add_argument_group("data")
    data.add_argument("--dataset", required=True, help="the data set the model was trained on")
    data.add_argument(
        "--data-dir", help="where the data set lives (default: as recorded in the model)"
    )
    data.add_argument(
        "--val-fraction",
        type=float,
        help="validation split held out from train; must be the one used for training"
        f" (default: recorded in the model, else {DEFAULT_VAL_FRACTION})",
    )
    data.add_argument(
        "--split-seed",
        type=int,
        help="seed of the train/val split (default: recorded in the model, else 0)",
    )
    prune = parser.add_argument_group("pruning")
    prune.add_argument(
        "--criterion",
        choices=list(CRITERIA),
        default="trr",
        help="channel importance: trr (Triplet Response Residual) or l1 (filter L1 norm)",
    )
    prune.add_argument(
        "--min-accuracy",
        type=float,
        required=True,
        help="the seed's minimum validation accuracy (a fraction): a step below it is retried"
        " at a smaller ratio, then pruning stops",
    )
    prune.add_argument(
        "--ratio", type=float, default=0.1, help="fraction of each group's original width per step"
    )
    prune.add_argument(
        "--min-ratio",
        type=float,
        help="retries halve the ratio down to this (default: a quarter of --ratio); equal to"
        " --ratio: no retry",
    )
    prune.add_argument(
        "--retrain-epochs",
        type=float,
        default=1.0,
        help="fine-tuning after each step, fractions allowed (e.g. 0.5)",
    )
    prune.add_argument(
        "--min-retrain-steps",
        type=int,
        default=DEFAULT_MIN_RETRAIN_STEPS,
        help="fine-tuning after each step lasts at least this many optimizer steps",
    )
    prune.add_argument(
        "--round-to", type=int, default=1, help="keep widths a multiple of this (at least 1)"
    )
    prune.add_argument("--max-steps", type=int, help="stop after this many pruning steps")
    prune.add_argument("--triplets", type=int, default=256, help="TRR: triplets sampled")
    prune.add_argument("--seed", type=int, default=0, help="triplet sampling and fine-tuning")
    prune.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size")
    prune.add_argument("--lr", type=float, default=0.01, help="fine-tuning initial learning rate")
    add_compute_options(parser)
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bars for tries, epochs and steps (default: when stderr is a terminal)",
    )
    parser.add_argument("--out", required=True, type=Path, help="output directory")


def run_prune(args: argparse.Namespace) -> int:
    return run_stage(args, lambda device, rank: _prune(args, device, rank))


def _prune(args: argparse.Namespace, device: torch.device, rank: Rank) -> int:
    settings = PruneSettings(
        criterion=args.criterion,
        ratio=args.ratio,
        min_accuracy=args.min_accuracy,
        retrain_epochs=args.retrain_epochs,
        round_to=args.round_to,
        seed=args.seed,
        triplets=args.triplets,
        batch_size=args.batch_size,
        lr=args.lr,
        min_retrain_steps=args.min_retrain_steps,
        min_ratio=args.min_ratio,
    )
    settings.validate()
    vanilla, meta = load_checkpoint(args.model)
    dataset = data_spec(args, vanilla.config, meta)
    splits = dataset.load(workers=args.workers)
    job = PruneJob(
        vanilla_path=args.model,
        out=args.out,
        dataset=dataset,
        settings=settings,
        meta={key: meta[key] for key in DATA_META_KEYS if key in meta},
        threads=args.threads,
        device=str(device),
        amp=args.amp,
    )
    progress = sys.stderr.isatty() if args.progress is None else args.progress
    on_step = print_step if rank.is_main else None
    with logging_redirect_tqdm():
        roadmap = prune(
            vanilla, splits, job, max_steps=args.max_steps, progress=progress, on_step=on_step
        )
    if not rank.is_main:
        return 0
    seed = roadmap.steps[roadmap.seed_step]
    discarded = sum(not a.accepted for a in roadmap.attempts)
    print(
        f"seed: step {seed.step}, {seed.params:,} params"
        f" ({seed.params / roadmap.steps[0].params:.1%} of vanilla), val {seed.val_accuracy:.2%};"
        f" {len(roadmap.attempts)} tries, {discarded} discarded;"
        f" stopped: {roadmap.stopped or 'not yet'} -> {args.out / ROADMAP_FILE}"
    )
    return 0


def print_step(step: RoadmapStep, roadmap: Roadmap) -> None:
    """One summary line per finished step (written through tqdm so bars stay intact)."""
    vanilla = roadmap.steps[0]
    width_share = step.total_width / vanilla.total_width
    tries = [a for a in roadmap.attempts if a.step == step.step]
    ratio = f", ratio {tries[-1].ratio:g}" if tries else ""
    retried = f" (try {len(tries)})" if len(tries) > 1 else ""
    tqdm.write(
        f"step {step.step:2d}: width {step.total_width} ({width_share:.0%}),"
        f" params {step.params:,} ({step.params / vanilla.params:.1%}),"
        f" MACs {step.macs:,}, val acc {step.val_accuracy:.2%}{ratio}{retried}"
    )


def data_spec(
    args: argparse.Namespace, model_config: ModelConfig, meta: Mapping[str, Any]
) -> DataSpec:
    """The vanilla model's data and split, recorded in the roadmap.

    The split must be the one the vanilla model was trained with, so the validation split
    stays unseen; settings the checkpoint records are used unless given on the command line.
    """
    trained_on = meta.get("dataset")
    if isinstance(trained_on, str) and trained_on != args.dataset:
        raise NestError(
            f"{args.model} was trained on {trained_on}, not {args.dataset}; prune it on its own"
            " data set"
        )
    return recorded_data_spec(
        args.dataset,
        meta,
        in_channels=model_config.in_channels,
        num_classes=model_config.num_classes,
        input_size=model_config.input_size,
        data_dir=args.data_dir,
        val_fraction=args.val_fraction,
        seed=args.split_seed,
    )
