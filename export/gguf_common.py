"""What the language-model and projector GGUF writers share: tensor naming and streamed writing.

Tensors are converted and written one at a time (header first, then data), so a 7B export never
holds a second full copy of the weights in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError

#: transformers 5 keeps Qwen2.5-VL's parts under these prefixes in memory; released checkpoints
#: (and the gguf package's TensorNameMap) use the names on the right.
_IN_MEMORY_PREFIXES = (
    ("model.language_model.", "model."),
    ("model.visual.", "visual."),
)


def checkpoint_name(name: str) -> str:
    """In-memory transformers tensor name → the name a released Qwen2.5-VL checkpoint uses."""
    for prefix, replacement in _IN_MEMORY_PREFIXES:
        if name.startswith(prefix):
            return replacement + name[len(prefix) :]
    return name


@dataclass(frozen=True)
class PlannedTensor:
    """One GGUF tensor: its name, storage type, numpy shape and how to produce its data."""

    name: str
    qtype: Any  # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    produce: Callable[[], np.ndarray]  # float32 data of `shape`

    @property
    def nbytes(self) -> int:
        import gguf

        block, type_size = gguf.GGML_QUANT_SIZES[self.qtype]
        n = int(np.prod(self.shape))
        if n % block:
            raise ExportError(f"tensor {self.name} of shape {self.shape} does not fit {self.qtype.name} blocks")
        return n // block * type_size


def encode(tensor: PlannedTensor) -> np.ndarray:
    """The tensor's bytes in its storage type (F32, F16, or a block quantization such as Q8_0)."""
    import gguf

    data = np.ascontiguousarray(tensor.produce(), dtype=np.float32)
    if data.shape != tensor.shape:
        raise ExportError(f"tensor {tensor.name}: produced shape {data.shape}, planned {tensor.shape}")
    if not np.isfinite(data).all():
        raise ExportError(f"tensor {tensor.name} holds NaN or infinite values; the checkpoint is broken")
    if tensor.qtype == gguf.GGMLQuantizationType.F32:
        return data
    if tensor.qtype == gguf.GGMLQuantizationType.F16:
        half = data.astype(np.float16)
        if not np.isfinite(half).all():
            raise ExportError(
                f"tensor {tensor.name} has values beyond float16's range (max |x| = {np.abs(data).max():.4g}); "
                "export it with --quant f32"
            )
        return half
    return gguf.quants.quantize(data, tensor.qtype)


def write_streamed(writer: Any, tensors: list[PlannedTensor], on_tensor: Callable[[str], None] | None = None) -> None:
    """Write header, metadata, tensor infos, then each tensor's data, one at a time, and close."""
    import gguf

    for t in tensors:
        raw = None if t.qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16) else t.qtype
        dtype = {gguf.GGMLQuantizationType.F32: np.float32, gguf.GGMLQuantizationType.F16: np.float16}.get(
            t.qtype, np.uint8
        )
        shape = t.shape if raw is None else gguf.quant_shape_to_byte_shape(t.shape, t.qtype)
        writer.add_tensor_info(t.name, shape, np.dtype(dtype), t.nbytes, raw_dtype=raw)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for t in tensors:
        writer.write_tensor_data(encode(t))
        if on_tensor is not None:
            on_tensor(t.name)
    writer.close()


def state_items(model: Any) -> Iterator[tuple[str, Any]]:
    """(released checkpoint name, tensor) for every weight of a transformers model."""
    for name, value in model.state_dict().items():
        yield checkpoint_name(name), value


def as_float32(value: Any) -> np.ndarray:
    import torch

    return value.detach().to(device="cpu", dtype=torch.float32).numpy()


def new_writer(path: Path, arch: str) -> Any:
    import gguf

    return gguf.GGUFWriter(str(path), arch, use_temp_file=False)
