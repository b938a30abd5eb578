"""Batched inference with the validation preprocessing the model carries (resize + normalise).

**Number format.** Predictions are made in fp32. bf16 (autocast, channels_last) is faster on a CPU
with AVX512-BF16 or AMX, but its top-1 agreement with fp32 on the real test split was below the
99.5 % we ask of a default (the evaluate stage measures it with every run; figures in
docs/results.md), so bf16 is only used when asked for (``--precision bf16``). The fast CPU engine
for predictions is ONNX Runtime, in fp32 (:mod:`eurosat_pipeline.inference.engines`). The phase-1
feature pass, which trains the head and predicts nothing, does use bf16 where it is native
(:func:`feature_format`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from eurosat_pipeline.core.choices import FORMATS
from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.views import mean_over_views
from eurosat_pipeline.model.augment import eval_transform
from eurosat_pipeline.model.classifier import Classifier
from eurosat_pipeline.platform.accelerators import cpu_has_native_bf16, flush_denormals


class Images(Protocol):
    """A tensor of images, or anything that slices into one (a split over the decoded array)."""

    def __len__(self) -> int: ...

    def __getitem__(self, positions: slice) -> Tensor: ...


@dataclass(frozen=True)
class InferenceFormat:
    """The number format inference runs in, and why."""

    dtype: str
    reason: str

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager[object]:
        if self.dtype == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def inference_format(requested: str = "fp32") -> InferenceFormat:
    if requested not in FORMATS:
        raise PipelineError(f"--precision {requested}: choose one of {', '.join(FORMATS)}")
    reason = "asked for" if requested == "bf16" else "exact predictions (bf16 is only used when asked for)"
    return InferenceFormat(requested, reason)


def feature_format(device: torch.device) -> InferenceFormat:
    """The phase-1 feature pass on a CPU: bf16 where the CPU computes it natively (faster, and the
    head trains on the features, it does not predict from them), else fp32."""
    if device.type == "cpu" and cpu_has_native_bf16():
        return InferenceFormat("bf16", "CPU with native bf16 (AVX512-BF16/AMX)")
    return InferenceFormat("fp32", "no native bf16 here")


def prepare(model: Classifier, device: torch.device) -> Classifier:
    """The model in eval mode on ``device``, channels_last (faster convolutions on CPUs and GPUs)."""
    if device.type == "cpu":
        flush_denormals()
    return model.to(device, memory_format=torch.channels_last).eval()


def predict_logits(
    model: Classifier,
    images: Images,
    device: torch.device | None = None,
    batch_size: int = 256,
    precision: str = "fp32",
    views: int = 1,
) -> Tensor:
    """Logits (fp32, on the CPU) for integer ``N x bands x H x W`` images of one size, a batch at a time.

    With ``views`` > 1 (test-time augmentation, core/views.py), the log of the class probabilities
    averaged over that many flips and quarter-turns: its softmax is the averaged probabilities.
    """
    device = device or default_device()
    model = prepare(model, device)  # outside inference mode: the model stays usable for training
    fmt = inference_format(precision)
    transform = eval_transform(model.preprocessing, channels_last=True).to(device)
    outputs = []
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].to(device)
        with torch.inference_mode(), fmt.autocast(device):
            if views == 1:
                logits = model(transform(batch, train=False)).float()
            else:

                def probabilities(view: Tensor) -> Tensor:
                    return model(transform(view, train=False)).float().softmax(dim=1)

                logits = mean_over_views(probabilities, batch, views).log()
        outputs.append(logits.cpu())
    return torch.cat(outputs) if outputs else torch.empty(0, model.head[-1].out_features)


@torch.no_grad()
def backbone_features(
    model: Classifier,
    images: Images,
    channels_last: bool = False,
    batch_size: int = 256,
    fmt: InferenceFormat | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Pooled backbone features (eval mode, validation preprocessing) of integer images, on
    ``device`` (default: where the images are)."""
    fmt = fmt or InferenceFormat("fp32", "default")
    device = device or getattr(images, "device", torch.device("cpu"))
    transform = eval_transform(model.preprocessing, channels_last=channels_last).to(device)
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        parts = []
        for start in range(0, len(images), batch_size):
            batch = images[start : start + batch_size].to(device, non_blocking=True)
            with fmt.autocast(device):
                parts.append(model.backbone(transform(batch, train=False)).float())
    finally:
        model.backbone.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.backbone.num_features, device=device)
