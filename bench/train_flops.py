"""Model FLOPs of a GRPO step, the decoding floor, and measured memory bandwidth.

FLOPs are counted from the live model's matmul weights and the token counts the run actually
processed (see `FORMULA`); attention is counted exactly for causal text and for the vision tower's
window/full attention layers. Gradient-checkpointing recomputation is not counted (model FLOPs, not
hardware FLOPs), so MFU does not improve by recomputing more.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

FORMULA = (
    "Per sequence with L = P + C tokens (P prompt tokens incl. image tokens, C completion tokens) and per "
    "image with V patches. N_body = matmul weights of the decoder layers, N_head = LM head, N_lora = LoRA A+B, "
    "N_vis = vision blocks + patch embedding (per patch), N_merge = patch merger (per merged token, V/4). "
    "attn(L) = 2·layers·heads·head_dim·L² (causal QKᵀ and AV). "
    "vision(V) = 2·N_vis·V + 2·N_merge·V/4 + 4·d_vis·V·(full_layers·V + window_layers·min(V, window_patches)). "
    "Generation (prefill + decode): 2·(N_body+N_lora)·(L−1) + 2·N_head·C + attn(L) + vision(V). "
    "Training pass (forward + backward through the frozen base into LoRA; no vision backward): "
    "4·N_body·L + 6·N_lora·L + 4·N_head·C + 3·attn(L) + vision(V). "
    "Scoring pass (reference / old-policy forward, no grad): 2·N_body·L + 2·N_head·C + attn(L) + vision(V). "
    "Checkpointing recompute is not counted. MFU = model FLOPs per step ÷ (wall seconds per step × peak)."
)

#: Dense (no sparsity) BF16 tensor-core peaks from the vendors' datasheets, FLOP/s, matched on the
#: CUDA device name. Other devices or dtypes: pass the peak explicitly.
BF16_PEAKS: tuple[tuple[str, float], ...] = (
    ("GB200", 2.5e15),
    ("B200", 2.25e15),
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 NVL", 835e12),
    ("H100 PCIE", 756e12),
    ("H100", 989e12),  # SXM ("NVIDIA H100 80GB HBM3")
    ("H800", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
)


@dataclass(frozen=True)
class ParamCounts:
    """Matmul weights by role, and the bytes one decoding step must read."""

    lm_body: int
    lm_head: int
    lora: int
    vision: int
    vision_merger: int
    total_parameters: int
    trainable_parameters: int
    decode_weight_bytes: int


@dataclass(frozen=True)
class Geometry:
    """The shapes the attention and KV-cache terms need, from the model config."""

    layers: int
    attn_width: int
    kv_bytes_per_token: int
    vision_width: int
    vision_full_layers: int
    vision_window_layers: int
    vision_window_patches: int
    vision_merge: int


@dataclass(frozen=True)
class Batch:
    """What one generate call processed: real prompt tokens per sequence, new tokens, patches per image."""

    prompt_tokens: tuple[int, ...]
    new_tokens: int
    image_patches: tuple[int, ...]

    @property
    def sequences(self) -> int:
        return len(self.prompt_tokens)


def _linear_like(module: Any) -> bool:
    import torch

    return isinstance(module, torch.nn.Linear | torch.nn.Conv3d)


def count_parameters(model: Any) -> ParamCounts:
    """Classify the live (PEFT-wrapped or plain) model's matmul weights by role; shared weights once."""
    body = head = lora = vision = merger = 0
    for name, module in model.named_modules():
        if not _linear_like(module):
            continue
        n = module.weight.numel()
        if ".lora_" in name:
            lora += n
        elif "visual.merger" in name:
            merger += n
        elif "visual" in name:
            vision += n
        elif name.endswith("lm_head"):
            head += n
        else:
            body += n
    seen: set[int] = set()
    total = trainable = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        trainable += p.numel() if p.requires_grad else 0
    return ParamCounts(body, head, lora, vision, merger, total, trainable, decode_weight_bytes(model))


def decode_weight_bytes(model: Any) -> int:
    """Bytes of the weights a decoding step reads: the language model and LM head (and LoRA), not the
    vision tower, and of the input embedding table only what is shared with the LM head."""
    head = model.get_output_embeddings()
    head_weight = id(head.weight) if head is not None else None
    embed = model.get_input_embeddings()
    skip = {id(embed.weight)} - {head_weight}
    seen: set[int] = set()
    total = 0
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen or id(p) in skip or "visual" in name:
            continue
        seen.add(id(p))
        total += p.numel() * p.element_size()
    return total


def geometry(config: Any, dtype_bytes: int) -> Geometry:
    """Attention widths and the KV cache's bytes per token, from a Qwen2.5-VL config."""
    text = getattr(config, "text_config", config)
    vision = config.vision_config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    full = len(vision.fullatt_block_indexes or [])
    window_side = vision.window_size // vision.patch_size
    return Geometry(
        layers=text.num_hidden_layers,
        attn_width=heads * head_dim,
        kv_bytes_per_token=text.num_hidden_layers * 2 * text.num_key_value_heads * head_dim * dtype_bytes,
        vision_width=vision.hidden_size,
        vision_full_layers=full,
        vision_window_layers=vision.depth - full,
        vision_window_patches=window_side * window_side,
        vision_merge=vision.spatial_merge_size**2,
    )


def _attn(g: Geometry, length: int) -> float:
    return 2.0 * g.layers * g.attn_width * length * length


def vision_flops(p: ParamCounts, g: Geometry, patches: Iterable[int]) -> float:
    total = 0.0
    for v in patches:
        window = min(v, g.vision_window_patches)
        attn = 4.0 * g.vision_width * v * (g.vision_full_layers * v + g.vision_window_layers * window)
        total += 2.0 * p.vision * v + 2.0 * p.vision_merger * v / g.vision_merge + attn
    return total


def generation_flops(p: ParamCounts, g: Geometry, b: Batch) -> float:
    c = b.new_tokens
    lm = sum(
        2.0 * (p.lm_body + p.lora) * (pt + c - 1) + 2.0 * p.lm_head * c + _attn(g, pt + c) for pt in b.prompt_tokens
    )
    return lm + vision_flops(p, g, b.image_patches)


def training_flops(p: ParamCounts, g: Geometry, b: Batch) -> float:
    c = b.new_tokens
    lm = sum(
        4.0 * p.lm_body * (pt + c) + 6.0 * p.lora * (pt + c) + 4.0 * p.lm_head * c + 3.0 * _attn(g, pt + c)
        for pt in b.prompt_tokens
    )
    return lm + vision_flops(p, g, b.image_patches)


def scoring_flops(p: ParamCounts, g: Geometry, b: Batch) -> float:
    c = b.new_tokens
    lm = sum(2.0 * p.lm_body * (pt + c) + 2.0 * p.lm_head * c + _attn(g, pt + c) for pt in b.prompt_tokens)
    return lm + vision_flops(p, g, b.image_patches)


@dataclass(frozen=True)
class DecodeFloor:
    """The least time decoding can take when every token step must stream the weights (and KV cache)."""

    seconds_per_token_step: float
    weights_floor_s: float
    weights_and_kv_floor_s: float


def decode_floor(p: ParamCounts, g: Geometry, b: Batch, bandwidth: float) -> DecodeFloor:
    """Floor of one generate call: C token steps × weight bytes ÷ bandwidth (+ the KV cache read per step)."""
    c = b.new_tokens
    per_step = p.decode_weight_bytes / bandwidth
    kv_bytes = g.kv_bytes_per_token * sum(c * pt + c * (c - 1) / 2 for pt in b.prompt_tokens)
    return DecodeFloor(per_step, c * per_step, c * per_step + kv_bytes / bandwidth)


def peak_flops(device_name: str | None, dtype: str) -> tuple[float | None, str]:
    """The datasheet dense BF16 peak for a known GPU; None (and why) otherwise."""
    if device_name is None:
        return None, "CPU: no known peak; MFU needs one (pass --peak-tflops); achieved FLOP/s reported"
    if dtype != "bfloat16":
        return None, f"no table peak for {dtype} (pass --peak-tflops)"
    upper = device_name.upper()
    for key, value in BF16_PEAKS:
        if key in upper:
            return value, f"datasheet dense BF16 peak of {key} (matched {device_name!r})"
    return None, f"{device_name!r} is not in the peak table (pass --peak-tflops)"


def measure_bandwidth(device: str, nbytes: int, repeats: int = 5) -> dict[str, Any]:
    """Device memory bandwidth from copying one large tensor: (read + write bytes) ÷ best time."""
    import torch

    if nbytes < 1 << 20:
        raise ValueError(f"bandwidth copy of {nbytes} bytes is too small to time; use at least 1 MiB")
    src = torch.ones(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    cuda = src.is_cuda

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    dst.copy_(src)  # first touch: page faults / allocation are not bandwidth
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        dst.copy_(src)
        sync()
        times.append(time.perf_counter() - start)
    del src, dst
    best = min(times)
    return {
        "bytes_per_s": 2 * nbytes / best,
        "copy_bytes": nbytes,
        "best_s": best,
        "times_s": times,
        "method": f"torch copy_ of a {nbytes / 2**20:.0f} MiB uint8 tensor on {device}, read+write bytes ÷ best of "
        f"{repeats}",
    }


def as_dict(obj: Any) -> dict[str, Any]:
    return asdict(obj)
