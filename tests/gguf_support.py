"""Deliberate damage to one tensor of a GGUF file, for checks that export verification can fail.

Used by tests/test_export_bounds.py and bench/export_bounds.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np


def reverse_rows(path: Path, tensor: str) -> None:
    """Corrupt one tensor in place: its rows in reverse order (every value still finite)."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    data = next(t for t in reader.tensors if t.name == tensor).data
    data[...] = np.ascontiguousarray(data[::-1])
    if hasattr(data, "flush"):
        data.flush()
    del reader


def scale(path: Path, tensor: str, factor: float) -> None:
    """Perturb one float tensor in place: every weight times `factor`."""
    import gguf

    reader = gguf.GGUFReader(str(path), "r+")
    data = next(t for t in reader.tensors if t.name == tensor).data
    data[...] = (data.astype(np.float32) * factor).astype(data.dtype)
    del reader
