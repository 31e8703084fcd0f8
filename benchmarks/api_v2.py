"""The Open Inference Protocol against /v1 and direct inference, on the default backend.

One live `nestdnn serve` (onnxruntime, one app) and, for each K of concurrent clients (default
1, 8, 16), alternating slices of:

- ``direct``: the app's descendant run in this process on the same backend (`LoadedModel.logits`
  of one frame, one thread), what the daemon could do with no HTTP at all;
- ``v1``: ``POST /v1/apps/{id}/infer`` with a float32 .npy frame (raw-socket keep-alive clients
  with prepared requests, as `benchmarks/api_load.py`);
- ``v2-json``: ``POST /v2/models/{model}/infer`` with the frame as JSON ``data`` (raw sockets,
  prepared request);
- ``v2-binary``: the same with `tritonclient.http.aio` (what its users run: binary tensors in
  and out, the request built and the answer parsed by tritonclient for every frame);
- ``v2-binary-x8``: the same with 8 frames (rows) per request, the batch a client that has
  several frames at once would send.

All but the last send one frame per request; throughputs are frames per second. Reported per
K and mode: throughput (frames/s, totals over the rounds; the per-round ratios to direct
show the spread), p50/p99 latency of a request, the daemon's CPU per frame (its process CPU
time, all threads, over the frames answered: per request but for the x8 mode) and the load
generator's. Goal: v2-binary >= 70 % of direct at K = 8. On a shared 2-core machine the load
generator competes with the daemon (the direct run has no competitor); see docs/api.md.

    .venv/bin/python benchmarks/api_v2.py --quick             # VGG-16 x0.25, random weights
    .venv/bin/python benchmarks/api_v2.py --models DIR --model NAME
    .venv/bin/python benchmarks/api_v2.py --quick --perf-analyzer benchmarks/perf_analyzer.sh

With ``--perf-analyzer`` Triton's perf_analyzer (`make perf-tools`) then runs against the same
daemon and app: ``perf_analyzer -m NAME -u 127.0.0.1:PORT -i http --concurrency-range 1:16
-H "Authorization: Bearer TOKEN"`` (plus ``-f`` for its CSV of percentiles); its output, its
figures per concurrency and the daemon's CPU per request meanwhile go into the report.

Writes runs/benchmarks/api_v2_<name>.json and .md (and perf_analyzer_<name>.txt/.csv).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tritonclient.http.aio as triton

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from api_load import (  # noqa: E402
    CpuMeter,
    client,
    free_port,
    process_cpu_s,
    quick_model,
    start_server,
)

from api.client import DaemonClient, npy_bytes  # noqa: E402
from scheduler.daemon import ModelCatalogue, make_backend  # noqa: E402

log = logging.getLogger("api_v2")
ADMIN_TOKEN = "load-test-admin"  # api_load.start_server's daemon token
MODES = ("direct", "v1", "v2-json", "v2-binary", "v2-binary-x8")
BATCH_ROWS = 8
GOAL_RATIO, GOAL_MODE, GOAL_CLIENTS = 0.70, "v2-binary", 8


@dataclass
class Run:
    """One measured slice of one mode."""

    mode: str
    clients: int
    seconds: float
    frames: int
    server_cpu_s: float
    client_cpu_s: float
    others_cores: float
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    threads_cpu_s: dict[str, float] = field(default_factory=dict)
    """The daemon's CPU by thread: the event loop, the others (the inference worker)."""

    @property
    def throughput(self) -> float:
        return self.frames / self.seconds


@dataclass(frozen=True)
class Setup:
    """What every slice needs: the daemon, the app and the prepared requests."""

    port: int
    pid: int
    model: str
    token: str
    frame: np.ndarray
    v1_request: bytes
    v2_json_request: bytes


def threads_cpu_s(pid: int) -> dict[str, float]:
    """CPU seconds so far of the daemon's event loop (its main thread) and of its other threads
    (the inference worker, and decode slots and anyio workers, idle on the infer paths here;
    Python does not name OS threads, so they are told apart from the main thread only)."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {"loop": 0.0, "threads": 0.0}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # the thread ended
            continue
        out["loop" if task.name == str(pid) else "threads"] += (
            int(fields[11]) + int(fields[12])) / tick
    return out


def _since(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    return {kind: after[kind] - before[kind] for kind in after}


def raw_request(port: int, path: str, token: str, body: bytes, kind: str) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: {kind}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


def prepare(port: int, pid: int, model: str, shape: tuple[int, ...]) -> Setup:
    with DaemonClient(f"http://127.0.0.1:{port}", admin_token=ADMIN_TOKEN) as api:
        app = api.register(model, target_latency_ms=1000, name="bench-v2")
    frame = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    v2_body = json.dumps({"inputs": [{"name": "input", "shape": [1, *shape], "datatype": "FP32",
                                      "data": frame.ravel().tolist()}],
                          "outputs": [{"name": "probabilities"}]}).encode()
    return Setup(
        port, pid, model, app.token, frame,
        raw_request(port, f"/v1/apps/{app.id}/infer?top_k=1", app.token, npy_bytes(frame),
                    "application/x-npy"),
        raw_request(port, f"/v2/models/{model}/infer", app.token, v2_body, "application/json"),
    )


def direct_run(model, frame: np.ndarray, seconds: float) -> Run:
    """Batch-1 forward passes on the backend, in this process, for ``seconds``."""
    batch = frame[None]
    for _ in range(5):
        model.logits(batch)
    latencies = []
    meter = CpuMeter(None)
    stop = time.perf_counter() + seconds
    while (t0 := time.perf_counter()) < stop:
        model.logits(batch)
        latencies.append((time.perf_counter() - t0) * 1000)
    wall, _, own, others = meter.stop()
    return Run("direct", 1, wall, len(latencies), 0.0, own, others, 0, latencies)


async def raw_run(setup: Setup, request: bytes, mode: str, k: int, warmup_s: float,
                  seconds: float) -> Run:
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    start = time.perf_counter() + warmup_s
    stop = start + seconds
    gathered = asyncio.gather(*[client(setup.port, request, start, stop, latencies, statuses)
                                for _ in range(k)])
    await asyncio.sleep(max(0.0, start - time.perf_counter()))
    meter, threads = CpuMeter(setup.pid), threads_cpu_s(setup.pid)
    await gathered
    wall, server, own, others = meter.stop()
    errors = sum(n for s, n in statuses.items() if s != 200)
    return Run(mode, k, wall, statuses.get(200, 0), server, own, others, errors,
               [x * 1000 for x in latencies], _since(threads, threads_cpu_s(setup.pid)))


async def triton_run(setup: Setup, k: int, warmup_s: float, seconds: float, rows: int = 1
                     ) -> Run:
    """K tritonclient.http.aio callers, binary tensors in and out, ``rows`` frames each."""
    batch = np.repeat(setup.frame[None], rows, axis=0)
    latencies: list[float] = []
    frames: list[int] = []
    errors = 0
    headers = {"Authorization": f"Bearer {setup.token}"}
    start = time.perf_counter() + warmup_s
    stop = start + seconds
    tc = triton.InferenceServerClient(f"127.0.0.1:{setup.port}", conn_limit=k)

    async def caller() -> None:
        nonlocal errors
        while (t0 := time.perf_counter()) < stop:
            tensor = triton.InferInput("input", list(batch.shape), "FP32")
            tensor.set_data_from_numpy(batch, binary_data=True)
            wanted = [triton.InferRequestedOutput("probabilities", binary_data=True)]
            try:
                result = await tc.infer(setup.model, [tensor], outputs=wanted, headers=headers)
                result.as_numpy("probabilities")
            except triton.InferenceServerException:
                if t0 >= start:
                    errors += 1
                continue
            if t0 >= start:
                latencies.append((time.perf_counter() - t0) * 1000)
                frames.append(rows)

    try:
        gathered = asyncio.gather(*[caller() for _ in range(k)])
        await asyncio.sleep(max(0.0, start - time.perf_counter()))
        meter, threads = CpuMeter(setup.pid), threads_cpu_s(setup.pid)
        await gathered
        wall, server, own, others = meter.stop()
        used = _since(threads, threads_cpu_s(setup.pid))
    finally:
        await tc.close()
    mode = "v2-binary" if rows == 1 else f"v2-binary-x{rows}"
    return Run(mode, k, wall, sum(frames), server, own, others, errors, latencies, used)


def measure(setup: Setup, model, k: int, args: argparse.Namespace) -> list[Run]:
    """``args.rounds`` rounds of every mode in turn, each ``duration / rounds`` seconds."""
    seconds = args.duration / args.rounds
    runs = []
    for _ in range(args.rounds):
        runs.append(direct_run(model, setup.frame, seconds))
        runs.append(asyncio.run(raw_run(setup, setup.v1_request, "v1", k, args.warmup, seconds)))
        runs.append(asyncio.run(raw_run(setup, setup.v2_json_request, "v2-json", k,
                                        args.warmup, seconds)))
        runs.append(asyncio.run(triton_run(setup, k, args.warmup, seconds)))
        runs.append(asyncio.run(triton_run(setup, k, args.warmup, seconds, BATCH_ROWS)))
    return runs


def summary(runs: list[Run]) -> dict[str, dict[str, object]]:
    """Per mode: throughput, per-round ratios to direct, p50/p99, CPU per request."""
    direct = [r for r in runs if r.mode == "direct"]
    out = {}
    for mode in MODES:
        mine = [r for r in runs if r.mode == mode]
        frames = sum(r.frames for r in mine)
        latencies = np.array([x for r in mine for x in r.latencies_ms])
        throughput = frames / sum(r.seconds for r in mine)
        out[mode] = {
            "frames_per_s": throughput,
            "ratio_to_direct": throughput / (sum(r.frames for r in direct)
                                             / sum(r.seconds for r in direct)),
            "round_ratios": [r.throughput / d.throughput for r, d in zip(mine, direct,
                                                                          strict=True)],
            "p50_ms": float(np.percentile(latencies, 50)) if len(latencies) else None,
            "p99_ms": float(np.percentile(latencies, 99)) if len(latencies) else None,
            "errors": sum(r.errors for r in mine),
            "server_cpu_ms_per_frame": (1000 * sum(r.server_cpu_s for r in mine) / frames
                                        if frames and mode != "direct" else None),
            "client_cpu_ms_per_frame": 1000 * sum(r.client_cpu_s for r in mine) / frames
            if frames else None,
            "daemon_threads_cpu_ms_per_frame": {
                kind: 1000 * sum(r.threads_cpu_s.get(kind, 0.0) for r in mine) / frames
                for kind in ("loop", "threads")} if frames and mode != "direct" else None,
            "other_processes_cores": statistics.fmean(r.others_cores for r in mine),
        }
    return out


def perf_analyzer(tool: Path, setup: Setup, out: Path, extra: list[str]) -> dict[str, object]:
    """Run perf_analyzer against the daemon's app; its figures per concurrency (from its CSV),
    its exit status, and the daemon's CPU per request it answered meanwhile."""
    csv_path = out / f"perf_analyzer_{setup.model}.csv"
    text_path = csv_path.with_suffix(".txt")
    command = [str(tool), "-m", setup.model, "-u", f"127.0.0.1:{setup.port}", "-i", "http",
               "--concurrency-range", "1:16", "-H", f"Authorization: Bearer {setup.token}",
               *extra, "-f", str(csv_path)]
    url = f"http://127.0.0.1:{setup.port}/v2/models/{setup.model}/stats"
    before, cpu_before = _answered(url), process_cpu_s(setup.pid)
    done = subprocess.run(command, capture_output=True, text=True)
    answered, cpu = _answered(url) - before, process_cpu_s(setup.pid) - cpu_before
    text_path.write_text(done.stdout + done.stderr)
    rows = []
    if done.returncode == 0 and csv_path.exists():
        header, *lines = csv_path.read_text().strip().splitlines()
        names = header.split(",")
        for line in lines:
            row = dict(zip(names, line.split(","), strict=False))
            rows.append({"concurrency": int(row["Concurrency"]),
                         "infer_per_s": float(row["Inferences/Second"]),
                         "p50_ms": int(row["p50 latency"]) / 1000,
                         "p99_ms": int(row["p99 latency"]) / 1000})
    rows.sort(key=lambda row: row["concurrency"])  # its CSV is sorted by throughput
    return {"command": [c if not c.startswith("Authorization") else "Authorization: Bearer TOKEN"
                        for c in command], "returncode": done.returncode, "rows": rows,
            "requests_answered": answered,
            "daemon_cpu_ms_per_request": 1000 * cpu / answered if answered else None}


def _answered(stats_url: str) -> int:
    """Requests the daemon answered successfully so far (all versions, /v2 statistics)."""
    with DaemonClient(stats_url.split("/v2/")[0]) as api:
        stats = api.http.get(stats_url).json()["model_stats"]
    return sum(s["inference_stats"]["success"]["count"] for s in stats)


def perf_table(report: dict[str, object]) -> str:
    rows = ["perf_analyzer (v2 binary, random UINT8 frames, sync clients): exit status"
            f" {report['returncode']}, daemon CPU"
            f" {_num(report['daemon_cpu_ms_per_request'])} ms/request", "",
            "| concurrency | infer/s | p50 ms | p99 ms |", "|---|---|---|---|"]
    rows += [f"| {r['concurrency']} | {r['infer_per_s']:.1f} | {r['p50_ms']:.2f} |"
             f" {r['p99_ms']:.2f} |" for r in report["rows"]]
    return "\n".join(rows)


def table(results: dict[int, dict[str, dict[str, object]]], label: str) -> str:
    rows = [
        f"model: {label}",
        "",
        "| clients | mode | frames/s | / direct | per round | p50 ms | p99 ms | errors |"
        " daemon CPU ms/frame (loop / worker) | client CPU ms/frame | other processes, cores |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, modes in results.items():
        for mode, s in modes.items():
            rounds = " ".join(f"{100 * x:.0f}" for x in s["round_ratios"])
            rows.append(
                f"| {k} | {mode} | {s['frames_per_s']:.1f} | {100 * s['ratio_to_direct']:.0f}% |"
                f" {rounds} | {_num(s['p50_ms'])} | {_num(s['p99_ms'])} | {s['errors']} |"
                f" {_num(s['server_cpu_ms_per_frame'])}{_split(s)} |"
                f" {_num(s['client_cpu_ms_per_frame'])} | {s['other_processes_cores']:.2f} |"
            )
    goal = results.get(GOAL_CLIENTS, {}).get(GOAL_MODE)
    if goal is not None:
        verdict = "met" if goal["ratio_to_direct"] >= GOAL_RATIO else "NOT met"
        rows += ["", f"goal {GOAL_MODE} >= {100 * GOAL_RATIO:.0f}% of direct at K ="
                     f" {GOAL_CLIENTS}: {verdict} ({100 * goal['ratio_to_direct']:.0f}%)"]
    return "\n".join(rows)


def _split(s: dict[str, object]) -> str:
    threads = s["daemon_threads_cpu_ms_per_frame"]
    return "" if not threads else f" ({threads['loop']:.2f} / {threads['threads']:.2f})"


def _num(value: object) -> str:
    return "-" if value is None else f"{value:.2f}"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", type=Path, help="models directory served by the daemon")
    parser.add_argument("--model", help="model name (NAME.nest in --models)")
    parser.add_argument("--quick", action="store_true",
                        help="a random-weight VGG-16 x0.25 on 1x28x28 (labelled synthetic)")
    parser.add_argument("--clients", default="1,8,16", help="comma-separated K values")
    parser.add_argument("--duration", type=float, default=12.0,
                        help="measured seconds per K and mode (split over the rounds)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of the modes per K")
    parser.add_argument("--warmup", type=float, default=1.0,
                        help="unmeasured seconds before each HTTP slice")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (both)")
    parser.add_argument("--queue-size", type=int, default=8 * 16,
                        help="the daemon's per-app queue (>= 8 K: the x8 mode's rows are never"
                        " dropped)")
    parser.add_argument("--memory-budget", default="64MiB")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")
    parser.add_argument("--perf-analyzer", type=Path,
                        help="then run this perf_analyzer (benchmarks/perf_analyzer.sh)")
    parser.add_argument("--perf-analyzer-args", default="",
                        help="extra perf_analyzer options, e.g. '-s 30' on a noisy machine")
    args = parser.parse_args(argv)
    if args.quick == (args.models is not None) or (args.models and not args.model):
        parser.error("give --models DIR --model NAME, or --quick")
    return args


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nestdnn-v2-") as tmp:
        work = Path(tmp)
        if args.quick:
            models_dir, name = quick_model(work / "models"), "quick"
            label = ("quick: VGG-16 x0.25 on 1x28x28 with RANDOM weights (synthetic: the goal"
                     " model's compute, not its accuracy)")
        else:
            models_dir, name, label = args.models, args.model, f"{args.model} from {args.models}"
        entry = ModelCatalogue.load(models_dir).entries[name]
        port = free_port()
        server = start_server(models_dir, work / "state", port, args,
                              args.out / "api_v2.serve.log")
        try:
            setup = prepare(port, server.pid, name, entry.input_shape)
            with DaemonClient(f"http://127.0.0.1:{port}") as api:
                descendant = api.apps()[0]["descendant"]
            backend = make_backend("onnxruntime", args.threads)
            backend.prepare([entry])
            model = backend.open(entry, descendant)
            log.info("app on %s descendant %d; direct on onnxruntime in this process", name,
                     descendant)
            results = {}
            for k in (int(k) for k in args.clients.split(",")):
                results[k] = summary(measure(setup, model, k, args))
                log.info("K=%d: %s", k, {m: round(s["frames_per_s"], 1)
                                         for m, s in results[k].items()})
            perf = (perf_analyzer(args.perf_analyzer, setup, args.out,
                                  args.perf_analyzer_args.split())
                    if args.perf_analyzer else None)
        finally:
            server.stop()
    text = table(results, f"{label}, descendant {descendant}")
    if perf is not None:
        text += "\n\n" + perf_table(perf)
    print(text)
    report = {
        "benchmark": "api_v2", "label": label, "model": name, "descendant": descendant,
        "backend": "onnxruntime", "threads": args.threads, "duration_s": args.duration,
        "rounds": args.rounds, "goal": {"mode": GOAL_MODE, "clients": GOAL_CLIENTS,
                                        "ratio": GOAL_RATIO},
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                    "load_average": os.getloadavg()},
        "results": {str(k): modes for k, modes in results.items()},
        "perf_analyzer": perf,
    }
    stem = f"api_v2_{name}"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(text + "\n")
    log.info("wrote %s", args.out / f"{stem}.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
