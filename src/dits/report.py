"""Plots (matplotlib) and a static HTML report of one run or of several runs side by side.

Reads only run-directory artefacts: ``manifest.json`` (stage summaries), ``eval/*.json`` and
``iter_K/influence.jsonl``. Images are embedded in the HTML, so the report is one self-contained file.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dits.errors import DitsError
from dits.store import JsonlLog, read_manifest
from dits.utils import pearson, spearman, write_atomic


@dataclass
class RunData:
    """What the report needs from one run directory."""

    name: str
    method: str
    stages: dict[str, dict[str, Any]]
    evals: dict[str, dict[str, Any]]
    influence: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def load_run(run_dir: Path) -> RunData:
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        raise DitsError(f"{run_dir} is not a run directory (no manifest.json)")
    manifest = read_manifest(manifest_path)
    config = (
        (run_dir / "config.yaml").read_text(errors="replace") if (run_dir / "config.yaml").exists() else ""
    )
    method = next(
        (line.split(":", 1)[1].strip() for line in config.splitlines() if line.startswith("method:")), "?"
    )
    evals = {}
    for key, stage in manifest["stages"].items():
        if key.startswith("eval/") and stage.get("status") == "done":
            evals[key.removeprefix("eval/")] = stage["summary"]
    influence = {
        path.parent.name: JsonlLog(path).read() for path in sorted(run_dir.glob("iter_*/influence.jsonl"))
    }
    return RunData(run_dir.name, method, manifest["stages"], evals, influence)


def find_runs(path: Path) -> list[Path]:
    """``path`` itself if it is a run, else the runs directly inside it (e.g. a demo folder)."""
    if (path / "manifest.json").exists():
        return [path]
    runs = sorted(p for p in path.iterdir() if (p / "manifest.json").exists()) if path.is_dir() else []
    if not runs:
        raise DitsError(f"{path} holds no run (no manifest.json in it or in its sub-folders)")
    return runs


def eval_order(label: str) -> tuple[int, str]:
    return (
        (-1, label)
        if label == "base"
        else (int(label.split("_")[-1]) if label.split("_")[-1].isdigit() else 99, label)
    )


def _figure_html(fig: Any) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return f'<img src="data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}">'


def plot_scores(runs: Sequence[RunData], metric: str, ylabel: str) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for data in runs:
        labels = sorted(data.evals, key=eval_order)
        ax.plot(
            labels,
            [data.evals[label][metric] for label in labels],
            marker="o",
            label=f"{data.name} ({data.method})",
        )
    ax.set_xlabel("model after")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _figure_html(fig)


def plot_influence_vs_q(runs: Sequence[RunData]) -> tuple[str, list[dict[str, Any]]]:
    """Scatter of group influence against the group's mean chosen Q, with correlations per iteration."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    stats = []
    for data in runs:
        for iteration, groups in data.influence.items():
            q = [g["q_mean"] for g in groups]
            infl = [g["influence"] for g in groups]
            ax.scatter(q, infl, s=12, alpha=0.7, label=f"{data.name} {iteration}")
            stats.append(
                {
                    "run": data.name,
                    "iteration": iteration,
                    "groups": len(groups),
                    "pearson": pearson(q, infl),
                    "spearman": spearman(q, infl),
                }
            )
    ax.set_xlabel("mean chosen Q of the group")
    ax.set_ylabel("influence (metric change)")
    ax.grid(alpha=0.3)
    if stats:
        ax.legend(fontsize=8)
    return _figure_html(fig), stats


def plot_influence_distribution(runs: Sequence[RunData]) -> str:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    series = [
        (f"{d.name}\n{it}", [g["influence"] for g in groups])
        for d in runs
        for it, groups in d.influence.items()
    ]
    if series:
        ax.boxplot([values for _, values in series], showmeans=True)
        ax.set_xticks(range(1, len(series) + 1), [label for label, _ in series], fontsize=8)
    ax.set_ylabel("influence")
    ax.grid(alpha=0.3)
    return _figure_html(fig)


def _table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(value: Any) -> str:
        if isinstance(value, float):
            return "—" if math.isnan(value) else f"{value:.3f}"
        return html.escape(str(value))

    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def stage_rows(runs: Sequence[RunData]) -> list[list[Any]]:
    rows = []
    for data in runs:
        for key, stage in data.stages.items():
            summary = stage.get("summary", {})
            rows.append(
                [
                    data.name,
                    key,
                    stage.get("status"),
                    summary.get("wall_time", ""),
                    summary.get("tokens_generated", ""),
                    summary.get("peak_rss_mb", ""),
                ]
            )
    return rows


CSS = (
    "body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
    "table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}"
    "img{margin:0.5em}h2{border-bottom:1px solid #ddd}"
)


def build_report(path: Path, out: Path | None = None) -> Path:
    """Write ``report.html`` for the run(s) at ``path``; returns the file written."""
    runs = [load_run(p) for p in find_runs(path)]
    out = out or path / "report.html"
    score_rows = [
        [d.name, d.method, label, e["score"], e["mean_tokens"], e["n"], e.get("wall_time", 0.0)]
        for d in runs
        for label, e in sorted(d.evals.items(), key=lambda kv: eval_order(kv[0]))
    ]
    scatter, correlations = plot_influence_vs_q(runs)
    parts = [
        f"<h1>dits report: {html.escape(str(path))}</h1>",
        "<h2>Test score per iteration</h2>",
        _table(["run", "method", "model after", "score", "mean tokens", "n", "eval wall s"], score_rows),
        plot_scores(runs, "score", "test score"),
        plot_scores(runs, "mean_tokens", "mean tokens per dialogue"),
    ]
    if correlations:
        parts += [
            "<h2>Influence vs Q</h2>",
            "<p>Each point is one candidate group of preference pairs: its influence (change of the validation "
            "metric after one update on it) against the mean Q of its chosen answers. DITS's claim: Q says "
            "little about influence (|r| &lt; 0.2).</p>",
            scatter,
            _table(
                ["run", "iteration", "groups", "Pearson", "Spearman"],
                [[c["run"], c["iteration"], c["groups"], c["pearson"], c["spearman"]] for c in correlations],
            ),
            "<h2>Influence distribution per iteration</h2>",
            plot_influence_distribution(runs),
        ]
    parts += [
        "<h2>Stages</h2>",
        _table(["run", "stage", "status", "wall s", "tokens generated", "peak RSS MB"], stage_rows(runs)),
    ]
    write_atomic(
        out,
        f"<!doctype html><html><head><meta charset='utf-8'><title>dits report</title>"
        f"<style>{CSS}</style></head><body>{''.join(parts)}</body></html>",
    )
    return out
