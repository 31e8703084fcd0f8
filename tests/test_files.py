"""Durable writes: atomic files, and two copies for what must survive a damaged file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nestdnn.errors import NestError
from nestdnn.files import atomic_write, backup_of, read_with_backup, write_with_backup


def test_atomic_write_replaces_whole_and_leaves_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "f.json"
    atomic_write(path, "one")
    atomic_write(path, b"two", mode=0o600)
    assert path.read_text() == "two" and oct(path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in path.parent.iterdir()] == ["f.json"]

    def fails(f: object) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, fails)
    assert path.read_text() == "two" and [p.name for p in path.parent.iterdir()] == ["f.json"]


def test_a_damaged_or_missing_file_is_restored_from_its_backup(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    write_with_backup(path, json.dumps({"a": 1}), mode=0o600)
    path.write_text("{not json")
    assert read_with_backup(path, json.loads, "tokens", if_removed="empty", mode=0o600) == {"a": 1}
    assert json.loads(path.read_text()) == {"a": 1}  # repaired, with its mode
    assert path.stat().st_mode & 0o777 == 0o600
    assert len(list(tmp_path.glob("tokens.json.corrupt-*"))) == 1
    path.unlink()
    assert read_with_backup(path, json.loads, "tokens", if_removed="empty") == {"a": 1}
    assert path.exists()


def test_a_good_file_repairs_a_missing_damaged_or_stale_backup(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    write_with_backup(path, json.dumps({"a": 1}))
    for damage in ("unlink", "]", json.dumps({"a": 0})):
        if damage == "unlink":
            backup_of(path).unlink()
        else:
            backup_of(path).write_text(damage)
        assert read_with_backup(path, json.loads, "state", if_removed="empty") == {"a": 1}
        assert backup_of(path).read_text() == path.read_text()
    assert len(list(tmp_path.glob("*.corrupt-*"))) == 1  # the damaged backup, kept aside


def test_both_copies_damaged_is_a_clear_error_and_both_stay_in_place(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert read_with_backup(path, json.loads, "state", if_removed="with no apps") is None
    write_with_backup(path, "{}")
    path.write_text("[")
    backup_of(path).write_text("]")
    for _attempt in range(2):  # the next start finds them again: nothing is emptied
        with pytest.raises(NestError, match=r"both copies are damaged.*start with no apps"):
            read_with_backup(path, json.loads, "state", if_removed="with no apps")
        assert (path.read_text(), backup_of(path).read_text()) == ("[", "]")
    assert list(tmp_path.glob("*.corrupt-*")) == []
