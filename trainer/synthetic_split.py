"""A labelled synthetic training split, built on demand for the tiny-synthetic run and benchmarks.

Real datasets put their defects in the test folders; GRPO needs normal and anomalous parts in
one training split, each with its defect box. This writes synthetic parts (from
`adfm.synthetic`) with their masks, one drawn defect per anomalous image, and a split
manifest of `Sample` records whose boxes are the masks' pseudo-boxes (`adfm.trainer.data.boxes`),
in original pixels.
Each sample's reference is a separate normal part of the same category.
"""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

from adfm.synthetic import SYNTHETIC_VERSION, make_sample

from .config import SyntheticSection
from .data.boxes import pseudo_boxes
from .data.records import Sample, iter_manifest, write_manifest

MANIFEST = "split.jsonl"
PARAMS = "split-params.json"


def _save(array: np.ndarray, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return str(path.resolve())


def build_synthetic_split(spec: SyntheticSection, split: str = "train") -> Path:
    """Write images and the manifest under `spec.root/<split>`; reuse them when built with the same spec."""
    root = Path(spec.root) / split
    params = json.dumps({"spec": spec.model_dump(mode="json"), "split": split, "generator": SYNTHETIC_VERSION},
                        sort_keys=True)
    digest = hashlib.sha256(params.encode()).hexdigest()
    manifest = root / MANIFEST
    marker = root / PARAMS
    if manifest.is_file() and marker.is_file() and json.loads(marker.read_text()).get("sha256") == digest:
        try:
            if all(Path(s.image).is_file() for s in iter_manifest(manifest)):
                return manifest
        except ValueError:
            pass  # a damaged manifest is rebuilt below
    samples: list[Sample] = []
    size = (spec.image_size, spec.image_size)
    for cat in spec.categories:
        rng = np.random.default_rng([spec.seed, zlib.crc32(split.encode()), zlib.crc32(cat.encode())])
        ref = make_sample(cat, None, rng, size)
        ref_path = _save(ref.image, root / cat / "reference.png")
        for i in range(spec.normal_per_category):
            s = make_sample(cat, None, rng, size)
            samples.append(
                Sample(
                    id=f"synthetic/{cat}/{split}/good/{i:03d}",
                    image=_save(s.image, root / cat / "good" / f"{i:03d}.png"),
                    dataset="synthetic",
                    category=cat,
                    split=split,
                    label="normal",
                    boxes=[],
                    width=size[0],
                    height=size[1],
                    reference=ref_path,
                )
            )
        for i in range(spec.anomalous_per_category):
            defect = spec.defects[i % len(spec.defects)]
            s = make_sample(cat, defect, rng, size, spec.defect_scale)
            stem = f"{defect}_{i:03d}"
            samples.append(
                Sample(
                    id=f"synthetic/{cat}/{split}/{defect}/{i:03d}",
                    image=_save(s.image, root / cat / defect / f"{stem}.png"),
                    dataset="synthetic",
                    category=cat,
                    split=split,
                    label="anomalous",
                    defect_type=defect,
                    masks=[_save(s.mask, root / cat / "masks" / f"{stem}.png")],
                    boxes=pseudo_boxes(s.mask),
                    width=size[0],
                    height=size[1],
                    reference=ref_path,
                )
            )
    if not samples:
        raise ValueError(f"synthetic split under {root} would be empty: set normal/anomalous_per_category")
    write_manifest(samples, manifest)
    marker.write_text(json.dumps({"sha256": digest, "params": json.loads(params)}, indent=2))
    return manifest
