"""Greedy held-out scores of a model on a task split, read through the project's one parser and geometry.

The warm start's record, the learning check and the tests score answers here: each answer goes
through `adfm.protocol` (via the rewards' `parse_completions`, which maps boxes from the model grid
to original pixels) and is compared with the split's ground truth by `adfm.geometry`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from adfm.geometry import iou, match_boxes

from . import rewards

#: Long enough for the warm start's answers (≈ 70 tokens with one box) and a few more boxes.
MAX_NEW_TOKENS = 96


def greedy_answers(loaded: Any, rows: list[dict[str, Any]], max_new_tokens: int = MAX_NEW_TOKENS,
                   batch: int = 16) -> list[str]:
    """Greedy (temperature 0) answers for training-view rows, batched, vision tokens suppressed."""
    import torch

    from adfm.protocol import attach_images

    from .modeling import vision_token_ids

    model, processor = loaded.model, loaded.processor
    suppress = vision_token_ids(loaded.tokenizer, getattr(model, "config", None))
    answers: list[str] = []
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        texts = [processor.apply_chat_template(attach_images(r["prompt"], list(r["images"])), tokenize=False,
                                               add_generation_prompt=True) for r in chunk]
        inputs = processor(text=texts, images=[list(r["images"]) for r in chunk], padding=True,
                           padding_side="left", return_tensors="pt", do_resize=False).to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppress,
                                 pad_token_id=loaded.tokenizer.pad_token_id)
        answers += processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    return answers


def score_answers(rows: list[dict[str, Any]], answers: list[str]) -> dict[str, Any]:
    """Accuracy, format rate, F1 (defective = positive), box IoU ≥ 0.5 on defective parts, matched GIoU."""
    from .data.training_view import REWARD_COLUMNS

    tp = fp = fn = tn = fmt = unread = iou50 = 0
    gious: list[float] = []
    ious: list[float] = []
    for row, answer in zip(rows, answers, strict=True):
        cols = {k: [row[k]] for k in REWARD_COLUMNS}
        parsed = rewards.parse_completions([answer], **cols)[0]
        fmt += int(parsed.format_ok)
        truth = rewards.is_anomalous(row[rewards.LABEL])
        if parsed.decision is None:
            unread += 1
        said = bool(parsed.decision)
        tp += truth and said
        fp += (not truth) and said
        fn += truth and not said
        tn += (not truth) and not said
        if truth:
            gt = row[rewards.GT_BOXES] or []
            best = float(iou(parsed.boxes, gt).max()) if parsed.boxes and gt else 0.0
            ious.append(best)
            iou50 += best >= 0.5
            matches = match_boxes(parsed.proposed_boxes, gt)
            gious.append(sum(g for _, _, g in matches) / len(matches) if matches else -1.0)
    n = len(rows)
    defective = tp + fn
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / defective if defective else 0.0
    return {
        "samples": n,
        "accuracy": (tp + tn) / n if n else 0.0,
        "format_rate": fmt / n if n else 0.0,
        "unreadable": unread,
        "true_positive": tp, "false_positive": fp, "false_negative": fn, "true_negative": tn,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "iou50_defective": iou50 / defective if defective else 0.0,
        "mean_best_iou_defective": sum(ious) / len(ious) if ious else 0.0,
        "mean_matched_giou_defective": sum(gious) / len(gious) if gious else 0.0,
        "example_answers": answers[:2] + [a for r, a in zip(rows, answers, strict=True)
                                          if rewards.is_anomalous(r[rewards.LABEL])][:2],
    }


def evaluate_split(loaded: Any, split: str | Path, spec: Any = None, max_new_tokens: int = MAX_NEW_TOKENS
                   ) -> dict[str, Any]:
    """Greedy scores of `loaded` on every row of a task split (its training view, the task's grid)."""
    from .warmstart import task_view

    view = task_view(split, spec)
    rows = [view[i] for i in range(len(view))]
    return score_answers(rows, greedy_answers(loaded, rows, max_new_tokens))
