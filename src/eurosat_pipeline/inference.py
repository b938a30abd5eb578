"""Batched inference with the validation preprocessing the model carries (resize + normalise)."""

from __future__ import annotations

import torch
from torch import Tensor

from eurosat_pipeline.augment import BatchTransform, eval_transform
from eurosat_pipeline.model import Classifier


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@torch.no_grad()
def predict_logits(
    model: Classifier,
    images: Tensor,
    device: torch.device | None = None,
    batch_size: int = 256,
) -> Tensor:
    """Logits for a uint8 ``N x 3 x H x W`` batch of same-sized images, returned on the CPU."""
    device = device or default_device()
    model = model.to(device).eval()
    transform = eval_transform(model.preprocessing).to(device)
    outputs = [
        model(transform(images[start : start + batch_size].to(device), train=False)).float().cpu()
        for start in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs) if outputs else torch.empty(0, model.head[-1].out_features)


@torch.no_grad()
def backbone_features(model: Classifier, images: Tensor, channels_last: bool = False, batch_size: int = 256) -> Tensor:
    """Pooled backbone features (eval mode, validation preprocessing) of uint8 images, on their device."""
    transform = BatchTransform(
        model.preprocessing, random_flips=False, jitter=(0.0, 0.0, 0.0, 0.0), channels_last=channels_last
    ).to(images.device)
    was_training = model.backbone.training
    model.backbone.eval()
    try:
        parts = [
            model.backbone(transform(images[start : start + batch_size], train=False)).float()
            for start in range(0, len(images), batch_size)
        ]
    finally:
        model.backbone.train(was_training)
    return torch.cat(parts) if parts else torch.empty(0, model.backbone.num_features, device=images.device)
