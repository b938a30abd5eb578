"""DVC's command line as the demo runs it: ``python -m eurosat_pipeline.cli.dvc exp run ...``.

``dvc exp run`` first checks out the outputs that the baseline's ``dvc.lock`` records. A fresh
clone has no ``dvc.lock`` (the first run writes it), so DVC says "No file hash info found for
'<output>'. It won't be created." once per output: true, expected, and nothing to act on. Only
in that case (no ``dvc.lock``) are those lines dropped; with a ``dvc.lock`` they still show.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence
from pathlib import Path

NO_HASH_INFO = "No file hash info found for "
CHECKOUT_LOGGER = "dvc_data.index.checkout"


class _NothingRecordedYet(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(NO_HASH_INFO)


def quiet_fresh_clone_notice(root: Path) -> logging.Filter | None:
    """Drop the notice when ``root`` has no ``dvc.lock``; returns the filter it added, if any."""
    if (root / "dvc.lock").exists():
        return None
    notice_filter = _NothingRecordedYet()
    logging.getLogger(CHECKOUT_LOGGER).addFilter(notice_filter)
    return notice_filter


def main(argv: Sequence[str]) -> int:
    from dvc.cli import main as dvc_main

    quiet_fresh_clone_notice(Path.cwd())
    return int(dvc_main(list(argv)) or 0)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
