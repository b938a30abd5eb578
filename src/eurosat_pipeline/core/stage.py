"""What the command-line entry points share: logging, reporting a user's mistake, tool lookup."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path

from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.files import storage_error

# Lightning's informational lines that say nothing about this run's results: the hardware
# summary, "Seed set to", the LitLogger advertisement. Others on the same loggers (the DDP start-up
# lines) and all warnings (through the warnings module) still show.
QUIET_LINES: dict[str, tuple[str, ...]] = {
    "lightning.pytorch.utilities.rank_zero": (
        "💡 Tip:",
        "GPU available:",
        "TPU available:",
        "HPU available:",
        "Loading `train_dataloader` to estimate",
        "`Trainer.fit` stopped:",
    ),
    "lightning.fabric.utilities.seed": ("Seed set to",),
}


class _DropLines(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]) -> None:
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def configure_logging() -> None:
    """Our messages at INFO; other libraries' (ONNX optimiser passes and the like) only when they warn."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("eurosat_pipeline").setLevel(logging.INFO)
    quiet_third_party()


def quiet_third_party() -> None:
    """Hide known third-party noise, each by its message and the module that raises it; any other
    warning still shows. The one place for such filters."""
    for name, prefixes in QUIET_LINES.items():
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropLines) for f in logger.filters):
            logger.addFilter(_DropLines(prefixes))
    # torch deprecated LeafSpec; Lightning's own pytree helper still uses it (not our code).
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"lightning\.pytorch\.utilities\._pytree",
    )
    # Under 16-mixed the gradient scaler skips the optimizer step when its first scale overflows
    # (by design, while it calibrates); the scheduler still steps, and torch warns about the order.
    warnings.filterwarnings(
        "ignore",
        message=r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`",
        category=UserWarning,
    )
    # By design the module, not the data module, owns the on-device batch transform. (The warning
    # that both override it, where the module's would be skipped, has other words and still shows.)
    warnings.filterwarnings(
        "ignore",
        message=r"You have overridden `on_after_batch_transfer` in `LightningModule` but have passed in a",
        module=r"lightning\.pytorch\.trainer\.connectors\.data_connector",
    )


def run_stage(main: Callable[[], object]) -> None:
    """Run ``main``; a :class:`PipelineError`, or a write the storage refused anywhere (a library's
    own writer included), prints one line (no stack trace) and exits 2."""
    configure_logging()
    try:
        main()
    except (PipelineError, OSError) as err:
        message = user_error(err)
        if message is None:
            raise
        if not getattr(err, "echo_of_rank_zero", False):  # DDP: the same error once, from rank 0
            print(f"error: {message}", file=sys.stderr)
        sys.exit(2)


def user_error(err: BaseException) -> str | None:
    """The one line a user sees for ``err``, or None for a bug (whose traceback is the report)."""
    if isinstance(err, PipelineError):
        return str(err)
    if isinstance(err, OSError):
        problem = storage_error(err, None)  # a writer without its own message: the file if known
        return str(problem) if problem is not None else None
    return None


def tool_environment() -> dict[str, str]:
    """This interpreter's bin folder first on PATH, for the ``dvc`` and stage processes we start:
    their ``python`` is then the one with the pipeline installed, even in a non-activated venv."""
    bin_dir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": os.pathsep.join([bin_dir, os.environ.get("PATH", "")])}
