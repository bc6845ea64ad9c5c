"""Fitting the gate on normal images: input normalization, patch features, the coreset memory bank.

The pretrained backbone keeps its weights' own input scaling; the random one normalizes by the
training images' channel statistics.

Images are read once, resized with the line's own `preprocess` and kept as uint8 at the input
size (a 256×256 image is 192 kB), so a station's few hundred images fit in memory. Features and
the coreset run on the GPU when there is one.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from adfm.runtime.gate import GateError, preprocess

from ..data.imageio import DataFileError, image_size
from ..data.records import Sample
from .config import GateConfigError, GateTrainConfig, input_size_for
from .data import load_images
from .model import PatchKNNGate, RandomFeatures, greedy_coreset

#: A flat image channel must not blow up the normalization.
MIN_STD = 1.0


@dataclass
class FitReport:
    """What fitting used and skipped."""

    n_images: int
    n_candidates: int
    bank_size: int
    device: str
    seconds: float
    skipped: list[str] = field(default_factory=list)
    used: list[Sample] = field(default_factory=list)


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GateConfigError("--device cuda: no CUDA device is available here")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def choose_input_size(cfg: GateTrainConfig, samples: Sequence[Sample]) -> tuple[int, int]:
    """(width, height): the configured size, or `long_side` at the training images' median aspect."""
    if cfg.input_size is not None:
        return cfg.input_size
    sizes = []
    for s in samples:
        if s.width and s.height:
            sizes.append((s.width, s.height))
            continue
        try:
            sizes.append(image_size(s.image, decode=False))
        except DataFileError:
            continue  # reported when the image is read
    if not sizes:
        raise GateConfigError("none of the training images could be opened")
    return input_size_for(cfg.long_side, sizes)


def read_resized(
    samples: Sequence[Sample], size: tuple[int, int], progress: bool, desc: str = "reading"
) -> tuple[list[Sample], np.ndarray, list[str]]:
    """(samples read, uint8 N×3×H×W at `size`, errors naming the files that could not be read)."""
    from tqdm import tqdm

    w, h = size
    used, arrays, errors = [], [], []
    for item in tqdm(load_images(samples), total=len(samples), desc=desc, unit="img", disable=not progress,
                     leave=False):
        if item.image is None:
            errors.append(item.error)
            continue
        try:
            arrays.append(preprocess(item.image, w, h).astype(np.uint8))
        except GateError as exc:
            errors.append(f"{item.sample.image}: {exc}")
            continue
        used.append(item.sample)
    stacked = np.stack(arrays) if arrays else np.zeros((0, 3, h, w), np.uint8)
    return used, stacked, errors


def channel_stats(images: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std (floored at MIN_STD) of uint8 N×3×H×W images."""
    n = images.shape[0] * images.shape[2] * images.shape[3]
    s = np.zeros(3)
    s2 = np.zeros(3)
    for img in images:
        x = img.reshape(3, -1).astype(np.float64)
        s += x.sum(1)
        s2 += (x * x).sum(1)
    mean = s / n
    std = np.sqrt(np.maximum(s2 / n - mean**2, 0.0))
    return torch.tensor(mean, dtype=torch.float32), torch.tensor(np.maximum(std, MIN_STD), dtype=torch.float32)


def make_features(
    cfg: GateTrainConfig, images: np.ndarray, input_hw: tuple[int, int]
) -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """(feature extractor, per-channel mean, std) for `cfg.backbone`; see the module docstring."""
    if cfg.backbone == "random":
        mean, std = channel_stats(images)
        return RandomFeatures(cfg.width, cfg.seed), mean, std
    from .backbone import NATIVE_MEAN, NATIVE_STD, BackboneUnavailable, PretrainedFeatures

    try:
        features = PretrainedFeatures(input_hw)
    except BackboneUnavailable as exc:
        raise GateConfigError(str(exc)) from exc
    return features, torch.full((3,), NATIVE_MEAN), torch.full((3,), NATIVE_STD)


def fit_gate(cfg: GateTrainConfig, train: Sequence[Sample], size: tuple[int, int]) -> tuple[PatchKNNGate, FitReport]:
    """Fit the gate on the normal images `train` at input `size` (width, height)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    device = resolve_device(cfg.device)
    used, images, errors = read_resized(train, size, cfg.progress)
    if len(used) < 2:
        raise GateConfigError(
            f"only {len(used)} of {len(train)} normal training images could be read; a gate needs 2 or more"
            + (f" (first problem: {errors[0]})" if errors else "")
        )
    w, h = size
    features, mean, std = make_features(cfg, images, (h, w))
    # A gate without a bank yet: used only for its normalization and features.
    probe = PatchKNNGate(features, mean, std, torch.zeros(1, features.channels), (h, w), cfg.smoothing_sigma)
    probe = probe.to(device).eval()
    gen = torch.Generator().manual_seed(cfg.seed)
    per_image = max(1, math.ceil(cfg.max_candidates / len(used)))
    chunks = []
    with torch.no_grad():
        for i in tqdm(range(0, len(used), cfg.batch_size), desc="features", unit="batch",
                      disable=not cfg.progress, leave=False):
            batch = torch.from_numpy(images[i : i + cfg.batch_size]).to(device=device, dtype=torch.float32)
            f = probe.embed(batch)
            f = f.flatten(2).transpose(1, 2)  # B×hw×C
            if f.shape[1] > per_image:
                keep = torch.stack([torch.randperm(f.shape[1], generator=gen)[:per_image] for _ in range(len(f))])
                f = torch.gather(f, 1, keep.to(device)[..., None].expand(-1, -1, f.shape[2]))
            chunks.append(f.reshape(-1, f.shape[2]))
    candidates = torch.cat(chunks)
    picked = greedy_coreset(candidates, cfg.bank_size, cfg.projection_dim, gen, progress=cfg.progress)
    bank = candidates[picked].cpu()
    gate = PatchKNNGate(features.cpu(), mean, std, bank, (h, w), cfg.smoothing_sigma, cfg.search_dim).eval()
    report = FitReport(
        n_images=len(used), n_candidates=int(candidates.shape[0]), bank_size=int(bank.shape[0]),
        device=str(device), seconds=time.perf_counter() - t0, skipped=errors, used=used,
    )
    return gate, report
