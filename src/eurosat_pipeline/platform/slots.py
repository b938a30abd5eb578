"""One GPU per queued experiment, and an equal share of the CPU cores on a machine without one.

``dvc queue start -j N`` runs N experiments at once, each in its own temporary copy of the
repository, all started from one environment: with ``devices: auto`` each would run DDP over every
GPU and the N runs would fight over them. Inside a queued experiment (DVC sets ``DVC_EXP_NAME``, and
``DVC_ROOT`` to the repository while the stage runs in a copy) the train stage therefore claims GPUs
through OS file locks, one lock file per GPU, machine-wide (:data:`SLOT_DIR_ENV` moves the folder):

- the first free GPU wins; a process holding it keeps it until it ends, killed included (the kernel
  drops an ``flock`` with its last open file);
- when every GPU is taken, the run waits for one to free up, saying so once: ``-j 3`` on two GPUs
  runs two experiments and starts the third when one of them finishes;
- an explicit list of GPU ids in ``devices`` (``"0,1"``) is used as it is, without claiming.

On a CPU the queue's workers share the cores: each run takes ``cores / workers`` threads, the
workers counted among the running ``dvc exp queue-worker`` processes of this repository.

:mod:`.placement` decides from these what a run gets.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

log = logging.getLogger(__name__)

SLOT_DIR_ENV = "EUROSAT_SLOT_DIR"
PROC = Path("/proc")


def slot_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where the GPU lock files live: one folder for the whole machine."""
    environ = os.environ if environ is None else environ
    return Path(environ.get(SLOT_DIR_ENV) or Path(tempfile.gettempdir()) / "eurosat-pipeline-slots")


def queued_experiment_root(environ: Mapping[str, str] | None = None, cwd: Path | None = None) -> Path | None:
    """The repository a queued experiment belongs to, when this process runs in one; else ``None``.

    DVC sets ``DVC_EXP_NAME`` for every experiment and ``DVC_ROOT`` to the repository; only a queued
    one runs in another folder (a temporary copy), so a ``dvc exp run`` in the workspace keeps every GPU.
    """
    environ = os.environ if environ is None else environ
    name, root = environ.get("DVC_EXP_NAME"), environ.get("DVC_ROOT")
    if not (name and root):
        return None
    here = (cwd or Path.cwd()).resolve()
    return None if here == Path(root).resolve() else Path(root)


@dataclass
class GPUClaim:
    """GPUs this process holds: ``indices`` for Lightning (among the visible ones), ``ids`` as the
    machine names them (``CUDA_VISIBLE_DEVICES``' entries, or the index when it is unset)."""

    indices: list[int]
    ids: list[str]
    handles: list[IO[bytes]]

    def release(self) -> None:
        for handle in self.handles:
            handle.close()
        self.handles = []


def visible_gpu_ids(count: int, environ: Mapping[str, str] | None = None) -> list[str]:
    """The machine-wide names of the ``count`` GPUs torch sees, in torch's order."""
    environ = os.environ if environ is None else environ
    listed = [part.strip() for part in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if part.strip()]
    return listed[:count] if len(listed) >= count else [str(i) for i in range(count)]


def claim_gpus(wanted: int, ids: Sequence[str], folder: Path | None = None, poll_seconds: float = 2.0) -> GPUClaim:
    """Lock ``wanted`` of the GPUs ``ids`` (all or none), waiting while too few are free."""
    if wanted > len(ids):
        raise ValueError(f"{wanted} GPUs wanted, {len(ids)} on this machine")
    folder = folder or slot_dir()
    folder.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(OSError):  # other users' runs share the folder
        folder.chmod(0o1777)
    said = False
    while True:
        claim = _try_claim(wanted, ids, folder)
        if claim:
            return claim
        if not said:
            log.warning(
                "All %d GPUs are in use by other queued experiments (locks in %s); waiting for one to free up.",
                len(ids),
                folder,
            )
            said = True
        time.sleep(poll_seconds)


def _try_claim(wanted: int, ids: Sequence[str], folder: Path) -> GPUClaim | None:
    claim = GPUClaim([], [], [])
    for index, gpu in enumerate(ids):
        handle = _lock(folder / f"gpu-{_safe(gpu)}.lock")
        if handle is None:
            continue
        claim.indices.append(index)
        claim.ids.append(gpu)
        claim.handles.append(handle)
        if len(claim.indices) == wanted:
            return claim
    claim.release()
    return None


def _lock(path: Path) -> IO[bytes] | None:
    handle = path.open("a+b")
    with contextlib.suppress(OSError):
        path.chmod(0o666)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n".encode())
    handle.flush()
    return handle


def _safe(name: str) -> str:
    """GPU UUIDs (``GPU-8a1c...``) and indices as file names."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@contextlib.contextmanager
def exclusive(path: Path) -> Iterator[bool]:
    """Hold an ``flock`` on ``path`` for the block; yields False (holding nothing) when another
    process has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = _lock(path)
    try:
        yield handle is not None
    finally:
        if handle is not None:
            handle.close()


# ----- CPU: the queue's workers share the cores ----------------------------------------------------
def queue_worker_count(repo_root: Path, proc: Path | None = None) -> int:
    """How many ``dvc exp queue-worker`` processes serve ``repo_root``'s queue (at least 1).

    DVC names worker k of a repository ``dvc-exp-<hash>-<k>@localhost``, the hash being the first
    six hex digits of the sha256 of its queue folder (``dvc/repo/experiments/queue/celery.py``).
    """
    wdir = os.path.join(str(repo_root), ".dvc", "tmp", "exps", "celery")
    prefix = f"dvc-exp-{hashlib.sha256(wdir.encode()).hexdigest()[:6]}-"
    workers = set()
    for cmdline in (proc or PROC).glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:  # the process ended while we looked
            continue
        if b"queue-worker" in args:
            workers.update(a for a in args if a.decode(errors="replace").startswith(prefix))
    return max(1, len(workers))
