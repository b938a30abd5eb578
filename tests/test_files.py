"""The atomic writer: durable (fsync before the rename), quiet about the process (no umask
changes), and clean (no temporary sibling after any failure, Ctrl-C included)."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from eurosat_pipeline.core.files import atomic_path, write_text


def siblings(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def failing_once(original: Callable[..., Any], error: BaseException, after: bool = False) -> Callable[..., Any]:
    """``original`` that raises ``error`` on its first call (``after``: once the call is done)."""
    calls: list[int] = []

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if calls:
            return original(*args, **kwargs)
        calls.append(1)
        if after:
            original(*args, **kwargs)
        raise error

    return wrapper


@pytest.mark.parametrize("error", [ValueError("bad"), KeyboardInterrupt()], ids=["exception", "ctrl-c"])
def test_a_failure_inside_the_block_leaves_the_old_file_and_no_temporary(tmp_path: Path, error: BaseException) -> None:
    target = tmp_path / "out.txt"
    write_text(target, "previous\n")
    with pytest.raises(type(error)), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise error
    assert target.read_text() == "previous\n"
    assert siblings(tmp_path) == ["out.txt"]


@pytest.mark.parametrize(
    ("function", "after"),
    [("close", True), ("fsync", False), ("replace", False)],
    ids=["making-the-temporary", "fsync", "rename"],
)
def test_ctrl_c_at_any_step_of_the_writer_leaves_no_temporary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, function: str, after: bool
) -> None:
    target = tmp_path / "out.txt"
    write_text(target, "previous\n")
    monkeypatch.setattr(os, function, failing_once(getattr(os, function), KeyboardInterrupt(), after))
    with pytest.raises(KeyboardInterrupt), atomic_path(target) as tmp:
        tmp.write_text("new")
    monkeypatch.undo()
    assert target.read_text() == "previous\n"
    assert siblings(tmp_path) == ["out.txt"]


def test_the_writer_never_changes_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The umask is process-wide: setting it, even for a moment, races every other thread's writes."""

    def no_umask(mask: int) -> int:
        raise AssertionError("os.umask called")

    monkeypatch.setattr(os, "umask", no_umask)
    write_text(tmp_path / "out.txt", "text\n")
    monkeypatch.undo()
    mask = os.umask(0o022)
    os.umask(mask)
    assert stat.S_IMODE((tmp_path / "out.txt").stat().st_mode) == 0o666 & ~mask


def test_the_file_is_synced_before_the_rename_and_the_folder_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without fsync, a power cut after the rename can leave an empty file under the final name."""
    events: list[tuple[str, bool]] = []
    fsync, replace = os.fsync, os.replace

    def recording_fsync(fd: int) -> None:
        events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode)))
        fsync(fd)

    def recording_replace(src: Any, dst: Any) -> None:
        events.append(("replace", False))
        replace(src, dst)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    monkeypatch.setattr(os, "replace", recording_replace)
    write_text(tmp_path / "out.txt", "text\n")
    monkeypatch.undo()
    assert events[:2] == [("fsync", False), ("replace", False)]
    if hasattr(os, "O_DIRECTORY"):  # folders can be synced on POSIX systems only
        assert events[2:] == [("fsync", True)]
