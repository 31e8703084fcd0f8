"""Profiling a ``.nest`` file: accuracy, memory and latency of every descendant, per backend.

Order of work: the onnxruntime graphs and the TFLite conversions (both cached beside the
file), test accuracy (torch), memory (one subprocess per descendant and backend, run side by
side, since RSS is per process), then latency, one backend at a time, with nothing else of
ours running. Every backend's outputs are checked against torch's on a fixed input.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from nestdnn.errors import NestError
from nestdnn.files import file_sha256
from nestdnn.nested import load_descendant
from nestdnn.nestfile import Manifest, NestFile, read_manifest
from profiles.accuracy import descendant_accuracies, load_test_split
from profiles.device import ConditionsRecorder, describe_device
from profiles.latency import LatencySettings, Runner, measure_interleaved
from profiles.memory import measure_memory
from profiles.onnxrt import descendant_graphs, load_session, ort_runner
from profiles.reference import onnxruntime_reference_runner
from profiles.schema import (
    BACKENDS,
    SCHEMA_VERSION,
    Backend,
    BackendProfile,
    Conditions,
    DatasetInfo,
    DescendantProfile,
    LatencyStats,
    MemoryStats,
    ModelId,
    Profile,
)
from profiles.tflite import BackendUnavailable, converted_descendants, tflite_runner
from profiles.torch_backend import reference_runner, torch_runner, torch_threads

log = logging.getLogger(__name__)

BACKEND_TOLERANCE = 1e-3


@dataclass(frozen=True)
class ProfileSettings:
    """What to measure and how."""

    backends: tuple[Backend, ...] = BACKENDS
    latency: LatencySettings = field(default_factory=LatencySettings)
    memory_runs: int = 5
    batch_size: int = 256
    progress: bool = False
    device: str = "cpu"  # where the accuracy pass runs (latency and memory: always the CPU)

    def validate(self) -> None:
        self.latency.validate()
        unknown = [b for b in self.backends if b not in BACKENDS]
        if unknown or not self.backends:
            given = ", ".join(unknown) or "(none)"
            raise NestError(f"unknown backend {given}; choose from {', '.join(BACKENDS)}")
        if self.memory_runs < 1 or self.batch_size < 1:
            raise NestError("memory runs and batch size must be at least 1")


@dataclass
class Measured:
    """Latency and machine conditions of every descendant on one backend."""

    latencies: list[LatencyStats]
    conditions: Conditions


@dataclass
class Stage:
    """A stage's share of the progress bar."""

    bar: tqdm
    remaining: int

    def step(self) -> None:
        self.remaining -= 1
        self.bar.update()

    def abandon(self) -> None:
        """Take the steps this stage will not do off the bar's total."""
        self.bar.total -= self.remaining
        self.remaining = 0
        self.bar.refresh()


@dataclass
class Progress:
    """One tqdm bar for the whole profile; each stage extends its total when it starts."""

    bar: tqdm

    def stage(self, steps: int, name: str) -> Stage:
        self.bar.total = (self.bar.total or 0) + steps
        self.bar.set_description(name)
        self.bar.refresh()
        return Stage(self.bar, steps)


def profile_nest(
    nest_path: str | Path,
    dataset: str | None,
    data_dir: str | Path | None,
    settings: ProfileSettings,
) -> Profile:
    """Measure every descendant of ``nest_path`` and return the validated profile."""
    settings.validate()
    nest_path = Path(nest_path)
    manifest = read_manifest(nest_path)
    dataset = dataset or manifest.dataset
    if not dataset:
        raise NestError(f"{nest_path.name} names no data set: pass --dataset")
    sha256 = file_sha256(nest_path)
    indices = [d.index for d in manifest.descendants]
    bar = tqdm(total=0, unit="step", disable=not settings.progress)
    with bar, logging_redirect_tqdm():
        progress = Progress(bar)
        if "onnxruntime" in settings.backends:
            _onnxruntime_graphs(nest_path, indices, progress)
        tflite_paths = _tflite_files(nest_path, sha256, indices, settings, progress)
        backends = [b for b in settings.backends if b != "tflite" or tflite_paths]
        test = load_test_split(manifest, dataset, data_dir)
        accuracy_stage = progress.stage(len(indices), "accuracy")
        accuracies = descendant_accuracies(
            nest_path, indices, test, settings.batch_size, accuracy_stage.step, settings.device
        )
        memory = measure_memories(nest_path, indices, backends, tflite_paths, settings, progress)
        measured = {
            b: measure_latencies(nest_path, manifest, b, tflite_paths, settings.latency, progress)
            for b in backends
        }
    for backend in backends:
        if backend != "torch":
            check_matches_torch(nest_path, manifest, backend, tflite_paths)
    return Profile(
        schema_version=SCHEMA_VERSION,
        model=ModelId(file=nest_path.name, sha256=sha256, arch=manifest.arch.arch),
        device=describe_device(settings.latency.threads),
        created=datetime.now(timezone.utc),
        dataset=DatasetInfo(name=dataset, test_size=len(test)),
        backends=backends,
        conditions={b: m.conditions for b, m in measured.items()},
        num_descendants=len(indices),
        descendants=[
            DescendantProfile(
                index=d.index,
                widths=d.widths,
                widths_total=sum(d.widths.values()),
                params=d.params,
                bytes=d.bytes,
                macs=d.macs,
                accuracy=accuracies[k],
                backends={
                    b: BackendProfile(latency=measured[b].latencies[k], memory=memory[b][k])
                    for b in backends
                },
            )
            for k, d in enumerate(manifest.descendants)
        ],
    )


def _onnxruntime_graphs(nest_path: Path, indices: Sequence[int], progress: Progress) -> None:
    """Build (once, cached beside the file) the weightless graphs onnxruntime runs."""
    stage = progress.stage(len(indices), "onnxruntime graphs")
    with NestFile(nest_path) as nest:
        descendant_graphs(nest, indices, stage.step)


def _tflite_files(
    nest_path: Path,
    sha256: str,
    indices: Sequence[int],
    settings: ProfileSettings,
    progress: Progress,
) -> list[Path] | None:
    """The TFLite conversions if the tflite backend is wanted and possible, else None."""
    if "tflite" not in settings.backends:
        return None
    stage = progress.stage(len(indices), "tflite conversion")
    try:
        return converted_descendants(nest_path, sha256, indices, stage.step)
    except BackendUnavailable as e:
        stage.abandon()
        if settings.backends == ("tflite",):
            raise
        log.warning("tflite backend skipped, writing the other backends only: %s", e)
        return None


def measure_memories(
    nest_path: Path,
    indices: Sequence[int],
    backends: Sequence[Backend],
    tflite_paths: Sequence[Path] | None,
    settings: ProfileSettings,
    progress: Progress,
) -> dict[Backend, list[MemoryStats]]:
    """Peak RSS of every (backend, descendant), in parallel subprocesses (one per core)."""
    step = progress.stage(len(indices) * len(backends), "peak RSS").step
    threads = settings.latency.threads

    def one(backend: Backend, k: int) -> MemoryStats:
        path = tflite_paths[k] if backend == "tflite" else nest_path
        stats = measure_memory(backend, path, k, threads, settings.memory_runs)
        step()
        return stats

    jobs = [(b, k) for b in backends for k in indices]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda job: one(*job), jobs))
    return {b: [r for (jb, _), r in zip(jobs, results, strict=True) if jb == b] for b in backends}


def measure_latencies(
    nest_path: Path,
    manifest: Manifest,
    backend: Backend,
    tflite_paths: Sequence[Path] | None,
    settings: LatencySettings,
    progress: Progress | None = None,
) -> Measured:
    """Batch-1 latency of every descendant on ``backend``, interleaved in rounds."""
    after_round = progress.stage(settings.rounds, f"latency {backend}").step if progress else None
    recorder = ConditionsRecorder()
    with torch_threads(settings.threads), torch.inference_mode():
        runners = descendant_runners(nest_path, manifest, backend, tflite_paths, settings.threads)
        reference = (onnxruntime_reference_runner(settings.threads)
                     if backend == "onnxruntime" else reference_runner())
        recorder.start()
        *latencies, reference_stats = measure_interleaved(
            [*runners, reference], settings, after_round
        )
    return Measured(latencies=latencies, conditions=recorder.finish(reference_stats))


def descendant_runners(nest_path: Path, manifest: Manifest, backend: Backend,
                       tflite_paths: Sequence[Path] | None, threads: int) -> list[Runner]:
    """One batch-1 runner per descendant on ``backend`` (torch ones under inference mode)."""
    shape = manifest.input_shape
    if backend == "torch":
        return [torch_runner(load_descendant(nest_path, d.index), shape)
                for d in manifest.descendants]
    if backend == "onnxruntime":
        with NestFile(nest_path) as nest:
            indices = [d.index for d in manifest.descendants]
            graphs = descendant_graphs(nest, indices)
            return [ort_runner(load_session(nest, graph, k, threads), shape)
                    for k, graph in zip(indices, graphs, strict=True)]
    if tflite_paths is None:
        raise NestError("the tflite backend needs the converted descendants")
    return [tflite_runner(p, threads) for p in tflite_paths]


def check_matches_torch(nest_path: Path, manifest: Manifest, backend: Backend,
                        tflite_paths: Sequence[Path] | None) -> None:
    """Warn when a backend's output differs from torch's on the fixed input."""
    with torch.inference_mode():
        runners = descendant_runners(nest_path, manifest, backend, tflite_paths, threads=1)
        for d, run in zip(manifest.descendants, runners, strict=True):
            expected = torch_runner(load_descendant(nest_path, d.index), manifest.input_shape)()
            got = run()
            got = got[0] if isinstance(got, list) else got
            diff = float(np.max(np.abs(np.asarray(got) - expected.numpy())))
            scale = max(1.0, float(expected.abs().max()))
            if diff > BACKEND_TOLERANCE * scale:
                log.warning("%s descendant %d differs from torch by up to %.3g (outputs up to"
                            " %.3g): check the conversion", backend, d.index, diff, scale)
            else:
                log.info("%s descendant %d matches torch (max abs diff %.2g)", backend,
                         d.index, diff)
