"""How a model wants its input: size, per-band mean and std, value scale and resize interpolation.

Two cases (:func:`Preprocessing.for_model`):

- 8-bit red, green, blue with a pretrained backbone: the backbone's own statistics from timm's
  data config (``resolve_model_data_config``), on values divided by 255, as the backbone was
  trained (``tf_efficientnet_lite0`` used mean = std = 0.5, ``efficientnet_b0`` ImageNet's).
- anything else (other bands, 16-bit values, no pretrained weights): the mean and std of each
  band over the training split, on the raw values (``value_scale`` 1), computed by the split stage.

The resolved numbers travel in the checkpoint and the ONNX metadata, so train, evaluate, predict,
map, the per-sample loader and the export all scale exactly alike.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from eurosat_pipeline.core.errors import DatasetError

if TYPE_CHECKING:
    from torch import nn

    from eurosat_pipeline.core.dataspec import DataSpec

INTERPOLATIONS = ("bilinear", "bicubic", "nearest")


@dataclass(frozen=True)
class Preprocessing:
    """Resize to ``image_size`` with ``interpolation``, then ``(x / value_scale - mean) / std`` per band."""

    image_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    interpolation: str = "bilinear"
    value_scale: float = 255.0

    @property
    def bands(self) -> int:
        return len(self.mean)

    @classmethod
    def for_backbone(cls, backbone: nn.Module, image_size: int) -> Preprocessing:
        """The backbone's own normalisation and interpolation (timm's data config), at our size."""
        import timm  # here, not at the top: inference from an ONNX file needs neither timm nor torch

        data_config = timm.data.resolve_model_data_config(backbone)
        return cls(
            image_size=image_size,
            mean=_floats(data_config["mean"]),
            std=_floats(data_config["std"]),
            interpolation=_interpolation(data_config),
        )

    @classmethod
    def for_model(cls, backbone: nn.Module, image_size: int, data: DataSpec, pretrained: bool) -> Preprocessing:
        """The backbone's statistics for 8-bit RGB into a pretrained backbone, else the data's own."""
        own = cls.for_backbone(backbone, image_size)
        if pretrained and data.is_rgb8:
            return own
        if data.mean is None or data.std is None:
            raise DatasetError(
                f"no band statistics for the model's {data.in_chans} {data.dtype} band(s): the split stage "
                "writes them (data/band_stats.json); run `dvc repro split`."
            )
        # A band with one value everywhere has std 0: dividing by 1 leaves it centred, not infinite.
        std = tuple(s if s > 0 else 1.0 for s in data.std)
        return cls(image_size, tuple(data.mean), std, own.interpolation, value_scale=1.0)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Preprocessing:
        return cls(
            image_size=int(data["image_size"]),
            mean=_floats(data["mean"]),
            std=_floats(data["std"]),
            interpolation=str(data["interpolation"]),
            value_scale=float(data["value_scale"]),
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        return {**data, "mean": list(self.mean), "std": list(self.std)}


def _floats(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def _interpolation(data_config: Mapping[str, Any]) -> str:
    interpolation = data_config.get("interpolation", "bilinear")
    return interpolation if interpolation in INTERPOLATIONS else "bilinear"
