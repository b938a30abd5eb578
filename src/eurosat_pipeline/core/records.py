"""The train stage's record files, which the report, the benchmarks and the tests read back:
``history.csv`` (one row per epoch) and ``tsne.csv`` (t-SNE points of validation images per
epoch). Their columns and parsing live here, below both writer and readers, so a reader needs
neither Lightning nor the training code to draw two charts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.classes import class_colours_of
from eurosat_pipeline.core.files import read_csv, write_csv

HISTORY_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "val_loss",
    "val_acc",
    "lr_head",
    "lr_backbone",
    "train_seconds",
    "images_per_s",
)
TSNE_COLUMNS = ("epoch", "x", "y", "actual", "predicted")


def write_history(rows: list[dict[str, Any]], path: str | Path) -> None:
    write_csv(path, HISTORY_COLUMNS, rows)


def read_history(path: str | Path) -> list[dict[str, Any]]:
    return [{k: int(v) if k in ("epoch", "phase") else float(v) for k, v in row.items()} for row in read_csv(path)]


def write_tsne_csv(rows: list[dict[str, Any]], path: str | Path) -> None:
    write_csv(path, TSNE_COLUMNS, rows)


def read_tsne_csv(path: str | Path) -> list[dict[str, Any]]:
    return [
        {
            "epoch": int(r["epoch"]),
            "x": float(r["x"]),
            "y": float(r["y"]),
            "actual": r["actual"],
            "predicted": r["predicted"],
        }
        for r in read_csv(path)
    ]


def tsne_figure(rows: list[dict[str, Any]], title: str, classes: Sequence[str]) -> Any:
    """Interactive scatter coloured by the true class, with the predicted class on hover: the same
    chart in W&B (during training) and in the HTML report."""
    import plotly.express as px  # only the two callers that draw pay for importing Plotly

    epochs = sorted({r["epoch"] for r in rows})
    return px.scatter(
        {k: [r[k] for r in rows] for k in TSNE_COLUMNS},
        x="x",
        y="y",
        color="actual",
        hover_data={"predicted": True, "actual": True, "x": False, "y": False},
        animation_frame="epoch" if len(epochs) > 1 else None,
        color_discrete_map=class_colours_of(list(classes)),
        category_orders={"actual": list(classes)},
        title=title,
    )
