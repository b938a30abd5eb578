"""The model card the report stage writes next to the HTML report (``reports/model_card.md``)."""

from __future__ import annotations

import collections
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.classes import CLASSES, IMAGE_SIZE
from eurosat_pipeline.data.dataset import SYNTHETIC_WARNING
from eurosat_pipeline.data.split import read_split

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
    "precision",
    "seed",
)


def _adaptation_lines(summary: dict[str, Any]) -> list[str]:
    """The stem adaptation (pretrained models) and the augmentation, where the summary has them."""
    lines = []
    if summary.get("stem_adaptation"):
        lines.append(f"- Pretrained stem: {summary['stem_adaptation']}.")
    if summary.get("augmentation"):
        lines.append(f"- Augmentation (training only): {summary['augmentation']}.")
    return lines


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
    model_input = summary.get("model_input") or {}
    classes = list(model_input.get("classes") or data.get("classes") or CLASSES)
    bands = model_input.get("band_names") or [f"band {b}" for b in model_input.get("bands", [1, 2, 3])]
    dtype = model_input.get("dtype", "uint8")
    size = data.get("image_size") or IMAGE_SIZE
    eurosat = classes == list(CLASSES)
    title = "EuroSAT land-use classifier" if eurosat else f"scene classifier, {len(classes)} classes"
    what = "the ten EuroSAT land-use classes" if eurosat else f"{len(classes)} classes"
    lines = [
        f"# Model card: {title} ({config['model_name']})",
        "",
        warning
        + f"Classifies {size}x{size} patches of {len(bands)} band(s) ({', '.join(bands)}; {dtype}) into {what}.",
        "",
        "## Model",
        "",
        f"- Backbone: timm `{config['model_name']}`, "
        + _weights_text(summary.get("pretrained_weights"), config["pretrained"])
        + f"; head: Dropout({config['head_dropout']}) -> Linear(features, {config['head_hidden']}) -> "
        f"BatchNorm1d -> ReLU -> Dropout({config['head_hidden_dropout']}) -> "
        f"Linear({config['head_hidden']}, {len(classes)}).",
        f"- Input: {len(bands)} band(s) ({', '.join(bands)}; {dtype}), "
        f"{_preprocessing_text(summary.get('preprocessing'), config['image_size'])}.",
        *_adaptation_lines(summary),
        f"- Output: probabilities over {', '.join(classes)}.",
        f"- Files: `models/best.ckpt` ({summary['best_checkpoint']}; a Lightning checkpoint holding its own "
        "config, loadable with `weights_only=True`) and `models/model.onnx` (export stage).",
        "",
        "## Data",
        "",
        f"- Source: `{data['source']}`"
        + (" (SYNTHETIC)" if data.get("synthetic") else "")
        + f", {data['num_images']:,} images: "
        + ", ".join(f"{name} {count:,}" for name, count in data["class_counts"].items())
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
    mean = ", ".join(f"{v:.4g}" for v in preprocessing["mean"])
    std = ", ".join(f"{v:.4g}" for v in preprocessing["std"])
    resized = f"resized to {preprocessing['image_size']} px ({preprocessing['interpolation']})"
    if preprocessing.get("value_scale", 255.0) == 1.0:
        return (
            f"{resized}, normalised per band with the training split's own mean ({mean}) and std ({std}) "
            "of the raw values (`data/band_stats.json`)"
        )
    return f"{resized}, normalised with the backbone's own mean ({mean}) and std ({std}) from timm's data config"
