"""The model card the report stage writes next to the HTML report (``reports/model_card.md``)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from eurosat_pipeline.classes import CLASSES
from eurosat_pipeline.dataset import SYNTHETIC_WARNING
from eurosat_pipeline.split import read_split

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
    "random_flips",
    "jitter_brightness",
    "jitter_contrast",
    "jitter_saturation",
    "jitter_hue",
    "input_pipeline",
    "precision",
    "seed",
)


def model_card(
    summary: dict[str, Any], metrics: dict[str, Any], per_class: list[dict[str, Any]], split_csv: Path
) -> str:
    config, data, test = summary["config"], summary["data"], metrics["test"]
    split_counts = collections.Counter(row.split for row in read_split(split_csv))
    warning = (
        f"> **WARNING: {SYNTHETIC_WARNING}** Its numbers say nothing about real imagery.\n\n"
        if data.get("synthetic")
        else ""
    )
    lines = [
        f"# Model card: EuroSAT land-use classifier ({config['model_name']})",
        "",
        warning + "Classifies 64x64 RGB Sentinel-2 patches into the ten EuroSAT land-use classes.",
        "",
        "## Model",
        "",
        f"- Backbone: timm `{config['model_name']}`, "
        + _weights_text(summary.get("pretrained_weights"), config["pretrained"])
        + f"; head: Dropout({config['head_dropout']}) -> Linear(features, {config['head_hidden']}) -> "
        f"BatchNorm1d -> ReLU -> Dropout({config['head_hidden_dropout']}) -> Linear({config['head_hidden']}, 10).",
        f"- Input: 3-band RGB, {_preprocessing_text(summary.get('preprocessing'), config['image_size'])}.",
        f"- Output: probabilities over {', '.join(CLASSES)}.",
        f"- Files: `models/best.ckpt` ({summary['best_checkpoint']}; a Lightning checkpoint holding its own "
        "config, loadable with `weights_only=True`) and `models/model.onnx` (export stage).",
        "",
        "## Data",
        "",
        f"- Source: `{data['source']}`"
        + (" (SYNTHETIC)" if data.get("synthetic") else "")
        + f", {data['num_images']:,} images: "
        + ", ".join(f"{name} {data['class_counts'][name]:,}" for name in CLASSES)
        + ".",
        f"- Split (stratified, seed {config['split_seed']}, `data/split.csv`): train {split_counts['train']:,}, "
        f"validation {split_counts['val']:,}, test {split_counts['test']:,}.",
        "",
        "## Training recipe",
        "",
        "| param | value |",
        "|---|---|",
        *[f"| {key} | {config[key]} |" for key in RECIPE_KEYS],
        "",
        "## Results",
        "",
        f"Test split ({test['images']:,} images never used for training or model selection): accuracy "
        f"**{test['acc']:.2%}**, macro F1 {test['macro_f1']:.4f}. Best validation accuracy "
        f"{summary['best_val_acc']:.2%} (epoch of `{summary['best_checkpoint']}`).",
        *_inference_lines(metrics.get("inference")),
        "",
        "| class | precision | recall | F1 | test images |",
        "|---|---:|---:|---:|---:|",
        *[
            f"| {r['class']} | {r['precision']:.3f} | {r['recall']:.3f} | {r['f1']:.3f} | {r['support']} |"
            for r in per_class
        ],
        "",
        "## Training time and hardware",
        "",
        f"{summary['epochs']} epochs in {summary['wall_seconds']:.0f} s on {summary['hardware']} "
        f"({summary['precision']} precision"
        + (f": {summary['precision_reason']}" if summary.get("precision_reason") else "")
        + ").",
        "",
        "## Intended use",
        "",
        "Land-use / land-cover labelling of Sentinel-2 RGB patches like EuroSAT's: research, teaching, "
        "baselines and pre-screening that a person reviews.",
        "",
        "## Known limits",
        "",
        "- RGB only: the 13-band multispectral EuroSAT and other sensors are out of scope.",
        "- 64x64 patches at Sentinel-2's 10 m resolution; other sizes are resized, other resolutions are "
        "out of distribution.",
        "- Trained on European regions (EuroSAT covers 34 European countries); other climates and "
        "landscapes may be misclassified.",
        "- Exactly ten classes: anything else (clouds, snow, mixed patches) is forced into one of them.",
        "- Not for decisions about people or property without human review.",
        "",
    ]
    return "\n".join(lines)


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


def _preprocessing_text(preprocessing: dict[str, Any] | None, image_size: int) -> str:
    """Summaries from before preprocessing was recorded used ImageNet statistics."""
    if not preprocessing:
        return f"resized to {image_size} px, ImageNet mean/std normalisation"
    mean = ", ".join(f"{v:g}" for v in preprocessing["mean"])
    std = ", ".join(f"{v:g}" for v in preprocessing["std"])
    return (
        f"resized to {preprocessing['image_size']} px ({preprocessing['interpolation']}), normalised with the "
        f"backbone's own mean ({mean}) and std ({std}) from timm's data config"
    )
