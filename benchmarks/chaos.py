"""Chaos: nothing acknowledged is lost when `nestdnn serve` is killed, its model files change
under it, and its state and token files are damaged (issue 17).

Against real `nestdnn serve` processes of this checkout on loopback (three tiny synthetic
models, labelled so), each round applies one fault while worker threads register apps, send
frames and unregister apps, then repairs it as an operator would (the file restored; SIGHUP,
POST /v1/admin/reload or a restart), and checks every app whose registration was acknowledged
(201): still listed, its token still authenticates, and it serves again (infer 200). During a
model fault the apps of the broken model must be listed as unavailable with their token
working (infer 503) and every other app must serve. Every exit of the daemon is recorded: kill
-9 and SIGTERM are ours, exit 2 is expected only where both copies of a file are damaged (the
daemon refuses to start in one line and keeps the files; the round restores one copy as an
operator would from a device backup); any other exit is a crash.

An app is *lost* if it was acknowledged and is no longer listed; a token is *lost* if it no
longer authenticates its app (401/403). *Orphans* are apps the daemon registered whose answer
never arrived (the kill came first): counted, then deleted with the admin token.

    .venv/bin/python benchmarks/chaos.py [--passes 2] [--threads 4] [--load-s 2]
                                         [--scenarios NAME,...] [--out runs/chaos]

Exit status 1 if anything was lost or the daemon crashed; the table and runs/chaos/chaos.json
hold the figures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import random
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from api.auth import TOKENS_FILE  # noqa: E402
from api.client import npy_bytes  # noqa: E402
from api.launcher import ServeProcess  # noqa: E402
from nestdnn.errors import NestError  # noqa: E402
from nestdnn.files import backup_of  # noqa: E402
from profiles.synthetic import write_synthetic_nest, write_synthetic_profile  # noqa: E402
from scheduler.daemon.state import STATE_FILE  # noqa: E402

log = logging.getLogger("chaos")

ADMIN = "chaos-admin-token"
REGISTRAR = "chaos-registration-token"
MODELS = ("cam", "mic", "door")
SHAPE = (1, 16, 16)
FRAME = npy_bytes(np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32))
NPY = {"content-type": "application/x-npy"}
MAX_APPS = 12
OUT_DIR = Path("runs/chaos")


# ------------------------------------------------------------------ models


def write_models(models: Path, spare: Path) -> None:
    """Three tiny VGG-11 models on 1x16x16 (random weights, assigned accuracies: synthetic)
    in ``models``, and in ``spare`` a second version of ``cam`` (other weights) and a copy
    of every file, as the operator's backups."""
    models.mkdir(parents=True)
    for seed, name in enumerate(MODELS):
        write_model(models / f"{name}.nest", seed)
    (spare / "next").mkdir(parents=True)
    write_model(spare / "next" / "cam.nest", seed=len(MODELS))
    for path in models.glob("*.*.json"):
        shutil.copy2(path, spare / path.name)
    for path in models.glob("*.nest"):
        shutil.copy2(path, spare / path.name)


def write_model(path: Path, seed: int) -> None:
    write_synthetic_nest(
        path, width_mults=(0.0625, 0.125, 0.25), accuracies=(0.6, 0.7, 0.8), seed=seed
    )
    write_synthetic_profile(path, backends=("onnxruntime",))


# ------------------------------------------------------------------ what was acknowledged


@dataclass
class App:
    id: str
    token: str
    model: str


class Ledger:
    """The apps whose registration the daemon acknowledged and that were not deleted since
    (a deletion without an answer is *in doubt* until the next check settles it)."""

    def __init__(self) -> None:
        self.apps: dict[str, App] = {}
        self.in_doubt: dict[str, App] = {}
        self.deleting: set[str] = set()
        self.lock = threading.Lock()

    def acknowledged(self, app: App) -> None:
        with self.lock:
            self.apps[app.id] = app

    def pick(self, rng: random.Random) -> App | None:
        with self.lock:
            ready = [a for a in self.apps.values() if a.id not in self.deleting]
        return rng.choice(ready) if ready else None

    def begin_delete(self, rng: random.Random) -> App | None:
        app = self.pick(rng)
        if app is not None:
            with self.lock:
                self.deleting.add(app.id)
        return app

    def end_delete(self, app: App, answered: bool) -> None:
        with self.lock:
            self.deleting.discard(app.id)
            self.apps.pop(app.id, None)
            if not answered:
                self.in_doubt[app.id] = app

    def settle(self, listed: set[str]) -> None:
        """Deletions in doubt: an app still listed was not deleted (its token is known)."""
        with self.lock:
            for app in self.in_doubt.values():
                if app.id in listed:
                    self.apps[app.id] = app
            self.in_doubt.clear()

    def settled(self, app_id: str) -> bool:
        """Whether the app is acknowledged and no deletion of it is under way or in doubt."""
        with self.lock:
            return app_id in self.apps and app_id not in self.deleting

    def __len__(self) -> int:
        with self.lock:
            return len(self.apps)


# ------------------------------------------------------------------ load


@dataclass
class LoadStats:
    requests: Counter = field(default_factory=Counter)
    transport_errors: int = 0
    tokens_refused: int = 0
    vanished: int = 0
    """Infer answered 404 for an app acknowledged and not being deleted."""

    @property
    def server_errors(self) -> int:
        """Answers 5xx other than 503 (a model unavailable is an expected answer here)."""
        statuses = ((int(key.split()[-1]), n) for key, n in self.requests.items())
        return sum(n for status, n in statuses if status >= 500 and status != 503)


class Load:
    """Worker threads registering apps (at most `MAX_APPS`), sending frames to them and
    unregistering some, as apps on a device would."""

    def __init__(self, url: str, ledger: Ledger, threads: int, seed: int) -> None:
        self.url = url
        self.ledger = ledger
        self.stats = LoadStats()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(seed * 100 + i,), daemon=True)
            for i in range(threads)
        ]

    @contextmanager
    def running(self) -> Iterator[Load]:
        for thread in self._threads:
            thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            for thread in self._threads:
                thread.join()

    def _work(self, seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=self.url, timeout=10) as http:
            while not self._stop.is_set():
                try:
                    self._step(http, rng)
                except httpx.TransportError:
                    with self._lock:
                        self.stats.transport_errors += 1
                    self._stop.wait(0.05)

    def _step(self, http: httpx.Client, rng: random.Random) -> None:
        choice = rng.random()
        if choice < 0.15 and len(self.ledger) < MAX_APPS:
            self._register(http, rng)
        elif choice < 0.2 and len(self.ledger) > 2:
            self._unregister(http, rng)
        else:
            self._infer(http, rng)

    def _register(self, http: httpx.Client, rng: random.Random) -> None:
        body = {"model": rng.choice(MODELS), "fps": rng.choice([10, 15, 30]),
                "priority": rng.choice([1, 2, 3])}  # fmt: skip
        response = http.post("/v1/apps", json=body, headers=bearer(REGISTRAR))
        self._count("register", response.status_code)
        if response.status_code == 201:
            data = response.json()
            self.ledger.acknowledged(App(data["id"], data["token"], data["model"]))

    def _unregister(self, http: httpx.Client, rng: random.Random) -> None:
        app = self.ledger.begin_delete(rng)
        if app is None:
            return
        answered = False
        try:
            response = http.delete(f"/v1/apps/{app.id}", headers=bearer(app.token))
            answered = True
            self._count("unregister", response.status_code)
        finally:
            self.ledger.end_delete(app, answered)

    def _infer(self, http: httpx.Client, rng: random.Random) -> None:
        app = self.ledger.pick(rng)
        if app is None:
            self._stop.wait(0.01)
            return
        status = infer(http, app)
        self._count("infer", status)
        with self._lock:
            if status in (401, 403):
                self.stats.tokens_refused += 1
            elif status == 404 and self.ledger.settled(app.id):
                self.stats.vanished += 1

    def _count(self, what: str, status: int) -> None:
        with self._lock:
            self.stats.requests[f"{what} {status}"] += 1


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def infer(http: httpx.Client, app: App) -> int:
    headers = {**NPY, **bearer(app.token)}
    return http.post(f"/v1/apps/{app.id}/infer", content=FRAME, headers=headers).status_code


# ------------------------------------------------------------------ the daemon under test


@dataclass
class Exit:
    event: str
    code: int | None
    expected: bool
    line: str = ""


@dataclass
class Check:
    """Every acknowledged app, looked up with its own token."""

    apps: int
    listed: int
    authenticated: int
    serving: int
    unavailable: int
    tokens_refused: int
    wrong_state: int
    orphans: int
    resident_bytes: int | None

    @property
    def lost(self) -> int:
        return self.apps - self.listed


class Chaos:
    """The work directory, the daemon process of the moment, and what has been seen."""

    def __init__(self, work: Path, port: int) -> None:
        self.work = work
        self.models = work / "models"
        self.state = work / "state"
        self.spare = work / "spare"
        self.logs = work / "logs"
        self.port = port
        self.ledger = Ledger()
        self.serve: ServeProcess | None = None
        self.exits: list[Exit] = []
        self.last_load = LoadStats()
        self.starts = 0
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)

    # -------------------------------------------------------------- process

    def start(self, *, refusal_expected: bool = False) -> bool:
        """Start the daemon; False if it refused to start (its exit recorded)."""
        self.starts += 1
        serve = ServeProcess(
            self.models, self.state, self.port, self.logs / f"serve-{self.starts:03d}.log",
            admin_token=ADMIN, registration_token=REGISTRAR, source=ROOT,
        )  # fmt: skip
        try:
            serve.start(timeout_s=120, poll_s=0.02)
        except NestError:
            assert serve.process is not None
            code = serve.process.wait()
            line = one_error_line(serve.log_path).replace(str(self.work), "WORK")
            self.exits.append(Exit("start", code, refusal_expected and code == 2, line))
            return False
        self.serve = serve
        return True

    def kill(self) -> None:
        if not self._check_alive():
            return
        assert self.serve is not None
        self.exits.append(Exit("kill -9", self.serve.kill(), True))
        self.serve = None

    def stop(self) -> None:
        if not self._check_alive():
            return
        assert self.serve is not None
        code = self.serve.stop()
        self.exits.append(Exit("SIGTERM", code, code == -signal.SIGTERM))
        self.serve = None

    def sighup(self) -> None:
        """SIGHUP, and wait until the daemon logs the reload."""
        assert self.serve is not None
        before = self.serve.log_path.read_text().count("models reloaded (SIGHUP)")
        os.kill(self.serve.pid, signal.SIGHUP)
        deadline = time.monotonic() + 60
        while self.serve.log_path.read_text().count("models reloaded (SIGHUP)") == before:
            if not self._check_alive() or time.monotonic() > deadline:
                return
            time.sleep(0.02)

    def reload(self) -> None:
        response = self.http.post("/v1/admin/reload", headers=bearer(ADMIN))
        response.raise_for_status()

    def _check_alive(self) -> bool:
        """Whether the daemon runs; a daemon that died unasked is a crash (recorded)."""
        if self.serve is None or self.serve.process is None:
            return False
        code = self.serve.process.poll()
        if code is None:
            return True
        self.exits.append(Exit("crash", code, False, one_error_line(self.serve.log_path)))
        self.serve = None
        return False

    def ensure_running(self) -> None:
        if not self._check_alive():
            self.start()

    # -------------------------------------------------------------- checks

    def check(self, unavailable_models: Collection[str] = ()) -> Check:
        """Look every acknowledged app up with its token; apps of ``unavailable_models``
        must answer 503, the others 200."""
        self._check_alive()
        listed = {a["id"]: a for a in self.http.get("/v1/apps").json()}
        self.ledger.settle(set(listed))
        orphans = set(listed) - set(self.ledger.apps)
        counts = Counter()
        for app in list(self.ledger.apps.values()):
            status = infer(self.http, app)
            counts["listed"] += app.id in listed
            counts["authenticated"] += status in (200, 429, 503)
            counts["serving"] += status in (200, 429)
            counts["unavailable"] += status == 503
            counts["refused"] += status in (401, 403)
            expected = 503 if app.model in unavailable_models else 200
            counts["wrong"] += status != expected and not (status == 429 and expected == 200)
        for app_id in orphans:  # registered, never answered: the operator removes them
            self.http.delete(f"/v1/apps/{app_id}", headers=bearer(ADMIN))
        schedule = self.http.get("/v1/schedule").json()
        return Check(
            apps=len(self.ledger.apps), listed=counts["listed"],
            authenticated=counts["authenticated"], serving=counts["serving"],
            unavailable=counts["unavailable"], tokens_refused=counts["refused"],
            wrong_state=counts["wrong"], orphans=len(orphans),
            resident_bytes=schedule.get("process_resident_bytes"),
        )  # fmt: skip

    def under_load(self, threads: int, seed: int) -> Load:
        return Load(f"http://127.0.0.1:{self.port}", self.ledger, threads, seed)


def one_error_line(log_path: Path) -> str:
    """The daemon's error line (`nestdnn: error: ...`), or the last line of its log."""
    lines = log_path.read_text(errors="replace").strip().splitlines()
    errors = [line for line in lines if line.startswith("nestdnn: error:")]
    if "Traceback (most recent call last):" in lines:
        return "TRACEBACK: " + (lines[-1] if lines else "")
    return errors[-1] if errors else (lines[-1] if lines else "")


# ------------------------------------------------------------------ faults


def truncate(path: Path) -> None:
    """Cut a file to half its size, in place (a copy interrupted, a torn write)."""
    with path.open("r+b") as f:
        f.truncate(path.stat().st_size // 2)


def restore(chaos: Chaos, name: str) -> None:
    """Put a model file back from the operator's copy (written aside, renamed in place)."""
    incoming = chaos.models / f".{name}.incoming"
    shutil.copy2(chaos.spare / name, incoming)
    os.replace(incoming, chaos.models / name)


@dataclass
class Round:
    pass_: int
    scenario: str
    fault: str
    apps_before: int
    during: Check | None
    after: Check
    exits: list[Exit]
    load: LoadStats
    seconds: float

    @property
    def crashes(self) -> int:
        return sum(not e.expected for e in self.exits)


Scenario = Callable[[Chaos, "Options"], Check | None]
"""Applies a fault, repairs it; returns the check made while it held (model faults)."""


@dataclass(frozen=True)
class Options:
    threads: int
    load_s: float
    seed: int


def live_fault(chaos: Chaos, options: Options, fault: Callable[[], None],
               reload: Callable[[], None]) -> None:
    """Under load: the fault halfway, then the reload that sees it."""
    with chaos.under_load(options.threads, options.seed).running() as load:
        time.sleep(options.load_s / 2)
        fault()
        time.sleep(options.load_s / 2)
        reload()
    chaos.last_load = load.stats


def killed_under_load(chaos: Chaos, options: Options) -> None:
    with chaos.under_load(options.threads, options.seed).running() as load:
        time.sleep(options.load_s)
        chaos.kill()
    chaos.last_load = load.stats


def kill9_under_load(chaos: Chaos, options: Options) -> None:
    killed_under_load(chaos, options)
    chaos.start()


def sigterm_under_load(chaos: Chaos, options: Options) -> None:
    with chaos.under_load(options.threads, options.seed).running() as load:
        time.sleep(options.load_s)
        chaos.stop()
    chaos.last_load = load.stats
    chaos.start()


def nest_fault_live(model: str, damage: Callable[[Path], None],
                    reload: str = "sighup") -> Scenario:
    """A model file damaged while serving, seen by a reload; then restored and reloaded."""

    def run(chaos: Chaos, options: Options) -> Check:
        path = chaos.models / f"{model}.nest"
        again = chaos.sighup if reload == "sighup" else chaos.reload
        live_fault(chaos, options, lambda: damage(path), again)
        during = chaos.check({model})
        restore(chaos, path.name)
        chaos.reload()
        return during

    return run


def nest_replaced_live(in_place: bool) -> Scenario:
    """A new version of cam (file and profile) copied in place or renamed over the old one;
    after the reload its apps serve the new file; then the old one is put back."""

    def run(chaos: Chaos, options: Options) -> Check:
        def replace() -> None:
            for name in ("cam.nest", "cam.profile.json"):
                source, target = chaos.spare / "next" / name, chaos.models / name
                if in_place:
                    shutil.copyfile(source, target)  # truncates, then writes
                else:
                    shutil.copy2(source, target.with_name(f".{name}.incoming"))
                    os.replace(target.with_name(f".{name}.incoming"), target)

        live_fault(chaos, options, replace, chaos.sighup)
        during = chaos.check()
        for name in ("cam.nest", "cam.profile.json"):
            restore(chaos, name)
        chaos.reload()
        return during

    return run


def profile_deleted_live(chaos: Chaos, options: Options) -> Check:
    path = chaos.models / "mic.profile.json"
    live_fault(chaos, options, path.unlink, chaos.reload)
    during = chaos.check({"mic"})
    restore(chaos, path.name)
    chaos.sighup()
    return during


def file_fault_at_restart(name: str, model: str, damage: Callable[[Path], None],
                          repair: str) -> Scenario:
    """kill -9 under load, the file damaged while the daemon is down, a start that must keep
    the model's apps (unavailable); repaired by ``repair`` (reload or restart)."""

    def run(chaos: Chaos, options: Options) -> Check:
        killed_under_load(chaos, options)
        damage(chaos.models / name)
        chaos.start()
        during = chaos.check({model})
        restore(chaos, name)
        if repair == "reload":
            chaos.reload()
        else:
            chaos.stop()
            chaos.start()
        return during

    return run


def state_fault(filename: str, copies: str) -> Scenario:
    """kill -9 under load, then the file (``primary``), its backup, or ``both`` damaged.
    One damaged copy: the start restores it from the other. Both: the start must refuse
    (exit 2, one line) and leave them; the operator puts back a copy and starts again."""

    def run(chaos: Chaos, options: Options) -> None:
        killed_under_load(chaos, options)
        path = chaos.state / filename
        saved = chaos.spare / f"{filename}.operator-copy"
        shutil.copy2(path, saved)
        targets = {"primary": [path], "backup": [backup_of(path)],
                   "both": [path, backup_of(path)], "deleted": []}[copies]  # fmt: skip
        for target in targets:
            truncate(target)
        if copies == "deleted":
            path.unlink()
        if chaos.start(refusal_expected=copies == "both"):
            return
        shutil.copy2(saved, path)
        chaos.start()

    return run


SCENARIOS: dict[str, tuple[str, Scenario]] = {
    "kill9-under-load": ("kill -9 while apps register, infer, unregister", kill9_under_load),
    "sigterm-under-load": ("SIGTERM under load (graceful stop)", sigterm_under_load),
    "nest-truncated-live": ("cam.nest truncated in place while serving; SIGHUP",
                            nest_fault_live("cam", truncate)),
    "nest-copied-live": ("new cam.nest + profile copied over in place; SIGHUP",
                         nest_replaced_live(in_place=True)),
    "nest-replaced-live": ("new cam.nest + profile renamed over; SIGHUP",
                           nest_replaced_live(in_place=False)),
    "nest-deleted-live": ("mic.nest deleted while serving; admin reload",
                          nest_fault_live("mic", Path.unlink, reload="admin")),
    "profile-deleted-live": ("mic.profile.json deleted while serving; admin reload",
                             profile_deleted_live),
    "nest-truncated-restart": ("kill -9, door.nest truncated, start; fixed + reload",
                               file_fault_at_restart("door.nest", "door", truncate, "reload")),
    "nest-deleted-restart": ("kill -9, cam.nest deleted, start; fixed + restart",
                             file_fault_at_restart("cam.nest", "cam", Path.unlink, "restart")),
    "profile-truncated-restart": ("kill -9, door profile truncated, start; fixed + reload",
                                  file_fault_at_restart("door.profile.json", "door", truncate,
                                                        "reload")),
    "state-corrupt": ("kill -9, state.json truncated", state_fault(STATE_FILE, "primary")),
    "state-deleted": ("kill -9, state.json deleted", state_fault(STATE_FILE, "deleted")),
    "state-backup-corrupt": ("kill -9, state.json.backup truncated",
                             state_fault(STATE_FILE, "backup")),
    "state-both-corrupt": ("kill -9, state.json and its backup truncated",
                           state_fault(STATE_FILE, "both")),
    "tokens-corrupt": ("kill -9, api-tokens.json truncated", state_fault(TOKENS_FILE, "primary")),
    "tokens-deleted": ("kill -9, api-tokens.json deleted", state_fault(TOKENS_FILE, "deleted")),
    "tokens-backup-corrupt": ("kill -9, api-tokens.json.backup truncated",
                              state_fault(TOKENS_FILE, "backup")),
    "tokens-both-corrupt": ("kill -9, api-tokens.json and its backup truncated",
                            state_fault(TOKENS_FILE, "both")),
}  # fmt: skip


# ------------------------------------------------------------------ the run


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_round(chaos: Chaos, pass_: int, name: str, options: Options) -> Round:
    fault, scenario = SCENARIOS[name]
    chaos.ensure_running()
    chaos.exits = []
    chaos.last_load = LoadStats()
    apps_before = len(chaos.ledger)
    started = time.perf_counter()
    during = scenario(chaos, options)
    chaos.ensure_running()
    after = chaos.check()
    return Round(pass_, name, fault, apps_before, during, after, chaos.exits,
                 chaos.last_load, time.perf_counter() - started)  # fmt: skip


def run(work: Path, scenarios: list[str], passes: int,
        options: Options) -> tuple[list[Round], list[Exit]]:
    """The rounds, and the exits of the daemon's first start and final stop."""
    write_models(work / "models", work / "spare")
    chaos = Chaos(work, free_port())
    rounds = []
    try:
        chaos.start()
        seed = options.seed
        for pass_ in range(1, passes + 1):
            for name in scenarios:
                seed += 1
                round_ = run_round(chaos, pass_, name, Options(options.threads,
                                                               options.load_s, seed))
                log.info("%s", row(round_))
                rounds.append(round_)
    finally:
        chaos.exits = []
        chaos.stop()
        chaos.http.close()
    return rounds, chaos.exits


def row(r: Round) -> str:
    during = "-" if r.during is None else f"{r.during.unavailable}/{r.during.apps}"
    wrong = (0 if r.during is None else r.during.wrong_state) + r.after.wrong_state
    exits = ", ".join(f"{e.event} ({e.code})" for e in r.exits) or "-"
    return (f"| {r.pass_} | {r.scenario} | {r.apps_before} | {r.after.apps} | {r.after.lost} "
            f"| {r.after.authenticated}/{r.after.apps} | {r.after.serving} "
            f"| {during} | {wrong} | {r.after.orphans} | {exits} | {r.crashes} "
            f"| {sum(r.load.requests.values())} | {r.load.server_errors} |")


HEADER = (
    "| pass | scenario | apps before | apps after | lost | tokens kept | serving after "
    "| unavailable during | wrong state | orphans | daemon exits | crashes | requests | 5xx |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def summary(rounds: list[Round], final: list[Exit]) -> dict:
    exits = Counter(str(e.code) for e in [*(e for r in rounds for e in r.exits), *final])
    return {
        "rounds": len(rounds),
        "apps_checked": sum(r.after.apps for r in rounds),
        "apps_lost": sum(r.after.lost for r in rounds),
        "tokens_lost": sum(r.after.apps - r.after.authenticated for r in rounds),
        "tokens_refused_during": sum((r.during.tokens_refused if r.during else 0)
                                    + r.load.tokens_refused for r in rounds),
        "apps_vanished_under_load": sum(r.load.vanished for r in rounds),
        "wrong_state": sum(r.after.wrong_state + (r.during.wrong_state if r.during else 0)
                           for r in rounds),
        "not_serving_after": sum(r.after.apps - r.after.serving for r in rounds),
        "orphans": sum(r.after.orphans for r in rounds),
        "crashes": sum(r.crashes for r in rounds) + sum(not e.expected for e in final),
        "exit_codes": dict(exits),
        "refusal_lines": sorted({e.line for r in rounds for e in r.exits if e.event == "start"}),
        "requests": sum(sum(r.load.requests.values()) for r in rounds),
        "server_errors": sum(r.load.server_errors for r in rounds),
    }  # fmt: skip


def failed(total: dict) -> bool:
    keys = ("apps_lost", "tokens_lost", "tokens_refused_during", "apps_vanished_under_load",
            "wrong_state",
            "not_serving_after", "crashes", "server_errors")  # fmt: skip
    return any(total[key] for key in keys)


def report(rounds: list[Round], total: dict) -> str:
    lines = [HEADER, *(row(r) for r in rounds), ""]
    lines.append(
        f"{total['rounds']} rounds, {total['requests']} requests under load: apps lost "
        f"{total['apps_lost']}, tokens lost {total['tokens_lost']} (refused meanwhile "
        f"{total['tokens_refused_during']}), apps unknown under load (404) "
        f"{total['apps_vanished_under_load']}, crashes {total['crashes']},"
        f" wrong states {total['wrong_state']}, not serving after repair "
        f"{total['not_serving_after']}, 5xx other than 503 {total['server_errors']}; orphans "
        f"{total['orphans']}; daemon exit codes {total['exit_codes']}"
    )
    lines += [f"refused start: {line}" for line in total["refusal_lines"]]
    return "\n".join(lines)


def to_json(rounds: list[Round], total: dict, args: argparse.Namespace) -> dict:
    def round_json(r: Round) -> dict:
        data = asdict(r)
        data["load"] = {"requests": dict(r.load.requests), "transport_errors":
                        r.load.transport_errors, "tokens_refused": r.load.tokens_refused,
                        "vanished": r.load.vanished}  # fmt: skip
        return data

    return {
        "benchmark": "chaos",
        "argv": sys.argv[1:],
        "passes": args.passes,
        "threads": args.threads,
        "load_s": args.load_s,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
        "summary": total,
        "rounds": [round_json(r) for r in rounds],
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--passes", type=int, default=2, help="times through the scenarios")
    parser.add_argument("--threads", type=int, default=4, help="load threads")
    parser.add_argument("--load-s", type=float, default=2.0, help="seconds of load per round")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scenarios", default=",".join(SCENARIOS),
                        help=f"comma-separated, of: {', '.join(SCENARIOS)}")  # fmt: skip
    parser.add_argument("--out", type=Path, default=OUT_DIR, help="JSON and logs go here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    scenarios = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    unknown = [s for s in scenarios if s not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenarios: {', '.join(unknown)}")
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chaos-") as tmp:
        rounds, final = run(Path(tmp), scenarios, args.passes,
                            Options(args.threads, args.load_s, args.seed))  # fmt: skip
        shutil.rmtree(args.out / "logs", ignore_errors=True)
        shutil.copytree(Path(tmp) / "logs", args.out / "logs")
    total = summary(rounds, final)
    print(report(rounds, total))
    out = args.out / "chaos.json"
    out.write_text(json.dumps(to_json(rounds, total, args), indent=1))
    print(f"wrote {out}")
    return 1 if failed(total) else 0


if __name__ == "__main__":
    sys.exit(main())
