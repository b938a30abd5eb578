"""Errors a user can act on.

Every error the pipeline raises for bad input derives from :class:`PipelineError`; the
command-line entry points print its message (no stack trace) and exit with status 2.
"""

from __future__ import annotations


class PipelineError(Exception):
    """A problem with the user's input, explained in the message."""


class ConfigError(PipelineError, ValueError):
    """An unknown key, wrong type or impossible value in ``params.yaml``."""


class DatasetError(PipelineError):
    """The data source is missing, corrupt or not shaped like EuroSAT."""


class CheckpointError(PipelineError):
    """A file is not a usable checkpoint of this pipeline."""


class MapError(PipelineError):
    """A scene, a mask, the band choice or a map's output path cannot be used."""


class StorageError(PipelineError):
    """An output cannot be written: the disk is full, over quota, read-only or not writable by us."""


class TrainingError(PipelineError):
    """Training cannot go on (for example, the loss became NaN)."""

    #: Raised by every DDP rank at once; only the global-zero rank's message is printed.
    echo_of_rank_zero = False

    @classmethod
    def on_every_rank(cls, is_global_zero: bool, message: str) -> TrainingError:
        error = cls(message)
        error.echo_of_rank_zero = not is_global_zero
        return error


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type where it has none): what an error
    message quotes of a library's multi-line explanation."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
