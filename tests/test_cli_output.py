"""What a user reads: the command's help and version, and whole-epoch axes in the report and PR plots."""

from __future__ import annotations

from importlib.metadata import version

import pytest

from eurosat_pipeline.cli import main as cli
from eurosat_pipeline.compare import whole_epoch_ticks
from eurosat_pipeline.reporting import accuracy_figure, loss_figure

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
    axis = make_figure(HISTORY, 1.5).layout.xaxis  # type: ignore[operator]
    assert (axis.tickmode, axis.tick0, axis.dtick, axis.tickformat) == ("linear", 1, 1, "d")


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
