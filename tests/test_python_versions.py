"""The package and the stages run on every Python that ``requires-python`` admits (>= 3.10).

The suite itself runs on one interpreter, so a call added in a newer Python (3.11's
``hashlib.file_digest``, say) passes here and fails on a 3.10 machine. vermin reads the code
and knows in which version each module, function and syntax appeared.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO_ROOT


def oldest_python() -> str:
    """``3.10`` from ``requires-python = ">=3.10"``."""
    # tomllib is 3.11+: this file must run on the oldest Python too.
    found = re.search(r'^requires-python = ">=([0-9.]+)"$', (REPO_ROOT / "pyproject.toml").read_text(), re.M)
    assert found, 'pyproject.toml: expected requires-python = ">=3.x"'
    return found.group(1)


def vermin(*paths: Path) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("vermin", path=str(Path(sys.executable).parent)) or shutil.which("vermin")
    if executable is None:
        pytest.fail("vermin is a dev dependency: run `make install`")
    command = [executable, "--no-tips", "--violations", f"-t={oldest_python()}-", *map(str, paths)]
    return subprocess.run(command, capture_output=True, text=True, cwd=REPO_ROOT)


def test_src_and_stages_need_nothing_newer_than_requires_python() -> None:
    result = vermin(REPO_ROOT / "src", REPO_ROOT / "stages")
    assert result.returncode == 0, result.stdout + result.stderr


def test_vermin_catches_a_call_from_a_newer_python(tmp_path: Path) -> None:
    newer = tmp_path / "newer.py"
    newer.write_text('import hashlib\n\n\ndef digest(handle):\n    return hashlib.file_digest(handle, "sha256")\n')
    result = vermin(newer)
    assert result.returncode != 0 and "hashlib.file_digest" in result.stdout, result.stdout
