"""A short supervised warm start on the answer format, before GRPO.

GRPO only learns from groups whose rewards differ; a model that never writes a readable answer
gets the same zero for every response and learns nothing. A few hundred supervised steps on
answers written by `adfm.protocol.format_response` (the sample's label, its boxes on the model
grid) teach the tags and the box syntax. Used by the learning-check benchmark on the tiny model;
the result is a full checkpoint directory that `adfm-train --model` reads like any other.
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adfm.geometry import ModelGrid
from adfm.protocol import attach_images, format_response
from adfm.trainer import rewards
from adfm.trainer.modeling import LoadedModel

log = logging.getLogger("adfm.warmstart")


@dataclass(frozen=True)
class WarmStartResult:
    output_dir: str
    steps: int
    seconds: float
    first_loss: float
    last_loss: float


def target_answer(row: dict[str, Any]) -> str:
    """The answer a row should get, in its prompt version's format, boxes in model-grid pixels."""
    grid = ModelGrid(
        row[rewards.ORIG_WIDTH], row[rewards.ORIG_HEIGHT], row[rewards.GRID_WIDTH], row[rewards.GRID_HEIGHT]
    )
    anomalous = rewards.is_anomalous(row[rewards.LABEL])
    boxes = grid.to_grid(row[rewards.GT_BOXES] or []).tolist() if anomalous else []
    labels = [row.get("defect_type") or "defect"] * len(boxes)
    return format_response(anomalous, boxes, labels, version=row[rewards.PROMPT_VERSION])


def _example(loaded: LoadedModel, row: dict[str, Any]) -> dict[str, Any]:
    """Tokenised prompt + answer, with the prompt's tokens masked out of the loss."""
    processor = loaded.processor
    prompt = attach_images(row["prompt"], list(row["images"]))
    full = [*prompt, {"role": "assistant", "content": [{"type": "text", "text": target_answer(row)}]}]
    enc = processor.apply_chat_template(full, tokenize=True, return_dict=True, return_tensors="pt")
    n_prompt = processor.apply_chat_template(
        prompt, tokenize=True, add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"].shape[1]
    labels = enc["input_ids"].clone()
    labels[:, :n_prompt] = -100
    enc["labels"] = labels
    return enc


def supervised_warm_start(
    loaded: LoadedModel,
    dataset: Any,
    output_dir: str | Path,
    steps: int = 300,
    learning_rate: float = 1e-3,
    seed: int = 0,
) -> WarmStartResult:
    """Full fine-tuning on target answers, one example per step; saves model + processor."""
    import torch

    if steps < 1:
        raise ValueError(f"warm start steps must be ≥ 1, got {steps}")
    model = loaded.model
    model.train()
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    order: list[int] = []
    rng = random.Random(seed)
    losses: list[float] = []
    start = time.perf_counter()
    for step in range(steps):
        if not order:
            order = list(range(len(dataset)))
            rng.shuffle(order)
        batch = _example(loaded, dataset[order.pop()]).to(model.device)
        loss = model(**batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
        if step % 50 == 0 or step == steps - 1:
            log.info("warm start step %d/%d loss %.4f", step + 1, steps, losses[-1])
    model.eval()
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    loaded.processor.save_pretrained(out)
    tail = losses[-20:]
    result = WarmStartResult(str(out), steps, time.perf_counter() - start, losses[0], sum(tail) / len(tail))
    (out / "adfm_warm_start.json").write_text(json.dumps(asdict(result), indent=2))
    return result
