"""What the command-line entry points share: logging, reporting a user's mistake, tool lookup."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

from eurosat_pipeline.errors import PipelineError


def configure_logging() -> None:
    """Our messages at INFO; other libraries' (ONNX optimiser passes and the like) only when they warn."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("eurosat_pipeline").setLevel(logging.INFO)


def run_stage(main: Callable[[], object]) -> None:
    """Run ``main``; a :class:`PipelineError` prints its message (no stack trace) and exits 2."""
    configure_logging()
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)


def tool_environment() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, for the ``dvc`` and stage processes we start:
    their ``python`` is then the one with the pipeline installed, even in a non-activated venv."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
