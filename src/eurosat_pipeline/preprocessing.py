"""How a backbone wants its input: size, mean, std and resize interpolation.

The numbers come from timm's data config of the chosen model (``resolve_model_data_config``), not
from constants: ``tf_efficientnet_lite0`` was trained with mean = std = 0.5, ``efficientnet_b0``
with ImageNet's statistics, and feeding a backbone the other's normalisation costs accuracy. The
resolved numbers travel in the checkpoint and the ONNX metadata, so train, evaluate, predict, the
per-sample loader and the export all use the same ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import nn

# What every checkpoint and ONNX file written before preprocessing was stored used.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``image_size`` with ``interpolation``, then ``(x - mean) / std`` on [0, 1] pixels."""

    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    @classmethod
    def for_backbone(cls, backbone: nn.Module, image_size: int) -> Preprocessing:
        """The backbone's own normalisation and interpolation (timm's data config), at our size."""
        import timm  # here, not at the top: inference from an ONNX file needs neither timm nor torch

        data_config = timm.data.resolve_model_data_config(backbone)
        interpolation = data_config.get("interpolation", "bilinear")
        return cls(
            image_size=image_size,
            mean=_triple(data_config["mean"]),
            std=_triple(data_config["std"]),
            interpolation=interpolation if interpolation in INTERPOLATIONS else "bilinear",
        )

    @classmethod
    def legacy(cls, image_size: int) -> Preprocessing:
        """What files from before this was stored were trained with: ImageNet statistics, bilinear."""
        return cls(image_size, IMAGENET_MEAN, IMAGENET_STD, "bilinear")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            mean=_triple(data["mean"]),
            std=_triple(data["std"]),
            interpolation=str(data.get("interpolation", "bilinear")),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, "mean": list(self.mean), "std": list(self.std)}


def _triple(values: Any) -> tuple[float, float, float]:
    a, b, c = (float(v) for v in values)
    return a, b, c
