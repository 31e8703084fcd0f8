"""`nestdnn demo`: the whole story end to end, offline pipeline then a live daemon.

1. Offline: train -> prune -> recover -> profile, each stage run through the same CLI a user
   types (printed as it runs). Valid artifacts under the demo directory are reused, and every
   stage resumes its own interrupted work, so an interrupted demo continues where it stopped.
2. Online: starts `nestdnn serve` as a separate process (as on a device), then plays a script
   in which three apps start, change priority and stop through the REST client. After every
   event each app streams frames at its frame rate for a few seconds; the demo prints the plan
   (descendant, share), the measured FPS, the descendant's accuracy and why the plan changed.

Like the rest of `nestdnn.cli`, this module sits above every stage.
"""

from __future__ import annotations

import argparse
import logging
import os
import secrets
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nestdnn.cli.pipeline import PipelineDirs, PipelinePlan, pipeline_stages
from nestdnn.errors import NestError

log = logging.getLogger(__name__)

FASHION_MNIST_FILE = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@dataclass(frozen=True)
class DemoPlan:
    """The offline pipeline, sized to finish in the demo's budget, and the scenario's pace."""

    pipeline: PipelinePlan
    window_s: float  # how long apps stream frames after every event

    @property
    def model_name(self) -> str:
        return self.pipeline.name


FULL = DemoPlan(
    PipelinePlan(
        name="fmnist-vgg16",
        arch="vgg16",
        width_mult=0.25,
        data_args=("--dataset", "fashion-mnist"),
        train_epochs=2,
        prune_ratio=0.2,
        prune_retrain_epochs=0.1,
        prune_max_steps=6,
        accuracy_drop=0.03,
        descendants=5,
        epochs_per_level=0.2,
        profile_runs=50,
    ),
    window_s=4.0,
)

QUICK = DemoPlan(
    PipelinePlan(
        name="synthetic-vgg11",
        arch="vgg11",
        width_mult=0.25,
        data_args=("--dataset", "synthetic", "--synthetic-samples", "1200", "--input-size", "16"),
        train_epochs=6,
        prune_ratio=0.2,
        prune_retrain_epochs=1,
        prune_max_steps=3,
        accuracy_drop=0.15,
        descendants=3,
        epochs_per_level=0.5,
        profile_runs=20,
        prune_min_retrain_steps=0,  # the synthetic set is easy: quick beats deep here
    ),
    window_s=1.5,
)


@dataclass(frozen=True)
class AppRole:
    """One app of the scripted scenario."""

    name: str
    fps: float
    target_ms: float
    priority: float


ROLES = {
    "camera": AppRole("camera", fps=30, target_ms=33, priority=1.0),
    "doorbell": AppRole("doorbell", fps=10, target_ms=100, priority=1.0),
    "album": AppRole("album", fps=5, target_ms=200, priority=0.5),
}
# (event, app, argument): the script the demo plays.
SCENARIO: list[tuple[str, str, float | None]] = [
    ("start", "camera", None),
    ("start", "doorbell", None),
    ("start", "album", None),
    ("priority", "doorbell", 3.0),
    ("stop", "camera", None),
    ("stop", "album", None),
    ("stop", "doorbell", None),
]


# ------------------------------------------------------------------------------ command line


def configure_demo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick",
        action="store_true",
        help="synthetic data and a tiny model: the whole story in ~2 minutes",
    )
    parser.add_argument(
        "--dir",
        type=Path,
        default=None,
        help="where artifacts go (default: runs/demo, or runs/demo-quick)",
    )
    parser.add_argument("--port", type=int, default=8765, help="port of the demo daemon")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete the demo directory first instead of reusing artifacts",
    )


def run_demo(args: argparse.Namespace) -> int:
    plan = QUICK if args.quick else FULL
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise here
    root = args.dir or Path("runs/demo-quick" if args.quick else "runs/demo")
    started = time.monotonic()
    ensure_port_free(args.port)
    if args.fresh and root.exists():
        shutil.rmtree(root)
    if not args.quick:
        ensure_fashion_mnist()
    models_dir = run_offline(plan, root)
    print(f"\noffline pipeline ready after {time.monotonic() - started:.0f} s\n")
    print(descendant_table(models_dir / f"{plan.model_name}.nest") + "\n")
    with Daemon(models_dir, root / "state", args.port, memory_budget(models_dir, plan)) as daemon:
        play_scenario(daemon, plan, demo_frames(root / "prune"))
    print_epilogue(plan, root, models_dir, args.port, time.monotonic() - started)
    return 0


def ensure_port_free(port: int) -> None:
    """Refuse to start when something (e.g. another daemon) already listens on the port."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        if sock.connect_ex(("127.0.0.1", port)) == 0:
            raise NestError(
                f"port {port} is already in use (another nestdnn daemon?); stop it or pass --port"
            )


def ensure_fashion_mnist() -> None:
    """Install the Debian package when the data is missing and apt is usable; else explain."""
    if FASHION_MNIST_FILE.exists():
        return
    if shutil.which("apt-get") and os.geteuid() == 0:
        print("Fashion-MNIST missing: installing the Debian package dataset-fashion-mnist")
        subprocess.run(["apt-get", "update", "-qq"], check=False)
        subprocess.run(["apt-get", "install", "-y", "-qq", "dataset-fashion-mnist"], check=False)
    if not FASHION_MNIST_FILE.exists():
        raise NestError(
            "Fashion-MNIST is missing: run 'apt-get install dataset-fashion-mnist' as root "
            "(or 'nestdnn demo --quick' for synthetic data)"
        )


# ---------------------------------------------------------------------------------- offline


def run_offline(plan: DemoPlan, root: Path) -> Path:
    """Train, prune, recover and profile, reusing valid artifacts; returns the models dir."""
    from nestdnn.cli import main

    dirs = demo_dirs(plan, root)
    dirs.models.mkdir(parents=True, exist_ok=True)
    for stage in pipeline_stages(plan.pipeline, dirs):
        if stage.done():
            print(f"[{stage.name}] reusing {stage.output}")
            continue
        argv = stage.command()
        print(f"\n[{stage.name}] $ nestdnn {' '.join(argv)}", flush=True)
        code = main(argv)
        if code != 0 or not stage.output.exists():
            raise NestError(f"demo stage '{stage.name}' failed (exit {code}); rerun to resume it")
    return dirs.models


def descendant_table(nest: Path) -> str:
    """The multi-capacity model's descendants: size against the vanilla model, accuracy."""
    from nestdnn.cli.inspect import nest_summary

    descendants = nest_summary(nest)["descendants"]
    vanilla = descendants[-1]["params"]
    rows = [
        f"multi-capacity model {nest}: {len(descendants)} descendants, from"
        f" {descendants[0]['params'] / vanilla:.1%} of the vanilla model's parameters to 100%",
        f"   {'k':>2}{'params':>10}{'of vanilla':>12}{'MACs':>12}{'val acc':>9}{'step':>6}",
    ]
    for d in descendants:
        rows.append(
            f"   {d['index']:>2}{d['params']:>10,}{d['params'] / vanilla:>12.1%}"
            f"{d['macs']:>12,}{d['val_accuracy']:>9.2%}{d['roadmap_step']:>6}"
        )
    return "\n".join(rows)


def demo_dirs(plan: DemoPlan, root: Path) -> PipelineDirs:
    """The demo keeps one app's pipeline directly under its root."""
    return PipelineDirs(root, root / "models", plan.pipeline.name)


def memory_budget(models_dir: Path, plan: DemoPlan) -> int:
    """A budget that holds the largest descendant, the next one and the smallest once, as the
    daemon accounts them (the profile's resident bytes on the default backend): three apps
    sharing the model fit their best, three copies of it would not."""
    from profiles.schema import DEFAULT_BACKEND, descendant_table, load_profile

    profile = load_profile(models_dir / f"{plan.model_name}.profile.json")
    sizes = [d.memory_bytes for d in descendant_table(profile, DEFAULT_BACKEND, "resident")]
    return int(sizes[-1] + sizes[-2] + sizes[0]) + 1


# ----------------------------------------------------------------------------------- daemon


class Daemon:
    """The demo's daemon: `nestdnn serve` in a child process plus an admin REST client."""

    def __init__(self, models_dir: Path, state_dir: Path, port: int, budget: int) -> None:
        from api.launcher import ServeProcess

        if state_dir.exists():
            shutil.rmtree(state_dir)  # the scenario starts with no apps
        self.budget = budget
        self.serve = ServeProcess(
            models_dir,
            state_dir,
            port,
            state_dir.parent / "daemon.log",
            admin_token=secrets.token_urlsafe(24),
            extra_args=["--memory-budget", str(budget), "--policy", "min-total-cost"],
        )
        self.url = self.serve.url

    def __enter__(self) -> Daemon:
        from api.client import DaemonClient

        print(f"[serve] $ nestdnn {' '.join(self.serve.argv[self.serve.argv.index('serve') :])}")
        self.serve.start()
        self.client = DaemonClient(self.url, admin_token=self.serve.admin_token)
        print(f"[serve] daemon up at {self.url} (log: {self.serve.log_path})")
        return self

    def __exit__(self, *_exc: object) -> None:
        self.client.close()
        self.serve.stop()


# --------------------------------------------------------------------------------- scenario


class FrameSender(threading.Thread):
    """Streams test frames for one app at its frame rate and counts completions."""

    def __init__(self, daemon: Daemon, app_id: str, fps: float, frames: np.ndarray) -> None:
        super().__init__(daemon=True)
        self.daemon_ref, self.app_id, self.period = daemon, app_id, 1.0 / fps
        self.frames = frames
        self.completed = 0
        self.errors = 0
        self.running = threading.Event()
        self.running.set()

    def run(self) -> None:
        from api.client import ApiError, DaemonClient

        client = DaemonClient(self.daemon_ref.url)
        token = self.daemon_ref.client.tokens[self.app_id]
        next_at, i = time.monotonic(), 0
        try:
            while self.running.is_set():
                try:
                    client.infer(self.app_id, self.frames[i % len(self.frames)], token=token)
                    self.completed += 1
                except ApiError:
                    self.errors += 1
                i += 1
                next_at += self.period
                time.sleep(max(0.0, next_at - time.monotonic()))
        finally:
            client.close()


def play_scenario(daemon: Daemon, plan: DemoPlan, frames: np.ndarray) -> None:
    """Play SCENARIO through the REST client, printing the plan after every event."""
    ids: dict[str, str] = {}
    previous: dict[str, tuple[int, float]] = {}
    budget_mb = daemon.budget / 1e6
    print(f"\nscenario: three apps share one {budget_mb:.2f} MB model budget and the CPU"
          " (apps on the same descendant share one copy)\n")
    for event, name, value in SCENARIO:
        role = ROLES[name]
        if event == "start":
            reg = daemon.client.register(
                plan.model_name,
                target_latency_ms=role.target_ms,
                fps=role.fps,
                priority=role.priority,
                name=name,
            )
            ids[name] = reg.id
            what = f"{name} starts ({role.fps:g} fps, target {role.target_ms:g} ms)"
        elif event == "priority":
            daemon.client.update(ids[name], priority=value)
            what = f"{name}'s priority -> {value:g}"
        else:
            daemon.client.unregister(ids.pop(name))
            previous.pop(name, None)
            what = f"{name} stops"
        measured = stream_window(daemon, ids, frames, plan.window_s)
        schedule = daemon.client.schedule()
        names = {v: k for k, v in ids.items()}
        print(f"== {what}")
        print(format_plan(schedule, names, measured))
        print(f"   why: {explain(schedule, names, previous)}\n")
        previous = {names[a["id"]]: (a["descendant"], a["share"]) for a in schedule["apps"]}


def demo_frames(prune_dir: Path, count: int = 64) -> np.ndarray:
    """Real test-split frames of the demo model's data set, as normalised float32 arrays."""
    from pruning.roadmap import load_roadmap

    images = load_roadmap(prune_dir).dataset.load().test.tensors[0][:count]
    return images.numpy().astype(np.float32)


def stream_window(
    daemon: Daemon, ids: dict[str, str], frames: np.ndarray, seconds: float
) -> dict[str, float]:
    """Every active app streams at its fps for ``seconds``; returns measured FPS per app."""
    senders = {
        name: FrameSender(daemon, app_id, ROLES[name].fps, frames) for name, app_id in ids.items()
    }
    for sender in senders.values():
        sender.start()
    time.sleep(seconds)
    for sender in senders.values():
        sender.running.clear()
    for sender in senders.values():
        sender.join(timeout=10)
    return {name: s.completed / seconds for name, s in senders.items()}


def format_plan(schedule: dict[str, Any], names: dict[str, str], measured: dict[str, float]) -> str:
    """The per-app table printed after every event."""
    rows = [f"   {'app':<10}{'descendant':>11}{'share':>8}{'FPS':>8}{'accuracy':>10}"]
    for app in sorted(schedule["apps"], key=lambda a: names[a["id"]]):
        name = names[app["id"]]
        rows.append(
            f"   {name:<10}{app['descendant']:>11}{app['share']:>8.2f}"
            f"{measured.get(name, 0.0):>8.1f}{app['accuracy']:>10.2%}"
        )
    if not schedule["apps"]:
        rows.append("   (no apps)")
    rows.append(f"   memory {memory_line(schedule)}")
    return "\n".join(rows)


def memory_line(schedule: dict[str, Any]) -> str:
    """The model bytes held (shared copies counted once) beside what one copy per app of the
    same plan would hold, and the budget."""
    held = (schedule["accounted_bytes"] - schedule["idle_bytes"]) / 1e6
    copies = sum(app["resident_bytes"] for app in schedule["apps"]) / 1e6
    idle = schedule["idle_bytes"] / 1e6
    budget = schedule["memory_budget_bytes"] / 1e6
    warm = f" + {idle:.2f} MB of warm rungs" if idle else ""
    over = ", over the budget" if copies > budget else ""
    return (f"{held:.2f} MB held{warm} (one copy per app: {copies:.2f} MB{over}),"
            f" budget {budget:.2f} MB")


def explain(
    schedule: dict[str, Any], names: dict[str, str], previous: dict[str, tuple[int, float]]
) -> str:
    """One line on what the re-plan changed for the apps that were already running."""
    changes = []
    for app in schedule["apps"]:
        name = names[app["id"]]
        if name not in previous:
            changes.append(f"{name} gets descendant {app['descendant']}")
            continue
        old_d, old_u = previous[name]
        if old_d != app["descendant"]:
            verb = "upgraded" if app["descendant"] > old_d else "downgraded"
            changes.append(f"{name} {verb} {old_d}->{app['descendant']}")
        if abs(old_u - app["share"]) > 1e-9:
            changes.append(f"{name} share {old_u:.2f}->{app['share']:.2f}")
    objective = schedule.get("objective")
    cost = "" if objective is None else f" (total cost {objective:.4f})"
    if not changes:
        return f"the plan in force is still the best{cost}"
    return "MinTotalCost re-planned within the memory budget: " + ", ".join(changes) + cost


def print_epilogue(
    plan: DemoPlan, root: Path, models_dir: Path, port: int, elapsed_s: float
) -> None:
    print(f"demo finished in {elapsed_s:.0f} s. Artifacts:")
    print(f"  vanilla model   {root / 'train' / 'vanilla.pt'}")
    print(f"  roadmap         {root / 'prune' / 'roadmap.json'}")
    print(f"  multi-capacity  {models_dir / (plan.model_name + '.nest')}")
    print(
        f"  profile + plot  {models_dir / (plan.model_name + '.profile.json')}, "
        f"{root / (plan.model_name + '.profile.png')}"
    )
    print(f"  daemon log      {root / 'daemon.log'}")
    print("\nTry the API yourself:")
    print(f"  nestdnn serve --models {models_dir} --memory-budget 64MB --port {port} &")
    print(
        f"  curl -s -X POST http://127.0.0.1:{port}/v1/apps -H 'content-type: application/json'"
        f' -d \'{{"model": "{plan.model_name}", "target_latency_ms": 50}}\''
    )
    print(f"  curl -s http://127.0.0.1:{port}/v1/schedule   # OpenAPI docs: /docs")
