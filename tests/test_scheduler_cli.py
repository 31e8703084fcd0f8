"""`nestdnn schedule`, `nestdnn simulate` and the trace generator, end to end."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from nestdnn.errors import NestError
from scheduler import cli
from scheduler.problem import load_app_pool

EXAMPLE = {
    "apps": [
        {
            "name": "a",
            "target_latency_s": 0.02,
            "priority": 1.0,
            "descendants": [
                {"accuracy": 0.81, "memory_bytes": 400000, "latency_s": 0.004},
                {"accuracy": 0.90, "memory_bytes": 1600000, "latency_s": 0.011},
            ],
        }
    ],
    "memory_budget_bytes": 5000000,
    "alpha": 1.0,
    "share_step": 0.01,
}


def run(command: str, argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    getattr(cli, f"configure_{command}")(parser)
    return getattr(cli, f"run_{command}")(parser.parse_args(argv))


def write(tmp_path: Path, data: object, name: str = "problem.json") -> str:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_schedule_prints_the_documented_json(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, EXAMPLE)
    assert run("schedule", [path, "--policy", "min-total-cost", "--method", "exact"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    solution = json.loads(out)
    assert solution["feasible"] is True and solution["objective"] == 0.0
    assert isinstance(solution["solve_time_s"], float)
    assert [
        {k: a[k] for k in ("name", "descendant", "share", "cost")} for a in solution["apps"]
    ] == [{"name": "a", "descendant": 1, "share": 1.0, "cost": 0.0}]


@pytest.mark.parametrize("policy", ["min-max-cost", "baseline"])
def test_schedule_other_policies(tmp_path: Path, capsys, policy: str) -> None:
    assert run("schedule", [write(tmp_path, EXAMPLE), "--policy", policy]) == 0
    solution = json.loads(capsys.readouterr().out)
    assert solution["policy"] == policy and solution["apps"][0]["descendant"] == 1


def test_schedule_infeasible_exits_zero(tmp_path: Path, capsys) -> None:
    path = write(tmp_path, EXAMPLE | {"memory_budget_bytes": 100000})
    assert run("schedule", [path]) == 0
    solution = json.loads(capsys.readouterr().out)
    assert solution["feasible"] is False and solution["bytes_missing"] == 300000
    assert "300,000 bytes more" in solution["reason"]


def _descendant(**change: float) -> dict:
    problem = json.loads(json.dumps(EXAMPLE))
    problem["apps"][0]["descendants"][0].update(change)
    return problem


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("{not json", "not valid JSON"),
        (_descendant(latency_s=-0.004), r"apps\.0\.descendants\.0\.latency_s"),
        (_descendant(accuracy=1.2), r"apps\.0\.descendants\.0\.accuracy"),
        (EXAMPLE | {"apps": [EXAMPLE["apps"][0] | {"descendants": []}]}, "descendants"),
        (EXAMPLE | {"share_step": 0.03}, "share_step"),
        ([1, 2], "invalid"),
    ],
)
def test_schedule_bad_input_raises_one_line(tmp_path: Path, data: object, message: str) -> None:
    with pytest.raises(NestError, match=message) as caught:
        run("schedule", [write(tmp_path, data)])
    assert "\n" not in str(caught.value)


def test_schedule_missing_file() -> None:
    with pytest.raises(NestError, match="cannot read"):
        run("schedule", ["/nonexistent/problem.json"])
    with pytest.raises(NestError, match="give a PROBLEM"):
        run("schedule", [])


@pytest.mark.parametrize(("command", "title"), [("schedule", "Problem"), ("simulate", "Trace")])
def test_schemas_are_printed(capsys, command: str, title: str) -> None:
    assert run(command, ["--schema"]) == 0
    assert json.loads(capsys.readouterr().out)["title"] == title


def test_nestdnn_command_exit_codes(tmp_path: Path, capsys) -> None:
    from nestdnn.cli import main

    assert main(["schedule", write(tmp_path, EXAMPLE)]) == 0
    assert json.loads(capsys.readouterr().out)["feasible"] is True
    assert main(["schedule", write(tmp_path, _descendant(accuracy=1.2))]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "accuracy" in err


def test_module_entry_point(tmp_path: Path) -> None:
    bad = write(tmp_path, "{")
    done = subprocess.run(
        [sys.executable, "-m", "scheduler.cli", "schedule", bad],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 2 and "not valid JSON" in done.stderr
    assert "Traceback" not in done.stderr


def test_trace_then_simulate(tmp_path: Path, capsys) -> None:
    trace = tmp_path / "trace.json"
    argv = ["--budget", "20000000", "--seed", "2", "--duration", "300", "--out", str(trace)]
    assert run("trace", argv) == 0
    plot, result = tmp_path / "sim.png", tmp_path / "sim.json"
    argv = [str(trace), "--policy", "min-max-cost", "--alpha", "0.5"]
    assert run("simulate", [*argv, "--plot", str(plot), "--json", str(result)]) == 0
    out = capsys.readouterr().out
    assert "policy min-max-cost, exact, alpha 0.5" in out and "overall: accuracy" in out
    assert plot.read_bytes()[:4] == b"\x89PNG"
    assert json.loads(result.read_text())["summary"]["resolves"] > 0


def test_trace_from_a_pool_file(tmp_path: Path, capsys) -> None:
    pool = write(tmp_path, EXAMPLE, "pool.json")
    assert run("trace", ["--budget", "5000000", "--pool", pool, "--duration", "100"]) == 0
    trace = json.loads(capsys.readouterr().out)
    assert all(e["app"]["name"].startswith("a#") for e in trace["events"] if e["kind"] == "start")
    with pytest.raises(NestError, match="empty"):
        run("trace", ["--budget", "1", "--pool", write(tmp_path, [], "empty.json")])


def test_app_pool_is_a_list_of_apps_or_a_problem_file(tmp_path: Path) -> None:
    from_problem = load_app_pool(write(tmp_path, EXAMPLE))
    from_list = load_app_pool(write(tmp_path, EXAMPLE["apps"], "pool.json"))
    assert from_problem == from_list and [app.name for app in from_list] == ["a"]
    with pytest.raises(NestError, match=r"pool\.json: invalid"):
        load_app_pool(write(tmp_path, [{"name": "a"}], "pool.json"))


def test_simulate_bad_trace_and_options(tmp_path: Path) -> None:
    bad = write(tmp_path, {"duration_s": 1, "memory_budget_bytes": 1, "events": [{"kind": "x"}]})
    with pytest.raises(NestError, match=r"events\.0"):
        run("simulate", [bad])
    good = write(tmp_path, {"duration_s": 1, "memory_budget_bytes": 1}, "good.json")
    with pytest.raises(NestError, match="swap-bandwidth"):
        run("simulate", [good, "--swap-bandwidth", "0"])
