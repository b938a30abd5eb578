"""Batched inference with the validation preprocessing the model carries (resize + normalise)."""

from __future__ import annotations

import torch
from torch import Tensor

from eurosat_pipeline.augment import eval_transform
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
