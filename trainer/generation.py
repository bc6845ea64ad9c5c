"""Sample answers from a loaded model for training-view rows (variance analysis, learning check).

Prompts and images come from the training view, so what is sampled here is exactly what GRPO
samples during training; vision special tokens are suppressed the same way.
"""

from __future__ import annotations

from typing import Any

from adfm.protocol import attach_images

from .modeling import LoadedModel, vision_token_ids


def generate(
    loaded: LoadedModel,
    row: dict[str, Any],
    num_return_sequences: int = 1,
    max_new_tokens: int = 256,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int | None = None,
) -> list[str]:
    """Answer one row `num_return_sequences` times; temperature 0 means greedy (one answer)."""
    import torch

    if temperature <= 0 and num_return_sequences != 1:
        raise ValueError("greedy decoding (temperature 0) gives one answer; sample with temperature > 0 for more")
    model, processor = loaded.model, loaded.processor
    messages = attach_images(row["prompt"], list(row["images"]))
    inputs = processor.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=True, return_dict=True, return_tensors="pt"
    ).to(model.device)
    if seed is not None:
        torch.manual_seed(seed)
    sampling = {"do_sample": True, "temperature": temperature, "top_p": top_p} if temperature > 0 else {
        "do_sample": False
    }
    with torch.inference_mode():
        out = model.generate(
            **inputs,
            max_new_tokens=max_new_tokens,
            num_return_sequences=num_return_sequences,
            suppress_tokens=vision_token_ids(loaded.tokenizer, getattr(model, "config", None)),
            pad_token_id=loaded.tokenizer.pad_token_id,
            **sampling,
        )
    new_tokens = out[:, inputs["input_ids"].shape[1] :]
    return processor.batch_decode(new_tokens, skip_special_tokens=True)
