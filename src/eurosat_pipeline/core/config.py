"""One typed, frozen configuration, loaded from ``params.yaml`` and checked before any work.

The keys are flat so that ``dvc exp run -S phase2_lr=3e-4`` works as written. Defaults are the
reference recipe; ``params.yaml`` repeats them with a comment each, and a test keeps the two equal.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import annotated_types
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from eurosat_pipeline.core.errors import ConfigError
from eurosat_pipeline.core.limits import MAX_IMAGE_PIXELS
from eurosat_pipeline.core.views import DEFAULT_VIEWS, VIEW_COUNTS

# Lightning settings that are valid elsewhere but cannot work with this pipeline, and why.
REFUSED = {
    ("strategy", "ddp_spawn"): (
        "cannot work here: the spawned ranks' callback state (history, best checkpoints) never returns to the "
        "main process, and the frozen phase 1 needs unused-parameter detection. Use strategy: ddp (or auto), "
        "which starts one process per device and works with dvc repro"
    ),
    ("precision", "bf16-true"): (
        "is not supported: it casts every float buffer, including the batch transform's colour matrices and "
        "mean/std, to bf16, and the on-device augmentation then mixes bf16 and fp32. Use bf16-mixed (the "
        "default on GPUs with native bf16)"
    ),
    ("precision", "16-true"): "is not supported (see bf16-true); use 16-mixed",
}


# Types with their ranges: pydantic checks them, and the error message says the range in words.
LearningRate = Annotated[float, Field(gt=0, allow_inf_nan=False)]
Count = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(gt=0, lt=1)]
Share = Annotated[float, Field(ge=0, lt=1)]


class KeyProblem(ValueError):
    """A value that breaks a rule its type cannot say (set in a validator, shown as ``key msg``)."""

    def __init__(self, key: str, message: str, value: Any) -> None:
        super().__init__(message)
        self.key, self.message, self.value = key, message, value


class Config(BaseModel):
    """Every knob of the pipeline; see ``params.yaml`` for what each one means. The table below is
    the validation: each key's type and range; the validators add what spans keys."""

    # strict: a YAML `true` is no epoch count and '1e-4' (quoted) no learning rate. No knob takes
    # .nan or .inf: an infinite weight decay is within ">= 0" and trains nothing.
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False, protected_namespaces=())

    # data
    data_source: str = "eurosat"
    synthetic_images_per_class: Annotated[int, Field(ge=10)] = 100
    # PIL's MAX_IMAGE_PIXELS, the ecosystem's convention against decompression bombs.
    max_image_pixels: Annotated[int, Field(ge=1)] = MAX_IMAGE_PIXELS
    val_fraction: Fraction = 0.1
    test_fraction: Annotated[float, Field(gt=0, lt=1, description="the evaluate stage needs a test split")] = 0.1
    split_seed: int = 42
    bands: list[str | int] = Field(default_factory=list)
    band_names: list[str] = Field(default_factory=list)
    # model
    model_name: str = "efficientnet_b0"
    pretrained: bool = True
    pretrained_weights: str = ""
    head_hidden: Annotated[int, Field(ge=1)] = 256
    head_dropout: Share = 0.3
    head_hidden_dropout: Share = 0.15
    # recipe
    phase1_epochs: Count = 7
    phase1_lr: LearningRate = 2.0e-3
    phase1_warmup_epochs: Count = 1
    phase1_cached_features: bool = False
    phase2_epochs: Count = 10
    phase2_lr: LearningRate = 1.0e-4
    phase2_frozen_stages: Count = 0
    backbone_lr_scale: LearningRate = 0.1
    min_lr: LearningRate = 1.0e-6
    batch_size: Annotated[int, Field(ge=2, description="BatchNorm needs two samples")] = 64
    image_size: Annotated[int, Field(ge=32, le=1024, description="pixels")] = 224
    weight_decay: Annotated[float, Field(ge=0)] = 1.0e-4
    label_smoothing: Share = 0.1
    ema_decay: Share = 0.0
    seed: int = 42
    # augmentation
    random_flips: bool = True
    random_quarter_turns: bool = True
    jitter_brightness: Share = 0.2
    jitter_contrast: Share = 0.2
    jitter_saturation: Share = 0.2
    jitter_hue: Annotated[float, Field(ge=0, le=0.5)] = 0.1
    # hardware
    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: int | str = 1
    num_nodes: Annotated[int, Field(ge=1)] = 1
    strategy: Literal["auto", "ddp", "ddp_find_unused_parameters_true"] = "auto"
    precision: Literal["auto", "32-true", "bf16-mixed", "16-mixed"] = "auto"
    channels_last: bool = True
    compile: bool = False
    resume: bool = True
    # evaluation
    tta_views: Literal[VIEW_COUNTS] = DEFAULT_VIEWS  # Literal[(1, 2, 4, 8)] is Literal[1, 2, 4, 8]
    # tracking
    tsne_interval: Count = 3
    wandb_mode: Literal["offline", "online", "disabled", "auto"] = "auto"
    wandb_project: str = "eurosat-pipeline"
    wandb_entity: str = ""

    @field_validator("tta_views", mode="before")
    @classmethod
    def _view_count(cls, value: Any) -> Any:
        if isinstance(value, bool):  # True == 1, so the Literal alone would take it
            raise KeyProblem("tta_views", f"must be one of {', '.join(map(str, VIEW_COUNTS))}", value)
        return value

    @field_validator("bands", mode="before")
    @classmethod
    def _band_list(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise KeyProblem(
                "bands",
                "must be a list of str or int (e.g. [B04, B03, B02] or [4, 3, 2])",
                f"{type(value).__name__} {value!r}",
            )
        for item in value:
            if (
                isinstance(item, bool)
                or not isinstance(item, str | int)
                or (isinstance(item, str) and not item.strip())
            ):
                raise KeyProblem("bands", f"{item!r} is not a band name or a 1-based band number", None)
        return value

    @field_validator("band_names", mode="before")
    @classmethod
    def _name_list(cls, value: Any) -> Any:
        if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
            raise KeyProblem(
                "band_names", "must be a list of band names, one per band (e.g. [B04, B03, B02, B08])", value
            )
        folded = [n.casefold() for n in value]
        repeated = [n for i, n in enumerate(value) if folded.count(folded[i]) > 1 and folded.index(folded[i]) == i]
        if repeated:
            raise KeyProblem("band_names", f"names {', '.join(repeated)} more than once", None)
        return value

    @field_validator("model_name", "data_source")
    @classmethod
    def _not_blank(cls, value: str, info: Any) -> str:
        if not value.strip():
            what = {
                "model_name": "must name a timm model",
                "data_source": "must be 'eurosat', 'eurosat_ms', 'synthetic' or the path of a zip or folder with "
                "one folder per class",
            }[info.field_name]
            raise KeyProblem(info.field_name, what, value)
        return value

    @field_validator("devices")
    @classmethod
    def _device_count_or_list(cls, value: int | str) -> int | str:
        ok = value >= 1 if isinstance(value, int) else value == "auto" or _is_device_list(value)
        if not ok:
            raise KeyProblem(
                "devices", "must be a count >= 1, 'auto', or a comma-separated list of GPU ids like '0,1'", value
            )
        return value

    @model_validator(mode="after")
    def _across_keys(self) -> Config:
        if self.max_epochs < 1:
            raise KeyProblem("phase2_epochs", "must make phase1_epochs + phase2_epochs at least 1", self.phase2_epochs)
        if self.min_lr >= min(self.phase1_lr, self.phase2_lr * self.backbone_lr_scale):
            raise KeyProblem(
                "min_lr",
                "must be below every peak learning rate (phase1_lr, phase2_lr * backbone_lr_scale)",
                self.min_lr,
            )
        if self.val_fraction + self.test_fraction >= 0.95:
            raise KeyProblem(
                "test_fraction",
                "must leave a training set: val_fraction + test_fraction must be below 0.95",
                self.test_fraction,
            )
        return self

    @property
    def max_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    @property
    def is_synthetic(self) -> bool:
        return self.data_source == "synthetic"

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    def replace(self, **changes: Any) -> Config:
        """A copy with ``changes`` applied and checked like a loaded file."""
        return config_from_mapping({**self.to_dict(), **changes}, source="overrides")


def load_config(path: str | Path = "params.yaml") -> Config:
    """Read, type-check and validate a params file.

    Uses ruamel's YAML 1.2 loader, the one DVC uses, so ``1e-4`` is a number here exactly when it
    is a number to ``dvc params diff``.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root).")
    try:
        raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8"))
    except YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(raw).__name__}.")
    return config_from_mapping(raw, source=str(path))


def config_from_mapping(raw: Mapping[str, Any], source: str = "params") -> Config:
    """Build a :class:`Config` from plain values, raising :class:`ConfigError` on the first problem."""
    for key in ("strategy", "precision"):
        reason = REFUSED.get((key, raw.get(key)))
        if reason:
            raise ConfigError(f"{source}: key '{key}': {raw[key]} {reason}.")
    try:
        return Config.model_validate(dict(raw))
    except ValidationError as err:
        raise ConfigError(f"{source}: {_explain(err.errors()[0])}") from None


# Keys added after checkpoints were first written, with the value those older runs trained with
# where it differs from today's default: a stored config without the key trained without it.
OLDER_RUNS_LACKED: dict[str, Any] = {"random_quarter_turns": False}


def stored_config(raw: Mapping[str, Any], source: str) -> Config:
    """The config a checkpoint was trained with (what its recipe and model card say)."""
    return config_from_mapping({**OLDER_RUNS_LACKED, **raw}, source)


def _explain(error: Mapping[str, Any]) -> str:
    """One pydantic error in the words of a person editing params.yaml."""
    problem = error.get("ctx", {}).get("error")
    if isinstance(problem, KeyProblem):
        got = (
            ""
            if problem.value is None
            else f", got {problem.value}"
            if problem.key == "bands"
            else f", got {problem.value!r}"
        )
        return f"key '{problem.key}' {problem.message}{got}."
    key, value, kind = str(error["loc"][0]), error["input"], error["type"]
    if kind == "extra_forbidden":
        return f"unknown key '{key}'.{_did_you_mean(key, Config.model_fields)}"
    field = Config.model_fields[key]
    if kind == "literal_error":
        return f"key '{key}' must be one of {', '.join(map(str, get_args(field.annotation)))}, got {value!r}."
    if kind.endswith("_type") or kind in ("int_from_float", "bool_parsing"):
        hint = (
            " (write numbers without quotes, e.g. 1.0e-4)"
            if field.annotation is float and isinstance(value, str)
            else ""
        )
        return f"key '{key}' must be {_type_name(field)}, got {type(value).__name__} {value!r}{hint}."
    return f"key '{key}' {_range_text(field, finite=kind == 'finite_number')}, got {value!r}."


def _type_name(field: FieldInfo) -> str:
    kinds = get_args(field.annotation) or (field.annotation,)
    return " or ".join(getattr(kind, "__name__", str(kind)) for kind in kinds)


def _range_text(field: FieldInfo, finite: bool = False) -> str:
    """``must be between 32 and 1024 (pixels)``, from the field's own constraints; ``finite``: the
    value was NaN or infinite (``must be a finite number >= 0``)."""
    bounds = {
        type(item).__name__: getattr(item, type(item).__name__.lower()) for item in field.metadata if _is_bound(item)
    }
    sign = {"Gt": ">", "Ge": ">=", "Lt": "<", "Le": "<="}
    if finite or any(getattr(item, "allow_inf_nan", True) is False for item in field.metadata):
        limits = " and ".join(f"{sign[name]} {bound}" for name, bound in bounds.items())
        text = f"must be a finite number {limits}".rstrip()
    elif ("Gt" in bounds or "Ge" in bounds) and ("Lt" in bounds or "Le" in bounds):
        low, high = bounds.get("Gt", bounds.get("Ge")), bounds.get("Lt", bounds.get("Le"))
        exclusive_high_only = "Ge" in bounds and "Lt" in bounds
        text = f"must be >= {low} and < {high}" if exclusive_high_only else f"must be between {low} and {high}"
    else:
        text = " and ".join(f"must be {sign[name]} {bound}" for name, bound in bounds.items())
    return f"{text} ({field.description})" if field.description else text


def _is_bound(item: object) -> bool:
    return isinstance(item, annotated_types.Gt | annotated_types.Ge | annotated_types.Lt | annotated_types.Le)


def _did_you_mean(key: str, valid: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else " See params.yaml for the valid keys."


def _is_device_list(text: str) -> bool:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return bool(parts) and all(p.isdigit() for p in parts)
