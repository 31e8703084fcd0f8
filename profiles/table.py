"""A profile as a text table: one row per descendant, then how and where it was measured."""

from __future__ import annotations

from profiles.schema import Profile

MIB = 1 << 20
BUSY_PRESSURE = 0.05  # CPU pressure above which latencies may be inflated by other processes


def format_table(profile: Profile) -> str:
    """The profile as a text table: one row per descendant, latency/RSS columns per backend."""
    header = ["k", "widths", "params", "MACs", "weights MiB", "acc %"]
    for b in profile.backends:
        header += [f"{b} ms", f"{b} p90 ms", f"{b} RSS MiB"]
    rows = [header]
    for d in profile.descendants:
        row = [
            str(d.index),
            str(d.widths_total),
            f"{d.params:,}",
            f"{d.macs:,}",
            f"{d.bytes / MIB:.2f}",
            f"{100 * d.accuracy:.2f}",
        ]
        for b in profile.backends:
            f = d.backends[b]
            row += [
                f"{1e3 * f.latency.median_s:.3f}",
                f"{1e3 * f.latency.p90_s:.3f}",
                f"{f.memory.delta_bytes / MIB:.1f}",
            ]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join([*lines, *_footer(profile)])


def _footer(profile: Profile) -> list[str]:
    """Model, device, data and measuring conditions under the table."""
    dev, first = profile.device, profile.descendants[0].backends[profile.backends[0]].latency
    lines = [
        f"model {profile.model.file} ({profile.model.arch}, sha256 {profile.model.sha256[:12]}),"
        f" {profile.dataset.name} test split of {profile.dataset.test_size}",
        f"device {dev.cpu_model}, {dev.cores} cores, {dev.threads} thread(s); {dev.os};"
        f" torch {dev.torch}, {dev.tflite_runtime or 'no TFLite runtime'}",
        f"latency: {first.warmup} warm-up + {first.runs} timed runs in {first.rounds} rounds;"
        f" RSS = peak minus baseline of a fresh process; measured {profile.created:%Y-%m-%d %H:%M}"
        " UTC",
    ]
    for backend, c in profile.conditions.items():
        pressure = "n/a" if c.cpu_pressure is None else f"{c.cpu_pressure:.0%}"
        line = (
            f"{backend}: measured in {c.duration_s:.1f} s, CPU pressure {pressure},"
            f" load {c.load_average:.2f}"
        )
        if c.reference is not None:
            line += f", reference kernel {1e3 * c.reference.median_s:.3f} ms"
        if c.cpu_pressure is not None and c.cpu_pressure > BUSY_PRESSURE:
            line += " (other processes competed for the CPU: latencies may be inflated)"
        lines.append(line)
    return lines
