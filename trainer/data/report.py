"""`adfm-data inspect`: what a dataset root holds, as adfm reads it.

The report names the layout and why, counts images per category and label, and lists every
problem and every skipped file by name — a dataset is never trimmed without saying so.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import ResultCache
from .check import check_samples
from .layouts import Detection, Scan, scan_dataset
from .layouts.base import Problem


@dataclass
class InspectReport:
    root: Path
    detection: Detection
    scan: Scan
    problems: list[Problem] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        counts = self.scan.counts()
        totals = Counter()
        for c in counts.values():
            totals.update(c)
        by_reason: dict[str, list[str]] = {}
        for s in self.scan.skipped:
            by_reason.setdefault(s.reason, []).append(s.path)
        by_kind: dict[str, int] = dict(Counter(p.kind for p in self.problems))
        return {
            "root": str(self.root),
            "layout": self.detection.layout,
            "reason": self.detection.reason,
            "dataset": self.scan.dataset,
            "categories": counts,
            "totals": {"normal": totals["normal"], "anomalous": totals["anomalous"],
                       "images": totals["normal"] + totals["anomalous"]},
            "splits": dict(sorted(Counter(s.split for s in self.scan.samples).items())),
            "skipped": {"count": len(self.scan.skipped), "by_reason": by_reason},
            "problems": {
                "count": len(self.problems),
                "by_kind": dict(sorted(by_kind.items())),
                "items": [
                    {"path": p.path, "kind": p.kind, "message": p.message, "excluded": p.excluded}
                    for p in self.problems
                ],
            },
            "notes": list(self.scan.notes),
        }


def inspect_dataset(
    root: str | Path,
    layout: str | None = None,
    decode: bool = True,
    workers: int | None = None,
    cache: ResultCache | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> InspectReport:
    """Read the dataset and open every image and mask (fully decoded unless `decode` is False)."""
    scan, detection = scan_dataset(root, layout)
    checked = check_samples(
        scan.usable_samples(), cache=cache, decode=decode, box_config=None, workers=workers, progress=progress
    )
    problems = list(scan.problems)
    for c in checked:
        problems.extend(c.problems)
    problems.sort(key=lambda p: (p.kind, p.path))
    return InspectReport(Path(root), detection, scan, problems)
