"""How reproducible are profiled latencies? Profile one .nest several times and compare.

Each repeat is a full ``profile_nest`` (accuracy, peak RSS, latency per backend) in its own
fresh process, as three separate ``nestdnn profile`` runs would be. Per descendant and
backend it reports the max/min ratio of the three median latencies (goal <= 1.10), with the
CPU pressure each repeat was measured under (other processes on this shared machine inflate
latencies), as a table and as JSON under runs/benchmarks/.

It also reports the max/min ratio of the medians *relative to the reference kernel* timed in
the same rounds (``Conditions.reference``): on a virtual machine whose speed drifts between
runs (every descendant slower by the same factor), the raw medians move with the machine,
while the relative ones show how reproducible the measurement itself is.

    .venv/bin/python benchmarks/profile_stability.py runs/.../model.nest
    .venv/bin/python benchmarks/profile_stability.py --quick   # a tiny synthetic .nest
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import torch

from nestdnn.models import build_model, default_widths, prefix_state_dict
from nestdnn.nestfile import NestDescendant, NestMeta, write_nest
from profiles.cli import parse_backends
from profiles.latency import LatencySettings
from profiles.profiler import ProfileSettings, profile_nest
from profiles.schema import BACKENDS, Profile, load_profile, save_profile
from profiles.table import format_table

OUT_DIR = Path("runs/benchmarks")
GOAL = 1.10


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", type=Path, help="the .nest file to profile")
    parser.add_argument("--quick", action="store_true", help="profile a tiny synthetic .nest")
    parser.add_argument("--dataset", help="data set (default: the manifest's)")
    parser.add_argument("--data-dir")
    parser.add_argument("--backends", type=parse_backends, default=",".join(BACKENDS))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--name", help="result name (default: profile_stability[_quick])")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR,
                        help="where NAME.json and the repeats' profiles go (default: %(default)s)")
    parser.add_argument("--one-run", type=Path, help=argparse.SUPPRESS)  # a repeat's worker
    args = parser.parse_args()
    if (args.model is None) == (not args.quick):
        parser.error("give a .nest file or --quick (not both)")
    return args


def write_synthetic_nest(path: Path, levels: int = 3) -> Path:
    """Prefix-sliced descendants of one random VGG-11 (1x16x16 inputs, 4 classes)."""
    torch.manual_seed(0)
    base = default_widths("vgg11", 16, 1 / 8)
    full = build_model("vgg11", in_channels=1, num_classes=4, input_size=16, widths=base)
    state, axes = full.state_dict(), full.param_axes()
    descendants = []
    for k in range(levels):
        widths = {g: max(1, math.ceil(w * (k + 1) / levels)) for g, w in base.items()}
        sliced = {key: t.clone() for key, t in prefix_state_dict(state, axes, widths).items()}
        config = replace(full.config, widths=widths)
        descendants.append(NestDescendant(state_dict=sliced, config=config, val_accuracy=0.25))
    meta = NestMeta("synthetic", [f"class{i}" for i in range(4)], [0.5], [0.25])
    write_nest(path, descendants, meta)
    return path


def settings_of(args: argparse.Namespace) -> ProfileSettings:
    latency = LatencySettings(
        runs=args.runs, rounds=args.rounds, warmup=args.warmup, threads=args.threads
    )
    return ProfileSettings(backends=args.backends, latency=latency)


def run_repeat(args: argparse.Namespace, model: Path, out: Path) -> Profile:
    """One repeat in a fresh interpreter (this script in worker mode)."""
    command = [sys.executable, __file__, str(model), "--one-run", str(out)]
    command += ["--backends", ",".join(args.backends), "--threads", str(args.threads)]
    command += ["--runs", str(args.runs), "--rounds", str(args.rounds)]
    command += ["--warmup", str(args.warmup)]
    if args.dataset:
        command += ["--dataset", args.dataset]
    if args.data_dir:
        command += ["--data-dir", args.data_dir]
    subprocess.run(command, check=True)
    return load_profile(out)


def max_min_ratio(values: list[float]) -> float:
    return max(values) / min(values)


def reference_medians(profiles: list[Profile], backend: str) -> list[float] | None:
    """Each repeat's reference-kernel median on ``backend`` (None if a repeat lacks it)."""
    references = [p.conditions[backend].reference for p in profiles]
    if any(r is None for r in references):
        return None
    return [r.median_s for r in references]


def summarise(profiles: list[Profile]) -> dict:
    """Per backend and descendant: the repeats' medians and their max/min ratio."""
    first = profiles[0]
    backends = [b for b in first.backends if all(b in p.backends for p in profiles)]
    result: dict = {"backends": {}}
    for b in backends:
        references = reference_medians(profiles, b)
        rows = []
        for k in range(first.num_descendants):
            medians = [p.descendants[k].backends[b].latency.median_s for p in profiles]
            relative = (None if references is None
                        else [m / r for m, r in zip(medians, references, strict=True)])
            rss = [p.descendants[k].backends[b].memory.delta_bytes for p in profiles]
            rows.append(
                {
                    "descendant": k,
                    "medians_s": medians,
                    "ratio": max_min_ratio(medians),
                    "relative_medians": relative,
                    "relative_ratio": max_min_ratio(relative) if relative else None,
                    "peak_rss_delta_bytes": rss,
                    "rss_ratio": max_min_ratio(rss) if min(rss) > 0 else None,
                }
            )
        result["backends"][b] = {
            "descendants": rows,
            "max_ratio": max(r["ratio"] for r in rows),
            "max_relative_ratio": None if references is None
            else max(r["relative_ratio"] for r in rows),
            "reference_medians_s": references,
            "cpu_pressure": [p.conditions[b].cpu_pressure for p in profiles],
            "load_average": [p.conditions[b].load_average for p in profiles],
        }
    return result


def format_summary(summary: dict, repeats: int) -> str:
    header = ["backend", "k", *[f"median {i + 1} ms" for i in range(repeats)], "max/min",
              "relative max/min"]  # fmt: skip
    rows = [header]
    for b, part in summary["backends"].items():
        for r in part["descendants"]:
            medians = [f"{1e3 * m:.3f}" for m in r["medians_s"]]
            relative = "-" if r["relative_ratio"] is None else f"{r['relative_ratio']:.3f}"
            rows.append([b, str(r["descendant"]), *medians, f"{r['ratio']:.3f}", relative])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    for b, part in summary["backends"].items():
        pressure = ", ".join("n/a" if p is None else f"{p:.0%}" for p in part["cpu_pressure"])
        line = f"{b}: max ratio {part['max_ratio']:.3f} ({verdict(part['max_ratio'])})"
        if part["max_relative_ratio"] is not None:
            speed = ", ".join(f"{1e3 * m:.3f}" for m in part["reference_medians_s"])
            line += (f"; relative to the reference kernel {part['max_relative_ratio']:.3f}"
                     f" ({verdict(part['max_relative_ratio'])}; reference medians {speed} ms)")
        lines.append(f"{line}; CPU pressure per repeat: {pressure}")
    return "\n".join(lines)


def verdict(ratio: float) -> str:
    return f"{'meets' if ratio <= GOAL else 'misses'} the {GOAL} goal"


def main() -> int:
    args = parse_args()
    if args.one_run is not None:
        save_profile(
            profile_nest(args.model, args.dataset, args.data_dir, settings_of(args)), args.one_run
        )
        return 0
    name = args.name or ("profile_stability_quick" if args.quick else "profile_stability")
    work = args.out_dir / name
    work.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        model = args.model or write_synthetic_nest(Path(tmp) / "synthetic.nest")
        profiles = [
            run_repeat(args, model, work / f"repeat{i + 1}.profile.json")
            for i in range(args.repeats)
        ]
    summary = summarise(profiles)
    report = {
        "model": str(args.model) if args.model else "synthetic (--quick)",
        "created": datetime.now(timezone.utc).isoformat(),
        "settings": {
            "repeats": args.repeats,
            "threads": args.threads,
            "runs": args.runs,
            "rounds": args.rounds,
            "warmup": args.warmup,
            "backends": list(args.backends),
        },
        "device": profiles[0].device.model_dump(),
        "goal": GOAL,
        **summary,
    }
    out = args.out_dir / f"{name}.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(profiles[0]))
    print()
    print(format_summary(summary, args.repeats))
    print(f"-> {out} (profiles in {work})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
