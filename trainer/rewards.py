"""AD-FM's rewards (arXiv 2508.04175, Eqs. 4–6), as TRL reward functions over the shared parser.

Every reward reads a completion through `adfm.protocol.parse_response` with the sample's
`ModelGrid`, so boxes are compared with the ground truth in original-image pixels, and boxes are
matched and scored with `adfm.geometry` — the same code evaluation and the appliance use.

TRL calls a reward function as `f(prompts=…, completions=…, completion_ids=…, **columns)` where
`columns` are the training view's dataset columns, one value per completion (see
`adfm.trainer.data.training_view.REWARD_COLUMNS`). Each function returns one float per completion.

Pure helpers (`count_reward`, `focus_reward`, `localization_score`) carry the equations themselves,
for tests and for the reward-variance analysis.

What counts as a box (the paper's B(y), whose size is m in Eqs. 5–6):

- m counts the `{"bbox_2d": [...]}` objects of `<think>` only (`ParsedResponse.proposed_count`).
  `<rethink>` examines those proposals and `<answer>` is scored by r_cls; neither adds to m.
- Coordinates written in prose (`Region [10, 20, 50, 60] …`) are not boxes: they are not in the
  trained answer format. `Region [10, 20, 50, 60] then [{"bbox_2d": [10, 20, 50, 60]}]` has m = 1.
- An invalid box — not 4 finite numbers, zero area, or entirely off the image — still counts in m
  (the model proposed it) but is left out of matching (`ParsedResponse.proposed_boxes`), so it
  earns no GIoU and can only cost count/focus reward.
- A normal sample is scored by r_focus(m), an anomalous one by mean matched GIoU + α·r_count(m, n).
  tests/test_trainer_rewards.py holds these cases worked by hand.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from adfm.geometry import ModelGrid, match_boxes
from adfm.protocol import DEFAULT_PROMPT_VERSION, ParsedResponse, parse_response

#: Dataset columns the rewards read (the training view provides all of them).
LABEL = "label"
GT_BOXES = "gt_boxes"
ORIG_WIDTH = "orig_width"
ORIG_HEIGHT = "orig_height"
GRID_WIDTH = "grid_width"
GRID_HEIGHT = "grid_height"
PROMPT_VERSION = "prompt_version"

DEFAULT_ALPHA = 1.0
DEFAULT_RANDOM_SIGMA = 0.1


# ---- the equations ---------------------------------------------------------------------------


def count_reward(m: int, n: int) -> float:
    """Eq. 5, r_count: 1 if the box count is right, 0.5 if off by one, −0.1 otherwise."""
    diff = abs(int(m) - int(n))
    if diff == 0:
        return 1.0
    if diff == 1:
        return 0.5
    return -0.1


def focus_reward(m: int) -> float:
    """Eq. 6, r_focus on a normal sample: 0 for no region, 0.5 for one, −0.1 for two or more."""
    if m < 0:
        raise ValueError(f"box count must be ≥ 0, got {m}")
    if m == 0:
        return 0.0
    if m == 1:
        return 0.5
    return -0.1


@dataclass(frozen=True)
class LocalizationTerms:
    """The parts of Eq. 4 for one response, kept apart for logging and analysis."""

    giou: float
    count: float
    total: float
    matched: int


def localization_terms(
    pred_boxes: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[float]],
    label: object,
    alpha: float = DEFAULT_ALPHA,
    use_giou: bool = True,
    m: int | None = None,
) -> LocalizationTerms:
    """Eq. 4 term by term; boxes are xyxy in one pixel frame (original-image pixels in training).

    Anomalous: mean GIoU over Hungarian-matched pairs (0 when nothing is matched) + α·r_count(m, n).
    Normal: r_focus(m). `use_giou=False` drops the GIoU term (the count-only ablation).
    `m` is the number of proposed boxes, invalid ones included (default: `len(pred_boxes)`, the
    valid ones, which are the only ones matched).
    """
    n = len(gt_boxes)
    if m is None:
        m = len(pred_boxes)
    elif m < len(pred_boxes):
        raise ValueError(f"box count m={m} is below the {len(pred_boxes)} valid boxes given")
    if not is_anomalous(label):
        focus = focus_reward(m)
        return LocalizationTerms(giou=0.0, count=focus, total=focus, matched=0)
    matches = match_boxes(pred_boxes, gt_boxes) if use_giou else []
    giou_term = float(np.mean([g for _, _, g in matches])) if matches else 0.0
    count_term = alpha * count_reward(m, n)
    return LocalizationTerms(giou=giou_term, count=count_term, total=giou_term + count_term, matched=len(matches))


def localization_score(
    pred_boxes: Sequence[Sequence[float]],
    gt_boxes: Sequence[Sequence[float]],
    label: object,
    alpha: float = DEFAULT_ALPHA,
) -> float:
    """Eq. 4, r_loc for one response (at most 1 + α)."""
    return localization_terms(pred_boxes, gt_boxes, label, alpha).total


# ---- reading TRL's arguments -----------------------------------------------------------------


def is_anomalous(label: object) -> bool:
    """Read a label column value: 'anomalous'/'normal' (the Sample record's words) or a bool."""
    if isinstance(label, bool):
        return label
    if isinstance(label, str) and label in ("anomalous", "normal"):
        return label == "anomalous"
    raise ValueError(f"label must be 'anomalous', 'normal' or a bool, got {label!r}")


def completion_text(completion: object) -> str:
    """The text of one completion: a plain string, or TRL's conversational `[{"role": …, "content": …}]`."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        completion = [completion]
    if isinstance(completion, list):
        parts: list[str] = []
        for message in completion:
            content = message.get("content") if isinstance(message, dict) else message
            if isinstance(content, str):
                parts.append(content)
            elif isinstance(content, list):
                parts += [b.get("text") or "" for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "".join(parts)
    return "" if completion is None else str(completion)


def _column(kwargs: dict[str, Any], name: str, n: int, reward: str) -> list[Any]:
    if name not in kwargs:
        raise KeyError(
            f"{reward} needs the dataset column {name!r} (the training view provides it); "
            f"got columns: {', '.join(sorted(k for k in kwargs if not k.startswith('log_'))) or 'none'}"
        )
    values = kwargs[name]
    if len(values) != n:
        raise ValueError(f"{reward}: column {name!r} has {len(values)} values for {n} completions")
    return list(values)


def _grid(kwargs: dict[str, Any], i: int) -> ModelGrid | None:
    keys = (ORIG_WIDTH, ORIG_HEIGHT, GRID_WIDTH, GRID_HEIGHT)
    if not all(k in kwargs for k in keys):
        return None
    ow, oh, gw, gh = (kwargs[k][i] for k in keys)
    return ModelGrid(orig_width=int(ow), orig_height=int(oh), width=int(gw), height=int(gh))


def parse_completions(completions: Sequence[object], **kwargs: Any) -> list[ParsedResponse]:
    """Parse every completion with its row's prompt version and model grid (when the columns exist)."""
    versions = kwargs.get(PROMPT_VERSION) or [DEFAULT_PROMPT_VERSION] * len(completions)
    return [
        parse_response(completion_text(c), grid=_grid(kwargs, i), version=versions[i] or DEFAULT_PROMPT_VERSION)
        for i, c in enumerate(completions)
    ]


def _log(kwargs: dict[str, Any], name: str, values: Sequence[float]) -> None:
    """Log a scalar through TRL's `log_metric` hook when the trainer provides one."""
    log_metric = kwargs.get("log_metric")
    if callable(log_metric) and len(values):
        log_metric(name, float(np.mean(values)))


# ---- TRL reward functions ----------------------------------------------------------------------


def classification_reward(completions: Sequence[object], **kwargs: Any) -> list[float]:
    """r_cls: 1 when the parsed yes/no equals the label, else 0 (no readable answer scores 0)."""
    labels = _column(kwargs, LABEL, len(completions), "classification_reward")
    parsed = parse_completions(completions, **kwargs)
    rewards = [
        1.0 if p.decision is not None and p.decision == is_anomalous(lab) else 0.0
        for p, lab in zip(parsed, labels, strict=True)
    ]
    _log(kwargs, "answers/unreadable", [1.0 if p.decision is None else 0.0 for p in parsed])
    return rewards


def _localization(
    name: str, completions: Sequence[object], alpha: float, use_giou: bool, kwargs: dict[str, Any]
) -> list[float]:
    n = len(completions)
    labels = _column(kwargs, LABEL, n, name)
    gts = _column(kwargs, GT_BOXES, n, name)
    parsed = parse_completions(completions, **kwargs)
    terms = []
    for i, (p, lab, gt) in enumerate(zip(parsed, labels, gts, strict=True)):
        if gt is None and is_anomalous(lab):
            raise ValueError(
                f"{name}: completion {i} is for an anomalous sample without ground-truth boxes; "
                "compute boxes for the split (adfm-data) or choose a preset without localization"
            )
        # m: the bbox_2d objects of <think>, invalid ones included (see the module docstring)
        terms.append(localization_terms(p.proposed_boxes, gt or [], lab, alpha, use_giou, m=p.proposed_count))
    if use_giou:
        _log(kwargs, "localization/giou", [t.giou for t in terms])
    _log(kwargs, "localization/count", [t.count for t in terms])
    _log(kwargs, "localization/boxes", [float(p.proposed_count) for p in parsed])
    return [t.total for t in terms]


def localization_reward(completions: Sequence[object], alpha: float = DEFAULT_ALPHA, **kwargs: Any) -> list[float]:
    """r_loc (Eq. 4): Hungarian-matched GIoU + α·r_count on anomalous samples, r_focus on normal ones."""
    return _localization("localization_reward", completions, alpha, True, kwargs)


def count_localization_reward(
    completions: Sequence[object], alpha: float = DEFAULT_ALPHA, **kwargs: Any
) -> list[float]:
    """Eq. 4 without its GIoU term: α·r_count on anomalous samples, r_focus on normal ones (ablation)."""
    return _localization("count_localization_reward", completions, alpha, False, kwargs)


def format_reward(completions: Sequence[object], **kwargs: Any) -> list[float]:
    """r_format: 1 when the response follows its prompt version's format exactly, else 0."""
    return [1.0 if p.format_ok else 0.0 for p in parse_completions(completions, **kwargs)]


def random_reward(
    completions: Sequence[object],
    sigma: float = DEFAULT_RANDOM_SIGMA,
    seed: int = 0,
    trainer_state: Any = None,
    **kwargs: Any,
) -> list[float]:
    """Zero-mean Gaussian noise N(0, σ²), one draw per completion (the paper's RRP control).

    Seeded by (seed, global step, process rank), so a rerun draws the same noise and two ranks of
    one step draw different noise.
    """
    if sigma < 0:
        raise ValueError(f"random reward sigma must be ≥ 0, got {sigma}")
    step = int(getattr(trainer_state, "global_step", 0) or 0)
    rng = np.random.default_rng([int(seed), step, _env_rank()])
    return [float(v) for v in rng.normal(0.0, sigma, size=len(completions))]


def _env_rank() -> int:
    """This process's rank under torchrun/accelerate (0 when not distributed)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


RewardFunction = Callable[..., list[float]]
