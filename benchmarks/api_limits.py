"""Peak RSS of `nestdnn serve` under concurrent maximum-size image frames (issue 17, finding 10).

Starts the daemon on loopback with one synthetic model (VGG-11 on 3x32x32, the largest input
of the project's models), registers an app, sends one small frame to warm up, then sends
``--clients`` (default 40) PNG frames at once, each the largest image the daemon takes for
that model (``--side``, default: the largest square within this checkout's per-model pixel
cap), for ``--rounds`` bursts. The images are smooth gradients (a few tens of kB as PNG at
4096x4096, the issue's case) or, with ``--content noise``, incompressible noise (the largest
body for that many pixels); either decodes to ``side x side x 3`` bytes. Reports the
daemon's resident memory before the bursts, its peak (VmHWM) and its resident memory after
each burst, the answers by status and the time a burst took. ``--source DIR`` runs the
daemon from another checkout (e.g. an older commit, with ``--side 4096`` for its 4096x4096
cap) to compare.

    .venv/bin/python benchmarks/api_limits.py [--clients 40] [--rounds 3] [--side N]
"""

from __future__ import annotations

import argparse
import io
import json
import math
import platform
import socket
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import DaemonClient  # noqa: E402
from api.daemon import ApiSettings  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from profiles.synthetic import write_synthetic_nest, write_synthetic_profile  # noqa: E402

ADMIN_TOKEN = "limits-admin"
MODEL, CHANNELS, SIZE = "limits", 3, 32
MIB = 1 << 20


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_model(models: Path) -> Path:
    """The benchmark's model: a random-weight VGG-11 on 3x32x32 (labelled synthetic)."""
    models.mkdir(parents=True)
    nest = models / f"{MODEL}.nest"
    write_synthetic_nest(nest, in_channels=CHANNELS, input_size=SIZE)
    write_synthetic_profile(nest)
    return models


def image_png(side: int, content: str) -> bytes:
    """A side x side RGB PNG: a gradient (a few kB) or noise (incompressible, the largest
    body for that many pixels); either decodes to side*side*3 bytes."""
    if content == "noise":
        rgb = np.random.default_rng(0).integers(0, 256, (side, side, 3), dtype=np.uint8)
    else:
        ramp = (np.arange(side, dtype=np.uint32) * 255 // max(1, side - 1)).astype(np.uint8)
        rgb = np.stack([np.tile(ramp, (side, 1)), np.tile(ramp[:, None], (1, side)),
                        np.full((side, side), 128, np.uint8)], axis=-1)  # fmt: skip
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of a process, in bytes."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            fields[name] = int(value.split()[0]) * 1024
    return fields


def burst(url: str, app_id: str, token: str, body: bytes, clients: int) -> tuple[Counter, float]:
    """``clients`` concurrent infer requests with the same image; statuses and wall time."""
    headers = {"content-type": "image/png", "authorization": f"Bearer {token}"}

    def send(_: int) -> int:
        with httpx.Client(base_url=url, timeout=300) as http:
            return http.post(f"/v1/apps/{app_id}/infer", content=body, headers=headers).status_code

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        statuses = Counter(pool.map(send, range(clients)))
    return statuses, time.perf_counter() - started


def run(args: argparse.Namespace, work: Path) -> dict:
    models = write_model(work / "models")
    port = free_port()
    server = ServeProcess(
        models, work / "state", port, work / "serve.log", admin_token=ADMIN_TOKEN,
        extra_args=["--memory-budget", "64MiB"], source=args.source,
    )  # fmt: skip
    body = image_png(args.side, args.content)
    with server:
        with DaemonClient(server.url, admin_token=ADMIN_TOKEN) as api:
            app = api.register(MODEL, target_latency_ms=1000)
            api.infer(app.id, np.zeros((CHANNELS, SIZE, SIZE), np.float32))
        warm = memory(server.pid)
        rounds = []
        for _ in range(args.rounds):
            statuses, seconds = burst(server.url, app.id, app.token, body, args.clients)
            after = memory(server.pid)
            rounds.append({"statuses": dict(statuses), "seconds": round(seconds, 2),
                           "peak_rss_bytes": after["VmHWM"], "rss_after_bytes": after["VmRSS"]})
            time.sleep(1)
    return {
        "benchmark": "api_limits",
        "source": str(args.source or ROOT),
        "clients": args.clients,
        "side": args.side,
        "content": args.content,
        "png_bytes": len(body),
        "decoded_bytes": args.side * args.side * 3,
        "rss_before_bytes": warm["VmRSS"],
        "peak_rss_before_bytes": warm["VmHWM"],
        "rounds": rounds,
        "machine": platform.machine(),
    }


def report(result: dict) -> str:
    lines = [
        f"{result['clients']} concurrent {result['side']}x{result['side']} RGB "
        f"{result['content']} PNGs "
        f"({result['png_bytes'] / 1000:.0f} kB each, {result['decoded_bytes'] / MIB:.1f} MiB "
        f"decoded), daemon from {result['source']}",
        f"before: RSS {result['rss_before_bytes'] / MIB:.0f} MiB "
        f"(peak so far {result['peak_rss_before_bytes'] / MIB:.0f} MiB)",
        "| burst | statuses | seconds | peak RSS MiB | RSS after MiB |",
        "|---|---|---|---|---|",
    ]
    for i, r in enumerate(result["rounds"], 1):
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r["statuses"].items()))
        lines.append(f"| {i} | {statuses} | {r['seconds']} | {r['peak_rss_bytes'] / MIB:.0f} "
                     f"| {r['rss_after_bytes'] / MIB:.0f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    default_side = math.isqrt(ApiSettings(state_dir=Path()).image_pixels(SIZE, SIZE))
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--side", type=int, default=default_side,
                        help=f"image side in pixels (default {default_side}: this checkout's cap)")
    parser.add_argument("--content", choices=("gradient", "noise"), default="gradient")
    parser.add_argument("--source", type=Path, help="run the daemon from this checkout")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "benchmarks")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="nestdnn-limits-") as tmp:
        result = run(args, Path(tmp))
    print(report(result))
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"api_limits_{args.content}_{args.side}" + ("" if args.source is None else "_other")
    (args.out / f"{name}.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
