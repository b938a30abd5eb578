"""The evaluate stage: the best checkpoint on the held-out test split, scored with scikit-learn."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from sklearn.metrics import accuracy_score, classification_report, confusion_matrix, f1_score

from eurosat_pipeline.core.files import read_json, write_csv, write_json
from eurosat_pipeline.core.views import DEFAULT_VIEWS
from eurosat_pipeline.data.loading import ImageSet, load_splits
from eurosat_pipeline.model.checkpoints import load_classifier
from eurosat_pipeline.model.classifier import Classifier
from eurosat_pipeline.model.inference import Images, default_device, predict_logits
from eurosat_pipeline.platform.accelerators import cpu_has_native_bf16


@dataclass(frozen=True)
class EvalPaths:
    checkpoint: Path
    archive: Path
    split: Path
    dataset_info: Path
    metrics: Path
    per_class: Path
    confusion: Path
    images: Path | None = None  # the decoded array (default: images.npy beside the archive)


def evaluate(paths: EvalPaths, views: int = DEFAULT_VIEWS) -> dict[str, Any]:
    """Test metrics of the model (fp32, as predict and map classify by default), the same with the
    probabilities averaged over ``views`` flips and quarter-turns (``test_tta``: test-time
    augmentation, as ``eurosat predict`` does by default), and how far bf16 would agree."""
    model, _ = load_classifier(paths.checkpoint)
    classes = list(model.data.classes)
    test = load_splits(paths.archive, paths.split, ("test",), model.data, paths.images)["test"]
    device = default_device()
    probabilities = predict_logits(model, test, device, precision="fp32").softmax(dim=1)
    predicted = probabilities.argmax(dim=1).tolist()
    actual = test.labels.tolist()
    labels = list(range(len(classes)))
    report = classification_report(
        actual, predicted, labels=labels, target_names=classes, output_dict=True, zero_division=0
    )
    metrics = {
        "test": {
            "acc": accuracy_score(actual, predicted),
            "macro_f1": report["macro avg"]["f1-score"],
            "macro_precision": report["macro avg"]["precision"],
            "macro_recall": report["macro avg"]["recall"],
            "images": len(actual),
        },
        "test_tta": _with_views(model, test, device, views),
        "synthetic_data": bool(read_json(paths.dataset_info).get("synthetic", False)),
        "inference": _bf16_agreement(model, test, device, probabilities, test.labels),
    }
    write_json(paths.metrics, metrics)
    _write_per_class(report, confusion_matrix(actual, predicted, labels=labels), classes, paths.per_class)
    confidence = probabilities.max(dim=1).values.tolist()
    _write_predictions(
        test.paths, [classes[a] for a in actual], [classes[p] for p in predicted], confidence, paths.confusion
    )
    return metrics


def _with_views(model: Classifier, images: ImageSet, device: torch.device, views: int) -> dict[str, Any]:
    """Accuracy and macro F1 with ``views`` views averaged (core/views.py)."""
    predicted = predict_logits(model, images, device, precision="fp32", views=views).argmax(dim=1).tolist()
    actual = images.labels.tolist()
    return {
        "acc": accuracy_score(actual, predicted),
        "macro_f1": f1_score(actual, predicted, average="macro", zero_division=0),
        "views": views,
    }


def _bf16_agreement(
    model: Classifier, images: Images, device: torch.device, fp32: torch.Tensor, labels: torch.Tensor
) -> dict[str, Any]:
    """How far ``--precision bf16`` (2.5x faster where the CPU has native bf16) agrees with fp32 here."""
    if device.type == "cpu" and not cpu_has_native_bf16():
        return {"bf16": "not measured: this CPU has no native bf16"}
    predicted = predict_logits(model, images, device, precision="bf16").argmax(dim=1)
    return {
        "bf16_top1_agreement_with_fp32": (predicted == fp32.argmax(dim=1)).float().mean().item(),
        "bf16_acc": (predicted == labels).float().mean().item(),
    }


def _write_per_class(report: dict[str, Any], matrix: Any, classes: list[str], out: Path) -> None:
    rows = [
        [
            name,
            f"{report[name]['precision']:.6f}",
            f"{report[name]['recall']:.6f}",
            f"{report[name]['f1-score']:.6f}",
            int(report[name]["support"]),
            *matrix[index].tolist(),
        ]
        for index, name in enumerate(classes)
    ]
    write_csv(out, ["class", "precision", "recall", "f1", "support", *classes], rows)


def _write_predictions(
    paths: list[str], actual: list[str], predicted: list[str], confidence: list[float], out: Path
) -> None:
    """One row per test image: what `dvc plots` draws as the confusion matrix."""
    rows = ([path, a, p, f"{c:.4f}"] for path, a, p, c in zip(paths, actual, predicted, confidence, strict=True))
    write_csv(out, ["path", "actual", "predicted", "confidence"], rows)
