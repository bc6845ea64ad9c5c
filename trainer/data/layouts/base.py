"""What every layout adapter returns: the samples, the files it did not take, and the problems.

Nothing is skipped silently: after an adapter has read a dataset, every file under its root that
no sample (image or mask) and no metadata file refers to is listed in `Scan.skipped` with a reason.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..imageio import is_image_file
from ..records import Sample


@dataclass(frozen=True)
class Skipped:
    """A file under the dataset root that is not part of any sample."""

    path: str
    reason: str


@dataclass(frozen=True)
class Problem:
    """Something wrong with a file of the dataset.

    `excluded` problems keep the sample out of every split (unreadable image, wrong-size mask);
    the others are warnings and the sample stays (an anomalous image without a mask keeps its
    label, its boxes are unknown: `Sample.boxes` stays None).
    """

    path: str
    kind: str
    message: str
    excluded: bool

    def __str__(self) -> str:
        return self.message


@dataclass
class Scan:
    """A dataset read from its native layout."""

    layout: str
    root: Path
    samples: list[Sample] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def dataset(self) -> str:
        return self.samples[0].dataset if self.samples else self.layout

    def counts(self) -> dict[str, dict[str, int]]:
        """{category: {"normal": n, "anomalous": n}} over the samples."""
        out: dict[str, Counter[str]] = {}
        for s in self.samples:
            out.setdefault(s.category, Counter())[s.label] += 1
        return {c: {"normal": n["normal"], "anomalous": n["anomalous"]} for c, n in sorted(out.items())}

    def excluded_images(self) -> set[str]:
        return {p.path for p in self.problems if p.excluded}

    def usable_samples(self) -> list[Sample]:
        """Samples without an excluding problem."""
        bad = self.excluded_images()
        return [s for s in self.samples if s.image not in bad]


def sample_id(dataset: str, category: str, split: str, defect: str, stem: str) -> str:
    return f"{dataset}/{category}/{split}/{defect}/{stem}"


def walk_files(root: Path) -> Iterator[Path]:
    """Every file under `root`, following directory links once (MMAD's layout is often links)."""
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        for name in sorted(filenames):
            yield Path(dirpath) / name


def image_files(folder: Path) -> tuple[list[Path], list[Path]]:
    """(image files, other files) directly inside `folder`, sorted by name."""
    images, others = [], []
    if folder.is_dir():
        for p in sorted(folder.iterdir()):
            if p.is_file():
                (images if is_image_file(p) else others).append(p)
    return images, others


def subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []


def find_child(folder: Path, name: str) -> Path | None:
    """The child of `folder` called `name`, ignoring case (DAGM ships `Train` and `train`)."""
    exact = folder / name
    if exact.exists():
        return exact
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.lower() == name.lower():
                return p
    return None


def list_unreferenced(
    root: Path,
    referenced: Iterable[Path | str],
    layout: str,
    reasons: dict[str, str] | None = None,
) -> list[Skipped]:
    """Every file under `root` that is not in `referenced`, with a reason.

    `reasons` gives specific reasons by absolute path (e.g. "mask without a matching image");
    other files are "not an image file" or "not part of the <layout> layout".
    """
    refs = {os.path.abspath(p) for p in referenced}
    reasons = reasons or {}
    out = []
    for p in walk_files(root):
        key = os.path.abspath(p)
        if key in refs:
            continue
        reason = reasons.get(key)
        if reason is None and p.name.startswith("."):
            reason = "hidden file"
        elif reason is None:
            reason = f"not part of the {layout} layout" if is_image_file(p) else "not an image file"
        out.append(Skipped(key, reason))
    return out
