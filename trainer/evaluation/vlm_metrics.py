"""The paper's metrics, computed from stored answers and the split's ground truth (no model needed).

Binary inspection (the `inspect` prompt): each answer is read with `adfm.protocol.parse_response`
on the grid it was asked on. An unreadable answer (no yes/no) counts as wrong:
- accuracy = correct / answered; normal accuracy = TN / normals; anomalous accuracy = TP / anomalous;
- balanced accuracy = mean of the class accuracies of the classes present (MMAD's
  (normal acc + anomalous acc) / 2 when both are);
- precision = TP / (TP + FP) over answers that said yes; recall = TP / anomalous (an unread answer
  on a defective part is a miss); F1 from those two; parse-failure rate = unread / answered.
Datasets pool their images; the average over datasets is unweighted (Table 1 and 2 layout).

Localization, on anomalous samples whose pseudo-boxes are known: predicted boxes are matched to
ground-truth boxes with `adfm.geometry.match_boxes` (Hungarian on 1 − GIoU). Mean GIoU is over
matched pairs; box recall@0.5 = ground-truth boxes whose matched box has IoU ≥ 0.5 / all
ground-truth boxes; box precision@0.5 = such pairs / all predicted boxes.

Which boxes: `localization` scores the boxes the line shows (`ParsedResponse.boxes`: `<rethink>`'s
list when it has one, else `<think>`'s). `localization_think` scores the `<think>` proposals — the
`bbox_2d` objects the paper's reward trains (GIoU + count term). `localization_rethink` scores
`<rethink>`'s own list (none when it wrote no list; absent for one-stage prompts, which have no
`<rethink>`). A model can propose well in `<think>` and then confirm badly, or the reverse.

MMAD subtasks: see `mmad.py` for how answers are read and scored.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from adfm.geometry import ModelGrid, iou, match_boxes
from adfm.protocol import get_prompt_version, parse_response

from ..data.records import Sample
from .mmad import ANOMALY_DETECTION, SUBTASKS, MmadQuestion, mmad_questions, parse_choice
from .responses import INSPECT, ResponseRecord

#: IoU a matched box needs to count as found.
BOX_IOU_THRESHOLD = 0.5


def _ratio(num: float, den: float) -> float | None:
    return num / den if den else None


@dataclass
class BinaryCounts:
    """Confusion counts of yes/no answers; unread answers kept apart by true label."""

    tp: int = 0
    fp: int = 0
    tn: int = 0
    fn: int = 0
    unread_normal: int = 0
    unread_anomalous: int = 0
    format_ok: int = 0
    truncated: int = 0

    def add(self, anomalous: bool, decision: bool | None, format_ok: bool, finished: bool) -> None:
        if decision is None:
            if anomalous:
                self.unread_anomalous += 1
            else:
                self.unread_normal += 1
        elif anomalous:
            if decision:
                self.tp += 1
            else:
                self.fn += 1
        elif decision:
            self.fp += 1
        else:
            self.tn += 1
        self.format_ok += int(format_ok)
        self.truncated += int(not finished)

    @property
    def n_normal(self) -> int:
        return self.tn + self.fp + self.unread_normal

    @property
    def n_anomalous(self) -> int:
        return self.tp + self.fn + self.unread_anomalous

    @property
    def n(self) -> int:
        return self.n_normal + self.n_anomalous

    def summary(self) -> dict[str, Any]:
        normal_acc = _ratio(self.tn, self.n_normal)
        anomalous_acc = _ratio(self.tp, self.n_anomalous)
        present = [a for a in (normal_acc, anomalous_acc) if a is not None]
        precision = _ratio(self.tp, self.tp + self.fp)
        recall = anomalous_acc
        f1 = None
        if precision is not None and recall is not None:
            f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
        unread = self.unread_normal + self.unread_anomalous
        return {
            "n": self.n,
            "n_normal": self.n_normal,
            "n_anomalous": self.n_anomalous,
            "accuracy": _ratio(self.tp + self.tn, self.n),
            "balanced_accuracy": sum(present) / len(present) if present else None,
            "normal_accuracy": normal_acc,
            "anomalous_accuracy": anomalous_acc,
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "parse_failure_rate": _ratio(unread, self.n),
            "format_ok_rate": _ratio(self.format_ok, self.n),
            "truncated_rate": _ratio(self.truncated, self.n),
            "confusion": {
                "tp": self.tp, "fp": self.fp, "tn": self.tn, "fn": self.fn,
                "unread_normal": self.unread_normal, "unread_anomalous": self.unread_anomalous,
            },
        }


@dataclass
class LocalizationCounts:
    """Matched-box statistics against the pseudo-boxes."""

    gious: list[float] = field(default_factory=list)
    hits: int = 0
    n_gt: int = 0
    n_pred: int = 0
    samples: int = 0
    no_gt_boxes: int = 0
    normals: int = 0
    normals_with_boxes: int = 0

    def add_anomalous(self, pred: list[list[float]], gt: list[list[float]] | None) -> None:
        if not gt:
            self.no_gt_boxes += 1
            return
        self.samples += 1
        self.n_gt += len(gt)
        self.n_pred += len(pred)
        for p, g, score in match_boxes(pred, gt):
            self.gious.append(score)
            if float(iou([pred[p]], [gt[g]])[0, 0]) >= BOX_IOU_THRESHOLD:
                self.hits += 1

    def add_normal(self, pred: list[list[float]]) -> None:
        self.normals += 1
        self.normals_with_boxes += int(bool(pred))

    def summary(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "gt_boxes": self.n_gt,
            "pred_boxes": self.n_pred,
            "matched": len(self.gious),
            "mean_giou": sum(self.gious) / len(self.gious) if self.gious else None,
            "box_recall_at_50": _ratio(self.hits, self.n_gt),
            "box_precision_at_50": _ratio(self.hits, self.n_pred),
            "anomalous_without_gt_boxes": self.no_gt_boxes,
            "normal_with_boxes_rate": _ratio(self.normals_with_boxes, self.normals),
        }


@dataclass
class _Group:
    binary: BinaryCounts = field(default_factory=BinaryCounts)
    loc: LocalizationCounts = field(default_factory=LocalizationCounts)  # shown: rethink-first
    think: LocalizationCounts = field(default_factory=LocalizationCounts)  # <think> proposals (rewarded)
    rethink: LocalizationCounts = field(default_factory=LocalizationCounts)  # <rethink>'s own list
    has_rethink: bool = False

    def add(self, anomalous: bool, gt: list[list[float]] | None, shown: list[list[float]],
            think: list[list[float]], rethink: list[list[float]] | None) -> None:
        stages = [(self.loc, shown), (self.think, think)]
        if rethink is not None:
            self.has_rethink = True
            stages.append((self.rethink, rethink))
        for counts, boxes in stages:
            if anomalous:
                counts.add_anomalous(boxes, gt)
            else:
                counts.add_normal(boxes)

    def summary(self) -> dict[str, Any]:
        return {
            **self.binary.summary(),
            "localization": self.loc.summary(),
            "localization_think": self.think.summary(),
            "localization_rethink": self.rethink.summary() if self.has_rethink else None,
        }


def _mean(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return sum(vals) / len(vals) if vals else None


AVERAGED = ("accuracy", "balanced_accuracy", "precision", "recall", "f1", "parse_failure_rate")


def inspection_metrics(
    samples: Mapping[str, Sample],
    records: Iterable[ResponseRecord],
    prompt_version: str,
) -> dict[str, Any]:
    """Binary and localization metrics: overall, per dataset, per category, average over datasets."""
    overall = _Group()
    datasets: dict[str, _Group] = defaultdict(_Group)
    categories: dict[str, dict[str, _Group]] = defaultdict(lambda: defaultdict(_Group))
    for r in records:
        if r.question != INSPECT or r.sample_id not in samples:
            continue
        s = samples[r.sample_id]
        parsed = parse_response(r.response, grid=ModelGrid(*r.grid), version=prompt_version)
        multi_stage = "rethink" in get_prompt_version(parsed.prompt_version).sections
        rethink = (parsed.boxes if parsed.boxes_from == "rethink" else []) if multi_stage else None
        for g in (overall, datasets[s.dataset], categories[s.dataset][s.category]):
            g.binary.add(s.anomalous, parsed.decision, parsed.format_ok, r.finished)
            g.add(s.anomalous, s.boxes, parsed.boxes, parsed.proposed_boxes, rethink)
    per_dataset = {}
    for name in sorted(datasets):
        per_dataset[name] = {
            **datasets[name].summary(),
            "categories": {c: categories[name][c].summary() for c in sorted(categories[name])},
        }
    average = {k: _mean(d[k] for d in per_dataset.values()) for k in AVERAGED}
    average["mean_giou"] = _mean(d["localization"]["mean_giou"] for d in per_dataset.values())
    average["box_recall_at_50"] = _mean(d["localization"]["box_recall_at_50"] for d in per_dataset.values())
    for stage in ("think", "rethink"):
        locs = [d[f"localization_{stage}"] for d in per_dataset.values() if d[f"localization_{stage}"]]
        average[f"mean_giou_{stage}"] = _mean(loc["mean_giou"] for loc in locs)
        average[f"box_recall_at_50_{stage}"] = _mean(loc["box_recall_at_50"] for loc in locs)
    return {"overall": overall.summary(), "datasets": per_dataset, "average_over_datasets": average}


@dataclass
class _ChoiceCounts:
    n: int = 0
    correct: int = 0
    unread: int = 0
    by_fallback: int = 0
    normal: list[int] = field(default_factory=lambda: [0, 0])  # correct, total
    anomalous: list[int] = field(default_factory=lambda: [0, 0])

    def add(self, correct: bool, unread: bool, fallback: bool, anomalous: bool) -> None:
        self.n += 1
        self.correct += int(correct)
        self.unread += int(unread)
        self.by_fallback += int(fallback)
        side = self.anomalous if anomalous else self.normal
        side[0] += int(correct)
        side[1] += 1

    def score(self, subtask: str) -> float | None:
        """Accuracy; balanced accuracy for Anomaly Detection, as MMAD scores it."""
        if subtask != ANOMALY_DETECTION:
            return _ratio(self.correct, self.n)
        return _mean(_ratio(c, t) for c, t in (self.normal, self.anomalous))

    def summary(self, subtask: str) -> dict[str, Any]:
        out = {
            "n": self.n,
            "correct": self.correct,
            "score": self.score(subtask),
            "accuracy": _ratio(self.correct, self.n),
            "unread": self.unread,
            "read_by_option_text": self.by_fallback,
        }
        if subtask == ANOMALY_DETECTION:
            out["normal_accuracy"] = _ratio(*self.normal)
            out["anomalous_accuracy"] = _ratio(*self.anomalous)
        return out


def _subtask_order(names: Iterable[str]) -> list[str]:
    known = [s for s in SUBTASKS if s in names]
    return known + sorted(n for n in names if n not in SUBTASKS)


def mmad_source(sample: Sample) -> str:
    """MMAD's dataset grouping: the first folder of the image key (DS-MVTec, VisA, …)."""
    source = sample.extra.get("source")
    if isinstance(source, str) and source:
        return source
    return sample.category.split("/", 1)[0]


def mmad_metrics(samples: Mapping[str, Sample], records: Iterable[ResponseRecord]) -> dict[str, Any]:
    """Per-subtask scores per MMAD source dataset, their average over sources, and pooled counts."""
    questions: dict[tuple[str, str], MmadQuestion] = {}
    for s in samples.values():
        for q in mmad_questions(s)[0]:
            questions[(s.id, q.key)] = q
    by_source: dict[str, dict[str, _ChoiceCounts]] = defaultdict(lambda: defaultdict(_ChoiceCounts))
    pooled: dict[str, _ChoiceCounts] = defaultdict(_ChoiceCounts)
    for r in records:
        q = questions.get(r.key)
        if q is None:
            continue
        s = samples[r.sample_id]
        choice = parse_choice(r.response, q.options)
        correct = choice.letter == q.answer
        for counts in (by_source[mmad_source(s)][q.subtask], pooled[q.subtask]):
            counts.add(correct, choice.letter is None, choice.method == "option_text", s.anomalous)
    if not pooled:
        return {}
    subtasks = _subtask_order(pooled)
    table: dict[str, dict[str, Any]] = {}
    for src in sorted(by_source):
        row = {t: by_source[src][t].summary(t) for t in subtasks if t in by_source[src]}
        table[src] = {"subtasks": row, "average": _mean(v["score"] for v in row.values())}
    average = {t: _mean(table[src]["subtasks"].get(t, {}).get("score") for src in table) for t in subtasks}
    return {
        "subtasks": subtasks,
        "by_source": table,
        "average_over_sources": {**average, "Average": _mean(table[src]["average"] for src in table)},
        "pooled": {t: pooled[t].summary(t) for t in subtasks},
    }
