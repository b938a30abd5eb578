"""Write outputs atomically: a temporary sibling first, then one rename (text, JSON and CSV).

A run that is killed or fails half-way leaves the previous file (or nothing) in place, never a
half-written one, and DVC never caches a truncated output. A write that the storage refuses (a
full disk, a quota, a read-only or foreign folder) becomes a :class:`StorageError` that names the
output, the space it needed where known, and what to do: one line, never a traceback.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import secrets
import shutil
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.errors import StorageError

# What the storage says, by errno, and what the user can do about it.
STORAGE_PROBLEMS: dict[int, tuple[str, str]] = {
    errno.ENOSPC: ("no space left on the device", "free some space or write to a larger disk"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some of your quota or write elsewhere"),
    errno.EROFS: ("the file system is read-only", "write to a writable folder"),
    errno.EACCES: ("permission denied", "make the folder writable for this user or write elsewhere"),
    errno.EPERM: ("the operation is not permitted", "make the folder writable for this user or write elsewhere"),
}
# Only ever raised by writes: an error with one of these is the storage's, whatever the file.
WRITE_ONLY_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS)


def storage_error(err: OSError, target: str | Path | None, needed: int | None = None) -> StorageError | None:
    """``err`` as one actionable line about writing ``target``, or None when it is not the storage's."""
    if err.errno not in STORAGE_PROBLEMS:
        return None
    problem, remedy = STORAGE_PROBLEMS[err.errno]
    where = Path(target) if target is not None else (Path(err.filename) if err.filename else None)
    facts = []
    if needed is not None:
        facts.append(f"it needs {_size(needed)}")
    if err.errno in (errno.ENOSPC, errno.EDQUOT) and where is not None and (free := _free_space(where)) is not None:
        facts.append(f"{_size(free)} free in {_existing_folder(where)}")
    detail = f" ({', '.join(facts)})" if facts else ""
    subject = f"cannot write {where}" if where is not None else "cannot write an output"
    return StorageError(f"{subject}: {problem}{detail}; {remedy}, then run the command again")


@contextlib.contextmanager
def writing(target: str | Path, needed: int | None = None) -> Iterator[None]:
    """Storage failures inside the block as a :class:`StorageError` about ``target``.

    ENOSPC, EDQUOT and EROFS come only from writes, so they are always about the output; EACCES and
    EPERM only when they concern the output's folder (a source the block reads may be unreadable
    for its own reasons, which are not the output's).
    """
    target = Path(target)
    try:
        yield
    except OSError as err:
        concerns_output = err.filename is None or Path(str(err.filename)).parent in (target.parent, target)
        problem = storage_error(err, target, needed)
        if problem is None or (err.errno not in WRITE_ONLY_ERRNOS and not concerns_output):
            raise
        raise problem from err


def preallocate(handle: Any, size: int, target: str | Path) -> None:
    """Reserve ``size`` bytes for an open file now, so that a full disk fails before the long work
    that fills it, with the size it needed. File systems without fallocate (some network and
    copy-on-write ones) skip this; their writes still fail with ENOSPC when the space runs out."""
    try:
        os.posix_fallocate(handle.fileno(), 0, size)
    except OSError as err:
        if err.errno in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            return
        problem = storage_error(err, target, size)
        if problem is None:
            raise
        raise problem from err


def _size(count: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count:,} bytes"


def _existing_folder(path: Path) -> Path:
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return folder


def _free_space(path: Path) -> int | None:
    try:
        return shutil.disk_usage(_existing_folder(path)).free
    except OSError:
        return None


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` if the block succeeds.

    The file is synced to the disk before the rename and the folder after it, so a power cut
    leaves the old file or the whole new one, never an empty file under the final name. A storage
    failure in the block (or in making the temporary file) is a :class:`StorageError` about
    ``target``; after any failure, Ctrl-C included, the temporary file is gone.
    """
    target = Path(target)
    with writing(target):
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_sibling(target)
        try:
            yield tmp
            _fsync(tmp, os.O_RDONLY)
            os.replace(tmp, target)
            _fsync_folder(target.parent)
        finally:
            tmp.unlink(missing_ok=True)


def _new_sibling(target: Path) -> Path:
    """A new empty file beside ``target``, with the mode any new file gets (0666 less the umask).

    ``os.open`` applies the umask itself: reading it would mean setting it, for the whole process
    and every thread in it. (``mkstemp`` makes 0600 files, too private for outputs.)
    """
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    while True:
        tmp = target.with_name(f".{target.name}.{secrets.token_hex(6)}.tmp")
        with contextlib.suppress(FileExistsError):
            fd = os.open(tmp, flags, 0o666)
            break
    try:
        os.close(fd)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return tmp


def _fsync(path: Path, flags: int) -> None:
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder: Path) -> None:
    """Make the rename durable. Only POSIX systems open folders; some file systems refuse to
    sync one (EINVAL), and then the rename is as durable as they make it."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    try:
        _fsync(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as err:
        if err.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF, errno.EACCES):
            raise


def write_text(target: str | Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: str | Path, data: Any) -> None:
    write_text(target, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def sha256_of(path: str | Path) -> str:
    """The file's sha256, read in chunks (checkpoints and weights are tens of MB)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def csv_text(header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> str:
    """CSV with ``header`` and one line per row: a sequence in the header's order, or a mapping
    by column name (keys outside the header are left out, a missing one is empty)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([row.get(column, "") for column in header] if isinstance(row, Mapping) else row)
    return buffer.getvalue()


def write_csv(target: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any] | Mapping[str, Any]]) -> None:
    """:func:`csv_text`, written atomically."""
    write_text(target, csv_text(header, rows))


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """Every row of a CSV file with a header, by column name; no rows when there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))
