"""Profiling a tiny synthetic .nest end to end: entries, counts, latency, memory, accuracy."""

from __future__ import annotations

import argparse
import contextlib
import io
import itertools
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from nestdnn.data import SyntheticConfig, load_dataset
from nestdnn.derived import DerivedCache
from nestdnn.errors import NestError
from nestdnn.models import build_from_config, build_model, default_widths, prefix_state_dict
from nestdnn.nested import load_descendant
from nestdnn.nestfile import NestDescendant, NestMeta, read_manifest, write_nest
from profiles.accuracy import renormalise
from profiles.cli import configure_profile, run_profile
from profiles.latency import LatencySettings
from profiles.memory import measure_memory
from profiles.profiler import ProfileSettings, profile_nest
from profiles.schema import Profile, load_profile
from profiles.tflite import BackendUnavailable, converted_descendants

ARCH, INPUT_SIZE, CHANNELS, CLASSES = "vgg11", 16, 1, 4
MEAN, STD = [0.5], [0.25]


def write_tiny_nest(path: Path, width_mult: float = 1 / 16, levels: int = 3) -> Path:
    """A .nest of ``levels`` prefix-sliced descendants of one random VGG-11."""
    torch.manual_seed(0)
    base = default_widths(ARCH, INPUT_SIZE, width_mult)
    full = build_model(
        ARCH, in_channels=CHANNELS, num_classes=CLASSES, input_size=INPUT_SIZE, widths=base
    )
    state, axes = full.state_dict(), full.param_axes()
    descendants = []
    for k in range(levels):
        widths = {g: max(1, math.ceil(w * (k + 1) / levels)) for g, w in base.items()}
        sliced = prefix_state_dict(state, axes, widths)
        descendants.append(
            NestDescendant(
                state_dict={key: t.clone() for key, t in sliced.items()},
                config=replace(full.config, widths=widths),
                val_accuracy=0.5,
            )
        )
    meta = NestMeta(
        dataset="synthetic",
        class_names=[f"class{i}" for i in range(CLASSES)],
        mean=MEAN,
        std=STD,
    )
    write_nest(path, descendants, meta)
    return path


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    configure_profile(parser)
    return parser.parse_args(argv)


@pytest.fixture(scope="module")
def tiny_nest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_tiny_nest(tmp_path_factory.mktemp("nest") / "tiny.nest")


@pytest.fixture(scope="module")
def profiled(tiny_nest: Path) -> tuple[Path, str]:
    """``nestdnn profile tiny.nest`` (data set from the manifest), its file and its output."""
    out = tiny_nest.with_name("tiny.profile.json")
    argv = [str(tiny_nest), "--backends", "torch", "--runs", "12", "--rounds", "3"]
    argv += ["--warmup", "2", "--memory-runs", "1", "--out", str(out)]
    argv += ["--plot", str(tiny_nest.with_name("tiny.png")), "--no-progress"]
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert run_profile(parse(argv)) == 0
    return out, printed.getvalue()


@pytest.fixture(scope="module")
def profile(profiled: tuple[Path, str]) -> Profile:
    return load_profile(profiled[0])


def test_one_entry_per_descendant_with_strictly_increasing_costs(
    profile: Profile, tiny_nest: Path
) -> None:
    manifest = read_manifest(tiny_nest)
    assert profile.num_descendants == len(profile.descendants) == manifest.num_descendants == 3
    assert [d.index for d in profile.descendants] == [0, 1, 2]
    for name in ("params", "bytes", "macs", "widths_total"):
        values = [getattr(d, name) for d in profile.descendants]
        assert all(a < b for a, b in itertools.pairwise(values)), name
    assert [d.widths for d in profile.descendants] == [d.widths for d in manifest.descendants]


def test_macs_and_params_agree_with_the_model_family(profile: Profile, tiny_nest: Path) -> None:
    manifest = read_manifest(tiny_nest)
    for k, d in enumerate(profile.descendants):
        family_model = build_from_config(manifest.config(k))
        assert d.macs == family_model.count_macs()
        assert d.params == family_model.count_params()
        loaded = load_descendant(tiny_nest, k)
        assert d.bytes == sum(t.numel() * t.element_size() for t in loaded.state_dict().values())


def test_latencies_are_positive_with_p90_not_below_median(profile: Profile) -> None:
    assert profile.backends == ["torch"]
    for d in profile.descendants:
        latency = d.backends["torch"].latency
        assert 0 < latency.median_s <= latency.p90_s
        assert (latency.runs, latency.rounds, latency.threads, latency.warmup) == (12, 3, 1, 2)
    assert profile.device.threads == 1
    assert profile.conditions["torch"].duration_s > 0


def test_the_reference_kernel_is_timed_in_the_same_rounds(profile: Profile) -> None:
    reference = profile.conditions["torch"].reference
    assert reference is not None
    assert 0 < reference.median_s <= reference.p90_s
    assert (reference.runs, reference.rounds, reference.threads) == (12, 3, 1)


def test_memory_is_a_measured_peak_above_a_baseline(profile: Profile) -> None:
    for d in profile.descendants:
        memory = d.backends["torch"].memory
        assert memory.baseline_rss_bytes > 10 << 20  # python + torch are resident
        assert memory.peak_rss_bytes >= memory.baseline_rss_bytes


def test_peak_rss_grows_by_at_least_the_weights(tmp_path: Path) -> None:
    path = write_tiny_nest(tmp_path / "wide.nest", width_mult=0.5, levels=1)
    weights = read_manifest(path).descendants[0].bytes
    assert weights > 8 << 20
    memory = measure_memory("torch", path, 0, threads=1, runs=1)
    assert memory.delta_bytes >= weights


def test_accuracy_is_that_of_each_descendant_on_the_normalised_test_split(
    profile: Profile, tiny_nest: Path
) -> None:
    splits = load_dataset(
        "synthetic",
        synthetic=SyntheticConfig(num_classes=CLASSES, in_channels=CHANNELS, input_size=INPUT_SIZE),
    )
    images, labels = splits.test.tensors
    mean, std = torch.tensor(splits.mean), torch.tensor(splits.std)
    raw = images * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)
    model_input = (raw - MEAN[0]) / STD[0]
    assert profile.dataset.name == "synthetic"
    assert profile.dataset.test_size == len(labels)
    for k, d in enumerate(profile.descendants):
        with torch.inference_mode():
            predicted = load_descendant(tiny_nest, k)(model_input).argmax(1)
        assert d.accuracy == pytest.approx((predicted == labels).float().mean().item())


def test_renormalise_maps_one_normalisation_onto_another() -> None:
    raw = torch.rand(5, 2, 4, 4)
    first = ([0.1, 0.2], [0.5, 0.6])
    second = ([0.3, 0.4], [0.2, 0.9])
    normalised = (raw - torch.tensor(first[0]).view(1, 2, 1, 1)) / torch.tensor(first[1]).view(
        1, 2, 1, 1
    )
    expected = (raw - torch.tensor(second[0]).view(1, 2, 1, 1)) / torch.tensor(second[1]).view(
        1, 2, 1, 1
    )
    assert torch.allclose(renormalise(normalised, first, second), expected, atol=1e-5)
    assert renormalise(normalised, first, first) is normalised


def test_cli_prints_the_table_writes_the_plot_and_check_accepts_the_file(
    profiled: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    out, printed = profiled
    lines = printed.splitlines()
    assert lines[0].split()[:3] == ["k", "widths", "params"]
    assert [line.split()[0] for line in lines[1:4]] == ["0", "1", "2"]
    assert f"profile -> {out}" in printed
    assert out.with_name("tiny.png").read_bytes().startswith(b"\x89PNG")
    assert run_profile(parse(["--check", str(out)])) == 0
    assert "valid profile" in capsys.readouterr().out


def test_unconvertible_tflite_is_skipped_with_a_message_and_torch_still_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    nest = write_tiny_nest(tmp_path / "one.nest", levels=1)

    def unavailable(*args: object, **kwargs: object) -> list[Path]:
        raise BackendUnavailable("TFLite conversion unavailable: no litert_torch")

    monkeypatch.setattr("profiles.profiler.converted_descendants", unavailable)
    settings = ProfileSettings(
        backends=("torch", "tflite"),
        latency=LatencySettings(runs=3, rounds=1, warmup=1),
        memory_runs=1,
    )
    with caplog.at_level(logging.WARNING):
        profile = profile_nest(nest, None, None, settings)
    assert profile.backends == ["torch"]
    assert "tflite backend skipped" in caplog.text and "no litert_torch" in caplog.text
    with pytest.raises(NestError, match="no litert_torch"):
        profile_nest(nest, None, None, replace(settings, backends=("tflite",)))


def tflite_cache(nest: Path, sha256: str) -> DerivedCache:
    return DerivedCache(nest, sha256, "tflite", ".tflite")


def test_tflite_conversions_are_cached_by_content_hash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    exported: list[int] = []

    def export_descendant(path: Path, k: int, fmt: str, out: Path) -> Path:
        assert fmt == "tflite"
        exported.append(k)
        Path(out).write_bytes(b"TFL3")
        return Path(out)

    monkeypatch.setattr("profiles.tflite._tflite_exporter", lambda: export_descendant)
    nest = tmp_path / "m.nest"
    first = converted_descendants(nest, "a" * 64, [0, 1])
    assert exported == [0, 1]
    assert first == [tflite_cache(nest, "a" * 64).path(k) for k in (0, 1)]
    assert converted_descendants(nest, "a" * 64, [0, 1]) == first
    assert exported == [0, 1]
    converted_descendants(nest, "b" * 64, [0])
    assert exported == [0, 1, 0]
    assert not tflite_cache(nest, "a" * 64).directory.exists()


def test_conversion_without_litert_torch_is_backend_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("profiles.tflite.importlib.util.find_spec", lambda name: None)
    with pytest.raises(BackendUnavailable, match="needs litert-torch"):
        converted_descendants(tmp_path / "m.nest", "c" * 64, [0])


@pytest.mark.slow
def test_tflite_profile_of_converted_descendants(tmp_path: Path) -> None:
    pytest.importorskip("litert_torch")
    nest = write_tiny_nest(tmp_path / "two.nest", levels=2)
    settings = ProfileSettings(
        backends=("tflite",), latency=LatencySettings(runs=6, rounds=2, warmup=1), memory_runs=1
    )
    profile = profile_nest(nest, None, None, settings)
    assert profile.backends == ["tflite"]
    for d in profile.descendants:
        figures = d.backends["tflite"]
        assert 0 < figures.latency.median_s <= figures.latency.p90_s
        assert figures.memory.peak_rss_bytes >= figures.memory.baseline_rss_bytes
    cached = [tflite_cache(nest, profile.model.sha256).path(k) for k in (0, 1)]
    assert all(path.stat().st_size > 0 for path in cached)


def test_missing_nest_file_is_a_nest_error(tmp_path: Path) -> None:
    with pytest.raises(NestError):
        run_profile(parse([str(tmp_path / "absent.nest"), "--backends", "torch"]))


def test_model_and_data_set_that_do_not_match_are_a_nest_error(tiny_nest: Path) -> None:
    with pytest.raises(NestError, match="unknown class"):
        run_profile(parse([str(tiny_nest), "--dataset", "fashion-mnist", "--backends", "torch"]))
