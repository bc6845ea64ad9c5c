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


#: The tensors bench/export_bounds.py and the bounds test corrupt, one at a time, in a q4_k_m file.
CORRUPT_TENSORS = ("blk.0.ffn_down.weight", "blk.0.attn_v.weight", "blk.0.ffn_up.weight",
                   "blk.1.attn_output.weight", "blk.1.ffn_down.weight", "output.weight")


def hf_decision_margin(merged, case, prompt_version: str, suppress, fixed) -> float:
    """HF's yes − no logit at the fixed answer's decision step for one case (verify's own measure)."""
    from adfm.export import verify

    run = verify.hf_run(merged, case, prompt_version=prompt_version, max_new_tokens=1,
                        suppress_tokens=suppress, fixed=fixed)
    return verify.decision_margin(run.fixed_logits, fixed)
