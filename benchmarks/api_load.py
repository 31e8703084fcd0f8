"""Load test of the REST API: K concurrent clients against a live `nestdnn serve` on loopback.

For each K (default 2, 8, 32) the clients send batch-1 frames (float32 .npy, each model's
input shape) over keep-alive connections to the registered apps (one app per model; client i
uses app i mod n); the same descendants are also run directly in this process (plain forward
passes, same thread count, the models in turn) for the ratio REST / direct. With several
models the daemon's scheduler decides how many frames of each it serves, so "direct" is the
rate at which direct forward passes would compute the same mix of frames (each model's frames
times its measured time per frame). Goal: REST >= 70% of direct at batch 1 (VGG-16 x0.25 on
28x28), no errors but documented 429s.

    .venv/bin/python benchmarks/api_load.py --models runs/models --model fmnist-vgg16
    .venv/bin/python benchmarks/api_load.py --models runs/models   # every model, mixed
    .venv/bin/python benchmarks/api_load.py --quick      # random weights, labelled

**Fairness on a shared 2-core machine.** Direct and REST runs alternate in short slices
(``--rounds`` pairs per K), so that a change in the background load hits both alike; the
throughputs are totals over all slices, and the per-round ratios are listed to show the
spread. Beside them: CPU per frame of the daemon (all its threads), of the direct run and of
the load generator, and the CPU the *other* processes of the machine used meanwhile (from
/proc/stat), in cores. The clients are asyncio coroutines speaking HTTP/1.1 on raw sockets
with prepared request bytes, so that the load generator costs as little as possible; it
still shares the two cores with the daemon (the direct run has no such competitor), which
can only lower REST's figure. On a device the apps are other processes that exist anyway,
so their CPU is reported but not charged to the daemon.

Results: a table on stdout and JSON + Markdown under runs/benchmarks/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import DaemonClient, npy_bytes  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from nestdnn.nested import load_descendant  # noqa: E402
from profiles.synthetic import (  # noqa: E402
    write_synthetic_nest,
    write_synthetic_profile,
)
from scheduler.daemon import ModelCatalogue  # noqa: E402

log = logging.getLogger("api_load")

ADMIN_TOKEN = "load-test-admin"  # the daemon's admin token: it also registers the apps
GOAL_RATIO = 0.70
DOCUMENTED_ERRORS = {"429"}  # dropped / queue full: documented answers under overload


@dataclass
class Target:
    """One registered app: its model, descendant, input shape and prepared request."""

    model: str
    app_id: str
    descendant: int
    shape: tuple[int, ...]
    request: bytes = field(repr=False)


@dataclass
class Slice:
    """One measured slice of REST or direct running."""

    seconds: float
    frames: int
    cpu_s: float  # the daemon's CPU (REST) or this process's (direct)
    client_cpu_s: float  # the load generator's CPU (REST only)
    others_cores: float  # CPU of the machine's other processes, in cores, meanwhile
    statuses: dict[str, int] = field(default_factory=dict)
    model_frames: dict[str, int] = field(default_factory=dict)  # frames per model
    model_seconds: dict[str, float] = field(default_factory=dict)  # forward time (direct)

    @property
    def throughput(self) -> float:
        return self.frames / self.seconds


def direct_rate(direct: list[Slice], mix: dict[str, int]) -> float:
    """Frames per second of direct forward passes computing ``mix`` (frames per model)."""
    per_frame = {m: sum(s.model_seconds[m] for s in direct) / sum(s.model_frames[m]
                                                                   for s in direct)
                 for m in mix}
    work = sum(n * per_frame[m] for m, n in mix.items())
    return sum(mix.values()) / work if work > 0 else 0.0


@dataclass
class LoadResult:
    """Rounds of direct and REST slices for one K."""

    clients: int
    rounds: int
    direct: list[Slice]
    rest: list[Slice]
    p50_ms: float | None
    p99_ms: float | None
    load_average_1m: float

    @property
    def rest_throughput(self) -> float:
        return sum(s.frames for s in self.rest) / sum(s.seconds for s in self.rest)

    @property
    def rest_mix(self) -> dict[str, int]:
        mix: dict[str, int] = {}
        for s in self.rest:
            for model, n in s.model_frames.items():
                mix[model] = mix.get(model, 0) + n
        return mix

    @property
    def direct_throughput(self) -> float:
        """Direct forward passes' rate for the frames REST served (see the module docstring)."""
        return direct_rate(self.direct, self.rest_mix or {m: 1 for m in
                                                          self.direct[0].model_frames})

    @property
    def ratio(self) -> float:
        return self.rest_throughput / self.direct_throughput

    @property
    def round_ratios(self) -> list[float]:
        return [r.throughput / direct_rate([d], r.model_frames or d.model_frames)
                for r, d in zip(self.rest, self.direct, strict=True)]

    @property
    def errors(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for s in self.rest:
            for status, n in s.statuses.items():
                if status != "200":
                    counts[status] = counts.get(status, 0) + n
        return dict(sorted(counts.items()))

    @property
    def undocumented_errors(self) -> int:
        return sum(n for s, n in self.errors.items() if s not in DOCUMENTED_ERRORS)

    def per_frame_ms(self, slices: list[Slice], attribute: str) -> float | None:
        frames = sum(s.frames for s in slices)
        return 1000.0 * sum(getattr(s, attribute) for s in slices) / frames if frames else None

    def others_cores(self, slices: list[Slice]) -> float:
        return statistics.fmean(s.others_cores for s in slices)

    def summary(self) -> dict[str, object]:
        return {
            "clients": self.clients,
            "rest_frames_per_s": self.rest_throughput,
            "rest_frames_per_model": self.rest_mix,
            "direct_frames_per_s": self.direct_throughput,
            "ratio_to_direct": self.ratio,
            "round_ratios": self.round_ratios,
            "rest_p50_ms": self.p50_ms,
            "rest_p99_ms": self.p99_ms,
            "errors": self.errors,
            "undocumented_errors": self.undocumented_errors,
            "server_cpu_ms_per_frame": self.per_frame_ms(self.rest, "cpu_s"),
            "client_cpu_ms_per_frame": self.per_frame_ms(self.rest, "client_cpu_s"),
            "direct_cpu_ms_per_frame": self.per_frame_ms(self.direct, "cpu_s"),
            "other_processes_cores_rest": self.others_cores(self.rest),
            "other_processes_cores_direct": self.others_cores(self.direct),
            "load_average_1m": self.load_average_1m,
        }


def free_port() -> int:
    """A TCP port on loopback that is free right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(
    models: Path, state: Path, port: int, args: argparse.Namespace, log_path: Path
) -> ServeProcess:
    """Start `nestdnn serve` in a subprocess and wait until /healthz answers."""
    options = ["--memory-budget", args.memory_budget, "--threads", str(args.threads)]
    options += ["--queue-size", str(args.queue_size)]
    server = ServeProcess(
        models, state, port, log_path, admin_token=ADMIN_TOKEN, extra_args=options
    )
    return server.start()


def request_bytes(port: int, app_id: str, token: str, body: bytes) -> bytes:
    """A complete keep-alive infer request, prepared once."""
    head = (
        f"POST /v1/apps/{app_id}/infer?top_k=1 HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/x-npy\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length; returns its status."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = next(
        int(line.split(":", 1)[1])
        for line in lines[1:]
        if line.lower().startswith("content-length:")
    )
    await reader.readexactly(length)
    return status


async def client(
    port: int,
    request: bytes,
    start: float,
    stop: float,
    latencies: list[float],
    statuses: dict[int, int],
    done: Counter[str] | None = None,
    model: str = "",
) -> None:
    """Send requests back to back until `stop`; record those started after `start` (their
    statuses, OK latencies, and OK answers per model in ``done``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while (t0 := time.perf_counter()) < stop:
            writer.write(request)
            status = await read_response(reader)
            t1 = time.perf_counter()
            if t0 >= start:
                statuses[status] = statuses.get(status, 0) + 1
                if status == 200:
                    latencies.append(t1 - t0)
                    if done is not None:
                        done[model] += 1
    finally:
        writer.close()


class CpuMeter:
    """CPU seconds of the daemon, of this process and of the whole machine, between marks."""

    def __init__(self, server_pid: int | None) -> None:
        self.server_pid = server_pid
        self._start = self._read()

    def _read(self) -> tuple[float, float, float, float]:
        server = process_cpu_s(self.server_pid) if self.server_pid else 0.0
        return time.perf_counter(), server, time.process_time(), machine_busy_cpu_s()

    def stop(self) -> tuple[float, float, float, float]:
        """Seconds elapsed, daemon CPU, this process's CPU, other processes' CPU (cores)."""
        end = self._read()
        wall, server, own, machine = (b - a for a, b in zip(self._start, end, strict=True))
        others = max(0.0, machine - server - own)
        return wall, server, own, others / wall


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_busy_cpu_s() -> float:
    """CPU seconds all processors spent busy so far (/proc/stat, all but idle and iowait)."""
    values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = values[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


async def rest_slice(port: int, targets: list[Target], k: int, warmup_s: float, seconds: float,
                     pid: int, latencies: list[float]) -> Slice:
    """K clients (client i on target i mod n) for warm-up + ``seconds``."""
    statuses: dict[int, int] = {}
    done: Counter[str] = Counter()
    start = time.perf_counter() + warmup_s
    stop = start + seconds
    gathered = asyncio.gather(*[client(port, t.request, start, stop, latencies, statuses, done,
                                       t.model)
                                for t in (targets[i % len(targets)] for i in range(k))])
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    meter = CpuMeter(pid)
    await gathered
    wall, server, own, others = meter.stop()
    return Slice(wall, statuses.get(200, 0), server, own, others,
                 {str(s): n for s, n in sorted(statuses.items())}, dict(done))


def direct_slice(targets: list[Target], models: list[torch.nn.Module],
                 frames: list[torch.Tensor], seconds: float) -> Slice:
    """Batch-1 forward passes, the models in turn, for ``seconds`` (after a short warm-up)."""
    counts = dict.fromkeys((t.model for t in targets), 0)
    spent = dict.fromkeys(counts, 0.0)
    with torch.inference_mode():
        for _ in range(5):
            for model, frame in zip(models, frames, strict=True):
                model(frame)
        meter = CpuMeter(None)
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            for target, model, frame in zip(targets, models, frames, strict=True):
                t0 = time.perf_counter()
                model(frame)
                spent[target.model] += time.perf_counter() - t0
                counts[target.model] += 1
        wall, _, own, others = meter.stop()
    return Slice(wall, sum(counts.values()), own, 0.0, others, {}, counts, spent)


def measure(k: int, targets: list[Target], models: list[torch.nn.Module],
            frames: list[torch.Tensor], port: int, pid: int, args: argparse.Namespace
            ) -> LoadResult:
    """``args.rounds`` pairs of slices (direct, then REST), each ``duration / rounds`` s."""
    seconds = args.duration / args.rounds
    latencies: list[float] = []
    direct, rest = [], []
    for _ in range(args.rounds):
        direct.append(direct_slice(targets, models, frames, seconds))
        rest.append(asyncio.run(rest_slice(port, targets, k, args.warmup, seconds, pid,
                                           latencies)))
    ms = np.array(latencies) * 1000.0
    return LoadResult(
        clients=k, rounds=args.rounds, direct=direct, rest=rest,
        p50_ms=float(np.percentile(ms, 50)) if len(ms) else None,
        p99_ms=float(np.percentile(ms, 99)) if len(ms) else None,
        load_average_1m=os.getloadavg()[0],
    )


def table(results: list[LoadResult], label: str, targets: list[Target]) -> str:
    """The results as a Markdown table."""
    served = ", ".join(f"{t.model} d{t.descendant}" for t in targets)
    rows = [
        f"model: {label}; apps: {served}",
        "",
        "| clients | REST frames/s | direct frames/s | REST / direct | per round | REST p50 ms |"
        " REST p99 ms | errors | server CPU ms/frame | direct CPU ms/frame | client CPU"
        " ms/frame | other processes, cores (REST / direct) | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r.summary()
        errors = ", ".join(f"{n}x{status}" for status, n in r.errors.items()) or "0"
        rounds = " ".join(f"{100 * x:.0f}" for x in r.round_ratios)
        rows.append(
            f"| {r.clients} | {r.rest_throughput:.1f} | {r.direct_throughput:.1f} | "
            f"{100 * r.ratio:.0f}% | {rounds} | {_num(r.p50_ms)} | {_num(r.p99_ms)} | {errors} | "
            f"{_num(s['server_cpu_ms_per_frame'])} | {_num(s['direct_cpu_ms_per_frame'])} | "
            f"{_num(s['client_cpu_ms_per_frame'])} | {r.others_cores(r.rest):.2f} / "
            f"{r.others_cores(r.direct):.2f} | {r.load_average_1m:.1f} |"
        )
    met = all(r.ratio >= GOAL_RATIO for r in results)
    clean = all(r.undocumented_errors == 0 for r in results)
    rows += ["", f"goal REST >= {100 * GOAL_RATIO:.0f}% of direct: {'met' if met else 'NOT met'}"
             f" for every K; errors other than 429: {'none' if clean else 'SOME'}"]
    return "\n".join(rows)


def _num(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def quick_model(models: Path) -> Path:
    """A random-weight VGG-16 (descendants x0.0625, x0.125, x0.25) on 1x28x28, profiled here."""
    models.mkdir(parents=True)
    nest = models / "quick.nest"
    write_synthetic_nest(
        nest, arch="vgg16", in_channels=1, input_size=28, num_classes=10,
        width_mults=(0.0625, 0.125, 0.25), accuracies=(0.80, 0.88, 0.92),
    )  # fmt: skip
    write_synthetic_profile(nest)
    return models


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, help="models directory served by the daemon")
    parser.add_argument(
        "--model", help="model name(s), comma-separated (NAME.nest in --models); default: all"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="serve a random-weight VGG-16 x0.25 on 28x28 instead (labelled synthetic)",
    )
    parser.add_argument("--clients", default="2,8,32", help="comma-separated K values")
    parser.add_argument("--duration", type=float, default=12.0,
                        help="measured seconds per K and mode (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="alternating direct / REST slices per K")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unmeasured seconds before each REST slice")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (both modes)")
    parser.add_argument(
        "--queue-size",
        type=int,
        default=32,
        help="daemon's per-app queue (>= K avoids drop-oldest 429s)",
    )
    parser.add_argument("--memory-budget", default="64MiB")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")
    args = parser.parse_args(argv)
    if args.quick == (args.models is not None):
        parser.error("give --models DIR [--model NAME[,NAME...]], or --quick")
    if args.rounds < 1 or args.duration <= 0:
        parser.error("--rounds must be >= 1 and --duration > 0")
    return args


def register_targets(port: int, models_dir: Path, names: list[str]) -> list[Target]:
    """One app per model (loose latency target: each gets the descendant the plan gives)."""
    catalogue = ModelCatalogue.load(models_dir)
    missing = [n for n in names if n not in catalogue.entries]
    if missing:
        raise SystemExit(f"not servable in {models_dir}: {', '.join(missing)}")
    targets = []
    with DaemonClient(f"http://127.0.0.1:{port}", admin_token=ADMIN_TOKEN) as api:
        apps = [(name, api.register(name, target_latency_ms=1000, name=f"load-{name}"))
                for name in names]
        descendants = {a["id"]: a["descendant"] for a in api.apps()}  # after every re-plan
    rng = np.random.default_rng(0)
    for name, app in apps:
        shape = catalogue.entries[name].input_shape
        frame = rng.standard_normal(shape).astype(np.float32)
        targets.append(Target(name, app.id, descendants[app.id], shape,
                              request_bytes(port, app.id, app.token, npy_bytes(frame))))
    return targets


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="nestdnn-load-") as tmp:
        work = Path(tmp)
        if args.quick:
            models_dir, names = quick_model(work / "models"), ["quick"]
            label = (
                "quick: VGG-16 x0.25 on 1x28x28 with RANDOM weights (synthetic: the goal model's"
                " compute, not its accuracy)"
            )
        else:
            models_dir = args.models
            names = (args.model.split(",") if args.model
                     else sorted(ModelCatalogue.load(models_dir).entries))
            label = f"{', '.join(names)} from {models_dir}"
        port = free_port()
        proc = start_server(models_dir, work / "state", port, args, args.out / "api_load.serve.log")
        try:
            targets = register_targets(port, models_dir, names)
            for t in targets:
                log.info("app %s: %s descendant %d", t.app_id, t.model, t.descendant)
            models = [load_descendant(models_dir / f"{t.model}.nest", t.descendant)
                      for t in targets]
            rng = np.random.default_rng(0)
            frames = [torch.from_numpy(rng.standard_normal(t.shape).astype(np.float32))[None]
                      for t in targets]
            results = []
            for k in (int(k) for k in args.clients.split(",")):
                results.append(measure(k, targets, models, frames, port, proc.pid, args))
                log.info("K=%d: REST %.1f/s, direct %.1f/s (%.0f%%)", k,
                         results[-1].rest_throughput, results[-1].direct_throughput,
                         100 * results[-1].ratio)
        finally:
            proc.stop()
    text = table(results, label, targets)
    print(text)
    report = {
        "benchmark": "api_load",
        "label": label,
        "quick": args.quick,
        "models": [{"model": t.model, "app": t.app_id, "descendant": t.descendant,
                    "input_shape": list(t.shape)} for t in targets],
        "threads": args.threads,
        "queue_size": args.queue_size,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "goal_ratio": GOAL_RATIO,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "results": [r.summary() | {"direct_slices": [asdict(s) for s in r.direct],
                                   "rest_slices": [asdict(s) for s in r.rest]}
                    for r in results],
    }
    stem = "api_load_quick" if args.quick else "api_load_" + "_".join(names)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text + "\n")
    log.info("wrote %s", args.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
