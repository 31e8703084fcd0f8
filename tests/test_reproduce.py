"""`benchmarks/reproduce.py`'s job runner: order, exclusivity, resuming and failures."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from apps import APPS
from reproduce import Job, Ledger, Runner, build_jobs

from nestdnn.errors import NestError


def _job(name: str, trace: Path, out: Path | None, deps: tuple[str, ...] = (),
         exclusive: bool = False, sleep: float = 0.3, code: int = 0) -> Job:
    """A job that logs when it starts and ends, sleeps, writes its output and exits."""
    script = (
        "import sys, time, pathlib\n"
        f"trace = pathlib.Path({str(trace)!r})\n"
        f"with trace.open('a') as f: f.write(f'{name} start {{time.monotonic()}}\\n')\n"
        f"time.sleep({sleep})\n"
        f"with trace.open('a') as f: f.write(f'{name} end {{time.monotonic()}}\\n')\n"
        + (f"pathlib.Path({str(out)!r}).write_text('ok')\n" if out else "")
        + f"sys.exit({code})\n"
    )
    return Job(name, lambda: [sys.executable, "-c", script], deps, out, exclusive)


def _intervals(trace: Path) -> dict[str, tuple[float, float]]:
    times: dict[str, dict[str, float]] = {}
    for line in trace.read_text().splitlines():
        name, event, at = line.split()
        times.setdefault(name, {})[event] = float(at)
    return {name: (t["start"], t["end"]) for name, t in times.items()}


def test_jobs_run_after_their_deps_and_exclusive_jobs_run_alone(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    jobs = [
        _job("a", trace, tmp_path / "a.out"),
        _job("b", trace, tmp_path / "b.out"),
        _job("c", trace, tmp_path / "c.out", deps=("a",)),
        _job("x", trace, tmp_path / "x.out", deps=("a",), exclusive=True),
        _job("d", trace, None, deps=("x",)),
    ]
    runner = Runner(jobs, tmp_path, parallel=2, status_every_s=60)
    assert runner.run() == 0
    spans = _intervals(trace)
    assert set(spans) == {"a", "b", "c", "x", "d"}
    assert spans["c"][0] >= spans["a"][1] and spans["x"][0] >= spans["a"][1]
    assert spans["d"][0] >= spans["x"][1]
    x_start, x_end = spans["x"]
    for name, (start, end) in spans.items():
        if name != "x":
            assert end <= x_start or start >= x_end, f"{name} overlapped the exclusive job"
    assert spans["b"][0] < spans["a"][1]  # two at once when allowed
    records = json.loads((tmp_path / "jobs.json").read_text())["jobs"]
    assert set(records) == {"a", "b", "c", "x", "d"}
    assert all(r["exit_code"] == 0 and r["wall_s"] > 0 for r in records.values())


def test_a_rerun_skips_finished_jobs(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    jobs = [_job("a", trace, tmp_path / "a.out"), _job("d", trace, None, deps=("a",))]
    assert Runner(jobs, tmp_path, parallel=2, status_every_s=60).run() == 0
    trace.unlink()
    assert Runner(jobs, tmp_path, parallel=2, status_every_s=60).run() == 0
    assert not trace.exists()  # output exists (a) / recorded success (d): nothing ran


def test_a_failed_job_blocks_its_dependents_and_fails_the_run(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    jobs = [
        _job("bad", trace, None, code=3),
        _job("after", trace, tmp_path / "after.out", deps=("bad",)),
        _job("other", trace, tmp_path / "other.out"),
    ]
    runner = Runner(jobs, tmp_path, parallel=2, status_every_s=60)
    assert runner.run() == 1
    assert set(_intervals(trace)) == {"bad", "other"}
    assert Ledger.load(tmp_path / "jobs.json").records["bad"].exit_code == 3
    assert (tmp_path / "logs" / "bad.log").exists()


def test_a_corrupt_ledger_is_refused_with_its_path(tmp_path: Path) -> None:
    (tmp_path / "jobs.json").write_text("{not json")
    with pytest.raises(NestError, match=r"jobs\.json is not a reproduce job record"):
        Ledger.load(tmp_path / "jobs.json")


def test_the_reproduction_covers_three_apps_and_every_benchmark(tmp_path: Path) -> None:
    names = {job.name for job in build_jobs(tmp_path, APPS)}
    assert len({app.name for app in APPS}) == 3
    for app in APPS:
        for stage in ("train", "prune", "recover", "profile", "multicapacity"):
            assert f"{app.name}:{stage}" in names
    assert {"profile-stability", "scheduler-sim", "daemon-live", "api-load"} <= names


def test_the_report_counts_the_time_some_job_was_running() -> None:
    """Overlapping jobs count once and a pause between invocations not at all."""
    from report import elapsed_text

    jobs = {
        "a": {"started": "2026-01-01T10:00:00+00:00", "wall_s": 600.0},
        "b": {"started": "2026-01-01T10:05:00+00:00", "wall_s": 900.0},  # overlaps a
        "c": {"started": "2026-01-01T12:00:00+00:00", "wall_s": 300.0},  # after a pause
    }
    assert elapsed_text(jobs) == "25 min with a job running (from 10:00 to 12:05 UTC)"
