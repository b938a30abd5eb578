"""Faults end in one line and a non-zero exit, never a signal or a traceback: full and read-only
disks under every writer, and decompression bombs under every image reader.

A full disk is a real tmpfs where the machine lets us mount one (root, as in CI), filled to the
last byte; elsewhere those tests skip, saying why, and the injected-fault tests below still run.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from eurosat_pipeline.cli.main import main as cli
from eurosat_pipeline.core.errors import StorageError
from eurosat_pipeline.core.files import atomic_path, write_text
from eurosat_pipeline.data import dataset
from eurosat_pipeline.data.dataset import prepare_dataset
from eurosat_pipeline.data.imagefile import ImageProblem, PixelLimit, read_header
from eurosat_pipeline.data.split import split_archive
from eurosat_pipeline.inference.export import export_onnx
from eurosat_pipeline.reporting.evaluation import EvalPaths, evaluate
from eurosat_pipeline.reporting.report import ReportPaths, build_report
from eurosat_pipeline.training.train import TrainPaths, train

from .conftest import REPO_ROOT, jpeg_bytes, tiny_config
from .own_data import png_bytes

BOMB_SIDE = 20_000  # 400 megapixels of 8-bit grey: 400 MB decoded, ~0.4 MB as a PNG


@contextlib.contextmanager
def small_disk(folder: Path, read_only: bool = False) -> Iterator[Path]:
    """A tmpfs at ``folder``: full to the last byte, or mounted read-only."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a small tmpfs needs root and mount(8); the injected-fault tests cover the rest")
    options = "size=256k" + (",ro" if read_only else "")
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode().strip()}")
    try:
        if not read_only:
            fill(folder)
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def fill(folder: Path) -> None:
    with contextlib.suppress(OSError), (folder / "filler").open("wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 4096)
    assert shutil.disk_usage(folder).free < 4096


def left_in(folder: Path) -> list[str]:
    """What a failed write left in ``folder``, besides the filler."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.name != "filler" and p.is_file())


def png_bomb(path: Path, side: int = BOMB_SIDE) -> Path:
    """An 8-bit grey PNG of ``side`` x ``side`` zeros: a few hundred kB that decode to side² bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor, row, parts = zlib.compressobj(9), b"\0" * (side + 1), []
    for _ in range(side):
        parts.append(compressor.compress(row))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b"")
    )
    return path


def run_with_peak(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[int, str, float]:
    """Exit status, standard error and peak resident memory (MB) of one child process. The peak
    includes the pages it shared with this process before exec, so compare two runs of one test."""
    with open(os.devnull, "wb") as devnull, (cwd / "stderr.txt").open("wb") as err:
        process = subprocess.Popen(command, cwd=cwd, env=env, stdout=devnull, stderr=err)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
    return process.returncode, (cwd / "stderr.txt").read_text(), usage.ru_maxrss / 1024


def stage_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO_ROOT / "src"), "DVC_NO_ANALYTICS": "1"}


def assert_one_line_error(status: int, stderr: str, *words: str) -> None:
    assert status == 2, f"exit {status} (a negative one is a signal):\n{stderr}"
    assert "Traceback" not in stderr, stderr
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), stderr
    for word in words:
        assert word in last, (word, last)


# Injected faults: run everywhere, with no mount.


def test_a_refused_write_names_the_output_and_leaves_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "out" / "metrics.json"
    write_text(target, "previous run\n")
    expected = rf"cannot write {target}: no space left on the device \(.* free in"
    with pytest.raises(StorageError, match=expected), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    assert target.read_text() == "previous run\n"
    assert sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


def test_an_unreadable_source_inside_a_write_is_not_blamed_on_the_output(tmp_path: Path) -> None:
    source = tmp_path / "elsewhere" / "image.png"
    with pytest.raises(PermissionError), atomic_path(tmp_path / "out.zip"):
        raise PermissionError(errno.EACCES, "Permission denied", str(source))


def test_the_decoded_array_reserves_its_space_before_decoding(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that cannot hold images.npy fails at once, saying how much it needs, with nothing left."""
    decoded: list[str] = []
    monkeypatch.setattr(dataset, "decode", lambda *args: decoded.append("one") or None)

    def no_space(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", no_space)
    data = tmp_path / "data"
    with pytest.raises(StorageError, match=r"images\.npy: no space left on the device \(it needs 1\.5 MB, "):
        prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", 12)
    assert decoded == [] and list(data.iterdir()) == []


def test_a_stage_turns_a_librarys_refused_write_into_one_line(tmp_path: Path) -> None:
    """A writer that is not ours (Lightning's checkpoints, GDAL) raising ENOSPC: still one line."""
    script = (
        "import errno, os\n"
        "from eurosat_pipeline.core.stage import run_stage\n"
        "def main():\n"
        "    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), 'models/checkpoints/last.ckpt')\n"
        "run_stage(main)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=stage_env())
    assert_one_line_error(result.returncode, result.stderr, "models/checkpoints/last.ckpt", "no space left")


# A real full disk.


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny finished pipeline run: data, split, trained model, evaluation."""
    root = tmp_path_factory.mktemp("faults-run")
    config = tiny_config(phase2_epochs=1)
    data = root / "data"
    prepare_dataset("synthetic", data / "eurosat.zip", data / "dataset.json", config.synthetic_images_per_class)
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 42, stats=data / "band_stats.json")
    paths = TrainPaths.under(data, root / "models", root / "reports" / "train")
    train(config, paths)
    eval_dir = root / "reports" / "eval"
    evaluate(EvalPaths(paths.best, paths.archive, paths.split, paths.dataset_info, *eval_outputs(eval_dir)))
    return {"root": root, "data": data, "best": paths.best, "train": root / "reports" / "train", "eval": eval_dir}


def eval_outputs(folder: Path) -> tuple[Path, Path, Path]:
    return folder / "metrics.json", folder / "per_class.csv", folder / "predictions.csv"


def write_split(run: dict[str, Path], out: Path) -> object:
    data = run["data"]
    return split_archive(data / "eurosat.zip", out / "split.csv", 0.1, 0.1, 42, stats=out / "band_stats.json")


def write_training(run: dict[str, Path], out: Path) -> object:
    data = run["data"]
    paths = TrainPaths.under(data, out / "models", out / "reports")
    paths = TrainPaths(**{**vars(paths), "scratch": out / "scratch"})
    return train(tiny_config(phase2_epochs=1), paths)


def write_evaluation(run: dict[str, Path], out: Path) -> object:
    data = run["data"]
    return evaluate(
        EvalPaths(run["best"], data / "eurosat.zip", data / "split.csv", data / "dataset.json", *eval_outputs(out))
    )


def write_report(run: dict[str, Path], out: Path) -> object:
    trained, evaluated = run["train"], run["eval"]
    return build_report(
        ReportPaths(
            history=trained / "history.csv",
            train_summary=trained / "summary.json",
            eval_metrics=evaluated / "metrics.json",
            per_class=evaluated / "per_class.csv",
            lr_dir=trained / "live" / "plots" / "metrics" / "lr",
            tsne=trained / "tsne.csv",
            split=run["data"] / "split.csv",
            out=out / "report.html",
            model_card=out / "model_card.md",
            checkpoint=run["best"],
        )
    )


def write_export(run: dict[str, Path], out: Path) -> object:
    data = run["data"]
    return export_onnx(run["best"], out / "model.onnx", out / "export.json", data / "eurosat.zip", data / "split.csv")


WRITERS: dict[str, Callable[[dict[str, Path], Path], object]] = {
    "split": write_split,
    "train": write_training,
    "evaluate": write_evaluation,
    "report": write_report,
    "export": write_export,
}


@pytest.mark.parametrize("stage", WRITERS)
def test_every_stage_on_a_full_disk_names_what_it_could_not_write(
    stage: str, run: dict[str, Path], tmp_path: Path
) -> None:
    with small_disk(tmp_path / "full") as full:
        with pytest.raises(StorageError, match=rf"cannot write {full}/\S+: no space left on the device"):
            WRITERS[stage](run, full)
        # Training's scratch folder is resume state, kept on purpose after a failure (a lock here).
        assert [name for name in left_in(full) if not name.startswith("scratch/")] == []


def test_the_download_stage_on_a_full_disk_exits_with_one_line_not_sigbus(tmp_path: Path) -> None:
    """DVC used to report `exited with -7`: images.npy written through a memory map the disk could not back."""
    source = tmp_path / "patches"
    for name in ("Fields", "Forest"):
        (source / name).mkdir(parents=True)
        for n in range(40):  # 80 uniform 64 px PNGs: tiny files, 1 MB decoded
            (source / name / f"{n}.png").write_bytes(png_bytes(np.full((3, 64, 64), n, np.uint8)))
    params = tmp_path / "params.yaml"
    params.write_text(f"data_source: {source}\n")
    with small_disk(tmp_path / "full") as full:
        (full / "filler").unlink()  # room for the archive (120 kB of PNGs), not for the array
        with (full / "filler").open("wb") as handle:
            handle.write(b"\0" * (shutil.disk_usage(full).free - 200_000))
        command = [sys.executable, str(REPO_ROOT / "stages" / "download.py"), "--params", str(params)]
        command += ["--archive", f"{full}/eurosat.zip", "--info", f"{full}/dataset.json"]
        command += ["--images", f"{full}/images.npy"]
        status, stderr, _ = run_with_peak(command, tmp_path, stage_env())
        assert_one_line_error(status, stderr, f"{full}/images.npy", "no space left", "it needs 983.2 kB")
        assert left_in(full) == []


@pytest.fixture(scope="module")
def patch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("patch") / "AnnualCrop_1.jpg"
    path.write_bytes(jpeg_bytes(7))
    return path


def test_predict_output_on_a_full_disk(run: dict[str, Path], patch: Path, tmp_path: Path, capsys) -> None:
    with small_disk(tmp_path / "full") as full:
        out = full / "predictions.csv"
        code = cli(["predict", str(patch), "--checkpoint", str(run["best"]), "--format", "csv", "--output", str(out)])
        error = capsys.readouterr().err
        assert code == 2 and f"error: cannot write {out}: no space left on the device" in error, error
        assert left_in(full) == []


def test_predict_output_on_a_read_only_disk(run: dict[str, Path], patch: Path, tmp_path: Path, capsys) -> None:
    with small_disk(tmp_path / "ro", read_only=True) as read_only:
        out = read_only / "predictions.csv"
        code = cli(["predict", str(patch), "--checkpoint", str(run["best"]), "--output", str(out)])
        error = capsys.readouterr().err
        assert code == 2 and f"error: cannot write {out}: the file system is read-only" in error, error


def test_map_on_a_full_disk(run: dict[str, Path], tmp_path: Path, capsys) -> None:
    import rasterio
    from rasterio.transform import from_origin

    scene = tmp_path / "scene.tif"
    pixels = np.random.default_rng(0).integers(0, 255, (3, 640, 640), dtype=np.uint8)
    profile = {"driver": "GTiff", "count": 3, "height": 640, "width": 640, "dtype": "uint8"}
    with rasterio.open(scene, "w", crs="EPSG:32633", transform=from_origin(0, 0, 10, 10), **profile) as dst:
        dst.write(pixels)
    with small_disk(tmp_path / "full") as full:
        out = full / "map.tif"
        code = cli(["map", str(scene), "--out", str(out), "--checkpoint", str(run["best"]), "--engine", "pytorch"])
        error = capsys.readouterr().err
        assert code == 2 and "error: cannot write" in error and "no space left on the device" in error, error
        assert "Traceback" not in error
        assert left_in(full) == []


# Decompression bombs.


def test_a_png_bomb_in_a_class_folder_is_refused_from_its_header(tmp_path: Path) -> None:
    source = tmp_path / "patches"
    for name in ("Fields", "Forest"):
        (source / name).mkdir(parents=True)
        for n in range(3):
            (source / name / f"{n}.png").write_bytes(png_bytes(np.full((3, 64, 64), n, np.uint8)))
    params = tmp_path / "params.yaml"
    params.write_text(f"data_source: {source}\n")
    out = tmp_path / "data"
    command = [sys.executable, str(REPO_ROOT / "stages" / "download.py"), "--params", str(params)]
    command += ["--archive", f"{out}/eurosat.zip", "--info", f"{out}/dataset.json", "--images", f"{out}/images.npy"]
    status, stderr, normal_mb = run_with_peak(command, tmp_path, stage_env())
    assert status == 0, stderr
    bomb = png_bomb(source / "Forest" / "bomb.png")
    assert bomb.stat().st_size < 1_000_000
    started = time.perf_counter()
    status, stderr, peak_mb = run_with_peak(command, tmp_path, stage_env())
    assert status == 2 and "Traceback" not in stderr, stderr
    assert "Forest/bomb.png: is 20,000 x 20,000 pixels (400 megapixels), over the limit of 89 megapixels" in stderr
    assert "max_image_pixels in params.yaml" in stderr
    assert peak_mb < normal_mb + 100, f"peak {peak_mb:.0f} MB against {normal_mb:.0f} MB without it: it was decoded"
    assert time.perf_counter() - started < 60


def test_the_pixel_limit_is_the_users(tmp_path: Path) -> None:
    """Raised above an image's size, the same file is read (from its header, in this process)."""
    bomb = png_bomb(tmp_path / "bomb.png").read_bytes()
    with pytest.raises(ImageProblem, match=r"over the limit of 89 megapixels.*Raise max_image_pixels"):
        read_header(bomb)
    header = read_header(bomb, PixelLimit(500_000_000))
    assert (header.width, header.height, header.bands, header.format) == (BOMB_SIDE, BOMB_SIDE, 1, "PNG")


def test_png_bombs_given_to_predict_are_refused_before_decoding(
    run: dict[str, Path], patch: Path, tmp_path: Path
) -> None:
    """Refused with the memory a normal patch takes: decoding even the smaller bomb (144 MB of
    pixels, more as PIL's and numpy's copies) would show. 20,000 px is over twice PIL's own limit
    (its open refuses it); 12,000 px lies between PIL's limit and twice it (ours refuses it)."""
    predict = [sys.executable, "-m", "eurosat_pipeline.cli.main", "predict", "--checkpoint", str(run["best"])]
    status, stderr, normal_mb = run_with_peak([*predict, str(patch)], tmp_path, stage_env())
    assert status == 0, stderr
    bombs = [png_bomb(tmp_path / f"bomb-{side}.png", side) for side in (BOMB_SIDE, 12_000)]
    status, stderr, peak_mb = run_with_peak([*predict, *map(str, bombs)], tmp_path, stage_env())
    assert status == 1 and "Traceback" not in stderr and "error: 2 of 2 file(s) could not be classified" in stderr, (
        stderr
    )
    assert f"{bombs[0]}: refused before decoding" in stderr and "decompression bomb" in stderr
    assert f"{bombs[1]}: is 12,000 x 12,000 pixels (144 megapixels), over the limit of 89 megapixels" in stderr
    assert "Raise --max-pixels" in stderr
    assert peak_mb < normal_mb + 100, f"peak {peak_mb:.0f} MB against {normal_mb:.0f} MB for a patch: it was decoded"
