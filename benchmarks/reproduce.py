"""`make reproduce`: the paper's evaluation on real data, from nothing to docs/results.md.

Three apps with genuinely different models or tasks (`APPS` in benchmarks/apps.py) go
through the offline pipeline (train -> prune -> recover -> profile), then every benchmark of
the earlier issues runs on them, and `benchmarks/report.py` writes docs/results.md with
tables and plots.

The work is a graph of jobs, each a separate process with its own log under
ROOT/logs/. Training jobs run two at a time (one thread each: this machine has 2 cores);
timing-sensitive jobs (profiles, switching, latency, the live daemon, the REST load) run
alone, so that nothing else disturbs what they measure. A job whose output exists is not run
again, and each job resumes its own interrupted work, so rerunning the command after an
interruption continues where it stopped. ROOT/jobs.json records every job's wall and CPU
time; the report states them.

    .venv/bin/python benchmarks/reproduce.py            # everything (about 100 minutes here)
    .venv/bin/python benchmarks/reproduce.py --list     # the jobs and which are done
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from fnmatch import fnmatch
from pathlib import Path

ROOT_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT_DIR))

from apps import API_APP, APPS, STABILITY_APP  # noqa: E402
from report import write_report  # noqa: E402

from nestdnn.cli.pipeline import PipelineDirs, PipelinePlan, pipeline_stages  # noqa: E402
from nestdnn.errors import NestError  # noqa: E402
from nestdnn.files import atomic_write  # noqa: E402

log = logging.getLogger("reproduce")


@dataclass(frozen=True)
class Job:
    """One process of the reproduction: what it runs, what it needs, what it leaves."""

    name: str
    command: Callable[[], list[str]]  # built when the job starts (inputs may be new)
    deps: tuple[str, ...] = ()
    output: Path | None = None  # done when this exists (else: when it last succeeded)
    exclusive: bool = False  # measures time: runs with nothing else running
    valid: Callable[[], bool] | None = None
    late: bool = False  # started only when no other job is ready (long, and nothing waits on it)


@dataclass
class JobRecord:
    """How a job's last run went: written to ROOT/jobs.json."""

    name: str
    started: str
    wall_s: float
    cpu_s: float
    exit_code: int


@dataclass
class Ledger:
    """ROOT/jobs.json: the record of every job run so far (across interrupted invocations)."""

    path: Path
    records: dict[str, JobRecord] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> Ledger:
        if not path.exists():
            return cls(path)
        try:
            raw = json.loads(path.read_text())
            records = {name: JobRecord(**r) for name, r in raw["jobs"].items()}
        except (ValueError, KeyError, TypeError) as e:
            raise NestError(f"{path} is not a reproduce job record ({e}); move it aside") from e
        return cls(path, records)

    def record(self, record: JobRecord) -> None:
        """Add ``record`` and save, merging what other runners saved meanwhile (--only runs)."""
        on_disk = Ledger.load(self.path).records if self.path.exists() else {}
        self.records = {**on_disk, record.name: record}
        body = {"jobs": {name: asdict(r) for name, r in self.records.items()}}
        text = json.dumps(body, indent=1).encode()
        atomic_write(self.path, text)

    def succeeded(self, name: str) -> bool:
        record = self.records.get(name)
        return record is not None and record.exit_code == 0


def nestdnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "nestdnn.cli", *args]


def bench(script: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT_DIR / "benchmarks" / script), *args]


def build_jobs(root: Path, apps: list[PipelinePlan]) -> list[Job]:
    """Every job of the reproduction, in a valid order."""
    models, out = root / "models", root / "bench"
    jobs: list[Job] = []
    for plan in apps:
        dirs = PipelineDirs.under(root, plan.name, models)
        previous: tuple[str, ...] = ()
        for stage in pipeline_stages(plan, dirs):
            name = f"{plan.name}:{stage.name}"
            jobs.append(Job(name, lambda s=stage: nestdnn(*s.command()), previous, stage.output,
                            exclusive=stage.name == "profile", valid=stage.valid))
            previous = (name,)
        jobs += multicapacity_jobs(plan, dirs, out)
    everything = tuple(f"{p.name}:profile" for p in apps)
    stable = PipelineDirs.under(root, STABILITY_APP, models)
    jobs += [
        Job("profile-stability", lambda: bench(
            "profile_stability.py", str(stable.nest), "--backends", "torch,tflite",
            "--runs", "1000", "--rounds", "10",  # 100 runs a round: 20 were too few at 0.3 ms
            "--name", f"profile_stability_{STABILITY_APP}", "--out-dir", str(out)),
            (f"{STABILITY_APP}:profile",), out / f"profile_stability_{STABILITY_APP}.json",
            exclusive=True),
        Job("scheduler-sim", lambda: bench(
            "scheduler_vs_baseline.py", "--models", str(models),
            "--out", str(out / "scheduler_vs_baseline")),
            everything, out / "scheduler_vs_baseline.json"),
        # up to 12 apps at once: the processor, not only memory, is short
        Job("scheduler-sim-crowded", lambda: bench(
            "scheduler_vs_baseline.py", "--models", str(models), "--max-apps", "12",
            "--arrival-rate", "0.1", "--traces", "2", "--duration", "600", "--alphas", "0.1,1,10",
            "--out", str(out / "scheduler_vs_baseline_crowded")),
            everything, out / "scheduler_vs_baseline_crowded.json"),
        Job("daemon-live", lambda: bench("daemon_live.py", "--models", str(models), "--out",
                                         str(out)),
            everything, out / "daemon_live.json", exclusive=True),
        Job("api-load", lambda: bench("api_load.py", "--models", str(models), "--model", API_APP,
                                      "--out", str(out)),
            (f"{API_APP}:profile",), out / f"api_load_{API_APP}.json", exclusive=True),
    ]  # fmt: skip
    return jobs


def multicapacity_jobs(plan: PipelinePlan, dirs: PipelineDirs, out: Path) -> list[Job]:
    """From-scratch baselines (one job per level, side by side), then the exclusive benchmark."""
    common = ("--vanilla", str(dirs.vanilla), "--prune-dir", str(dirs.prune), "--nest",
              str(dirs.nest), "--out-dir", str(out), "--name", f"multicapacity_{plan.name}")
    # the largest descendant has the vanilla widths: the vanilla model is its baseline
    baselines = tuple(f"{plan.name}:baseline{k}" for k in range(plan.descendants - 1))
    jobs = [
        Job(name, lambda k=k: bench("multicapacity.py", *common, "--train-baseline", str(k),
                                    "--threads", "1"),
            (f"{plan.name}:recover",), late=True)
        for k, name in enumerate(baselines)
    ]  # fmt: skip
    jobs.append(Job(f"{plan.name}:multicapacity", lambda: bench("multicapacity.py", *common),
                    baselines, out / f"multicapacity_{plan.name}.json", exclusive=True))
    return jobs


class Runner:
    """Runs the job graph: ``parallel`` jobs at once, exclusive ones alone; shows progress."""

    def __init__(self, jobs: list[Job], root: Path, parallel: int, status_every_s: float) -> None:
        self.jobs = {job.name: job for job in jobs}
        self.root = root
        self.parallel = parallel
        self.status_every_s = status_every_s
        self.ledger = Ledger.load(root / "jobs.json")
        self.running: dict[str, tuple[subprocess.Popen[bytes], float, str]] = {}
        self.failed: set[str] = set()
        self.selected = set(self.jobs)

    def select(self, names: Iterable[str]) -> None:
        """Run only these jobs; the others count as done if they are, else block."""
        self.selected = set(names)

    def done(self, job: Job) -> bool:
        if job.output is None:
            return self.ledger.succeeded(job.name)
        return job.output.exists() and (job.valid is None or job.valid())

    def run(self) -> int:
        """Run every job not done yet; on SIGINT/SIGTERM stop the running jobs (they resume)."""
        previous = signal.signal(signal.SIGTERM, _raise_interrupt)
        try:
            return self._run()
        except KeyboardInterrupt:
            print(f"[{clock()}] interrupted: stopping {sorted(self.running) or 'nothing'};"
                  " rerun to continue", flush=True)
            return 130
        finally:
            self.stop_all()
            signal.signal(signal.SIGTERM, previous)

    def stop_all(self) -> None:
        for process, _, _ in self.running.values():
            process.terminate()
        for process, _, _ in self.running.values():
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.running.clear()

    def _run(self) -> int:
        finished = {name for name, job in self.jobs.items() if self.done(job)}
        total, started = len(self.jobs), time.monotonic()
        print(f"reproduce: {len(finished)}/{total} jobs already done; logs in "
              f"{self.root / 'logs'}", flush=True)
        last_status = time.monotonic()
        while True:
            self.start_ready(finished)
            if not self.running:
                break
            time.sleep(1.0)
            finished |= self.reap()
            if time.monotonic() - last_status >= self.status_every_s:
                self.print_status(len(finished), total, time.monotonic() - started)
                last_status = time.monotonic()
        blocked = self.selected - finished - self.failed
        minutes = (time.monotonic() - started) / 60
        print(f"reproduce: {len(finished)}/{total} done in {minutes:.1f} min; failed:"
              f" {sorted(self.failed) or 'none'}; not run: {sorted(blocked) or 'none'}")
        return 0 if not self.failed and not blocked else 1

    def start_ready(self, finished: set[str]) -> None:
        waiting = self.selected - finished - self.running.keys() - self.failed
        ready = [job for name, job in self.jobs.items()
                 if name in waiting and all(d in finished for d in job.deps)]
        if any(self.jobs[name].exclusive for name in self.running):
            return
        shared = sorted((job for job in ready if not job.exclusive), key=lambda job: job.late)
        for job in shared[: self.parallel - len(self.running)]:
            self.start(job)
        if not self.running and not shared and ready:
            self.start(ready[0])  # exclusive: alone, once everything else has drained

    def start(self, job: Job) -> None:
        log_path = self.root / "logs" / f"{job.name.replace(':', '.')}.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        try:
            command = job.command()
        except NestError as e:
            print(f"[{clock()}] FAILED {job.name}: {e}", flush=True)
            self.failed.add(job.name)
            return
        with open(log_path, "ab") as sink:
            sink.write(f"\n$ {' '.join(command)}\n".encode())
            sink.flush()
            process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT,
                                       cwd=ROOT_DIR, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.running[job.name] = (process, time.monotonic(), str(log_path))
        print(f"[{clock()}] start {job.name}{' (alone)' if job.exclusive else ''}", flush=True)

    def reap(self) -> set[str]:
        """Collect finished jobs (with their CPU time); returns the ones that succeeded."""
        succeeded = set()
        for name, (process, began, log_path) in list(self.running.items()):
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid == 0:
                continue
            del self.running[name]
            code = os.waitstatus_to_exitcode(status)
            process.returncode = code
            wall = time.monotonic() - began
            started = datetime.now(timezone.utc) - timedelta(seconds=wall)
            self.ledger.record(JobRecord(
                name, started.isoformat(timespec="seconds"), round(wall, 1),
                round(usage.ru_utime + usage.ru_stime, 1), code))
            job = self.jobs[name]
            if code == 0 and (job.output is None or job.output.exists()):
                succeeded.add(name)
                print(f"[{clock()}] done  {name} in {wall / 60:.1f} min", flush=True)
            else:
                self.failed.add(name)
                print(f"[{clock()}] FAILED {name} (exit {code}); see {log_path}", flush=True)
        return succeeded

    def print_status(self, done: int, total: int, elapsed_s: float) -> None:
        print(f"[{clock()}] {done}/{total} done, {elapsed_s / 60:.0f} min elapsed; running:",
              flush=True)
        for name, (_, began, log_path) in self.running.items():
            print(f"    {name} ({(time.monotonic() - began) / 60:.0f} min): "
                  f"{last_line(Path(log_path))}", flush=True)


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def last_line(path: Path, width: int = 100) -> str:
    """The last non-empty line of a log (progress bars' carriage returns split lines too)."""
    try:
        tail = path.read_bytes()[-4096:].decode(errors="replace")
    except OSError:
        return ""
    lines = [part.strip() for part in tail.replace("\r", "\n").split("\n") if part.strip()]
    return lines[-1][:width] if lines else ""


def clock() -> str:
    return time.strftime("%H:%M:%S")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
    )
    parser.add_argument("--root", type=Path, default=ROOT_DIR / "runs" / "reproduce",
                        help="where everything is written (default: %(default)s)")
    parser.add_argument("--parallel", type=int, default=2,
                        help="jobs at once, each on one thread (default: %(default)s)")
    parser.add_argument("--status-every", type=float, default=60.0,
                        help="seconds between progress lines (default: %(default)s)")
    parser.add_argument("--list", action="store_true", help="list the jobs and exit")
    parser.add_argument("--only", action="append", metavar="PATTERN",
                        help="run only jobs whose name matches this glob (repeatable), e.g."
                             " 'footwear-vgg11:*'; their unfinished dependencies are not run")
    parser.add_argument("--no-report", action="store_true",
                        help="do not write docs/results.md at the end")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s",
                        datefmt="%H:%M:%S")
    args.root.mkdir(parents=True, exist_ok=True)
    try:
        runner = Runner(build_jobs(args.root, APPS), args.root, args.parallel, args.status_every)
        if args.only:
            runner.select(name for name in runner.jobs if any(fnmatch(name, p) for p in args.only))
    except NestError as e:
        print(f"reproduce: error: {e}", file=sys.stderr)
        return 2
    if args.list:
        for job in runner.jobs.values():
            print(f"{'done' if runner.done(job) else '    '}  {job.name}"
                  f"{'  (alone)' if job.exclusive else ''}")
        return 0
    code = runner.run()
    if code == 0 and not args.no_report and not args.only:
        path = write_report(args.root, APPS, ROOT_DIR / "docs")
        print(f"wrote {path}")
    return code


if __name__ == "__main__":
    sys.exit(main())
