"""Text tables and plots of simulation results."""

from __future__ import annotations

from pathlib import Path

from scheduler.simulate import SimulationResult

_MB = 1e6


def _num(value: float | None, fmt: str) -> str:
    """Format a figure, '-' when there is none."""
    return "-" if value is None else format(value, fmt)


def simulation_table(result: SimulationResult) -> str:
    """Per-app rows and an overall line, as `nestdnn simulate` prints them."""
    method = f", {result.method}" if result.method else ""
    lines = [
        f"policy {result.policy}{method}, alpha {result.alpha:g}, "
        f"{result.duration_s:g} s simulated",
        f"{'app':<22}{'start s':>9}{'stop s':>9}{'paused s':>9}{'accuracy':>9}{'fps':>7}"
        f"{'late %':>8}{'drop %':>8}{'switches':>9}{'MB loaded':>10}",
    ]
    for app in result.apps:
        lines.append(
            f"{app.name:<22}{app.start_s:>9.1f}{app.stop_s:>9.1f}{app.paused_s:>9.1f}"
            f"{_num(app.accuracy, '.4f'):>9}{app.fps:>7.1f}{100 * app.late_fraction:>8.1f}"
            f"{100 * app.drop_fraction:>8.1f}{app.switches:>9d}"
            f"{(app.switch_bytes + app.load_bytes) / _MB:>10.1f}"
        )
    s = result.summary
    lines.append(
        f"overall: accuracy {_num(s.accuracy, '.4f')}, fps {s.fps:.1f}, "
        f"late {100 * s.late_fraction:.1f}%, dropped {100 * s.drop_fraction:.1f}%, "
        f"switches {s.switches} ({s.switch_bytes / _MB:.1f} MB), "
        f"loads {s.load_bytes / _MB:.1f} MB ({s.load_s:.3f} s), "
        f"busy {100 * s.busy_fraction:.1f}%, "
        f"swapping {s.swapping_s:.1f} s, paused {s.paused_app_s:.1f} app-s, "
        f"{s.resolves} solves in {s.solve_time_s:.3f} s"
    )
    return "\n".join(lines)


def plot_simulation(result: SimulationResult, path: str | Path) -> None:
    """Two panels over time: each app's compute share (stacked) and its accuracy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [a.name for a in result.apps]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 6), sharex=True)
    colors = {name: plt.cm.tab20(i % 20) for i, name in enumerate(names)}
    for segment in result.timeline:
        base = 0.0
        for part in segment.apps:
            color = colors[part.name]
            top.fill_between(
                [segment.start_s, segment.end_s], base, base + part.share, color=color, lw=0
            )
            base += part.share
            if part.accuracy is not None:
                bottom.plot([segment.start_s, segment.end_s], [part.accuracy] * 2, color=color)
    top.set_ylabel("compute share")
    top.set_ylim(0, 1)
    bottom.set_ylabel("accuracy of descendant")
    bottom.set_xlabel("time (s)")
    method = f", {result.method}" if result.method else ""
    top.set_title(f"{result.policy}{method}, alpha {result.alpha:g}")
    if len(names) <= 12:
        handles = [plt.Rectangle((0, 0), 1, 1, color=colors[n]) for n in names]
        top.legend(handles, names, fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
