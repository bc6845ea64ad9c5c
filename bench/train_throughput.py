"""GRPO training throughput of `adfm-train`: step time, phases, memory, MFU and the decoding floor.

Builds a random-weight Qwen2.5-VL with a released model's exact shapes (bench/model_configs.py:
7B or 3B, no download) and a synthetic split, then runs K GRPO steps through adfm-train's own path
(`adfm.trainer.config.load_config` on the shipped configs/adfm-qwen25vl-7b.yaml, then
`adfm.trainer.grpo.train`) for several variants in one run:

  trl-defaults      TRL's GRPOConfig defaults where adfm's config sets its own
  adfm-shipped      configs/adfm-qwen25vl-7b.yaml as shipped (the baseline)
  attn-eager        attention implementation: eager instead of SDPA
  attn-flash2       attention implementation: FlashAttention 2 (GPU with flash-attn installed only)
  gen-batch-24      generation batching: 4 prompts (24 completions) per generate call
  no-checkpointing  gradient-checkpointing policy: off, micro-batch 2 × 6 accumulation steps

Every variant holds fixed: 6 generations, LoRA r=64, the config's image budget (the tiny CPU scale
uses 112×112), a normal reference image per prompt, and a fixed completion length
(min_new_tokens = max_new_tokens, so EOS never ends a completion early and runs compare). Per step
it records generation, preparation/scoring, forward/backward and optimizer time
(bench/train_timing.py), samples/s, generated tokens/s, peak GPU memory, model FLOPs and MFU
(bench/train_flops.py states the formula), and generation against its floor: LM weight bytes ÷
memory bandwidth (measured by a large tensor copy in the same run) per token step. Each variant
carries the expectation written before it was measured, and what it did.

    python bench/train_throughput.py                       # GPU: 7B shapes, full budget; CPU: tiny scale
    python bench/train_throughput.py --model qwen2.5-vl-3b --steps 8
    python bench/train_throughput.py --scale tiny --steps 1 --warmup 0 --out /tmp/tp.json   # the CPU test

Writes bench/results/train_throughput-<gpu name>.json, or train_throughput-cpu.json (or --out).
Exit codes: 0 every selected variant ran (an out-of-memory variant is a result, not a failure),
1 a variant failed, 2 bad arguments or configuration.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import platform
import re
import shutil
import sys
import tempfile
import time
import traceback
import warnings
import weakref
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adfm.offline import force_offline

force_offline()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
SHIPPED_CONFIG = ROOT / "configs" / "adfm-qwen25vl-7b.yaml"
BASELINE = "adfm-shipped"
NUM_GENERATIONS = 6
LORA_RANK = 64
log = logging.getLogger("adfm.bench.train_throughput")


@dataclass(frozen=True)
class Scale:
    """Workload size. None: take the value from the config (its image budget, its completion length)."""

    model: str
    completion_tokens: int | None
    image_size: int
    min_pixels: int | None
    max_pixels: int | None
    samples_per_class: int
    steps: int
    warmup: int
    bandwidth_mib: int


SCALES = {
    # 1024² synthetic parts land at ~980² on the grid: ~1225 image tokens each, two images per prompt.
    "gpu": Scale("qwen2.5-vl-7b", None, 1024, None, None, 4, 4, 1, 2048),
    # The CPU test: toy model, 112² images (16 image tokens each), 8-token completions.
    "tiny": Scale("tiny", 8, 128, 112 * 112, 112 * 112, 2, 2, 1, 256),
}


@dataclass(frozen=True)
class Variant:
    """One configuration under test: config overrides on top of the shipped config, and what we expect."""

    name: str
    what: str
    expectation: str
    overrides: tuple[str, ...] = ()
    requires_flash_attn: bool = False
    trl_defaults: bool = False


# Expectations were written before any of these variants was measured; they are about the GPU at the
# 7B size with the full image budget (tiny CPU runs say little about that: see each run's "observed").
VARIANTS: tuple[Variant, ...] = (
    Variant(
        "trl-defaults",
        "TRL 1.16 GRPOConfig defaults for every grpo setting adfm's config sets (beta 0, dapo loss, gradient "
        "checkpointing on, 1 accumulation step, dataloader in the main process), except what the comparison holds "
        "fixed (6 generations, completion length, micro-batch 6 since TRL's 8 is not a multiple of 6, steps, seed, "
        "precision on CPU)",
        "No reference forward (beta 0) removes the scoring pass, about a third of the training-phase compute "
        "(2N of 2N + 6N per token with recompute). But one prompt per step halves the generation batch (6 "
        "instead of 12 sequences), and decoding is bound by reading the weights once per token step whatever the "
        "batch, so generation per completion should be ~1.6-2x slower. Expect lower samples/s than adfm-shipped, "
        "lower peak memory.",
        trl_defaults=True,
    ),
    Variant(
        BASELINE,
        "configs/adfm-qwen25vl-7b.yaml as shipped: beta 0.04 (a reference forward with the adapter disabled), "
        "grpo loss, gradient checkpointing, SDPA, bf16, micro-batch 6 x 2 accumulation steps = 12 completions per "
        "generate call",
        "Baseline. Generation should dominate the step: 1024 tokens decoded one step at a time through HF generate "
        "with the LoRA unmerged (three extra small matmuls per adapted linear), well above the weight-read floor "
        "because batch-12 decoding is launch-bound rather than bandwidth-bound.",
    ),
    Variant(
        "attn-eager",
        "attention implementation: eager (materialised softmax(QK^T)) instead of SDPA",
        "Slower forward/backward and more memory: eager stores the L x L attention weights per head (L ~ 2.7k "
        "tokens at the full budget with a reference image); generation changes little (one query per step).",
        overrides=("model.attn_implementation=eager",),
    ),
    Variant(
        "attn-flash2",
        "attention implementation: FlashAttention 2 (flash-attn package, CUDA only)",
        "A modest forward/backward gain over SDPA on padded batches (variable-length kernels skip the padding; "
        "SDPA with a padding mask may fall back to a slower kernel); generation about the same.",
        overrides=("model.attn_implementation=flash_attention_2",),
        requires_flash_attn=True,
    ),
    Variant(
        "gen-batch-24",
        "generation batching: 4 accumulation steps, so each generate call samples 4 prompts x 6 = 24 completions",
        "Decoding reads the weights once per token step for the whole batch, so doubling the batch should cut "
        "generation time per completion by ~1.5-2x and raise samples/s; memory rises by the KV cache of 12 more "
        "sequences. It changes the recipe (4 prompts per optimizer step instead of 2), so it is not free.",
        overrides=("grpo.gradient_accumulation_steps=4",),
    ),
    Variant(
        "no-checkpointing",
        "gradient-checkpointing policy: off, micro-batch 2 x 6 accumulation steps (still 12 completions per step "
        "and per generate call)",
        "Forward/backward ~25% faster (no recompute: 4N instead of 6N per token) with much more activation memory; "
        "smaller micro-batches lose some efficiency. At 7B with the full budget it may not fit in 80 GB.",
        overrides=("grpo.gradient_checkpointing=false", "grpo.per_device_train_batch_size=2",
                   "grpo.gradient_accumulation_steps=6"),
    ),
)
VARIANT_NAMES = tuple(v.name for v in VARIANTS)

#: grpo settings the comparison holds fixed when taking TRL's defaults (set by the bench for every variant).
HELD_FIXED = {
    "num_generations", "max_completion_length", "per_device_train_batch_size", "max_steps", "num_train_epochs",
    "save_steps", "save_total_limit", "logging_steps", "seed", "log_completions", "report_to", "bf16",
}


def trl_default_overrides() -> list[str]:
    """`grpo.<key>=<TRL default>` for every grpo setting adfm's config sets, except the held-fixed ones."""
    from trl import GRPOConfig

    from adfm.trainer.config import GRPOSection

    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TRL's own default uses a deprecated field name
        defaults = GRPOConfig(output_dir=tmp, use_cpu=True, bf16=False)
    out = []
    for key in GRPOSection.model_fields:
        if key in HELD_FIXED:
            continue
        value = getattr(defaults, "activation_checkpointing" if key == "gradient_checkpointing" else key)
        value = getattr(value, "value", value)  # enums (lr_scheduler_type) as their string
        out.append(f"grpo.{key}={json.dumps(value)}")
    return out


def flash_attn_missing() -> str | None:
    """Why FlashAttention 2 cannot run here, or None when it can."""
    import importlib.util

    import torch

    if not torch.cuda.is_available():
        return "needs a CUDA GPU"
    if importlib.util.find_spec("flash_attn") is None:
        return "the flash-attn package is not installed"
    return None


# -- configuration -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """Everything every variant shares, resolved from the scale, the arguments and the config."""

    config: Path
    work: Path | None
    completion_tokens: int
    image_size: int
    min_pixels: int
    max_pixels: int
    samples_per_class: int
    steps: int
    warmup: int
    cuda: bool
    dtype: str

    def _under(self, name: str) -> Path:
        if self.work is None:
            raise RuntimeError("the workload has no working directory yet")
        return self.work / name

    @property
    def model_dir(self) -> Path:
        return self._under("model")

    @property
    def split_root(self) -> Path:
        return self._under("split")

    @property
    def runs(self) -> Path:
        return self._under("runs")


def common_overrides(w: Workload) -> list[str]:
    """Overrides every variant gets: the random model, the synthetic split, K steps, the held-fixed settings."""
    synthetic = {"root": str(w.split_root), "categories": ["washer", "tile"], "defects": ["scratch", "spot"],
                 "normal_per_category": w.samples_per_class, "anomalous_per_category": w.samples_per_class,
                 "image_size": w.image_size, "seed": 0}
    out = [
        f"model.path={json.dumps(str(w.model_dir))}",
        "model.adapter=null",
        "model.build_tiny=false",
        "data.split=null",
        f"data.synthetic={json.dumps(synthetic)}",
        f"data.min_pixels={w.min_pixels}",
        f"data.max_pixels={w.max_pixels}",
        f"lora.r={LORA_RANK}",
        f"grpo.num_generations={NUM_GENERATIONS}",
        f"grpo.max_completion_length={w.completion_tokens}",
        f"grpo.max_steps={w.steps + w.warmup}",
        "grpo.num_train_epochs=1000",
        "grpo.save_steps=1000000",
        "grpo.logging_steps=1",
        "grpo.log_completions=false",
        "grpo.report_to=[none]",
    ]
    if not w.cuda:  # the CPU runs in float32; bf16 needs a GPU (adfm-train refuses it on a CPU)
        out += ["model.dtype=float32", "grpo.bf16=false", "grpo.dataloader_num_workers=0"]
    return out


def variant_overrides(v: Variant, w: Workload) -> list[str]:
    extra = trl_default_overrides() if v.trl_defaults else list(v.overrides)
    # The held-fixed settings come last so no variant (nor a TRL default) can undo them.
    return [*extra, *common_overrides(w)]


def resolve_config(v: Variant, w: Workload, output_dir: Path) -> Any:
    from adfm.trainer.config import load_config

    return load_config(w.config, [*variant_overrides(v, w), f"output_dir={json.dumps(str(output_dir))}"])


def resolved_settings(cfg: Any) -> dict[str, Any]:
    """What TRL will actually run with, from adfm's own GRPOConfig builder."""
    from adfm.trainer.grpo import grpo_arguments

    args = grpo_arguments(cfg)
    return {
        "loss_type": args.loss_type,
        "beta": args.beta,
        "scale_rewards": args.scale_rewards,
        "gradient_checkpointing": bool(args.activation_checkpointing),
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "generation_batch_size": args.generation_batch_size,
        "steps_per_generation": args.steps_per_generation,
        "num_generations": args.num_generations,
        "max_completion_length": args.max_completion_length,
        "bf16": bool(args.bf16),
        "model_dtype": cfg.model.dtype,
        "attn_implementation": cfg.model.attn_implementation,
        "lora_r": cfg.lora.r,
        "lora_alpha": cfg.lora.alpha,
        "min_pixels": cfg.data.min_pixels,
        "max_pixels": cfg.data.max_pixels,
        "use_reference": cfg.data.use_reference,
        "dataloader_num_workers": cfg.grpo.dataloader_num_workers,
    }


# -- one variant ---------------------------------------------------------------------------------


def model_snapshot_callback(store: dict[str, Any]) -> Any:
    """A callback that records the live model's parameter counts and geometry when training starts."""
    from train_flops import count_parameters, geometry
    from transformers import TrainerCallback

    class ModelSnapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            store["model_ref"] = weakref.ref(model)
            param = next(model.parameters())
            base = model.get_base_model() if hasattr(model, "get_base_model") else model
            store["counts"] = count_parameters(model)
            store["geometry"] = geometry(base.config, param.element_size())
            store["live"] = {
                "dtype": str(param.dtype).replace("torch.", ""),
                "attn_implementation": base.config._attn_implementation,
                "gradient_checkpointing": bool(getattr(base, "is_activation_checkpointing", False)),
                "device": str(param.device),
            }

    return ModelSnapshot()


def step_metrics(rec: Any, counts: Any, geom: Any, bandwidth: float, peak: float | None) -> dict[str, Any]:
    """Rates, FLOPs and the decoding floor for one step record."""
    from train_flops import Batch, decode_floor, generation_flops, scoring_flops, training_flops

    batches = [Batch(tuple(c.prompt_tokens), c.new_tokens, tuple(c.image_patches)) for c in rec.generate_calls]
    generated_seqs = sum(b.sequences for b in batches)
    generated_tokens = sum(b.sequences * b.new_tokens for b in batches)
    token_steps = sum(b.new_tokens for b in batches)
    trained_seqs = sum(p.sequences for p in rec.train_passes)
    scored_seqs = sum(p.sequences for p in rec.scoring_passes)
    # Each training/scoring pass covers the sequences generated in this step (steps_per_generation = accumulation
    # steps, as adfm's config always sets), so their FLOPs scale with the share of those sequences they saw.
    train_share = trained_seqs / generated_seqs if generated_seqs else 0.0
    score_share = scored_seqs / generated_seqs if generated_seqs else 0.0
    gen_flops = sum(generation_flops(counts, geom, b) for b in batches)
    train_flops = train_share * sum(training_flops(counts, geom, b) for b in batches)
    score_flops = score_share * sum(scoring_flops(counts, geom, b) for b in batches)
    total = gen_flops + train_flops + score_flops
    floors = [decode_floor(counts, geom, b, bandwidth) for b in batches]
    weights_floor = sum(f.weights_floor_s for f in floors)
    kv_floor = sum(f.weights_and_kv_floor_s for f in floors)

    def rate(x: float, s: float) -> float | None:
        return x / s if s > 0 else None

    achieved = rate(total, rec.wall_s)
    return {
        "prompts": generated_seqs / NUM_GENERATIONS,
        "completions_generated": generated_seqs,
        "completions_trained": trained_seqs,
        "completions_scored": scored_seqs,
        "generate_calls": len(batches),
        "completion_tokens_per_sequence": sorted({b.new_tokens for b in batches}),
        "generated_tokens": generated_tokens,
        "mean_prompt_tokens": (sum(sum(b.prompt_tokens) for b in batches) / generated_seqs) if generated_seqs else 0,
        "images": sum(len(b.image_patches) for b in batches),
        "image_patches": sum(sum(b.image_patches) for b in batches),
        "samples_per_s": rate(generated_seqs / NUM_GENERATIONS, rec.wall_s),
        "completions_per_s": rate(trained_seqs, rec.wall_s),
        "generated_tokens_per_s": rate(generated_tokens, rec.generation_s),
        "model_flops": {"generation": gen_flops, "scoring": score_flops, "training": train_flops, "total": total},
        "achieved_flops_per_s": achieved,
        "generation_flops_per_s": rate(gen_flops, rec.generation_s),
        "forward_backward_flops_per_s": rate(train_flops, rec.forward_backward_s),
        "mfu": achieved / peak if peak and achieved is not None else None,
        "decode_token_steps": token_steps,
        "decode_s_per_token_step": rate(rec.generation_s, token_steps),
        "decode_floor_s_per_token_step": floors[0].seconds_per_token_step if floors else None,
        "generation_floor_s": weights_floor,
        "generation_floor_with_kv_s": kv_floor,
        "generation_vs_floor": rate(rec.generation_s, weights_floor),
    }


TIME_KEYS = ("wall_s", "step_s", "generation_s", "preparation_s", "scoring_forward_s", "forward_backward_s",
             "train_forward_s", "optimizer_s")
COMPARISON_KEYS = ("samples_per_s", "generated_tokens_per_s", "wall_s", "step_s", "generation_s", "preparation_s",
                   "forward_backward_s", "optimizer_s", "peak_gpu_memory_bytes", "achieved_flops_per_s", "mfu",
                   "generation_vs_floor")
TRL_KEYS = ("completions/mean_length", "completions/min_length", "completions/max_length",
            "completions/clipped_ratio", "step_time", "loss", "kl", "reward", "frac_reward_zero_std")


def summarize(steps: list[dict[str, Any]], warmup: int, peak: float | None) -> dict[str, Any]:
    """Over the measured steps (after warm-up): mean phase times, rates as totals ÷ total time, peak memory max."""
    measured = steps[warmup:] if len(steps) > warmup else steps
    n = len(measured)

    def total(key: str) -> float:
        return float(sum(s[key] for s in measured))

    def ratio(x: float, y: float) -> float | None:
        return x / y if y > 0 else None

    flops = {k: float(sum(s["model_flops"][k] for s in measured)) for k in ("generation", "scoring", "training",
                                                                           "total")}
    out: dict[str, Any] = {"measured_steps": [s["step"] for s in measured]}
    out.update({key: total(key) / n for key in TIME_KEYS})
    out["step_s_range"] = [min(s["step_s"] for s in measured), max(s["step_s"] for s in measured)]
    wall, gen_s, fb_s = total("wall_s"), total("generation_s"), total("forward_backward_s")
    completions = total("completions_trained")
    out.update(
        samples_per_s=ratio(total("prompts"), wall),
        completions_per_s=ratio(completions, wall),
        generated_tokens_per_s=ratio(total("generated_tokens"), gen_s),
        model_flops_per_step=flops["total"] / n,
        achieved_flops_per_s=ratio(flops["total"], wall),
        generation_flops_per_s=ratio(flops["generation"], gen_s),
        forward_backward_flops_per_s=ratio(flops["training"], fb_s),
        decode_s_per_token_step=ratio(gen_s, total("decode_token_steps")),
        decode_floor_s_per_token_step=measured[0]["decode_floor_s_per_token_step"],
        generation_floor_s=total("generation_floor_s") / n,
        generation_floor_with_kv_s=total("generation_floor_with_kv_s") / n,
        generation_vs_floor=ratio(gen_s, total("generation_floor_s")),
    )
    out["mfu"] = out["achieved_flops_per_s"] / peak if peak and out["achieved_flops_per_s"] is not None else None
    peaks = [s["peak_gpu_memory_bytes"] for s in measured if s["peak_gpu_memory_bytes"] is not None]
    out["peak_gpu_memory_bytes"] = max(peaks) if peaks else None
    for key in ("generation_s", "forward_backward_s", "preparation_s", "step_s"):
        out[f"{key}_per_completion"] = ratio(total(key), completions)
    return out


def read_trl_metrics(output_dir: Path) -> dict[int, dict[str, Any]]:
    path = output_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    by_step: dict[int, dict[str, Any]] = {}
    for line in path.read_text().splitlines():
        row = json.loads(line)
        picked = {k: row[k] for k in TRL_KEYS if k in row}
        if picked:
            by_step.setdefault(int(row["step"]), {}).update(picked)
    return by_step


def run_variant(v: Variant, w: Workload, bandwidth: float, peak: float | None) -> dict[str, Any]:
    """Train K steps of one variant through adfm.trainer.grpo.train and measure each step."""
    import torch
    from train_timing import StepTimer

    from adfm.trainer.grpo import train

    result: dict[str, Any] = {"name": v.name, "what": v.what, "expectation": v.expectation,
                              "overrides": list(v.overrides) if not v.trl_defaults else trl_default_overrides()}
    if v.requires_flash_attn and (why := flash_attn_missing()):
        return {**result, "status": "skipped", "reason": why}
    output_dir = w.runs / v.name
    shutil.rmtree(output_dir, ignore_errors=True)
    timer, snapshot = StepTimer(), {}
    start = time.perf_counter()
    try:
        cfg = resolve_config(v, w, output_dir)
        result["resolved"] = resolved_settings(cfg)
        train(cfg, callbacks=[timer, model_snapshot_callback(snapshot)],
              generation_kwargs={"min_new_tokens": w.completion_tokens})
        result["status"] = "ok"
    except torch.OutOfMemoryError as exc:
        result.update(status="out_of_memory", reason=str(exc).splitlines()[0])
    except Exception as exc:  # a failed variant is reported and the others still run
        log.error("variant %s failed:\n%s", v.name, traceback.format_exc())
        result.update(status="error", reason=f"{type(exc).__name__}: {exc}")
    finally:
        timer.close()
    result["seconds_including_load"] = time.perf_counter() - start
    if "counts" in snapshot:
        result["model"] = {"parameters": asdict(snapshot["counts"]), "geometry": asdict(snapshot["geometry"]),
                           "live": snapshot["live"]}
    trl_metrics = read_trl_metrics(output_dir)
    steps = []
    for rec in timer.records:
        row = {key: value for key, value in asdict(rec).items()
               if key not in ("generate_calls", "train_passes", "scoring_passes")}
        row["generate_call_seconds"] = [c.seconds for c in rec.generate_calls]
        row["train_passes"] = [asdict(p) for p in rec.train_passes]
        row["scoring_passes"] = [asdict(p) for p in rec.scoring_passes]
        if "counts" in snapshot:
            row.update(step_metrics(rec, snapshot["counts"], snapshot["geometry"], bandwidth, peak))
        row["trl"] = trl_metrics.get(rec.step, {})
        steps.append(row)
    result["steps"] = steps
    if steps and "counts" in snapshot:
        result["summary"] = summarize(steps, w.warmup, peak)
    model_ref = snapshot.get("model_ref")
    del timer, snapshot
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    # A model still alive here would hold its memory through the next variants and skew their peaks.
    result["model_released"] = model_ref is None or model_ref() is None
    shutil.rmtree(output_dir, ignore_errors=True)
    return result


def observe(result: dict[str, Any], baseline: dict[str, Any] | None) -> str:
    """What a variant did, in words, against the baseline's summary."""
    if result["status"] != "ok":
        return f"{result['status']}: {result.get('reason', '')}"
    s = result.get("summary")
    if not s:
        return "no measured steps"
    b = (baseline or {}).get("summary")
    parts = [f"{s['samples_per_s']:.3g} samples/s, {s['generated_tokens_per_s']:.3g} generated tokens/s, "
             f"step {s['step_s']:.3g} s (generation {s['generation_s']:.3g} s, "
             f"fwd/bwd {s['forward_backward_s']:.3g} s)"]
    if b and result["name"] != BASELINE:
        def ratio(key: str) -> str:
            x, y = s.get(key), b.get(key)
            return f"x{x / y:.2f}" if x is not None and y else "n/a"

        parts.append(
            f"vs {BASELINE}: samples/s {ratio('samples_per_s')}, generation s per completion "
            f"{ratio('generation_s_per_completion')}, fwd/bwd s per completion "
            f"{ratio('forward_backward_s_per_completion')}, "
            f"preparation s per completion {ratio('preparation_s_per_completion')}, peak GPU memory "
            f"{ratio('peak_gpu_memory_bytes')}"
        )
    return "; ".join(parts)


# -- the run -------------------------------------------------------------------------------------


def device_info(cuda: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"kind": "cuda" if cuda else "cpu", "cpu_count": os.cpu_count(),
                            "platform": platform.platform(), "processor": platform.processor() or None}
    if cuda:
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_bytes=props.total_memory, gpu_count=torch.cuda.device_count(),
                    capability=f"{props.major}.{props.minor}")
    else:
        info["name"] = f"CPU ({os.cpu_count()} cores visible)"
    return info


def device_slug(device: dict[str, Any]) -> str:
    """A file-name form of the GPU's name, e.g. `nvidia-h100-80gb-hbm3`."""
    return re.sub(r"[^a-z0-9]+", "-", str(device.get("name", "gpu")).lower()).strip("-") or "gpu"


def versions() -> dict[str, str]:
    import peft
    import torch
    import transformers
    import trl

    from adfm import __version__

    return {"adfm": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "trl": trl.__version__, "peft": peft.__version__, "python": platform.python_version()}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="train_throughput.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", choices=["auto", *SCALES], default="auto",
                   help="workload defaults: gpu (7B shapes, the config's budget) or tiny (CPU test); "
                   "auto: gpu when CUDA is there")
    p.add_argument("--model", help="model size from bench/model_configs.py (default: the scale's)")
    p.add_argument("--config", type=Path, default=SHIPPED_CONFIG, help="adfm-train config the variants start from")
    p.add_argument("--variants", default=",".join(VARIANT_NAMES),
                   help=f"comma-separated subset of: {', '.join(VARIANT_NAMES)}")
    p.add_argument("--steps", type=int, help="measured GRPO steps per variant")
    p.add_argument("--warmup", type=int, help="steps run first and left out of the summary")
    p.add_argument("--completion-tokens", type=int, help="fixed completion length (default: the config's)")
    p.add_argument("--image-size", type=int, help="side of the square synthetic images, pixels")
    p.add_argument("--bandwidth-mib", type=int, help="size of the tensor copied to measure memory bandwidth")
    p.add_argument("--peak-tflops", type=float, help="peak dense TFLOP/s for MFU (default: datasheet table, GPU)")
    p.add_argument("--work", type=Path, help="working directory: model, split, runs (default: a temporary one)")
    p.add_argument("--out", type=Path, help="result JSON (default: bench/results/train_throughput-<device>.json)")
    p.add_argument("-v", "--verbose", action="store_true", help="log the trainer at info level")
    return p


def parse_variants(text: str) -> list[Variant]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANT_NAMES]
    if unknown or not names:
        raise ValueError(f"--variants: unknown {unknown or '(none given)'}; choose from {', '.join(VARIANT_NAMES)}")
    return [v for v in VARIANTS if v.name in names]


def make_workload(args: argparse.Namespace, scale: Scale, cuda: bool) -> Workload:
    """The shared workload from the scale, the arguments and the config; a clear error for bad values."""
    from adfm.trainer.config import load_config

    shipped = load_config(args.config)
    steps = args.steps if args.steps is not None else scale.steps
    warmup = args.warmup if args.warmup is not None else scale.warmup
    tokens = args.completion_tokens or scale.completion_tokens or shipped.grpo.max_completion_length
    if steps < 1 or warmup < 0 or tokens < 1:
        raise ValueError(
            f"--steps must be ≥ 1, --warmup ≥ 0, --completion-tokens ≥ 1 (got {steps}, {warmup}, {tokens})"
        )
    return Workload(
        config=args.config,
        work=args.work,
        completion_tokens=tokens,
        image_size=args.image_size or scale.image_size,
        min_pixels=scale.min_pixels or shipped.data.min_pixels,
        max_pixels=scale.max_pixels or shipped.data.max_pixels,
        samples_per_class=scale.samples_per_class,
        steps=steps,
        warmup=warmup,
        cuda=cuda,
        dtype=shipped.model.dtype if cuda else "float32",
    )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log.setLevel(logging.INFO)
    import torch
    from model_configs import build_random_checkpoint, get_spec
    from train_flops import FORMULA, measure_bandwidth, peak_flops

    from adfm.trainer.config import ConfigError

    cuda = torch.cuda.is_available()
    scale = SCALES[args.scale if args.scale != "auto" else ("gpu" if cuda else "tiny")]
    try:
        variants = parse_variants(args.variants)
        spec = get_spec(args.model or scale.model)
        w = make_workload(args, scale, cuda)
    except (ValueError, ConfigError) as exc:
        print(f"train_throughput: {exc}", file=sys.stderr)
        return 2
    if w.work is None:
        w = replace(w, work=Path(tempfile.mkdtemp(prefix="adfm-train-throughput-")))
    device = device_info(cuda)
    t0 = time.perf_counter()
    log.info("building the random-weight %s checkpoint in %s", spec.name, w.model_dir)
    build_random_checkpoint(spec, w.model_dir, min_pixels=w.min_pixels, max_pixels=w.max_pixels, dtype=w.dtype,
                            device="cuda" if cuda else "cpu")
    build_s = time.perf_counter() - t0
    bw = measure_bandwidth("cuda" if cuda else "cpu", (args.bandwidth_mib or scale.bandwidth_mib) << 20)
    if args.peak_tflops:
        peak, peak_source = args.peak_tflops * 1e12, "--peak-tflops"
    else:
        peak, peak_source = peak_flops(device.get("name") if cuda else None, w.dtype)

    results: list[dict[str, Any]] = []
    for v in variants:
        log.info("variant %s", v.name)
        results.append(run_variant(v, w, bw["bytes_per_s"], peak))
    baseline = next((r for r in results if r["name"] == BASELINE), None)
    for r in results:
        r["observed"] = observe(r, baseline)
    comparison = [
        {"name": r["name"], "status": r["status"],
         **{k: r.get("summary", {}).get(k) for k in COMPARISON_KEYS}}
        for r in results
    ]

    report = {
        "benchmark": "train_throughput",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "device": device,
        "gpu_figures": None if cuda else "still to be measured: this run had no GPU; CPU tiny-scale figures say "
        "little about GPU speed (no tensor cores, no HBM, different bottlenecks)",
        "versions": versions(),
        "model": {"spec": asdict(spec), "random_weights": True, "dtype": w.dtype, "checkpoint": str(w.model_dir),
                  "build_s": build_s},
        "workload": {"config": str(w.config), "num_generations": NUM_GENERATIONS, "lora_r": LORA_RANK,
                     "completion_tokens": w.completion_tokens, "fixed_length": "min_new_tokens = max_new_tokens",
                     "image_size": w.image_size, "min_pixels": w.min_pixels, "max_pixels": w.max_pixels,
                     "steps": w.steps, "warmup": w.warmup, "samples": 4 * w.samples_per_class},
        "memory_bandwidth": bw,
        "peak_flops": {"value": peak, "source": peak_source},
        "flops_formula": FORMULA,
        "comparison": comparison,
        "variants": results,
        "total_seconds": time.perf_counter() - t0,
    }
    out = args.out or RESULTS / f"train_throughput-{device_slug(device) if cuda else 'cpu'}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=str))
    for r in results:
        print(f"{r['name']:>17}: {r['observed']}")
    print(f"wrote {out}")
    return 1 if any(r["status"] == "error" for r in results) else 0


if __name__ == "__main__":
    # One process on one GPU: with several visible, transformers' Trainer would wrap the model in
    # DataParallel. Multi-GPU training is `accelerate launch … adfm-train`, not this benchmark.
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "0")
    sys.exit(main())
