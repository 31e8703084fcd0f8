"""The device install serves what the full pipeline produced, with the full install's labels.

1. Creates a fresh virtual environment and installs the project **without extras**
   (`pip install .`: the device install), then checks that torch is not importable there.
2. Starts `nestdnn serve` from that environment on a models directory produced by the full
   pipeline (train -> prune -> recover -> profile), registers one app per model and sends
   the whole Fashion-MNIST test set as PNG images, the way an app would, once per descendant
   (the admin's memory budget steers the plan to each descendant in turn: a budget of one
   descendant's bytes leaves the best descendant that fits).
3. Computes the same frames' labels with the full install: the descendant loaded into torch
   (`nestdnn.nested.load_descendant`) on the test split as `nestdnn profile` evaluates it.

Reports per descendant the share of frames with identical labels (goal: >= 99.9 %), both
accuracies, and for every frame that differs the margin between the two best classes (a
difference on a near-tie is float rounding, not a bug). Also the environment's size and the
packages it holds. Prints a table and writes ``runs/benchmarks/device_install.json``.

    .venv/bin/python benchmarks/device_install.py --models runs/demo/models
"""

from __future__ import annotations

import argparse
import io
import json
import secrets
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.client import DaemonClient  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from nestdnn.data import FASHION_MNIST_DIR, FASHION_MNIST_FILES, read_idx  # noqa: E402
from nestdnn.nested import load_descendant  # noqa: E402
from nestdnn.nestfile import NestFile  # noqa: E402
from profiles.accuracy import load_test_split  # noqa: E402
from profiles.schema import DEFAULT_BACKEND, descendant_table, load_profile  # noqa: E402

OUT_DIR = Path("runs/benchmarks")
VENV = Path("runs/device-venv")
AGREEMENT_GOAL = 0.999


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, required=True,
                        help="directory of NAME.nest + NAME.profile.json from the full pipeline"
                             " (Fashion-MNIST models)")
    parser.add_argument("--venv", type=Path, default=VENV,
                        help="where the device environment is created (reused if present)")
    parser.add_argument("--frames", type=int, default=None,
                        help="first N test images only (default: all 10,000)")
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return parser.parse_args()


@dataclass(frozen=True)
class Environment:
    install_s: float | None
    """Seconds `pip install .` took (None: the environment was reused)."""
    size_bytes: int
    packages: list[str]
    torch_importable: bool


def device_environment(venv: Path) -> Environment:
    """A virtual environment with the device install only: created when missing, else the
    project reinstalled into it as it is now (its dependencies kept)."""
    install_s = None
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        started = time.perf_counter()
        subprocess.run([str(python), "-m", "pip", "install", "-q", str(ROOT)], check=True)
        install_s = time.perf_counter() - started
    else:
        subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps",
                        "--force-reinstall", str(ROOT)], check=True)
    freeze = subprocess.run([str(python), "-m", "pip", "freeze"], check=True,
                            capture_output=True, text=True).stdout.split()
    probe = subprocess.run([str(python), "-c", "import torch"], capture_output=True)
    size = sum(p.stat().st_size for p in venv.rglob("*") if p.is_file() and not p.is_symlink())
    return Environment(install_s, size, sorted(freeze), probe.returncode == 0)


def test_images(count: int | None) -> np.ndarray:
    """Fashion-MNIST's test images as stored (uint8, N x 28 x 28)."""
    stem = FASHION_MNIST_FILES["test_images"]
    path = next(p for p in FASHION_MNIST_DIR.iterdir() if p.name.startswith(stem))
    images = read_idx(path)
    return images if count is None else images[:count]


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image, "L").save(buffer, format="PNG")
    return buffer.getvalue()


def full_install_logits(nest: Path, k: int, count: int) -> np.ndarray:
    """Descendant k's logits in torch on the test split as the profiler evaluates it."""
    with NestFile(nest) as file:
        manifest = file.manifest
    images, _ = load_test_split(manifest, "fashion-mnist", None, workers=0).tensors
    model = load_descendant(nest, k).eval()
    with torch.inference_mode():
        return torch.cat([model(batch) for batch in images[:count].split(500)]).numpy()


@dataclass(frozen=True)
class Agreement:
    model: str
    descendant: int
    frames: int
    identical: int
    device_accuracy: float
    full_accuracy: float
    differing_margins: list[float]
    """Per differing frame: the full install's gap between its two best classes (softmax)."""

    @property
    def share(self) -> float:
        return self.identical / self.frames


def served_labels(client: DaemonClient, app_id: str, frames: list[bytes], k: int,
                  desc: str) -> list[int]:
    labels = []
    for frame in tqdm(frames, desc=desc, unit="frame", leave=False):
        answer = client.http.post(f"/v1/apps/{app_id}/infer", content=frame,
                                  headers={"content-type": "image/png",
                                           "authorization": f"Bearer {client.tokens[app_id]}"})
        answer.raise_for_status()
        body = answer.json()
        if body["descendant"] != k:
            raise SystemExit(f"the plan moved the app to descendant {body['descendant']}"
                             f" while descendant {k} was measured (another client?)")
        labels.append(body["label"])
    return labels


def compare(models: Path, client: DaemonClient, images: np.ndarray,
            labels: np.ndarray) -> list[Agreement]:
    frames = [png(image) for image in images]
    results = []
    for nest in sorted(models.glob("*.nest")):
        profile = load_profile(nest.with_name(nest.stem + ".profile.json"))
        table = descendant_table(profile, DEFAULT_BACKEND, memory="resident")
        app = client.register(nest.stem, target_latency_ms=1000.0, name="device-install")
        measured: set[int] = set()
        for cost in reversed(table):
            client.set_schedule(memory_budget_bytes=cost.memory_bytes + 1)
            k = client.app(app.id)["descendant"]  # the best that fits
            if k in measured:
                continue
            measured.add(k)
            served = np.asarray(served_labels(client, app.id, frames, k, f"{nest.stem} d{k}"))
            logits = full_install_logits(nest, k, len(frames))
            full = logits.argmax(axis=1)
            differ = np.flatnonzero(served != full)
            top2 = np.sort(torch.softmax(torch.from_numpy(logits), dim=1).numpy(), axis=1)[:, -2:]
            results.append(Agreement(
                nest.stem, k, len(frames), int((served == full).sum()),
                float((served == labels).mean()), float((full == labels).mean()),
                [float(top2[i, 1] - top2[i, 0]) for i in differ]))
        client.unregister(app.id)
    return results


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    args = parse_args()
    environment = device_environment(args.venv)
    if environment.torch_importable:
        raise SystemExit(f"{args.venv} has torch: not a device install")
    images = test_images(args.frames)
    labels = read_idx(next(p for p in FASHION_MNIST_DIR.iterdir()
                           if p.name.startswith(FASHION_MNIST_FILES["test_labels"])))
    work = args.out_dir / "device_install"
    admin = secrets.token_urlsafe(16)
    serve = ServeProcess(args.models, work / "state", free_port(), work / "serve.log",
                         admin_token=admin, command=[str(args.venv / "bin" / "nestdnn")])
    with serve.start(), DaemonClient(serve.url, admin_token=admin) as client:
        agreements = compare(args.models, client, images, labels[:len(images)])
    print(f"\ndevice install: {len(environment.packages)} packages,"
          f" {environment.size_bytes / 1e6:.0f} MB, torch importable: no"
          + ("" if environment.install_s is None
             else f", installed in {environment.install_s:.0f} s"))
    print(f"{'model':24} {'d':>2} {'frames':>7} {'identical':>10} {'device acc':>11}"
          f" {'full acc':>9}  margins of the differing frames")
    for a in agreements:
        mark = "" if a.share >= AGREEMENT_GOAL else "  (misses the goal)"
        margins = ", ".join(f"{m:.3f}" for m in sorted(a.differing_margins)) or "-"
        print(f"{a.model:24} {a.descendant:>2} {a.frames:>7} {a.share:10.4%}"
              f" {a.device_accuracy:11.4f} {a.full_accuracy:9.4f}  {margins}{mark}")
    result = {"environment": asdict(environment),
              "agreements": [{**asdict(a), "share": a.share} for a in agreements],
              "goal": AGREEMENT_GOAL,
              "meets_goal": all(a.share >= AGREEMENT_GOAL for a in agreements)}
    out = args.out_dir / "device_install.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {out}")
    return 0 if result["meets_goal"] else 1


if __name__ == "__main__":
    sys.exit(main())
