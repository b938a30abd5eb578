"""The pull-request comment: params and metrics diffs as Markdown tables, plots as PNG files.

``eurosat compare --rev main --out cml`` writes ``cml/report.md`` and one PNG per plot comparing
the workspace with ``main``. The CML workflow posts that file; the same command runs locally. The
tables come from ``dvc params diff`` / ``dvc metrics diff``; the plots from ``dvc plots diff
--json``, whose Vega-Lite specs vl-convert renders to PNG without a browser.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from eurosat_pipeline.core.errors import PipelineError
from eurosat_pipeline.core.files import atomic_path, write_text
from eurosat_pipeline.core.stage import tool_environment


def compare(rev: str, out_dir: str | Path, title: str = "EuroSAT pipeline") -> Path:
    if rev.startswith("-"):
        raise PipelineError(f"'{rev}' is not a git revision.")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    params = _dvc("params", "diff", rev, "--md")
    metrics = _dvc("metrics", "diff", rev, "--md", "--precision", "4")
    images = render_plots(_plots_json(rev), out_dir)
    lines = [
        f"# {title}: workspace vs `{rev}`",
        "",
        "## Params",
        "",
        params.strip() or f"No params differ from `{rev}`.",
        "",
        "## Metrics",
        "",
        metrics.strip() or f"No metrics differ from `{rev}` (or `{rev}` has none recorded).",
        "",
        "## Plots",
        "",
    ]
    for name, file in images:
        lines += [f"### {name}", "", f"![{name}](./{file.name})", ""]
    if not images:
        lines.append("No plots were produced.")
    report = out_dir / "report.md"
    write_text(report, "\n".join(lines) + "\n")
    return report


def render_plots(plots: dict[str, list[dict[str, Any]]], out_dir: Path) -> list[tuple[str, Path]]:
    """One PNG per Vega plot, and the newest picture of each image folder (the t-SNE) per revision."""
    import vl_convert

    written = []
    pictures: dict[str, list[dict[str, Any]]] = {}
    for name, items in plots.items():
        for item in items:
            if item.get("type") == "vega":
                target = out_dir / f"{_slug(name)}.png"
                with atomic_path(target) as tmp:
                    spec = whole_epoch_ticks(item["content"])
                    tmp.write_bytes(vl_convert.vegalite_to_png(vl_spec=spec, scale=1.5))
                written.append((name, target))
            elif item.get("type") == "image":
                pictures.setdefault(str(Path(name).parent), []).append(item)
    for folder, items in pictures.items():
        for revision, item in _newest_per_revision(items).items():
            target = out_dir / f"{_slug(folder)}-{_slug(revision)}.png"
            with atomic_path(target) as tmp:
                shutil.copyfile(item["url"], tmp)
            written.append((f"{Path(folder).name} at epoch {_epoch(item['url'])} ({revision})", target))
    return written


def whole_epoch_ticks(spec: Any) -> Any:
    """The spec with every quantitative ``epoch`` axis ticked at whole epochs (Vega-Lite would put
    ticks at 1.5, 2.5 on a short run)."""
    if isinstance(spec, list):
        return [whole_epoch_ticks(item) for item in spec]
    if not isinstance(spec, dict):
        return spec
    spec = {key: whole_epoch_ticks(value) for key, value in spec.items()}
    if spec.get("field") == "epoch" and spec.get("type") == "quantitative":
        spec["axis"] = {**spec.get("axis", {}), "tickMinStep": 1, "format": "d"}
    return spec


def _newest_per_revision(images: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    newest: dict[str, dict[str, Any]] = {}
    for item in images:
        revision = (item.get("revisions") or ["workspace"])[0]
        if revision not in newest or _epoch(item["url"]) > _epoch(newest[revision]["url"]):
            newest[revision] = item
    return newest


def _epoch(url: str) -> int:
    match = re.search(r"(\d+)\.png$", url)
    return int(match.group(1)) if match else -1


def _plots_json(rev: str) -> dict[str, list[dict[str, Any]]]:
    output = _dvc("plots", "diff", rev, "--json")
    try:
        return json.loads(output).get("data", {})
    except json.JSONDecodeError as err:
        raise PipelineError(f"`dvc plots diff {rev} --json` did not return JSON: {output[:200]}") from err


def _dvc(*args: str) -> str:
    # Arguments as a list, never a shell string: the revision comes from the user.
    command = [sys.executable, "-m", "dvc", *args]
    result = subprocess.run(command, capture_output=True, text=True, check=False, env=tool_environment())
    if result.returncode != 0:
        raise PipelineError(f"`dvc {' '.join(args)}` failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
