"""`eurosat serve --registry`: a model registered and promoted with GTO in a Git repository (a local
bare one), its file in a local DVC remote, fetched with `dvc artifacts get`, checked, served, asked."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest

from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.inference.engines import load_predictor
from eurosat_pipeline.inference.options import ModelOptions
from eurosat_pipeline.inference.registry import RegistryError, fetch_model, resolve

from .serving import encoded

ARTIFACTS = """artifacts:
  model:
    path: models/best.ckpt
    type: model
    desc: the EuroSAT classifier
"""


@dataclass
class Registry:
    """A project with the model in its DVC remote, and the bare repository it pushes to. DVC and GTO
    run in this process, through their Python APIs (the same code as their commands, without a
    second's start-up each)."""

    work: Path
    bare: Path

    def git(self, *args: str) -> str:
        return subprocess.run(["git", *args], cwd=self.work, capture_output=True, text=True, check=True).stdout

    def commit_model(self, model: bytes, message: str) -> str:
        """The model file committed (DVC tracks it) and pushed to the DVC remote; its sha256."""
        from dvc.repo import Repo

        (self.work / "models" / "best.ckpt").write_bytes(model)
        with Repo(self.work) as dvc:
            dvc.add(str(self.work / "models" / "best.ckpt"))
            self.git("add", "-A")
            self.git("commit", "-q", "-m", message)
            dvc.push()
        return sha256_of(self.work / "models" / "best.ckpt")

    def register(self, version: str, message: str | None = None, stage: str | None = None) -> None:
        """As `gto register model --version V --message M` (and `gto assign model --version V --stage S`)."""
        import gto.api

        gto.api.register(str(self.work), "model", "HEAD", version=version, message=message)
        if stage:
            gto.api.assign(str(self.work), "model", stage, version=version)
        self.git("push", "-q", "origin", "main", "--tags")


def make_registry(root: Path, model: bytes) -> tuple[Registry, str]:
    """Version v1.0.0 registered with its sha256 and assigned to prod; the model's sha256."""
    from dvc.repo import Repo

    work, bare = root / "project", root / "registry.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
    (work / "models").mkdir(parents=True)
    registry = Registry(work, bare)
    registry.git("init", "-q", "-b", "main")
    registry.git("config", "user.email", "ci@example.com")
    registry.git("config", "user.name", "CI")
    registry.git("remote", "add", "origin", str(bare))
    with Repo.init(work) as dvc, dvc.config.edit() as config:  # dvc init; dvc remote add -d storage PATH
        config["remote"]["storage"] = {"url": str(root / "dvc-storage")}
        config["core"]["remote"] = "storage"
    (work / "dvc.yaml").write_text(ARTIFACTS)
    sha256 = registry.commit_model(model, "the first model")
    registry.register("v1.0.0", f"sha256:{sha256}", stage="prod")
    return registry, sha256


@pytest.fixture(scope="module")
def registry(map_model: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Registry, str]:
    return make_registry(tmp_path_factory.mktemp("registry"), map_model.read_bytes())


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_serve_fetches_the_prod_version_checks_it_and_serves_it(
    registry: tuple[Registry, str], synthetic_tiles: dict[str, list[np.ndarray]], tmp_path: Path
) -> None:
    repo, sha256 = registry
    port, kept = free_port(), tmp_path / "fetched"
    command = [sys.executable, "-m", "eurosat_pipeline.cli.main", "serve", "--registry", str(repo.bare)]
    command += ["--stage", "prod", "--port", str(port), "--views", "1", "--fetch-to", str(kept)]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        health = _wait_for_health(server, f"http://127.0.0.1:{port}")
        patch = encoded(synthetic_tiles["River"][0])
        answer = httpx.post(f"http://127.0.0.1:{port}/predict", files={"files": ("river.png", patch)}, timeout=60)
    finally:
        server.send_signal(signal.SIGINT)
        output, _ = server.communicate(timeout=60)
    model = health["model"]
    assert model["sha256"] == sha256 and model["file"] == "best.ckpt"
    assert model["registry"] == {
        "repo": str(repo.bare),
        "artifact": "model",
        "version": "v1.0.0",
        "commit": repo.git("rev-parse", "HEAD").strip(),
        "stage": "prod",
        "declared_sha256": sha256,
    }
    # The answer is the fetched model's own (not an accuracy bar: the tiny model's classes move
    # with the CPU's float path): the same file, loaded here, gives the same top class.
    here = load_predictor(ModelOptions(kept / "best.ckpt", views=1))
    expected = here.data.classes[int(here.classify(synthetic_tiles["River"][0][None]).argmax())]
    assert answer.status_code == 200 and answer.json()["results"][0]["predictions"][0]["class"] == expected
    assert f"fetched model@v1.0.0 (stage prod) from {repo.bare}: sha256 {sha256} checked" in output
    assert server.returncode == 0, output
    assert sha256_of(kept / "best.ckpt") == sha256


def _wait_for_health(server: subprocess.Popen[str], url: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise AssertionError(f"eurosat serve exited ({server.returncode}):\n{server.stdout.read()}")
        try:
            return httpx.get(f"{url}/health", timeout=5).raise_for_status().json()
        except httpx.HTTPError:
            time.sleep(0.3)
    raise AssertionError("eurosat serve did not answer /health")


def test_stages_move_and_a_file_without_the_registered_hash_is_refused(map_model: Path, tmp_path: Path) -> None:
    repo, first = make_registry(tmp_path, b"model one")
    assert resolve(str(repo.bare), stage="prod").version == "v1.0.0"

    repo.commit_model(b"model two", "a second model")
    repo.register("v1.1.0", f"sha256:{first}")  # the hash of another file: a wrong registration
    with pytest.raises(RegistryError, match=r"sha256 .* but its registration declares .* not the registered model"):
        fetch_model(str(repo.bare), tmp_path / "wrong", version="v1.1.0")

    third = repo.commit_model(b"model three", "a third model")
    repo.register("v1.2.0", stage="prod")  # no hash in the message: GTO's default one
    assert resolve(str(repo.bare), stage="prod").version == "v1.2.0"  # prod moved
    assert resolve(str(repo.bare)).version == "v1.2.0"  # and it is the latest
    with pytest.raises(RegistryError, match=r"declares no sha256 .* gto register model .* or give the hash you trust"):
        fetch_model(str(repo.bare), tmp_path / "unchecked", stage="prod")
    fetched = fetch_model(str(repo.bare), tmp_path / "pinned", stage="prod", expected_sha256=third)
    assert fetched.path.read_bytes() == b"model three" and fetched.sha256 == third
    assert fetch_model(str(repo.bare), tmp_path / "old", version="v1.0.0").path.read_bytes() == b"model one"


def test_what_cannot_be_found_is_said(registry: tuple[Registry, str], tmp_path: Path) -> None:
    repo, _ = registry
    with pytest.raises(RegistryError, match=r"'model' has no version in stage staging .* `gto show"):
        resolve(str(repo.bare), stage="staging")
    with pytest.raises(RegistryError, match=r"'classifier' has no registered version"):
        resolve(str(repo.bare), "classifier")
    with pytest.raises(RegistryError, match=r"cannot read its model registry"):
        resolve(str(tmp_path / "nowhere"))
    full = tmp_path / "full"
    full.mkdir()
    (full / "other.ckpt").write_bytes(b"x")
    with pytest.raises(RegistryError, match=r"not empty"):
        fetch_model(str(repo.bare), full, stage="prod")


def test_a_bare_repository_without_its_branch_as_head_gets_a_hint(
    registry: tuple[Registry, str], tmp_path: Path
) -> None:
    repo, _ = registry
    copy = tmp_path / "copy.git"
    shutil.copytree(repo.bare, copy)
    subprocess.run(["git", "-C", str(copy), "symbolic-ref", "HEAD", "refs/heads/master"], check=True)
    with pytest.raises(RegistryError, match=r"HEAD names no branch it has .* symbolic-ref HEAD refs/heads/main"):
        fetch_model(str(copy), tmp_path / "model", stage="prod")


def test_a_fetched_file_that_fails_its_hash_check_is_deleted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from eurosat_pipeline.inference import registry

    found = registry.RegistryVersion("repo", "model", "v1.0.0", "abc", None, "0" * 64)
    fetched = tmp_path / "fetched" / "best.ckpt"

    def fake_fetch(version: registry.RegistryVersion, folder: str | Path) -> Path:
        fetched.parent.mkdir()
        fetched.write_bytes(b"not the registered model")
        return fetched

    monkeypatch.setattr(registry, "resolve", lambda *args: found)
    monkeypatch.setattr(registry, "fetch", fake_fetch)
    with pytest.raises(RegistryError, match="nothing is served"):
        registry.fetch_model("repo", tmp_path / "fetched")
    assert not fetched.exists(), "a file that failed its hash check was left in the fetch folder"
