"""A model version from a Git repository's model registry, for ``eurosat serve --registry``.

DVC's model registry is Git tags in GTO's format: ``model@v1.0.0`` registers a version of the
artifact ``model`` (declared in the repository's ``dvc.yaml``) at a commit, ``model#prod#3``
assigns it the stage ``prod``. GTO reads them (:func:`resolve`): a stage's current version, or the
latest registered one. ``dvc artifacts get`` then fetches exactly that version's file from the
repository's DVC remote, without a clone of the working tree (:func:`fetch`).

**The hash.** DVC addresses its remote by MD5 and does not recompute it on download unless the
remote sets ``verify``; a file changed in the remote, or a version registered from the wrong
commit, would be served unnoticed. So the registration declares the model's sha256 in its tag
message (``gto register model --version v1.0.0 --message "sha256:<hex>"``;
``/health`` shows the served file's), and the fetched file must have it, or nothing is served. A version
registered without one (by DVC Studio's button, say) is refused unless the sha256 is given
(``--sha256``), from a source the user trusts.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

from eurosat_pipeline.core.errors import PipelineError, first_line
from eurosat_pipeline.core.files import sha256_of
from eurosat_pipeline.core.stage import tool_environment

#: How a registration states the model's hash: ``sha256:<64 hex digits>`` anywhere in its message.
DECLARED_SHA256 = re.compile(r"\bsha256[:= ]\s*([0-9a-fA-F]{64})\b")
REGISTER_HINT = 'gto register {name} --version vX.Y.Z --message "sha256:$(sha256sum {path} | cut -c1-64)"'


class RegistryError(PipelineError):
    """The registry, the version or the fetched file cannot be used."""


@dataclass(frozen=True)
class RegistryVersion:
    """One registered version of an artifact: what GTO says about it."""

    repo: str
    artifact: str
    version: str
    commit: str
    #: The stage asked for (None: the version was asked for, or the latest one).
    stage: str | None
    #: The sha256 its registration message declares, if any.
    declared_sha256: str | None

    def describe(self) -> dict[str, str]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @property
    def label(self) -> str:
        return f"{self.artifact}@{self.version}" + (f" (stage {self.stage})" if self.stage else "")


@dataclass(frozen=True)
class FetchedModel:
    path: Path
    version: RegistryVersion
    sha256: str

    @property
    def is_onnx(self) -> bool:
        return self.path.suffix.lower() == ".onnx"


def resolve(
    repo: str, artifact: str = "model", version: str | None = None, stage: str | None = None
) -> RegistryVersion:
    """The registered version of ``artifact`` in ``repo`` (a path or URL): ``version`` itself, the one
    in ``stage`` now, or the latest registered one."""
    if version and stage:
        raise RegistryError("give a version or a stage, not both")
    _gto()
    from gto.api import show
    from gto.constants import VersionSort
    from gto.exceptions import ArtifactNotFound

    shortcut = f"{artifact}@{version}" if version else f"{artifact}#{stage}" if stage else f"{artifact}@latest"
    try:  # "latest" as GTO and `dvc artifacts get` mean it: the highest version number
        found = show(repo, shortcut, registered_only=True, sort=VersionSort.SemVer)
    except ArtifactNotFound:
        found = []
    except Exception as err:  # GTO's and Git's errors vary; each is about the repository
        raise RegistryError(f"{repo}: cannot read its model registry ({first_line(err)})") from err
    if not found:
        raise RegistryError(_nothing_found(repo, artifact, version, stage))
    chosen = found[0]
    message = chosen.get("message") or ""
    declared = DECLARED_SHA256.search(message)
    return RegistryVersion(
        repo,
        artifact,
        chosen["version"],
        chosen["commit_hexsha"],
        stage,
        declared.group(1).lower() if declared else None,
    )


def _nothing_found(repo: str, artifact: str, version: str | None, stage: str | None) -> str:
    asked = f"version {version}" if version else f"version in stage {stage}" if stage else "registered version"
    return (
        f"{repo}: {artifact!r} has no {asked} in its model registry (GTO's git tags). See them with "
        f"`gto show --repo {repo} {artifact}`; register one with `gto register {artifact}`"
    )


def _gto() -> None:
    """GTO is an extra (``registry``): without it, say how to install it."""
    try:
        import gto.api  # noqa: F401
    except ImportError as err:
        raise RegistryError("--registry needs GTO: pip install 'eurosat-pipeline[registry]'") from err


def fetch(found: RegistryVersion, folder: str | Path) -> Path:
    """``dvc artifacts get`` of the version into ``folder`` (new or empty): the one file it holds."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if any(folder.iterdir()):
        raise RegistryError(f"{folder}: not empty; the model is fetched into an empty folder")
    command = [sys.executable, "-m", "dvc", "artifacts", "get", found.repo, found.artifact, "--rev", found.version]
    command += ["-o", f"{folder}/"]
    result = subprocess.run(command, capture_output=True, text=True, env=tool_environment(), check=False)
    if result.returncode != 0:
        raise RegistryError(_fetch_failure(found, result.stderr or result.stdout))
    files = [p for p in folder.rglob("*") if p.is_file()]
    if len(files) != 1 or files[0].parent != folder:
        raise RegistryError(
            f"{found.repo}: {found.label} is a folder of {len(files)} file(s); serve takes one model file"
        )
    return files[0]


def _fetch_failure(found: RegistryVersion, output: str) -> str:
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    reason = next((line for line in lines if line.startswith("ERROR")), lines[-1] if lines else "no output")
    hint = ""
    if "refs/remotes/origin/HEAD" in output:  # a bare repository whose HEAD names a branch it lacks
        hint = (
            f"; the repository's HEAD names no branch it has (a bare repository made with `git init --bare` "
            f"before its branch was pushed): `git -C {found.repo} symbolic-ref HEAD refs/heads/main`"
        )
    elif "remote" in reason.lower() or "missing" in reason.lower():
        hint = "; was the model pushed to the DVC remote (`dvc push`) that the repository's .dvc/config names?"
    return f"{found.repo}: `dvc artifacts get` of {found.label} failed: {reason}{hint}"


def verify(path: Path, found: RegistryVersion, expected: str | None = None) -> str:
    """The file's sha256, which must match both the registration's and ``expected`` (when given);
    a version that declares none needs ``expected``."""
    actual = sha256_of(path)
    wanted = {h.lower() for h in (found.declared_sha256, expected) if h}
    if not wanted:
        register = REGISTER_HINT.format(name=found.artifact, path=path.name)
        raise RegistryError(
            f"{found.repo}: {found.label} declares no sha256 in its registration, so the fetched file cannot "
            f"be checked. Register versions with their hash: {register} or give the hash you trust with --sha256"
        )
    for hash_ in sorted(wanted):
        if actual != hash_:
            source = "its registration declares" if hash_ == found.declared_sha256 else "--sha256 says"
            raise RegistryError(
                f"{path.name} from {found.repo} ({found.label}): sha256 {actual}, but {source} {hash_}. "
                "The file in the DVC remote is not the registered model; nothing is served"
            )
    return actual


def fetch_model(
    repo: str,
    folder: str | Path,
    artifact: str = "model",
    version: str | None = None,
    stage: str | None = None,
    expected_sha256: str | None = None,
) -> FetchedModel:
    """Resolve, fetch and check: the model file ``eurosat serve --registry`` serves. A file that
    fails its check is deleted: nothing half-trusted stays in the folder for a later run to load."""
    found = resolve(repo, artifact, version, stage)
    path = fetch(found, folder)
    try:
        sha256 = verify(path, found, expected_sha256)
    except RegistryError:
        path.unlink(missing_ok=True)
        raise
    return FetchedModel(path, found, sha256)
