"""The decoded dataset never has to fit in RAM: training gathers batches from the memory-mapped
images.npy, so its anonymous memory does not grow with the dataset (file-backed pages are the
kernel's page cache, which it can drop)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from eurosat_pipeline.data.split import split_archive

from .conftest import REPO_ROOT, RGB

BANDS, SIZE = 8, 64
TRAIN = """
import sys
from pathlib import Path
sys.path.insert(0, {tests!r})
from conftest import tiny_config
from eurosat_pipeline.training.train import TrainPaths, train
root = Path(sys.argv[1])
config = tiny_config(phase1_epochs=0, phase2_epochs=1, batch_size=128, image_size=32)
train(config, TrainPaths.under(root / "data", root / "models", root / "reports"))
"""


def decoded_dataset(root: Path, images: int) -> int:
    """A decoded dataset as the download stage leaves it (two classes, 8 uint16 bands of 64 px),
    written a chunk at a time; returns its decoded size in bytes. The train stage reads only the
    array and the archive's member names, so the archive's entries are empty."""
    data = root / "data"
    data.mkdir(parents=True)
    names = [f"{'ab'[i % 2]}/{i:06d}.tif" for i in range(images)]
    names.sort(key=lambda n: (n.split("/")[0], n))
    with zipfile.ZipFile(data / "eurosat.zip", "w") as archive:
        for name in names:
            archive.writestr(name, b"")
    shape = (images, BANDS, SIZE, SIZE)
    array = np.lib.format.open_memmap(data / "images.npy", mode="w+", dtype=np.uint16, shape=shape)
    rng = np.random.default_rng(0)
    for start in range(0, images, 1000):
        stop = min(images, start + 1000)
        array[start:stop] = rng.integers(1, 5000, size=(stop - start, *shape[1:]), dtype=np.uint16)
    array.flush()
    del array
    info = {
        "source": "memory test",
        "synthetic": True,
        "classes": ["a", "b"],
        "class_counts": {"a": images // 2, "b": images - images // 2},
        "num_images": images,
        "image_size": SIZE,
        "bands": BANDS,
        "band_names": None,
        "dtype": "uint16",
    }
    (data / "dataset.json").write_text(json.dumps(info))
    split_archive(data / "eurosat.zip", data / "split.csv", 0.1, 0.1, 0)
    return int(np.prod(shape)) * 2


def peak_anonymous_memory(root: Path) -> int:
    """Train on ``root``'s dataset in a child process; its largest RssAnon, sampled every 20 ms."""
    script = TRAIN.format(tests=str(REPO_ROOT / "tests"))
    process = subprocess.Popen([sys.executable, "-c", script, str(root)], stdout=subprocess.DEVNULL)
    peak, status = 0, Path(f"/proc/{process.pid}/status")

    def sample() -> None:
        nonlocal peak
        while process.poll() is None:
            try:
                line = next(x for x in status.read_text().splitlines() if x.startswith("RssAnon:"))
                peak = max(peak, int(line.split()[1]) * 1024)
            except (OSError, StopIteration):
                pass
            time.sleep(0.02)

    watcher = threading.Thread(target=sample)
    watcher.start()
    assert process.wait(timeout=900) == 0
    watcher.join()
    return peak


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="needs Linux's /proc")
def test_training_memory_does_not_grow_with_the_decoded_dataset(tmp_path: Path) -> None:
    limit = 300 * 2**20  # what the large dataset may add to the small one's peak
    small = decoded_dataset(tmp_path / "small", 600)
    large = decoded_dataset(tmp_path / "large", 12_000)
    assert large - small > 2 * limit, "the large dataset must not fit in the limit"
    baseline = peak_anonymous_memory(tmp_path / "small")
    peak = peak_anonymous_memory(tmp_path / "large")
    grown = peak - baseline
    print(f"RssAnon peak: {baseline / 2**20:.0f} MiB (small), {peak / 2**20:.0f} MiB ({large / 2**20:.0f} MiB decoded)")
    assert grown < limit, (
        f"RssAnon peak {peak / 2**20:.0f} MiB on {large / 2**20:.0f} MiB of decoded images, "
        f"{grown / 2**20:.0f} MiB above the small dataset's {baseline / 2**20:.0f} MiB"
    )


@pytest.mark.gpu
def test_on_a_gpu_a_split_is_uploaded_when_it_fits_else_gathered_through_pinned_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from eurosat_pipeline.data.loading import batch_loader, load_splits
    from eurosat_pipeline.training import datamodule as loading
    from eurosat_pipeline.training.datamodule import EuroSATDataModule

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    decoded_dataset(tmp_path, 200)
    data = tmp_path / "data"
    train_set = load_splits(data / "eurosat.zip", data / "split.csv", ("train",), RGB)["train"]
    module = EuroSATDataModule(data / "eurosat.zip", data / "split.csv", None, None)  # type: ignore[arg-type]
    uploaded = module._place("train", train_set, torch.device("cuda"))
    assert uploaded.device.type == "cuda" and "uploaded" in module.placement["train"]
    assert torch.equal(uploaded[:5].cpu(), train_set[:5])
    monkeypatch.setattr(loading, "GPU_SHARE", 0.0)  # nothing fits: gathered on the host
    kept = module._place("train", train_set, torch.device("cuda"))
    assert kept.device.type == "cpu" and "pinned" in module.placement["train"]
    images, _ = next(iter(batch_loader(kept, 8, pin_memory=True)))
    assert images.is_pinned()
