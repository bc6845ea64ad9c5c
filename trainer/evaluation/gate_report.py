"""`adfm-eval gate`: how well the screening gate alone separates good parts from defective ones.

    adfm-eval gate --model gate.onnx --data ROOT_OR_SPLIT [--json] [--out report.json]

Scores every image of `--data` (a split manifest, the generic `ROOT/normal` + `ROOT/anomalous`
layout, or any layout `adfm-data` reads) through the exported graph with ONNX Runtime, exactly as
the line does, and reports image AUROC, F1-max, recall at the gate's calibrated threshold and the
fraction of parts it would send to the VLM (`vlm_fraction`; in `screen` mode the rest pass on
the gate's word), plus accuracy at that threshold and at the Youden-J threshold. Images the gate
was fitted on and images that set its threshold (matched by the sha256 its metadata records, so
copies elsewhere count too) are left out unless `--include-training`, and the report says how
many: a recall measured on the images that chose the threshold only repeats the target.
Unreadable images are listed, not scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

PROG = "adfm-eval gate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, required=True, help="the gate's .onnx (its .json metadata beside it)")
    p.add_argument("--data", type=Path, required=True, help="split manifest (.jsonl) or dataset root")
    p.add_argument("--layout", help="force the dataset layout (default: detected)")
    p.add_argument("--category", dest="categories", action="append", default=[], metavar="NAME",
                   help="only this category (repeatable)")
    p.add_argument("--include-training", action="store_true",
                   help="also score the images the gate was fitted on")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument("--out", type=Path, help="also write the JSON report to this file")
    p.add_argument("--batch-size", type=int, default=16, help="images per ONNX Runtime run (default 16)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads (default: all cores)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    return p


def _hash_list(meta, key: str) -> set[str] | None:
    """The sha256 list `training[key]` of the metadata, or None when the gate predates it."""
    values = meta.training.get(key)
    if values is None:
        return None
    if not isinstance(values, list) or not all(isinstance(v, str) and len(v) == 64 for v in values):
        raise ValueError(f"gate metadata training.{key}: expected a list of sha256 hex digests")
    return set(values)


def _paths_fitted_on(model: Path, meta) -> tuple[set[str], str | None]:
    """Absolute paths of the images an older gate (no hashes) was fitted on, and a note if unknown."""
    from ..data.records import read_manifest

    name = meta.training.get("train_manifest")
    if not name:
        return set(), "the gate's metadata names no training manifest: training images cannot be left out"
    try:
        return {str(Path(s.image).resolve()) for s in read_manifest(model.parent / name)}, None
    except (FileNotFoundError, ValueError) as exc:
        return set(), f"training images cannot be left out: {exc}"


def leave_out_gate_images(model: Path, meta, samples: list) -> tuple[list, int, int, list[str]]:
    """(samples kept, n fitted on, n calibrated on, notes): drops every image the gate was fitted or
    calibrated on, matched by content hash (by path for a gate whose metadata has no hashes)."""
    from adfm.manifest import sha256_file

    fit, calibration = _hash_list(meta, "fit_images"), _hash_list(meta, "calibration_images")
    if fit is None:
        paths, note = _paths_fitted_on(model, meta)
        kept = [s for s in samples if str(Path(s.image).resolve()) not in paths]
        notes = [note] if note else []
        notes.append("the gate's metadata records no calibration images (trained by an older adfm): "
                     "figures may include the images that set its threshold")
        return kept, len(samples) - len(kept), 0, notes
    kept, n_fit, n_cal = [], 0, 0
    for s in samples:
        try:
            digest = sha256_file(s.image)
        except OSError:
            kept.append(s)  # reported as unreadable when scored
            continue
        if digest in fit:
            n_fit += 1
        elif digest in calibration:
            n_cal += 1
        else:
            kept.append(s)
    return kept, n_fit, n_cal, []


def evaluate_gate(
    model: Path,
    data: Path,
    layout: str | None = None,
    categories: Sequence[str] = (),
    include_training: bool = False,
    batch_size: int = 16,
    threads: int | None = None,
    progress: bool = False,
) -> dict[str, Any]:
    """The report as a dict (see the module docstring); raises GateError / GateConfigError."""
    from tqdm import tqdm

    from adfm.runtime.gate import Gate

    from ..gate.data import load_images, read_samples
    from .metrics import flag_rate, score_report

    gate = Gate.load(model, threads=threads)
    samples, notes = read_samples(data, layout, categories)
    n_fit = n_cal = 0
    if not include_training:
        samples, n_fit, n_cal, more = leave_out_gate_images(model, gate.metadata, samples)
        notes += more
    scored: list[tuple[Any, float]] = []
    unreadable: list[str] = []
    gate_s = 0.0
    pending: list[tuple[Any, np.ndarray]] = []

    def flush() -> None:
        nonlocal gate_s
        t0 = time.perf_counter()
        results = gate.score_batch([im for _, im in pending])
        gate_s += time.perf_counter() - t0
        scored.extend((s, r.score) for (s, _), r in zip(pending, results, strict=True))
        pending.clear()

    for item in tqdm(load_images(samples), total=len(samples), desc="scoring", unit="img", disable=not progress):
        if item.image is None:
            unreadable.append(item.error)
            continue
        pending.append((item.sample, item.image))
        if len(pending) >= batch_size:
            flush()
    if pending:
        flush()
    if not scored:
        raise ValueError(f"--data {data}: no image left to score ({_excluded_text(n_fit, n_cal)}; "
                         "--include-training scores them anyway, flattering the gate)")
    labels = np.array([s.anomalous for s, _ in scored], dtype=bool)
    scores = np.array([v for _, v in scored], dtype=np.float64)
    t = gate.threshold
    report = score_report(labels, scores, t)
    normal, anomalous = scores[~labels], scores[labels]
    per_category: dict[str, dict[str, Any]] = {}
    for cat in sorted({s.category for s, _ in scored}):
        sel = np.array([s.category == cat for s, _ in scored])
        per_category[cat] = {"n": int(sel.sum()), "n_anomalous": int(labels[sel].sum()),
                             **{k: v for k, v in score_report(labels[sel], scores[sel], t).items()
                                if k in ("auroc", "f1_max", "recall_at_threshold", "accuracy_at_threshold")},
                             "vlm_fraction": flag_rate(scores[sel], t)}
    return {
        "kind": "adfm-eval-gate",
        "model": str(model),
        "model_id": gate.model_id,
        "data": str(data),
        "n": int(scores.size),
        "n_normal": int(normal.size),
        "n_anomalous": int(anomalous.size),
        "auroc": report["auroc"],
        "f1_max": report["f1_max"],
        "recall_at_threshold": report["recall_at_threshold"],
        "vlm_fraction": flag_rate(scores, t),
        "normal_vlm_fraction": flag_rate(normal, t) if normal.size else None,
        **{k: v for k, v in report.items() if k not in ("auroc", "f1_max", "recall_at_threshold")},
        "calibration": gate.metadata.calibration.model_dump(),
        "ms_per_image": 1000.0 * gate_s / scores.size,
        "categories": per_category,
        "excluded_training_images": n_fit + n_cal,
        "excluded_fit_images": n_fit,
        "excluded_calibration_images": n_cal,
        "unreadable": unreadable,
        "notes": notes,
    }


def _excluded_text(n_fit: int, n_cal: int) -> str:
    return f"left out {n_fit} images the gate was fitted on and {n_cal} that set its threshold"


def _fmt(v: float | None, pct: bool = True) -> str:
    if v is None:
        return "n/a"
    return f"{100 * v:.1f}%" if pct else f"{v:.4g}"


def text_report(r: dict[str, Any]) -> str:
    lines = [
        f"gate {r['model_id']} on {r['data']}: {r['n']} images ({r['n_normal']} normal, {r['n_anomalous']} anomalous)",
        f"  AUROC {_fmt(r['auroc'])}   F1-max {_fmt(r['f1_max'])}",
        f"  at the calibrated threshold {_fmt(r['threshold'], False)}: recall {_fmt(r['recall_at_threshold'])}, "
        f"sent to the VLM {_fmt(r['vlm_fraction'])} of all parts "
        f"({_fmt(r['normal_vlm_fraction'])} of normal parts), accuracy {_fmt(r['accuracy_at_threshold'])}",
        f"  at the Youden-J threshold {_fmt(r['youden_threshold'], False)}: accuracy {_fmt(r['accuracy_at_youden'])}",
        f"  {r['ms_per_image']:.1f} ms per image (ONNX Runtime, batches, this machine)",
    ]
    if len(r["categories"]) > 1:
        for cat, m in r["categories"].items():
            lines.append(f"  {cat}: n {m['n']}, AUROC {_fmt(m['auroc'])}, recall {_fmt(m['recall_at_threshold'])}, "
                         f"to the VLM {_fmt(m['vlm_fraction'])}")
    lines.append(f"  {_excluded_text(r['excluded_fit_images'], r['excluded_calibration_images'])}")
    lines += [f"  unreadable: {u}" for u in r["unreadable"]]
    lines += [f"  note: {n}" for n in r["notes"]]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from adfm.runtime.gate import GateError

    from ..gate.config import GateConfigError

    if args.batch_size < 1:
        print(f"{PROG}: --batch-size must be ≥ 1, got {args.batch_size}", file=sys.stderr)
        return 2
    try:
        report = evaluate_gate(args.model, args.data, args.layout, args.categories, args.include_training,
                               args.batch_size, args.threads, progress=not args.quiet)
    except (GateError, GateConfigError, ValueError, OSError) as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(json.dumps(report, indent=2) if args.json else text_report(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
