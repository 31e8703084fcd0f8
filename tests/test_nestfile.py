"""The `.nest` file: writer checks, exact nesting, partial reads, upgrade/downgrade, bad files."""

from __future__ import annotations

import gc
import json
import math
import threading
import weakref
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from nestdnn.errors import NestError
from nestdnn.models import ModelConfig, build_from_config, build_model, prefix_state_dict
from nestdnn.nested import NestedModel, load_descendant
from nestdnn.nestfile import (
    MANIFEST_KEY,
    NestDescendant,
    NestFile,
    NestMeta,
    read_manifest,
    write_nest,
)

NUM_CLASSES = 5
# arch, in_channels, input_size, width multiplier of the largest descendant
FAMILIES: dict[str, tuple[str, int, int, float]] = {
    "vgg": ("vgg11", 1, 16, 0.125),
    "resnet": ("resnet20", 3, 16, 0.5),
}
FRACTIONS = (0.3, 0.6, 1.0)
ACCURACIES = (1 / 3, 0.5 + math.pi / 100, 0.875)


def _random_like(key: str, tensor: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Distinct random values for a per-descendant tensor (positive running variances)."""
    if tensor.dtype == torch.int64:
        return torch.randint(0, 1000, tensor.shape, generator=gen)
    values = torch.randn(tensor.shape, generator=gen)
    return values.abs() + 0.5 if key.endswith("running_var") else values


def synthetic_descendants(family: str, seed: int = 0) -> list[NestDescendant]:
    """K=3 nested descendants: prefixes of one random model, each with its own BN and biases."""
    arch, in_channels, size, mult = FAMILIES[family]
    torch.manual_seed(seed)
    big = build_model(
        arch, in_channels=in_channels, num_classes=NUM_CLASSES, input_size=size, width_mult=mult
    )
    gen = torch.Generator().manual_seed(seed + 1)
    descendants = []
    for k, fraction in enumerate(FRACTIONS):
        widths = {g: max(1, math.ceil(w * fraction)) for g, w in big.groups().items()}
        state = prefix_state_dict(big.state_dict(), big.param_axes(), widths)
        state = {
            key: t.clone() if t.dim() >= 2 else _random_like(key, t, gen)
            for key, t in state.items()
        }
        config = ModelConfig(arch, in_channels, NUM_CLASSES, size, widths)
        descendants.append(NestDescendant(state, config, ACCURACIES[k], roadmap_step=10 - 3 * k))
    return descendants


def synthetic_meta(in_channels: int) -> NestMeta:
    return NestMeta(
        dataset="synthetic",
        class_names=[f"class{i}" for i in range(NUM_CLASSES)],
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        extra={"origin": "test"},
    )


def write_synthetic_nest(path: Path, family: str) -> list[NestDescendant]:
    """Write a synthetic K=3 `.nest` of ``family`` to ``path``; return its descendants."""
    descendants = synthetic_descendants(family)
    write_nest(path, descendants, synthetic_meta(FAMILIES[family][1]))
    return descendants


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def nest(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, list[NestDescendant]]:
    path = tmp_path_factory.mktemp(request.param) / "model.nest"
    return path, write_synthetic_nest(path, request.param)


@pytest.fixture(scope="module")
def vgg_nest(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[NestDescendant]]:
    path = tmp_path_factory.mktemp("vgg") / "model.nest"
    return path, write_synthetic_nest(path, "vgg")


def sample_input(descendant: NestDescendant, n: int = 2) -> torch.Tensor:
    c = descendant.config
    return torch.randn(
        n, c.in_channels, c.input_size, c.input_size, generator=torch.Generator().manual_seed(7)
    )


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    if a.dtype == torch.float32:
        return torch.equal(a.view(torch.int32), b.view(torch.int32))
    return torch.equal(a, b)


def same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return list(a) == list(b) and all(bitwise_equal(a[k], b[k]) for k in a)


def level_of(name: str) -> int:
    """The level a stored tensor belongs to: ``key#j.rows`` / ``key#j.cols`` / ``@k.dtype``."""
    if name.startswith("@"):
        return int(name[1:].split(".")[0])
    return int(name.rsplit("#", 1)[1].split(".")[0])


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Names of every tensor read from any `.nest` file during the test."""
    names: list[str] = []
    original = NestFile.read

    def recording(self: NestFile, name: str) -> np.ndarray:
        names.append(name)
        return original(self, name)

    monkeypatch.setattr(NestFile, "read", recording)
    return names


# ---------------------------------------------------------------------------- round trip


def test_every_descendant_reads_back_bitwise(nest: tuple[Path, list[NestDescendant]]) -> None:
    path, descendants = nest
    for k, descendant in enumerate(descendants):
        model = load_descendant(path, k)
        assert not model.training
        assert model.groups() == descendant.config.widths
        assert same_state(model.state_dict(), dict(descendant.state_dict))


def test_smaller_descendants_are_exact_slices_of_larger(
    nest: tuple[Path, list[NestDescendant]],
) -> None:
    path, descendants = nest
    models = [load_descendant(path, k) for k in range(len(descendants))]
    for k, small in enumerate(models):
        for large in models[k + 1 :]:
            shared = prefix_state_dict(large.state_dict(), large.param_axes(), small.groups())
            for key, tensor in small.state_dict().items():
                if tensor.dim() >= 2:
                    assert bitwise_equal(tensor, shared[key].contiguous()), key


def test_manifest_records_what_was_written(nest: tuple[Path, list[NestDescendant]]) -> None:
    path, descendants = nest
    manifest = read_manifest(path)
    assert manifest.format_version == 2
    assert manifest.dataset == "synthetic" and manifest.extra == {"origin": "test"}
    assert manifest.class_names == [f"class{i}" for i in range(NUM_CLASSES)]
    assert len(manifest.normalization.mean) == descendants[0].config.in_channels
    for k, (info, descendant) in enumerate(zip(manifest.descendants, descendants, strict=True)):
        model = load_descendant(path, k)
        assert info.index == k and info.widths == descendant.config.widths
        assert info.val_accuracy == ACCURACIES[k]  # exact float round trip
        assert info.roadmap_step == descendant.roadmap_step
        assert info.params == model.count_params()
        assert info.macs == model.count_macs()
        assert info.bytes == sum(t.numel() * t.element_size() for t in model.state_dict().values())
    raw = json.loads(safe_open(str(path), framework="pt").metadata()[MANIFEST_KEY])
    assert {
        "format_version",
        "arch",
        "groups",
        "normalization",
        "class_names",
        "dataset",
        "descendants",
        "created",
    } <= set(raw)


def test_public_names_import_from_the_package() -> None:
    import nestdnn

    assert nestdnn.load_descendant is load_descendant
    assert nestdnn.NestedModel is NestedModel


def test_a_missing_descendant_is_a_clear_error(vgg_nest: tuple[Path, list[NestDescendant]]) -> None:
    path, _ = vgg_nest
    with pytest.raises(NestError, match=r"has descendants 0\.\.2; there is no descendant 3"):
        load_descendant(path, 3)
    with pytest.raises(NestError, match="no descendant -1"):
        NestedModel.open(path, -1)


# ------------------------------------------------------------------ packed per-descendant


def test_per_descendant_tensors_are_packed_one_tensor_per_dtype(
    nest: tuple[Path, list[NestDescendant]],
) -> None:
    """``@k.float32`` / ``@k.int64``: descendant k's < 2-dim tensors, flat, in state_dict order."""
    path, descendants = nest
    with safe_open(str(path), framework="pt") as f:
        names = set(f.keys())
        packed = {name: f.get_tensor(name) for name in names if name.startswith("@")}
    assert all("#" in name for name in names - set(packed))
    for k, descendant in enumerate(descendants):
        assert {n for n in packed if level_of(n) == k} == {f"@{k}.float32", f"@{k}.int64"}
        for dtype in (torch.float32, torch.int64):
            own = [
                t.reshape(-1)
                for t in descendant.state_dict.values()
                if t.dim() < 2 and t.dtype == dtype
            ]
            name = f"@{k}.{str(dtype).removeprefix('torch.')}"
            assert bitwise_equal(packed[name], torch.cat(own))


def _own_storages(module: torch.nn.Module) -> set[tuple[torch.dtype, int]]:
    """The distinct storages behind a module's per-descendant (< 2-dim) tensors."""
    own = [t for t in module.state_dict().values() if t.dim() < 2]
    return {(t.dtype, t.untyped_storage().data_ptr()) for t in own}


def test_per_descendant_tensors_load_as_views_of_one_copy_per_dtype(
    vgg_nest: tuple[Path, list[NestDescendant]],
) -> None:
    path, _ = vgg_nest
    assert len(_own_storages(load_descendant(path, 1))) == 2
    with NestedModel.open(path, 2) as handle:
        for k in (0, 1, 2):  # downgrades, then upgrades
            handle.switch(k)
            assert len(_own_storages(handle.module)) == 2
            assert handle.resident_bytes == handle.manifest.descendants[k].bytes


# --------------------------------------------------------------------------- partial reads


def test_load_descendant_reads_no_block_above_k(
    nest: tuple[Path, list[NestDescendant]], reads: list[str]
) -> None:
    path, descendants = nest
    with NestFile(path) as nest:
        all_names = set(nest.layout.expected())
    for k in range(len(descendants)):
        reads.clear()
        load_descendant(path, k)
        assert reads, "nothing was read"
        assert max(level_of(n) for n in reads) <= k
        assert all(level_of(n) == k for n in reads if "@" in n)
        wanted = {
            n
            for n in all_names
            if ("@" in n and level_of(n) == k) or ("#" in n and level_of(n) <= k)
        }
        assert set(reads) == wanted and len(reads) == len(wanted)


def test_upgrade_reads_only_the_missing_levels(
    nest: tuple[Path, list[NestDescendant]], reads: list[str]
) -> None:
    path, _ = nest
    with NestedModel.open(path, 0) as handle:
        reads.clear()
        handle.upgrade(2)
        assert reads and all(level_of(n) in (1, 2) for n in reads)
        assert all(level_of(n) == 2 for n in reads if "@" in n)
        reads.clear()
        handle.downgrade(1)
        assert reads and all("@" in n and level_of(n) == 1 for n in reads)


# ------------------------------------------------------------------------ upgrade/downgrade


def test_upgrade_matches_load_and_downgrade_restores_bitwise(
    nest: tuple[Path, list[NestDescendant]],
) -> None:
    path, descendants = nest
    x = sample_input(descendants[0])
    for k in range(len(descendants)):
        for k2 in range(k + 1, len(descendants)):
            with NestedModel.open(path, k) as handle, torch.inference_mode():
                original_state = {n: t.clone() for n, t in handle.module.state_dict().items()}
                original_out = handle.module(x)
                handle.upgrade(k2)
                assert handle.level == k2
                direct = load_descendant(path, k2)
                assert same_state(handle.module.state_dict(), direct.state_dict())
                assert torch.equal(handle.module(x), direct(x))
                handle.downgrade(k)
                assert handle.level == k
                assert same_state(handle.module.state_dict(), original_state)
                assert torch.equal(handle.module(x), original_out)


def test_resident_bytes_follow_the_current_descendant(
    nest: tuple[Path, list[NestDescendant]],
) -> None:
    path, _ = nest
    with NestedModel.open(path, 2) as handle:
        infos = handle.manifest.descendants
        assert handle.resident_bytes == infos[2].bytes
        for k in (0, 1, 2, 1, 0):
            handle.switch(k)
            assert handle.level == k and handle.resident_bytes == infos[k].bytes
        assert handle.switch_peak_bytes(2) == infos[0].bytes + infos[2].bytes


def test_switching_frees_the_old_module(vgg_nest: tuple[Path, list[NestDescendant]]) -> None:
    path, _ = vgg_nest
    with NestedModel.open(path, 2) as handle:
        for target in (0, 1):  # a downgrade, then an upgrade
            old = weakref.ref(handle.module)
            old_weight = weakref.ref(handle.module.features[0].weight)
            handle.switch(target)
            gc.collect()
            assert old() is None and old_weight() is None


def test_module_is_a_plain_dense_model(vgg_nest: tuple[Path, list[NestDescendant]]) -> None:
    path, descendants = vgg_nest
    with NestedModel.open(path, 0) as handle:
        handle.upgrade(1)
        module = handle.module
        assert module.config.arch == "vgg11" and not module.training
        assert module.config.widths == descendants[1].config.widths
        assert all(
            t.is_contiguous() and t.device.type == "cpu" for t in module.state_dict().values()
        )
        assert not module._forward_hooks and not module._forward_pre_hooks
        module.register_forward_hook(lambda *_: None)  # hooks stay local to this module
        handle.upgrade(2)
        assert not handle.module._forward_hooks


def test_switched_modules_are_independent_copies_of_a_built_model(
    vgg_nest: tuple[Path, list[NestDescendant]],
) -> None:
    """Each switch makes a new module tree: same classes and attributes as a built model, and
    no container (hooks, name sets) shared with an earlier module of the same descendant."""
    path, descendants = vgg_nest
    with NestedModel.open(path, 2) as handle:
        handle.switch(1)
        first = handle.module
        first.features[0].register_forward_hook(lambda *_: None)
        handle.switch(0)
        handle.switch(1)
        second = handle.module
        built = build_from_config(descendants[1].config).eval()
        for a, b, ref in zip(first.modules(), second.modules(), built.modules(), strict=True):
            assert type(a) is type(b) is type(ref)
            assert set(vars(a)) == set(vars(b)) == set(vars(ref))
            assert a is not b and a.training is b.training is False
            for name, value in vars(ref).items():
                if isinstance(value, dict | set):
                    assert vars(a)[name] is not vars(b)[name], name
        assert first.features[0]._forward_hooks and not second.features[0]._forward_hooks


def test_modules_in_use_survive_switches(nest: tuple[Path, list[NestDescendant]]) -> None:
    path, descendants = nest
    x = sample_input(descendants[0])
    with torch.inference_mode():
        expected = {k: load_descendant(path, k)(x) for k in range(len(descendants))}
    by_widths = {json.dumps(d.config.widths, sort_keys=True): k for k, d in enumerate(descendants)}
    failures: list[str] = []
    stop = threading.Event()

    def serve(handle: NestedModel) -> None:
        while not stop.is_set():
            module = handle.module
            level = by_widths[json.dumps(module.config.widths, sort_keys=True)]
            with torch.inference_mode():
                if not torch.equal(module(x), expected[level]):
                    failures.append(f"wrong output from descendant {level}")

    with NestedModel.open(path, 0) as handle:
        workers = [threading.Thread(target=serve, args=(handle,)) for _ in range(2)]
        for w in workers:
            w.start()
        for k in (1, 2, 0, 2, 1, 0, 2) * 3:
            handle.switch(k)
        stop.set()
        for w in workers:
            w.join()
    assert not failures


def test_a_handle_keeps_reading_the_file_it_validated(tmp_path: Path) -> None:
    path = tmp_path / "model.nest"
    write_synthetic_nest(path, "vgg")
    expected = load_descendant(path, 2).state_dict()
    with NestedModel.open(path, 0) as handle:
        other = synthetic_descendants("vgg", seed=5)
        write_nest(path, other, synthetic_meta(1))  # atomically replaces the path
        handle.upgrade(2)
        assert same_state(handle.module.state_dict(), expected)
    assert same_state(load_descendant(path, 2).state_dict(), dict(other[2].state_dict))


def test_switching_after_close_is_refused(vgg_nest: tuple[Path, list[NestDescendant]]) -> None:
    path, descendants = vgg_nest
    handle = NestedModel.open(path, 1)
    handle.close()
    with torch.inference_mode():
        handle.module(sample_input(descendants[0]))  # still usable
    with pytest.raises(NestError, match="closed"):
        handle.upgrade(2)


def test_upgrade_and_downgrade_check_direction(vgg_nest: tuple[Path, list[NestDescendant]]) -> None:
    path, _ = vgg_nest
    with NestedModel.open(path, 1) as handle:
        with pytest.raises(NestError, match="cannot upgrade from descendant 1 to 0"):
            handle.upgrade(0)
        with pytest.raises(NestError, match="cannot downgrade from descendant 1 to 2"):
            handle.downgrade(2)


# -------------------------------------------------------------------------------- writer


def _edited(descendants: list[NestDescendant], k: int, **changes: Any) -> list[NestDescendant]:
    out = list(descendants)
    fields = {
        "state_dict": out[k].state_dict,
        "config": out[k].config,
        "val_accuracy": out[k].val_accuracy,
        "roadmap_step": out[k].roadmap_step,
    }
    out[k] = NestDescendant(**{**fields, **changes})
    return out


def test_writer_refuses_non_nested_descendants(tmp_path: Path) -> None:
    descendants = synthetic_descendants("vgg")
    state = {k: t.clone() for k, t in descendants[1].state_dict.items()}
    state["features.4.weight"][0, 0, 0, 0] += 1.0  # inside descendant 0's block
    bad = _edited(descendants, 1, state_dict=state)
    with pytest.raises(
        NestError,
        match=r"descendant 0 is not nested in descendant 1: tensor"
        r" 'features\.4\.weight' differs .*1 of \d+ values",
    ):
        write_nest(tmp_path / "m.nest", bad, synthetic_meta(1))
    assert not list(tmp_path.iterdir())


def test_writer_refuses_shrinking_or_equal_widths(tmp_path: Path) -> None:
    descendants = synthetic_descendants("vgg")
    meta = synthetic_meta(1)
    with pytest.raises(NestError, match=r"descendant 1 does not contain descendant 0: group"):
        write_nest(tmp_path / "m.nest", [descendants[1], descendants[0]], meta)
    with pytest.raises(NestError, match="descendant 1 has the same widths as descendant 0"):
        write_nest(tmp_path / "m.nest", [descendants[0], descendants[0]], meta)


def test_writer_refuses_mixed_architectures(tmp_path: Path) -> None:
    mixed = [*synthetic_descendants("vgg")[:2], synthetic_descendants("resnet")[2]]
    with pytest.raises(NestError, match=r"descendant 2 has arch 'resnet20', descendant 0 has"):
        write_nest(tmp_path / "m.nest", mixed, synthetic_meta(1))


def test_writer_refuses_inconsistent_states(tmp_path: Path) -> None:
    descendants = synthetic_descendants("vgg")
    meta = synthetic_meta(1)
    state = dict(descendants[0].state_dict)
    del state["classifier.bias"]
    with pytest.raises(NestError, match=r"descendant 0's state_dict .* missing classifier\.bias"):
        write_nest(tmp_path / "m.nest", _edited(descendants, 0, state_dict=state), meta)
    state = {
        **descendants[0].state_dict,
        "classifier.bias": descendants[0].state_dict["classifier.bias"].double(),
    }
    with pytest.raises(NestError, match=r"'classifier\.bias' is float64, expected float32"):
        write_nest(tmp_path / "m.nest", _edited(descendants, 0, state_dict=state), meta)
    with pytest.raises(NestError, match=r"'features\.0\.weight' has shape .* its widths give"):
        config = descendants[0].config
        wider = ModelConfig(
            config.arch,
            config.in_channels,
            config.num_classes,
            config.input_size,
            {**config.widths, "features.0": 4},
        )
        write_nest(tmp_path / "m.nest", _edited(descendants, 0, config=wider), meta)


def test_writer_refuses_bad_metadata(tmp_path: Path) -> None:
    descendants = synthetic_descendants("vgg")
    with pytest.raises(NestError, match="4 class names for 5 classes"):
        write_nest(
            tmp_path / "m.nest", descendants, NestMeta("synthetic", ["a"] * 4, [0.5], [0.25])
        )
    with pytest.raises(NestError, match="val_accuracy"):
        write_nest(
            tmp_path / "m.nest", _edited(descendants, 0, val_accuracy=1.5), synthetic_meta(1)
        )
    with pytest.raises(NestError, match="JSON-serialisable"):
        write_nest(
            tmp_path / "m.nest",
            descendants,
            NestMeta("synthetic", ["a"] * 5, [0.5], [0.25], extra={"x": object()}),
        )


# ----------------------------------------------------------------------------- bad files


def _rewrite(
    src: Path,
    dst: Path,
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None,
    manifest: Callable[[dict[str, Any]], Any] | None = None,
    raw_manifest: str | None = None,
) -> Path:
    """Copy a `.nest` file through safetensors, editing its tensors or its manifest."""
    with safe_open(str(src), framework="pt") as f:
        names = f.keys()
        content = {name: f.get_tensor(name).clone() for name in names}
        metadata = dict(f.metadata())
    if tensors is not None:
        tensors(content)
    if manifest is not None:
        data = json.loads(metadata[MANIFEST_KEY])
        metadata[MANIFEST_KEY] = json.dumps(manifest(data) or data)
    if raw_manifest is not None:
        metadata[MANIFEST_KEY] = raw_manifest
    save_file(content, str(dst), metadata=metadata)
    return dst


def _truncate(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) - 100])
    return dst


def _set_widths(data: dict[str, Any]) -> None:
    data["descendants"][1]["widths"]["features.0"] += 1


def _swap_descendants(data: dict[str, Any]) -> None:
    d = data["descendants"]
    d[0]["widths"], d[1]["widths"] = d[1]["widths"], d[0]["widths"]


def _reshape_block(t: dict[str, torch.Tensor]) -> None:
    t["features.4.weight#2.rows"] = torch.zeros(4, 3, 3, 3)


def _drop_tensor(t: dict[str, torch.Tensor]) -> None:
    del t["features.4.weight#1.rows"]


def _drop_packed(t: dict[str, torch.Tensor]) -> None:
    del t["@1.int64"]


def _shorten_packed(t: dict[str, torch.Tensor]) -> None:
    t["@1.float32"] = t["@1.float32"][:-1].clone()


def _float_counters(t: dict[str, torch.Tensor]) -> None:
    t["@1.int64"] = t["@1.int64"].float()


def _add_tensor(t: dict[str, torch.Tensor]) -> None:
    t["features.0.weight#3.rows"] = torch.zeros(1, 1, 3, 3)


def _half_block(t: dict[str, torch.Tensor]) -> None:
    t["features.0.weight#1.rows"] = t["features.0.weight#1.rows"].half()


def _strip_manifest(src: Path, dst: Path) -> Path:
    with safe_open(str(src), framework="pt") as f:
        names = f.keys()
        content = {name: f.get_tensor(name).clone() for name in names}
    save_file(content, str(dst), metadata={"other": "x"})
    return dst


BAD_FILES: dict[str, tuple[Callable[[Path, Path], Path], str]] = {
    "truncated": (_truncate, r"file is truncated or not a safetensors file"),
    "not safetensors": (
        lambda s, d: (d.write_bytes(b"PK\x03\x04" * 64), d)[1],
        r"file is truncated or not a safetensors file",
    ),
    "no manifest": (_strip_manifest, r"no 'nestdnn' manifest"),
    "bad JSON": (
        lambda s, d: _rewrite(s, d, raw_manifest='{"format_version": 1,'),
        r"manifest is not valid JSON",
    ),
    "not an object": (
        lambda s, d: _rewrite(s, d, raw_manifest="[1, 2]"),
        r"manifest must be a JSON object, found list",
    ),
    "future version": (
        lambda s, d: _rewrite(s, d, manifest=lambda m: {**m, "format_version": 9}),
        r"format version 9 is not supported \(this nestdnn reads 2\)",
    ),
    "format version 1": (
        lambda s, d: _rewrite(s, d, manifest=lambda m: {**m, "format_version": 1}),
        r"format version 1 is no longer supported .*; re-run `nestdnn recover` to rebuild",
    ),
    "missing key": (
        lambda s, d: _rewrite(
            s, d, manifest=lambda m: {k: v for k, v in m.items() if k != "descendants"}
        ),
        r"invalid manifest: descendants: Field required",
    ),
    "wrong type": (
        lambda s, d: _rewrite(
            s,
            d,
            manifest=lambda m: {
                **m,
                "descendants": [{**m["descendants"][0], "params": "many"}, *m["descendants"][1:]],
            },
        ),
        r"invalid manifest: descendants\.0\.params: Input should be a valid integer",
    ),
    "unknown arch": (
        lambda s, d: _rewrite(
            s, d, manifest=lambda m: {**m, "arch": {**m["arch"], "arch": "vgg99"}}
        ),
        r"unknown arch 'vgg99'",
    ),
    "edited widths": (
        lambda s, d: _rewrite(s, d, manifest=_set_widths),
        r"descendant 1 records \d+ params but its widths give \d+",
    ),
    "shrinking widths": (
        lambda s, d: _rewrite(s, d, manifest=_swap_descendants),
        r"descendant 1 does not contain descendant 0: group '\S+' shrinks",
    ),
    "block shape": (
        lambda s, d: _rewrite(s, d, tensors=_reshape_block),
        r"tensor 'features\.4\.weight#2\.rows' has shape \(4, 3, 3, 3\),"
        r" expected \(\d+, \d+, 3, 3\)",
    ),
    "missing tensor": (
        lambda s, d: _rewrite(s, d, tensors=_drop_tensor),
        r"missing tensor 'features\.4\.weight#1\.rows'",
    ),
    "missing packed tensor": (
        lambda s, d: _rewrite(s, d, tensors=_drop_packed),
        r"missing tensor '@1\.int64'",
    ),
    "short packed tensor": (
        lambda s, d: _rewrite(s, d, tensors=_shorten_packed),
        r"packed tensor '@1\.float32' has shape \((\d+),\), expected \((?!\1,)\d+,\):"
        r" the \d+ float32 per-descendant tensors of descendant 1",
    ),
    "packed dtype": (
        lambda s, d: _rewrite(s, d, tensors=_float_counters),
        r"tensor '@1\.int64' has dtype F32, expected I64",
    ),
    "extra tensor": (
        lambda s, d: _rewrite(s, d, tensors=_add_tensor),
        r"unexpected tensor 'features\.0\.weight#3\.rows'",
    ),
    "wrong dtype": (
        lambda s, d: _rewrite(s, d, tensors=_half_block),
        r"tensor 'features\.0\.weight#1\.rows' has dtype F16, expected F32",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_files_are_rejected_with_their_own_message(
    case: str, vgg_nest: tuple[Path, list[NestDescendant]], tmp_path: Path
) -> None:
    make, message = BAD_FILES[case]
    bad = make(vgg_nest[0], tmp_path / "bad.nest")
    for load in (read_manifest, lambda p: load_descendant(p, 0), lambda p: NestedModel.open(p, 0)):
        with pytest.raises(NestError, match=message) as caught:
            load(bad)
        assert str(bad) in str(caught.value)


def test_bad_file_messages_are_distinct() -> None:
    """Only a truncated file and a foreign one share a message (safetensors' reason differs)."""
    assert len({message for _, message in BAD_FILES.values()}) == len(BAD_FILES) - 1
