"""Evaluation outputs: results JSON, a markdown table, PNG plots — written atomically into the run folder.

The JSON holds every number; the markdown lays them out as the paper's tables (datasets as rows,
the average over datasets last; per-category tables below; MMAD sources × subtasks); the plots show
per-category accuracy and the confusion matrix (and, for score-based models, the ROC curve).
Plots use matplotlib's object API (`Figure`), so no display and no global pyplot state are needed.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adfm.files import write_atomic

if TYPE_CHECKING:
    from matplotlib.figure import Figure

RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
PLOT_CATEGORIES = "per_category_accuracy.png"
PLOT_CONFUSION = "confusion_matrix.png"
PLOT_MMAD = "mmad_subtasks.png"
PLOT_ROC = "roc.png"


def write_text(path: Path, text: str) -> Path:
    """Write through a temporary file and rename, so a reader never sees half a file."""
    return write_atomic(path, text)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    return write_text(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def pct(value: float | None) -> str:
    """A rate as a percentage with one decimal; '—' when it cannot be measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{100 * value:.1f}"


def num(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return f"{value:.{digits}f}"


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# ---- VLM ---------------------------------------------------------------------------------------

_MAIN_HEADER = ("dataset", "n", "accuracy", "balanced acc", "precision", "recall", "F1", "parse fail",
                "mean GIoU", "box recall@0.5")


def _main_row(name: str, m: dict[str, Any]) -> list[str]:
    loc = m.get("localization", {})
    return [name, str(m["n"]), pct(m["accuracy"]), pct(m["balanced_accuracy"]), pct(m["precision"]),
            pct(m["recall"]), pct(m["f1"]), pct(m["parse_failure_rate"]), num(loc.get("mean_giou")),
            pct(loc.get("box_recall_at_50"))]


def inspection_markdown(ins: dict[str, Any]) -> str:
    rows = [_main_row(name, m) for name, m in ins["datasets"].items()]
    avg = ins["average_over_datasets"]
    rows.append(["**average over datasets**", "", pct(avg["accuracy"]), pct(avg["balanced_accuracy"]),
                 pct(avg["precision"]), pct(avg["recall"]), pct(avg["f1"]), pct(avg["parse_failure_rate"]),
                 num(avg["mean_giou"]), pct(avg["box_recall_at_50"])])
    rows.append(_main_row("all images (pooled)", ins["overall"]))
    parts = [
        "## Anomaly classification and localization (inspection prompt)",
        "Percentages. An unread answer counts as wrong; localization is against the pseudo-boxes.",
        table(_MAIN_HEADER, rows),
    ]
    for name, m in ins["datasets"].items():
        cat_rows = [
            [c, str(cm["n"]), pct(cm["accuracy"]), pct(cm["balanced_accuracy"]), pct(cm["f1"]),
             pct(cm["parse_failure_rate"]), num(cm["localization"]["mean_giou"]),
             pct(cm["localization"]["box_recall_at_50"])]
            for c, cm in m["categories"].items()
        ]
        parts += [f"### {name}: per category",
                  table(("category", "n", "accuracy", "balanced acc", "F1", "parse fail", "mean GIoU",
                         "box recall@0.5"), cat_rows)]
    stage_rows = []
    for label, key in (("shown (rethink first; what the line shows)", "localization"),
                       ("<think> proposals (what the reward trains)", "localization_think"),
                       ("<rethink> list", "localization_rethink")):
        loc = ins["overall"].get(key)
        if loc:
            stage_rows.append([label, str(loc["pred_boxes"]), num(loc["mean_giou"]), pct(loc["box_recall_at_50"]),
                               pct(loc["box_precision_at_50"]), pct(loc["normal_with_boxes_rate"])])
    parts += ["### Localization by stage (all images)",
              table(("boxes", "predicted", "mean GIoU", "box recall@0.5", "box precision@0.5",
                     "normals with boxes"), stage_rows)]
    c = ins["overall"]["confusion"]
    parts += ["### Confusion (all images)",
              table(("true \\ answer", "no (normal)", "yes (anomalous)", "unread"),
                    [["normal", c["tn"], c["fp"], c["unread_normal"]],
                     ["anomalous", c["fn"], c["tp"], c["unread_anomalous"]]])]
    return "\n\n".join(parts)


def mmad_markdown(mm: dict[str, Any]) -> str:
    subtasks = mm["subtasks"]
    rows = []
    for src, row in mm["by_source"].items():
        rows.append([src, *[pct(row["subtasks"].get(t, {}).get("score")) for t in subtasks], pct(row["average"])])
    avg = mm["average_over_sources"]
    rows.append(["**Average**", *[pct(avg.get(t)) for t in subtasks], pct(avg.get("Average"))])
    pooled = [[t, str(p["n"]), str(p["correct"]), pct(p["score"]), str(p["unread"]), str(p["read_by_option_text"])]
              for t, p in mm["pooled"].items()]
    return "\n\n".join([
        "## MMAD multiple-choice subtasks",
        "Percentages; Anomaly Detection is balanced accuracy (normal acc + anomalous acc) / 2, the others "
        "accuracy. Answers read as MMAD reads them (last standalone A–E letter, else the closest option text).",
        table(("source", *subtasks, "Average"), rows),
        "### Pooled over sources",
        table(("subtask", "questions", "correct", "score", "unread", "read by option text"), pooled),
    ])


def vlm_markdown(results: dict[str, Any]) -> str:
    model = results["model"]
    run = results["run"]
    answers = results.get("answers", {})
    decoding = "greedy" if run["temperature"] == 0 else (
        f"sampled, temperature {run['temperature']}, top-p {run['top_p']}, seed {run['seed']}")
    head = [
        f"# adfm-eval: {model['model_id']}",
        f"- split: `{results['split']}` ({results['samples']} samples)",
        f"- backend: {model['backend']} (`{model['path']}`"
        + (f" + adapter `{model['adapter']}`" if model.get("adapter") else "") + ")",
        f"- prompt version: {model['prompt_version']}; pixel budget {model['min_pixels']}..{model['max_pixels']}",
        f"- reference protocol: {run['reference']} ({answers.get('with_reference', 0)} answers with a normal "
        f"reference); decoding: {decoding}, at most {run['max_new_tokens']} new tokens",
        f"- answered {answers.get('answered', 0)} of {answers.get('items', 0)} items"
        f" ({answers.get('truncated', 0)} cut at the token limit)",
    ]
    parts = ["\n".join(head)]
    if "inspection" in results:
        parts.append(inspection_markdown(results["inspection"]))
    if results.get("mmad"):
        parts.append(mmad_markdown(results["mmad"]))
    if results.get("problems"):
        shown = results["problems"][:50]
        more = len(results["problems"]) - len(shown)
        parts.append("## Problems (items not answered)\n\n" + "\n".join(f"- {p}" for p in shown)
                     + (f"\n- … and {more} more (results.json lists all)" if more > 0 else ""))
    return "\n\n".join(parts) + "\n"


def new_figure(width: float, height: float) -> Figure:
    """A matplotlib figure made without pyplot: no display needed, no global state between runs."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def plot_category_accuracy(ins: dict[str, Any], path: Path) -> Path:
    """Horizontal bars: accuracy and balanced accuracy of every dataset/category."""
    labels, acc, bal = [], [], []
    for name, m in ins["datasets"].items():
        for c, cm in m["categories"].items():
            labels.append(f"{name}/{c}")
            acc.append(100 * (cm["accuracy"] or 0.0))
            bal.append(100 * (cm["balanced_accuracy"] or 0.0))
    fig = new_figure(8, max(2.5, 0.35 * len(labels) + 1.2))
    ax = fig.add_subplot()
    ys = list(range(len(labels)))
    ax.barh([y - 0.2 for y in ys], acc, height=0.4, label="accuracy")
    ax.barh([y + 0.2 for y in ys], bal, height=0.4, label="balanced accuracy")
    ax.set_yticks(ys, labels)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("%")
    ax.set_title("Per-category accuracy (inspection prompt)")
    ax.legend(loc="lower right")
    fig.savefig(path)
    return path


def plot_confusion(counts: list[list[int]], rows: Sequence[str], cols: Sequence[str], title: str, path: Path) -> Path:
    """An annotated count matrix (true label × answer)."""
    fig = new_figure(1.6 * len(cols) + 2, 1.2 * len(rows) + 1.5)
    ax = fig.add_subplot()
    ax.imshow(counts, cmap="Blues")
    ax.set_xticks(range(len(cols)), cols)
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel("answer")
    ax.set_ylabel("true label")
    peak = max((v for r in counts for v in r), default=0)
    for i, r in enumerate(counts):
        for j, v in enumerate(r):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if peak and v > peak / 2 else "black")
    ax.set_title(title)
    fig.savefig(path)
    return path


def plot_mmad(mm: dict[str, Any], path: Path) -> Path:
    subtasks = mm["subtasks"]
    avg = mm["average_over_sources"]
    values = [100 * (avg.get(t) or 0.0) for t in subtasks]
    fig = new_figure(8, 0.4 * len(subtasks) + 1.5)
    ax = fig.add_subplot()
    ax.barh(range(len(subtasks)), values)
    ax.set_yticks(range(len(subtasks)), subtasks)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% (Anomaly Detection: balanced accuracy)")
    ax.set_title("MMAD subtasks, average over sources")
    fig.savefig(path)
    return path


def write_vlm_outputs(
    results: dict[str, Any], out_dir: Path, plots: bool = True, responses: Path | None = None
) -> dict[str, str]:
    """results.json, results.md and the plots; returns what was written, by kind."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {"responses": str(responses)} if responses else {}
    if plots:
        if "inspection" in results:
            ins = results["inspection"]
            written["per_category_plot"] = str(plot_category_accuracy(ins, out_dir / PLOT_CATEGORIES))
            c = ins["overall"]["confusion"]
            written["confusion_plot"] = str(plot_confusion(
                [[c["tn"], c["fp"], c["unread_normal"]], [c["fn"], c["tp"], c["unread_anomalous"]]],
                ("normal", "anomalous"), ("no", "yes", "unread"), "Inspection answers (all images)",
                out_dir / PLOT_CONFUSION,
            ))
        if results.get("mmad"):
            written["mmad_plot"] = str(plot_mmad(results["mmad"], out_dir / PLOT_MMAD))
    written["markdown"] = str(write_text(out_dir / RESULTS_MD, vlm_markdown(results)))
    written["json"] = str(out_dir / RESULTS_JSON)
    write_json(out_dir / RESULTS_JSON, {**results, "outputs": written})
    return written
