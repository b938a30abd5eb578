"""What a user reads: the command's help and version, and whole-epoch axes in the report and PR plots."""

from __future__ import annotations

import logging
import warnings
from importlib.metadata import version
from pathlib import Path

import pytest

from eurosat_pipeline.cli.dvc import CHECKOUT_LOGGER, quiet_fresh_clone_notice
from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.stage import QUIET_LINES, quiet_third_party
from eurosat_pipeline.reporting.compare import whole_epoch_ticks
from eurosat_pipeline.reporting.report import accuracy_figure, loss_figure

HISTORY = [{"epoch": e, "val_acc": 0.1 * e, "train_loss": 2.0 / e, "val_loss": 2.1 / e} for e in (1, 2, 3)]


def test_help_is_plain_text(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["--help"])
    shown = capsys.readouterr().out
    assert exit_info.value.code == 0
    assert "eurosat command" in shown
    assert "``" not in shown and "`" not in shown  # reStructuredText / Markdown markup


def test_version_is_the_installed_distributions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        cli(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.strip() == f"eurosat {version('eurosat-pipeline')}"


@pytest.mark.parametrize("make_figure", [accuracy_figure, loss_figure])
def test_report_epoch_axis_ticks_whole_epochs(make_figure: object) -> None:
    figure = make_figure(HISTORY, 1.5)  # type: ignore[operator]
    axis = figure.layout.xaxis
    # Where Plotly puts linear ticks: tick0 + k * dtick inside the data's range.
    low, high = min(min(trace.x) for trace in figure.data), max(max(trace.x) for trace in figure.data)
    assert axis.tickmode == "linear" and axis.dtick > 0
    ticks = [axis.tick0 + k * axis.dtick for k in range(-100, 100) if low <= axis.tick0 + k * axis.dtick <= high]
    assert ticks == [1, 2, 3]  # each epoch, never the phase boundary at 1.5
    assert [format(tick, axis.tickformat) for tick in ticks] == ["1", "2", "3"]


def test_pull_request_plots_tick_whole_epochs_only_on_epoch_axes() -> None:
    spec = {
        "layer": [
            {
                "encoding": {
                    "x": {"field": "epoch", "type": "quantitative", "title": "epoch"},
                    "y": {"field": "val_acc", "type": "quantitative"},
                }
            }
        ],
        "encoding": {"x": {"field": "step", "type": "quantitative"}},
    }
    fixed = whole_epoch_ticks(spec)
    assert fixed["layer"][0]["encoding"]["x"]["axis"] == {"tickMinStep": 1, "format": "d"}
    assert "axis" not in fixed["layer"][0]["encoding"]["y"]
    assert "axis" not in fixed["encoding"]["x"]  # steps may be fractional-free already; left alone
    assert "axis" not in spec["layer"][0]["encoding"]["x"]  # the input is not modified


LEAFSPEC = "`isinstance(treespec, LeafSpec)` is deprecated, use `isinstance(treespec, TreeSpec)` instead."


def _shown(message: str, category: type[Warning], module: str) -> bool:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        warnings.warn_explicit(message, category, "somewhere.py", 1, module=module)
    return bool(caught)


def test_known_noise_is_hidden_by_message_and_module_and_real_warnings_still_show() -> None:
    assert not _shown(LEAFSPEC, FutureWarning, "lightning.pytorch.utilities._pytree")
    assert _shown(LEAFSPEC, FutureWarning, "eurosat_pipeline.training.module")  # same words, our code: shown
    assert _shown("something else is deprecated", FutureWarning, "lightning.pytorch.utilities._pytree")
    assert _shown("a real problem", UserWarning, "lightning.pytorch.trainer.trainer")
    both = "You have overridden `on_after_batch_transfer` in both `LightningModule` and `LightningDataModule`."
    assert _shown(both, UserWarning, "lightning.pytorch.trainer.connectors.data_connector")


def test_lightning_noise_lines_are_dropped_but_its_other_lines_show(caplog: pytest.LogCaptureFixture) -> None:
    quiet_third_party()
    quiet_third_party()  # idempotent: one filter per logger
    name = "lightning.pytorch.utilities.rank_zero"
    logger = logging.getLogger(name)
    assert len(logger.filters) == 1
    with caplog.at_level(logging.INFO, logger=name):
        logger.info("💡 Tip: For seamless cloud logging ... try installing [litlogger]")
        logger.info("GPU available: False, used: False")
        logger.info("distributed_backend=gloo\nAll distributed processes registered. Starting with 2 processes")
        logger.warning("something real")
    assert [r.getMessage().split()[0] for r in caplog.records] == ["distributed_backend=gloo", "something"]
    assert set(QUIET_LINES) >= {name, "lightning.fabric.utilities.seed"}


@pytest.mark.parametrize("has_lock", [False, True])
def test_dvc_no_hash_notice_is_dropped_only_without_a_dvc_lock(
    has_lock: bool, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    if has_lock:
        (tmp_path / "dvc.lock").write_text("schema: '2.0'\n")
    logger = logging.getLogger(CHECKOUT_LOGGER)
    added = quiet_fresh_clone_notice(tmp_path)
    try:
        with caplog.at_level(logging.WARNING, logger=CHECKOUT_LOGGER):
            logger.warning("No file hash info found for '%s'. It won't be created.", tmp_path / "data/eurosat.zip")
            logger.warning("Some other checkout problem")
    finally:
        if added:
            logger.removeFilter(added)
    messages = [r.getMessage() for r in caplog.records]
    assert "Some other checkout problem" in messages
    assert any(m.startswith("No file hash info found") for m in messages) == has_lock


def test_the_report_shows_a_local_data_path_from_the_repository_not_the_machines_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eurosat_pipeline.reporting.report import shown_source

    repo, data = tmp_path / "work" / "repo", tmp_path / "work" / "shared" / "EuroSAT.zip"
    monkeypatch.setenv("DVC_ROOT", str(repo))  # also inside a queued run's temporary copy
    assert shown_source(str(data)) == "../shared/EuroSAT.zip"
    assert shown_source("eurosat") == "eurosat" and shown_source("data/EuroSAT.zip") == "data/EuroSAT.zip"
