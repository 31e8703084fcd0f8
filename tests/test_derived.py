"""Files derived from a `.nest`: served only when their index vouches for them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestdnn.derived import INDEX_FILE, DerivedCache

SHA_A, SHA_B = "a" * 64, "b" * 64


def builder(calls: list[int]):
    def build(k: int) -> bytes:
        calls.append(k)
        return f"graph of descendant {k}".encode()

    return build


def test_built_once_then_served_from_disk_with_a_report(tmp_path: Path) -> None:
    nest = tmp_path / "m.nest"
    calls: list[int] = []
    cache = DerivedCache(nest, SHA_A, "onnxruntime", ".onnx")
    assert [cache.get_or_build(k, builder(calls)) for k in (0, 1)] == [
        b"graph of descendant 0", b"graph of descendant 1"]
    again = DerivedCache(nest, SHA_A, "onnxruntime", ".onnx")
    assert again.get_or_build(1, builder(calls)) == b"graph of descendant 1"
    assert calls == [0, 1]
    report = again.report()
    assert report.files == 2 and report.bytes == 2 * len(b"graph of descendant 0")
    assert report.built_now == 0 and cache.report().built_now == 2
    assert cache.directory == tmp_path / "m.nest.onnxruntime" / SHA_A[:16]
    index = json.loads((cache.directory / INDEX_FILE).read_text())
    assert index["nest_sha256"] == SHA_A and set(index["files"]) == {"d0.onnx", "d1.onnx"}


def test_a_corrupt_or_truncated_file_is_rebuilt_never_served(tmp_path: Path) -> None:
    calls: list[int] = []
    cache = DerivedCache(tmp_path / "m.nest", SHA_A, "onnxruntime", ".onnx")
    cache.get_or_build(0, builder(calls))
    cache.path(0).write_bytes(b"graph of descendant X")  # same size, other bytes
    fresh = DerivedCache(tmp_path / "m.nest", SHA_A, "onnxruntime", ".onnx")
    assert fresh.get(0) is None
    assert fresh.get_or_build(0, builder(calls)) == b"graph of descendant 0"
    cache.path(0).write_bytes(b"graph")  # truncated
    assert DerivedCache(tmp_path / "m.nest", SHA_A, "onnxruntime", ".onnx").get(0) is None
    assert calls == [0, 0]


def test_a_cache_built_for_another_file_is_rebuilt_and_removed(tmp_path: Path) -> None:
    calls: list[int] = []
    old = DerivedCache(tmp_path / "m.nest", SHA_A, "onnxruntime", ".onnx")
    old.get_or_build(0, builder(calls))
    index = old.directory / INDEX_FILE  # an index edited to claim another file
    forged = DerivedCache(tmp_path / "m.nest", SHA_B, "onnxruntime", ".onnx")
    forged.directory.mkdir(parents=True)
    forged.path(0).write_bytes(old.path(0).read_bytes())
    (forged.directory / INDEX_FILE).write_text(index.read_text())
    assert forged.get(0) is None  # the index names SHA_A, the file is SHA_B
    forged.get_or_build(0, builder(calls))
    assert calls == [0, 0]
    assert not old.directory.exists()


def test_an_unwritable_directory_keeps_built_files_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def read_only(path: Path, data: object, **_: object) -> Path:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr("nestdnn.derived.atomic_write", read_only)
    calls: list[int] = []
    cache = DerivedCache(tmp_path / "m.nest", SHA_A, "onnxruntime", ".onnx")
    assert cache.get_or_build(0, builder(calls)) == b"graph of descendant 0"
    assert cache.get(0) == b"graph of descendant 0" and calls == [0]
    assert not cache.directory.exists()
