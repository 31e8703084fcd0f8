"""``nestdnn profile``: measure a ``.nest`` file's descendants, or check a profile file."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from nestdnn.errors import NestError
from profiles.latency import LatencySettings
from profiles.schema import BACKENDS, Backend, load_profile, save_profile
from profiles.table import format_table

log = logging.getLogger(__name__)


def configure_profile(parser: argparse.ArgumentParser) -> None:
    parser.description = (
        "Profile every descendant of a .nest file: widths, params, weight bytes, MACs, test"
        " accuracy, and per backend the batch-1 latency (median and p90) and the peak RSS of"
        " loading and running it. Writes a JSON profile (the scheduler's only input). With"
        " --check, validate an existing profile and print its table instead."
    )
    parser.add_argument("model", nargs="?", type=Path, help="the .nest file to profile")
    parser.add_argument(
        "--check", type=Path, metavar="PROFILE", help="validate a profile file and print its table"
    )
    parser.add_argument("--dataset", help="data set of the test split (default: the manifest's)")
    parser.add_argument("--data-dir", help="where the data set lives (see 'nestdnn train')")
    parser.add_argument(
        "--backends",
        type=parse_backends,
        default=",".join(BACKENDS),
        help=f"comma-separated, from: {', '.join(BACKENDS)}",
    )
    parser.add_argument("--threads", type=int, default=1, help="inference threads, every backend")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 runs per descendant")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds the runs form")
    parser.add_argument("--warmup", type=int, default=10, help="untimed runs per descendant first")
    parser.add_argument(
        "--memory-runs", type=int, default=5, help="inferences before reading the peak RSS"
    )
    parser.add_argument("--batch-size", type=int, default=256, help="batch size for accuracy")
    parser.add_argument(
        "--device",
        default="auto",
        help="where the accuracy pass runs: auto|cpu|cuda|cuda:N|mps (auto: CUDA, then MPS,"
        " then the CPU); latency and memory are always measured on the CPU",
    )
    parser.add_argument("--out", type=Path, help="profile to write (default: MODEL.profile.json)")
    parser.add_argument("--plot", type=Path, help="also draw accuracy vs latency/memory (PNG)")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar (default: when stderr is a terminal)",
    )


def run_profile(args: argparse.Namespace) -> int:
    if args.check is not None:
        if args.model is not None:
            raise NestError("give either a .nest file to profile or --check PROFILE, not both")
        return check_profile(args.check)
    if args.model is None:
        raise NestError("give a .nest file to profile (or --check PROFILE)")
    from nestdnn.device import describe_choice, resolve_device
    from profiles.plot import plot_profile
    from profiles.profiler import ProfileSettings, profile_nest

    device = resolve_device(args.device)
    log.info(describe_choice(device, args.device))
    settings = ProfileSettings(
        backends=args.backends,
        latency=LatencySettings(
            runs=args.runs, rounds=args.rounds, warmup=args.warmup, threads=args.threads
        ),
        memory_runs=args.memory_runs,
        batch_size=args.batch_size,
        progress=sys.stderr.isatty() if args.progress is None else args.progress,
        device=str(device),
    )
    profile = profile_nest(args.model, args.dataset, args.data_dir, settings)
    out = args.out or default_profile_path(args.model)
    save_profile(profile, out)
    print(format_table(profile))
    print(f"profile -> {out}")
    if args.plot is not None:
        print(f"plot -> {plot_profile(profile, args.plot)}")
    return 0


def check_profile(path: Path) -> int:
    """Validate ``path`` (schema, indices, strictly increasing params/bytes/MACs); print it."""
    profile = load_profile(path)
    print(format_table(profile))
    print(f"{path}: valid profile (schema version {profile.schema_version})")
    return 0


def default_profile_path(nest_path: Path) -> Path:
    """``dir/NAME.nest`` -> ``dir/NAME.profile.json``."""
    return nest_path.with_name(f"{nest_path.stem}.profile.json")


def parse_backends(text: str) -> tuple[Backend, ...]:
    """'torch,tflite' -> ('torch', 'tflite'), rejecting unknown or repeated names."""
    names = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [n for n in names if n not in BACKENDS]
    if unknown or not names or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"backends must be distinct names from {', '.join(BACKENDS)}, got {text!r}"
        )
    return tuple(names)  # type: ignore[return-value]
