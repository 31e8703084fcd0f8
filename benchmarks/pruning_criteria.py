"""TRR vs L1 filter importance on the same pruning schedule (the paper's claim that TRR keeps
the important filters).

Both criteria prune the same vanilla model with the same schedule: every step removes RATIO x
the original width of every channel group, fine-tunes RETRAIN epochs, and evaluates on the
validation split held out from training; no accuracy stop, so both run STEPS steps and every
step has the same widths (and params) under both criteria. The table gives validation
accuracy per step for each; JSON and a PNG plot (accuracy vs params) go to runs/benchmarks/.

    .venv/bin/python benchmarks/pruning_criteria.py --model runs/fmnist-vgg16/vanilla.pt
    .venv/bin/python benchmarks/pruning_criteria.py --quick   # tiny synthetic check, labelled

Each criterion runs as `nestdnn prune` into its own directory under runs/benchmarks/, so
rerunning after an interruption resumes where it stopped. The default vanilla model is VGG-16
x0.25 on Fashion-MNIST from `nestdnn train --arch vgg16 --width-mult 0.25 --dataset
fashion-mnist --epochs 10 --out runs/fmnist-vgg16`.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nestdnn.checkpoint import load_checkpoint  # noqa: E402
from nestdnn.cli import main as nestdnn  # noqa: E402
from nestdnn.files import atomic_write  # noqa: E402
from pruning.roadmap import Roadmap, load_roadmap  # noqa: E402

log = logging.getLogger("pruning_criteria")

CRITERIA = ("trr", "l1")
RESULTS = ROOT / "runs" / "benchmarks"
QUICK_TRAIN = [
    "--arch", "vgg11", "--width-mult", "0.0625", "--dataset", "synthetic", "--input-size", "16",
    "--synthetic-classes", "4", "--synthetic-channels", "1", "--synthetic-samples", "600",
    "--epochs", "8", "--batch-size", "64", "--no-augment",
]  # fmt: skip


@dataclass(frozen=True)
class Schedule:
    """The pruning schedule shared by both criteria."""

    ratio: float
    retrain_epochs: float
    steps: int
    triplets: int
    seed: int
    lr: float
    batch_size: int


@dataclass(frozen=True)
class Row:
    """One step: the shared widths/size and each criterion's validation accuracy."""

    step: int
    total_width: int
    params: int
    macs: int
    params_fraction: float
    val_accuracy: dict[str, float]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--model", type=Path, default=ROOT / "runs" / "fmnist-vgg16" / "vanilla.pt",
        help="the vanilla checkpoint to prune",
    )  # fmt: skip
    parser.add_argument("--dataset", help="default: the data set recorded in the model")
    parser.add_argument("--data-dir", help="default: as recorded in the model")
    parser.add_argument("--ratio", type=float, default=0.1, help="width removed per step")
    parser.add_argument("--retrain-epochs", type=float, default=0.5, help="per step")
    parser.add_argument("--steps", type=int, default=8, help="pruning steps for each criterion")
    parser.add_argument("--triplets", type=int, default=256, help="TRR triplets")
    parser.add_argument("--seed", type=int, default=0, help="triplets and fine-tuning order")
    parser.add_argument("--lr", type=float, default=0.01, help="fine-tuning learning rate")
    parser.add_argument("--batch-size", type=int, default=128, help="fine-tuning batch size")
    parser.add_argument("--threads", type=int, help="torch threads (default: all cores)")
    parser.add_argument("--name", default="pruning_criteria", help="result files' base name")
    parser.add_argument(
        "--quick", action="store_true",
        help="end-to-end check on a tiny synthetic model trained here (results labelled quick)",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.quick:
        args.name = f"{args.name}_quick"
        args.steps = min(args.steps, 3)
        args.ratio = 0.2
        args.triplets = 64
        args.batch_size = 64
        args.lr = 0.05
    return args


def quick_vanilla(work: Path, threads: int | None) -> Path:
    """Train (once) the tiny synthetic vanilla model of --quick with `nestdnn train`."""
    path = work / "vanilla" / "vanilla.pt"
    if not path.exists():
        thread_flags = ["--threads", str(threads)] if threads else []
        code = nestdnn(["-q", "train", *QUICK_TRAIN, *thread_flags, "--out", str(path.parent)])
        if code != 0:
            raise SystemExit(f"training the quick vanilla model failed (exit {code})")
    return path


def prune_with(
    criterion: str, args: argparse.Namespace, schedule: Schedule, dataset: str, out: Path
) -> float:
    """Run (or resume) `nestdnn prune` with one criterion; returns the accumulated wall time."""
    timing = out / "benchmark_seconds.json"
    before = json.loads(timing.read_text())["seconds"] if timing.exists() else 0.0
    command = [
        "prune", "--model", str(args.model), "--dataset", dataset,
        "--criterion", criterion, "--min-accuracy", "0", "--ratio", str(schedule.ratio),
        "--retrain-epochs", str(schedule.retrain_epochs), "--max-steps", str(schedule.steps),
        "--triplets", str(schedule.triplets), "--seed", str(schedule.seed),
        "--lr", str(schedule.lr), "--batch-size", str(schedule.batch_size), "--out", str(out),
    ]  # fmt: skip
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    if args.threads:
        command += ["--threads", str(args.threads)]
    started = time.perf_counter()
    code = nestdnn(command)
    if code != 0:
        raise SystemExit(f"nestdnn prune --criterion {criterion} failed (exit {code})")
    seconds = before + time.perf_counter() - started
    atomic_write(timing, json.dumps({"seconds": seconds}))
    return seconds


def build_rows(roadmaps: dict[str, Roadmap]) -> list[Row]:
    """Pair the criteria's steps; the shared schedule must have given them identical widths."""
    lengths = {name: len(r.steps) for name, r in roadmaps.items()}
    if len(set(lengths.values())) != 1:
        raise SystemExit(f"the criteria ran different numbers of steps: {lengths}")
    first = next(iter(roadmaps.values()))
    rows = []
    for index, step in enumerate(first.steps):
        if any(r.steps[index].widths != step.widths for r in roadmaps.values()):
            raise SystemExit(f"step {index} has different widths under the two criteria")
        rows.append(
            Row(
                step=index,
                total_width=step.total_width,
                params=step.params,
                macs=step.macs,
                params_fraction=step.params / first.steps[0].params,
                val_accuracy={name: r.steps[index].val_accuracy for name, r in roadmaps.items()},
            )
        )
    return rows


def format_table(rows: list[Row]) -> str:
    header = (
        f"{'step':>4} {'width':>6} {'params':>10} {'% vanilla':>9} {'MACs':>12}"
        f" {'TRR val':>8} {'L1 val':>8} {'TRR-L1 pp':>9}"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        trr, l1 = row.val_accuracy["trr"], row.val_accuracy["l1"]
        lines.append(
            f"{row.step:>4} {row.total_width:>6} {row.params:>10,} {row.params_fraction:>9.1%}"
            f" {row.macs:>12,} {trr:>8.2%} {l1:>8.2%} {100 * (trr - l1):>+9.2f}"
        )
    return "\n".join(lines)


def summarise(rows: list[Row], val_size: int) -> dict[str, Any]:
    """Wins per criterion over the pruned steps, mean gap, and the noise level of one accuracy."""
    pruned = rows[1:]
    gaps = [r.val_accuracy["trr"] - r.val_accuracy["l1"] for r in pruned]
    accuracy = rows[0].val_accuracy["trr"]
    return {
        "pruned_steps": len(pruned),
        "trr_better_steps": sum(g > 0 for g in gaps),
        "l1_better_steps": sum(g < 0 for g in gaps),
        "mean_gap_pp": 100 * sum(gaps) / len(gaps) if gaps else None,
        "final_gap_pp": 100 * gaps[-1] if gaps else None,
        # binomial standard error of one validation accuracy near the vanilla's
        "one_accuracy_std_error_pp": 100 * (accuracy * (1 - accuracy) / val_size) ** 0.5,
    }


def plot(rows: list[Row], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    params = [r.params / 1e3 for r in rows]
    for name, label in (("trr", "TRR"), ("l1", "L1 norm")):
        ax.plot(params, [100 * r.val_accuracy[name] for r in rows], marker="o", label=label)
    ax.set_xlabel("parameters (thousands)")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_title(title)
    ax.invert_xaxis()
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    work = RESULTS / args.name
    if args.quick:
        args.model = quick_vanilla(work, args.threads)
    if not args.model.exists():
        raise SystemExit(
            f"vanilla model not found: {args.model}; train it first (see this script's help)"
        )
    _, meta = load_checkpoint(args.model)
    dataset = args.dataset or meta.get("dataset")
    if not dataset:
        raise SystemExit(f"{args.model} does not record its data set; pass --dataset")
    schedule = Schedule(
        args.ratio, args.retrain_epochs, args.steps, args.triplets, args.seed, args.lr,
        args.batch_size,
    )  # fmt: skip
    seconds = {c: prune_with(c, args, schedule, dataset, work / f"prune-{c}") for c in CRITERIA}
    roadmaps = {c: load_roadmap(work / f"prune-{c}") for c in CRITERIA}
    rows = build_rows(roadmaps)
    first = roadmaps["trr"]
    val_size = _val_size(first)
    summary = summarise(rows, val_size)
    table = format_table(rows)
    title = f"{first.model_config['arch']} on {dataset}: TRR vs L1" + (
        " (quick)" if args.quick else ""
    )
    print(f"\n{title}; ratio {schedule.ratio}, {schedule.retrain_epochs} epoch(s) per step\n")
    print(table)
    print(
        f"\nTRR better at {summary['trr_better_steps']}, L1 better at"
        f" {summary['l1_better_steps']} of {summary['pruned_steps']} pruned steps; mean gap"
        f" {_pp(summary['mean_gap_pp'])}, one accuracy's std error"
        f" ~{summary['one_accuracy_std_error_pp']:.2f}pp ({val_size} val images)"
    )
    result = {
        "benchmark": "pruning_criteria",
        "quick": args.quick,
        "title": title,
        "vanilla": str(args.model),
        "model_config": first.model_config,
        "dataset": first.dataset,
        "schedule": asdict(schedule),
        "val_size": val_size,
        "rows": [asdict(r) for r in rows],
        "summary": summary,
        "seconds": seconds,
        "roadmaps": {c: str(work / f"prune-{c}" / "roadmap.json") for c in CRITERIA},
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    json_path, png_path = RESULTS / f"{args.name}.json", RESULTS / f"{args.name}.png"
    atomic_write(json_path, json.dumps(result, indent=2) + "\n")
    plot(rows, png_path, title)
    print(f"wrote {json_path} and {png_path}")
    return 0


def _val_size(roadmap: Roadmap) -> int:
    return len(roadmap.dataset.load().val)


def _pp(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}pp"


if __name__ == "__main__":
    raise SystemExit(main())
