"""One GPU per queued experiment (machine-wide file locks), an equal share of the cores on a CPU.

The GPUs are mocked by their count; the processes and their locks are real.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from eurosat_pipeline.platform import placement as placement_module
from eurosat_pipeline.platform import slots
from eurosat_pipeline.platform.placement import place_devices
from eurosat_pipeline.platform.slots import queue_worker_count, queued_experiment_root

from .conftest import REPO_ROOT

# A train stage's placement in a queued experiment on a machine with argv[1] GPUs; it then holds
# its claim until it is killed.
CLAIMANT = """
import logging, sys, time
logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stdout)
from eurosat_pipeline.platform.placement import place_devices
placement = place_devices(sys.argv[2], "cuda", int(sys.argv[1]))
print("devices", placement.devices, flush=True)
time.sleep(300)
"""


class Claimant:
    def __init__(self, root: Path, gpus: int, devices: str = "auto") -> None:
        copy = root / "exps" / f"tmp{time.monotonic_ns()}"  # a queued run works in a copy of the repository
        copy.mkdir(parents=True)
        env = {
            **os.environ,
            "DVC_EXP_NAME": "exp",
            "DVC_ROOT": str(root),
            slots.SLOT_DIR_ENV: str(root / "slots"),
            "PYTHONPATH": str(REPO_ROOT / "src"),
        }
        self.process = subprocess.Popen(
            [sys.executable, "-c", CLAIMANT, str(gpus), devices],
            cwd=copy,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.fd = self.process.stdout.fileno()  # type: ignore[union-attr]
        self.pending = b""

    def next_line(self, timeout: float = 60) -> str:
        """The next line the process prints (read unbuffered: a buffered reader would hide lines
        it has already read from ``select``)."""
        deadline = time.monotonic() + timeout
        while b"\n" not in self.pending:
            ready, _, _ = select.select([self.fd], [], [], max(0, deadline - time.monotonic()))
            assert ready, f"no line within {timeout} s; so far: {self.pending!r}"
            chunk = os.read(self.fd, 4096)
            assert chunk, f"the process ended: {self.pending!r}"
            self.pending += chunk
        line, _, self.pending = self.pending.partition(b"\n")
        return line.decode().strip()

    def devices(self, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            line = self.next_line(deadline - time.monotonic())
            if line.startswith("devices"):
                return line.removeprefix("devices ")
        raise AssertionError("no claim")

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()


@pytest.fixture
def claimants(tmp_path: Path) -> Iterator[list[Claimant]]:
    started: list[Claimant] = []
    yield started
    for claimant in started:
        if claimant.process.poll() is None:
            claimant.kill()


def test_concurrent_queued_runs_each_get_their_own_gpu_and_a_third_waits(
    tmp_path: Path, claimants: list[Claimant]
) -> None:
    claimants += [Claimant(tmp_path, gpus=2), Claimant(tmp_path, gpus=2)]
    taken = [c.devices() for c in claimants]
    assert sorted(taken) == ["[0]", "[1]"]
    third = Claimant(tmp_path, gpus=2)
    claimants.append(third)
    assert "All 2 GPUs are in use by other queued experiments" in third.next_line()
    assert third.process.poll() is None  # waiting, not failed
    claimants[0].kill()  # SIGKILL: no clean-up runs, the kernel drops the lock with the process
    assert third.devices() == taken[0]


def test_a_killed_holder_frees_its_gpu(tmp_path: Path, claimants: list[Claimant]) -> None:
    first = Claimant(tmp_path, gpus=1)
    claimants.append(first)
    assert first.devices() == "[0]"
    first.kill()
    second = Claimant(tmp_path, gpus=1)
    claimants.append(second)
    assert second.devices(timeout=30) == "[0]"


def test_a_count_of_gpus_is_claimed_whole(tmp_path: Path, claimants: list[Claimant]) -> None:
    claimants += [Claimant(tmp_path, gpus=3, devices="2")]
    assert claimants[0].devices() == "[0, 1]"
    claimants += [Claimant(tmp_path, gpus=3, devices="2")]  # one GPU left: not enough, so it waits
    assert "All 3 GPUs are in use" in claimants[1].next_line()


def queued(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    root, copy = tmp_path / "repo", tmp_path / "repo" / ".dvc" / "tmp" / "exps" / "tmpabc"
    copy.mkdir(parents=True)
    monkeypatch.chdir(copy)
    monkeypatch.setenv("DVC_EXP_NAME", "exp")
    monkeypatch.setenv("DVC_ROOT", str(root))
    monkeypatch.setenv(slots.SLOT_DIR_ENV, str(tmp_path / "slots"))
    return root


def test_an_explicit_list_of_gpus_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    queued(monkeypatch, tmp_path)
    placement = place_devices([2, 3], "cuda", 4)
    assert placement.devices == [2, 3] and placement.gpus is None
    assert not (tmp_path / "slots").exists()


def test_outside_a_queue_devices_are_as_configured(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = queued(monkeypatch, tmp_path)
    monkeypatch.chdir(root)  # `dvc exp run` in the workspace: DVC_ROOT is where the stage runs
    assert queued_experiment_root() is None
    assert place_devices("auto", "cuda", 4).devices == "auto"
    monkeypatch.delenv("DVC_EXP_NAME")
    monkeypatch.chdir(tmp_path)  # `dvc repro`: no experiment
    assert place_devices("auto", "cuda", 4).devices == "auto"


def test_claims_follow_cuda_visible_devices(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    queued(monkeypatch, tmp_path)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5,7")
    placement = place_devices("auto", "cuda", 2)
    assert placement.devices == [0] and placement.gpus is not None and placement.gpus.ids == ["5"]
    assert (tmp_path / "slots" / "gpu-5.lock").is_file()  # the machine's GPU 5, whoever sees it as 0
    placement.gpus.release()


def fake_worker(proc: Path, pid: int, repo: Path, number: int) -> None:
    wdir = os.path.join(str(repo), ".dvc", "tmp", "exps", "celery")
    node = f"dvc-exp-{hashlib.sha256(wdir.encode()).hexdigest()[:6]}-{number}@localhost"
    (proc / str(pid)).mkdir(parents=True)
    args = ["/usr/bin/python3", "/venv/bin/dvc", "exp", "queue-worker", node, "--clean"]
    (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in args) + b"\0")


def test_queued_cpu_runs_share_the_cores_among_the_queues_workers(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    root = queued(monkeypatch, tmp_path)
    proc = tmp_path / "proc"
    fake_worker(proc, 101, root, 1)
    fake_worker(proc, 102, root, 2)
    fake_worker(proc, 103, tmp_path / "another-repo", 1)  # another repository's queue
    (proc / "104").mkdir()
    (proc / "104" / "cmdline").write_bytes(b"python\0train.py\0")
    assert queue_worker_count(root, proc) == 2
    monkeypatch.setattr(slots, "PROC", proc)
    monkeypatch.setattr(placement_module, "available_cores", lambda: 8)
    placement = place_devices(1, "cpu", 0)
    assert (placement.threads, placement.workers, placement.devices) == (4, 2, 1)
    assert "4 of 8 CPU cores (2 queue workers)" in placement.describe()
    assert queue_worker_count(root, tmp_path / "no-proc") == 1
