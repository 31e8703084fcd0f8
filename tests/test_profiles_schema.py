"""Profile schema: round trip, validation naming the failing field, the scheduler's table."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from nestdnn.errors import NestError
from profiles.cli import configure_profile, run_profile
from profiles.schema import (
    DescendantCost,
    Profile,
    descendant_table,
    load_profile,
    save_profile,
)

NOW = "2026-01-02T03:04:05Z"


def backend_entry(k: int) -> dict[str, Any]:
    return {
        "latency": {
            "median_s": 0.001 * (k + 1),
            "p90_s": 0.0012 * (k + 1),
            "runs": 50,
            "rounds": 5,
            "threads": 1,
            "warmup": 10,
        },
        "memory": {
            "baseline_rss_bytes": 300_000_000,
            "peak_rss_bytes": 300_000_000 + 1_000_000 * (k + 1),
            "runs": 5,
            "resident_bytes": 600_000 * (k + 1),
        },
    }


def profile_dict(count: int = 3, backends: tuple[str, ...] = ("torch", "tflite")) -> dict:
    """A valid profile as plain JSON data."""
    return {
        "schema_version": 1,
        "model": {"file": "m.nest", "sha256": "ab" * 32, "arch": "vgg16"},
        "device": {
            "cpu_model": "AMD EPYC",
            "cores": 2,
            "threads": 1,
            "os": "Linux",
            "python": "3.11.7",
            "torch": "2.14.1",
            "numpy": "2.4.6",
            "tflite_runtime": "tflite-runtime 2.14.0",
            "onnxruntime": "1.32.0",
        },
        "created": NOW,
        "dataset": {"name": "fashion-mnist", "test_size": 10000},
        "backends": list(backends),
        "conditions": {
            b: {
                "started": NOW,
                "duration_s": 1.5,
                "cpu_pressure": 0.01,
                "load_average": 0.3,
                "reference": backend_entry(0)["latency"],
            }
            for b in backends
        },
        "num_descendants": count,
        "descendants": [
            {
                "index": k,
                "widths": {"features.0": 4 + k, "features.3": 8 + 2 * k},
                "widths_total": 12 + 3 * k,
                "params": 1000 * (k + 1),
                "bytes": 4000 * (k + 1),
                "macs": 50_000 * (k + 1),
                "accuracy": 0.80 + 0.02 * k,
                "backends": {b: backend_entry(k) for b in backends},
            }
            for k in range(count)
        ],
    }


def write_json(path: Path, data: dict) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_round_trip_preserves_every_field(tmp_path: Path) -> None:
    profile = Profile.model_validate_json(json.dumps(profile_dict()))
    path = save_profile(profile, tmp_path / "m.profile.json")
    loaded = load_profile(path)
    assert loaded == profile
    assert loaded.model_dump(mode="json") == profile_dict()


def test_a_profile_written_before_the_reference_kernel_still_loads(tmp_path: Path) -> None:
    data = profile_dict()
    for conditions in data["conditions"].values():
        del conditions["reference"]
    loaded = load_profile(write_json(tmp_path / "old.profile.json", data))
    assert all(c.reference is None for c in loaded.conditions.values())


def test_save_is_atomic_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    profile = Profile.model_validate_json(json.dumps(profile_dict()))
    save_profile(profile, tmp_path / "m.profile.json")
    save_profile(profile, tmp_path / "m.profile.json")
    assert [p.name for p in tmp_path.iterdir()] == ["m.profile.json"]


def _break(data: dict, edit: str) -> dict:
    d0, d1 = data["descendants"][0], data["descendants"][1]
    if edit == "missing field":
        del d0["macs"]
    elif edit == "wrong type":
        d1["accuracy"] = "high"
    elif edit == "string number":
        d0["params"] = "1000"
    elif edit == "negative latency":
        d1["backends"]["torch"]["latency"]["median_s"] = -0.002
    elif edit == "p90 below median":
        d0["backends"]["tflite"]["latency"]["p90_s"] = 0.0005
    elif edit == "count mismatch":
        data["num_descendants"] = 4
    elif edit == "index gap":
        d1["index"] = 2
    elif edit == "params not increasing":
        d1["params"] = d0["params"]
    elif edit == "missing backend":
        del d1["backends"]["tflite"]
    elif edit == "widths total":
        d0["widths_total"] = 99
    elif edit == "bad hash":
        data["model"]["sha256"] = "xyz"
    elif edit == "unknown field":
        d0["colour"] = "blue"
    return data


@pytest.mark.parametrize(
    ("edit", "field", "detail"),
    [
        ("missing field", "descendants.0.macs", "Field required"),
        ("wrong type", "descendants.1.accuracy", "valid number"),
        ("string number", "descendants.0.params", "valid integer"),
        ("negative latency", "descendants.1.backends.torch.latency.median_s", "greater than 0"),
        ("p90 below median", "descendants.0.backends.tflite.latency", "p90_s"),
        ("count mismatch", "descendants", "num_descendants is 4"),
        ("index gap", "descendants", "has index 2"),
        ("params not increasing", "descendants", "params must strictly increase"),
        ("missing backend", "descendants", "descendant 1 has backends ['torch']"),
        ("widths total", "descendants.0", "widths_total (99)"),
        ("bad hash", "model.sha256", "pattern"),
        ("unknown field", "descendants.0.colour", "Extra inputs"),
    ],
)
def test_malformed_profile_is_rejected_naming_the_field(
    tmp_path: Path, edit: str, field: str, detail: str
) -> None:
    path = write_json(tmp_path / "bad.json", _break(profile_dict(), edit))
    with pytest.raises(NestError) as info:
        load_profile(path)
    message = str(info.value)
    assert f"{field}: " in message
    assert detail in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("{not json", "is not JSON"),
        ("[1, 2]", "expected a JSON object"),
        ('{"schema_version": 2}', "schema_version: expected 1, found 2"),
        ("{}", "schema_version: expected 1, found None"),
    ],
)
def test_unusable_files_are_rejected_in_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(NestError, match=expected):
        load_profile(path)


def test_missing_file_is_a_nest_error(tmp_path: Path) -> None:
    with pytest.raises(NestError, match="cannot read profile"):
        load_profile(tmp_path / "absent.json")


def test_descendant_table_gives_accuracy_memory_latency_per_descendant() -> None:
    profile = Profile.model_validate_json(json.dumps(profile_dict()))
    weights = descendant_table(profile, "tflite")
    assert weights == [
        DescendantCost(
            accuracy=0.80 + 0.02 * k, memory_bytes=4000 * (k + 1), latency_s=0.001 * (k + 1)
        )
        for k in range(3)
    ]
    rss = descendant_table(profile, "torch", memory="peak_rss")
    assert [row.memory_bytes for row in rss] == [1_000_000, 2_000_000, 3_000_000]


def test_descendant_table_of_an_unmeasured_backend_is_a_nest_error() -> None:
    profile = Profile.model_validate_json(json.dumps(profile_dict(backends=("torch",))))
    with pytest.raises(NestError, match="no 'tflite' figures"):
        descendant_table(profile, "tflite")


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_profile(parser)
    return parser.parse_args(argv)


def test_check_prints_the_table_of_a_valid_profile(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_json(tmp_path / "m.profile.json", profile_dict())
    assert run_profile(parse(["--check", str(path)])) == 0
    out = capsys.readouterr().out
    assert "valid profile" in out
    table = out.splitlines()
    assert table[0].split()[:6] == ["k", "widths", "params", "MACs", "weights", "MiB"]
    assert [line.split()[0] for line in table[1:4]] == ["0", "1", "2"]


def test_check_rejects_non_monotonic_macs(tmp_path: Path) -> None:
    data = profile_dict()
    data["descendants"][2]["macs"] = data["descendants"][1]["macs"] - 1
    path = write_json(tmp_path / "m.profile.json", data)
    with pytest.raises(NestError, match="descendants: macs must strictly increase"):
        run_profile(parse(["--check", str(path)]))


def test_profile_without_a_model_or_with_both_is_a_nest_error(tmp_path: Path) -> None:
    with pytest.raises(NestError, match=r"give a \.nest file"):
        run_profile(parse([]))
    with pytest.raises(NestError, match="not both"):
        run_profile(parse(["m.nest", "--check", str(tmp_path / "p.json")]))


def test_unknown_backend_is_a_usage_error() -> None:
    with pytest.raises(SystemExit):
        parse(["m.nest", "--backends", "torch,onnx"])


def test_stability_summary_compares_medians_raw_and_relative_to_the_reference() -> None:
    """benchmarks/profile_stability.py: a machine 20 % slower in one repeat moves every raw
    median by 1.2 and no relative one."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from profile_stability import summarise

    def repeat(speed: float) -> Profile:
        data = profile_dict(backends=("torch",))
        for d in data["descendants"]:
            latency = d["backends"]["torch"]["latency"]
            latency["median_s"] *= speed
            latency["p90_s"] *= speed
        reference = data["conditions"]["torch"]["reference"]
        reference["median_s"], reference["p90_s"] = 0.002 * speed, 0.003 * speed
        return Profile.model_validate_json(json.dumps(data))

    summary = summarise([repeat(1.0), repeat(1.2), repeat(1.1)])["backends"]["torch"]
    assert summary["max_ratio"] == pytest.approx(1.2)
    assert summary["max_relative_ratio"] == pytest.approx(1.0)
    assert summary["reference_medians_s"] == pytest.approx([0.002, 0.0024, 0.0022])
