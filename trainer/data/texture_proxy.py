"""A public real-image proxy for the screening gate: real textures with synthetic defects pasted in.

The photographs are the texture images scikit-image ships inside its wheel (`skimage/data/brick.png`,
`grass.png`, `gravel.png`: 512×512 gray photographs), so tests and benches get real camera texture
with no download. Each texture is one category. Tiles are cut at random positions, flips and
quarter turns; the fitting images come from the left 60% of the photograph and the test images
from the right 40%, so no test tile shares pixels with a tile fitted on. Defects are pasted into
tiles with soft edges, and each gets its mask:

- `scratch`: a thin bright or dark polyline;
- `blob`: an elliptical stain that darkens or lightens the texture;
- `missing`: a region whose texture is replaced by a flat fill (a chipped or missing piece).

Written in the generic folder layout `adfm-data` reads, one category per texture:

    ROOT/fit/<texture>/{normal,anomalous,masks}/*.png    fit + calibrate (a few known defective parts)
    ROOT/test/<texture>/{normal,anomalous,masks}/*.png   evaluate

Run: `python -m adfm.trainer.data.texture_proxy OUT [--tile 128] [--fit-normal 60] ...`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "blob", "missing")
#: Share of the photograph's width that fitting tiles come from; test tiles come from the rest.
FIT_SHARE = 0.6


class ProxyError(ValueError):
    """A proxy that cannot be made; the message names the setting."""


@dataclass(frozen=True)
class ProxyRoots:
    """Where one texture's fit and test folders are."""

    texture: str
    fit: Path
    test: Path


def texture_image(name: str) -> np.ndarray:
    """The bundled scikit-image photograph `name` as 2-D uint8 (no download: the wheel ships it)."""
    if name not in TEXTURES:
        raise ProxyError(f"unknown texture {name!r}; known: {', '.join(TEXTURES)}")
    try:
        from skimage import data
    except ImportError as exc:
        raise ProxyError("the texture proxy needs scikit-image (trainer extra)") from exc
    image = np.asarray(getattr(data, name)())
    if image.ndim == 3:
        image = image[..., :3].mean(axis=2).astype(np.uint8)
    return image


def _tile(photo: np.ndarray, tile: int, x_range: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    h = photo.shape[0]
    x0 = int(rng.integers(x_range[0], x_range[1] - tile + 1))
    y0 = int(rng.integers(0, h - tile + 1))
    t = photo[y0 : y0 + tile, x0 : x0 + tile]
    t = np.rot90(t, int(rng.integers(4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    return np.ascontiguousarray(t)


def _soft(mask: np.ndarray, sigma: float) -> np.ndarray:
    import cv2

    return cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma) if sigma > 0 else mask.astype(np.float32)


def paste_defect(tile: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(tile with a `kind` defect, its binary mask as uint8 0/255)."""
    import cv2

    n = tile.shape[0]
    img = tile.astype(np.float32)
    shape = np.zeros(tile.shape, np.uint8)
    lo, hi = float(np.percentile(img, 2)), float(np.percentile(img, 98))
    if kind == "scratch":
        pts = [rng.uniform(0.15 * n, 0.85 * n, 2)]
        for _ in range(int(rng.integers(1, 4))):
            step = rng.normal(0, 0.2 * n, 2)
            pts.append(np.clip(pts[-1] + step, 0.05 * n, 0.95 * n))
        width = max(1, round(n / 96))
        cv2.polylines(shape, [np.round(np.array(pts)).astype(np.int32)], False, 1, width, cv2.LINE_AA)
        alpha = _soft(shape, 0.6)
        value = hi + 0.4 * (255 - hi) if rng.random() < 0.5 else lo * 0.5
        out = img * (1 - alpha) + value * alpha
    elif kind == "blob":
        centre = tuple(int(v) for v in rng.uniform(0.25 * n, 0.75 * n, 2))
        axes = tuple(int(v) for v in rng.uniform(0.05 * n, 0.14 * n, 2))
        cv2.ellipse(shape, centre, axes, float(rng.uniform(0, 180)), 0, 360, 1, -1)
        alpha = _soft(shape, n / 64)
        gain = 0.45 if rng.random() < 0.5 else 1.6
        out = img * (1 - alpha) + np.clip(img * gain, 0, 255) * alpha
    elif kind == "missing":
        k = int(rng.integers(5, 8))
        centre = rng.uniform(0.3 * n, 0.7 * n, 2)
        angles = np.sort(rng.uniform(0, 2 * np.pi, k))
        radii = rng.uniform(0.06 * n, 0.14 * n, k)
        poly = centre + np.c_[np.cos(angles) * radii, np.sin(angles) * radii]
        cv2.fillPoly(shape, [np.round(poly).astype(np.int32)], 1)
        alpha = _soft(shape, 0.8)
        fill = float(np.median(img)) + float(rng.normal(0, 6))
        out = img * (1 - alpha) + fill * alpha
    else:
        raise ProxyError(f"unknown defect {kind!r}; known: {', '.join(DEFECTS)}")
    mask = ((alpha > 0.25) * 255).astype(np.uint8)
    if not mask.any():  # a defect too thin to show: mark its drawn pixels
        mask = (shape > 0).astype(np.uint8) * 255
    return np.clip(np.round(out), 0, 255).astype(np.uint8), mask


def _write(root: Path, tiles: list[np.ndarray], defects: list[tuple[np.ndarray, np.ndarray, str]]) -> None:
    from PIL import Image

    for sub in ("normal", "anomalous", "masks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(tiles):
        Image.fromarray(np.repeat(t[..., None], 3, axis=2)).save(root / "normal" / f"{i:03d}.png")
    for i, (t, mask, kind) in enumerate(defects):
        name = f"{i:03d}_{kind}.png"
        Image.fromarray(np.repeat(t[..., None], 3, axis=2)).save(root / "anomalous" / name)
        Image.fromarray(mask).save(root / "masks" / name)


def make_texture_proxy(
    root: str | Path,
    textures: Sequence[str] = TEXTURES,
    tile: int = 128,
    fit_normal: int = 60,
    fit_anomalous: int = 9,
    test_normal: int = 30,
    test_anomalous: int = 30,
    seed: int = 0,
) -> list[ProxyRoots]:
    """Write the proxy under `root` (layout in the module docstring); returns each texture's folders."""
    root = Path(root)
    if tile < 32 or tile > 256:
        raise ProxyError(f"tile must be 32–256 pixels, got {tile}")
    if fit_normal < 3 or test_normal < 1 or test_anomalous < 1 or fit_anomalous < 0:
        raise ProxyError("need ≥ 3 fitting normal tiles, ≥ 1 test normal and ≥ 1 test anomalous tile")
    out = []
    for t_index, name in enumerate(textures):
        photo = texture_image(name)
        w = photo.shape[1]
        split = round(FIT_SHARE * w)
        if split < tile or w - split < tile:
            raise ProxyError(f"texture {name}: {w} px wide is too narrow for {tile}-px tiles on both sides")
        rng = np.random.default_rng([seed, t_index])
        folders = ProxyRoots(name, root / "fit" / name, root / "test" / name)
        for folder, x_range, n_good, n_bad in (
            (folders.fit, (0, split), fit_normal, fit_anomalous),
            (folders.test, (split, w), test_normal, test_anomalous),
        ):
            good = [_tile(photo, tile, x_range, rng) for _ in range(n_good)]
            bad = []
            for i in range(n_bad):
                kind = DEFECTS[i % len(DEFECTS)]
                image, mask = paste_defect(_tile(photo, tile, x_range, rng), kind, rng)
                bad.append((image, mask, kind))
            _write(folder, good, bad)
        out.append(folders)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m adfm.trainer.data.texture_proxy", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--texture", dest="textures", action="append", choices=TEXTURES,
                    help="repeatable (default: all)")
    ap.add_argument("--tile", type=int, default=128)
    ap.add_argument("--fit-normal", type=int, default=60)
    ap.add_argument("--fit-anomalous", type=int, default=9)
    ap.add_argument("--test-normal", type=int, default=30)
    ap.add_argument("--test-anomalous", type=int, default=30)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    try:
        roots = make_texture_proxy(args.out, args.textures or TEXTURES, args.tile, args.fit_normal,
                                   args.fit_anomalous, args.test_normal, args.test_anomalous, args.seed)
    except ProxyError as exc:
        print(f"texture proxy: {exc}", file=sys.stderr)
        return 2
    for r in roots:
        print(f"{r.texture}: fit {r.fit}  test {r.test}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
