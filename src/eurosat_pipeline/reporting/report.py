"""The report stage: one self-contained HTML page (Plotly inlined, opens offline)."""

from __future__ import annotations

import csv
import html
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go

from eurosat_pipeline.core.files import read_json, write_text
from eurosat_pipeline.core.records import read_history, read_tsne_csv, tsne_figure
from eurosat_pipeline.data.dataset import SYNTHETIC_WARNING
from eurosat_pipeline.model.checkpoints import StoredModel, read_stored_model
from eurosat_pipeline.reporting.model_card import model_card

KEY_PARAMS = (
    "model_name",
    "pretrained",
    "phase1_epochs",
    "phase1_lr",
    "phase2_epochs",
    "phase2_lr",
    "backbone_lr_scale",
    "phase2_frozen_stages",
    "batch_size",
    "image_size",
    "weight_decay",
    "label_smoothing",
    "ema_decay",
    "seed",
)


@dataclass(frozen=True)
class ReportPaths:
    history: Path
    train_summary: Path
    eval_metrics: Path
    per_class: Path
    lr_dir: Path
    tsne: Path
    split: Path
    out: Path
    model_card: Path
    checkpoint: Path


def build_report(paths: ReportPaths) -> Path:
    history = read_history(paths.history)
    summary = read_json(paths.train_summary)
    stored = read_stored_model(paths.checkpoint)
    metrics = read_json(paths.eval_metrics)
    per_class = _read_per_class(paths.per_class)
    phase2_start = _phase2_start(summary["config"])
    figures = [
        accuracy_figure(history, phase2_start),
        loss_figure(history, phase2_start),
        lr_figure(_read_lr_curves(paths.lr_dir)),
        confusion_figure(per_class),
    ]
    tsne = read_tsne_csv(paths.tsne)
    if tsne:
        title = "t-SNE of validation embeddings (slide through the logged epochs)"
        figures.append(tsne_figure(tsne, title, list(stored.data.classes)))
    page = _page(stored, summary, metrics, per_class, figures)
    write_text(paths.model_card, model_card(stored, summary, metrics, per_class, paths.split))
    write_text(paths.out, page)
    return paths.out


def _phase2_start(config: dict[str, Any]) -> float | None:
    """Where the dashed line goes: between the last phase-1 epoch and the first phase-2 epoch."""
    if config["phase1_epochs"] > 0 and config["phase2_epochs"] > 0:
        return config["phase1_epochs"] + 0.5
    return None


def _mark_phase2(figure: go.Figure, phase2_start: float | None) -> go.Figure:
    if phase2_start is not None:
        figure.add_vline(
            x=phase2_start,
            line_dash="dash",
            line_color="grey",
            annotation_text="Phase 2 start",
            annotation_position="top left",
        )
    return figure


def accuracy_figure(history: list[dict[str, Any]], phase2_start: float | None) -> go.Figure:
    epochs = [r["epoch"] for r in history]
    figure = go.Figure(go.Scatter(x=epochs, y=[r["val_acc"] for r in history], mode="lines+markers", name="val acc"))
    figure.update_layout(title="Validation accuracy", yaxis_title="accuracy", yaxis_tickformat=".1%")
    return _mark_phase2(_epoch_axis(figure), phase2_start)


def loss_figure(history: list[dict[str, Any]], phase2_start: float | None) -> go.Figure:
    epochs = [r["epoch"] for r in history]
    figure = go.Figure()
    for key, label in (("train_loss", "train loss"), ("val_loss", "val loss")):
        figure.add_trace(go.Scatter(x=epochs, y=[r[key] for r in history], mode="lines+markers", name=label))
    figure.update_layout(
        title="Train and validation loss",
        yaxis_title="cross-entropy (label smoothing)",
    )
    return _mark_phase2(_epoch_axis(figure), phase2_start)


def _epoch_axis(figure: go.Figure) -> go.Figure:
    """Whole epochs only: ticks at 1, 2, 3 ... (never 1.5), labelled as integers, also when zoomed."""
    figure.update_xaxes(title_text="epoch", tickmode="linear", tick0=1, dtick=1, tickformat="d")
    return figure


def lr_figure(curves: dict[str, list[tuple[int, float]]]) -> go.Figure:
    figure = go.Figure()
    for name, points in sorted(curves.items()):
        steps, rates = zip(*points, strict=True) if points else ((), ())
        figure.add_trace(go.Scatter(x=steps, y=rates, mode="lines", name=name))
    figure.update_layout(
        title="Learning rate per parameter group (phase 2 restarts the schedule)",
        xaxis_title="optimizer step",
        yaxis_title="learning rate",
        yaxis_type="log",
    )
    return figure


def _input_text(stored: StoredModel) -> str:
    """The model's bands, value type and class count, as its checkpoint stores them."""
    return f"{', '.join(stored.data.shown_bands())} ({stored.data.dtype}); {stored.data.num_classes} classes"


def _read_lr_curves(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """DVCLive's per-step tables, one per group: ``step<TAB><group>``."""
    curves = {}
    for table in sorted(Path(folder).glob("*.tsv")):
        with table.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle, delimiter="\t"))[1:]
        curves[table.stem] = [(int(step), float(rate)) for step, rate, *_ in rows if float(rate) > 0]
    return curves


def confusion_figure(per_class: list[dict[str, Any]]) -> go.Figure:
    classes = [row["class"] for row in per_class]
    matrix = [[row[name] for name in classes] for row in per_class]
    figure = go.Figure(
        go.Heatmap(z=matrix, x=classes, y=classes, colorscale="Blues", text=matrix, texttemplate="%{text}")
    )
    figure.update_layout(
        title="Confusion matrix (test split)",
        xaxis_title="predicted",
        yaxis_title="actual",
        yaxis_autorange="reversed",
        height=600,
    )
    return figure


def _read_per_class(path: Path) -> list[dict[str, Any]]:
    with Path(path).open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    classes = [r["class"] for r in rows]
    numeric = ("precision", "recall", "f1")
    return [
        {
            "class": r["class"],
            **{k: float(r[k]) for k in numeric},
            "support": int(r["support"]),
            **{name: int(r[name]) for name in classes},
        }
        for r in rows
    ]


def _page(
    stored: StoredModel,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    per_class: list[dict[str, Any]],
    figures: list[go.Figure],
) -> str:
    plots = [
        figure.to_html(full_html=False, include_plotlyjs="inline" if i == 0 else False, config={"displaylogo": False})
        for i, figure in enumerate(figures)
    ]
    data = summary["data"]
    banner = f'<p class="warning">{html.escape(SYNTHETIC_WARNING)}</p>' if data.get("synthetic") else ""
    return _TEMPLATE.format(
        banner=banner,
        run_table=_table(_run_rows(stored, summary, metrics)),
        params_table=_table([(k, summary["config"].get(k, "")) for k in KEY_PARAMS]),
        class_table=_class_table(per_class),
        plots="\n".join(f'<div class="plot">{p}</div>' for p in plots),
    )


def _run_rows(stored: StoredModel, summary: dict[str, Any], metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    data, test = summary["data"], metrics["test"]
    source = shown_source(data["source"]) + (" (SYNTHETIC)" if data.get("synthetic") else "")
    return [
        ("data source", source),
        ("images", f"{data['num_images']:,}"),
        ("model input", _input_text(stored)),
        ("test accuracy", f"{test['acc']:.2%} on {test['images']:,} images"),
        ("test macro F1", f"{test['macro_f1']:.4f}"),
        _views_row(metrics["test_tta"]),
        ("best / final val accuracy", f"{summary['best_val_acc']:.2%} / {summary['final_val_acc']:.2%}"),
        ("best checkpoint", summary["best_checkpoint"]),
        ("epochs", summary["epochs"]),
        ("training wall time", f"{summary['wall_seconds']:.0f} s"),
        ("hardware", summary["hardware"]),
        ("precision", summary["precision"]),
    ]


def _views_row(tta: dict[str, Any]) -> tuple[str, str]:
    """Test-time augmentation's accuracy, as `eurosat predict` classifies by default."""
    return (f"test accuracy, {tta['views']} views averaged", f"{tta['acc']:.2%} (macro F1 {tta['macro_f1']:.4f})")


def _table(rows: list[tuple[str, Any]]) -> str:
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    return f"<table>{body}</table>"


def _class_table(per_class: list[dict[str, Any]]) -> str:
    head = "<tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>support</th></tr>"
    body = "".join(
        f"<tr><td>{html.escape(r['class'])}</td><td>{r['precision']:.3f}</td><td>{r['recall']:.3f}</td>"
        f"<td>{r['f1']:.3f}</td><td>{r['support']}</td></tr>"
        for r in per_class
    )
    return f"<table>{head}{body}</table>"


_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>EuroSAT land-use classifier: run report</title>
<style>
body {{ font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }}
table {{ border-collapse: collapse; margin: 1em 0; }}
th, td {{ border: 1px solid #ddd; padding: 4px 10px; text-align: left; }}
th {{ background: #f4f4f4; }}
.warning {{ background: #fff3cd; border: 1px solid #e0b000; padding: 0.8em; font-weight: bold; }}
.grid {{ display: flex; gap: 2em; flex-wrap: wrap; }}
</style>
</head>
<body>
<h1>EuroSAT land-use classifier: run report</h1>
{banner}
<div class="grid">
<div><h2>Run</h2>{run_table}</div>
<div><h2>Key params</h2>{params_table}</div>
</div>
{plots}
<h2>Per-class test metrics</h2>
{class_table}
</body>
</html>
"""


def shown_source(source: str) -> str:
    """A local data path as the user would write it from the repository root (``eurosat demo``
    stores it absolute, since queued runs work in temporary copies); names such as ``eurosat`` as
    they are. A report then never shows a machine's own folders."""
    if not os.path.isabs(source):
        return source
    root = os.environ.get("DVC_ROOT") or os.getcwd()  # DVC_ROOT: the repository, also in queued runs
    try:
        return os.path.relpath(source, root)
    except ValueError:  # another drive (Windows)
        return source
