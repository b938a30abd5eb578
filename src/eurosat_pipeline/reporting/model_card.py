"""The model card the report stage writes next to the HTML report (``reports/model_card.md``).

What the model takes and predicts is read from the checkpoint, never assumed: a model of four
uint16 bands and five classes gets a card that says so."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.classes import CLASSES
from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.data.dataset import SYNTHETIC_WARNING
from eurosat_pipeline.data.split import read_split
from eurosat_pipeline.model.checkpoints import StoredModel
from eurosat_pipeline.model.preprocessing import Preprocessing

RECIPE_KEYS = (
    "model_name",
    "pretrained",
    "pretrained_weights",
    "image_size",
    "batch_size",
    "phase1_epochs",
    "phase1_lr",
    "phase1_warmup_epochs",
    "phase1_cached_features",
    "phase2_epochs",
    "phase2_lr",
    "phase2_frozen_stages",
    "backbone_lr_scale",
    "min_lr",
    "weight_decay",
    "label_smoothing",
    "ema_decay",
    "random_flips",
    "random_quarter_turns",
    "jitter_brightness",
    "jitter_contrast",
    "jitter_saturation",
    "jitter_hue",
    "precision",
    "seed",
)


SUMMARY_KEYS = ("data", "best_checkpoint", "best_val_acc", "epochs", "wall_seconds", "hardware", "precision")


def model_card(
    stored: StoredModel,
    summary: dict[str, Any],
    metrics: dict[str, Any],
    per_class: list[dict[str, Any]],
    split_csv: Path,
) -> str:
    """The card of the model in the checkpoint: what it takes and predicts comes from the checkpoint
    itself (``stored``), how it was trained and how well it does from the train and evaluate stages."""
    missing = [key for key in SUMMARY_KEYS if key not in summary]
    if missing:
        raise PipelineError(
            f"the train summary has no {', '.join(missing)}: it was written by an older train stage; "
            "run `dvc repro train`."
        )
    split_counts = collections.Counter(row.split for row in read_split(split_csv))
    return "\n".join(
        [
            *_header(stored, summary["data"]),
            *_model_section(stored, summary),
            *_data_section(stored, summary["data"], split_counts),
            *_recipe_section(stored.config),
            *_results_section(summary, metrics, per_class),
            *_time_section(summary),
            *_use_and_limits(stored, summary["data"]),
        ]
    )


def _inputs(stored: StoredModel) -> str:
    """``4 band(s) (B04, B03, B02, B08; uint16)``."""
    data = stored.data
    return f"{data.in_chans} band(s) ({', '.join(data.shown_bands())}; {data.dtype})"


def _is_eurosat(stored: StoredModel) -> bool:
    return tuple(stored.data.classes) == CLASSES


def _header(stored: StoredModel, data: dict[str, Any]) -> list[str]:
    classes = stored.data.classes
    title = "EuroSAT land-use classifier" if _is_eurosat(stored) else f"scene classifier, {len(classes)} classes"
    what = "the ten EuroSAT land-use classes" if _is_eurosat(stored) else f"{len(classes)} classes"
    size = stored.data.patch_size
    patches = f"{size}x{size} patches" if size else "patches"
    warning = (
        f"> **WARNING: {SYNTHETIC_WARNING}** Its numbers say nothing about real imagery.\n\n"
        if data.get("synthetic")
        else ""
    )
    return [
        f"# Model card: {title} ({stored.config.model_name})",
        "",
        f"{warning}Classifies {patches} of {_inputs(stored)} into {what}.",
        "",
    ]


def _model_section(stored: StoredModel, summary: dict[str, Any]) -> list[str]:
    config, classes = stored.config, stored.data.classes
    lines = [
        "## Model",
        "",
        f"- Backbone: timm `{config.model_name}`, "
        + _weights_text(stored.pretrained_weights, config.pretrained)
        + f"; head: Dropout({config.head_dropout}) -> Linear(features, {config.head_hidden}) -> "
        f"BatchNorm1d -> ReLU -> Dropout({config.head_hidden_dropout}) -> "
        f"Linear({config.head_hidden}, {len(classes)}).",
        f"- Input: {_inputs(stored)}, {_preprocessing_text(stored.preprocessing)}.",
    ]
    if summary.get("stem_adaptation"):  # only pretrained models whose bands are not RGB have one
        lines.append(f"- Pretrained stem: {summary['stem_adaptation']}.")
    if summary.get("freezing"):
        lines.append(f"- Layers trained: {summary['freezing']}.")
    if summary.get("augmentation"):
        lines.append(f"- Augmentation (training only): {summary['augmentation']}.")
    return [
        *lines,
        f"- Output: probabilities over {', '.join(classes)}.",
        f"- Files: `models/best.ckpt` ({summary['best_checkpoint']}; a Lightning checkpoint holding its own "
        "config, loadable with `weights_only=True`) and `models/model.onnx` (export stage).",
        "",
    ]


def _data_section(stored: StoredModel, data: dict[str, Any], split_counts: collections.Counter) -> list[str]:
    return [
        "## Data",
        "",
        f"- Source: `{data['source']}`"
        + (" (SYNTHETIC)" if data.get("synthetic") else "")
        + f", {data['num_images']:,} images: "
        + ", ".join(f"{name} {count:,}" for name, count in data["class_counts"].items())
        + ".",
        f"- Split (stratified, seed {stored.config.split_seed}, `data/split.csv`): train "
        f"{split_counts['train']:,}, validation {split_counts['val']:,}, test {split_counts['test']:,}.",
        "",
    ]


def _recipe_section(config: Config) -> list[str]:
    values = config.to_dict()
    return [
        "## Training recipe",
        "",
        "| param | value |",
        "|---|---|",
        *[f"| {k} | {values[k]} |" for k in RECIPE_KEYS],
        "",
    ]


def _results_section(summary: dict[str, Any], metrics: dict[str, Any], per_class: list[dict[str, Any]]) -> list[str]:
    test, tta = metrics["test"], metrics["test_tta"]
    return [
        "## Results",
        "",
        f"Test split ({test['images']:,} images never used for training or model selection): accuracy "
        f"**{test['acc']:.2%}**, macro F1 {test['macro_f1']:.4f}. Best validation accuracy "
        f"{summary['best_val_acc']:.2%} (epoch of `{summary['best_checkpoint']}`).",
        f"Averaged over {tta['views']} flips and quarter-turns of each image (test-time augmentation, "
        f"`eurosat predict`'s default): accuracy **{tta['acc']:.2%}**, macro F1 {tta['macro_f1']:.4f}.",
        *_inference_lines(metrics.get("inference")),
        "",
        "| class | precision | recall | F1 | test images |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
            for r in per_class
        ],
        "",
    ]


def _time_section(summary: dict[str, Any]) -> list[str]:
    reason = f": {summary['precision_reason']}" if summary.get("precision_reason") else ""
    return [
        "## Training time and hardware",
        "",
        f"{summary['epochs']} epochs in {summary['wall_seconds']:.0f} s on {summary['hardware']} "
        f"({summary['precision']} precision{reason}).",
        "",
    ]


def _use_and_limits(stored: StoredModel, data: dict[str, Any]) -> list[str]:
    spec, size = stored.data, stored.data.patch_size
    bands = (
        "8-bit RGB only: multispectral bands and other sensors are out of scope."
        if spec.is_rgb8 and spec.in_chans == 3
        else f"Exactly its {_inputs(stored)}, in that order: other bands, value types or sensors are out of scope."
    )
    region = (
        "Trained on European regions (EuroSAT covers 34 European countries); other climates and landscapes "
        "may be misclassified."
        if _is_eurosat(stored)
        else f"Trained only on `{data['source']}`: regions, seasons and sensors it does not show may be misclassified."
    )
    patches = f"{size}x{size} patches" if size else "Patches of the training data's size"
    return [
        "## Intended use",
        "",
        f"Land-use / land-cover labelling of patches like the training data's ({_inputs(stored)}): research, "
        "teaching, baselines and pre-screening that a person reviews.",
        "",
        "## Known limits",
        "",
        f"- {bands}",
        f"- {patches} (the model sees them resized to {stored.preprocessing.image_size} px); other sizes are "
        "resized, other ground resolutions are out of distribution.",
        f"- {region}",
        f"- Exactly {len(spec.classes)} classes: anything else (clouds, snow, mixed patches) is forced into one "
        "of them.",
        "- Not for decisions about people or property without human review.",
        "",
    ]


def _inference_lines(inference: dict[str, Any] | None) -> list[str]:
    if not inference or "bf16_top1_agreement_with_fp32" not in inference:
        return []
    return [
        "",
        "`eurosat predict` and `eurosat map` classify in fp32 (ONNX Runtime with `models/model.onnx` on a CPU). "
        f"With `--precision bf16` the top-1 class agrees with fp32 for "
        f"{inference['bf16_top1_agreement_with_fp32']:.2%} of the test images (accuracy {inference['bf16_acc']:.2%}).",
    ]


def _weights_text(weights: dict[str, Any] | None, pretrained: bool) -> str:
    if not pretrained:
        return "trained from scratch (no ImageNet weights)"
    if weights and "sha256" in weights:
        return f"ImageNet-pretrained from `{weights['source']}` ({weights['file']}, sha256 `{weights['sha256']}`)"
    return "ImageNet-pretrained (timm hub weights)"


def _preprocessing_text(preprocessing: Preprocessing) -> str:
    mean = ", ".join(f"{v:.4g}" for v in preprocessing.mean)
    std = ", ".join(f"{v:.4g}" for v in preprocessing.std)
    resized = f"resized to {preprocessing.image_size} px ({preprocessing.interpolation})"
    if preprocessing.value_scale == 1.0:
        return (
            f"{resized}, normalised per band with the training split's own mean ({mean}) and std ({std}) "
            "of the raw values (`data/band_stats.json`)"
        )
    return f"{resized}, normalised with the backbone's own mean ({mean}) and std ({std}) from timm's data config"
