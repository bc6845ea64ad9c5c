"""`adfm-eval scores`: score-based models (the screening gate, or any scorer that writes per-image scores).

    adfm-eval scores SCORES.{csv,jsonl} [--split test.jsonl] --out DIR [--threshold 0.5]

The paper's CLIP-baseline protocol: AUROC, F1-max, accuracy at a fixed threshold and at the
Youden-J threshold (the ROC point maximising TPR − FPR, chosen on the evaluated scores
themselves, as that protocol does), overall and per dataset and category.

The scores file has one row per image: `score` (higher = more anomalous) and `sample_id` (or
`id`) or `image` (or `path`). Labels come from the split manifest when `--split` is given (rows are
matched by sample id, else by image path), otherwise from the file's `label` column (normal/good/0/
false or anomalous/anomaly/defect/bad/1/true), with optional `dataset` and `category` columns.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..data.records import iter_manifest
from . import metrics
from .report import (
    PLOT_CONFUSION,
    PLOT_ROC,
    RESULTS_JSON,
    RESULTS_MD,
    new_figure,
    num,
    pct,
    plot_confusion,
    table,
    write_json,
    write_text,
)

_NORMAL = {"normal", "good", "ok", "0", "false", "no"}
_ANOMALOUS = {"anomalous", "anomaly", "abnormal", "defect", "defective", "bad", "ng", "1", "true", "yes"}
_ID_KEYS = ("sample_id", "id")
_IMAGE_KEYS = ("image", "path")


class ScoresError(ValueError):
    """A scores file or split that cannot be used; the message names the file, line and value."""


@dataclass(frozen=True)
class Scored:
    """One image's score and ground truth."""

    key: str
    score: float
    anomalous: bool
    dataset: str
    category: str


def _rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) of a CSV (with a header) or JSONL file."""
    if not path.is_file():
        raise ScoresError(f"scores file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ScoresError(f"{path}: not readable as UTF-8 text ({exc})") from exc
    if path.suffix.lower() in (".jsonl", ".json") or text.lstrip().startswith("{"):
        rows = []
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ScoresError(f"{path}:{lineno}: not a JSON object ({exc})") from exc
            if not isinstance(row, dict):
                raise ScoresError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
            rows.append((lineno, row))
        return rows
    reader = csv.DictReader(text.splitlines())
    if not reader.fieldnames or "score" not in reader.fieldnames:
        raise ScoresError(f"{path}: the CSV header must name a 'score' column (got {reader.fieldnames})")
    return [(i + 2, dict(row)) for i, row in enumerate(reader)]


def _score(path: Path, lineno: int, row: dict[str, Any]) -> float:
    raw = row.get("score")
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ScoresError(f"{path}:{lineno}: score {raw!r} is not a number") from None
    if not math.isfinite(value):
        raise ScoresError(f"{path}:{lineno}: score {raw!r} is not finite")
    return value


def _label(path: Path, lineno: int, raw: Any) -> bool:
    text = str(raw).strip().lower()
    if text in _NORMAL:
        return False
    if text in _ANOMALOUS:
        return True
    raise ScoresError(f"{path}:{lineno}: label {raw!r} is neither normal nor anomalous")


def _first(row: dict[str, Any], keys: Sequence[str]) -> str | None:
    for k in keys:
        v = row.get(k)
        if v not in (None, ""):
            return str(v)
    return None


def read_scores(path: str | Path, split: str | Path | None = None) -> tuple[list[Scored], list[str]]:
    """Scored images with their labels, and notes (split samples without a score)."""
    path = Path(path)
    rows = _rows(path)
    if not rows:
        raise ScoresError(f"{path}: no scores")
    out: list[Scored] = []
    notes: list[str] = []
    if split is not None:
        try:
            samples = list(iter_manifest(split))
        except (FileNotFoundError, ValueError) as exc:
            raise ScoresError(str(exc)) from exc
        by_id = {s.id: s for s in samples}
        by_image = {str(Path(s.image).resolve()): s for s in samples}
        seen: set[str] = set()
        for lineno, row in rows:
            sid, image = _first(row, _ID_KEYS), _first(row, _IMAGE_KEYS)
            sample = by_id.get(sid) if sid else None
            if sample is None and image:
                sample = by_image.get(str(Path(image).resolve()))
            if sample is None:
                raise ScoresError(f"{path}:{lineno}: {sid or image!r} is not a sample of {split}")
            if sample.id in seen:
                raise ScoresError(f"{path}:{lineno}: {sample.id!r} is scored twice")
            seen.add(sample.id)
            out.append(Scored(sample.id, _score(path, lineno, row), sample.anomalous, sample.dataset, sample.category))
        missing = [s.id for s in samples if s.id not in seen]
        if missing:
            notes.append(f"{len(missing)} samples of {split} have no score (e.g. {', '.join(missing[:3])})")
        return out, notes
    for lineno, row in rows:
        key = _first(row, _ID_KEYS) or _first(row, _IMAGE_KEYS)
        if key is None:
            raise ScoresError(f"{path}:{lineno}: no sample_id/id or image/path column")
        value = _score(path, lineno, row)
        if row.get("label") in (None, ""):
            raise ScoresError(f"{path}:{lineno}: no label; give the split manifest with --split")
        out.append(Scored(key, value, _label(path, lineno, row["label"]),
                          str(row.get("dataset") or "all"), str(row.get("category") or "all")))
    return out, notes


def group_metrics(items: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """AUROC, F1-max, and accuracy at the fixed and the Youden-J threshold for one group of images."""
    labels = np.array([s.anomalous for s in items], dtype=bool)
    scores = np.array([s.score for s in items], dtype=np.float64)
    n_anomalous = int(labels.sum())
    out: dict[str, Any] = {"n": len(items), "n_normal": len(items) - n_anomalous, "n_anomalous": n_anomalous}
    out.update(metrics.score_report(labels, scores, threshold))
    return out


def evaluate_scores(items: Sequence[Scored], threshold: float) -> dict[str, Any]:
    """Overall, per dataset and per dataset/category; the average over datasets of the main figures."""
    datasets: dict[str, list[Scored]] = defaultdict(list)
    categories: dict[str, dict[str, list[Scored]]] = defaultdict(lambda: defaultdict(list))
    for s in items:
        datasets[s.dataset].append(s)
        categories[s.dataset][s.category].append(s)
    per_dataset = {
        d: {**group_metrics(datasets[d], threshold),
            "categories": {c: group_metrics(categories[d][c], threshold) for c in sorted(categories[d])}}
        for d in sorted(datasets)
    }
    keys = ("auroc", "f1_max", "accuracy_at_threshold", "accuracy_at_youden")
    average = {}
    for k in keys:
        vals = [v[k] for v in per_dataset.values() if v.get(k) is not None]
        average[k] = sum(vals) / len(vals) if vals else None
    return {"overall": group_metrics(items, threshold), "datasets": per_dataset, "average_over_datasets": average}


_HEADER = ("dataset", "n", "AUROC", "F1-max", "acc @ fixed", "Youden-J thr", "acc @ Youden", "balanced @ Youden")


def _row(name: str, m: dict[str, Any]) -> list[str]:
    return [name, str(m["n"]), pct(m.get("auroc")), pct(m.get("f1_max")), pct(m.get("accuracy_at_threshold")),
            num(m.get("youden_threshold"), 4), pct(m.get("accuracy_at_youden")),
            pct(m.get("balanced_accuracy_at_youden"))]


def scores_markdown(results: dict[str, Any]) -> str:
    ev = results["metrics"]
    avg = ev["average_over_datasets"]
    rows = [_row(d, m) for d, m in ev["datasets"].items()]
    rows.append(["**average over datasets**", "", pct(avg["auroc"]), pct(avg["f1_max"]),
                 pct(avg["accuracy_at_threshold"]), "", pct(avg["accuracy_at_youden"]), ""])
    rows.append(_row("all images (pooled)", ev["overall"]))
    parts = [
        f"# adfm-eval scores: {results['scores']}",
        f"- {ev['overall']['n']} images; fixed threshold {results['threshold']}; the Youden-J threshold is "
        "chosen on these scores (the CLIP-baseline protocol)",
        table(_HEADER, rows),
    ]
    for d, m in ev["datasets"].items():
        parts += [f"## {d}: per category", table(("category", *_HEADER[1:]),
                                                 [_row(c, cm) for c, cm in m["categories"].items()])]
    if results.get("notes"):
        parts.append("## Notes\n\n" + "\n".join(f"- {n}" for n in results["notes"]))
    return "\n\n".join(parts) + "\n"


def plot_roc(items: Sequence[Scored], results: dict[str, Any], path: Path) -> Path:
    """ROC curve of every dataset and of all images, with the Youden-J point."""
    fig = new_figure(6, 5)
    ax = fig.add_subplot()
    groups: dict[str, list[Scored]] = defaultdict(list)
    for s in items:
        groups[s.dataset].append(s)
    if len(groups) > 1:
        groups["all images"] = list(items)
    for name, group in groups.items():
        labels = np.array([s.anomalous for s in group], dtype=bool)
        if labels.all() or not labels.any():
            continue
        fpr, tpr, _ = metrics.roc_points(labels, np.array([s.score for s in group]))
        m = results["metrics"]["overall"] if name == "all images" or len(groups) == 1 else \
            results["metrics"]["datasets"][name]
        ax.plot(fpr, tpr, label=f"{name} (AUROC {pct(m.get('auroc'))})")
        if m.get("youden_fpr") is not None:
            ax.plot([m["youden_fpr"]], [m["youden_tpr"]], "o", color="black")
    ax.plot([0, 1], [0, 1], ":", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title("ROC (dot: Youden-J threshold)")
    ax.legend(loc="lower right", fontsize="small")
    fig.savefig(path)
    return path


def run(scores_path: Path, split: Path | None, out: Path, threshold: float, plots: bool = True) -> dict[str, Any]:
    """Read, score, and write results.json, results.md and the plots into `out`."""
    items, notes = read_scores(scores_path, split)
    results: dict[str, Any] = {
        "kind": "adfm-eval-scores",
        "scores": str(scores_path),
        "split": str(split) if split else None,
        "threshold": threshold,
        "metrics": evaluate_scores(items, threshold),
        "notes": notes,
    }
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}
    if plots:
        written["roc_plot"] = str(plot_roc(items, results, out / PLOT_ROC))
        o = results["metrics"]["overall"]
        if o.get("confusion_at_youden"):
            c = o["confusion_at_youden"]
            written["confusion_plot"] = str(plot_confusion(
                [[c["tn"], c["fp"]], [c["fn"], c["tp"]]], ("normal", "anomalous"), ("normal", "anomalous"),
                f"At the Youden-J threshold {o['youden_threshold']:.4g}", out / PLOT_CONFUSION))
    written["markdown"] = str(write_text(out / RESULTS_MD, scores_markdown(results)))
    written["json"] = str(out / RESULTS_JSON)
    results["outputs"] = written
    write_json(out / RESULTS_JSON, results)
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adfm-eval scores", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("scores", type=Path, help="per-image scores, CSV with a header or JSONL")
    p.add_argument("--split", type=Path, help="split manifest giving labels, datasets and categories")
    p.add_argument("--out", type=Path, required=True, help="output folder: results.json, results.md, plots")
    p.add_argument("--threshold", type=float, default=0.5, help="the fixed decision threshold (default 0.5)")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if not math.isfinite(args.threshold):
        print(f"adfm-eval scores: --threshold must be finite, got {args.threshold}", file=sys.stderr)
        return 2
    try:
        results = run(args.scores, args.split, args.out, args.threshold, plots=args.plots)
    except ScoresError as exc:
        print(f"adfm-eval scores: {exc}", file=sys.stderr)
        return 2
    o = results["metrics"]["overall"]
    print(f"{o['n']} images: AUROC {pct(o.get('auroc'))}, F1-max {pct(o.get('f1_max'))}, "
          f"accuracy {pct(o.get('accuracy_at_threshold'))} at {args.threshold}, "
          f"{pct(o.get('accuracy_at_youden'))} at the Youden-J threshold {num(o.get('youden_threshold'), 4)}; "
          f"outputs in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
