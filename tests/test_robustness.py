"""Interrupted and repeated runs, non-finite losses, determinism, and no shell strings."""

from __future__ import annotations

import http.server
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch

from eurosat_pipeline.core.errors import TrainingError
from eurosat_pipeline.core.records import read_history
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.platform.slots import exclusive
from eurosat_pipeline.training.train import TrainPaths, scratch_for, train

from .conftest import REPO_ROOT, tiny_config

TIMING = ("train_seconds", "images_per_s")
CONFIG = tiny_config(phase1_epochs=1, phase2_epochs=3, resume=True)


def make_data(root: Path) -> Path:
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", CONFIG.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42)
    return data


def learning_curve(paths: TrainPaths) -> list[dict[str, float]]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in read_history(paths.history)]


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One uninterrupted run, and the data it used."""
    root = tmp_path_factory.mktemp("reference")
    data = make_data(root)
    paths = TrainPaths.under(data, root / "models", root / "reports")
    summary = train(CONFIG, paths)
    return {"data": data, "paths": paths, "summary": summary, "curve": learning_curve(paths)}


def test_same_seed_on_cpu_gives_identical_histories(reference: dict[str, Any], tmp_path: Path) -> None:
    paths = TrainPaths.under(reference["data"], tmp_path / "models", tmp_path / "reports")
    train(CONFIG, paths)
    again = learning_curve(paths)
    assert len(again) == 4
    for first, second in zip(reference["curve"], again, strict=True):
        assert first == pytest.approx(second, abs=1e-6)


KILL_AFTER_EPOCH = """
import json, os, sys
import lightning as L
from pathlib import Path
from eurosat_pipeline.core.config import config_from_mapping
from eurosat_pipeline.platform.slots import exclusive
from eurosat_pipeline.training.train import TrainPaths, scratch_for, train

class Kill(L.Callback):
    def on_train_epoch_start(self, trainer, pl_module):
        if trainer.current_epoch == int(sys.argv[3]):
            os._exit(137)  # like SIGKILL: no cleanup, no finally blocks

config = config_from_mapping(json.loads(sys.argv[1]))
root = Path(sys.argv[2])
train(config, TrainPaths.under(root / "data", root / "models", root / "reports"), extra_callbacks=[Kill()])
"""


def killed_run(reference: dict[str, Any], root: Path, after_epochs: int) -> TrainPaths:
    (root / "data").symlink_to(reference["data"], target_is_directory=True)
    result = subprocess.run(
        [sys.executable, "-c", KILL_AFTER_EPOCH, json.dumps(CONFIG.to_dict()), str(root), str(after_epochs)],
        capture_output=True,
        text=True,
        env={**os.environ, "WANDB_MODE": "disabled"},
    )
    assert result.returncode == 137, result.stderr[-3000:]
    return TrainPaths.under(root / "data", root / "models", root / "reports")


def test_killed_training_resumes_and_matches_an_uninterrupted_run(reference: dict[str, Any], tmp_path: Path) -> None:
    paths = killed_run(reference, tmp_path, after_epochs=2)
    assert [r["epoch"] for r in read_history(paths.history)] == [1, 2]
    summary = train(CONFIG, paths)
    assert summary["resumed_after_epoch"] == 2
    resumed = learning_curve(paths)
    assert [r["epoch"] for r in resumed] == [1, 2, 3, 4]  # exactly one row per epoch
    for a, b in zip(reference["curve"], resumed, strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert summary["best_val_acc"] == pytest.approx(reference["summary"]["best_val_acc"], abs=1e-6)


def test_without_resume_a_killed_run_restarts_cleanly(reference: dict[str, Any], tmp_path: Path) -> None:
    paths = killed_run(reference, tmp_path, after_epochs=2)
    summary = train(CONFIG.replace(resume=False), paths)
    assert summary["resumed_after_epoch"] is None
    for a, b in zip(reference["curve"], learning_curve(paths), strict=True):
        assert a == pytest.approx(b, abs=1e-6)
    assert len(list(paths.checkpoints.iterdir())) == 3


def test_changed_params_or_a_corrupt_checkpoint_start_afresh(reference: dict[str, Any], tmp_path: Path) -> None:
    paths = killed_run(reference, tmp_path, after_epochs=2)
    killed = scratch_for(CONFIG, paths)
    assert killed.last.is_file() and not paths.best.exists()  # resume state only, no outputs yet
    other = CONFIG.replace(phase2_lr=1e-3)
    assert scratch_for(other, paths).root != killed.root
    summary = train(other, paths)
    assert summary["resumed_after_epoch"] is None
    assert killed.last.is_file()  # another configuration's resume state is left alone
    killed.last.write_bytes(killed.last.read_bytes()[:1000])  # a torn write
    summary = train(CONFIG, paths)
    assert summary["resumed_after_epoch"] is None and len(read_history(paths.history)) == 4
    assert not killed.root.exists()  # gone once its configuration has finished


def test_a_configuration_already_training_elsewhere_is_refused_not_shared(
    reference: dict[str, Any], tmp_path: Path
) -> None:
    paths = TrainPaths.under(reference["data"], tmp_path / "models", tmp_path / "reports")
    scratch = scratch_for(CONFIG, paths)
    with exclusive(scratch.root / ".lock") as held:  # as another process training it would hold it
        assert held
        with pytest.raises(TrainingError, match="Another process is training this exact configuration"):
            train(CONFIG, paths)
    assert not paths.best.exists()


class PoisonBatch(L.Callback):
    """Turns the inputs of one training step into NaN."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            batch[0].fill_(float("nan"))


def test_non_finite_loss_stops_at_once_without_a_broken_checkpoint(reference: dict[str, Any], tmp_path: Path) -> None:
    paths = TrainPaths.under(reference["data"], tmp_path / "models", tmp_path / "reports")
    steps_per_epoch = 7  # 96 synthetic train images / batch 16, minus the dropped last batch
    bad_step = 2 * steps_per_epoch + 1  # inside epoch 3
    with pytest.raises(TrainingError, match=rf"non-finite .* at epoch 3, optimizer step {bad_step}\."):
        train(CONFIG.replace(resume=False), paths, extra_callbacks=[PoisonBatch(bad_step)])
    assert not paths.checkpoints.exists() and not paths.best.exists()  # a failed run publishes nothing
    scratch = scratch_for(CONFIG.replace(resume=False), paths)
    epochs = sorted(int(p.name[5:8]) for p in scratch.checkpoints.iterdir())
    assert epochs and max(epochs) <= 2, epochs
    last = torch.load(scratch.last, weights_only=True)
    assert last["epoch"] + 1 <= 2
    assert [r["epoch"] for r in read_history(paths.history)] == [1, 2]


class SlowHandler(http.server.BaseHTTPRequestHandler):
    """Sends headers and a first chunk, then stalls: a download that never finishes."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10_000_000))
        self.end_headers()
        self.wfile.write(b"PK" + b"\0" * 100_000)
        self.wfile.flush()
        time.sleep(30)

    def log_message(self, *args: object) -> None:
        pass


DOWNLOAD = """
import sys
from pathlib import Path
from eurosat_pipeline.data import dataset
from eurosat_pipeline.data.sources import eurosat
eurosat.EUROSAT_RGB = eurosat.Download("EuroSAT.zip", sys.argv[1], eurosat.EUROSAT_RGB.md5, "eurosat")
out = Path(sys.argv[2])
dataset.prepare_dataset("eurosat", out / "eurosat.zip", out / "dataset.json", 10)
"""


def test_a_killed_download_leaves_no_partial_dataset(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    out = tmp_path / "data"
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/EuroSAT.zip"
        process = subprocess.Popen(
            [sys.executable, "-c", DOWNLOAD, url, str(out)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + 60
        while not list(out.glob(".download-*/EuroSAT.zip")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out.glob(".download-*/EuroSAT.zip")), "the download never started"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        server.shutdown()
        server.server_close()
    assert not (out / "eurosat.zip").exists() and not (out / "dataset.json").exists()
    prepare_dataset("synthetic", out / "eurosat.zip", out / "dataset.json", 10)  # the next run starts cleanly
    assert sorted(p.name for p in out.iterdir()) == ["dataset.json", "eurosat.zip", "images.npy"]


def test_no_shell_strings_anywhere() -> None:
    sources = [*(REPO_ROOT / "src").rglob("*.py"), *(REPO_ROOT / "stages").glob("*.py")]
    offenders = [str(p) for p in sources if re.search(r"shell\s*=\s*True|os\.system\(|os\.popen\(", p.read_text())]
    assert offenders == []


def test_the_sources_read_the_official_addresses_at_call_time() -> None:
    # The download tests above monkeypatch these; they must stay module-level constants.
    from eurosat_pipeline.data.sources import eurosat, source_for

    for download in (eurosat.EUROSAT_RGB, eurosat.EUROSAT_MS):
        assert download.url.startswith("https://") and len(download.md5) == 32
    assert source_for("eurosat").download is eurosat.EUROSAT_RGB
    assert source_for("eurosat_ms").download is eurosat.EUROSAT_MS
