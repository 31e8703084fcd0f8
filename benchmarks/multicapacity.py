"""Multi-capacity model benchmark: accuracy vs from-scratch baselines, storage, switching, latency.

(a) every descendant's test accuracy vs a baseline of the same widths trained from scratch
    with the vanilla model's recipe (read from its train.json); the largest descendant has the
    vanilla's widths, so the vanilla model itself is its baseline. Baselines are cached (and
    resumable per epoch) under OUT_DIR/multicapacity_cache/.
(b) `.nest` file bytes vs K independent files (safetensors) and resident weight bytes;
    overhead over the largest descendant (goal <= 2 %).
(c) median time of upgrade / downgrade between every pair with `NestedModel` vs cold-loading
    the target descendant from an independent file, the three timed in turns (goal: >= 10x
    faster downgrade, >= 3x faster upgrade between adjacent levels).
(d) batch-1 single-thread latency of loaded descendants vs a standalone dense model of the
    same widths (goal <= 1.05x).
Prints tables and writes OUT_DIR/multicapacity.json and .png (accuracy vs params).

Real run (Fashion-MNIST VGG-16 x0.25 after `nestdnn train` and `nestdnn prune`; builds the
.nest with freeze-&-grow first if it does not exist):
    .venv/bin/python benchmarks/multicapacity.py --vanilla runs/fmnist-vgg16/vanilla.pt \
        --prune-dir runs/fmnist-vgg16/prune --nest runs/fmnist-vgg16/model.nest
Storage, switching and latency only (minutes, no baseline training; no plot):
    .venv/bin/python benchmarks/multicapacity.py --nest runs/models/fmnist-vgg16.nest \
        --out-dir runs/benchmarks/mc_v2 --skip-accuracy
End-to-end check on generated data in about a minute:
    .venv/bin/python benchmarks/multicapacity.py --quick
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from nestdnn.checkpoint import load_checkpoint, save_checkpoint
from nestdnn.data import DatasetSplits, DataSpec, SyntheticConfig, load_dataset
from nestdnn.errors import NestError
from nestdnn.models import ModelConfig, NestNet, build_from_config, build_model
from nestdnn.nested import NestedModel, load_descendant
from nestdnn.nestfile import Manifest, read_manifest
from nestdnn.training import TrainConfig, evaluate, train
from pruning.prune import PruneJob, prune
from pruning.roadmap import PruneSettings
from recovery.grow import RecoveryConfig, recover
from recovery.levels import choose_steps, plan_levels
from recovery.prune_run import PruneRun, load_run_splits, open_prune_run

log = logging.getLogger("multicapacity")

GOAL_OVERHEAD = 0.02
GOAL_DOWNGRADE_SPEEDUP = 10.0
GOAL_UPGRADE_SPEEDUP = 3.0
GOAL_LATENCY_RATIO = 1.05


@dataclass
class Setup:
    """What is measured and how: the .nest file, its data, the baseline recipe, repetitions."""

    nest: Path
    splits: DatasetSplits
    recipe: TrainConfig
    vanilla: Path
    cache: Path
    out_dir: Path
    stem: str
    switch_repeats: int
    latency_runs: int


@dataclass
class AccuracyRow:
    level: int
    roadmap_step: int | None
    params: int
    val_accuracy: float
    test_accuracy: float
    baseline_val_accuracy: float
    baseline_test_accuracy: float
    baseline_source: str

    @property
    def gain(self) -> float:
        return self.test_accuracy - self.baseline_test_accuracy


@dataclass
class SizeReport:
    nest_file_bytes: int
    nest_tensor_bytes: int  # the file minus its safetensors header (manifest, tensor index)
    standalone_file_bytes: list[int]
    resident_bytes: list[int]

    @property
    def accumulated_file_bytes(self) -> int:
        return sum(self.standalone_file_bytes)

    @property
    def overhead(self) -> float:
        """Extra bytes of the .nest file over the largest descendant's independent file."""
        return self.nest_file_bytes / self.standalone_file_bytes[-1] - 1

    @property
    def weights_overhead(self) -> float:
        """Extra tensor bytes (other descendants' BN and biases) over the largest descendant."""
        return self.nest_tensor_bytes / self.resident_bytes[-1] - 1


@dataclass
class SwitchRow:
    source: int
    target: int
    switch_ms: float
    cold_safetensors_ms: float
    cold_checkpoint_ms: float

    @property
    def kind(self) -> str:
        return "upgrade" if self.target > self.source else "downgrade"

    @property
    def speedup(self) -> float:
        """Against the faster of the two cold loads."""
        return min(self.cold_safetensors_ms, self.cold_checkpoint_ms) / self.switch_ms


@dataclass
class LatencyRow:
    level: int
    standalone_ms: float
    loaded_ms: float  # load_descendant
    downgraded_ms: float  # NestedModel opened at the top, downgraded to this level

    @property
    def loaded_ratio(self) -> float:
        return self.loaded_ms / self.standalone_ms

    @property
    def downgraded_ratio(self) -> float:
        return self.downgraded_ms / self.standalone_ms


# --- setups ----------------------------------------------------------------------------------


def real_setup(args: argparse.Namespace) -> Setup:
    """Fashion-MNIST (or whatever the roadmap names): the vanilla's recipe and the prune run."""
    run = open_prune_run(args.prune_dir)
    splits = load_run_splits(run)
    recipe = read_recipe(args.vanilla, args.threads)
    if not args.nest.exists():
        log.info("%s does not exist: building it (K=%d, %g epochs per level)", args.nest,
                 args.descendants, args.epochs_per_level)
        config = RecoveryConfig(epochs_per_level=args.epochs_per_level, threads=args.threads)
        build_nest(run, splits, args.nest, args.descendants, config)
    return Setup(args.nest, splits, recipe, args.vanilla, args.out_dir / "multicapacity_cache",
                 args.out_dir, args.name, args.switch_repeats, args.latency_runs)


def read_recipe(vanilla: Path, threads: int | None) -> TrainConfig:
    """The vanilla model's training settings, from the train.json written next to it."""
    report = vanilla.parent / "train.json"
    if not report.is_file():
        raise NestError(f"{report} not found: baselines need the vanilla model's recipe")
    recorded = json.loads(report.read_text())["train_config"]
    known = {f.name for f in fields(TrainConfig)}
    recipe = TrainConfig(**{k: v for k, v in recorded.items() if k in known})
    return replace(recipe, threads=threads or recipe.threads, checkpoint_path=None,
                   progress=None)


def build_nest(run: PruneRun, splits: DatasetSplits, out: Path, descendants: int,
               config: RecoveryConfig) -> None:
    """Freeze-&-grow ``descendants`` levels of ``run`` into ``out`` (as `nestdnn recover`)."""
    plan = plan_levels(run, choose_steps(run, descendants))
    recover(run, plan, splits, out, config)


def quick_setup(args: argparse.Namespace) -> Setup:
    """Train, prune and recover a tiny VGG on generated data, all under OUT_DIR."""
    work = args.out_dir / "multicapacity_quick_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    synthetic = SyntheticConfig(num_classes=4, in_channels=1, input_size=16, train_size=600,
                                test_size=200)
    splits = load_dataset("synthetic", synthetic=synthetic)
    recipe = TrainConfig(epochs=1, batch_size=32, lr=0.05, threads=args.threads, progress=False)
    torch.manual_seed(recipe.seed)
    widths = {g: 8 for g in build_model("vgg11", input_size=16).groups()}
    vanilla = build_model("vgg11", in_channels=1, num_classes=4, input_size=16, widths=widths)
    train(vanilla, splits, recipe)
    save_checkpoint(work / "vanilla.pt", vanilla)
    spec = DataSpec("synthetic", input_size=16, synthetic=synthetic)
    settings = PruneSettings(criterion="l1", ratio=0.2, min_accuracy=0.0, retrain_epochs=0.5,
                             batch_size=32)
    prune(vanilla, splits, PruneJob(work / "vanilla.pt", work / "prune", spec, settings),
          max_steps=3)
    nest = work / "model.nest"
    config = RecoveryConfig(epochs_per_level=0.5, batch_size=32, threads=args.threads,
                            progress=False)
    build_nest(open_prune_run(work / "prune"), splits, nest, 3, config)
    return Setup(nest, splits, recipe, work / "vanilla.pt", work / "cache", args.out_dir,
                 "multicapacity_quick", switch_repeats=5, latency_runs=50)


# --- (a) accuracy vs baselines trained from scratch ------------------------------------------


def accuracy_rows(setup: Setup, manifest: Manifest) -> list[AccuracyRow]:
    vanilla, _ = load_checkpoint(setup.vanilla)
    rows = []
    for k, info in enumerate(manifest.descendants):
        descendant = load_descendant(setup.nest, k)
        config = manifest.config(k)
        if config.widths == vanilla.config.widths:
            baseline, source = vanilla, "the vanilla model"
        else:
            baseline, source = cached_baseline(setup, config, k)
        rows.append(AccuracyRow(
            level=k,
            roadmap_step=info.roadmap_step,
            params=info.params,
            val_accuracy=info.val_accuracy,
            test_accuracy=evaluate(descendant, setup.splits.test),
            baseline_val_accuracy=evaluate(baseline, setup.splits.val),
            baseline_test_accuracy=evaluate(baseline, setup.splits.test),
            baseline_source=source,
        ))
    return rows


def train_one_baseline(setup: Setup, manifest: Manifest, level: int) -> str:
    """Train (or find) descendant ``level``'s baseline; says what was done."""
    if not 0 <= level < manifest.num_descendants:
        return f"{setup.nest} has no descendant {level}: no baseline to train"
    config = manifest.config(level)
    vanilla, _ = load_checkpoint(setup.vanilla)
    if config.widths == vanilla.config.widths:
        return f"descendant {level} has the vanilla's widths: the vanilla model is its baseline"
    model, source = cached_baseline(setup, config, level)
    accuracy = evaluate(model, setup.splits.val)
    return f"baseline of descendant {level}: {source}, val accuracy {accuracy:.2%}"


def cached_baseline(setup: Setup, config: ModelConfig, level: int) -> tuple[NestNet, str]:
    """A model of ``config`` trained from scratch with the recipe; cached by config + recipe."""
    identity = {"config": config.to_dict(), "recipe": asdict(replace(setup.recipe, threads=None,
                                                                     progress=None)),
                "data": setup.splits.describe()}
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    path = setup.cache / f"baseline_{digest}.pt"
    if path.is_file():
        model, _ = load_checkpoint(path)
        return model, f"cached {path.name}"
    setup.cache.mkdir(parents=True, exist_ok=True)
    state = setup.cache / f"baseline_{digest}.state.pt"
    log.info("training the from-scratch baseline of level %d (%s, %g epochs)", level,
             path.name, setup.recipe.epochs)
    torch.manual_seed(setup.recipe.seed)
    model = build_from_config(config)
    result = train(model, setup.splits, replace(setup.recipe, checkpoint_path=str(state)))
    save_checkpoint(path, model, level=level, train_seconds=result.seconds, identity=identity)
    state.unlink(missing_ok=True)
    return model.eval(), f"trained {path.name}"


# --- (b) storage -------------------------------------------------------------------------------


def write_standalone_files(setup: Setup, manifest: Manifest) -> list[tuple[Path, Path]]:
    """Every descendant as independent files: safetensors (+ config) and a nestdnn checkpoint."""
    folder = setup.cache / "standalone" / setup.stem
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for k in range(manifest.num_descendants):
        model = load_descendant(setup.nest, k)
        tensors = folder / f"descendant_{k}.safetensors"
        save_file({n: t.contiguous() for n, t in model.state_dict().items()}, tensors,
                  metadata={"config": json.dumps(model.config.to_dict())})
        files.append((tensors, save_checkpoint(folder / f"descendant_{k}.pt", model)))
    return files


def size_report(setup: Setup, manifest: Manifest, files: list[tuple[Path, Path]]) -> SizeReport:
    file_bytes = setup.nest.stat().st_size
    return SizeReport(
        nest_file_bytes=file_bytes,
        nest_tensor_bytes=file_bytes - safetensors_header_bytes(setup.nest),
        standalone_file_bytes=[tensors.stat().st_size for tensors, _ in files],
        resident_bytes=[d.bytes for d in manifest.descendants],
    )


def safetensors_header_bytes(path: Path) -> int:
    """The 8-byte length prefix plus the JSON header of a safetensors file."""
    with path.open("rb") as f:
        return 8 + int.from_bytes(f.read(8), "little")


# --- (c) switching -----------------------------------------------------------------------------


def load_standalone(path: Path) -> NestNet:
    """Cold-load an independent safetensors descendant: read, build the dense model, fill it."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        config = json.loads(f.metadata()["config"])
    model = build_from_config(config)
    model.load_state_dict(load_file(path))
    return model.eval()


def switch_rows(setup: Setup, manifest: Manifest, files: list[tuple[Path, Path]]
                ) -> list[SwitchRow]:
    levels = range(manifest.num_descendants)
    return [switch_row(setup, source, target, files[target])
            for source in levels for target in levels if source != target]


def switch_row(setup: Setup, source: int, target: int, target_files: tuple[Path, Path]
               ) -> SwitchRow:
    """Median times of one switch source -> target and of cold-loading the target's files.

    The three are timed in turns, in a random order each repetition (as the latency section
    does), so that a busy machine's changing load falls on all of them alike. Each switch
    runs on a handle freshly opened at ``source`` (untimed).
    """
    tensors, checkpoint = target_files
    handle: list[NestedModel] = []

    def switch() -> None:
        handle[-1].switch(target)

    actions: dict[str, Callable[[], Any]] = {
        "switch": switch,
        "safetensors": lambda: load_standalone(tensors),
        "checkpoint": lambda: load_checkpoint(checkpoint),
    }
    times: dict[str, list[float]] = {name: [] for name in actions}
    order = list(actions)
    rng = random.Random(source * 100 + target)
    for _ in range(setup.switch_repeats):
        if handle:
            handle.pop().close()
        handle.append(NestedModel.open(setup.nest, source))
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            actions[name]()
            times[name].append(time.perf_counter() - started)
    handle.pop().close()
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    return SwitchRow(source, target, ms["switch"], ms["safetensors"], ms["checkpoint"])


# --- (d) latency -------------------------------------------------------------------------------


def latency_rows(setup: Setup, manifest: Manifest, files: list[tuple[Path, Path]]
                 ) -> list[LatencyRow]:
    top = manifest.num_descendants - 1
    arch = manifest.arch
    sample = torch.randn(1, arch.in_channels, arch.input_size, arch.input_size)
    rows = []
    for k in range(manifest.num_descendants):
        with NestedModel.open(setup.nest, top) as handle:
            handle.switch(k)
            models = {
                "standalone": load_standalone(files[k][0]),
                "loaded": load_descendant(setup.nest, k),
                "downgraded": handle.module,
            }
            ms = interleaved_latency_ms(models, sample, setup.latency_runs)
        rows.append(LatencyRow(k, ms["standalone"], ms["loaded"], ms["downgraded"]))
    return rows


@torch.inference_mode()
def interleaved_latency_ms(models: dict[str, nn.Module], sample: torch.Tensor, runs: int
                           ) -> dict[str, float]:
    """Median forward time per model, the models taking turns in random order each round."""
    for model in models.values():
        for _ in range(max(10, runs // 10)):
            model(sample)
    times: dict[str, list[float]] = {name: [] for name in models}
    order = list(models)
    rng = random.Random(0)
    for _ in range(runs):
        rng.shuffle(order)
        for name in order:
            started = time.perf_counter()
            models[name](sample)
            times[name].append(time.perf_counter() - started)
    return {name: statistics.median(t) * 1e3 for name, t in times.items()}


# --- reporting ---------------------------------------------------------------------------------


def accuracy_table(rows: list[AccuracyRow]) -> str:
    lines = ["(a) accuracy (test split) of descendants vs same-width baselines from scratch",
             f"{'level':>5} {'step':>4} {'params':>9} {'desc val':>8} {'desc test':>9}"
             f" {'base test':>9} {'gain':>7}  baseline"]
    for r in rows:
        lines.append(f"{r.level:>5} {r.roadmap_step!s:>4} {r.params:>9,} {r.val_accuracy:>8.2%}"
                     f" {r.test_accuracy:>9.2%} {r.baseline_test_accuracy:>9.2%}"
                     f" {r.gain * 100:>+6.2f}%  {r.baseline_source}")
    mean_gain = statistics.mean(r.gain for r in rows) * 100
    lines.append(f"mean gain {mean_gain:+.2f} points (paper: +4.98 on average)")
    return "\n".join(lines)


def size_table(sizes: SizeReport) -> str:
    mb = 1e6
    lines = ["(b) storage", f"{'level':>5} {'file MB':>9} {'resident MB':>11}"]
    for k, (file_bytes, resident) in enumerate(
        zip(sizes.standalone_file_bytes, sizes.resident_bytes, strict=True)
    ):
        lines.append(f"{k:>5} {file_bytes / mb:>9.4f} {resident / mb:>11.4f}")
    lines += [
        f".nest file {sizes.nest_file_bytes / mb:.4f} MB; K independent files"
        f" {sizes.accumulated_file_bytes / mb:.4f} MB"
        f" ({sizes.accumulated_file_bytes / sizes.nest_file_bytes:.2f}x);"
        f" resident sum {sum(sizes.resident_bytes) / mb:.4f} MB",
        f"overhead over the largest descendant: file {sizes.overhead:+.2%}"
        f" {verdict(sizes.overhead <= GOAL_OVERHEAD)}, weights {sizes.weights_overhead:+.2%}"
        f" {verdict(sizes.weights_overhead <= GOAL_OVERHEAD)} (goal <= {GOAL_OVERHEAD:.0%};"
        f" the file's header is {sizes.nest_file_bytes - sizes.nest_tensor_bytes:,} bytes)",
    ]
    return "\n".join(lines)


def switch_table(rows: list[SwitchRow]) -> str:
    lines = ["(c) switching (median ms) vs cold-loading the target as an independent file",
             f"{'from':>4} {'to':>3} {'kind':>9} {'switch':>8} {'cold st':>8} {'cold pt':>8}"
             f" {'speedup':>8}"]
    for r in rows:
        lines.append(f"{r.source:>4} {r.target:>3} {r.kind:>9} {r.switch_ms:>8.3f}"
                     f" {r.cold_safetensors_ms:>8.3f} {r.cold_checkpoint_ms:>8.3f}"
                     f" {r.speedup:>7.1f}x")
    goals = switch_goals(rows)
    lines.append(
        f"downgrade speedup min {goals['downgrade_min_speedup']:.1f}x (goal >="
        f" {GOAL_DOWNGRADE_SPEEDUP:.0f}x) {verdict(goals['downgrade_ok'])}; adjacent upgrade"
        f" speedup min {goals['adjacent_upgrade_min_speedup']:.1f}x (goal >="
        f" {GOAL_UPGRADE_SPEEDUP:.0f}x) {verdict(goals['adjacent_upgrade_ok'])}"
    )
    return "\n".join(lines)


def switch_goals(rows: list[SwitchRow]) -> dict[str, Any]:
    down = min(r.speedup for r in rows if r.kind == "downgrade")
    up = min(r.speedup for r in rows if r.kind == "upgrade" and r.target == r.source + 1)
    return {"downgrade_min_speedup": down, "downgrade_ok": down >= GOAL_DOWNGRADE_SPEEDUP,
            "adjacent_upgrade_min_speedup": up, "adjacent_upgrade_ok": up >= GOAL_UPGRADE_SPEEDUP}


def latency_table(rows: list[LatencyRow]) -> str:
    lines = ["(d) inference latency, batch 1, 1 thread (median ms)",
             f"{'level':>5} {'standalone':>10} {'loaded':>8} {'ratio':>6} {'downgraded':>10}"
             f" {'ratio':>6}"]
    for r in rows:
        lines.append(f"{r.level:>5} {r.standalone_ms:>10.3f} {r.loaded_ms:>8.3f}"
                     f" {r.loaded_ratio:>6.3f} {r.downgraded_ms:>10.3f} {r.downgraded_ratio:>6.3f}")
    worst = max(max(r.loaded_ratio, r.downgraded_ratio) for r in rows)
    lines.append(f"worst ratio {worst:.3f} (goal <= {GOAL_LATENCY_RATIO})"
                 f" {verdict(worst <= GOAL_LATENCY_RATIO)}")
    return "\n".join(lines)


def verdict(ok: bool) -> str:
    return "MET" if ok else "NOT MET"


def plot(rows: list[AccuracyRow], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    params = [r.params for r in rows]
    ax.plot(params, [r.test_accuracy * 100 for r in rows], "o-", label="descendants (.nest)")
    ax.plot(params, [r.baseline_test_accuracy * 100 for r in rows], "s--",
            label="same widths, trained from scratch")
    for r in rows:
        ax.annotate(str(r.level), (r.params, r.test_accuracy * 100), textcoords="offset points",
                    xytext=(4, 4), fontsize=8)
    ax.set_xlabel("parameters")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("multi-capacity descendants vs baselines")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_results(setup: Setup, manifest: Manifest, accuracy: list[AccuracyRow],
                  sizes: SizeReport, switching: list[SwitchRow], latency: list[LatencyRow]
                  ) -> Path:
    worst_latency = max(max(r.loaded_ratio, r.downgraded_ratio) for r in latency)
    results = {
        "nest": str(setup.nest),
        "vanilla": str(setup.vanilla),
        "data": setup.splits.describe(),
        "recipe": asdict(setup.recipe),
        "descendants": [d.model_dump() for d in manifest.descendants],
        "accuracy": [asdict(r) | {"gain": r.gain} for r in accuracy],
        "mean_gain": statistics.mean(r.gain for r in accuracy) if accuracy else None,
        "sizes": asdict(sizes) | {"accumulated_file_bytes": sizes.accumulated_file_bytes,
                                  "overhead": sizes.overhead,
                                  "weights_overhead": sizes.weights_overhead},
        "switching": [asdict(r) | {"kind": r.kind, "speedup": r.speedup} for r in switching],
        "latency": [asdict(r) | {"loaded_ratio": r.loaded_ratio,
                                 "downgraded_ratio": r.downgraded_ratio} for r in latency],
        "goals": {
            "overhead_ok": sizes.overhead <= GOAL_OVERHEAD,
            "weights_overhead_ok": sizes.weights_overhead <= GOAL_OVERHEAD,
            **switch_goals(switching),
            "latency_worst_ratio": worst_latency,
            "latency_ok": worst_latency <= GOAL_LATENCY_RATIO,
        },
        "device": {"cpu_count": os.cpu_count(), "torch": torch.__version__,
                   "load_average": os.getloadavg()},
        "measured": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = setup.out_dir / f"{setup.stem}.json"
    path.write_text(json.dumps(results, indent=2) + "\n")
    return path


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="train, prune and recover a tiny model on generated data instead")
    parser.add_argument("--vanilla", type=Path, default=Path("runs/fmnist-vgg16/vanilla.pt"))
    parser.add_argument("--prune-dir", type=Path, default=Path("runs/fmnist-vgg16/prune"))
    parser.add_argument("--nest", type=Path, default=Path("runs/fmnist-vgg16/model.nest"))
    parser.add_argument("--descendants", type=int, default=5, help="if the .nest is built here")
    parser.add_argument("--epochs-per-level", type=float, default=1.0,
                        help="if the .nest is built here")
    parser.add_argument("--out-dir", type=Path, default=Path("runs/benchmarks"))
    parser.add_argument("--threads", type=int,
                        help="threads for training (default: the vanilla's recipe)")
    parser.add_argument("--switch-repeats", type=int, default=30)
    parser.add_argument("--latency-runs", type=int, default=300)
    parser.add_argument("--name", default="multicapacity",
                        help="results are written as OUT_DIR/NAME.json and .png")
    parser.add_argument("--train-baseline", type=int, metavar="K",
                        help="only train (or resume) the from-scratch baseline of descendant K"
                             " into the cache, then exit; several can run side by side")
    parser.add_argument("--no-onednn", action="store_true",
                        help="train with oneDNN (mkldnn) kernels off: 2x slower, but works around"
                             " a heap corruption ('double free or corruption') that torch"
                             " 2.14.1's oneDNN backward hits on this CPU when training ResNet-20"
                             " at some pruned widths (e.g. 6/11/22) on Fashion-MNIST")
    parser.add_argument("--skip-accuracy", action="store_true",
                        help="measure only (b) storage, (c) switching and (d) latency: skip (a),"
                             " whose from-scratch baselines take hours to train")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    if args.no_onednn:
        torch.backends.mkldnn.enabled = False
    try:
        setup = quick_setup(args) if args.quick else real_setup(args)
        manifest = read_manifest(setup.nest)
        if args.train_baseline is not None:
            print(train_one_baseline(setup, manifest, args.train_baseline))
            return 0
        files = write_standalone_files(setup, manifest)
        sizes = size_report(setup, manifest, files)
        print(size_table(sizes), flush=True)
        training_threads = torch.get_num_threads()
        torch.set_num_threads(1)
        switching = switch_rows(setup, manifest, files)
        print(switch_table(switching), flush=True)
        latency = latency_rows(setup, manifest, files)
        print(latency_table(latency), flush=True)
        torch.set_num_threads(training_threads)
        accuracy = [] if args.skip_accuracy else accuracy_rows(setup, manifest)  # hours
        if accuracy:
            print(accuracy_table(accuracy), flush=True)
    except NestError as e:
        print(f"multicapacity: error: {e}", file=sys.stderr)
        return 2
    path = write_results(setup, manifest, accuracy, sizes, switching, latency)
    if accuracy:
        plot(accuracy, setup.out_dir / f"{setup.stem}.png")
        print(f"wrote {path} and {path.with_suffix('.png')}")
    else:
        print(f"wrote {path} (accuracy skipped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
