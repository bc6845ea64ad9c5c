"""Open every sample's files: image size, decodability, mask sizes, and (optionally) pseudo-boxes.

Adapters only look at names; this is where a truncated JPEG, an unreadable mask or a mask of the
wrong size is found, each reported as a `Problem` naming the file. Results are cached (see
`cache.py`), and files are read on a thread pool — Pillow and OpenCV release the GIL while
decoding, so threads use every core without pickling images between processes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from PIL import Image

from .boxes import BoxConfig, pseudo_boxes
from .cache import ResultCache, file_stamp, stamps
from .imageio import DataFileError, image_size, mask_size, read_mask
from .layouts.base import Problem
from .records import Sample

#: Called with (path, decoded image) for each image opened while checking.
Visitor = Callable[[str, Image.Image], None]


def default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


@dataclass
class Checked:
    """A sample with width/height (and boxes when asked) filled in, and what was wrong with it."""

    sample: Sample
    problems: list[Problem] = field(default_factory=list)

    @property
    def excluded(self) -> bool:
        return any(p.excluded for p in self.problems)


def _size(path: str, decode: bool, cache: ResultCache, visit: Visitor | None) -> tuple[int, int]:
    key = f"size:{'decoded' if decode else 'header'}:{path}"
    stamp = file_stamp(path)
    hit = cache.get(key, stamp)
    if hit is not None:
        if hit.get("error"):
            raise DataFileError(path, hit["error"])
        return int(hit["width"]), int(hit["height"])
    try:
        w, h = image_size(path, decode=decode, visit=(lambda img: visit(path, img)) if visit else None)
    except DataFileError as exc:
        if stamp != "missing":
            cache.put(key, stamp, {"error": exc.reason})
        raise
    cache.put(key, stamp, {"width": w, "height": h})
    return w, h


def _boxes(sample: Sample, size: tuple[int, int], config: BoxConfig, cache: ResultCache) -> list[list[float]]:
    key = f"boxes:{config.key}:{'|'.join(sample.masks)}"
    stamp = f"{size[0]}x{size[1]}|{stamps(sample.masks)}"
    hit = cache.get(key, stamp)
    if hit is not None:
        return hit
    mask = read_mask(sample.masks, size=size)
    boxes = pseudo_boxes(mask, kernel_size=config.kernel_size, min_area=config.min_area)
    cache.put(key, stamp, boxes)
    return boxes


def check_sample(
    sample: Sample,
    cache: ResultCache,
    decode: bool = True,
    box_config: BoxConfig | None = None,
    visit: Visitor | None = None,
) -> Checked:
    """Check one sample's files; with `box_config`, compute the pseudo-boxes of an anomalous one.

    `visit(path, image)` sees each image decoded here (not those answered from the cache).
    """
    try:
        w, h = _size(sample.image, decode, cache, visit)
    except DataFileError as exc:
        return Checked(sample, [Problem(sample.image, "unreadable_image", str(exc), excluded=True)])
    update: dict[str, object] = {"width": w, "height": h}
    problems: list[Problem] = []
    for m in sample.masks:
        try:
            mw, mh = mask_size(m)
        except DataFileError as exc:
            problems.append(Problem(sample.image, "unreadable_mask", f"{exc} (mask of {sample.image})", True))
            continue
        if (mw, mh) != (w, h):
            problems.append(Problem(
                sample.image, "mask_size",
                f"{m}: mask is {mw}x{mh} but its image {sample.image} is {w}x{h}", excluded=True,
            ))
    if not sample.anomalous:
        update["boxes"] = []
    elif box_config is not None and sample.masks and not problems:
        try:
            update["boxes"] = _boxes(sample, (w, h), box_config, cache)
        except DataFileError as exc:
            problems.append(Problem(sample.image, "unreadable_mask", f"{exc} (mask of {sample.image})", True))
    return Checked(sample.model_copy(update=update), problems)


def check_samples(
    samples: Sequence[Sample],
    cache: ResultCache | None = None,
    decode: bool = True,
    box_config: BoxConfig | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    visit: Visitor | None = None,
) -> list[Checked]:
    """`check_sample` over many samples on a thread pool; results in the input order."""
    cache = cache if cache is not None else ResultCache()
    n = len(samples)
    workers = workers or default_workers()
    out: list[Checked] = []
    if workers <= 1 or n < 2:
        for i, s in enumerate(samples, 1):
            out.append(check_sample(s, cache, decode, box_config, visit))
            if progress:
                progress(i, n)
        return out
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda s: check_sample(s, cache, decode, box_config, visit), samples)
        for i, checked in enumerate(results, 1):
            out.append(checked)
            if progress:
                progress(i, n)
    return out
