"""One typed, frozen configuration, loaded from ``params.yaml`` and checked before any work.

The keys are flat so that ``dvc exp run -S phase2_lr=3e-4`` works as written. Defaults are the
reference recipe; ``params.yaml`` repeats them with a comment each, and a test keeps the two equal.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from eurosat_pipeline.core.errors import ConfigError

ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps")
PRECISIONS = ("auto", "32-true", "bf16-mixed", "16-mixed")
STRATEGIES = ("auto", "ddp", "ddp_find_unused_parameters_true")
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
WANDB_MODES = ("offline", "online", "disabled", "auto")
BUILTIN_SOURCES = ("eurosat", "eurosat_ms", "synthetic")


@dataclasses.dataclass(frozen=True)
class Config:
    """Every knob of the pipeline; see ``params.yaml`` for what each one means."""

    # data
    data_source: str = "eurosat"
    synthetic_images_per_class: int = 100
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 42
    bands: list[str | int] = dataclasses.field(default_factory=list)
    # model
    model_name: str = "efficientnet_b0"
    pretrained: bool = True
    pretrained_weights: str = ""
    head_hidden: int = 256
    head_dropout: float = 0.3
    head_hidden_dropout: float = 0.15
    # recipe
    phase1_epochs: int = 7
    phase1_lr: float = 2.0e-3
    phase1_warmup_epochs: int = 1
    phase1_cached_features: bool = False
    phase2_epochs: int = 10
    phase2_lr: float = 1.0e-4
    phase2_frozen_stages: int = 0
    backbone_lr_scale: float = 0.1
    min_lr: float = 1.0e-6
    batch_size: int = 64
    image_size: int = 224
    weight_decay: float = 1.0e-4
    label_smoothing: float = 0.1
    seed: int = 42
    # augmentation
    random_flips: bool = True
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.2
    jitter_saturation: float = 0.2
    jitter_hue: float = 0.1
    # hardware
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    precision: str = "auto"
    channels_last: bool = True
    compile: bool = False
    resume: bool = True
    # tracking
    tsne_interval: int = 3
    wandb_mode: str = "auto"
    wandb_project: str = "eurosat-pipeline"
    wandb_entity: str = ""

    @property
    def max_epochs(self) -> int:
        return self.phase1_epochs + self.phase2_epochs

    @property
    def is_synthetic(self) -> bool:
        return self.data_source == "synthetic"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

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
    fields = {f.name: f for f in dataclasses.fields(Config)}
    for key in raw:
        if key not in fields:
            raise ConfigError(f"{source}: unknown key '{key}'.{_did_you_mean(str(key), fields)}")
    hints = typing.get_type_hints(Config)
    values = {key: _check_type(source, key, value, hints[key]) for key, value in raw.items()}
    config = Config(**values)
    _check_values(config, source)
    return config


def _did_you_mean(key: str, valid: typing.Iterable[str]) -> str:
    close = difflib.get_close_matches(key, list(valid), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else " See params.yaml for the valid keys."


def _check_type(source: str, key: str, value: Any, hint: Any) -> Any:
    if typing.get_origin(hint) is list:
        return _check_list(source, key, value, typing.get_args(typing.get_args(hint)[0]))
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is float and isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
        # bool is an int subclass: a YAML `true` must not pass as an epoch count.
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind in (bool, str) and isinstance(value, kind):
            return value
    expected = " or ".join(k.__name__ for k in allowed)
    hint_text = ""
    if float in allowed and isinstance(value, str):
        hint_text = " (write numbers without quotes, e.g. 1.0e-4)"
    raise ConfigError(f"{source}: key '{key}' must be {expected}, got {type(value).__name__} {value!r}{hint_text}.")


def _check_list(source: str, key: str, value: Any, kinds: tuple[type, ...]) -> list[Any]:
    """A YAML list whose items are each one of ``kinds`` (a bool is not an int here)."""
    names = " or ".join(k.__name__ for k in kinds)
    if not isinstance(value, list):
        raise ConfigError(
            f"{source}: key '{key}' must be a list of {names} (e.g. [B04, B03, B02] or [4, 3, 2]), "
            f"got {type(value).__name__} {value!r}."
        )
    for item in value:
        if isinstance(item, bool) or not isinstance(item, kinds) or (isinstance(item, str) and not item.strip()):
            raise ConfigError(f"{source}: key '{key}': {item!r} is not a band name or a 1-based band number.")
    return list(value)


def _require(condition: bool, source: str, key: str, message: str, value: Any) -> None:
    if not condition:
        raise ConfigError(f"{source}: key '{key}' {message}, got {value!r}.")


def _check_values(c: Config, source: str) -> None:
    def req(condition: bool, key: str, message: str) -> None:
        _require(condition, source, key, message, getattr(c, key))

    for key in ("phase1_lr", "phase2_lr", "min_lr", "backbone_lr_scale"):
        value = getattr(c, key)
        req(math.isfinite(value) and value > 0, key, "must be a finite number > 0")
    for key in ("phase1_epochs", "phase2_epochs", "phase1_warmup_epochs", "tsne_interval", "phase2_frozen_stages"):
        req(getattr(c, key) >= 0, key, "must be >= 0")
    req(c.max_epochs >= 1, "phase2_epochs", "must make phase1_epochs + phase2_epochs at least 1")
    req(
        c.min_lr < min(c.phase1_lr, c.phase2_lr * c.backbone_lr_scale),
        "min_lr",
        "must be below every peak learning rate (phase1_lr, phase2_lr * backbone_lr_scale)",
    )
    req(0 < c.val_fraction < 1, "val_fraction", "must be between 0 and 1")
    req(0 < c.test_fraction < 1, "test_fraction", "must be between 0 and 1 (the evaluate stage needs a test split)")
    req(
        c.val_fraction + c.test_fraction < 0.95,
        "test_fraction",
        "must leave a training set: val_fraction + test_fraction must be below 0.95",
    )
    req(c.synthetic_images_per_class >= 10, "synthetic_images_per_class", "must be >= 10")
    req(c.batch_size >= 2, "batch_size", "must be >= 2 (BatchNorm needs two samples)")
    req(32 <= c.image_size <= 1024, "image_size", "must be between 32 and 1024 pixels")
    req(c.head_hidden >= 1, "head_hidden", "must be >= 1")
    for key in ("head_dropout", "head_hidden_dropout", "label_smoothing"):
        req(0 <= getattr(c, key) < 1, key, "must be >= 0 and < 1")
    req(c.weight_decay >= 0, "weight_decay", "must be >= 0")
    for key in ("jitter_brightness", "jitter_contrast", "jitter_saturation"):
        req(0 <= getattr(c, key) < 1, key, "must be >= 0 and < 1")
    req(0 <= c.jitter_hue <= 0.5, "jitter_hue", "must be between 0 and 0.5")
    req(c.num_nodes >= 1, "num_nodes", "must be >= 1")
    req(c.model_name.strip() != "", "model_name", "must name a timm model")
    req(
        c.data_source.strip() != "",
        "data_source",
        "must be 'eurosat', 'eurosat_ms', 'synthetic' or the path of a zip or folder with one folder per class",
    )
    if isinstance(c.devices, str):
        req(
            c.devices == "auto" or _is_device_list(c.devices),
            "devices",
            "must be a count >= 1, 'auto', or a comma-separated list of GPU ids like '0,1'",
        )
    else:
        req(c.devices >= 1, "devices", "must be >= 1")
    for key in ("strategy", "precision"):
        reason = REFUSED.get((key, getattr(c, key)))
        if reason:
            raise ConfigError(f"{source}: key '{key}': {getattr(c, key)} {reason}.")
    for key, choices in (
        ("accelerator", ACCELERATORS),
        ("precision", PRECISIONS),
        ("strategy", STRATEGIES),
        ("wandb_mode", WANDB_MODES),
    ):
        req(getattr(c, key) in choices, key, f"must be one of {', '.join(choices)}")


def _is_device_list(text: str) -> bool:
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return bool(parts) and all(p.isdigit() for p in parts)
