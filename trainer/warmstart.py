"""`adfm-train warmstart`: a supervised warm start of the tiny model on a synthetic task it can see.

GRPO only learns from groups whose rewards differ; a random model never writes a readable answer,
so every reward is the same zero and nothing is learnt, and the localization terms never see a box.
This teaches the tiny Qwen2.5-VL the multi-stage format with TRL's `SFTTrainer` on synthetic parts
whose answers (`adfm.protocol.format_response`) carry the boxes of the drawn defects' masks, in a
curriculum: large, high-contrast defects first, then smaller ones (`adfm.synthetic.TASK_DEFECT_SCALES`).
A tiny vision tower trained for a few minutes localizes roughly, so the warm-started model writes
the format with boxes of varying quality: the starting point the paper's Fig. 5 and Table 4 need.

The result is a full checkpoint directory (`<out>/model`) that `adfm-train --model`,
`adfm-train variance` and `adfm-export` read like any other, plus the task's held-out test split
(`<out>/data/test/split.jsonl`). It is cached: the same settings reuse the built model.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from adfm.geometry import GRID_FACTOR, ModelGrid
from adfm.protocol import DEFAULT_PROMPT_VERSION, format_response
from adfm.synthetic import TASK_DEFECT_SCALES, TASK_DEFECTS

from . import rewards

log = logging.getLogger("adfm.warmstart")

RECORD = "adfm_warm_start.json"
MODEL = "model"
#: The task's pixel budget: every image becomes a 112×112 grid (16 visual tokens), so a warm start
#: fits in minutes on a 2-core CPU.
TASK_PIXELS = (4 * GRID_FACTOR) ** 2


@dataclass(frozen=True)
class WarmStartSpec:
    """Everything that decides the warm-started model; its digest keys the cache."""

    categories: tuple[str, ...] = ("washer",)
    defects: tuple[str, ...] = TASK_DEFECTS
    defect_scales: tuple[float, ...] = TASK_DEFECT_SCALES
    image_size: int = 256
    pixels: int = TASK_PIXELS
    train_per_stage: int = 48
    test_per_class: int = 16
    steps_per_stage: tuple[int, ...] = (30, 30, 40)
    #: A last phase on a larger split at the hardest size, the learning rate decaying to zero: it
    #: turns a model that mostly writes the format into one that writes it greedily too.
    final_steps: int = 120
    final_per_class: int = 48
    batch_size: int = 4
    learning_rate: float = 1e-3
    prompt_version: str = DEFAULT_PROMPT_VERSION
    seed: int = 0

    def __post_init__(self) -> None:
        if len(self.steps_per_stage) != len(self.defect_scales):
            raise ValueError(
                f"steps_per_stage has {len(self.steps_per_stage)} entries for {len(self.defect_scales)} defect scales"
            )
        if min(self.steps_per_stage) < 1 or self.train_per_stage < 2 or self.test_per_class < 1:
            raise ValueError("steps per stage must be ≥ 1, train_per_stage ≥ 2 and test_per_class ≥ 1")
        if self.final_steps < 0 or self.final_per_class < 1:
            raise ValueError("final_steps must be ≥ 0 and final_per_class ≥ 1")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]

    def curriculum_digest(self) -> str:
        """What decides the model after the curriculum stages (before the final phase)."""
        fields = {k: v for k, v in asdict(self).items() if k not in ("final_steps", "final_per_class")}
        return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class WarmStartResult:
    """Where the warm start went and how its loss moved, stage by stage."""

    out: str
    model_dir: str
    test_split: str
    train_splits: list[str]
    spec: dict[str, Any]
    digest: str
    seconds: float
    stages: list[dict[str, Any]] = field(default_factory=list)
    cached: bool = False


# ---- the data (no torch: tests read it directly) -------------------------------------------------


def reasoning(row: dict[str, Any]) -> tuple[str, str]:
    """The <think> and <rethink> texts of a target answer: short, and true to the sample."""
    product = str(row.get("category") or "part").replace("_", " ")
    if rewards.is_anomalous(row[rewards.LABEL]):
        defect = row.get("defect_type") or "defect"
        return (f"Scanning the {product}: one region stands out.",
                f"The {defect} is darker than the surface around it: a real defect.")
    return f"Scanning the {product}: the surface is even.", "Nothing stands out from normal texture."


def target_answer(row: dict[str, Any]) -> str:
    """The answer a row should get, in its prompt version's format, boxes in model-grid pixels."""
    grid = ModelGrid(
        row[rewards.ORIG_WIDTH], row[rewards.ORIG_HEIGHT], row[rewards.GRID_WIDTH], row[rewards.GRID_HEIGHT]
    )
    anomalous = rewards.is_anomalous(row[rewards.LABEL])
    boxes = grid.to_grid(row[rewards.GT_BOXES] or []).tolist() if anomalous else []
    labels = [row.get("defect_type") or "defect"] * len(boxes)
    think, rethink = reasoning(row)
    return format_response(anomalous, boxes, labels, version=row[rewards.PROMPT_VERSION], think=think, rethink=rethink)


def sft_rows(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """A training-view batch as TRL's prompt-completion rows: prompt, completion, images."""
    from .data.training_view import materialize

    full = materialize(batch)
    n = len(full["prompt"])
    rows = [{k: full[k][i] for k in full} for i in range(n)]
    return {
        "prompt": full["prompt"],
        "completion": [[{"role": "assistant", "content": [{"type": "text", "text": target_answer(r)}]}]
                       for r in rows],
        "images": full["images"],
    }


def task_split(spec: WarmStartSpec, root: Path, name: str, per_class: int, seed: int,
               scale: float | None = None) -> Path:
    """A split of the synthetic task under `root/name`: `per_class` normal and defective parts each,
    defects at `scale` (default: the last, hardest curriculum stage's). Cached like any synthetic split."""
    from .config import SyntheticSection
    from .synthetic_split import build_synthetic_split

    section = SyntheticSection(root=root / name, categories=list(spec.categories), defects=list(spec.defects),
                               normal_per_category=per_class, anomalous_per_category=per_class,
                               image_size=spec.image_size, seed=seed,
                               defect_scale=spec.defect_scales[-1] if scale is None else scale)
    return build_synthetic_split(section, "test" if name == "test" else "train")


def build_splits(spec: WarmStartSpec, root: Path) -> tuple[list[Path], Path]:
    """One training split per curriculum stage (defects shrinking), and the held-out test split.

    The test split is drawn at the last stage's size with its own seed: the task the model is judged on.
    """
    trains = [task_split(spec, root, f"stage{k}", spec.train_per_stage // 2, spec.seed + k, scale)
              for k, scale in enumerate(spec.defect_scales)]
    return trains, task_split(spec, root, "test", spec.test_per_class, spec.seed + 100)


def task_view(split: str | Path, spec: WarmStartSpec | None = None, prompt_version: str | None = None):
    """The training view of a task split: the task's pixel budget, no reference image."""
    from .data.training_view import ViewOptions, training_view

    spec = spec or WarmStartSpec()
    return training_view(split, ViewOptions(prompt_version=prompt_version or spec.prompt_version,
                                            min_pixels=spec.pixels, max_pixels=spec.pixels, use_reference=False))


# ---- training ------------------------------------------------------------------------------------


def _read_cached(out: Path, spec: WarmStartSpec) -> WarmStartResult | None:
    record = out / RECORD
    if not record.is_file() or not (out / MODEL / "config.json").is_file():
        return None
    try:
        data = json.loads(record.read_text())
    except json.JSONDecodeError:
        return None
    if data.get("digest") != spec.digest() or not Path(data.get("test_split", "")).is_file():
        return None
    return WarmStartResult(**{**data, "cached": True})


def warm_start(out: str | Path, spec: WarmStartSpec | None = None, *, force: bool = False) -> WarmStartResult:
    """Build (or reuse) the warm-started tiny model under `out`; see the module note."""
    import torch
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from adfm.offline import force_offline

    from .modeling import load_model
    from .tiny_model import build_tiny_qwen25vl

    force_offline()
    spec = spec or WarmStartSpec()
    out = Path(out)
    if not force and (cached := _read_cached(out, spec)) is not None:
        log.info("reusing the warm start in %s", out)
        return cached
    t0 = time.perf_counter()
    trains, test = build_splits(spec, out / "data")
    final_split = task_split(spec, out / "data", "final", spec.final_per_class, spec.seed + 50)

    class LossLog(TrainerCallback):
        def __init__(self) -> None:
            self.losses: list[float] = []

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                self.losses.append(float(logs["loss"]))

    def sft(model: Any, processor: Any, split: Path, steps: int, name: str, seed: int, schedule: str) -> dict:
        dataset = task_view(split, spec).with_transform(sft_rows)
        losses = LossLog()
        args = SFTConfig(
            output_dir=str(out / "sft" / name),
            max_steps=steps,
            per_device_train_batch_size=spec.batch_size,
            learning_rate=spec.learning_rate,
            lr_scheduler_type=schedule,
            logging_steps=5,
            save_strategy="no",
            report_to=[],
            use_cpu=not torch.cuda.is_available(),
            remove_unused_columns=False,
            completion_only_loss=True,
            max_length=None,
            seed=seed,
            disable_tqdm=True,
        )
        started = time.perf_counter()
        SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=processor,
                   callbacks=[losses]).train()
        return {"steps": steps, "seconds": time.perf_counter() - started,
                "first_loss": losses.losses[0] if losses.losses else None,
                "last_loss": losses.losses[-1] if losses.losses else None}

    curriculum = out / "curriculum"
    marker = curriculum / "adfm_curriculum.json"
    reuse = (not force and marker.is_file() and (curriculum / "config.json").is_file()
             and json.loads(marker.read_text()).get("digest") == spec.curriculum_digest())
    if reuse:
        log.info("reusing the curriculum stages in %s", curriculum)
        loaded = load_model(curriculum, dtype="float32", min_pixels=spec.pixels, max_pixels=spec.pixels)
        stages = json.loads(marker.read_text())["stages"]
    else:
        base = build_tiny_qwen25vl(out / "base", min_pixels=spec.pixels, max_pixels=spec.pixels, seed=spec.seed)
        loaded = load_model(base, dtype="float32", min_pixels=spec.pixels, max_pixels=spec.pixels)
        torch.manual_seed(spec.seed)
        stages = []
        for k, (split, scale, steps) in enumerate(zip(trains, spec.defect_scales, spec.steps_per_stage,
                                                      strict=True)):
            stages.append({"stage": k, "defect_scale": scale,
                           **sft(loaded.model, loaded.processor, split, steps, f"stage{k}", spec.seed + k,
                                 "constant")})
            log.info("warm start stage %d (defects ×%.2f): %s", k, scale, stages[-1])
        loaded.model.save_pretrained(curriculum)
        loaded.processor.save_pretrained(curriculum)
        marker.write_text(json.dumps({"digest": spec.curriculum_digest(), "stages": stages}, indent=2))
    model = loaded.model
    if spec.final_steps:
        stages.append({"stage": len(spec.defect_scales), "defect_scale": spec.defect_scales[-1], "final": True,
                       **sft(model, loaded.processor, final_split, spec.final_steps, "final", spec.seed + 50,
                             "linear")})
        log.info("warm start final phase: %s", stages[-1])
    model.eval()
    model_dir = out / MODEL
    model.save_pretrained(model_dir)
    loaded.processor.save_pretrained(model_dir)
    (model_dir / "adfm_tiny.json").write_text(json.dumps(
        {"kind": "adfm-tiny-qwen25vl", "seed": spec.seed, "min_pixels": spec.pixels, "max_pixels": spec.pixels,
         "random_weights": False, "warm_start": True}, indent=2))
    result = WarmStartResult(out=str(out), model_dir=str(model_dir), test_split=str(test),
                             train_splits=[str(s) for s in trains], spec=asdict(spec), digest=spec.digest(),
                             seconds=time.perf_counter() - t0, stages=stages)
    (out / RECORD).write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "cached"}, indent=2))
    return result


# ---- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    spec = WarmStartSpec()
    parser.add_argument("--out", type=Path, default=Path(".adfm-cache/warm-start"),
                        help="directory for the model, data and record (default %(default)s)")
    parser.add_argument("--steps-per-stage", type=int, nargs="+", metavar="N", default=list(spec.steps_per_stage),
                        help="SFT steps of each curriculum stage, easy to hard (default %(default)s)")
    parser.add_argument("--final-steps", type=int, default=spec.final_steps,
                        help="SFT steps of the last phase at the hardest size, learning rate decaying "
                        "(default %(default)s)")
    parser.add_argument("--train-per-stage", type=int, default=spec.train_per_stage,
                        help="synthetic parts per stage, half of them defective (default %(default)s)")
    parser.add_argument("--seed", type=int, default=spec.seed, help="seed of data, weights and order")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached warm start matches")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = WarmStartSpec(steps_per_stage=tuple(args.steps_per_stage), train_per_stage=args.train_per_stage,
                         final_steps=args.final_steps, seed=args.seed)
    result = warm_start(args.out, spec, force=args.force)
    how = "reused" if result.cached else f"built in {result.seconds:.0f} s"
    print(f"warm start {how}: model {result.model_dir}; held-out test split {result.test_split}")
    for s in result.stages:
        loss = f"loss {s['first_loss']:.3f} → {s['last_loss']:.3f}" if s["last_loss"] is not None else ""
        name = "final" if s.get("final") else f"stage {s['stage']}"
        print(f"  {name}: defects ×{s['defect_scale']}, {s['steps']} steps, {s['seconds']:.0f} s {loss}")
    print(result.model_dir)
    return 0
