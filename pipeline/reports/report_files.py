"""Writing a report's numbers (CSV, JSON, Markdown) and figures, and logging the folder
to MLflow."""

from __future__ import annotations

import csv
import json
import os


def write_csv(path: str, rows: list[dict]) -> None:
    """`rows` (dicts with the same keys) as a CSV file with a header."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_json(path: str, data) -> None:
    """`data` as indented JSON (numpy floats written as floats)."""
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=float)


def write_markdown_table(path: str, rows: list[dict], floats: str = "{:.3f}") -> None:
    """`rows` as a Markdown table, floats formatted with `floats`."""
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        cells = [floats.format(v) if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def log_to_run(folder: str, tracking_uri: str, run_id: str | None, name: str) -> bool:
    """Logs the report folder as artifacts `reports/<name>` of the model's MLflow run."""
    if not run_id:
        return False
    from trainer.tracking import log_report_artifacts

    return log_report_artifacts(tracking_uri, run_id, folder, f"reports/{name}")


def report_dir(base: str, name: str) -> str:
    """`<base>/<name>/`, created if missing."""
    folder = os.path.join(base, name)
    os.makedirs(folder, exist_ok=True)
    return folder


def log_metrics_to_run(tracking_uri: str, run_id: str | None, metrics: dict[str, float]) -> bool:
    """Adds metrics (such as BLEU) to the model's finished MLflow run."""
    if not run_id:
        return False
    from trainer.tracking import log_run_metrics

    return log_run_metrics(tracking_uri, run_id, metrics)


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def label_axes(ax, xlabel: str, ylabel: str, title: str, legend: bool = True) -> None:
    """Axis labels, title, a light grid and (optionally) the legend of a report plot."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend()
    ax.grid(alpha=0.3)


def save_figure(fig, path: str, **savefig_args) -> None:
    """Lays out, writes and closes a figure."""
    fig.tight_layout()
    fig.savefig(path, **savefig_args)
    pyplot().close(fig)
