"""The images a gate is fitted, calibrated and evaluated on: from a split manifest or a dataset root.

`--data` is either a split manifest (JSONL of `Sample` records, as `adfm-data split` writes) or a
dataset root read by the data adapters (`scan_dataset`: the generic `normal/`+`anomalous/` folder
layout, or any benchmark layout). Samples the adapter excludes (unreadable, wrong-size mask) are
left out and reported, never dropped silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.imageio import DataFileError, load_rgb
from ..data.layouts import scan_dataset
from ..data.records import Sample, read_manifest
from .config import GateConfigError


@dataclass
class GateData:
    """Normal images to fit on, normal images held out, and anomalies for calibration."""

    train: list[Sample]
    holdout: list[Sample]
    anomalous: list[Sample]
    notes: list[str] = field(default_factory=list)


def is_manifest(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() == ".jsonl"


def read_samples(
    data: str | Path, layout: str | None = None, categories: Sequence[str] = ()
) -> tuple[list[Sample], list[str]]:
    """(samples, notes) of a split manifest or a dataset root, restricted to `categories` if given."""
    data = Path(data)
    notes: list[str] = []
    if not data.exists():
        raise GateConfigError(f"--data {data}: not found (a split manifest .jsonl or a dataset folder)")
    try:
        if is_manifest(data):
            samples = read_manifest(data)
        else:
            scan, detection = scan_dataset(data, layout)
            samples = scan.usable_samples()
            notes.append(f"{data}: read as {detection.layout} ({detection.reason})")
            notes += [f"left out: {p.message}" for p in scan.problems if p.excluded]
    except (DataFileError, FileNotFoundError, ValueError) as exc:
        raise GateConfigError(f"--data {data}: {exc}") from exc
    if categories:
        known = sorted({s.category for s in samples})
        unknown = [c for c in categories if c not in known]
        if unknown:
            raise GateConfigError(
                f"--data {data}: no category {', '.join(unknown)}; it has {', '.join(known) or 'no samples'}"
            )
        samples = [s for s in samples if s.category in set(categories)]
    if not samples:
        raise GateConfigError(f"--data {data}: no usable images")
    return samples, notes


def split_for_gate(samples: Sequence[Sample], holdout: float, seed: int) -> GateData:
    """Fit on the normal training images minus a seeded hold-out; calibrate on the rest.

    The fitting pool is the normal images of the `train` split when there are any (a manifest or
    an MVTec-style root), else every normal image (the generic folder layout). Other normal
    images (e.g. `test/good`) join the held-out ones; every anomalous image calibrates.
    """
    normals = sorted((s for s in samples if not s.anomalous), key=lambda s: s.id)
    anomalous = sorted((s for s in samples if s.anomalous), key=lambda s: s.id)
    pool = [s for s in normals if s.split == "train"] or normals
    in_pool = {s.id for s in pool}
    rest = [s for s in normals if s.id not in in_pool]
    if len(pool) < 3:
        raise GateConfigError(
            f"a gate needs at least 3 normal images to fit on and hold out; the data has {len(pool)}"
        )
    n_hold = min(len(pool) - 2, max(1, round(holdout * len(pool))))
    order = np.random.default_rng(seed).permutation(len(pool))
    held = {int(i) for i in order[:n_hold]}
    train = [s for i, s in enumerate(pool) if i not in held]
    hold = [s for i, s in enumerate(pool) if i in held] + rest
    notes = [f"{len(train)} normal images to fit on, {len(hold)} normal held out, {len(anomalous)} anomalous"]
    cats = sorted({s.category for s in samples})
    if len(cats) > 1:
        notes.append(f"one gate for {len(cats)} categories ({', '.join(cats)}); --category trains one per product")
    return GateData(train=train, holdout=hold, anomalous=anomalous, notes=notes)


@dataclass(frozen=True)
class Loaded:
    """An image read for the gate, or the reason it could not be."""

    sample: Sample
    image: np.ndarray | None
    error: str = ""


def load_images(samples: Iterable[Sample]) -> Iterator[Loaded]:
    """RGB uint8 arrays of the samples' images; an unreadable file yields its error, naming it."""
    for s in samples:
        try:
            yield Loaded(s, np.asarray(load_rgb(s.image)))
        except DataFileError as exc:
            yield Loaded(s, None, str(exc))
