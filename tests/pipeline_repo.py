"""A throw-away git + DVC copy of this repository, for tests that run the real `dvc` commands."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO_ROOT

# Not the whole weights/ folder: it may hold a developer's own (big, DVC-tracked) files.
COPIED = ("dvc.yaml", "stages", "src", "weights/README.md", ".dvcignore", ".gitignore")
# The repository's DVC settings (the offline plots page), copied over what `dvc init` writes.
DVC_SETTINGS = (".dvc/config", ".dvc/plots/offline.html")


class PipelineRepo:
    def __init__(self, root: Path, params: dict[str, Any]) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for name in COPIED:
            source = REPO_ROOT / name
            if source.is_dir():
                shutil.copytree(source, root / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
            else:
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, root / name)
        self.write_params(params)
        self.git("init", "-q")
        self.git("config", "user.email", "tests@example.com")
        self.git("config", "user.name", "tests")
        self.run("dvc", "init", "-q")
        for name in DVC_SETTINGS:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO_ROOT / name, root / name)
        self.git("add", "-A")
        self.git("commit", "-qm", "pipeline")

    @classmethod
    def existing(cls, root: Path) -> PipelineRepo:
        """A handle on a repository that is already there (a clone, say)."""
        repo = cls.__new__(cls)
        repo.root = root
        return repo

    def copy_to(self, target: Path) -> PipelineRepo:
        """An independent copy (git history, DVC cache, workspace) for a test that changes things.

        DVC's scratch folder ``.dvc/tmp`` (locks, queue workers' state) stays behind; DVC makes a
        new one, and its per-repository caches outside the repository are keyed by the path.
        """
        scratch = self.root / ".dvc"
        shutil.copytree(
            self.root, target, symlinks=True, ignore=lambda folder, _: ["tmp"] if Path(folder) == scratch else []
        )
        return PipelineRepo.existing(target)

    def write_params(self, params: dict[str, Any]) -> None:
        lines = [f"{key}: {json.dumps(value)}" for key, value in params.items()]
        (self.root / "params.yaml").write_text("\n".join(lines) + "\n")

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        # `python` in dvc.yaml must be this interpreter, with the package installed.
        env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
        # Stages write __pycache__ beside the code they import, as on a user's machine where this is
        # unset: .dvcignore must keep it out of the hashed source folders.
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env.update(DVC_NO_ANALYTICS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        return env

    def run(
        self, *command: str, check: bool = True, env: dict[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            command, cwd=self.root, env={**self.env(), **(env or {})}, capture_output=True, text=True
        )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def start_queue(self, jobs: int) -> None:
        """``dvc queue start -j jobs``. Its workers are daemons that inherit the command's output:
        captured, they would hold the pipes open after it returns, so its output goes to a file."""
        with (self.root / ".dvc" / "tmp" / "queue-start.log").open("a") as log:
            subprocess.run(
                ["dvc", "queue", "start", "-j", str(jobs)],
                cwd=self.root,
                env=self.env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                check=True,
            )

    def stop_queue_workers(self) -> None:
        """End this repository's queue workers. DVC's celery workers stop by themselves when the
        queue is empty, but one that decides to stop while its task still runs can hang after it
        (seen with -j 2): an idle process no test should leave behind."""
        for pid_file in (self.root / ".dvc" / "tmp" / "exps" / "celery").glob("dvc-exp-worker-*.pid"):
            with contextlib.suppress(ValueError, OSError):
                pid = int(pid_file.read_text().strip())
                if b"queue-worker" in Path(f"/proc/{pid}/cmdline").read_bytes():  # not a reused pid
                    os.kill(pid, signal.SIGKILL)

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args)

    def dvc_json(self, *args: str) -> Any:
        return json.loads(self.run("dvc", *args, "--json").stdout)
