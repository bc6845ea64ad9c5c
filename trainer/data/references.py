"""The single normal reference image shown before each query (the paper's one-shot protocol).

For every query, one normal *training* image of the same dataset and category, chosen once when
the split is made and stored in the manifest, so training, evaluation and the appliance agree on
it. Modes:

- `random`: a uniformly drawn pool image, seeded per query id (independent of sample order).
- `similar`: MMAD's retrieval — rank the pool by colour-histogram similarity, then re-rank the best
  `SHORTLIST` by SSIM of gray thumbnails and take the best. Histograms catch colour/lighting;
  SSIM catches pose and structure, which a histogram ignores.
- `none`: no reference.

MMAD samples carry the benchmark's own templates (`similar_templates` / `random_templates`);
those are used as given when present, so the benchmark is evaluated as published.

Queries are handled one category at a time, so only that category's pool statistics sit in
memory; thumbnails taken while the split's files were checked (`features`) save a second decode.
"""

from __future__ import annotations

import hashlib
import random
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np
from PIL import Image

from .cache import ResultCache, file_stamp
from .check import default_workers
from .imageio import DataFileError, load_rgb, to_rgb
from .records import Sample

ReferenceMode = Literal["random", "similar", "none"]
REFERENCE_MODES: tuple[str, ...] = ("random", "similar", "none")

#: Thumbnail side for histograms and SSIM: enough for global pose/structure, cheap to keep in memory.
THUMB = 128
#: Histogram bins per HSV channel (hue, saturation, value).
HIST_BINS = (16, 8, 8)
#: How many histogram-nearest candidates are re-ranked by SSIM.
SHORTLIST = 8


@dataclass(frozen=True)
class Features:
    """What ranking needs of one image: ~20 KB, whatever the image size."""

    hist: np.ndarray  # normalized HSV histogram (float32, flattened)
    gray: np.ndarray  # THUMB×THUMB uint8 gray thumbnail


def features_of(img: Image.Image) -> Features:
    rgb = np.asarray(to_rgb(img))
    thumb = cv2.resize(rgb, (THUMB, THUMB), interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(thumb, cv2.COLOR_RGB2HSV)
    hist = cv2.calcHist([hsv], [0, 1, 2], None, list(HIST_BINS), [0, 180, 0, 256, 0, 256])
    hist = cv2.normalize(hist, None).flatten().astype(np.float32)
    return Features(hist, cv2.cvtColor(thumb, cv2.COLOR_RGB2GRAY))


def image_features(path: str) -> Features:
    return features_of(load_rgb(path, draft=(2 * THUMB, 2 * THUMB)))


_C1, _C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


def _blur(x: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(x, (11, 11), 1.5)


@dataclass(frozen=True)
class _SsimStats:
    """One image's own SSIM terms (local mean and variance), computed once per image, not per pair."""

    x: np.ndarray
    mu: np.ndarray
    var: np.ndarray

    @classmethod
    def of(cls, gray: np.ndarray) -> _SsimStats:
        x = gray.astype(np.float64)
        mu = _blur(x)
        return cls(x, mu, _blur(x * x) - mu * mu)


def _ssim(a: _SsimStats, b: _SsimStats) -> float:
    cov = _blur(a.x * b.x) - a.mu * b.mu
    num = (2 * a.mu * b.mu + _C1) * (2 * cov + _C2)
    den = (a.mu**2 + b.mu**2 + _C1) * (a.var + b.var + _C2)
    return float(np.mean(num / den))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Mean structural similarity of two gray images of equal shape (Wang et al. 2004).

    Gaussian window 11×11, σ = 1.5, K1 = 0.01, K2 = 0.03, dynamic range 255 — the published
    constants, so the value is the usual SSIM.
    """
    if a.shape != b.shape:
        raise ValueError(f"ssim needs equal shapes, got {a.shape} and {b.shape}")
    return _ssim(_SsimStats.of(a), _SsimStats.of(b))


def rank_similar(
    query: Features,
    pool: Sequence[tuple[str, Features]],
    shortlist: int = SHORTLIST,
    stats: dict[str, _SsimStats] | None = None,
) -> list[str]:
    """Pool paths, most similar first: histogram correlation, then the best `shortlist` by SSIM.

    `stats` keeps the pool images' SSIM terms between calls (one category's pool at a time).
    """
    scored = [
        (float(cv2.compareHist(query.hist, f.hist, cv2.HISTCMP_CORREL)), path, f) for path, f in pool
    ]
    scored.sort(key=lambda t: (-t[0], t[1]))
    q = _SsimStats.of(query.gray)
    stats = stats if stats is not None else {}
    head = []
    for h, path, f in scored[:shortlist]:
        st = stats.get(path)
        if st is None:
            st = stats[path] = _SsimStats.of(f.gray)
        head.append((_ssim(q, st), h, path))
    head.sort(key=lambda t: (-t[0], -t[1], t[2]))
    return [p for _, _, p in head] + [p for _, p, _ in scored[shortlist:]]


def _pool_key(paths: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(sorted(paths)).encode()).hexdigest()[:16]


def assign_references(
    queries: Sequence[Sample],
    pool: Sequence[Sample],
    mode: str = "similar",
    seed: int = 0,
    cache: ResultCache | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    features: Mapping[str, Features] | None = None,
) -> tuple[list[Sample], list[str]]:
    """Set `reference` on every query; returns (updated queries in input order, warnings).

    `pool` holds the candidates (normal training images); a query is never its own reference.
    A query whose category has no candidate keeps `reference=None` and is named in the warnings.
    `features` are thumbnails already taken (by path); missing ones are computed.
    """
    if mode not in REFERENCE_MODES:
        raise ValueError(f"unknown reference mode {mode!r}; known: {', '.join(REFERENCE_MODES)}")
    if mode == "none":
        return [q.model_copy(update={"reference": None}) for q in queries], []
    cache = cache if cache is not None else ResultCache()
    known = features or {}
    by_cat: dict[tuple[str, str], list[str]] = defaultdict(list)
    for s in pool:
        if not s.anomalous:
            by_cat[(s.dataset, s.category)].append(s.image)
    for paths in by_cat.values():
        paths.sort()
    groups: dict[tuple[str, str], list[int]] = defaultdict(list)
    for i, q in enumerate(queries):
        groups[(q.dataset, q.category)].append(i)
    warnings: list[str] = []
    out: list[Sample | None] = [None] * len(queries)
    done = 0
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as ex:
        for key in sorted(groups):
            pool_features: dict[str, Features] = {}
            stats: dict[str, _SsimStats] = {}

            def feats(path: str, keep: bool, pool_features=pool_features) -> Features:
                f = pool_features.get(path) or known.get(path)
                if f is None:
                    f = image_features(path)
                if keep:
                    pool_features[path] = f
                return f

            def choose(q: Sample, stats=stats, feats=feats) -> str | None:
                templates = q.extra.get(f"{mode}_templates") if q.dataset == "mmad" else None
                if templates:
                    return templates[0]
                candidates = [p for p in by_cat.get((q.dataset, q.category), []) if p != q.image]
                if not candidates:
                    return None
                if mode == "random":
                    return random.Random(f"{seed}/{q.id}").choice(candidates)
                ckey = f"reference:similar:{_pool_key(candidates)}:{q.image}"
                stamp = file_stamp(q.image)
                hit = cache.get(ckey, stamp)
                if hit is not None:
                    return hit
                ranked = rank_similar(feats(q.image, False), [(p, feats(p, True)) for p in candidates],
                                      stats=stats)
                cache.put(ckey, stamp, ranked[0])
                return ranked[0]

            def one(i: int, choose=choose) -> tuple[int, Sample]:
                q = queries[i]
                try:
                    ref = choose(q)
                    if ref is None:
                        warnings.append(
                            f"{q.image}: no other normal training image of {q.dataset}/{q.category}; "
                            "no reference"
                        )
                except DataFileError as exc:
                    warnings.append(f"{q.image}: no reference, an image could not be read ({exc})")
                    ref = None
                return i, q.model_copy(update={"reference": ref})

            for i, s in ex.map(one, groups[key]):
                out[i] = s
                done += 1
                if progress:
                    progress(done, len(queries))
    return [s for s in out if s is not None], sorted(warnings)
