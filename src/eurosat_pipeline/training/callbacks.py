"""Lightning callbacks: checkpoint names with the real accuracy, and the per-epoch history."""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback, ModelCheckpoint, WeightAveraging
from torch.optim.swa_utils import get_ema_multi_avg_fn

from eurosat_pipeline.core.records import write_history


class BestCheckpoints(ModelCheckpoint):
    """Keeps the ``top_k`` checkpoints by ``val/acc`` as ``best-{epoch:03d}-{val_acc:.3f}.ckpt``.

    The epoch in the name is 1-based, like the history's, and the accuracy is the logged
    ``val/acc`` (the original formatted an unlogged ``val_acc`` and named every file 0.000).
    """

    def __init__(self, dirpath: str | Path, top_k: int = 3) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="best-{epoch:03d}-{val/acc:.3f}",
            monitor="val/acc",
            mode="max",
            save_top_k=top_k,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )

    def format_checkpoint_name(self, metrics: dict[str, Any], *args: Any, **kwargs: Any) -> str:
        if "epoch" in metrics:
            metrics = {**metrics, "epoch": metrics["epoch"] + 1}
        return super().format_checkpoint_name(metrics, *args, **kwargs)


@contextlib.contextmanager
def own_checkpoint_folders(*callbacks: ModelCheckpoint) -> Iterator[None]:
    """Silence Lightning's warning that these callbacks' folders are not empty, while the block runs.

    Lightning warns because a top-k callback deletes the files it ranks out. The run's folders are
    its own scratch (emptied unless the run resumes) and the last checkpoint only ever replaces its
    own file, so the warning would only alarm. A caller's callback writing elsewhere is still
    warned about: only these folders' messages are filtered.
    """
    with warnings.catch_warnings():
        for callback in callbacks:
            folder = re.escape(str(callback.dirpath))
            warnings.filterwarnings("ignore", message=f"Checkpoint directory {folder} exists and is not empty")
        yield


class EpochRows(Callback):
    """Per-epoch rows kept in the checkpoint, so a resumed run continues them; on start, rows of
    epochs that will run again are dropped."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows = [r for r in self.rows if r["epoch"] <= trainer.current_epoch]


class HistoryWriter(EpochRows):
    """One CSV row per trained epoch, written when the epoch ends (never for sanity checks or
    ``validate()``), with that epoch's own train loss."""

    def __init__(self, path: str | Path) -> None:
        super().__init__()
        self.path = Path(path)
        self.resumed_after = 0

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.resumed_after = len(self.rows)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.rows.append(pl_module.epoch_record())
        if trainer.is_global_zero:
            write_history(self.rows, self.path)


class EpochLines(Callback):
    """One line per epoch on standard output, for logs that are not a terminal (DVC, CI), where a
    progress bar prints nothing readable. It shows the history's newest row, so it must come after
    the :class:`HistoryWriter` in the callback list."""

    def __init__(self, history: HistoryWriter, max_epochs: int) -> None:
        self.history = history
        self.max_epochs = max_epochs

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.is_global_zero and self.history.rows:
            print(epoch_line(self.history.rows[-1], self.max_epochs), flush=True)


def epoch_line(row: dict[str, Any], max_epochs: int) -> str:
    return (
        f"epoch {row['epoch']}/{max_epochs}  phase {row['phase']}  train loss {row['train_loss']:.4f}  "
        f"val loss {row['val_loss']:.4f}  val acc {row['val_acc']:.2%}  {row['images_per_s']:,.0f} images/s"
    )


class PhaseTwoEMA(WeightAveraging):
    """An exponential moving average of the weights over phase 2 (``ema_decay``), from Lightning's
    own :class:`WeightAveraging`: validation, the checkpoints' ``state_dict`` (so ``best.ckpt`` and
    everything built from it) and the final model are the average; the raw weights go on training.

    Phase 1 is left alone: averaging a frozen backbone's head from its random start would only lag,
    so the average starts as a copy of the weights phase 1 ends with. Until then nothing is swapped
    or saved as the average (the base class would validate and checkpoint its setup-time copy).
    """

    def __init__(self, decay: float) -> None:
        # The foreach EMA also handles integer buffers (BatchNorm's counters), which the per-tensor one does not.
        super().__init__(use_buffers=True, multi_avg_fn=get_ema_multi_avg_fn(decay))
        self.started = False  # the average holds phase-2 weights (set on its first update, or on resume)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.phase() == 2:
            super().on_train_batch_end(trainer, pl_module, *args)
            self.started = True

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == "fit" and not trainer.sanity_checking:
            # The raw weights' non-finite flag, read before the average (whose copy of the flag is
            # an average too) is swapped in: no checkpoint of a broken state is written.
            pl_module.check_finite()
        if self.started:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started:
            super().on_validation_epoch_end(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.started:
            super().on_train_end(trainer, pl_module)

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if self.started:
            super().on_save_checkpoint(trainer, pl_module, checkpoint)

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        # A checkpoint from phase 1 has no average yet: the average starts when phase 2 does.
        if "current_model_state" in checkpoint:
            super().on_load_checkpoint(trainer, pl_module, checkpoint)
            self.started = True
