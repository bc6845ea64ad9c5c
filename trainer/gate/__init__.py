"""The screening gate's trainer: a patch nearest-neighbour anomaly scorer fitted on normal images.

`train_gate(GateTrainConfig(...))` reads the data (a split manifest or a dataset root), fits the
gate on normal images (holding some out), exports one ONNX graph (score and heat map inside),
calibrates its threshold through ONNX Runtime and writes the metadata JSON the line reads
(`adfm.runtime.gate`). `adfm-train gate` is the command. Why this method: see `model.py`.
torch is imported only when training is asked for, so the config and calibration stay light.
"""

from __future__ import annotations

from typing import Any

from .config import GateConfigError, GateTrainConfig

__all__ = ["GateConfigError", "GateTrainConfig", "GateTrainResult", "train_gate"]


def __getattr__(name: str) -> Any:
    if name in ("GateTrainResult", "train_gate"):
        from . import train

        return getattr(train, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
