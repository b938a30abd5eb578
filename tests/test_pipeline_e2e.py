"""`dvc repro` and `dvc exp run` on the real dvc.yaml, in a temporary git repository.

One tiny pipeline run (the module's ``repo``) serves every test: those that only read its outputs,
those that change something and put it back, and the experiment tests, in this file's order. A
test that changes what it cannot cheaply put back works on its own copy (``fork``).
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import timm
import torch

from eurosat_pipeline.core.files import sha256_of

from .browser import ALL_PLOTS_DRAWN, DESCRIBE_PLOTS, Browser, is_local, require_chromium
from .conftest import tiny_config
from .pipeline_repo import PipelineRepo

TINY = {k: v for k, v in tiny_config(tsne_interval=2).to_dict().items() if k != "resume"}
DECLARED_PLOTS = {
    "Validation accuracy",
    "Train and validation loss",
    "Learning rate per parameter group",
    "Train loss per step",
    "Confusion matrix (test split)",
    "reports/train/live/plots/images/tsne",
}
TSNE_DIR = "reports/train/live/plots/images/tsne"
# Local weights live in weights/, which DVC hashes for the check stage (the documented place).
WEIGHTS = "weights/test_efficientnet.pth"


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PipelineRepo]:
    params = {**TINY, "pretrained": True, "pretrained_weights": WEIGHTS}
    repo = PipelineRepo(tmp_path_factory.mktemp("e2e") / "repo", params)
    backbone = timm.create_model("test_efficientnet", pretrained=False, num_classes=0)
    torch.save(backbone.state_dict(), repo.root / WEIGHTS)
    # `dvc add`ed as weights/README.md says, so queued runs (in temporary copies) have the file too.
    repo.run("dvc", "add", WEIGHTS)
    repo.git("add", "-A")
    repo.git("commit", "-qm", "local weights")
    repo.run("dvc", "repro")
    repo.git("add", "-A")
    repo.git("commit", "-qm", "baseline run")
    yield repo
    repo.stop_queue_workers()


@pytest.fixture
def fork(repo: PipelineRepo, tmp_path: Path) -> PipelineRepo:
    """A copy of the pipeline repository as it is now, for a test that changes it for good."""
    return repo.copy_to(tmp_path / "fork")


def assert_clean(repo: PipelineRepo) -> None:
    """`dvc status` says the workspace is what dvc.lock records."""
    assert repo.dvc_json("status") == {}
    assert "Data and pipelines are up to date." in repo.run("dvc", "status").stdout


def test_repro_writes_every_output(repo: PipelineRepo) -> None:
    root = repo.root
    assert (root / "data" / "eurosat.zip").is_file() and (root / "data" / "split.csv").is_file()
    names = sorted(p.name for p in (root / "models" / "checkpoints").iterdir())
    assert len(names) == 3 and all(re.fullmatch(r"best-\d{3}-\d\.\d{3}\.ckpt", n) for n in names)
    metrics = json.loads((root / "reports" / "eval" / "metrics.json").read_text())
    assert 0 <= metrics["test"]["acc"] <= 1 and metrics["synthetic_data"] is True
    report = (root / "reports" / "report.html").read_text()
    assert "Phase 2 start" in report and "SYNTHETIC" in report
    assert "<script" in report and not re.search(r"<script[^>]+src=", report)  # opens offline


def test_the_report_opens_offline_in_a_browser_with_every_plot_drawn(repo: PipelineRepo) -> None:
    chromium = require_chromium()
    report = repo.root / "reports" / "report.html"
    declared = report.read_text().count('<div class="plot">')
    test = json.loads((repo.root / "reports" / "eval" / "metrics.json").read_text())["test"]
    with Browser(chromium) as browser:
        log = browser.open(report.as_uri())
        browser.wait_for(ALL_PLOTS_DRAWN)
        plots = browser.evaluate(DESCRIBE_PLOTS)
        text = browser.evaluate("document.body.innerText")
    assert log.console_errors == []
    assert [url for url in log.requests if not is_local(url)] == [], "the report needs the network"
    assert declared == 5 and len(plots) == declared  # accuracy, loss, learning rate, confusion, t-SNE
    for plot in plots:
        assert plot["svg"] and plot["width"] > 0 and plot["height"] > 0 and plot["marks"] > 0, plot
    marked = [plot["title"] for plot in plots if "Phase 2 start" in plot["annotations"]]
    assert marked == ["Validation accuracy", "Train and validation loss"]
    assert f"test accuracy\t{test['acc']:.2%} on {test['images']:,} images" in text


def test_second_repro_runs_nothing(repo: PipelineRepo) -> None:
    assert_clean(repo)
    result = repo.run("dvc", "repro")
    assert "Running stage" not in result.stdout, result.stdout
    assert "Stage 'check' didn't change" in result.stdout and "Stage 'train' didn't change" in result.stdout
    assert_clean(repo)


def test_bytecode_and_editor_files_beside_the_code_change_nothing(repo: PipelineRepo) -> None:
    """The stages ran with bytecode writing on, so __pycache__ sits in every source folder they
    import; importing the package again and an editor's droppings must leave every stage current."""
    src = repo.root / "src" / "eurosat_pipeline"
    imports = "import eurosat_pipeline.maps.mapping, eurosat_pipeline.cli.main"
    repo.run("python", "-c", imports, env={"PYTHONPATH": "src"})
    assert (src / "training" / "__pycache__").is_dir() and (src / "maps" / "__pycache__").is_dir()
    names = (".classifier.py.swp", "classifier.py~", ".#classifier.py", ".DS_Store")
    droppings = [src / "model" / name for name in names]
    for path in droppings:
        path.write_text("not code")
    try:
        assert_clean(repo)
    finally:
        for path in droppings:
            path.unlink()


def test_a_change_to_code_a_stage_imports_makes_that_stage_stale(repo: PipelineRepo) -> None:
    """data/loading.py is imported by evaluate only through reporting.evaluation, and was missing
    from its deps before they named rooms. A change in inference/ (predict, the
    engines) touches no stage that trains or evaluates: only export."""
    loading = repo.root / "src" / "eurosat_pipeline" / "data" / "loading.py"
    mapping = repo.root / "src" / "eurosat_pipeline" / "inference" / "predict.py"
    originals = {path: path.read_text() for path in (loading, mapping)}
    try:
        loading.write_text(originals[loading].replace("def index_tensor(", "def index_tensor(  ", 1))
        assert {"train", "evaluate", "export", "split", "download", "report"} <= set(repo.dvc_json("status"))
        loading.write_text(originals[loading])
        mapping.write_text(originals[mapping] + "\n\ndef _unused() -> None:\n    pass\n")
        assert set(repo.dvc_json("status")) == {"export"}
    finally:
        for path, text in originals.items():
            path.write_text(text)
    assert_clean(repo)


def test_a_misspelt_key_fails_repro_even_when_nothing_else_changed(repo: PipelineRepo) -> None:
    params = repo.root / "params.yaml"
    original = params.read_text()
    try:
        params.write_text(original + "phase2_lrr: 0.1\n")
        result = repo.run("dvc", "repro", check=False)
        assert result.returncode != 0
        assert "unknown key 'phase2_lrr'. Did you mean 'phase2_lr'?" in result.stdout + result.stderr
        assert "Running stage 'train'" not in result.stdout
        params.write_text(original)
        # DVC itself refuses `-S phase2_lrr=...` for a key not in params.yaml; `+key` adds one.
        sweep = repo.run("dvc", "exp", "run", "-S", "phase1_lr=1e-3", "-S", "+phase2_lrr=0.1", check=False)
        assert sweep.returncode != 0 and "unknown key 'phase2_lrr'" in sweep.stdout + sweep.stderr
        assert "Running stage 'train'" not in sweep.stdout
    finally:
        params.write_text(original)
    assert_clean(repo)  # the failed checks left the last good record and dvc.lock as they were


def test_dvc_metrics_show_reads_both_metric_files(repo: PipelineRepo) -> None:
    metrics = repo.dvc_json("metrics", "show")
    found: dict[str, Any] = next(iter(metrics.values()))["data"]
    assert "best_val_acc" in found["reports/train/live/metrics.json"]["data"]
    assert "acc" in found["reports/eval/metrics.json"]["data"]["test"]


def test_plots_show_draws_every_declared_plot(repo: PipelineRepo) -> None:
    shown = repo.dvc_json("plots", "show")
    assert shown.get("errors", []) == []
    data = shown["data"]
    vega = {name for name, items in data.items() if items and items[0]["type"] == "vega"}
    assert vega == DECLARED_PLOTS - {TSNE_DIR}
    for name in vega:
        assert data[name][0]["content"]["data"]["values"], name
    pictures = sorted(int(Path(name).stem) for name in data if name.startswith(TSNE_DIR + "/"))
    assert pictures == [2, 3], "one picture every tsne_interval epochs and at the last epoch"
    html = repo.run("dvc", "plots", "show", "-o", "plots_html")
    assert "WARNING" not in html.stdout + html.stderr
    assert (repo.root / "plots_html" / "index.html").is_file()


# Per Vega view on the page: its container's id, its size, and how many of its canvas pixels are
# not blank (a view whose libraries failed to load is absent; one with no data draws only axes).
DESCRIBE_VEGA_VIEWS = """
[...document.querySelectorAll('.vega-embed')].map(embed => {
  const canvas = embed.querySelector('canvas');
  let inked = 0;
  if (canvas) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    for (let i = 3; i < pixels.length; i += 4) inked += pixels[i] > 0 && pixels[i - 1] < 250 ? 1 : 0;
  }
  return {id: embed.closest('div[id]').id, width: canvas ? canvas.width : 0, height: canvas ? canvas.height : 0, inked};
})
"""


@pytest.mark.parametrize("command", [("show",), ("diff", "HEAD")])
def test_plots_pages_draw_every_plot_offline(repo: PipelineRepo, command: tuple[str, ...]) -> None:
    """`dvc plots show` and `dvc plots diff`, as a user types them, write a page that draws in a
    browser with no network: the repository's template carries Vega, Vega-Lite and Vega-Embed."""
    chromium = require_chromium()
    out = repo.root / f"plots_{command[0]}"
    repo.run("dvc", "plots", *command, "-o", str(out))
    page = (out / "index.html").read_text()
    assert "cdn.jsdelivr.net" not in page and not re.search(r"<script[^>]+src=", page)
    with Browser(chromium) as browser:
        log = browser.open((out / "index.html").as_uri())
        vega_count = len(DECLARED_PLOTS - {TSNE_DIR})
        browser.wait_for(f"document.querySelectorAll('.vega-embed canvas').length >= {vega_count}")
        views = browser.evaluate(DESCRIBE_VEGA_VIEWS)
        pictures = browser.evaluate("[...document.images].map(i => i.complete && i.naturalWidth > 0)")
    assert log.console_errors == []
    assert [url for url in log.requests if not is_local(url)] == [], "the page needs the network"
    assert len(views) == vega_count, views  # one view per declared Vega plot
    for view in views:
        assert view["width"] > 100 and view["height"] > 100 and view["inked"] > 1000, view
    assert pictures and all(pictures), "every t-SNE picture shows"


def test_wandb_params_are_not_training_dependencies(repo: PipelineRepo) -> None:
    params, lock = repo.root / "params.yaml", repo.root / "dvc.lock"
    original_params, original_lock = params.read_bytes(), lock.read_bytes()
    try:
        changed = original_params.decode().replace('wandb_project: "eurosat-pipeline"', 'wandb_project: "elsewhere"')
        assert changed != original_params.decode()
        params.write_text(changed)
        # Only the check, which validates every key, sees the change; its record stays the same.
        assert set(repo.dvc_json("status")) == {"check"}
        output = repo.run("dvc", "repro").stdout
        assert "Running stage 'check'" in output and "Stage 'train' didn't change" in output, output
        assert_clean(repo)
    finally:  # the check's record has the same bytes, so the old params and lock are the old state
        params.write_bytes(original_params)
        lock.write_bytes(original_lock)
    assert_clean(repo)


def test_exp_run_with_set_param_reruns_from_train_and_records_an_experiment(repo: PipelineRepo) -> None:
    output = repo.run("dvc", "exp", "run", "-S", "phase2_lr=3e-4", "--name", "lr3e-4").stdout
    assert "Stage 'download' didn't change" in output and "Stage 'split' didn't change" in output
    for stage in ("train", "evaluate", "report"):
        assert f"Running stage '{stage}'" in output
    shown = repo.dvc_json("exp", "show")
    experiments = [e for row in shown for e in (row.get("experiments") or [])]
    runs = [rev["data"] for e in experiments for rev in e["revs"] if e["revs"][0]["name"] == "lr3e-4"]
    assert runs, json.dumps(shown)[:2000]
    data = runs[0]
    assert data["params"]["params.yaml"]["data"]["phase2_lr"] == pytest.approx(0.0003)
    assert "acc" in data["metrics"]["reports/eval/metrics.json"]["data"]["test"]
    assert "best_val_acc" in data["metrics"]["reports/train/live/metrics.json"]["data"]
    assert Path(repo.root / "params.yaml").read_text().count("phase2_lr") == 1
    assert_clean(repo)  # the workspace is the experiment's, as `eurosat demo` leaves it before restoring


def test_queued_sweep_trains_only_the_new_configurations_and_exp_show_compares_them(repo: PipelineRepo) -> None:
    """phase2_lr=3e-4 ran above: of this three-value sweep two train, on two workers at once that
    share the CPU's cores."""
    repo.run("dvc", "exp", "run", "-S", "phase2_lr=1e-4,3e-4,1e-3", "--queue")
    repo.start_queue(jobs=2)
    logs = _queue_logs(repo)
    runs = _runs_by_lr(repo, names=set(logs))
    assert set(runs) == {0.0003, 0.001, 0.0001}
    for lr in (0.001, 0.0001):
        metrics = runs[lr]["data"]["metrics"]
        assert "acc" in metrics["reports/eval/metrics.json"]["data"]["test"], lr
        assert "best_val_acc" in metrics["reports/train/live/metrics.json"]["data"], lr
    by_lr = {lr: logs[run["name"]] for lr, run in runs.items()}
    trained = sorted(lr for lr, log in by_lr.items() if "Running stage 'train'" in log)
    assert trained == [0.0001, 0.001], {lr: log[-2000:] for lr, log in by_lr.items()}
    for lr in trained:  # each took its share of the cores: two workers here
        assert re.search(r"queued experiment: \d+ of \d+ CPU cores \(2 queue workers\)", by_lr[lr]), by_lr[lr]
    assert _metrics(runs[0.0003]) == _metrics(_named(repo, "lr3e-4"))


def test_a_configuration_tried_before_is_restored_not_trained(repo: PipelineRepo) -> None:
    """1e-3 trained in the queue's temporary copy, 3e-4 in the workspace: each is restored from the
    shared run-cache where the other ran, every stage past the check (which validates params.yaml
    on every change) skipped, with identical metrics."""
    output = repo.run("dvc", "exp", "run", "-S", "phase2_lr=1e-3", "--name", "lr1e-3-again").stdout
    queued = _runs_by_lr(repo, names=set(_queue_logs(repo)))[0.001]
    assert _metrics(_named(repo, "lr1e-3-again")) == _metrics(queued)
    assert_clean(repo)
    repo.run("dvc", "exp", "run", "-S", "phase2_lr=3e-4", "--queue", "--name", "lr3e-4-queued")
    repo.start_queue(jobs=1)
    again = _queue_logs(repo)["lr3e-4-queued"]
    assert _metrics(_named(repo, "lr3e-4-queued")) == _metrics(_named(repo, "lr3e-4"))
    for log in (output, again):
        assert "Running stage 'check'" in log
        for stage in ("download", "split"):
            assert f"Stage '{stage}' didn't change" in log, log
        for stage in ("train", "evaluate", "report", "export"):
            assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in log, log
            assert f"Running stage '{stage}'" not in log, log


def _queue_logs(repo: PipelineRepo, timeout: float = 300) -> dict[str, str]:
    """Waits for the queue to finish; then each queued experiment's output, by name."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = repo.run("dvc", "queue", "status").stdout
        if not re.search(r"\b(Queued|Running)\b", status):
            break
        time.sleep(2)
    else:
        raise AssertionError(f"queue did not finish: {status}")
    repo.stop_queue_workers()
    tasks = [line.split() for line in status.splitlines() if re.match(r"[0-9a-f]{7} ", line)]
    failed = [task for task in tasks if task[-1] != "Success"]
    logs = {task[1]: repo.run("dvc", "queue", "logs", task[1]).stdout for task in tasks}
    assert not failed, {task[1]: logs[task[1]][-3000:] for task in failed}
    return logs


def _experiments(repo: PipelineRepo) -> list[dict[str, Any]]:
    """Every experiment ``dvc exp show`` lists (on any commit): its name, and its params and metrics."""
    return [
        {"name": experiment["revs"][0]["name"], "data": experiment["revs"][0]["data"]}
        for row in repo.dvc_json("exp", "show", "--all-commits")
        for experiment in row.get("experiments") or []
    ]


def _runs_by_lr(repo: PipelineRepo, names: set[str]) -> dict[float, dict[str, Any]]:
    return {
        run["data"]["params"]["params.yaml"]["data"]["phase2_lr"]: run
        for run in _experiments(repo)
        if run["name"] in names
    }


def _named(repo: PipelineRepo, name: str) -> dict[str, Any]:
    return next(run for run in _experiments(repo) if run["name"] == name)


def _metrics(run: dict[str, Any]) -> dict[str, Any]:
    return {path: found["data"] for path, found in run["data"]["metrics"].items()}


def test_compare_writes_the_pull_request_comment(repo: PipelineRepo) -> None:
    report = Path(repo.run("eurosat", "compare", "--rev", "HEAD", "--out", "cml").stdout.strip())
    text = (repo.root / report).read_text()
    params, metrics = text.split("## Metrics")[0], text.split("## Metrics")[1].split("## Plots")[0]
    assert re.search(r"\|\s*params.yaml\s*\|\s*phase2_lr\s*\|", params), params
    # Only metrics that differ are listed; the tiny model's accuracies can tie by chance.
    assert re.search(r"\|\s*reports/(train/live|eval)/metrics.json\s*\|", metrics), metrics
    images = re.findall(r"!\[[^\]]*\]\(\./([^)]+)\)", text)
    assert len(images) >= 6
    for name in images:
        assert (repo.root / "cml" / name).read_bytes().startswith(b"\x89PNG"), name


def test_weights_changed_in_place_retrain(fork: PipelineRepo) -> None:
    weights = fork.root / WEIGHTS
    state = torch.load(weights, weights_only=True)
    state["conv_stem.weight"] += 1e-3
    torch.save(state, weights)
    assert set(fork.dvc_json("status")) == {"check", f"{WEIGHTS}.dvc"}  # same path, new bytes
    # Up to train only (evaluate, report and export would follow the new model as any change does).
    output = fork.run("dvc", "repro", "train").stdout
    assert "Running stage 'train'" in output, output
    record = json.loads((fork.root / "models" / "pretrained.json").read_text())
    summary = json.loads((fork.root / "reports" / "train" / "summary.json").read_text())
    assert record["pretrained_weights"]["sha256"] == sha256_of(weights)
    assert summary["pretrained_weights"]["sha256"] == record["pretrained_weights"]["sha256"]
    # Repro also recorded the new bytes in the weights' .dvc file: only the stages after train are stale.
    assert set(fork.dvc_json("status")) == {"evaluate", "report", "export"}


def test_push_to_a_local_remote_and_pull_into_a_fresh_clone(fork: PipelineRepo, tmp_path: Path) -> None:
    remote = tmp_path / "remote"
    fork.run("dvc", "remote", "add", "--default", "storage", str(remote))
    fork.git("add", "-A")
    fork.git("commit", "-qm", "run with a remote")
    fork.run("dvc", "push")
    stored = [p for p in remote.rglob("*") if p.is_file()]
    # The dataset travels as one archive, not one object per image.
    assert 0 < len(stored) < 40, len(stored)
    clone = tmp_path / "clone"
    fork.run("git", "clone", "-q", str(fork.root), str(clone))
    fresh = PipelineRepo.existing(clone)
    fresh.run("dvc", "pull")
    assert_clean(fresh)
    assert (clone / "models" / "best.ckpt").read_bytes() == (fork.root / "models" / "best.ckpt").read_bytes()
    # The model registry: a version is a git tag (GTO's name@vX.Y.Z); both artifacts then come
    # from the remote by name, without a checkout (the latest version, or the one asked for).
    for name, path, rev in (
        ("model", "models/best.ckpt", []),
        ("model-onnx", "models/model.onnx", ["--rev", "v0.1.0"]),
    ):
        fork.git("tag", "-a", f"{name}@v0.1.0", "-m", f"register {name}")
        fetched = tmp_path / f"fetched-{name}"
        fork.run("dvc", "artifacts", "get", str(fork.root), name, *rev, "-o", str(fetched))
        assert fetched.read_bytes() == (fork.root / path).read_bytes(), name


def test_a_team_shares_runs_through_a_dvc_remote_and_a_git_remote(fork: PipelineRepo, tmp_path: Path) -> None:
    """One clone pushes its run-cache (DVC remote) and experiments (Git remote); a teammate's fresh
    clone pulls them, lists the experiment, and gets that configuration restored, not trained. An
    experiment run with DVC_EXP_AUTO_PUSH goes to the Git remote by itself."""
    origin = tmp_path / "origin.git"
    fork.run("git", "init", "-q", "--bare", str(origin))
    fork.git("remote", "add", "origin", str(origin))
    # --local: also for the experiments made before there was a remote (DVC reads each commit's config).
    storage = ("dvc", "remote", "add", "--local", "--default", "storage", str(tmp_path / "storage"))
    fork.run(*storage)
    fork.git("add", "-A")
    fork.git("commit", "-qm", "share runs")
    fork.git("push", "-q", "origin", "HEAD")
    fork.run("dvc", "push", "--run-cache")  # the workspace's outputs and every stage's run records
    fork.run("dvc", "exp", "push", "origin", "--all-commits")  # experiments (Git) and their outputs (DVC)

    teammate = PipelineRepo.existing(tmp_path / "teammate")
    fork.run("git", "clone", "-q", str(origin), str(teammate.root))
    teammate.run(*storage)
    teammate.run("dvc", "pull", "--run-cache")
    teammate.run("dvc", "exp", "pull", "origin", "--all-commits")
    assert "lr3e-4" in {run["name"] for run in _experiments(teammate)}
    shared = {"DVC_EXP_AUTO_PUSH": "true", "DVC_EXP_GIT_REMOTE": "origin"}
    # --pull: the restored stages' outputs come from the DVC remote (pull --run-cache brings the records).
    output = teammate.run(
        "dvc", "exp", "run", "--pull", "-S", "phase2_lr=3e-4", "--name", "teammate", env=shared
    ).stdout
    for stage in ("train", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in output, output
        assert f"Running stage '{stage}'" not in output, output
    assert _metrics(_named(teammate, "teammate")) == _metrics(_named(fork, "lr3e-4"))
    assert_clean(teammate)
    pushed = fork.run("git", "ls-remote", str(origin), "refs/exps/*").stdout
    assert re.search(r"refs/exps/.*/teammate$", pushed, flags=re.MULTILINE), pushed
