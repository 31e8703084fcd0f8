"""Accuracy vs latency and accuracy vs memory of a profile's descendants, as a PNG."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib import ticker

from profiles.schema import Profile

MARKERS = {"torch": "o", "tflite": "s"}
MIB = 1 << 20
LOG_SCALE_SPREAD = 10  # latencies spanning more than this factor get a log axis


def plot_profile(profile: Profile, path: str | Path) -> Path:
    """Two panels, one point per descendant and backend, labelled with the descendant index."""
    path = Path(path)
    fig, (ax_lat, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.5), constrained_layout=True)
    accuracies = [100 * d.accuracy for d in profile.descendants]
    all_latencies = []
    for backend in profile.backends:
        figures = profile.backend(backend)
        marker = MARKERS.get(backend, "^")
        latencies = [1e3 * f.latency.median_s for f in figures]
        all_latencies += latencies
        memories = [f.memory.delta_bytes / MIB for f in figures]
        ax_lat.plot(latencies, accuracies, marker=marker, label=backend)
        ax_mem.plot(memories, accuracies, marker=marker, label=f"{backend} extra peak RSS")
        _label_points(ax_lat, latencies, accuracies)
        _label_points(ax_mem, memories, accuracies)
    weights = [d.bytes / MIB for d in profile.descendants]
    ax_mem.plot(weights, accuracies, marker="x", linestyle=":", color="grey", label="weights")
    threads = profile.device.threads
    ax_lat.set(
        xlabel=f"batch-1 latency, median (ms, {threads} thread{'s' * (threads > 1)})",
        ylabel="test accuracy (%)",
        title="accuracy vs latency",
    )
    if max(all_latencies) > LOG_SCALE_SPREAD * min(all_latencies):
        ax_lat.set_xscale("log")
        ax_lat.xaxis.set_major_formatter(ticker.FormatStrFormatter("%g"))
    ax_mem.set(xlabel="memory (MiB)", ylabel="test accuracy (%)", title="accuracy vs memory")
    for ax in (ax_lat, ax_mem):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{profile.model.file} on {profile.device.cpu_model} ({profile.dataset.name})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _label_points(ax: plt.Axes, xs: list[float], ys: list[float]) -> None:
    for k, (x, y) in enumerate(zip(xs, ys, strict=True)):
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
