"""The evaluate stage: the best checkpoint on the held-out test split, scored with scikit-learn."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix

from eurosat_pipeline.checkpoints import load_classifier
from eurosat_pipeline.classes import CLASSES
from eurosat_pipeline.files import read_json, write_json, write_text
from eurosat_pipeline.hardware import cpu_has_native_bf16
from eurosat_pipeline.inference import default_device, predict_logits
from eurosat_pipeline.loading import load_splits
from eurosat_pipeline.model import Classifier


@dataclass(frozen=True)
class EvalPaths:
    checkpoint: Path
    archive: Path
    split: Path
    dataset_info: Path
    metrics: Path
    per_class: Path
    confusion: Path


def evaluate(paths: EvalPaths) -> dict[str, Any]:
    """Test metrics of the model (fp32, as predict and map classify by default), and how far bf16
    would agree with them."""
    model, _ = load_classifier(paths.checkpoint)
    test = load_splits(paths.archive, paths.split, ("test",))["test"]
    device = default_device()
    probabilities = predict_logits(model, test.images, device, precision="fp32").softmax(dim=1)
    predicted = probabilities.argmax(dim=1).tolist()
    actual = test.labels.tolist()
    labels = list(range(len(CLASSES)))
    report = classification_report(
        actual, predicted, labels=labels, target_names=list(CLASSES), output_dict=True, zero_division=0
    )
    metrics = {
        "test": {
            "acc": accuracy_score(actual, predicted),
            "macro_f1": report["macro avg"]["f1-score"],
            "macro_precision": report["macro avg"]["precision"],
            "macro_recall": report["macro avg"]["recall"],
            "images": len(actual),
        },
        "synthetic_data": bool(read_json(paths.dataset_info).get("synthetic", False)),
        "inference": _bf16_agreement(model, test.images, device, probabilities, test.labels),
    }
    write_json(paths.metrics, metrics)
    _write_per_class(report, confusion_matrix(actual, predicted, labels=labels), paths.per_class)
    _write_predictions(test.paths, actual, predicted, probabilities.max(dim=1).values.tolist(), paths.confusion)
    return metrics


def _bf16_agreement(
    model: Classifier, images: torch.Tensor, device: torch.device, fp32: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """How far ``--precision bf16`` (2.5x faster where the CPU has native bf16) agrees with fp32 here."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        return {"bf16": "not measured: this CPU has no native bf16"}
    predicted = predict_logits(model, images, device, precision="bf16").argmax(dim=1)
    return {
        "bf16_top1_agreement_with_fp32": (predicted == fp32.argmax(dim=1)).float().mean().item(),
        "bf16_acc": (predicted == labels).float().mean().item(),
    }


def _write_per_class(report: dict[str, Any], matrix: Any, out: Path) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["class", "precision", "recall", "f1", "support", *CLASSES])
    for index, name in enumerate(CLASSES):
        row = report[name]
        writer.writerow(
            [
                name,
                f"{row['precision']:.6f}",
                f"{row['recall']:.6f}",
                f"{row['f1-score']:.6f}",
                int(row["support"]),
                *matrix[index].tolist(),
            ]
        )
    write_text(out, buffer.getvalue())


def _write_predictions(
    paths: list[str], actual: list[int], predicted: list[int], confidence: list[float], out: Path
) -> None:
    """One row per test image: what `dvc plots` draws as the confusion matrix."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "actual", "predicted", "confidence"])
    for path, a, p, c in zip(paths, actual, predicted, confidence, strict=True):
        writer.writerow([path, CLASSES[a], CLASSES[p], f"{c:.4f}"])
    write_text(out, buffer.getvalue())
