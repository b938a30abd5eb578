"""What every stage script shares: one way to report a user's mistake and exit."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from eurosat_pipeline.errors import PipelineError


def run_stage(main: Callable[[], object]) -> None:
    """Run ``main``; a :class:`PipelineError` prints its message (no stack trace) and exits 2."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        main()
    except PipelineError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
