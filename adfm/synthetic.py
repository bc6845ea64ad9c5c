"""Synthetic inspection data: textured parts with drawn defects and their masks.

Real datasets cannot be downloaded on the build machines, so tests, the demo station and the
benchmarks use these images, written in each real dataset's on-disk layout so that the same
adapters read them as read the real thing. Everything is deterministic by seed.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

PART_KINDS = ("washer", "tile", "pill", "fabric")
DEFECT_KINDS = ("scratch", "spot", "crack", "missing")

#: The tiny model's synthetic task: high-contrast defects a tiny vision tower can see, and their
#: sizes from easy to hard. Its warm start trains through the sizes in order; the demo station
#: shows parts at the last one.
TASK_DEFECTS = ("spot", "missing")
TASK_DEFECT_SCALES = (2.5, 1.8, 1.4)
#: Version of what the generator draws; caches of generated splits key on it. 2: masks hold only the
#: part's own pixels.
SYNTHETIC_VERSION = 2


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
    image, region, _ = _render(kind, rng, size)
    return image, region


def _render(kind: str, rng: np.random.Generator, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A defect-free part: (image, region where defects may go, the part's own pixels)."""
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = w / 2 + rng.uniform(-0.03, 0.03) * w
    cy = h / 2 + rng.uniform(-0.03, 0.03) * h
    fine = _noise(rng, h, w, 4)
    coarse = _noise(rng, h, w, 32)
    if kind == "washer":
        r = np.hypot(xx - cx, yy - cy)
        outer, inner = 0.42 * min(w, h), 0.16 * min(w, h)
        region = material = (r < outer) & (r > inner)
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
        material = np.ones((h, w), dtype=bool)
        region = material.copy()
        region[:8, :] = region[-8:, :] = False
        region[:, :8] = region[:, -8:] = False
    elif kind == "pill":
        ax, ay = 0.40 * w, 0.22 * h
        ang = rng.uniform(-0.2, 0.2)
        dx, dy = xx - cx, yy - cy
        u = dx * math.cos(ang) + dy * math.sin(ang)
        v = -dx * math.sin(ang) + dy * math.cos(ang)
        e = (u / ax) ** 2 + (v / ay) ** 2
        inside = material = e < 1.0
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
        material = np.ones((h, w), dtype=bool)
        region = material.copy()
        region[:8, :] = region[-8:, :] = False
        region[:, :8] = region[:, -8:] = False
    else:
        raise ValueError(f"unknown part kind {kind!r}; known: {', '.join(PART_KINDS)}")
    return np.clip(img, 0, 255).astype(np.uint8), region, material


def _pick_point(rng: np.random.Generator, region: np.ndarray, margin: int) -> tuple[int, int]:
    inner = region.copy()
    inner[:margin, :] = inner[-margin:, :] = False
    inner[:, :margin] = inner[:, -margin:] = False
    ys, xs = np.nonzero(inner if inner.any() else region)
    i = int(rng.integers(len(xs)))
    return int(xs[i]), int(ys[i])


def add_defect(
    image: np.ndarray, region: np.ndarray, defect: str, rng: np.random.Generator, scale: float = 1.0,
    material: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Draw a defect of the given kind inside `region`; returns (new image, 0/255 uint8 mask).

    With `material` (the part's own pixels), the defect is drawn on those alone and its mask holds
    only them: a missing piece across a washer's rim marks the rim it took away, not the background or
    the hole beside it, where there was nothing to take away and nothing an inspector could box.

    `scale` multiplies the defect's size (and a scratch's or crack's width): > 1 gives the large,
    easy defects a tiny model's warm start begins with.
    """
    if not scale > 0:
        raise ValueError(f"defect scale must be > 0, got {scale}")
    h, w = region.shape
    s = min(w, h) * scale
    mask_img = Image.new("L", (w, h), 0)
    md = ImageDraw.Draw(mask_img)
    out = image.astype(np.float32)
    x, y = _pick_point(rng, region, margin=max(4, int(s // 8)))
    if defect == "scratch":
        length = rng.uniform(0.18, 0.32) * s
        ang = rng.uniform(0, math.pi)
        x2, y2 = x + length * math.cos(ang), y + length * math.sin(ang)
        md.line([(x, y), (x2, y2)], fill=255, width=max(2, int(s // 80)))
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
        md.line(pts, fill=255, width=max(2, int(s // 100)), joint="curve")
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
    if material is not None:
        mask_img = Image.fromarray(np.where(material, np.asarray(mask_img), 0).astype(np.uint8))
    soft = np.asarray(mask_img.filter(ImageFilter.GaussianBlur(0.8)), dtype=np.float32)[..., None] / 255.0
    out = out * (1 - alpha * soft) + color[None, None, :] * (alpha * soft)
    mask = np.where(np.asarray(mask_img) > 0, 255, 0).astype(np.uint8)
    return np.clip(out, 0, 255).astype(np.uint8), mask


def add_mark(image: np.ndarray, region: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Stamp a harmless mark (a small blue ink ring with a bar, like a batch stamp) inside `region`.

    Not a defect: a station's operators would confirm parts with it as good. The gate has never
    seen it, so at first it flags them; the line's learning (adfm.runtime.gate_learning) is tested on it.
    Like a batch stamp it sits at about the same place on every part: the region's point nearest to
    (0.5, 0.25) of the image, moved by up to 4 px.
    """
    h, w = region.shape
    ys, xs = np.nonzero(region)
    i = int(np.argmin((xs - 0.5 * w) ** 2 + (ys - 0.25 * h) ** 2))
    x, y = int(xs[i] + rng.integers(-4, 5)), int(ys[i] + rng.integers(-4, 5))
    r = 0.035 * min(w, h)
    ink = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(ink)
    d.ellipse([x - r, y - r, x + r, y + r], outline=255, width=2)
    d.line([(x - r * 0.6, y), (x + r * 0.6, y)], fill=255, width=2)
    soft = np.asarray(ink.filter(ImageFilter.GaussianBlur(0.6)), dtype=np.float32)[..., None] / 255.0
    color = np.array([40.0, 70.0, 170.0])
    out = image.astype(np.float32) * (1 - 0.8 * soft) + color * (0.8 * soft)
    return np.clip(out, 0, 255).astype(np.uint8)


def relight(image: np.ndarray, gain: float, offset: float = 0.0) -> np.ndarray:
    """The same part under other lighting: pixel values × `gain` + `offset`, clipped to 0–255."""
    return np.clip(image.astype(np.float32) * gain + offset, 0, 255).astype(np.uint8)


def make_sample(
    kind: str,
    defect: str | None,
    rng: np.random.Generator,
    size: tuple[int, int] = (256, 256),
    defect_scale: float = 1.0,
) -> SyntheticSample:
    image, region, material = _render(kind, rng, size)
    if defect is None:
        return SyntheticSample(image, np.zeros(image.shape[:2], np.uint8), kind, None)
    image, mask = add_defect(image, region, defect, rng, scale=defect_scale, material=material)
    return SyntheticSample(image, mask, kind, defect)


def _save(array: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _category_rng(seed: int, category: str) -> np.random.Generator:
    # Stable across runs and independent of category order.
    return np.random.default_rng([seed, sum(ord(c) * 131**i for i, c in enumerate(category)) % 2**31])


#: Real benchmark category names the writers accept, and the synthetic part drawn for each, so a
#: synthetic MPDD or VisA has the category folders layout detection knows them by.
REAL_CATEGORY_KINDS = {
    "bottle": "washer", "metal_nut": "washer", "carpet": "fabric", "leather": "fabric",
    "bracket_black": "washer", "metal_plate": "tile", "connector": "pill",
    "drink_can": "washer", "food_box": "tile", "cigarette_box": "tile",
    "Woven_001": "fabric", "Mesh_114": "tile", "Blotchy_099": "fabric",
    "candle": "pill", "pcb1": "tile", "capsules": "pill",
    "breakfast_box": "tile", "pushpins": "washer", "juice_bottle": "pill",
    "Class1": "fabric", "Class2": "tile", "Class3": "washer",
}

#: Categories each layout gets when none are given (real names where the layout is told by them).
DEFAULT_CATEGORIES = {
    "mvtec": ("washer", "tile"),
    "folder": ("washer", "tile"),
    "folder_csv": ("washer", "tile"),
    "mpdd": ("bracket_black", "metal_plate"),
    "goodsad": ("drink_can", "food_box"),
    "dtd": ("Woven_001", "Mesh_114"),
    "visa": ("candle", "pcb1"),
    "mvtec_loco": ("breakfast_box", "pushpins"),
    "dagm": ("Class1", "Class2"),
    "mmad": ("bottle", "carpet"),
}


def part_kind(category: str) -> str:
    """The synthetic part drawn for a category name (a part kind itself, or a known real name)."""
    if category in PART_KINDS:
        return category
    kind = REAL_CATEGORY_KINDS.get(category)
    if kind is None:
        raise ValueError(
            f"unknown category {category!r}; synthetic part kinds: {', '.join(PART_KINDS)}; "
            f"real names: {', '.join(sorted(REAL_CATEGORY_KINDS))}"
        )
    return kind


def make_synthetic_dataset(
    root: str | Path,
    layout: str = "mvtec",
    categories: Iterable[str] | None = None,
    n_train: int = 8,
    n_test_good: int = 4,
    n_test_defect: int = 2,
    defects: Iterable[str] = ("scratch", "spot"),
    size: tuple[int, int] = (256, 256),
    seed: int = 0,
    defect_scale: float = 1.0,
) -> Path:
    """Write a synthetic dataset in a real dataset's on-disk layout; returns its root.

    `n_test_defect` images are drawn per defect kind per category. `categories` are part kinds
    (`PART_KINDS`) or real category names (`REAL_CATEGORY_KINDS`); None gives the layout's
    `DEFAULT_CATEGORIES`; `defect_scale` enlarges the drawn defects (see `add_defect`). Layouts,
    each with the real dataset's quirks:
    - `mvtec`: `<cat>/train/good/NNN.png`, `<cat>/test/<defect|good>/NNN.png`,
      `<cat>/ground_truth/<defect>/NNN_mask.png` (MVTec AD; MPDD, GoodsAD and DTD-Synthetic share it).
    - `mpdd`: the same, with MPDD category names.
    - `goodsad`: the same with GoodsAD names, JPG images and masks named `NNN.png` (no `_mask`).
    - `dtd`: the same with DTD-Synthetic names; every defect kind goes to `test/bad/`.
    - `mvtec_loco`: `train/good`, `validation/good` (the last two training images), `test/good`,
      `test/{structural,logical}_anomalies/NNN.png` (defect kinds alternate between the two) and
      several masks per image, `ground_truth/<type>/NNN/000.png, 001.png` (the defect split in two).
    - `visa`: `split_csv/1cls.csv` over `<cat>/Data/Images/{Normal,Anomaly}/*.JPG` and
      `<cat>/Data/Masks/Anomaly/*.png` whose anomalous pixels hold small class values (not 255),
      plus `<cat>/image_anno.csv` with the defect names.
    - `dagm`: `ClassN/{Train,Test}/NNNN.PNG` in 8-bit gray, `Label/NNNN_label.PNG`,
      `Label/Labels.txt`; Train holds the normal training images and the first defective image of
      each kind, Test the rest.
    - `mmad`: `mmad.json` over `DS-MVTec/<cat>/image/<defect|good>/NNN.png` with RGB masks
      `DS-MVTec/<cat>/rbg_mask/<defect>/NNN_rbg_mask.png` (mask_path relative to the image
      folder's parent), templates from `DS-MVTec/<cat>/train/good/`, yes/no and defect questions.
    - `folder`: a customer station layout, `normal/`, `anomalous/`, `masks/<same stem>.png`;
      train and test images both go to `normal/`.
    - `folder_csv`: `images/*.png`, `masks/*.png` and `labels.csv` with `path,label,mask`.
    """
    root = Path(root)
    writer = _WRITERS.get(layout)
    if writer is None:
        raise ValueError(f"unknown synthetic layout {layout!r}; known: {', '.join(sorted(_WRITERS))}")
    categories = list(categories) if categories is not None else list(DEFAULT_CATEGORIES[layout])
    defects = list(defects)
    kinds = {cat: part_kind(cat) for cat in categories}
    for cat in categories:
        rng = _category_rng(seed, cat)
        kind = kinds[cat]
        train = [make_sample(kind, None, rng, size) for _ in range(n_train)]
        good = [make_sample(kind, None, rng, size) for _ in range(n_test_good)]
        bad = {d: [make_sample(kind, d, rng, size, defect_scale) for _ in range(n_test_defect)] for d in defects}
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


def _write_mvtec_variant(root: Path, cat: str, train, good, bad, ext: str, mask_suffix: str, bad_dir=None) -> None:
    for i, s in enumerate(train):
        _save(s.image, root / cat / "train" / "good" / f"{i:03d}{ext}")
    for i, s in enumerate(good):
        _save(s.image, root / cat / "test" / "good" / f"{i:03d}{ext}")
    counters: dict[str, int] = {}
    for defect, samples in bad.items():
        folder = bad_dir or defect
        for s in samples:
            i = counters.get(folder, 0)
            counters[folder] = i + 1
            _save(s.image, root / cat / "test" / folder / f"{i:03d}{ext}")
            _save(s.mask, root / cat / "ground_truth" / folder / f"{i:03d}{mask_suffix}.png")


def _write_mpdd(root: Path, cat: str, train, good, bad) -> None:
    _write_mvtec_variant(root, cat, train, good, bad, ".png", "_mask")


def _write_goodsad(root: Path, cat: str, train, good, bad) -> None:
    _write_mvtec_variant(root, cat, train, good, bad, ".jpg", "")


def _write_dtd(root: Path, cat: str, train, good, bad) -> None:
    _write_mvtec_variant(root, cat, train, good, bad, ".png", "_mask", bad_dir="bad")


def _split_mask(mask: np.ndarray) -> list[np.ndarray]:
    """Split a defect mask into a left and a right part (MVTec LOCO annotates one image with several)."""
    xs = np.nonzero(mask.any(axis=0))[0]
    if len(xs) < 2:
        return [mask]
    cut = int(xs[len(xs) // 2])
    left, right = mask.copy(), mask.copy()
    left[:, cut:] = 0
    right[:, :cut] = 0
    return [m for m in (left, right) if m.any()]


def _write_mvtec_loco(root: Path, cat: str, train, good, bad) -> None:
    n_val = min(2, max(0, len(train) - 1))
    for i, s in enumerate(train[: len(train) - n_val]):
        _save(s.image, root / cat / "train" / "good" / f"{i:03d}.png")
    for i, s in enumerate(train[len(train) - n_val:]):
        _save(s.image, root / cat / "validation" / "good" / f"{i:03d}.png")
    for i, s in enumerate(good):
        _save(s.image, root / cat / "test" / "good" / f"{i:03d}.png")
    counters: dict[str, int] = {}
    for k, samples in enumerate(bad.values()):
        folder = ("structural_anomalies", "logical_anomalies")[k % 2]
        for s in samples:
            i = counters.get(folder, 0)
            counters[folder] = i + 1
            _save(s.image, root / cat / "test" / folder / f"{i:03d}.png")
            for j, part in enumerate(_split_mask(s.mask)):
                _save(part, root / cat / "ground_truth" / folder / f"{i:03d}" / f"{j:03d}.png")


def _append_csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    with path.open("a", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        if new:
            w.writerow(header)
        w.writerows(rows)


def _write_visa(root: Path, cat: str, train, good, bad) -> None:
    rows, anno = [], []
    normal_dir = Path(cat) / "Data" / "Images" / "Normal"
    for i, s in enumerate([*train, *good]):
        rel = normal_dir / f"{i:04d}.JPG"
        _save(s.image, root / rel)
        rows.append([cat, "train" if i < len(train) else "test", "normal", rel.as_posix(), ""])
    i = 0
    for k, (defect, samples) in enumerate(bad.items()):
        for s in samples:
            rel = Path(cat) / "Data" / "Images" / "Anomaly" / f"{i:03d}.JPG"
            mrel = Path(cat) / "Data" / "Masks" / "Anomaly" / f"{i:03d}.png"
            _save(s.image, root / rel)
            _save(np.where(s.mask > 0, k + 1, 0).astype(np.uint8), root / mrel)
            rows.append([cat, "test", "anomaly", rel.as_posix(), mrel.as_posix()])
            anno.append([rel.as_posix(), defect, mrel.as_posix()])
            i += 1
    _append_csv(root / "split_csv" / "1cls.csv", ["object", "split", "label", "image", "mask"], rows)
    _append_csv(root / cat / "image_anno.csv", ["image", "label", "mask"], anno)


def _write_dagm(root: Path, cat: str, train, good, bad) -> None:
    first_bad = [samples[0] for samples in bad.values() if samples]
    rest_bad = [s for samples in bad.values() for s in samples[1:]]
    for phase, normals, defective in (("Train", train, first_bad), ("Test", good, rest_bad)):
        lines = [str(1)]
        for i, s in enumerate([*normals, *defective], start=1):
            name = f"{i:04d}.PNG"
            _save(np.asarray(Image.fromarray(s.image).convert("L")), root / cat / phase / name)
            if s.anomalous:
                label = f"{i:04d}_label.PNG"
                _save(s.mask, root / cat / phase / "Label" / label)
                lines.append(f"{i}\t1\t{name}\t0\t{label}")
            else:
                lines.append(f"{i}\t0\t{name}\t0\t0")
        (root / cat / phase / "Label").mkdir(parents=True, exist_ok=True)
        (root / cat / phase / "Label" / "Labels.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_mmad(root: Path, cat: str, train, good, bad, source: str = "DS-MVTec") -> None:
    index_path = root / "mmad.json"
    index = json.loads(index_path.read_text(encoding="utf-8")) if index_path.exists() else {}
    base = Path(source) / cat
    templates = []
    for i, s in enumerate(train):
        rel = base / "train" / "good" / f"{i:03d}.png"
        _save(s.image, root / rel)
        templates.append(rel.as_posix())

    def question(anomalous: bool, defect: str | None) -> list[dict]:
        qs = [{"Question": "Is there any defect in the object?", "Answer": "A" if anomalous else "B",
               "Options": {"A": "Yes.", "B": "No."}, "type": "Anomaly Detection"}]
        if anomalous:
            qs.append({"Question": "What type of defect is present?", "Answer": "A",
                       "Options": {"A": f"{defect}.", "B": "None."}, "type": "Defect Classification"})
        return qs

    for i, s in enumerate(good):
        rel = base / "image" / "good" / f"{i:03d}.png"
        _save(s.image, root / rel)
        index[rel.as_posix()] = {
            "conversation": question(False, None),
            "similar_templates": templates[i % len(templates):] + templates[: i % len(templates)],
            "random_templates": list(reversed(templates)),
        }
    for defect, samples in bad.items():
        for i, s in enumerate(samples):
            rel = base / "image" / defect / f"{i:03d}.png"
            _save(s.image, root / rel)
            rgb = np.stack([s.mask, np.zeros_like(s.mask), s.mask // 2], axis=-1)  # colour-coded, RGB
            _save(rgb, root / base / "rbg_mask" / defect / f"{i:03d}_rbg_mask.png")
            index[rel.as_posix()] = {
                "conversation": question(True, defect),
                "mask_path": f"../rbg_mask/{defect}/{i:03d}_rbg_mask.png",
                "similar_templates": templates,
                "random_templates": list(reversed(templates)),
            }
    index_path.parent.mkdir(parents=True, exist_ok=True)
    index_path.write_text(json.dumps(index, indent=1), encoding="utf-8")


def _write_folder_csv(root: Path, cat: str, train, good, bad) -> None:
    rows = []
    for i, s in enumerate([*train, *good]):
        rel = Path("images") / f"{cat}_good_{i:03d}.png"
        _save(s.image, root / rel)
        rows.append([rel.as_posix(), "normal", ""])
    for defect, samples in bad.items():
        for i, s in enumerate(samples):
            rel = Path("images") / f"{cat}_{defect}_{i:03d}.png"
            mrel = Path("masks") / f"{cat}_{defect}_{i:03d}.png"
            _save(s.image, root / rel)
            _save(s.mask, root / mrel)
            rows.append([rel.as_posix(), "anomalous", mrel.as_posix()])
    _append_csv(root / "labels.csv", ["path", "label", "mask"], rows)


_WRITERS = {
    "mvtec": _write_mvtec,
    "folder": _write_folder,
    "folder_csv": _write_folder_csv,
    "mpdd": _write_mpdd,
    "goodsad": _write_goodsad,
    "dtd": _write_dtd,
    "mvtec_loco": _write_mvtec_loco,
    "visa": _write_visa,
    "dagm": _write_dagm,
    "mmad": _write_mmad,
}

#: Every layout `make_synthetic_dataset` can write.
SYNTHETIC_LAYOUTS = tuple(sorted(_WRITERS))
