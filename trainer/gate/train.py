"""One gate training run: data → fit → ONNX → parity check → calibration → metadata.

Files written next to `--out gate.onnx`: `gate.json` (the metadata the line reads) and
`gate.train.jsonl` (the normal images fitted on, as `Sample` records). The metadata's `training`
records the sha256 of every image fitted on (`fit_images`) and of every image that set the
threshold (`calibration_images`: held-out normal and anomalous), so `adfm-eval gate` leaves all of
them out of its figures wherever they are found. With the pretrained backbone, `model.backbone`
records the weights' package, version and file hash.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

import adfm
from adfm.manifest import sha256_file
from adfm.runtime.gate import GateMetadata, GateSession, metadata_path, write_metadata
from adfm.runtime.gate_bank import bank_digest

from ..data.records import Sample, write_manifest
from .calibrate import calibrate, display_range
from .config import STRIDE, GateConfigError, GateTrainConfig
from .data import read_samples, split_for_gate
from .export import OPSET, check_parity, export_onnx
from .fit import FitReport, choose_input_size, fit_gate, read_resized
from .model import METHODS, PatchKNNGate

PARITY_IMAGES = 4


def train_manifest_path(onnx_path: str | Path) -> Path:
    """`gate.onnx` → `gate.train.jsonl`: the images the gate was fitted on."""
    p = Path(onnx_path)
    return p.with_name(p.stem + ".train.jsonl")


@dataclass
class GateTrainResult:
    onnx_path: Path
    metadata_path: Path
    train_manifest: Path
    metadata: GateMetadata
    fit: FitReport
    calibration_auroc: float | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _score_all(
    session: GateSession, samples: list[Sample], size: tuple[int, int], batch: int, progress: bool, desc: str
) -> tuple[np.ndarray, np.ndarray, list[str], list[Sample]]:
    """(scores, maps, read errors, samples scored) of samples through the exported graph."""
    used, images, errors = read_resized(samples, size, progress, desc)
    scores, maps = [], []
    for i in range(0, len(images), batch):
        s, m = session.run(images[i : i + batch].astype(np.float32))
        scores.append(s)
        maps.append(m)
    if not scores:
        return np.zeros(0, np.float32), np.zeros((0, size[1], size[0]), np.float32), errors, used
    return np.concatenate(scores), np.concatenate(maps), errors, used


def image_hashes(samples: list[Sample]) -> list[str]:
    """sha256 of each sample's image file, sorted: what evaluation matches to leave them out."""
    return sorted({sha256_file(s.image) for s in samples})


def no_anomaly_warning(calibration, threshold: float) -> str:
    """The loud word on a threshold set without a single known defective part."""
    measured = (f"; on the {calibration.n_normal} held-out good parts it sends "
                f"{calibration.normal_flag_rate:.0%}" if calibration.normal_flag_rate is not None else "")
    return (
        f"NO DEFECTIVE PARTS TO CALIBRATE ON: the threshold {threshold:.4g} is the {calibration.target:.0%} "
        f"quantile of held-out good parts' scores. Expected cost: about {1 - calibration.target:.0%} of good "
        f"parts go to the VLM{measured}. How many defects it lets pass unexamined is UNKNOWN. Put known "
        "defective parts in ROOT/anomalous and train again before trusting `screen` mode."
    )


def _calibration_auroc(normal: np.ndarray, anomalous: np.ndarray) -> float | None:
    if not normal.size or not anomalous.size:
        return None
    from ..evaluation.metrics import auroc

    labels = np.r_[np.zeros(normal.size, bool), np.ones(anomalous.size, bool)]
    return auroc(labels, np.r_[normal, anomalous])


def train_gate(cfg: GateTrainConfig) -> GateTrainResult:
    """Fit, export, verify and calibrate a gate; see the module docstring for what is written."""
    samples, notes = read_samples(cfg.data, cfg.layout, cfg.categories)
    data = split_for_gate(samples, cfg.holdout, cfg.seed)
    notes += data.notes
    size = choose_input_size(cfg, data.train)
    gate, fit = fit_gate(cfg, data.train, size)
    notes += [f"not fitted on: {e}" for e in fit.skipped]

    # Built and calibrated under a staging name: a failed run leaves the previous gate (if any) intact.
    onnx_path = Path(cfg.out)
    staging = onnx_path.with_name(f".{onnx_path.name}.partial")
    try:
        export_onnx(gate, staging)
        session = GateSession(staging, threads=cfg.threads)
        _, probe, _ = read_resized(fit.used[:PARITY_IMAGES], size, progress=False)
        parity = check_parity(gate, session, probe.astype(np.float32))
        normal_scores, normal_maps, errors, held_used = _score_all(session, data.holdout, size, cfg.batch_size,
                                                                   cfg.progress, "held-out")
        anomalous_scores, _, errors_a, anomalous_used = _score_all(session, data.anomalous, size, cfg.batch_size,
                                                                   cfg.progress, "anomalous")
        try:
            calibration, threshold = calibrate(normal_scores, anomalous_scores, cfg.target_recall,
                                               cfg.normal_quantile)
        except ValueError as exc:  # every held-out image unreadable: a gate without a threshold must not ship
            raise GateConfigError(f"cannot calibrate the gate: {exc}") from exc
        del session
        os.replace(staging, onnx_path)
    finally:
        staging.unlink(missing_ok=True)
    notes += [f"not calibrated on: {e}" for e in errors + errors_a]

    warnings = [no_anomaly_warning(calibration, threshold)] if calibration.method == "normal_quantile" else []
    manifest = write_manifest(fit.used, train_manifest_path(onnx_path))
    meta = GateMetadata(
        method=METHODS[cfg.backbone],
        onnx_file=onnx_path.name,
        onnx_sha256=sha256_file(onnx_path),
        input_width=size[0],
        input_height=size[1],
        normalization_mean=tuple(float(v) for v in gate.mean.flatten()),
        normalization_std=tuple(float(1.0 / v) for v in gate.inv_std.flatten()),
        threshold=threshold,
        calibration=calibration,
        heatmap_range=display_range(normal_maps, normal_scores, threshold),
        model=_model_settings(cfg, gate),
        training={
            "data": str(Path(cfg.data).absolute()),
            "categories": sorted({s.category for s in fit.used}),
            "n_train": fit.n_images,
            "n_holdout_normal": int(normal_scores.size),
            "n_anomalous": int(anomalous_scores.size),
            "skipped": fit.skipped + errors + errors_a,
            "train_manifest": manifest.name,
            "device": fit.device,
            "fit_seconds": round(fit.seconds, 3),
            "n_candidates": fit.n_candidates,
            "parity_rel_diff": parity,
            "warnings": warnings,
            "fit_images": image_hashes(fit.used),
            "calibration_images": image_hashes(held_used + anomalous_used),
            # the drift monitor's reference on the line (adfm.runtime.gate_drift.reference_scores)
            "holdout_normal_scores": [round(float(v), 6) for v in normal_scores],
        },
        adfm_version=adfm.__version__,
        created_at=datetime.now(UTC),
    )
    meta_path = write_metadata(meta, metadata_path(onnx_path))
    return GateTrainResult(
        onnx_path=onnx_path, metadata_path=meta_path, train_manifest=manifest, metadata=meta, fit=fit,
        calibration_auroc=_calibration_auroc(normal_scores, anomalous_scores), notes=notes, warnings=warnings,
    )


def _model_settings(cfg: GateTrainConfig, gate: PatchKNNGate) -> dict:
    if cfg.backbone == "pretrained":
        from .backbone import provenance

        features = {
            "features": "ImageNet EfficientNet-Lite0 blocks 4 (stride 8) and 10 (stride 16), 3x3 average, "
                        "concatenated on the stride-8 grid",
            "backbone": provenance().as_dict(),
        }
    else:
        features = {"features": "3 random 3x3 stride-2 convolutions, |x|, max-pooled to 1/8, 3x3 average",
                    "width": cfg.width}
    return {
        **features,
        "feature_channels": gate.features.channels,
        "stride": STRIDE,
        "bank_size": gate.bank_size,
        "bank_sha256": bank_digest(gate.bank.numpy()),
        "search_dim": None if gate.bank_proj is None else int(gate.bank_proj.shape[1]),
        "smoothing_sigma": cfg.smoothing_sigma,
        "score": "max of the smoothed patch distance map",
        "projection_dim": cfg.projection_dim,
        "seed": cfg.seed,
        "opset": OPSET,
    }
