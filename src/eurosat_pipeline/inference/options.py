"""Which model classifies, and how: one frozen, validated value for every user of a trained model.

``eurosat predict``, ``map``, ``serve``, the region workers (local processes, Dask workers) and the
benchmarks all build a :class:`ModelOptions` and hand it to :func:`eurosat_pipeline.inference.engines.load_predictor`.
It is checked once, when it is made, so a wrong engine, view count or batch size is refused before
any file is opened, with the command-line option named; it is picklable, so a worker on another
machine loads exactly the model the command meant (and checks its hash, see ``sha256``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eurosat_pipeline.core.choices import ENGINES, FORMATS
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.views import check_view_count

DEFAULT_CHECKPOINT = "models/best.ckpt"
DEFAULT_BATCH = 256


class ModelOptionError(PipelineError):
    """A model option that cannot be used (named as on the command line)."""


@dataclass(frozen=True)
class ModelOptions:
    """The model's file and how it runs.

    ``onnx_file`` given: ONNX Runtime with that file. Otherwise ``checkpoint``, run by ``engine``
    (``auto``: the checkpoint's own ONNX export on a machine without an NVIDIA GPU when one exists
    and nothing PyTorch-specific was asked for; see :func:`~eurosat_pipeline.inference.engines.choose_engine`).
    ``views`` flips and quarter-turns of each image are averaged (test-time augmentation,
    :mod:`eurosat_pipeline.core.views`). ``batch_size`` images go to the engine at a time.
    ``threads``: intra-op threads (None: the engine's default, every core). ``sha256``: when given,
    the file must have this hash, or it is refused before it is loaded (a worker that is sent the
    options loads the very file the command hashed).
    """

    checkpoint: str = DEFAULT_CHECKPOINT
    onnx_file: str | None = None
    device: str | None = None
    precision: str = "fp32"
    engine: str = "auto"
    views: int = 1
    batch_size: int = DEFAULT_BATCH
    threads: int | None = None
    sha256: str | None = None

    def __post_init__(self) -> None:
        # Paths arrive as Path or str; kept as str so the value pickles and compares the same everywhere.
        object.__setattr__(self, "checkpoint", str(self.checkpoint))
        if self.onnx_file is not None:
            object.__setattr__(self, "onnx_file", str(self.onnx_file))
        if self.engine not in ENGINES:
            raise ModelOptionError(f"--engine {self.engine}: choose one of {', '.join(ENGINES)}")
        if self.precision not in FORMATS:
            raise ModelOptionError(f"--precision {self.precision}: choose one of {', '.join(FORMATS)}")
        try:
            check_view_count(self.views)
        except ValueError as err:
            raise ModelOptionError(str(err)) from err
        _check_count("--batch-size", self.batch_size)
        if self.threads is not None:
            _check_count("--threads", self.threads)
        if self.sha256 is not None and not (len(self.sha256) == 64 and _is_hex(self.sha256)):
            raise ModelOptionError(f"sha256 {self.sha256!r}: not a sha256 (64 hex digits)")

    @property
    def model_file(self) -> Path:
        """The file that is loaded: the ONNX file when given, else the checkpoint."""
        return Path(self.onnx_file or self.checkpoint)


def _check_count(option: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ModelOptionError(f"{option} must be a whole number of at least 1, got {value!r}")


def _is_hex(text: str) -> bool:
    return all(c in "0123456789abcdef" for c in text.lower())
