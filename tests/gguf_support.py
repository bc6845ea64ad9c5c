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


def near_tie_case(merged, cases, prompt_version: str, suppress, fixed, *, tolerance: float = 0.02,
                  max_steps: int = 24):
    """A fixture built to be a near tie: a blend of two single-image cases that the model decides
    opposite ways (the second resized onto the first's grid), its weight bisected until HF's
    yes − no margin is within `tolerance` of zero. Returns (case, margin)."""
    from PIL import Image

    from adfm.export.verify import VerifyCase

    singles = [c for c in cases if len(c.images) == 1]
    margins = {c.name: hf_decision_margin(merged, c, prompt_version, suppress, fixed) for c in singles}
    for a in singles:
        for b in singles:
            if not (margins[a.name] < 0 < margins[b.name]):
                continue
            base, other = a.images[0], b.images[0].resize(a.images[0].size, Image.Resampling.BICUBIC)

            def blend(w: float, a=a, base=base, other=other) -> VerifyCase:
                return VerifyCase(f"near-tie-{a.name}", (Image.blend(base, other, w),), a.product)

            lo, hi = 0.0, 1.0
            m_lo = margins[a.name]
            m_hi = hf_decision_margin(merged, blend(1.0), prompt_version, suppress, fixed)
            if not m_lo < 0 < m_hi:
                continue
            for _ in range(max_steps):
                mid = (lo + hi) / 2
                case = blend(mid)
                m = hf_decision_margin(merged, case, prompt_version, suppress, fixed)
                if abs(m) <= tolerance:
                    return case, m
                lo, hi = (mid, hi) if m < 0 else (lo, mid)
    raise ValueError("no pair of fixtures decided opposite ways blends into a near tie")
