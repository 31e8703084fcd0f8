"""Load test of the REST API: K concurrent clients against a live `nestdnn serve` on loopback.

For each K (default 2, 8, 32) the clients send batch-1 frames (float32 .npy, the model's input
shape) to one registered app for a fixed duration over keep-alive connections; the table gives
throughput, p50/p99 latency and error counts by status. The same descendant is also run
directly in-process (plain forward passes, same thread count) for the ratio REST / direct.
Goal: REST >= 70% of direct at batch 1 (VGG-16 x0.25 on 28x28), no errors but documented 429s.

    .venv/bin/python benchmarks/api_load.py --models runs/models --model fmnist-vgg16
    .venv/bin/python benchmarks/api_load.py --quick      # random weights, labelled

The clients are asyncio coroutines speaking HTTP/1.1 on raw sockets (prepared request bytes),
so that the load generator costs the shared CPU as little as possible. Results: a table on
stdout and JSON under runs/benchmarks/.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import socket
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import DaemonClient, npy_bytes  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from nestdnn.nestfile import load_descendant, read_manifest  # noqa: E402
from scheduler.synthetic_models import (  # noqa: E402
    write_synthetic_nest,
    write_synthetic_profile,
)

log = logging.getLogger("api_load")


@dataclass
class Direct:
    """Batch-1 forward passes in this process (no HTTP, no runtime)."""

    throughput_per_s: float
    p50_ms: float
    p99_ms: float
    cpu_ms_per_frame: float


@dataclass
class LoadResult:
    """One run of K clients, with the direct run measured just before it."""

    clients: int
    duration_s: float
    ok: int
    throughput_per_s: float
    p50_ms: float | None
    p99_ms: float | None
    errors: dict[str, int]
    server_cpu_ms_per_frame: float | None
    direct: Direct
    load_average_1m: float

    @property
    def ratio(self) -> float:
        return self.throughput_per_s / self.direct.throughput_per_s


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
        models, state, port, log_path, admin_token="load-test-admin", extra_args=options
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
) -> None:
    """Send requests back to back until `stop`; record those started after `start`."""
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
    finally:
        writer.close()


async def run_clients(
    port: int, request: bytes, k: int, warmup_s: float, duration_s: float, server_pid: int
) -> tuple[list[float], dict[int, int], float]:
    """K clients for warm-up + duration: OK latencies, statuses and server CPU seconds."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    start = time.perf_counter() + warmup_s
    stop = start + duration_s
    tasks = [client(port, request, start, stop, latencies, statuses) for _ in range(k)]
    gathered = asyncio.gather(*tasks)
    await asyncio.sleep(warmup_s)
    cpu_before = process_cpu_s(server_pid)
    await gathered
    return latencies, statuses, process_cpu_s(server_pid) - cpu_before


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def direct_run(model: torch.nn.Module, frame: torch.Tensor, duration_s: float) -> Direct:
    """Batch-1 forward passes for `duration_s` (after a short warm-up)."""
    times = []
    with torch.inference_mode():
        for _ in range(10):
            model(frame)
        cpu_before = time.process_time()
        stop = time.perf_counter() + duration_s
        while (t0 := time.perf_counter()) < stop:
            model(frame)
            times.append(time.perf_counter() - t0)
    ms = np.array(times) * 1000.0
    return Direct(
        throughput_per_s=len(times) / float(np.sum(times)),
        p50_ms=float(np.percentile(ms, 50)),
        p99_ms=float(np.percentile(ms, 99)),
        cpu_ms_per_frame=(time.process_time() - cpu_before) * 1000.0 / len(times),
    )


def measure(
    k: int, model: torch.nn.Module, frame: torch.Tensor, request: bytes, port: int,
    pid: int, args: argparse.Namespace,
) -> LoadResult:  # fmt: skip
    """The direct run, then K clients against the daemon, back to back."""
    direct = direct_run(model, frame, args.duration)
    latencies, statuses, cpu_s = asyncio.run(
        run_clients(port, request, k, args.warmup, args.duration, pid)
    )
    ok = statuses.pop(200, 0)
    ms = np.array(latencies) * 1000.0
    return LoadResult(
        clients=k,
        duration_s=args.duration,
        ok=ok,
        throughput_per_s=ok / args.duration,
        p50_ms=float(np.percentile(ms, 50)) if ok else None,
        p99_ms=float(np.percentile(ms, 99)) if ok else None,
        errors={str(s): n for s, n in sorted(statuses.items())},
        server_cpu_ms_per_frame=cpu_s * 1000.0 / ok if ok else None,
        direct=direct,
        load_average_1m=os.getloadavg()[0],
    )


def table(results: list[LoadResult], label: str) -> str:
    """The results as a Markdown table (each K with the direct run measured just before)."""
    rows = [
        f"model: {label}",
        "",
        "| clients | REST frames/s | direct frames/s | REST / direct | REST p50 ms | "
        "REST p99 ms | errors | server CPU ms/frame | direct CPU ms/frame | load 1m |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        errors = ", ".join(f"{n}x{s}" for s, n in r.errors.items()) or "0"
        rows.append(
            f"| {r.clients} | {r.throughput_per_s:.1f} | {r.direct.throughput_per_s:.1f} | "
            f"{100 * r.ratio:.0f}% | {_num(r.p50_ms)} | {_num(r.p99_ms)} | {errors} | "
            f"{_num(r.server_cpu_ms_per_frame)} | {r.direct.cpu_ms_per_frame:.2f} | "
            f"{r.load_average_1m:.1f} |"
        )
    return "\n".join(rows)


def _num(value: float | None) -> str:
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
    parser.add_argument("--model", help="model name (NAME.nest in --models)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="serve a random-weight VGG-16 x0.25 on 28x28 instead (labelled synthetic)",
    )
    parser.add_argument("--clients", default="2,8,32", help="comma-separated K values")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per K")
    parser.add_argument("--warmup", type=float, default=2.0, help="unmeasured seconds per K")
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
    if not args.quick and not (args.models and args.model):
        parser.error("give --models DIR --model NAME, or --quick")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="nestdnn-load-") as tmp:
        work = Path(tmp)
        if args.quick:
            models, name = quick_model(work / "models"), "quick"
            label = (
                "quick: VGG-16 x0.25 on 1x28x28 with RANDOM weights (synthetic: the goal model's"
                " compute, not its accuracy)"
            )
        else:
            models, name = args.models, args.model
            label = f"{name} from {models}"
        nest = models / f"{name}.nest"
        arch = read_manifest(nest).arch
        shape = (arch.in_channels, arch.input_size, arch.input_size)
        port = free_port()
        proc = start_server(models, work / "state", port, args, args.out / "api_load.serve.log")
        try:
            with DaemonClient(f"http://127.0.0.1:{port}") as api:
                app = api.register(name, target_latency_ms=1000, name="load")
            log.info("app %s on descendant %d", app.id, app.descendant)
            model = load_descendant(nest, app.descendant)
            frame = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
            request = request_bytes(port, app.id, app.token, npy_bytes(frame))
            results = []
            for k in (int(k) for k in args.clients.split(",")):
                results.append(
                    measure(k, model, torch.from_numpy(frame)[None], request, port, proc.pid, args)
                )
                log.info(
                    "K=%d: REST %.1f/s, direct %.1f/s",
                    k,
                    results[-1].throughput_per_s,
                    results[-1].direct.throughput_per_s,
                )
        finally:
            proc.stop()
    text = table(results, label)
    print(text)
    report = {
        "benchmark": "api_load",
        "label": label,
        "quick": args.quick,
        "model": name,
        "descendant": app.descendant,
        "input_shape": list(shape),
        "threads": args.threads,
        "queue_size": args.queue_size,
        "duration_s": args.duration,
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform()},
        "results": [asdict(r) | {"ratio_to_direct": r.ratio} for r in results],
    }
    stem = "api_load_quick" if args.quick else f"api_load_{name}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text + "\n")
    log.info("wrote %s", args.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
