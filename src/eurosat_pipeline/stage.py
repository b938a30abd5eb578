"""What every stage script shares: one way to report a user's mistake and exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

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
