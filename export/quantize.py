"""Quantize the language model GGUF with llama.cpp's own quantizer (through llama-cpp-python).

k-quants (q4_k_m, q5_k_m) work on rows that are multiples of 256; llama.cpp picks another type for
tensors that are not, by its own rules, so the file's mix is exactly what llama.cpp would make.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path

from .errors import ExportError

#: Exported quantization names → llama.cpp file types. f16/f32 need no quantization pass.
QUANT_FTYPES = {
    "q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "q5_k_m": "LLAMA_FTYPE_MOSTLY_Q5_K_M",
    "q4_k_m": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
}
FLOAT_TYPES = ("f16", "f32")
QUANT_TYPES = (*FLOAT_TYPES, *QUANT_FTYPES)
#: Bits per weight, roughly, for the free-space estimate.
APPROX_BITS = {"f32": 32.0, "f16": 16.0, "q8_0": 8.5, "q5_k_m": 5.7, "q4_k_m": 4.9}


def quantize_model(src: Path, dst: Path, quant: str, n_threads: int | None = None) -> None:
    """Quantize GGUF `src` (f16/f32) to `dst` as `quant`; raises ExportError when llama.cpp fails."""
    import llama_cpp

    from adfm.runtime.vlm import recent_llama_errors, route_llama_logs

    if quant not in QUANT_FTYPES:
        raise ExportError(f"quantization {quant!r} is not one of {', '.join(QUANT_FTYPES)}")
    route_llama_logs()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, QUANT_FTYPES[quant])
    params.nthread = n_threads or max(1, os.cpu_count() or 1)
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        dst.unlink(missing_ok=True)
        raise ExportError(f"llama.cpp failed to quantize {src.name} to {quant} (code {rc}; {recent_llama_errors()})")
