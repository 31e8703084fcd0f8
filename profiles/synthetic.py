"""Tiny synthetic multi-capacity models and their profiles, for tests and quick benchmarks.

SYNTHETIC: the weights are random (descendant k is the channel prefix of one randomly
initialised model, so the files are genuinely nested) and the accuracies are *assigned*, not
measured; the profile says so in its data set name. Latency is measured on this machine with
the profiler's own timing code; peak RSS is measured in subprocesses when asked (it is slow),
otherwise recorded as the loaded bytes (fp32 weights, or the flatbuffer) over a unit baseline.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import torch
from tqdm import tqdm

from nestdnn.files import file_sha256
from nestdnn.models import build_model, default_widths, prefix_state_dict
from nestdnn.nestfile import Manifest, NestDescendant, NestMeta, read_manifest, write_nest
from profiles.device import describe_device
from profiles.latency import LatencySettings
from profiles.profiler import ProfileSettings, Progress, measure_latencies, measure_memories
from profiles.schema import (
    SCHEMA_VERSION,
    Backend,
    BackendProfile,
    DatasetInfo,
    DescendantProfile,
    MemoryStats,
    ModelId,
    Profile,
    save_profile,
)
from profiles.tflite import converted_descendants

SYNTHETIC_DATASET = "synthetic (random weights; accuracies assigned, not measured)"
SYNTHETIC_BACKENDS: tuple[Backend, ...] = ("onnxruntime", "torch")


def write_synthetic_nest(
    path: Path,
    *,
    arch: str = "vgg11",
    in_channels: int = 1,
    input_size: int = 16,
    num_classes: int = 4,
    width_mults: Sequence[float] = (0.125, 0.25, 0.5),
    accuracies: Sequence[float] = (0.70, 0.80, 0.85),
    seed: int = 0,
) -> Manifest:
    """A ``.nest`` whose descendants are channel prefixes of one random model."""
    if len(width_mults) != len(accuracies):
        raise ValueError("give one accuracy per width multiplier")
    torch.manual_seed(seed)
    full = build_model(arch, in_channels=in_channels, num_classes=num_classes,
                       input_size=input_size, width_mult=max(width_mults))
    state, axes = full.state_dict(), full.param_axes()
    descendants = []
    for mult, accuracy in zip(width_mults, accuracies, strict=True):
        widths = default_widths(arch, input_size, mult)
        child = build_model(arch, in_channels=in_channels, num_classes=num_classes,
                            input_size=input_size, widths=widths)
        sliced = {k: v.clone() for k, v in prefix_state_dict(state, axes, widths).items()}
        descendants.append(NestDescendant(sliced, child.config, accuracy))
    meta = NestMeta(dataset="synthetic", class_names=[f"class{i}" for i in range(num_classes)],
                    mean=[0.5] * in_channels, std=[0.25] * in_channels,
                    extra={"synthetic": True})
    return write_nest(path, descendants, meta)


def write_synthetic_profile(
    nest_path: Path,
    *,
    backends: Sequence[Backend] = SYNTHETIC_BACKENDS,
    threads: int = 1,
    latency: LatencySettings | None = None,
    measure_rss: bool = False,
) -> Profile:
    """Profile a synthetic ``.nest`` (latency measured per backend); save it beside the file.

    ``tflite`` converts the descendants first (cached beside the file, as the profiler does).
    """
    latency = latency or LatencySettings(runs=20, rounds=2, warmup=3, threads=threads)
    manifest = read_manifest(nest_path)
    sha256 = file_sha256(nest_path)
    indices = [d.index for d in manifest.descendants]
    flatbuffers = (converted_descendants(nest_path, sha256, indices)
                   if "tflite" in backends else None)
    measured = {b: measure_latencies(nest_path, manifest, b, flatbuffers, latency)
                for b in backends}
    if measure_rss:
        settings = ProfileSettings(backends=tuple(backends), latency=latency)
        memory = measure_memories(nest_path, indices, backends, flatbuffers, settings,
                                  Progress(tqdm(total=0, disable=True)))
    else:
        memory = {b: [MemoryStats(baseline_rss_bytes=1, peak_rss_bytes=1 + size, runs=1,
                                  resident_bytes=size)
                      for size in _loaded_sizes(manifest, b, flatbuffers)] for b in backends}
    profile = Profile(
        schema_version=SCHEMA_VERSION,
        model=ModelId(file=nest_path.name, sha256=sha256, arch=manifest.arch.arch),
        device=describe_device(latency.threads),
        created=datetime.now(timezone.utc),
        dataset=DatasetInfo(name=SYNTHETIC_DATASET, test_size=1),
        backends=list(backends),
        conditions={b: m.conditions for b, m in measured.items()},
        num_descendants=len(indices),
        descendants=[
            DescendantProfile(
                index=d.index, widths=dict(d.widths), widths_total=sum(d.widths.values()),
                params=d.params, bytes=d.bytes, macs=d.macs, accuracy=d.val_accuracy,
                backends={b: BackendProfile(latency=measured[b].latencies[k],
                                            memory=memory[b][k]) for b in backends},
            )
            for k, d in enumerate(manifest.descendants)
        ],
    )
    save_profile(profile, nest_path.with_name(nest_path.name.removesuffix(".nest")
                                              + ".profile.json"))
    return profile


def _loaded_sizes(manifest: Manifest, backend: Backend,
                  flatbuffers: Sequence[Path] | None) -> list[int]:
    """Bytes a descendant occupies when loaded (unmeasured): fp32 weights, or the flatbuffer."""
    if backend == "tflite" and flatbuffers is not None:
        return [path.stat().st_size for path in flatbuffers]
    return [d.bytes for d in manifest.descendants]


def synthetic_models_dir(directory: Path, names: Sequence[str], *, seed: int = 0,
                         backends: Sequence[Backend] = SYNTHETIC_BACKENDS,
                         measure_rss: bool = False) -> Path:
    """Write one synthetic model + profile per name, of growing sizes, into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        scale = 1.0 + 0.5 * i
        mults = [min(1.0, m * scale) for m in (0.125, 0.25, 0.5)]
        accuracies = [round(0.62 + 0.04 * i + 0.1 * math.log2(1 + k), 3) for k in range(3)]
        nest_path = directory / f"{name}.nest"
        write_synthetic_nest(nest_path, width_mults=mults, accuracies=accuracies, seed=seed + i)
        write_synthetic_profile(nest_path, backends=backends, measure_rss=measure_rss)
    return directory
