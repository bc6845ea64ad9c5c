"""Writing the fitted gate as one ONNX graph, and proving ONNX Runtime computes what torch did.

The graph's batch axis is dynamic (evaluation scores in batches, the line one frame at a time);
height and width are fixed, so the line resizes to exactly the size the bank was fitted at.
torch 2.14's default exporter needs onnxscript, which adfm does not depend on; the TorchScript
exporter (`dynamo=False`) handles this graph's plain ops (Conv, Abs, MaxPool, AveragePool,
MatMul, ArgMin, Gather, Pad, Resize, ReduceMax) fully.
The third output, every patch's feature, is what the line adds to the bank when operators confirm
a false alarm (`adfm.runtime.gate_learning`); the line does not fetch it per frame.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

from adfm.runtime.gate import FILE_MODE, INPUT_NAME, MAP_OUTPUT, SCORE_OUTPUT, GateSession
from adfm.runtime.gate_bank import PATCH_OUTPUT

from .model import PatchKNNGate

OPSET = 17
#: ONNX Runtime and torch may order float sums differently; more than this is a broken export.
PARITY_RTOL = 1e-3


class GateExportError(RuntimeError):
    """The graph could not be written, or ONNX Runtime disagrees with torch about it."""


def export_onnx(gate: PatchKNNGate, path: str | Path) -> Path:
    """Export `gate` to `path` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    h, w = gate.input_hw
    example = torch.zeros(1, 3, h, w)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the TorchScript exporter, see above
            # replicate padding reverses its pad list with a step −1 Slice, which is not folded: harmless
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1")
            torch.onnx.export(
                gate.cpu().eval(), (example,), tmp, dynamo=False, opset_version=OPSET,
                input_names=[INPUT_NAME], output_names=[SCORE_OUTPUT, MAP_OUTPUT, PATCH_OUTPUT],
                dynamic_axes={INPUT_NAME: {0: "batch"}, SCORE_OUTPUT: {0: "batch"}, MAP_OUTPUT: {0: "batch"},
                              PATCH_OUTPUT: {0: "batch"}},
            )
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        raise GateExportError(f"{path}: ONNX export failed ({type(exc).__name__}: {exc})") from exc
    return path


def check_parity(gate: PatchKNNGate, session: GateSession, batch: np.ndarray) -> float:
    """Largest relative difference between torch and ONNX Runtime on `batch` (N×3×H×W float32, 0–255).

    Raises GateExportError above PARITY_RTOL: a graph that scores differently from what was
    calibrated must not ship.
    """
    with torch.no_grad():
        t_score, t_map, _ = gate.cpu().eval()(torch.from_numpy(batch))
    o_score, o_map = session.run(batch)
    scale = max(float(t_map.abs().max()), 1e-6)
    diff = max(float(np.abs(o_score - t_score.numpy()).max()), float(np.abs(o_map - t_map.numpy()).max()))
    rel = diff / scale
    if not np.isfinite(rel) or rel > PARITY_RTOL:
        raise GateExportError(
            f"{session.path}: ONNX Runtime differs from torch by {rel:.2e} (relative) on the training images"
        )
    return rel
