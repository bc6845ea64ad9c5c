"""Write Qwen2.5-VL's vision encoder and merger as a GGUF multimodal projector (mmproj).

llama.cpp loads it as projector type `qwen2.5vl_merger` (clip.cpp). What its loader expects, read
from its source: the 3-D patch convolution split into two 2-D kernels (`v.patch_embd.weight` and
`.weight.1`, one per temporal frame), the fused qkv split into q/k/v, the merger's RMSNorm as
`v.post_ln`, its MLP as `mm.0`/`mm.2`, SiLU gated MLPs, the window-attention pattern as
`n_wa_pattern` (full-attention blocks evenly spaced) and a fixed 112-pixel attention window.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ExportError
from .gguf_common import PlannedTensor, as_float32, new_writer, state_items, write_streamed
from .merge import MergedModel

MMPROJ_TYPES = ("f32", "f16", "q8_0")
#: Window size llama.cpp's Qwen2.5-VL graph assumes (it does not read one from the file).
LLAMA_CPP_WINDOW_SIZE = 112
#: HF Qwen2.5-VL's vision RMSNorm epsilon (fixed in its modeling code, not in the config).
VISION_NORM_EPS = 1e-6
#: llama.cpp requires the key; Qwen2.5-VL sizes images dynamically, so it only sizes nothing.
NOMINAL_IMAGE_SIZE = 560


def _vision_config(model: Any) -> Any:
    vc = getattr(model.config, "vision_config", None)
    if vc is None:
        raise ExportError("model config has no vision_config; not a Qwen2.5-VL checkpoint")
    return vc


def window_pattern(vc: Any) -> int:
    """n_wa_pattern: every n-th block uses full attention, the others window attention."""
    full = list(getattr(vc, "fullatt_block_indexes", None) or [])
    if not full:
        raise ExportError("vision_config.fullatt_block_indexes is missing; required for Qwen2.5-VL")
    step = full[0] + 1
    if any(b - a != step for a, b in itertools.pairwise(full)):
        raise ExportError(
            f"vision_config.fullatt_block_indexes {full} are not evenly spaced every {step} blocks; "
            "llama.cpp cannot express that pattern"
        )
    return step


def _check_supported(vc: Any) -> None:
    checks = {
        "patch_size": (vc.patch_size, 14),
        "temporal_patch_size": (vc.temporal_patch_size, 2),
        "spatial_merge_size": (vc.spatial_merge_size, 2),
        "window_size": (vc.window_size, LLAMA_CPP_WINDOW_SIZE),
        "hidden_act": (vc.hidden_act, "silu"),
    }
    for field, (value, expected) in checks.items():
        if value != expected:
            raise ExportError(
                f"vision_config.{field} is {value!r}; llama.cpp's Qwen2.5-VL projector supports {expected!r}"
            )
    if vc.intermediate_size == vc.hidden_size:
        raise ExportError(
            "vision_config.intermediate_size equals hidden_size; llama.cpp would mistake the MLP layout"
        )


def plan_tensors(model: Any, mmproj_type: str) -> list[PlannedTensor]:
    """Every vision tensor with its GGUF name and storage type; an unmapped tensor is an error."""
    import gguf

    vc = _vision_config(model)
    # The merger MLP's layers are numbered 0 and 2; the name map covers block ids < its count.
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.MMPROJ, max(vc.depth, 3))
    F32, F16 = gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16
    matrix = {"f32": F32, "f16": F16, "q8_0": gguf.GGMLQuantizationType.Q8_0}[mmproj_type]
    patch_name = gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.V_ENC_EMBD_PATCH] + ".weight"

    def matrix_type(shape: tuple[int, ...]) -> Any:
        block = gguf.GGML_QUANT_SIZES[matrix][0]
        return matrix if shape[-1] % block == 0 else F16

    planned: list[PlannedTensor] = []
    for name, value in state_items(model):
        if not name.startswith("visual."):
            continue
        shape = tuple(value.shape)
        if name == "visual.patch_embed.proj.weight":
            # Conv3D over 2 frames → two Conv2D kernels; a still image is fed as both frames.
            if len(shape) != 5 or shape[2] != 2:
                raise ExportError(f"{name} has shape {shape}; expected (out, 3, 2, patch, patch)")
            kernel = (shape[0], shape[1], shape[3], shape[4])
            ktype = F16 if mmproj_type != "f32" else F32  # conv kernels stay float (im2col)
            for frame, suffix in ((0, ""), (1, ".1")):
                planned.append(PlannedTensor(
                    patch_name + suffix, ktype, kernel,
                    lambda v=value, f=frame: as_float32(v)[:, :, f, :, :],
                ))
            continue
        if ".attn.qkv." in name:
            if shape[0] % 3:
                raise ExportError(f"{name} has shape {shape}; its first dim is not 3 × hidden")
            part = shape[0] // 3
            for i, which in enumerate("qkv"):
                sub = name.replace(".qkv.", f".{which}.")
                gguf_name = names.get_name(sub, try_suffixes=(".weight", ".bias"))
                if gguf_name is None:
                    raise ExportError(f"cannot map vision tensor {sub!r} to a GGUF name")
                sub_shape = (part, *shape[1:])
                planned.append(PlannedTensor(
                    gguf_name,
                    matrix_type(sub_shape) if len(shape) >= 2 else F32,
                    sub_shape,
                    lambda v=value, i=i, p=part: as_float32(v)[i * p : (i + 1) * p],
                ))
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ExportError(f"cannot map vision tensor {name!r} to a GGUF name")
        qtype = matrix_type(shape) if len(shape) >= 2 else F32
        planned.append(PlannedTensor(gguf_name, qtype, shape, lambda v=value: as_float32(v)))
    if not planned:
        raise ExportError("the model has no visual.* tensors; nothing to write to the mmproj")
    return planned


def write_mmproj(
    merged: MergedModel,
    path: Path,
    mmproj_type: str = "f16",
    on_tensor: Callable[[str], None] | None = None,
) -> int:
    """Write the projector GGUF to `path`; returns the number of tensors written."""
    import gguf

    if mmproj_type not in MMPROJ_TYPES:
        raise ExportError(f"mmproj type {mmproj_type!r} is not one of {MMPROJ_TYPES}")
    model = merged.model
    vc = _vision_config(model)
    _check_supported(vc)
    text_hidden = getattr(model.config, "text_config", model.config).hidden_size
    if vc.out_hidden_size != text_hidden:
        raise ExportError(
            f"vision_config.out_hidden_size {vc.out_hidden_size} differs from the text hidden size {text_hidden}"
        )
    ip = merged.processor.image_processor
    tensors = plan_tensors(model, mmproj_type)

    w = new_writer(path, "clip")
    w.add_type(gguf.GGUFType.MMPROJ)
    w.add_name(f"adfm {merged.base_dir.name} vision")
    w.add_file_type({
        "f32": gguf.LlamaFileType.ALL_F32,
        "f16": gguf.LlamaFileType.MOSTLY_F16,
        "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
    }[mmproj_type])
    w.add_clip_has_vision_encoder(True)
    w.add_clip_projector_type(gguf.VisionProjectorType.QWEN25VL)
    w.add_vision_projection_dim(text_hidden)
    w.add_vision_image_size(NOMINAL_IMAGE_SIZE)
    w.add_vision_patch_size(vc.patch_size)
    w.add_vision_embedding_length(vc.hidden_size)
    w.add_vision_feed_forward_length(vc.intermediate_size)
    w.add_vision_block_count(vc.depth)
    w.add_vision_head_count(vc.num_heads)
    w.add_vision_attention_layernorm_eps(VISION_NORM_EPS)
    w.add_vision_image_mean([float(x) for x in ip.image_mean])
    w.add_vision_image_std([float(x) for x in ip.image_std])
    w.add_vision_use_silu(True)
    w.add_vision_n_wa_pattern(window_pattern(vc))
    w.add_vision_spatial_merge_size(vc.spatial_merge_size)

    write_streamed(w, tensors, on_tensor)
    return len(tensors)


def mmproj_nbytes(model: Any, mmproj_type: str) -> int:
    """Approximate bytes of the projector in `mmproj_type` (for the free-space check)."""
    per = {"f32": 4.0, "f16": 2.0, "q8_0": 34 / 32}[mmproj_type]
    return int(sum(int(np.prod(v.shape)) * per for n, v in state_items(model) if n.startswith("visual.")))
