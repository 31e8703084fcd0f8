"""Write docs/results.md from what `benchmarks/reproduce.py` measured (tables and plots).

Every figure comes from a JSON file the benchmarks wrote under the reproduction's root; a
missing one is said to be missing, never filled in. Plots are written next to the report
(docs/results/*.png). Run on its own to rewrite the report from existing results:

    .venv/bin/python benchmarks/report.py [--root runs/reproduce]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

ROOT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT_DIR))

from apps import API_APP, APPS, STABILITY_APP  # noqa: E402

from nestdnn.cli.pipeline import PipelineDirs, PipelinePlan  # noqa: E402
from profiles.device import cpu_model  # noqa: E402

PAPER = {
    "descendant_gain": "+4.98 % on average over same-size baselines, most at small sizes",
    "scheduler": "up to +4.2 % accuracy, 2.0x frame rate, 1.7x less energy vs resource-agnostic",
}


def read_json(path: Path) -> Any | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def md_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def pct(x: float | None, digits: int = 2) -> str:
    return "-" if x is None else f"{100 * x:.{digits}f} %"


def shown(path: Path) -> str:
    """A path as the reader's checkout has it (relative to the repository when inside)."""
    try:
        return str(path.resolve().relative_to(ROOT_DIR))
    except ValueError:
        return str(path)


def missing(what: str, path: Path) -> str:
    return f"*Not measured: {what} ({shown(path)} is missing; run `make reproduce`).*"


# ------------------------------------------------------------------------------- sections


def machine_section(root: Path, apps: list[PipelinePlan]) -> str:
    ledger = read_json(root / "jobs.json") or {"jobs": {}}
    jobs = ledger["jobs"]
    earlier = []
    for plan in apps:
        train = read_json(PipelineDirs.under(root, plan.name).train / "train.json")
        if f"{plan.name}:train" not in jobs and train is not None:
            earlier.append(f"`{plan.name}` training: {train['wall_seconds'] / 60:.0f} min wall,"
                           f" {train['train_seconds'] / 60:.0f} min training time (train.json)")
    wall = sum(j["wall_s"] for j in jobs.values())
    cpu = sum(j["cpu_s"] for j in jobs.values())
    rows = [[name, f"{j['wall_s'] / 60:.1f}", f"{j['cpu_s'] / 60:.1f}", j["started"][11:16],
             "ok" if j["exit_code"] == 0 else f"failed ({j['exit_code']})"]
            for name, j in jobs.items()]  # fmt: skip
    reused = ("" if not earlier else " Artifacts made before the job ledger existed were reused"
              f" and are not in this table: {'; '.join(earlier)}.")
    return "\n\n".join([
        "## Machine and run",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.platform()}; "
        f"Python {platform.python_version()}, torch {torch_version()}.",
        f"- Report written {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC from {shown(root)}.",
        f"- Jobs recorded in {shown(root / 'jobs.json')}: {len(jobs)}, {elapsed_text(jobs)};"
        f" {wall / 60:.0f} min of job wall time and {cpu / 60:.0f} min of CPU in total (two jobs"
        " run side by side)." + reused,
        md_table(["job", "wall min", "CPU min", "started (UTC)", "last run"], rows),
    ])  # fmt: skip


def elapsed_text(jobs: dict[str, dict]) -> str:
    """How long some job was running: the union of the jobs' intervals, so that a pause
    between resumed or repeated invocations does not count."""
    if not jobs:
        return "none run"
    starts = [(datetime.fromisoformat(j["started"]), j["wall_s"]) for j in jobs.values()]
    spans = sorted((start, start + timedelta(seconds=wall)) for start, wall in starts)
    busy, (current_start, current_end) = timedelta(), spans[0]
    for start, end in spans[1:]:
        if start > current_end:
            busy += current_end - current_start
            current_start = start
        current_end = max(current_end, end)
    busy += current_end - current_start
    return (f"{busy.total_seconds() / 60:.0f} min with a job running (from"
            f" {spans[0][0]:%H:%M} to {max(end for _, end in spans):%H:%M} UTC)")


def apps_section(root: Path, apps: list[PipelinePlan]) -> str:
    from nestdnn.nestfile import read_manifest

    rows = []
    for plan in apps:
        dirs = PipelineDirs.under(root, plan.name)
        train = read_json(dirs.train / "train.json")
        roadmap = read_json(dirs.prune / "roadmap.json")
        if train is None or roadmap is None or not dirs.nest.exists():
            rows.append([plan.name, plan.arch, "-", "-", "-", "-", "-", "-"])
            continue
        manifest = read_manifest(dirs.nest)
        seed = roadmap["steps"][roadmap["seed_step"]]
        task = ", ".join(train["class_names"]) if len(train["class_names"]) < 10 else "10 classes"
        rows.append([
            plan.name, f"{plan.arch} x{plan.width_mult:g}", f"{train['dataset']} ({task})",
            pct(train["test_accuracy"]), f"{train['params']:,}", f"{train['macs'] / 1e6:.1f} M",
            f"{seed['params'] / train['params']:.1%} params, val {pct(seed['val_accuracy'])}",
            manifest.num_descendants,
        ])  # fmt: skip
    return "\n\n".join([
        "## The three apps",
        "Each app is a model trained from scratch here (`nestdnn train`), pruned with TRR"
        " (`nestdnn prune`), grown back with freeze-&-grow into a `.nest` (`nestdnn recover`)"
        " and profiled (`nestdnn profile`, torch and TFLite, 1 thread). Settings: `APPS` in"
        " `benchmarks/apps.py`.",
        md_table(["app", "model", "data (task)", "vanilla test acc", "params", "MACs",
                  "seed", "descendants"], rows),
    ])  # fmt: skip


def accuracy_section(root: Path, apps: list[PipelinePlan], figures: Path) -> str:
    parts = ["## Descendants vs same-size models trained from scratch (paper Fig. 6)",
             f"Paper: {PAPER['descendant_gain']}. Baselines: a model of each descendant's widths"
             " trained from scratch with the vanilla model's recipe and epochs; the largest"
             " descendant has the vanilla's widths, so the vanilla model is its baseline."]
    results = {}
    for plan in apps:
        path = root / "bench" / f"multicapacity_{plan.name}.json"
        data = read_json(path)
        if data is None:
            parts.append(f"**{plan.name}**: " + missing("multicapacity", path))
            continue
        if not data["accuracy"]:
            parts.append(f"**{plan.name}**: *baselines not trained (run without them:"
                         f" `--skip-accuracy`)*.")
            continue
        results[plan.name] = data
        rows = [[r["level"], f"{r['params']:,}", pct(r["test_accuracy"]),
                 pct(r["baseline_test_accuracy"]), f"{100 * r['gain']:+.2f} pp"]
                for r in data["accuracy"]]  # fmt: skip
        parts += [f"**{plan.name}** (mean gain {100 * data['mean_gain']:+.2f} pp)",
                  md_table(["level", "params", "descendant test acc", "baseline test acc",
                            "gain"], rows)]  # fmt: skip
    if results:
        plot_accuracy(results, figures / "fig6_descendants_vs_baselines.png")
        parts.append("![descendants vs baselines](results/fig6_descendants_vs_baselines.png)")
    return "\n\n".join(parts)


def macs_section(root: Path, apps: list[PipelinePlan], figures: Path) -> str:
    from profiles.schema import load_profile

    parts = ["## Computation of each descendant vs the vanilla model (paper Fig. 7)",
             "MACs per frame (convolutions and linears) and test accuracy of every descendant,"
             " relative to the vanilla model it was derived from."]  # fmt: skip
    series = {}
    for plan in apps:
        dirs = PipelineDirs.under(root, plan.name)
        train = read_json(dirs.train / "train.json")
        if train is None or not dirs.profile.exists():
            parts.append(f"**{plan.name}**: " + missing("profile", dirs.profile))
            continue
        profile = load_profile(dirs.profile)
        rows, points = [], []
        for d in profile.descendants:
            share = d.macs / train["macs"]
            points.append((share, d.accuracy))
            rows.append([d.index, f"{d.macs / 1e6:.2f} M", f"{share:.1%}", pct(d.accuracy),
                         f"{100 * (d.accuracy - train['test_accuracy']):+.2f} pp"])
        series[plan.name] = points
        parts += [f"**{plan.name}** (vanilla {train['macs'] / 1e6:.2f} M MACs, test"
                  f" {pct(train['test_accuracy'])})",
                  md_table(["level", "MACs", "of vanilla", "test acc", "vs vanilla"], rows)]
    if series:
        plot_macs(series, figures / "fig7_macs_vs_vanilla.png")
        parts.append("![MACs vs vanilla](results/fig7_macs_vs_vanilla.png)")
    return "\n\n".join(parts)


def memory_section(root: Path, apps: list[PipelinePlan]) -> str:
    rows = []
    for plan in apps:
        data = read_json(root / "bench" / f"multicapacity_{plan.name}.json")
        if data is None:
            rows.append([plan.name, "-", "-", "-", "-", "-"])
            continue
        s = data["sizes"]
        rows.append([plan.name, f"{s['nest_file_bytes'] / 1e6:.3f} MB",
                     f"{s['accumulated_file_bytes'] / 1e6:.3f} MB",
                     f"{1 - s['nest_file_bytes'] / s['accumulated_file_bytes']:.1%}",
                     f"{s['overhead']:+.2%}", f"{s['weights_overhead']:+.2%}"])
    return "\n\n".join([
        "## Memory: one multi-capacity model vs independent descendants (paper Table 3)",
        "The `.nest` file against the sum of K independent files of the same descendants"
        " (safetensors), and its overhead over the largest descendant alone (goal <= 2 %):"
        " the other descendants' own BN parameters and biases, and the file's header.",
        md_table(["app", ".nest file", "K independent files", "saved", "file overhead",
                  "weights overhead"], rows),
    ])  # fmt: skip


def switching_section(root: Path, apps: list[PipelinePlan]) -> str:
    rows = []
    for plan in apps:
        data = read_json(root / "bench" / f"multicapacity_{plan.name}.json")
        if data is None:
            continue
        sw = data["switching"]
        for kind in ("upgrade", "downgrade"):
            chosen = [r for r in sw if r["kind"] == kind]
            adjacent = [r for r in chosen if abs(r["target"] - r["source"]) == 1]
            rows.append([
                plan.name, kind, f"{statistics.median(r['switch_ms'] for r in chosen):.2f}",
                f"{statistics.median(min(r['cold_safetensors_ms'], r['cold_checkpoint_ms']) for r in chosen):.2f}",  # noqa: E501
                f"{min(r['speedup'] for r in adjacent):.1f}x",
                f"{min(r['speedup'] for r in chosen):.1f}x",
            ])  # fmt: skip
    return "\n\n".join([
        "## Switching cost (paper Sec. 7: model switching)",
        "Median time to switch a resident descendant (upgrade: read only the missing levels'"
        " blocks; downgrade: slice and free) vs cold-loading the target descendant as an"
        " independent file and building its model. Goals: adjacent upgrades >= 3x faster,"
        " downgrades >= 10x faster.",
        md_table(["app", "kind", "median switch ms", "median cold load ms",
                  "min speedup (adjacent)", "min speedup (all pairs)"], rows)
        if rows else "*Not measured (no multicapacity results).*",
    ])  # fmt: skip


def profile_section(root: Path, apps: list[PipelinePlan], figures: Path) -> str:
    from profiles.schema import load_profile

    parts = ["## Profiles: what the scheduler sees",
             "Batch-1 latency (median of >= 50 runs in interleaved rounds, 1 thread), accuracy"
             " on the test split and peak RSS growth while running each descendant."]
    for plan in apps:
        dirs = PipelineDirs.under(root, plan.name)
        if not dirs.profile.exists():
            continue
        profile = load_profile(dirs.profile)
        backends = list(profile.backends)
        rows = []
        for d in profile.descendants:
            rows.append([d.index, f"{d.params:,}", f"{d.bytes / 1e6:.2f} MB", pct(d.accuracy),
                         *[f"{1e3 * d.backends[b].latency.median_s:.2f}" for b in backends]])
        parts += [f"**{plan.name}**", md_table(
            ["level", "params", "weights", "test acc", *[f"{b} ms" for b in backends]], rows)]
        if dirs.profile_plot.exists():
            shutil.copy(dirs.profile_plot, figures / dirs.profile_plot.name)
            parts.append(f"![{plan.name} profile](results/{dirs.profile_plot.name})")
    stability = read_json(root / "bench" / f"profile_stability_{STABILITY_APP}.json")
    if stability is not None:
        rows = []
        for backend, b in stability["backends"].items():
            for r in b["descendants"]:
                relative = r.get("relative_ratio")
                rows.append([backend, r["descendant"],
                             *[f"{1e3 * m:.3f}" for m in r["medians_s"]], f"{r['ratio']:.3f}",
                             "-" if relative is None else f"{relative:.3f}"])
        n = len(stability["backends"][next(iter(stability["backends"]))]["descendants"][0]
                ["medians_s"])  # fmt: skip
        speeds = "; ".join(
            f"{backend} " + ", ".join(f"{1e3 * m:.3f}" for m in b["reference_medians_s"])
            for backend, b in stability["backends"].items() if b.get("reference_medians_s"))
        parts += ["**Stability** of the medians over three separate profiling runs of"
                  f" {STABILITY_APP} (goal: max/min <= 1.10 per descendant). *Relative*: each"
                  " median divided by the reference kernel's median timed in the same rounds, "
                  + (f"the machine's speed during that run ({speeds} ms)." if speeds
                     else "not recorded in these runs."),
                  md_table(["backend", "level", *[f"run {i + 1} ms" for i in range(n)],
                            "max/min", "relative max/min"], rows)]  # fmt: skip
    return "\n\n".join(parts)


def scheduler_section(root: Path, figures: Path) -> str:
    parts = ["## Scheduler vs resource-agnostic, simulated (paper Fig. 9)",
             f"Paper: {PAPER['scheduler']}."]
    for stem in ("scheduler_vs_baseline", "scheduler_vs_baseline_crowded"):
        parts.append(simulation_part(root / "bench" / f"{stem}.json", figures))
    return "\n\n".join(parts)


def simulation_part(path: Path, figures: Path) -> str:
    data = read_json(path)
    parts = [f"### {path.stem.replace('_', ' ')}"]
    if data is None:
        return "\n\n".join([*parts, missing("simulation", path)])
    s = data["settings"]
    parts.append(
        f"{data['profiles'].replace(str(ROOT_DIR) + '/', '')}; {s['traces']} random traces"
        f" of {s['duration']:g} s, at most"
        f" {s['max_apps']} apps at once, memory budget {s['budget_bytes'] / 1e6:.1f} MB,"
        " 30 fps per app. Each point is a policy (and alpha) averaged over the traces.")
    rows = [[p["policy"], "-" if p["alpha"] is None else p["alpha"], pct(p["accuracy"]),
             f"{p['fps']:.1f}", f"{p.get('busy_fraction', 0):.2f}"]
            for p in data["points"]]  # fmt: skip
    parts.append(md_table(["policy", "alpha", "accuracy", "fps per app", "busy fraction"], rows))
    rows = [[policy, signed_pp(c["accuracy_gain_at_equal_fps"]),
             "-" if c["fps_ratio_at_equal_accuracy"] is None
             else f"{c['fps_ratio_at_equal_accuracy']:.2f}x",
             f"alpha {c['most_accurate_alpha']:g}: {signed_pp(c['most_accurate_gain'])},"
             f" {c['most_accurate_fps_ratio']:.2f}x fps"]
            for policy, c in data["comparisons"].items()]  # fmt: skip
    parts.append(md_table(["vs baseline", "accuracy at the baseline's fps",
                           "fps at the baseline's accuracy", "most accurate point"], rows))
    parts.append("(\"-\": the baseline's point lies outside the policy's curve, so there is no"
                 " equal-fps or equal-accuracy point to compare at.)")
    png = path.with_suffix(".png")
    if png.exists():
        shutil.copy(png, figures / f"fig9_{path.stem}.png")
        parts.append(f"![{path.stem}](results/fig9_{path.stem}.png)")
    return "\n\n".join(parts)


def live_section(root: Path) -> str:
    path = root / "bench" / "daemon_live.json"
    data = read_json(path)
    parts = ["## Live daemon: NestDNN vs resource-agnostic on real models (Fig. 9 live,"
             " Fig. 10 energy by proxy)"]
    if data is None:
        return "\n\n".join([*parts, missing("live run", path)])
    rows = []
    for policy, result in data["results"].items():
        for metric, c in result["comparison"].items():
            error = "-" if c["error"] is None else f"{c['error']:.1%}"
            rows.append([policy, metric, fmt(c["measured"]), fmt(c["simulated"]), error])
    measured = {policy: r["measured"] for policy, r in data["results"].items()}
    parts += [f"Apps {', '.join(f'{a} ({m})' for a, m in data['models'].items())} start and stop"
              " as the trace says; each is a thread sending frames at 30 fps to a real"
              " `Runtime`. Accuracy: the profile accuracy of the descendant in use,"
              " time-averaged; CPU seconds per frame (the daemon's, without the senders) is the"
              " energy proxy. Beside each measured figure, the simulator's runtime model fed"
              f" with costs measured just before the run (goal: within"
              f" {data['goal_relative_error']:.0%}; largest error {data['largest_error']:.0%}).",
              md_table(["policy", "metric", "measured", "simulated", "error"], rows)]
    if {"min-total-cost", "baseline"} <= measured.keys():
        ours, base = measured["min-total-cost"], measured["baseline"]
        parts.append(
            f"NestDNN vs baseline, measured: accuracy {pct(ours['accuracy'])} vs"
            f" {pct(base['accuracy'])}, {ours['fps']:.1f} vs {base['fps']:.1f} fps per app"
            f" ({ours['fps'] / base['fps']:.2f}x), CPU per frame"
            f" {1e3 * ours['cpu_s_per_frame']:.2f} vs {1e3 * base['cpu_s_per_frame']:.2f} ms"
            f" ({base['cpu_s_per_frame'] / ours['cpu_s_per_frame']:.2f}x less).")
    return "\n\n".join(parts)


def api_section(root: Path) -> str:
    path = root / "bench" / f"api_load_{API_APP}.json"
    data = read_json(path)
    parts = ["## REST API under load"]
    if data is None:
        return "\n\n".join([*parts, missing("API load", path)])
    rows = [[r["clients"], f"{r['rest_frames_per_s']:.1f}", f"{r['direct_frames_per_s']:.1f}",
             f"{r['ratio_to_direct']:.0%}", f"{r['rest_p50_ms']:.1f}", f"{r['rest_p99_ms']:.1f}",
             json.dumps(r["errors"]) if r["errors"] else "none"]
            for r in data["results"]]  # fmt: skip
    parts += [f"{data['label']}, {data['threads']} inference thread(s); REST and direct"
              " in-process inference alternate in slices. Goal: REST >= 70 % of direct at"
              " batch 1, no errors but documented 429s.",
              md_table(["clients", "REST frames/s", "direct frames/s", "REST / direct", "p50 ms",
                        "p99 ms", "errors"], rows)]  # fmt: skip
    return "\n\n".join(parts)


def signed_pp(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.2f} pp"


def fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.4g}"
    return str(x)


# ---------------------------------------------------------------------------------- plots


def plot_accuracy(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(4.2 * len(results), 3.4), squeeze=False)
    for ax, (name, data) in zip(axes[0], results.items(), strict=True):
        rows = data["accuracy"]
        params = [r["params"] / rows[-1]["params"] for r in rows]
        ax.plot(params, [100 * r["test_accuracy"] for r in rows], "o-", label="descendant")
        ax.plot(params, [100 * r["baseline_test_accuracy"] for r in rows], "s--",
                label="trained from scratch")
        ax.set(title=name, xlabel="params (share of the largest)", ylabel="test accuracy %")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_macs(series: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, points in series.items():
        ax.plot([100 * m for m, _ in points], [100 * a for _, a in points], "o-", label=name)
    ax.set(xlabel="MACs, % of the vanilla model", ylabel="test accuracy %",
           title="descendants: computation vs accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ----------------------------------------------------------------------------------- misc


def torch_version() -> str:
    import torch

    return torch.__version__


def write_report(root: Path, apps: list[PipelinePlan], docs: Path) -> Path:
    """Write docs/results.md (and its plots under docs/results/); returns its path."""
    figures = docs / "results"
    figures.mkdir(parents=True, exist_ok=True)
    sections = [
        "# Results: the NestDNN evaluation reproduced on Fashion-MNIST\n\n"
        "Written by `make reproduce` (`benchmarks/reproduce.py`, then `benchmarks/report.py`)."
        " Every figure below was measured on this machine by the code in this repository;"
        " where the paper's figure is quoted it is for orientation, not comparison of equal"
        " setups (the paper used six vision tasks on phones and a GPU-trained VGG/ResNet).",
        machine_section(root, apps),
        apps_section(root, apps),
        accuracy_section(root, apps, figures),
        macs_section(root, apps, figures),
        memory_section(root, apps),
        switching_section(root, apps),
        profile_section(root, apps, figures),
        scheduler_section(root, figures),
        live_section(root),
        api_section(root),
    ]
    path = docs / "results.md"
    path.write_text("\n\n".join(sections) + "\n")
    return path


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT_DIR / "runs" / "reproduce")
    parser.add_argument("--docs", type=Path, default=ROOT_DIR / "docs")
    args = parser.parse_args()
    print(f"wrote {write_report(args.root, APPS, args.docs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
