"""t-SNE pictures of the validation embeddings (the backbone's pooled features) during training.

Every ``tsne_interval`` epochs and at the last epoch: at most 50 points per class, PCA
initialisation, a fixed random state and one fixed colour per class. Written three ways: a PNG per
epoch through DVCLive (``tsne/<epoch>.png``, which DVC shows with a step slider), an interactive
Plotly chart for W&B, and the coordinates as a CSV the HTML report draws.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import matplotlib
import numpy as np
import torch
from PIL import Image
from sklearn.manifold import TSNE
from torchmetrics.utilities.distributed import gather_all_tensors

from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.core.records import tsne_figure, write_tsne_csv
from eurosat_pipeline.training.callbacks import EpochRows

matplotlib.use("Agg")
from matplotlib import pyplot as plt

MAX_PER_CLASS = 50
TSNE_SEED = 0


def sample_per_class(labels: np.ndarray, classes: int, limit: int = MAX_PER_CLASS) -> np.ndarray:
    """Indices of at most ``limit`` points of each class, the first ones in validation order."""
    chosen = [np.flatnonzero(labels == c)[:limit] for c in range(classes)]
    return np.sort(np.concatenate(chosen))


def tsne_coordinates(features: np.ndarray) -> np.ndarray:
    perplexity = float(min(30, max(2, (len(features) - 1) // 3)))
    return TSNE(n_components=2, init="pca", random_state=TSNE_SEED, perplexity=perplexity).fit_transform(features)


def tsne_rows(
    epoch: int, features: np.ndarray, labels: np.ndarray, predicted: np.ndarray, classes: Sequence[str]
) -> list[dict[str, Any]]:
    keep = sample_per_class(labels, len(classes))
    coords = tsne_coordinates(features[keep].astype(np.float64))
    return [
        {"epoch": epoch, "x": float(x), "y": float(y), "actual": classes[a], "predicted": classes[p]}
        for (x, y), a, p in zip(coords, labels[keep], predicted[keep], strict=True)
    ]


def tsne_png(rows: list[dict[str, Any]], title: str, classes: Sequence[str]) -> Image.Image:
    figure, axes = plt.subplots(figsize=(7, 6), dpi=100)
    colours = class_colours_of(list(classes))
    for name in classes:
        points = [(r["x"], r["y"]) for r in rows if r["actual"] == name]
        if points:
            xs, ys = zip(*points, strict=True)
            axes.scatter(xs, ys, s=14, color=colours[name], label=name)
    axes.set_title(title)
    axes.set_xticks([])
    axes.set_yticks([])
    axes.legend(fontsize=7, loc="center left", bbox_to_anchor=(1, 0.5))
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return Image.open(buffer).convert("RGB")


class TSNELogger(EpochRows):
    """Collects validation features on the chosen epochs and logs the t-SNE picture."""

    def __init__(self, interval: int, csv_path: str | Path) -> None:
        super().__init__()
        self.interval = interval
        self.csv_path = Path(csv_path)
        self._batches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _active(self, trainer: L.Trainer) -> bool:
        if self.interval <= 0 or trainer.sanity_checking or trainer.state.fn != "fit":
            return False
        epoch = trainer.current_epoch + 1
        return epoch % self.interval == 0 or epoch == trainer.max_epochs

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        if trainer.is_global_zero:
            write_tsne_csv(self.rows, self.csv_path)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._batches = []

    def on_validation_batch_end(
        self,
        trainer: L.Trainer,
        pl_module: L.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._active(trainer):
            self._batches.append(
                (outputs["features"].detach().float(), outputs["labels"].detach(), outputs["logits"].argmax(dim=1))
            )

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self._active(trainer) or not self._batches:
            return
        features, labels, predicted = (torch.cat(parts) for parts in zip(*self._batches, strict=True))
        self._batches = []
        if trainer.world_size > 1:
            # Validation shards are not padded, so they may differ in length by one.
            features, labels, predicted = (torch.cat(gather_all_tensors(t)) for t in (features, labels, predicted))
        if not trainer.is_global_zero:
            return
        epoch = trainer.current_epoch + 1
        classes = list(pl_module.data.classes)
        rows = tsne_rows(epoch, features.cpu().numpy(), labels.cpu().numpy(), predicted.cpu().numpy(), classes)
        self.rows = [r for r in self.rows if r["epoch"] != epoch] + rows
        write_tsne_csv(self.rows, self.csv_path)
        self._publish(trainer, epoch, rows, classes)

    def _publish(self, trainer: L.Trainer, epoch: int, rows: list[dict[str, Any]], classes: list[str]) -> None:
        title = f"t-SNE of validation embeddings, epoch {epoch}"
        for logger in trainer.loggers:
            experiment = logger.experiment
            if hasattr(experiment, "log_image"):  # DVCLive: tsne/<epoch>.png -> a slider in DVC
                experiment.log_image(f"tsne/{epoch}.png", tsne_png(rows, title, classes))
            elif hasattr(experiment, "log") and hasattr(experiment, "summary"):  # W&B
                import wandb

                figure = wandb.Plotly(tsne_figure(rows, title, classes))
                experiment.log({"tsne": figure, "trainer/global_step": trainer.global_step})
