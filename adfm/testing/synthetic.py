"""Synthetic inspection data: textured parts with drawn defects and their masks.

Real datasets cannot be downloaded on the build machines, so tests, the demo station and the
benchmarks use these images, written in each real dataset's on-disk layout so that the same
adapters read them as read the real thing. Everything is deterministic by seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PART_KINDS = ("washer", "tile", "pill", "fabric")
DEFECT_KINDS = ("scratch", "spot", "crack", "missing")


@dataclass(frozen=True)
class SyntheticSample:
    """One generated image: pixels, its anomaly mask (0/255) and what was drawn."""

    image: np.ndarray
    mask: np.ndarray
    kind: str
    defect: str | None

    @property
    def anomalous(self) -> bool:
        return self.defect is not None


def _noise(rng: np.random.Generator, h: int, w: int, scale: int) -> np.ndarray:
    """Smooth value noise in [0, 1] (upsampled random grid), for natural-looking texture."""
    gh, gw = max(2, h // scale + 2), max(2, w // scale + 2)
    grid = rng.random((gh, gw)).astype(np.float32)
    img = Image.fromarray((grid * 255).astype(np.uint8)).resize((w, h), Image.Resampling.BICUBIC)
    return np.asarray(img, dtype=np.float32) / 255.0


def render_part(kind: str, rng: np.random.Generator, size: tuple[int, int] = (256, 256)) -> tuple[
    np.ndarray, np.ndarray
]:
    """Render a defect-free part; returns (RGB uint8 image, bool region where defects may go)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    cy = h / 2 + rng.uniform(-0.03, 0.03) * h
    fine = _noise(rng, h, w, 4)
    coarse = _noise(rng, h, w, 32)
    if kind == "washer":
        r = np.hypot(xx - cx, yy - cy)
        outer, inner = 0.42 * min(w, h), 0.16 * min(w, h)
        region = (r < outer) & (r > inner)
        rings = 0.5 + 0.5 * np.sin(r * 0.9 + rng.uniform(0, 6.28))
        metal = 150 + 40 * rings + 25 * fine + 20 * coarse
        bg = 35 + 15 * coarse
        gray = np.where(region, metal, bg)
        img = np.stack([gray, gray * 0.98, gray * 0.95], axis=-1)
        region = (r < outer - 6) & (r > inner + 6)
    elif kind == "tile":
        period = rng.uniform(14, 18)
        lines = (np.abs(np.sin(xx * math.pi / period)) < 0.12) | (np.abs(np.sin(yy * math.pi / period)) < 0.12)
        base = np.array([190.0, 170.0, 140.0]) + rng.uniform(-8, 8, 3)
        img = base[None, None, :] * (0.85 + 0.15 * coarse[..., None]) + 12 * fine[..., None]
        img[lines] *= 0.78
        region = np.ones((h, w), dtype=bool)
        region[:8, :] = region[-8:, :] = False
        region[:, :8] = region[:, -8:] = False
    elif kind == "pill":
        ax, ay = 0.40 * w, 0.22 * h
        ang = rng.uniform(-0.2, 0.2)
        dx, dy = xx - cx, yy - cy
        u = dx * math.cos(ang) + dy * math.sin(ang)
        v = -dx * math.sin(ang) + dy * math.cos(ang)
        e = (u / ax) ** 2 + (v / ay) ** 2
        inside = e < 1.0
        body = np.array([225.0, 215.0, 190.0])[None, None, :] * (0.9 + 0.1 * fine[..., None])
        bg = np.array([60.0, 70.0, 80.0])[None, None, :] + 10 * coarse[..., None]
        img = np.where(inside[..., None], body, bg)
        speck = (rng.random((h, w)) < 0.004) & inside
        img[speck] = [150, 90, 80]
        region = e < 0.75
    elif kind == "fabric":
        weave = 0.5 + 0.25 * np.sin(xx * 1.3) * np.sin(yy * 1.3)
        base = np.array([70.0, 95.0, 150.0]) + rng.uniform(-10, 10, 3)
        img = base[None, None, :] * (0.75 + 0.35 * weave[..., None]) + 18 * (fine[..., None] - 0.5)
        region = np.ones((h, w), dtype=bool)
        region[:8, :] = region[-8:, :] = False
        region[:, :8] = region[:, -8:] = False
    else:
        raise ValueError(f"unknown part kind {kind!r}; known: {', '.join(PART_KINDS)}")
    return np.clip(img, 0, 255).astype(np.uint8), region


def _pick_point(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[int, int]:
    inner = region.copy()
    inner[:margin, :] = inner[-margin:, :] = False
    inner[:, :margin] = inner[:, -margin:] = False
    ys, xs = np.nonzero(inner if inner.any() else region)
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def add_defect(
    image: np.ndarray, region: np.ndarray, defect: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect of the given kind inside `region`; returns (new image, 0/255 uint8 mask)."""
    h, w = region.shape
    s = min(w, h)
    mask_img = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask_img)
    out = image.astype(np.float32)
    x, y = _pick_point(rng, region, margin=max(4, s // 8))
    if defect == "scratch":
        length = rng.uniform(0.18, 0.32) * s
        ang = rng.uniform(0, math.pi)
        x2, y2 = x + length * math.cos(ang), y + length * math.sin(ang)
        md.line([(x, y), (x2, y2)], fill=255, width=max(2, s // 80))
        color = np.array([245.0, 245.0, 250.0])
        alpha = 0.85
    elif defect == "spot":
        rx, ry = rng.uniform(0.03, 0.06) * s, rng.uniform(0.03, 0.06) * s
        md.ellipse([x - rx, y - ry, x + rx, y + ry], fill=255)
        color = np.array([120.0, 60.0, 20.0]) + rng.uniform(-20, 20, 3)
        alpha = 0.9
    elif defect == "crack":
        pts = [(x, y)]
        ang = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(6, 10))):
            ang += rng.uniform(-0.7, 0.7)
            step = rng.uniform(0.03, 0.05) * s
            pts.append((pts[-1][0] + step * math.cos(ang), pts[-1][1] + step * math.sin(ang)))
        md.line(pts, fill=255, width=max(2, s // 100), joint="curve")
        color = np.array([15.0, 15.0, 15.0])
        alpha = 0.95
    elif defect == "missing":
        r = rng.uniform(0.06, 0.10) * s
        n = 7
        poly = [
            (x + r * rng.uniform(0.6, 1.2) * math.cos(2 * math.pi * k / n),
             y + r * rng.uniform(0.6, 1.2) * math.sin(2 * math.pi * k / n))
            for k in range(n)
        ]
        md.polygon(poly, fill=255)
        color = np.array([30.0, 32.0, 35.0])
        alpha = 1.0
    else:
        raise ValueError(f"unknown defect kind {defect!r}; known: {', '.join(DEFECT_KINDS)}")
    soft = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)[..., None] / 255.0
    out = out * (1 - alpha * soft) + color[None, None, :] * (alpha * soft)
    mask = np.where(np.asarray(mask_img) > 0, 255, 0).astype(np.uint8)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def make_sample(
    kind: str,
    defect: str | None,
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
) -> SyntheticSample:
    image, region = render_part(kind, rng, size)
    if defect is None:
        return SyntheticSample(image, np.zeros(image.shape[:2], np.uint8), kind, None)
    image, mask = add_defect(image, region, defect, rng)
    return SyntheticSample(image, mask, kind, defect)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _category_rng(seed: int, category: str) -> np.random.Generator:
    # Stable across runs and independent of category order.
    return np.random.default_rng([seed, sum(ord(c) * 131**i for i, c in enumerate(category)) % 2**31])


def make_synthetic_dataset(
    root: str | Path,
    layout: str = "mvtec",
    categories: Iterable[str] = ("washer", "tile"),
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 2,
    defects: Iterable[str] = ("scratch", "spot"),
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
) -> Path:
    """Write a synthetic dataset in a real dataset's on-disk layout; returns its root.

    `n_test_defect` images are drawn per defect kind per category. Layouts:
    - `mvtec`: `<cat>/train/good/NNN.png`, `<cat>/test/<defect|good>/NNN.png`,
      `<cat>/ground_truth/<defect>/NNN_mask.png` (MVTec AD; MPDD, GoodsAD and DTD-Synthetic share it).
    - `folder`: a customer station layout, `normal/`, `anomalous/`, `masks/<same stem>.png`;
      train and test images both go to `normal/`.
    """
    root = Path(root)
    categories = list(categories)
    defects = list(defects)
    for cat in categories:
        if cat not in PART_KINDS:
            raise ValueError(f"unknown category {cat!r}; synthetic part kinds: {', '.join(PART_KINDS)}")
    writer = _WRITERS.get(layout)
    if writer is None:
        raise ValueError(f"unknown synthetic layout {layout!r}; known: {', '.join(sorted(_WRITERS))}")
    for cat in categories:
        rng = _category_rng(seed, cat)
        train = [make_sample(cat, None, rng, size) for _ in range(n_train)]
        good = [make_sample(cat, None, rng, size) for _ in range(n_test_good)]
        bad = {d: [make_sample(cat, d, rng, size) for _ in range(n_test_defect)] for d in defects}
        writer(root, cat, train, good, bad)
    return root


def _write_mvtec(root: Path, cat: str, train, good, bad) -> None:
    for i, s in enumerate(train):
        _save(s.image, root / cat / "train" / "good" / f"{i:03d}.png")
    for i, s in enumerate(good):
        _save(s.image, root / cat / "test" / "good" / f"{i:03d}.png")
    for defect, samples in bad.items():
        for i, s in enumerate(samples):
            _save(s.image, root / cat / "test" / defect / f"{i:03d}.png")
            _save(s.mask, root / cat / "ground_truth" / defect / f"{i:03d}_mask.png")


def _write_folder(root: Path, cat: str, train, good, bad) -> None:
    for i, s in enumerate([*train, *good]):
        _save(s.image, root / "normal" / f"{cat}_{i:03d}.png")
    for defect, samples in bad.items():
        for i, s in enumerate(samples):
            stem = f"{cat}_{defect}_{i:03d}"
            _save(s.image, root / "anomalous" / f"{stem}.png")
            _save(s.mask, root / "masks" / f"{stem}.png")


_WRITERS = {"mvtec": _write_mvtec, "folder": _write_folder}
