"""`adfm-train variance`: how often a reward gives GRPO no signal (the paper's Fig. 5).

For N samples of a split, G responses each are sampled from a model (or read back from a stored
JSONL), and every sample's G rewards are computed under three schemes: binary r_cls,
r_cls + r_count (Eq. 4 without GIoU), r_cls + r_giou (the matched-GIoU term alone) and r_cls + r_loc
(AD-FM: both). A sample whose G rewards are all equal has zero variance: its group-normalised
advantages are all zero and it teaches nothing. The report gives the share of such samples per
scheme and, under `presets`, per training preset's whole reward as TRL sums it (accuracy terms +
r_format: what GRPO's `frac_reward_zero_std` counts), as JSON and as a PNG bar chart.
"""

from __future__ import annotations

import argparse
import json
import random
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from adfm.protocol import DEFAULT_PROMPT_VERSION

from . import rewards

RESPONSES = "sampled_responses.jsonl"
REPORT = "variance.json"
CHART = "variance.png"
#: Rewards closer than this count as equal (all schemes are sums of exact constants and GIoUs).
ZERO_STD_TOL = 1e-9


def _cls_count(completions: list[str], alpha: float, **columns: Any) -> list[float]:
    cls = rewards.classification_reward(completions, **columns)
    cnt = rewards.count_localization_reward(completions, alpha=alpha, **columns)
    return [a + b for a, b in zip(cls, cnt, strict=True)]


def _cls_loc(completions: list[str], alpha: float, **columns: Any) -> list[float]:
    cls = rewards.classification_reward(completions, **columns)
    loc = rewards.localization_reward(completions, alpha=alpha, **columns)
    return [a + b for a, b in zip(cls, loc, strict=True)]


def _cls_giou(completions: list[str], alpha: float, **columns: Any) -> list[float]:
    """r_cls + Eq. 4 with α = 0: the matched-GIoU term alone on anomalous samples (r_focus on normal ones)."""
    cls = rewards.classification_reward(completions, **columns)
    giou = rewards.localization_reward(completions, alpha=0.0, **columns)
    return [a + b for a, b in zip(cls, giou, strict=True)]


def _cls(completions: list[str], alpha: float, **columns: Any) -> list[float]:
    return rewards.classification_reward(completions, **columns)


SCHEMES: dict[str, Callable[..., list[float]]] = {
    "r_cls": _cls,
    "r_cls+r_count": _cls_count,
    "r_cls+r_giou": _cls_giou,
    "r_cls+r_loc": _cls_loc,
}


def preset_total(preset: Any, completions: list[str], alpha: float, **columns: Any) -> list[float]:
    """A preset's whole reward per completion: its reward functions summed with weight 1, as TRL does."""
    parts = [f(completions, **columns) for f in preset.reward_functions(alpha=alpha)]
    return [float(sum(v)) for v in zip(*parts, strict=True)]


class SampledResponses(BaseModel):
    """One sample and the responses sampled for it (a line of sampled_responses.jsonl)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    label: Literal["normal", "anomalous"]
    gt_boxes: list[list[float]] | None = None
    orig_width: int = Field(gt=0)
    orig_height: int = Field(gt=0)
    grid_width: int = Field(gt=0)
    grid_height: int = Field(gt=0)
    prompt_version: str = DEFAULT_PROMPT_VERSION
    responses: list[str] = Field(min_length=1)

    def columns(self) -> dict[str, list[Any]]:
        """The reward columns, repeated once per response, as TRL would pass them."""
        n = len(self.responses)
        row = {
            rewards.LABEL: self.label,
            rewards.GT_BOXES: self.gt_boxes,
            rewards.ORIG_WIDTH: self.orig_width,
            rewards.ORIG_HEIGHT: self.orig_height,
            rewards.GRID_WIDTH: self.grid_width,
            rewards.GRID_HEIGHT: self.grid_height,
            rewards.PROMPT_VERSION: self.prompt_version,
        }
        return {k: [v] * n for k, v in row.items()}


def read_responses(path: str | Path) -> list[SampledResponses]:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"responses file not found: {p}")
    out = []
    with p.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                out.append(SampledResponses.model_validate(json.loads(line)))
            except (json.JSONDecodeError, ValidationError) as exc:
                raise ValueError(f"{p}:{lineno}: not a valid response record: {exc}") from exc
    if not out:
        raise ValueError(f"{p}: no response records")
    return out


def write_responses(records: Iterable[SampledResponses], path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    with p.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(r.model_dump_json() + "\n")
    return p


def _zero_variance(records: list[SampledResponses], score: Callable[[SampledResponses], list[float]]) -> dict:
    zero = {"all": 0, "normal": 0, "anomalous": 0}
    means = []
    for rec in records:
        values = np.asarray(score(rec), dtype=float)
        means.append(float(values.mean()))
        if len(values) < 2 or float(values.max() - values.min()) <= ZERO_STD_TOL:
            zero["all"] += 1
            zero[rec.label] = zero.get(rec.label, 0) + 1
    return {
        "zero_variance_samples": zero["all"],
        "zero_variance_share": zero["all"] / len(records),
        "zero_variance_by_label": {k: v for k, v in zero.items() if k != "all"},
        "mean_reward": float(np.mean(means)),
    }


def analyse(records: list[SampledResponses], alpha: float = rewards.DEFAULT_ALPHA) -> dict[str, Any]:
    """Zero-variance share per scheme and per training preset (same prompt version), overall and by label.

    The random-reward preset adds noise to every response, so its groups never have zero variance:
    that says nothing about signal (the paper's RRP control).
    """
    from .presets import PRESETS

    per_scheme = {
        name: _zero_variance(records, lambda rec, scheme=scheme: scheme(rec.responses, alpha, **rec.columns()))
        for name, scheme in SCHEMES.items()
    }
    versions = {r.prompt_version for r in records}
    per_preset = {
        p.name: _zero_variance(records, lambda rec, p=p: preset_total(p, rec.responses, alpha, **rec.columns()))
        for p in PRESETS.values()
        if p.trainable and versions == {p.prompt_version}
    }
    labels = [r.label for r in records]
    return {
        "samples": len(records),
        "responses_per_sample": sorted({len(r.responses) for r in records}),
        "labels": {lab: labels.count(lab) for lab in sorted(set(labels))},
        "alpha": alpha,
        "schemes": per_scheme,
        "presets": per_preset,
    }


def plot(result: dict[str, Any], path: str | Path) -> Path:
    """Bar chart of the zero-variance share per scheme (the paper's Fig. 5 layout)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(result["schemes"])
    shares = [100 * result["schemes"][n]["zero_variance_share"] for n in names]
    colors = ["#8c8c8c", "#5b8fd6", "#6bb36b", "#d6762f"][: len(names)]
    presets = result.get("presets") or {}
    names += [f"{n}\n(preset)" for n in presets]
    shares += [100 * p["zero_variance_share"] for p in presets.values()]
    colors += ["#b9a6d9"] * len(presets)
    fig, ax = plt.subplots(figsize=(max(5.5, 1.1 * len(names)), 3.8), dpi=120)
    bars = ax.bar(range(len(names)), shares, color=colors)
    ax.set_xticks(range(len(names)), names, rotation=25, ha="right", fontsize=7)
    for bar, share in zip(bars, shares, strict=True):
        ax.annotate(f"{share:.1f}%", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=9)
    g = ",".join(str(v) for v in result["responses_per_sample"])
    ax.set_ylabel("samples with zero reward variance (%)")
    ax.set_ylim(0, 105)
    temperature = (result.get("source") or {}).get("temperature")
    at = f", temperature {temperature}" if temperature is not None else ""
    ax.set_title(f"{result['samples']} samples × {g} responses{at}", fontsize=10)
    fig.tight_layout()
    p = Path(path)
    fig.savefig(p)
    plt.close(fig)
    return p


def sample_records(
    loaded: Any,
    dataset: Any,
    num_samples: int,
    num_generations: int,
    max_new_tokens: int,
    temperature: float,
    top_p: float,
    seed: int,
) -> list[SampledResponses]:
    """Sample `num_generations` responses for `num_samples` rows (a seeded random choice of the split)."""
    from tqdm import tqdm

    from .generation import generate

    indices = list(range(len(dataset)))
    random.Random(seed).shuffle(indices)
    records = []
    for k, i in enumerate(tqdm(indices[:num_samples], desc="sampling", unit="sample")):
        row = dataset[i]
        responses = generate(loaded, row, num_generations, max_new_tokens, temperature, top_p, seed=seed + k)
        records.append(
            SampledResponses(
                id=row["id"],
                label=row[rewards.LABEL],
                gt_boxes=row[rewards.GT_BOXES],
                orig_width=row[rewards.ORIG_WIDTH],
                orig_height=row[rewards.ORIG_HEIGHT],
                grid_width=row[rewards.GRID_WIDTH],
                grid_height=row[rewards.GRID_HEIGHT],
                prompt_version=row[rewards.PROMPT_VERSION],
                responses=responses,
            )
        )
    return records


def add_arguments(parser: argparse.ArgumentParser) -> None:
    src = parser.add_argument_group("source (a model and a split, or stored responses)")
    src.add_argument("--model", type=Path, help="local checkpoint directory to sample from")
    src.add_argument("--adapter", type=Path, help="LoRA adapter directory on top of --model")
    src.add_argument("--split", type=Path, help="split manifest (JSONL of Sample records)")
    src.add_argument("--responses", type=Path, help=f"a stored {RESPONSES} to re-score without a model")
    gen = parser.add_argument_group("sampling")
    gen.add_argument("--num-samples", type=int, default=64, help="samples drawn from the split (default 64)")
    gen.add_argument("--num-generations", type=int, default=6, help="responses per sample, G (default 6)")
    gen.add_argument("--max-new-tokens", type=int, default=512, help="response length cap (default 512)")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (default 1.0)")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default 1.0)")
    gen.add_argument("--prompt-version", default=DEFAULT_PROMPT_VERSION, help="prompt the model answers")
    gen.add_argument("--no-reference", action="store_true", help="do not show the normal reference image")
    gen.add_argument("--min-pixels", type=int, default=None, help="model-grid budget, low (default: model's)")
    gen.add_argument("--max-pixels", type=int, default=None, help="model-grid budget, high (default: model's)")
    gen.add_argument("--dtype", default="bfloat16", help="model dtype (float32 on a CPU)")
    gen.add_argument("--seed", type=int, default=0, help="seed for the sample choice and sampling")
    parser.add_argument("--alpha", type=float, default=rewards.DEFAULT_ALPHA, help="α of r_count (default 1.0)")
    parser.add_argument("--out", type=Path, required=True, help=f"directory for {REPORT}, {CHART}, {RESPONSES}")


def run(args: argparse.Namespace) -> int:
    """Run the analysis from parsed arguments; returns the exit code."""
    if args.responses is not None:
        if args.model or args.split:
            raise ValueError("give either --responses, or --model with --split, not both")
        records = read_responses(args.responses)
        source = {"responses": str(args.responses)}
    else:
        if args.model is None or args.split is None:
            raise ValueError("give --model and --split to sample responses, or --responses to re-score stored ones")
        if args.num_samples < 1 or args.num_generations < 2:
            raise ValueError("--num-samples must be ≥ 1 and --num-generations ≥ 2 (variance needs two responses)")
        records = _sample_from_model(args)
        write_responses(records, args.out / RESPONSES)
        source = {"model": str(args.model), "adapter": str(args.adapter) if args.adapter else None,
                  "split": str(args.split), "temperature": args.temperature, "seed": args.seed}
    result = analyse(records, alpha=args.alpha)
    result["source"] = source
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / REPORT).write_text(json.dumps(result, indent=2))
    plot(result, args.out / CHART)
    for name, s in [*result["schemes"].items(), *((f"preset {k}", v) for k, v in result["presets"].items())]:
        print(f"{name:>30}: {100 * s['zero_variance_share']:5.1f}% of {result['samples']} samples have zero variance")
    print(f"wrote {args.out / REPORT} and {args.out / CHART}")
    return 0


def _sample_from_model(args: argparse.Namespace) -> list[SampledResponses]:
    from adfm.geometry import DEFAULT_MAX_PIXELS, DEFAULT_MIN_PIXELS

    from .data.training_view import ViewOptions, training_view
    from .modeling import load_model

    loaded = load_model(args.model, args.adapter, dtype=args.dtype,
                        min_pixels=args.min_pixels, max_pixels=args.max_pixels)
    size = loaded.processor.image_processor.size
    view = training_view(
        args.split,
        ViewOptions(
            prompt_version=args.prompt_version,
            min_pixels=args.min_pixels or size.get("shortest_edge", DEFAULT_MIN_PIXELS),
            max_pixels=args.max_pixels or size.get("longest_edge", DEFAULT_MAX_PIXELS),
            use_reference=not args.no_reference,
        ),
    )
    return sample_records(loaded, view, args.num_samples, args.num_generations, args.max_new_tokens,
                          args.temperature, args.top_p, args.seed)
