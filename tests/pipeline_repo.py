"""A throw-away git + DVC copy of this repository, for tests that run the real `dvc` commands."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from .conftest import REPO_ROOT

# Not the whole weights/ folder: it may hold a developer's own (big, DVC-tracked) files.
COPIED = ("dvc.yaml", "stages", "src", "weights/README.md", ".dvcignore", ".gitignore")


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
        env.update(DVC_NO_ANALYTICS="1", WANDB_MODE="disabled", PYTHONUNBUFFERED="1")
        return env

    def run(self, *command: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(command, cwd=self.root, env=self.env(), capture_output=True, text=True)
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(command)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def git(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run("git", *args)

    def dvc_json(self, *args: str) -> Any:
        return json.loads(self.run("dvc", *args, "--json").stdout)
