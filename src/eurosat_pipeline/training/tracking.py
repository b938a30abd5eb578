"""Experiment trackers: DVCLive (always; what `dvc exp show` and `dvc plots` read) and W&B."""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dvclive.lightning import DVCLiveLogger
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from eurosat_pipeline.core.config import Config

WANDB_HOST = "api.wandb.ai"
log = logging.getLogger(__name__)


def resolve_wandb_mode(configured: str, environ: dict[str, str] | None = None) -> str:
    """``WANDB_MODE`` wins, then the param; ``auto`` is online only when credentials exist."""
    environ = dict(os.environ if environ is None else environ)
    chosen = environ.get("WANDB_MODE") or configured
    if chosen == "dryrun":
        return "offline"
    if chosen != "auto":
        return chosen
    return "online" if environ.get("WANDB_API_KEY") or _netrc_has_wandb_login() else "offline"


def _netrc_has_wandb_login() -> bool:
    try:
        return netrc.netrc().authenticators(WANDB_HOST) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


# Plotted per step, but kept out of metrics.json so that `dvc exp show` stays readable.
PLOT_ONLY = ("lr", "perf", "epoch", ("train", "loss_step"))


class PipelineDVCLiveLogger(DVCLiveLogger):
    """DVCLive without its own params.yaml (DVC tracks the real one) and with a lean summary."""

    def log_hyperparams(self, *args: object, **kwargs: object) -> None:
        return None

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None, sync: bool | None = False) -> None:
        super().log_metrics(metrics, step, sync)
        if rank_zero_only.rank == 0:
            _drop_plot_only(self.experiment.summary)


def _drop_plot_only(summary: dict[str, Any]) -> None:
    for key in PLOT_ONLY:
        if isinstance(key, tuple):
            summary.get(key[0], {}).pop(key[1], None)
        else:
            summary.pop(key, None)


def make_loggers(config: Config, live_dir: str | Path, resume: bool = False) -> list[Logger]:
    # dvcyaml=False: the pipeline's dvc.yaml declares the metrics and plots; save_dvc_exp=False:
    # a direct `python` run must not create DVC experiments behind the user's back.
    loggers: list[Logger] = [
        PipelineDVCLiveLogger(dir=str(live_dir), dvcyaml=False, save_dvc_exp=False, report=None, resume=resume)
    ]
    mode = resolve_wandb_mode(config.wandb_mode)
    if mode != "disabled":
        loggers.append(_wandb_logger(config, mode))
    return loggers


def finish_loggers(loggers: Sequence[Logger], failed: bool = False) -> None:
    """End W&B runs now (Lightning leaves them open until exit), so the run's log is complete."""
    for logger in loggers:
        if type(logger).__name__ == "WandbLogger" and rank_zero_only.rank == 0:
            run = logger.experiment
            offline, sync_dir = run.offline, run.sync_dir
            run.finish(exit_code=1 if failed else 0)
            if offline:  # W&B is quiet (online it still prints the run's link itself)
                log.info("W&B run saved offline; to upload it: wandb sync %s", sync_dir)


def _wandb_logger(config: Config, mode: str) -> Logger:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    # W&B makes its own "wandb/" folder inside save_dir.
    save_dir = Path(os.environ.get("WANDB_DIR", "."))
    save_dir.mkdir(parents=True, exist_ok=True)
    tags = ["synthetic-data"] if config.is_synthetic else []
    logger = WandbLogger(
        project=config.wandb_project,
        entity=config.wandb_entity or None,
        mode=mode,
        save_dir=str(save_dir),
        tags=tags,
        log_model=False,
        # W&B's banner and summary lines off (finish_loggers says where an offline run went); its
        # warnings and errors still show.
        settings=wandb.Settings(quiet=True),
    )
    # Lightning passes anonymous=None even when unset, and W&B warns about any value of that
    # retired setting; leaving it out is the same run without the warning.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger
