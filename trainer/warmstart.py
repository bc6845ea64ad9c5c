"""`adfm-train warmstart`: a supervised warm start that teaches the tiny model to see the synthetic defects.

GRPO only learns from groups whose rewards differ, and no reward can reward seeing what a model does
not see. A plain SFT on long answers teaches the format but not the parts: with ~100-token targets of
which ~1–10 tokens depend on the image, the decision carries about 1 % of the gradient. So this warm
start is built around the image:

1. **perception**: a per-cell head on the vision tower's merged tokens (one per 28×28 cell of the
   model grid) learns "this cell holds defect pixels", which of its 4×4 blocks of 7 px do, where the
   cell sits (row, column) and, on a cell that holds the defect, the target box's snapped coordinates
   — so the language model can read a defect's place and extent from the token it attends to.
   Binary cross-entropy / cross-entropy on fresh parts every step.
2. **SFT stages**, easy to hard (`TASK_DEFECT_SCALES`), then a last phase mixing the evaluation's
   sizes with the learning rate decaying to zero. Fresh parts every step, rendered like the station
   sees them (256² resized onto the 112² model grid by `adfm.geometry`), three in four of them
   defective, since only a defective part's answer has a box to learn. Short targets from words
   the tokenizer knows (`<think>spot [{"bbox_2d": …, "label": "spot"}]</think>…`), boxes snapped to
   half a patch (7 px, the edges of the perception blocks: finer grids that cut across them, 4 or 5
   px, trained worse), extra loss weight on the decision, the defect-type and the coordinate tokens
   and on what ends a number; the perception loss stays on as an auxiliary term.

The result is a full checkpoint directory (`<out>/model`, the perception head is not part of it) that
`adfm-train --model`, `adfm-train variance` and `adfm-export` read like any other, the held-out test
split (`<out>/data/test/split.jsonl`), and the greedy held-out scores in the record. Cached by the
spec's digest.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from adfm.geometry import GRID_FACTOR, ModelGrid
from adfm.protocol import DEFAULT_PROMPT_VERSION, format_response
from adfm.synthetic import TASK_DEFECT_SCALES, TASK_DEFECTS, make_sample

from . import rewards

log = logging.getLogger("adfm.warmstart")

RECORD = "adfm_warm_start.json"
MODEL = "model"
#: The task's pixel budget: every image becomes a 112×112 grid (16 visual tokens), so a warm start
#: fits in minutes on a 2-core CPU.
TASK_PIXELS = (4 * GRID_FACTOR) ** 2
#: Boxes of the targets are snapped to multiples of this many grid pixels (half a 14-px patch).
BOX_QUANTUM = 7
#: The perception labels' block: a quarter of a merged token's 28-px cell, so each visual token learns
#: which of its 4×4 blocks hold defect pixels, finer than the 14-px patches it is made of.
BLOCK = GRID_FACTOR // 4
#: Defect scales of the held-out evaluation and the GRPO prompts: solved, borderline and hard parts.
MIXED_SCALES = (1.4, 1.0, 0.8)
#: Version of the training recipe; part of the digest, so a changed recipe never reuses an old model.
RECIPE = "perception-sft-v5"


@dataclass(frozen=True)
class WarmStartSpec:
    """Everything that decides the warm-started model; its digest keys the cache."""

    categories: tuple[str, ...] = ("washer",)
    defects: tuple[str, ...] = TASK_DEFECTS
    defect_scales: tuple[float, ...] = TASK_DEFECT_SCALES
    image_size: int = 256
    pixels: int = TASK_PIXELS
    perception_steps: int = 480
    steps_per_stage: tuple[int, ...] = (60, 60, 100)
    #: The last phase: parts at these sizes, the learning rate decaying to zero.
    final_steps: int = 260
    final_scales: tuple[float, ...] = (1.4, 1.0)
    batch_size: int = 16
    #: Share of defective parts in each SFT batch: a normal part's answer holds no box to learn, and at
    #: half defective the boxes stayed coarse (IoU ≥ 0.5 on 38–48 % of defective parts in 3 runs of v3;
    #: 69 and 75 % in two seeds of v4 at 3/4, the decision still 97.7–100 % right).
    defective_share: float = 0.75
    learning_rate: float = 1e-3
    #: Loss weight of the decision, defect-type and coordinate tokens (the others weigh 1).
    key_token_weight: float = 5.0
    #: Weight of the perception loss while the answers are trained.
    aux_weight: float = 0.5
    box_quantum: int = BOX_QUANTUM
    test_per_class: int = 128
    prompt_version: str = DEFAULT_PROMPT_VERSION
    seed: int = 0
    recipe: str = RECIPE

    def __post_init__(self) -> None:
        if len(self.steps_per_stage) != len(self.defect_scales):
            raise ValueError(
                f"steps_per_stage has {len(self.steps_per_stage)} entries for {len(self.defect_scales)} defect scales"
            )
        if min(self.steps_per_stage) < 0 or self.perception_steps < 0 or self.final_steps < 0:
            raise ValueError("step counts must be ≥ 0")
        if self.batch_size < 2 or self.test_per_class < 1:
            raise ValueError("batch_size must be ≥ 2 and test_per_class ≥ 1")
        if not self.final_scales or min(self.final_scales) <= 0:
            raise ValueError(f"final_scales must be positive sizes, got {self.final_scales}")
        if self.box_quantum < 1:
            raise ValueError(f"box_quantum must be ≥ 1, got {self.box_quantum}")
        if not 0 < self.defective_share < 1:
            raise ValueError(f"defective_share must be between 0 and 1, got {self.defective_share}")

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class WarmStartResult:
    """Where the warm start went, how its losses moved, and how it answers held-out parts."""

    out: str
    model_dir: str
    test_split: str
    spec: dict[str, Any]
    digest: str
    seconds: float
    cpu_seconds: float = 0.0
    stages: list[dict[str, Any]] = field(default_factory=list)
    held_out: dict[str, Any] = field(default_factory=dict)
    cached: bool = False


# ---- the data (no torch: tests read it directly) -------------------------------------------------


def snap_box(box: list[float], quantum: int, width: int, height: int) -> list[int]:
    """A grid box rounded to multiples of `quantum`, inside the grid, never empty."""
    x1, y1, x2, y2 = (round(float(v) / quantum) * quantum for v in box)
    x1 = min(max(x1, 0), (width - quantum) // quantum * quantum)
    y1 = min(max(y1, 0), (height - quantum) // quantum * quantum)
    x2, y2 = min(max(x2, x1 + quantum), width), min(max(y2, y1 + quantum), height)
    return [x1, y1, x2, y2]


def reasoning(row: dict[str, Any]) -> tuple[str, str]:
    """The <think> and <rethink> texts of a target answer: the defect's kind, or `normal` — one
    token the tokenizer knows, where the model commits to its decision."""
    if rewards.is_anomalous(row[rewards.LABEL]):
        defect = str(row.get("defect_type") or "defect")
        return defect, defect
    return "normal", "normal"


def target_answer(row: dict[str, Any], quantum: int = BOX_QUANTUM) -> str:
    """The answer a row should get, in its prompt version's format, boxes in model-grid pixels snapped
    to `quantum`."""
    grid = ModelGrid(
        row[rewards.ORIG_WIDTH], row[rewards.ORIG_HEIGHT], row[rewards.GRID_WIDTH], row[rewards.GRID_HEIGHT]
    )
    anomalous = rewards.is_anomalous(row[rewards.LABEL])
    raw = grid.to_grid(row[rewards.GT_BOXES] or []).tolist() if anomalous else []
    boxes = [snap_box(b, quantum, grid.width, grid.height) for b in raw]
    labels = [str(row.get("defect_type") or "defect")] * len(boxes)
    think, rethink = reasoning(row)
    return format_response(anomalous, boxes, labels, version=row[rewards.PROMPT_VERSION], think=think, rethink=rethink)


def mask_box(mask: np.ndarray) -> list[float] | None:
    """The bounding box (x1, y1, x2, y2, pixel edges) of a mask's non-zero pixels, None when empty."""
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def batch_kinds(n: int, defective_share: float, defects: tuple[str, ...]) -> list[str | None]:
    """The defect kind of each of `n` parts (None: normal): `round(n * defective_share)` defective, at
    least one of each class, the kinds taking turns."""
    n_bad = min(n - 1, max(1, round(n * defective_share)))
    return [None] * (n - n_bad) + [defects[i % len(defects)] for i in range(n_bad)]


@dataclass
class TaskPart:
    """One freshly rendered part, as the model sees it, with what it should answer and perceive."""

    image: Any  # PIL image on the model grid
    answer: str
    defective: bool
    #: Per `BLOCK`-px block of the grid: holds defect pixels (rows × cols of blocks).
    block_defect: np.ndarray
    truth_box: list[float] | None  # original-image pixels
    #: The target's box on the grid, snapped (None for a normal part).
    grid_box: list[int] | None = None


def render_part(spec: WarmStartSpec, rng: np.random.Generator, defect: str | None, scale: float) -> TaskPart:
    """A part rendered at the task's image size and resized onto the model grid as the station does."""
    from PIL import Image

    category = spec.categories[int(rng.integers(len(spec.categories)))]
    size = spec.image_size
    sample = make_sample(category, defect, rng, (size, size), scale)
    grid = ModelGrid.for_image(size, size, min_pixels=spec.pixels, max_pixels=spec.pixels)
    image = grid.resize(Image.fromarray(sample.image))
    box = mask_box(sample.mask)
    row = {rewards.LABEL: "anomalous" if defect else "normal", rewards.GT_BOXES: [box] if box else [],
           rewards.ORIG_WIDTH: size, rewards.ORIG_HEIGHT: size, rewards.GRID_WIDTH: grid.width,
           rewards.GRID_HEIGHT: grid.height, rewards.PROMPT_VERSION: spec.prompt_version, "defect_type": defect,
           "category": category}
    on_grid = np.asarray(Image.fromarray(sample.mask).resize((grid.width, grid.height), Image.Resampling.BILINEAR))
    hb, wb = grid.height // BLOCK, grid.width // BLOCK
    block_defect = (on_grid.reshape(hb, BLOCK, wb, BLOCK).max(axis=(1, 3)) > 64)
    grid_box = snap_box(grid.to_grid([box]).tolist()[0], spec.box_quantum, grid.width, grid.height) if box else None
    return TaskPart(image=image, answer=target_answer(row, spec.box_quantum), defective=defect is not None,
                    block_defect=block_defect, truth_box=box, grid_box=grid_box)


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


def test_split(spec: WarmStartSpec, root: Path, scale: float | None = None) -> Path:
    """The held-out split at `scale` (default the hardest curriculum size), drawn with its own seed."""
    scale = spec.defect_scales[-1] if scale is None else scale
    name = "test" if scale == spec.defect_scales[-1] else f"test-x{scale:g}"
    return task_split(spec, root, name, spec.test_per_class, spec.seed + 100, scale)


def mixed_split(spec: WarmStartSpec, root: Path, name: str, per_class: int, seed: int,
                scales: tuple[float, ...] = MIXED_SCALES) -> Path:
    """One split of `per_class` normal and defective parts at each of `scales` (solved, borderline and
    hard parts side by side); each sample's id and `extra.defect_scale` say its size."""
    from .data.records import iter_manifest, write_manifest

    samples = []
    for k, scale in enumerate(scales):
        part = task_split(spec, root / name, f"x{scale:g}", per_class, seed + 1000 * k, scale)
        samples += [s.model_copy(update={"id": f"{s.id}@x{scale:g}", "extra": {**s.extra, "defect_scale": scale}})
                    for s in iter_manifest(part)]
    return write_manifest(samples, root / name / "split.jsonl")


def task_view(split: str | Path, spec: WarmStartSpec | None = None, prompt_version: str | None = None):
    """The training view of a task split: the task's pixel budget, no reference image."""
    from .data.training_view import ViewOptions, training_view

    spec = spec or WarmStartSpec()
    return training_view(split, ViewOptions(prompt_version=prompt_version or spec.prompt_version,
                                            min_pixels=spec.pixels, max_pixels=spec.pixels, use_reference=False))


# ---- training ------------------------------------------------------------------------------------


class _Trainer:
    """The model, its perception head and one optimizer; steps on freshly rendered batches."""

    def __init__(self, spec: WarmStartSpec, model_dir: Path) -> None:
        import torch

        from adfm.protocol import attach_images, build_messages

        from .modeling import load_model

        self.torch = torch
        self.spec = spec
        self.loaded = load_model(model_dir, dtype="float32", min_pixels=spec.pixels, max_pixels=spec.pixels)
        self.model = self.loaded.model
        self.processor = self.loaded.processor
        self.tokenizer = self.processor.tokenizer
        self.visual = self.model.model.visual
        hidden = self.model.config.text_config.hidden_size
        self.cells_per_side = math.isqrt(spec.pixels) // GRID_FACTOR
        # per merged token: [cell holds defect, 16 blocks hold defect, row (n), column (n), and for a cell
        # that holds defect pixels the target box's four snapped coordinates (q + 1 classes each)]
        self.coord_classes = math.isqrt(spec.pixels) // spec.box_quantum + 1
        self.block_side = GRID_FACTOR // BLOCK  # blocks per merged token's side
        self.blocks = self.block_side ** 2
        self.head = torch.nn.Linear(hidden, 1 + self.blocks + 2 * self.cells_per_side + 4 * self.coord_classes)
        product = spec.categories[0]
        messages = attach_images(build_messages(spec.prompt_version, product=product), [None])
        self.prompt = self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        self.end = "<|im_end|>"
        self.rng = np.random.default_rng([spec.seed, 7])
        self.optimizer = None
        self._captured: dict[str, Any] = {}
        self.visual.register_forward_hook(lambda _m, _i, out: self._captured.__setitem__("merged", out.pooler_output))
        self.key_tokens = self._key_token_ids()

    def _key_token_ids(self) -> set[int]:
        """Tokens of the decision, the defect kinds, `normal`, the digits and what ends a number (`,`
        `],`): the ones that need the image, or where a copied box runs on ("9105]") if they are weak."""
        vocab = self.tokenizer.get_vocab()
        words = set(self.spec.defects) | {"normal", "yes", "no", ",", "],"}
        keys = set()
        for token, tid in vocab.items():
            text = self.tokenizer.convert_tokens_to_string([token]).strip(' >"')
            if text in words or (text and text.isdigit()):
                keys.add(tid)
        return keys

    def parts(self, n: int, scales: tuple[float, ...], defective_share: float = 0.5) -> list[TaskPart]:
        kinds = batch_kinds(n, defective_share, self.spec.defects)
        order = self.rng.permutation(n)
        return [render_part(self.spec, self.rng, kinds[i], float(scales[int(self.rng.integers(len(scales)))]))
                for i in order]

    def _perception_targets(self, parts: list[TaskPart]):
        torch = self.torch
        n = self.cells_per_side
        cell, sub, rows, cols, coords = [], [], [], [], []
        for p in parts:
            q = self.spec.box_quantum
            box = [v // q for v in p.grid_box] if p.grid_box else [-100] * 4
            coords.append(np.tile(np.asarray(box), (n * n, 1)))
            b = self.block_side
            pd = p.block_defect.reshape(n, b, n, b).transpose(0, 2, 1, 3).reshape(n * n, self.blocks)
            sub.append(pd)
            cell.append(pd.max(axis=1))
            r, c = np.divmod(np.arange(n * n), n)
            rows.append(r)
            cols.append(c)
        f = lambda a, dt: torch.as_tensor(np.concatenate(a), dtype=dt)  # noqa: E731
        cell_t, coords_t = f(cell, torch.float32), f(coords, torch.long)
        coords_t[cell_t == 0] = -100  # the box is read from the cells that hold the defect
        return cell_t, f(sub, torch.float32), f(rows, torch.long), f(cols, torch.long), coords_t

    def perception_loss(self, merged, parts: list[TaskPart]):
        torch = self.torch
        cell, sub, rows, cols, coords = self._perception_targets(parts)
        n, k, m = self.cells_per_side, self.coord_classes, 1 + self.blocks
        logits = self.head(merged)
        bce = torch.nn.functional.binary_cross_entropy_with_logits
        ce = torch.nn.functional.cross_entropy
        loss = (bce(logits[:, 0], cell) + bce(logits[:, 1:m], sub)
                + 0.5 * (ce(logits[:, m:m + n], rows) + ce(logits[:, m + n:m + 2 * n], cols)))
        if bool((coords[:, 0] >= 0).any()):
            box_logits = logits[:, m + 2 * n:].reshape(-1, 4, k)
            loss = loss + 0.5 * ce(box_logits.reshape(-1, k), coords.reshape(-1), ignore_index=-100)
        decided = logits[:, 0].detach().reshape(len(parts), -1).max(dim=1).values > 0
        right = sum(bool(d) == p.defective for d, p in zip(decided.tolist(), parts, strict=True))
        return loss, right / len(parts)

    def _optimizer(self, params, lr: float):
        return self.torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def perception_stage(self, steps: int, scales: tuple[float, ...], every: int) -> dict[str, Any]:
        """Train the vision tower and the head alone on "which cells hold defect pixels"."""
        params = list(self.visual.parameters()) + list(self.head.parameters())
        opt = self._optimizer(params, self.spec.learning_rate)
        started, losses, accs = time.perf_counter(), [], []
        self.model.train()
        for step in range(steps):
            parts = self.parts(self.spec.batch_size, scales)
            pixels = self.processor.image_processor(images=[p.image for p in parts], return_tensors="pt",
                                                    do_resize=False)
            merged = self.visual(pixels["pixel_values"], grid_thw=pixels["image_grid_thw"]).pooler_output
            loss, acc = self.perception_loss(merged, parts)
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(float(loss.detach()))
            accs.append(acc)
            if (step + 1) % every == 0 or step + 1 == steps:
                log.info("perception step %d/%d: loss %.3f, batch accuracy (max over cells) %.2f, %.0f s",
                         step + 1, steps, statistics_mean(losses[-every:]), statistics_mean(accs[-every:]),
                         time.perf_counter() - started)
        return {"stage": "perception", "steps": steps, "defect_scales": list(scales),
                "seconds": time.perf_counter() - started, "first_loss": losses[0] if losses else None,
                "last_loss": statistics_mean(losses[-10:]) if losses else None,
                "last_batch_accuracy": statistics_mean(accs[-10:]) if accs else None}

    def _batch(self, parts: list[TaskPart]):
        torch = self.torch
        texts = [self.prompt + p.answer + self.end for p in parts]
        enc = self.processor(text=texts, images=[p.image for p in parts], padding=True, padding_side="right",
                             return_tensors="pt", do_resize=False)
        n_prompt = self.processor(text=[self.prompt], images=[parts[0].image], return_tensors="pt",
                                  do_resize=False)["input_ids"].shape[1]
        labels = enc["input_ids"].clone()
        labels[:, :n_prompt] = -100
        labels[enc["attention_mask"] == 0] = -100
        weights = torch.ones_like(labels, dtype=torch.float32)
        key = torch.as_tensor(sorted(self.key_tokens))
        weights[torch.isin(labels, key)] = self.spec.key_token_weight
        weights[labels == -100] = 0.0
        return enc, labels, weights, n_prompt

    def sft_stage(self, name: str, steps: int, scales: tuple[float, ...], schedule: str, every: int) -> dict:
        """Train the whole model on the short answers (weighted) plus the perception loss."""
        torch = self.torch
        params = list(self.model.parameters()) + list(self.head.parameters())
        opt = self._optimizer(params, self.spec.learning_rate)
        started, losses, auxes = time.perf_counter(), [], []
        self.model.train()
        for step in range(steps):
            if schedule == "linear":
                for g in opt.param_groups:
                    g["lr"] = self.spec.learning_rate * (1 - step / steps)
            parts = self.parts(self.spec.batch_size, scales, self.spec.defective_share)
            enc, labels, weights, n_prompt = self._batch(parts)
            # the prompt is the same length for every part: only the answer's positions need logits
            keep = labels.shape[1] - n_prompt + 1
            logits = self.model(**enc, logits_to_keep=keep).logits[:, :-1]
            target, w = labels[:, n_prompt:], weights[:, n_prompt:]
            ce = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                                   target.reshape(-1).clamp(min=0), reduction="none")
            ce = ce.reshape(target.shape)
            answer_loss = (ce * w).sum() / w.sum()
            aux, _ = self.perception_loss(self._captured["merged"], parts)
            loss = answer_loss + self.spec.aux_weight * aux
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()
            losses.append(float(answer_loss.detach()))
            auxes.append(float(aux.detach()))
            if (step + 1) % every == 0 or step + 1 == steps:
                log.info("%s step %d/%d: answer loss %.3f, perception loss %.3f, %.0f s", name, step + 1, steps,
                         statistics_mean(losses[-every:]), statistics_mean(auxes[-every:]),
                         time.perf_counter() - started)
        return {"stage": name, "steps": steps, "defect_scales": list(scales), "schedule": schedule,
                "seconds": time.perf_counter() - started, "first_loss": losses[0] if losses else None,
                "last_loss": statistics_mean(losses[-10:]) if losses else None,
                "last_perception_loss": statistics_mean(auxes[-10:]) if auxes else None}


def statistics_mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else float("nan")


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
    try:
        return WarmStartResult(**{**data, "cached": True})
    except TypeError:
        return None


def warm_start(out: str | Path, spec: WarmStartSpec | None = None, *, force: bool = False,
               evaluate: bool = True) -> WarmStartResult:
    """Build (or reuse) the warm-started tiny model under `out`; see the module note.

    With `evaluate`, the greedy held-out scores at the hardest curriculum size go into the record.
    """
    import torch

    from adfm.offline import force_offline

    from .tiny_model import build_tiny_qwen25vl

    force_offline()
    spec = spec or WarmStartSpec()
    out = Path(out)
    if not force and (cached := _read_cached(out, spec)) is not None:
        log.info("reusing the warm start in %s", out)
        return cached
    t0, c0 = time.perf_counter(), time.process_time()
    test = test_split(spec, out / "data")
    torch.manual_seed(spec.seed)
    base = build_tiny_qwen25vl(out / "base", min_pixels=spec.pixels, max_pixels=spec.pixels, seed=spec.seed)
    trainer = _Trainer(spec, base)
    every = 20
    stages = []
    if spec.perception_steps:
        stages.append(trainer.perception_stage(spec.perception_steps, spec.defect_scales, every))
    for k, (scale, steps) in enumerate(zip(spec.defect_scales, spec.steps_per_stage, strict=True)):
        if steps:
            stages.append(trainer.sft_stage(f"sft stage {k} (defects ×{scale:g})", steps, (scale,), "constant", every))
    if spec.final_steps:
        stages.append(trainer.sft_stage("final", spec.final_steps, spec.final_scales, "linear", every))
    model = trainer.model.eval()
    model_dir = out / MODEL
    model.save_pretrained(model_dir)
    trainer.processor.save_pretrained(model_dir)
    (model_dir / "adfm_tiny.json").write_text(json.dumps(
        {"kind": "adfm-tiny-qwen25vl", "seed": spec.seed, "min_pixels": spec.pixels, "max_pixels": spec.pixels,
         "random_weights": False, "warm_start": True, "recipe": spec.recipe}, indent=2))
    train_seconds = time.perf_counter() - t0
    held_out: dict[str, Any] = {}
    if evaluate:
        from .warmstart_eval import evaluate_split

        log.info("greedy answers on the %d held-out parts…", 2 * spec.test_per_class)
        held_out = {f"x{spec.defect_scales[-1]:g}": evaluate_split(trainer.loaded, test, spec)}
        log.info("held-out: %s", {k: v for k, v in held_out[f"x{spec.defect_scales[-1]:g}"].items()
                                  if not isinstance(v, list | dict)})
    result = WarmStartResult(out=str(out), model_dir=str(model_dir), test_split=str(test), spec=asdict(spec),
                             digest=spec.digest(), seconds=train_seconds, cpu_seconds=time.process_time() - c0,
                             stages=stages, held_out=held_out)
    (out / RECORD).write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "cached"}, indent=2))
    return result


# ---- the command -----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    spec = WarmStartSpec()
    parser.add_argument("--out", type=Path, default=Path(".adfm-cache/warm-start"),
                        help="directory for the model, data and record (default %(default)s)")
    parser.add_argument("--perception-steps", type=int, default=spec.perception_steps,
                        help="steps of the perception stage (vision tower + per-cell head; default %(default)s)")
    parser.add_argument("--steps-per-stage", type=int, nargs="+", metavar="N", default=list(spec.steps_per_stage),
                        help="SFT steps of each curriculum stage, easy to hard (default %(default)s)")
    parser.add_argument("--final-steps", type=int, default=spec.final_steps,
                        help="SFT steps of the last phase on mixed sizes, learning rate decaying (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=spec.batch_size,
                        help="fresh parts per step: half defective in the perception stage, three in four in SFT "
                        "(default %(default)s)")
    parser.add_argument("--test-per-class", type=int, default=spec.test_per_class,
                        help="held-out normal and defective parts each (default %(default)s)")
    parser.add_argument("--seed", type=int, default=spec.seed, help="seed of data, weights and order")
    parser.add_argument("--no-eval", action="store_true", help="skip the greedy held-out evaluation")
    parser.add_argument("--evaluate-at", type=float, nargs="+", metavar="SCALE", default=[],
                        help="also score the (built or cached) model greedily on held-out parts with defects "
                        "at these sizes, e.g. 1.0 0.8; added to the record")
    parser.add_argument("--force", action="store_true", help="rebuild even when a cached warm start matches")


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = WarmStartSpec(perception_steps=args.perception_steps, steps_per_stage=tuple(args.steps_per_stage),
                         final_steps=args.final_steps, batch_size=args.batch_size,
                         test_per_class=args.test_per_class, seed=args.seed)
    result = warm_start(args.out, spec, force=args.force, evaluate=not args.no_eval)
    if args.evaluate_at:
        from .modeling import load_model
        from .warmstart_eval import evaluate_split

        loaded = load_model(result.model_dir, dtype="float32", min_pixels=spec.pixels, max_pixels=spec.pixels)
        for scale in args.evaluate_at:
            result.held_out[f"x{scale:g}"] = evaluate_split(loaded, test_split(spec, Path(result.out) / "data", scale),
                                                            spec)
        record = Path(result.out) / RECORD
        record.write_text(json.dumps({k: v for k, v in asdict(result).items() if k != "cached"}, indent=2))
    how = "reused" if result.cached else f"built in {result.seconds:.0f} s ({result.cpu_seconds:.0f} s CPU)"
    print(f"warm start {how}: model {result.model_dir}; held-out test split {result.test_split}")
    for s in result.stages:
        loss = f"loss {s['first_loss']:.3f} → {s['last_loss']:.3f}" if s["last_loss"] is not None else ""
        print(f"  {s['stage']}: {s['steps']} steps, {s['seconds']:.0f} s {loss}")
    for scale, h in result.held_out.items():
        print(f"  held-out {scale} ({h['samples']} parts, greedy): accuracy {h['accuracy']:.1%}, format "
              f"{h['format_rate']:.1%}, box IoU ≥ 0.5 on {h['iou50_defective']:.1%} of defective parts")
    print(result.model_dir)
    return 0
