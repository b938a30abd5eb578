"""The classifier: a timm backbone (pooled features) and the recipe's small MLP head."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
from torch import Tensor, nn

from eurosat_pipeline.config import Config
from eurosat_pipeline.dataset import CLASSES
from eurosat_pipeline.errors import ConfigError, PipelineError


class Classifier(nn.Module):
    """``backbone`` -> Dropout -> Linear(features, hidden) -> BatchNorm -> ReLU -> Dropout -> Linear."""

    def __init__(
        self, backbone: nn.Module, num_classes: int, hidden: int, dropout: float, hidden_dropout: float
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(backbone.num_features, hidden),
            nn.BatchNorm1d(hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(hidden_dropout),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, images: Tensor) -> Tensor:
        return self.head(self.backbone(images))


def build_model(config: Config, load_pretrained: bool = True) -> Classifier:
    """Build the classifier; ImageNet weights only when asked and ``config.pretrained``."""
    pretrained = load_pretrained and config.pretrained
    overlay = {}
    if pretrained and config.pretrained_weights:
        weights = Path(config.pretrained_weights)
        if not weights.is_file():
            raise ConfigError(f"key 'pretrained_weights': file '{weights}' not found.")
        overlay = {"pretrained_cfg_overlay": {"file": str(weights.resolve())}}
    backbone = _create_backbone(config.model_name, pretrained, overlay)
    return Classifier(
        backbone,
        num_classes=len(CLASSES),
        hidden=config.head_hidden,
        dropout=config.head_dropout,
        hidden_dropout=config.head_hidden_dropout,
    )


def _create_backbone(name: str, pretrained: bool, overlay: dict) -> nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"key 'model_name': '{name}' is not a timm model.{hint}")
    try:
        # num_classes=0: timm drops its classifier and returns pooled features.
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **overlay)
    except (OSError, RuntimeError, ValueError) as err:
        if not pretrained:
            raise
        raise PipelineError(
            f"Could not load ImageNet weights for '{name}' ({type(err).__name__}: {err}). Offline? "
            "Set pretrained_weights to a local weights file, or pretrained: false to train from scratch."
        ) from err


def split_decay(module: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights (ndim >= 2) get weight decay; biases and norm scales (ndim < 2) do not."""
    params = list(module.parameters())
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
