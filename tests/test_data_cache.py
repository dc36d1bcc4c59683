"""Cached datasets and the atomic writes behind them: a corrupt or empty cache file is rebuilt rather than crashing
a run, and a write that fails part-way leaves the old file and no temporary one."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import numpy as np
import pytest
import torch

from reslab import atomic
from reslab.atomic import atomic_file, fsync_dir, write_atomic
from reslab.data.cache import load_npz, save_npz_atomic
from reslab.data.mnist1d import load_mnist1d
from tests.helpers import record_durability

SMALL = {"num_samples": 200, "seed": 3}


@pytest.fixture(scope="module")
def fresh_mnist1d(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.Tensor, ...]:
    s = load_mnist1d(**SMALL, data_dir=tmp_path_factory.mktemp("fresh"))
    return s.train.x, s.train.y, s.test.x, s.test.y


def _good_npz(path: Path) -> bytes:
    save_npz_atomic(path, x=np.arange(600.0).reshape(200, 3), y=np.arange(200))
    return path.read_bytes()


def _flip(data: bytes, at: int) -> bytes:
    return data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1 :]


CORRUPTIONS = {
    "empty": lambda good: b"",
    "truncated": lambda good: good[: len(good) // 2],
    "garbage": lambda good: b"not an npz file at all" * 10,
    "pickle": lambda good: pickle.dumps({"x": 1}),  # np.load refuses pickles: ValueError
    "flipped byte": lambda good: _flip(good, len(good) // 2),  # in the array data: BadZipFile for its CRC-32
}


@pytest.mark.parametrize("corruption", [*CORRUPTIONS, "missing array"])
def test_corrupt_mnist1d_cache_is_rebuilt(
    tmp_path: Path, fresh_mnist1d: tuple[torch.Tensor, ...], corruption: str, capsys: pytest.CaptureFixture[str]
) -> None:
    load_mnist1d(**SMALL, data_dir=tmp_path)
    (cached,) = tmp_path.glob("mnist1d-*.npz")
    if corruption == "missing array":
        save_npz_atomic(cached, x=np.zeros((2, 40)))  # a valid npz without y, x_test, y_test: KeyError
    else:
        cached.write_bytes(CORRUPTIONS[corruption](cached.read_bytes()))
    capsys.readouterr()

    s = load_mnist1d(**SMALL, data_dir=tmp_path)
    for got, want in zip((s.train.x, s.train.y, s.test.x, s.test.y), fresh_mnist1d, strict=True):
        assert torch.equal(got, want)
    err = capsys.readouterr().err
    assert err.count("is unreadable") == 1 and f"cached {cached} is unreadable (" in err and "rebuilding it" in err
    assert [p.name for p in tmp_path.iterdir()] == [cached.name]  # rebuilt in place, no temporary file left

    load_mnist1d(**SMALL, data_dir=tmp_path)
    assert capsys.readouterr().err == ""  # the rebuilt file reads fine


@pytest.mark.parametrize("corruption", CORRUPTIONS)
def test_load_npz_removes_an_unreadable_file(
    tmp_path: Path, corruption: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "a.npz"
    path.write_bytes(CORRUPTIONS[corruption](_good_npz(path)))
    assert load_npz(path, ("x", "y")) is None
    assert not path.exists() and "is unreadable" in capsys.readouterr().err


def test_load_npz_reads_a_good_file_and_a_missing_one_is_none(tmp_path: Path) -> None:
    path = tmp_path / "a.npz"
    _good_npz(path)
    arrays = load_npz(path, ("x", "y"))
    assert arrays is not None and arrays["x"].shape == (200, 3) and arrays["y"].tolist() == list(range(200))
    assert load_npz(tmp_path / "missing.npz", ("x",)) is None


# -- atomic writes ----------------------------------------------------------------------------------------------------


def test_write_atomic_bytes_and_text(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, b"\x00bytes")
    assert path.read_bytes() == b"\x00bytes"
    write_atomic(path, "text é")
    assert path.read_text(encoding="utf-8") == "text é"
    assert [p.name for p in tmp_path.iterdir()] == ["f"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # as plain open() would create it


def test_failed_rename_keeps_the_old_file_and_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")

    def fail(*args: object) -> None:
        raise OSError("disk gone")

    monkeypatch.setattr(atomic.os, "replace", fail)
    with pytest.raises(OSError, match="disk gone"):
        write_atomic(path, b"new")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_exception_mid_write_keeps_the_old_file_and_no_temp(tmp_path: Path, exc: type[BaseException]) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(exc), atomic_file(path) as fh:
        fh.write(b"half of the new")
        fh.flush()
        raise exc("interrupted")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f"]


def test_save_npz_atomic_leaves_no_temp_when_saving_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(fh: object, **arrays: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", fail)
    with pytest.raises(KeyboardInterrupt):
        save_npz_atomic(tmp_path / "a.npz", x=np.zeros(3))
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("write", ["atomic_file", "save_npz_atomic"])
def test_file_is_fsynced_before_the_rename_and_the_directory_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write: str
) -> None:
    events = record_durability(monkeypatch)
    if write == "atomic_file":
        with atomic_file(tmp_path / "f") as fh:
            fh.write(b"data")
    else:
        save_npz_atomic(tmp_path / "f", x=np.zeros(3))
    assert events == ["fsync file", "replace", "fsync dir"]


def test_fsync_dir_is_best_effort(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(fd: int) -> None:
        raise OSError(22, "Invalid argument")  # what some filesystems answer for a directory

    monkeypatch.setattr(os, "fsync", refuse)
    fsync_dir(tmp_path)  # no exception
    fsync_dir(tmp_path / "missing")
