"""Where an unfinished train stage keeps what it needs to resume: scratch space, not pipeline outputs.

DVC's run-cache (``.dvc/cache/runs``) restores a stage whose command, deps and params match an
earlier run instead of running it, but never for a stage with a ``persist`` output; and DVC deletes
a stage's other outputs before running it. So the train stage writes its checkpoints, resume
checkpoint and DVCLive folder into ``<scratch>/<key>/`` (git- and DVC-ignored), where ``key``
hashes everything the run computes from (training params, data, split, pretrained weights, the
package's code), and copies the results to its declared outputs only when training has finished.
Then the folder goes. A killed run leaves it behind, and the next run of the *same* key resumes
from it; a run of another configuration has another key and never sees it.

A relative scratch path is taken from the repository root, ``DVC_ROOT``, which DVC sets also in
queued experiments (they run in temporary copies): a queued experiment that was killed resumes when
it is run again. One process at a time holds a key's folder (an ``flock``, dropped when the process
ends, killed included): a second run of the same configuration at the same time is refused with
an explanation instead of mixing two runs' files.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from eurosat_pipeline.core.errors import TrainingError
from eurosat_pipeline.platform.slots import exclusive

PACKAGE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class ScratchFolder:
    """One configuration's resume state."""

    root: Path

    #: Hex digits of the run's key in the folder's name.
    KEY_LENGTH = 24

    @classmethod
    def of(cls, root: Path, key: str) -> ScratchFolder:
        """The folder of the run with ``key`` under ``root``."""
        return cls(root / key[: cls.KEY_LENGTH])

    @property
    def last(self) -> Path:
        return self.root / "last.ckpt"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def live(self) -> Path:
        return self.root / "live"

    def clear(self) -> None:
        for path in (self.checkpoints, self.live):
            shutil.rmtree(path, ignore_errors=True)
        self.last.unlink(missing_ok=True)


def scratch_root(path: Path, environ: Mapping[str, str] | None = None) -> Path:
    """``path`` as given when absolute; else under the repository root (``DVC_ROOT``) when DVC runs
    the stage, else under the working folder."""
    environ = os.environ if environ is None else environ
    if path.is_absolute():
        return path
    return Path(environ.get("DVC_ROOT") or ".") / path


def code_digest() -> str:
    """The package's own source: a checkpoint written by other code is not resumed."""
    digest = hashlib.sha256()
    for source in sorted(PACKAGE.rglob("*.py")):
        digest.update(source.relative_to(PACKAGE).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()


def launched_as_rank_zero(environ: Mapping[str, str] | None = None) -> bool:
    """False in the processes a DDP launcher starts for ranks other than 0 (Lightning, torchrun and
    SLURM set these variables); those share rank 0's folder and leave it to rank 0."""
    environ = os.environ if environ is None else environ
    return all(environ.get(name, "0") == "0" for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "GROUP_RANK"))


@contextlib.contextmanager
def scratch_folder(root: Path, key: str) -> Iterator[ScratchFolder]:
    """The folder of configuration ``key`` under ``root``, held for the block; removed when the
    block succeeds (its results are then in the stage's outputs)."""
    folder = ScratchFolder.of(root, key)
    if not launched_as_rank_zero():
        yield folder
        return
    folder.root.mkdir(parents=True, exist_ok=True)
    with exclusive(folder.root / ".lock") as held:
        if not held:
            raise TrainingError(
                f"Another process is training this exact configuration right now (its resume state is in "
                f"{folder.root}). Wait for it: when it has finished, DVC restores its results from the "
                "run-cache instead of training again."
            )
        yield folder
    shutil.rmtree(folder.root, ignore_errors=True)


def publish_folder(source: Path, target: Path) -> None:
    """Replace ``target`` with a copy of ``source``: a copy first, then renames, so an interrupted
    publish leaves the scratch intact (to resume from) and no half-copied output."""
    staging = target.with_name(f".{target.name}.publishing")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        staging.mkdir(parents=True)
        # File by file rather than shutil.copytree, which folds a full disk into a shutil.Error
        # without an errno: an OSError here says ENOSPC, and the caller names the output.
        for file in sorted(source.rglob("*")) if source.is_dir() else []:
            copy = staging / file.relative_to(source)
            if file.is_dir():
                copy.mkdir(parents=True, exist_ok=True)
            else:
                shutil.copy2(file, copy)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(target, ignore_errors=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, target)
