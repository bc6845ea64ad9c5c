"""The paper's splits, written as JSONL manifests of `Sample`, reproducible by seed.

- `multi-domain`: for each dataset, `train_fraction` (20%) of every category is drawn for
  training, stratified by label; the remaining 80% is the in-distribution test set.
- `cross-dataset`: the same 20% draw of the source dataset (MVTec AD) for training; the test set
  is the standard (native) test split of every other dataset (VisA, MPDD, DTD, DAGM).

Every query gets its single normal reference (see `references.py`) from the normal *training*
images of its category: the training manifest's normals for the datasets drawn from, the native
training normals for cross-dataset targets. Draws are seeded per (seed, dataset, category, label)
and samples are ordered by id, so the same inputs and seed give byte-identical manifests whatever
the order of the file system or of `--dataset` arguments.
"""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from .boxes import BoxConfig
from .cache import ResultCache
from .check import check_samples
from .layouts import Scan, scan_dataset
from .layouts.base import Problem
from .records import Sample, write_manifest
from .references import REFERENCE_MODES, Features, assign_references, features_of

PROTOCOLS: tuple[str, ...] = ("multi-domain", "cross-dataset")
CACHE_NAME = "cache.json"
SUMMARY_NAME = "split.json"
TRAIN_NAME = "train.jsonl"
TEST_NAME = "test.jsonl"


@dataclass(frozen=True)
class SplitConfig:
    """Everything that decides a split's content; recorded in `split.json`."""

    protocol: str = "multi-domain"
    train_fraction: float = 0.2
    seed: int = 0
    reference: str = "similar"
    source: str = "mvtec"
    box: BoxConfig = field(default_factory=BoxConfig)

    def __post_init__(self) -> None:
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {self.protocol!r}; known: {', '.join(PROTOCOLS)}")
        if not 0.0 < self.train_fraction < 1.0:
            raise ValueError(f"train_fraction must be in (0, 1), got {self.train_fraction}")
        if self.reference not in REFERENCE_MODES:
            raise ValueError(f"unknown reference mode {self.reference!r}; known: {', '.join(REFERENCE_MODES)}")


@dataclass(frozen=True)
class DatasetSource:
    """One `--dataset [LAYOUT=]ROOT` argument."""

    root: Path
    layout: str | None = None

    @classmethod
    def parse(cls, text: str) -> DatasetSource:
        from .layouts import LAYOUTS

        name, sep, rest = text.partition("=")
        if sep and name in LAYOUTS:
            return cls(Path(rest), name)
        return cls(Path(text), None)


class SplitError(ValueError):
    """The split was refused (strict mode and files that would be left out)."""


@dataclass
class SplitResult:
    train: list[Sample]
    test: list[Sample]
    summary: dict[str, Any]
    out_dir: Path | None = None


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5)


def label_quotas(counts: dict[str, int], fraction: float) -> dict[str, int]:
    """How many of each label to draw so the category total is round(fraction × n).

    Largest-remainder apportionment: each label gets floor(fraction × n_label), and the few units
    still missing go to the labels with the largest fractional parts — so the category is exact
    to ±½ image and every label keeps its share.
    """
    total = _round_half_up(fraction * sum(counts.values()))
    exact = {lab: fraction * n for lab, n in counts.items()}
    quotas = {lab: math.floor(v) for lab, v in exact.items()}
    missing = total - sum(quotas.values())
    for lab in sorted(exact, key=lambda k: (-(exact[k] - quotas[k]), k)):
        if missing <= 0:
            break
        if quotas[lab] < counts[lab]:
            quotas[lab] += 1
            missing -= 1
    return quotas


def stratified_draw(samples: Sequence[Sample], fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """(drawn, rest): `fraction` of every (dataset, category), stratified by label, seeded."""
    groups: dict[tuple[str, str], dict[str, list[Sample]]] = defaultdict(lambda: defaultdict(list))
    for s in samples:
        groups[(s.dataset, s.category)][s.label].append(s)
    drawn: list[Sample] = []
    rest: list[Sample] = []
    for (dataset, category), by_label in sorted(groups.items()):
        quotas = label_quotas({lab: len(v) for lab, v in by_label.items()}, fraction)
        for label, members in sorted(by_label.items()):
            members = sorted(members, key=lambda s: s.id)
            rng = random.Random(f"{seed}/{dataset}/{category}/{label}")
            chosen = set(rng.sample(range(len(members)), quotas[label]))
            for i, s in enumerate(members):
                (drawn if i in chosen else rest).append(s)
    return drawn, rest


def _as_split(samples: Sequence[Sample], split: str) -> list[Sample]:
    return sorted((s.model_copy(update={"split": split}) for s in samples), key=lambda s: s.id)


def _counts(samples: Sequence[Sample]) -> dict[str, dict[str, dict[str, int]]]:
    out: dict[str, dict[str, dict[str, int]]] = {}
    for s in samples:
        cat = out.setdefault(s.dataset, {}).setdefault(s.category, {"normal": 0, "anomalous": 0})
        cat[s.label] += 1
    return {d: dict(sorted(c.items())) for d, c in sorted(out.items())}


def make_split(
    sources: Sequence[DatasetSource],
    config: SplitConfig,
    out_dir: str | Path | None = None,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    strict: bool = False,
) -> SplitResult:
    """Read the datasets, check their files, draw the split, pick references, write the manifests.

    With `out_dir`, writes `train.jsonl`, `test.jsonl`, `split.json` (config, counts, every
    excluded file with the reason, warnings) and the cache `cache.json` next to them. With
    `strict`, any excluded file raises `SplitError` instead (nothing but the cache is written).
    """
    say = log or (lambda _msg: None)
    out = Path(out_dir) if out_dir is not None else None
    cache = ResultCache(out / CACHE_NAME if out is not None else None)
    if cache.warning:
        say(cache.warning)
    scans: list[tuple[DatasetSource, Scan, str]] = []
    for src in sources:
        scan, detection = scan_dataset(src.root, src.layout)
        say(f"{src.root}: {detection.layout} ({detection.reason}); {len(scan.samples)} images, "
            f"{len(scan.skipped)} files skipped, {len(scan.problems)} problems")
        scans.append((src, scan, detection.layout))
    names = [scan.dataset for _, scan, _ in scans]
    seen_ids: dict[str, str] = {}
    for _, scan, _ in scans:
        for s in scan.samples:
            if s.id in seen_ids:
                raise ValueError(
                    f"sample id {s.id!r} comes from two datasets ({seen_ids[s.id]} and {s.image}); "
                    "give each --dataset only once"
                )
            seen_ids[s.id] = s.image

    if config.protocol == "cross-dataset":
        if config.source not in names:
            raise ValueError(
                f"cross-dataset needs the source dataset {config.source!r} among --dataset; got {names}"
            )
        if len(set(names)) < 2:
            raise ValueError("cross-dataset needs at least one target dataset besides the source")

    def wanted(scan: Scan) -> list[Sample]:
        usable = scan.usable_samples()
        if config.protocol == "cross-dataset" and scan.dataset != config.source:
            # targets: their native test split, plus native training normals (the reference pool)
            return [s for s in usable if s.split == "test" or (s.split == "train" and not s.anomalous)]
        return usable

    problems: list[Problem] = [p for _, scan, _ in scans for p in scan.problems]
    candidates = [s for _, scan, _ in scans for s in wanted(scan)]
    say(f"checking {len(candidates)} images and masks (cache: {len(cache)} entries)")
    thumbs: dict[str, Features] = {}  # taken while decoding, so "similar" references decode nothing again

    def keep_thumb(path: str, img: Image.Image) -> None:
        thumbs[path] = features_of(img)

    checked = check_samples(
        candidates, cache=cache, decode=True, box_config=config.box, workers=workers,
        progress=_progress(say, "checked"), visit=keep_thumb if config.reference == "similar" else None,
    )
    good: list[Sample] = []
    for c in checked:
        problems.extend(c.problems)
        if not c.excluded:
            good.append(c.sample)
    excluded = sorted({(p.path, p.kind, p.message) for p in problems if p.excluded})
    if strict and excluded:
        cache.save()
        raise SplitError(
            f"{len(excluded)} file(s) would be left out of the split:\n"
            + "\n".join(f"  {m}" for _, _, m in excluded)
        )

    if config.protocol == "multi-domain":
        train, test = stratified_draw(good, config.train_fraction, config.seed)
        pool = train
    else:
        src = [s for s in good if s.dataset == config.source]
        train, _ = stratified_draw(src, config.train_fraction, config.seed)
        targets = [s for s in good if s.dataset != config.source]
        test = [s for s in targets if s.extra.get("native_split") == "test"]
        empty = sorted({n for n in names if n != config.source} - {s.dataset for s in test})
        if empty:
            raise ValueError(
                f"cross-dataset tests on native test splits, and {', '.join(empty)} has none "
                "(the folder layout has no train/test folders); use --protocol multi-domain for it"
            )
        pool = train + [s for s in targets if s.extra.get("native_split") == "train"]

    train, test = _as_split(train, "train"), _as_split(test, "test")
    say(f"choosing {config.reference} references for {len(train) + len(test)} queries")
    queries, warnings = assign_references(
        [*train, *test], pool, mode=config.reference, seed=config.seed, cache=cache, workers=workers,
        progress=_progress(say, "references"), features=thumbs,
    )
    thumbs.clear()
    train, test = queries[: len(train)], queries[len(train):]
    warned = sorted({(p.path, p.kind, p.message) for p in problems if not p.excluded})
    summary: dict[str, Any] = {
        "protocol": config.protocol,
        "seed": config.seed,
        "train_fraction": config.train_fraction,
        "reference": config.reference,
        "source": config.source if config.protocol == "cross-dataset" else None,
        "box_config": asdict(config.box),
        "datasets": [
            {"root": str(scan.root), "layout": layout, "images": len(scan.samples),
             "skipped_files": len(scan.skipped)}
            for _, scan, layout in scans
        ],
        "counts": {"train": _counts(train), "test": _counts(test)},
        "excluded": [{"path": p, "kind": k, "message": m} for p, k, m in excluded],
        "problems": [{"path": p, "kind": k, "message": m} for p, k, m in warned],
        "reference_warnings": warnings,
        "manifests": {"train": TRAIN_NAME, "test": TEST_NAME},
    }
    if out is not None:
        write_manifest(train, out / TRAIN_NAME)
        write_manifest(test, out / TEST_NAME)
        tmp = out / (SUMMARY_NAME + ".tmp")
        tmp.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        tmp.replace(out / SUMMARY_NAME)
        cache.save()
    say(f"cache: {cache.hits} hits, {cache.misses} misses")
    return SplitResult(train, test, summary, out)


def _progress(say: Callable[[str], None], what: str) -> Callable[[int, int], None]:
    step = 500

    def report(i: int, n: int) -> None:
        if i == n or i % step == 0:
            say(f"  {what} {i}/{n}")

    return report
