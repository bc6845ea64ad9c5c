"""Shared by the gate tests: one gate trained per session on the synthetic station, and fresh data.

A module-level cache (not a fixture) so the several `test_gate_*.py` files share one training run;
the folders live under pytest's session temporary directory.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

_CACHE: dict[str, Path] = {}


def trained_gate(tmp_path_factory: pytest.TempPathFactory, station: Path) -> Path:
    """The .onnx of a gate trained with default settings on the `synthetic_folder` station."""
    if "gate" not in _CACHE:
        from adfm.trainer.gate import GateTrainConfig, train_gate

        out = tmp_path_factory.mktemp("gate") / "gate.onnx"
        train_gate(GateTrainConfig(data=station, out=out, progress=False))
        _CACHE["gate"] = out
    return _CACHE["gate"]


def fresh_station(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second synthetic station (another seed): images no gate was fitted or calibrated on."""
    if "fresh" not in _CACHE:
        from adfm.synthetic import make_synthetic_dataset

        _CACHE["fresh"] = make_synthetic_dataset(tmp_path_factory.mktemp("fresh-station"), layout="folder", seed=7)
    return _CACHE["fresh"]


def read_rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))
