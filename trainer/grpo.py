"""GRPO with LoRA on TRL's GRPOTrainer: the wiring from a `TrainConfig` to a trained adapter.

Order matters for multi-GPU: TRL's `GRPOConfig` (TrainingArguments) is built first, so DeepSpeed
ZeRO-3 can partition the model while it loads; shared inputs (the tiny model, a synthetic split)
are built by the main process first while the others wait.

A run directory holds TRL's checkpoints (`checkpoint-N/`, each with `adfm_run.json` naming the
preset, prompt version, base model and pixel budget), `metrics.jsonl` (every logged metric: each
reward function's mean/std, `frac_reward_zero_std`, loss, KL…), the final adapter in `final/`, and
`rank_agreement.json` (a fingerprint of every rank's trainable weights, which must agree).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adfm.manifest import RUN_RECORD

from .config import TrainConfig, dump_config
from .modeling import check_model_dir, language_model_lora_pattern, load_model, vision_token_ids
from .presets import Preset, get_preset

log = logging.getLogger("adfm.train")

METRICS = "metrics.jsonl"
FINAL = "final"
RANK_AGREEMENT = "rank_agreement.json"


class TrainingSetupError(RuntimeError):
    """A run that cannot start; the message says what to change."""


@dataclass
class RunResult:
    output_dir: Path
    final_adapter: Path
    global_step: int
    last_metrics: dict[str, float]
    ranks_agree: bool | None


def run_record(cfg: TrainConfig, preset: Preset) -> dict[str, Any]:
    """What export and evaluation need to know about the adapter, saved with every checkpoint.

    `adfm-export` copies the prompt version, pixel budget, reference use and answer length into the
    model's manifest (adfm.manifest.RUN_FIELDS), so the line prompts and sizes the model as trained.
    """
    from adfm import __version__ as adfm_version

    return {
        "kind": "adfm-grpo-lora",
        "adfm_version": adfm_version,
        "preset": preset.name,
        "prompt_version": preset.prompt_version,
        "base_model": str(Path(cfg.model.path).resolve()),
        "start_adapter": str(Path(cfg.model.adapter).resolve()) if cfg.model.adapter else None,
        "min_pixels": cfg.data.min_pixels,
        "max_pixels": cfg.data.max_pixels,
        "use_reference": cfg.data.use_reference,
        "max_completion_tokens": cfg.grpo.max_completion_length,
        "rewards": {
            "terms": [*preset.accuracy_terms, "format"],
            "alpha": cfg.rewards.alpha,
            "random_sigma": cfg.rewards.random_sigma,
            "random_seed": cfg.rewards.random_seed,
        },
        "config": cfg.model_dump(mode="json"),
    }


def grpo_arguments(cfg: TrainConfig):
    """TRL's GRPOConfig for this run; inconsistent GRPO settings raise TrainingSetupError with TRL's reason."""
    from trl import GRPOConfig

    g = cfg.grpo
    fields = g.model_dump(exclude={"gradient_checkpointing"})
    fields.update(cfg.vllm.model_dump())
    if not cfg.vllm.use_vllm:
        for key in list(cfg.vllm.model_dump()):
            if key != "use_vllm":
                fields.pop(key)
    try:
        return GRPOConfig(
            output_dir=str(cfg.output_dir),
            activation_checkpointing=g.gradient_checkpointing,
            remove_unused_columns=False,
            save_strategy="steps",
            logging_strategy="steps",
            use_cpu=not _cuda_available(),
            disable_tqdm=False,
            **fields,
        )
    except ValueError as exc:
        raise TrainingSetupError(f"grpo/vllm settings rejected by TRL: {exc}") from exc


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def check_precision(cfg: TrainConfig) -> None:
    if cfg.grpo.bf16 and not _cuda_available():
        raise TrainingSetupError(
            "grpo.bf16 is true but no GPU is available; for a CPU run set grpo.bf16=false "
            "(and model.dtype=float32)"
        )


def prepare_inputs(cfg: TrainConfig) -> Path:
    """Make sure the model directory and the split exist (building the tiny ones if configured).

    Returns the split manifest. Call under `main_process_first` in a distributed run.
    """
    model_path = Path(cfg.model.path)
    if not model_path.exists() and cfg.model.build_tiny:
        from .tiny_model import build_tiny_qwen25vl

        log.info("building the tiny random Qwen2.5-VL at %s", model_path)
        build_tiny_qwen25vl(model_path, min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels)
    check_model_dir(model_path)
    if cfg.data.split is not None:
        split = Path(cfg.data.split)
        if not split.is_file():
            raise TrainingSetupError(f"split manifest not found: {split} (make one with adfm-data)")
        return split
    from .synthetic_split import build_synthetic_split

    assert cfg.data.synthetic is not None  # DataSection guarantees one of the two
    return build_synthetic_split(cfg.data.synthetic, "train")


def _lora_config(cfg: TrainConfig):
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=language_model_lora_pattern(cfg.lora.target_modules),
        task_type="CAUSAL_LM",
    )


def adapter_fingerprint(model: Any) -> dict[str, Any]:
    """sha256 over every trainable tensor (name + float32 bytes): equal on ranks that stayed in sync."""
    digest = hashlib.sha256()
    count, total = 0, 0.0
    for name, param in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if not param.requires_grad:
            continue
        tensor = param.detach().float().cpu().contiguous()
        digest.update(name.encode())
        digest.update(tensor.numpy().tobytes())
        count += 1
        total += float(tensor.abs().sum())
    return {"sha256": digest.hexdigest(), "tensors": count, "abs_sum": total}


def _callbacks(cfg: TrainConfig, record: dict[str, Any]) -> list[Any]:
    from transformers import TrainerCallback

    out = Path(cfg.output_dir)

    class RunRecordCallback(TrainerCallback):
        """Write adfm_run.json (+ the YAML config) into each checkpoint the trainer saves."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = out / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    (ckpt / RUN_RECORD).write_text(json.dumps(record, indent=2))

    class MetricsFileCallback(TrainerCallback):
        """Append every log (rewards per function, frac_reward_zero_std, loss…) to metrics.jsonl."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and logs:
                with (out / METRICS).open("a", encoding="utf-8") as f:
                    f.write(json.dumps({"step": state.global_step, **logs}) + "\n")

    return [RunRecordCallback(), MetricsFileCallback()]


def _check_ranks(trainer: Any) -> bool | None:
    """Each rank writes its fingerprint; the main process compares them. None under ZeRO-3 (sharded)."""
    accelerator = trainer.accelerator
    out = Path(trainer.args.output_dir)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and getattr(plugin, "zero_stage", 0) == 3:
        return None
    ranks_dir = out / "ranks"
    ranks_dir.mkdir(parents=True, exist_ok=True)
    fp = adapter_fingerprint(accelerator.unwrap_model(trainer.model))
    (ranks_dir / f"rank-{accelerator.process_index}.json").write_text(json.dumps(fp, indent=2))
    accelerator.wait_for_everyone()
    agree: bool | None = None
    if accelerator.is_main_process:
        prints = {
            p.stem: json.loads(p.read_text())
            for p in sorted(ranks_dir.glob("rank-*.json"))
            if int(p.stem.split("-")[1]) < accelerator.num_processes
        }
        agree = len({v["sha256"] for v in prints.values()}) == 1 and len(prints) == accelerator.num_processes
        (out / RANK_AGREEMENT).write_text(
            json.dumps({"ranks": accelerator.num_processes, "agree": agree, "fingerprints": prints}, indent=2)
        )
        if not agree:
            log.error("ranks ended with different trainable weights: %s", prints)
    accelerator.wait_for_everyone()
    return agree


def _resume_checkpoint(cfg: TrainConfig, resume: str | bool) -> str | None:
    from transformers.trainer_utils import get_last_checkpoint

    out = Path(cfg.output_dir)
    if resume is False or resume is None:
        if out.is_dir() and get_last_checkpoint(str(out)) is not None:
            raise TrainingSetupError(
                f"{out} already holds checkpoints; pass --resume to continue that run, or choose another "
                "--output-dir"
            )
        return None
    if resume is True:
        last = get_last_checkpoint(str(out)) if out.is_dir() else None
        if last is None:
            raise TrainingSetupError(f"--resume: no checkpoint-N directory in {out} to resume from")
        return last
    path = Path(resume)
    if not path.is_dir():
        raise TrainingSetupError(f"--resume: checkpoint directory not found: {path}")
    return str(path)


def train(
    cfg: TrainConfig,
    resume: str | bool = False,
    *,
    callbacks: Sequence[Any] = (),
    generation_kwargs: dict[str, Any] | None = None,
) -> RunResult:
    """Run GRPO for the configured preset; returns where the adapter went and the last metrics.

    `callbacks` are extra transformers/TRL `TrainerCallback`s (e.g. a benchmark's step timer);
    `generation_kwargs` are merged over adfm's sampling settings (e.g. `min_new_tokens` for
    fixed-length completions in a benchmark).
    """
    from accelerate import PartialState

    from adfm.offline import force_offline

    from .data.training_view import ViewOptions, label_counts, training_view

    force_offline()
    preset = get_preset(cfg.preset)
    if not preset.trainable:
        raise TrainingSetupError(
            f"preset {preset.name!r} is {preset.description}; pick a trainable preset "
            f"(e.g. adfm) or evaluate the base model with adfm-eval"
        )
    check_precision(cfg)
    checkpoint = _resume_checkpoint(cfg, resume)
    args = grpo_arguments(cfg)
    state = PartialState()
    with state.main_process_first():
        split = prepare_inputs(cfg)
    loaded = load_model(
        cfg.model.path,
        cfg.model.adapter,
        dtype=cfg.model.dtype,
        attn_implementation=cfg.model.attn_implementation,
        trainable_adapter=True,
        min_pixels=cfg.data.min_pixels,
        max_pixels=cfg.data.max_pixels,
    )
    if not cfg.vllm.use_vllm:
        # A sampled vision token desynchronises the rope index and the image features (TRL only
        # suppresses the image pad). vLLM takes no `suppress_tokens`; trained checkpoints do not
        # emit vision tokens, so the vLLM path leaves its sampling as it is.
        args.generation_kwargs = {"suppress_tokens": vision_token_ids(loaded.tokenizer, loaded.model.config)}
    if generation_kwargs:
        args.generation_kwargs = {**(args.generation_kwargs or {}), **generation_kwargs}
    dataset = training_view(
        split,
        ViewOptions(
            prompt_version=preset.prompt_version,
            min_pixels=cfg.data.min_pixels,
            max_pixels=cfg.data.max_pixels,
            use_reference=cfg.data.use_reference,
            require_boxes=preset.needs_boxes,
            limit=cfg.data.limit,
        ),
    )
    log.info("training %s on %s: %s samples %s", preset.name, split, len(dataset), label_counts(dataset))
    record = run_record(cfg, preset)
    if state.is_main_process:
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        if checkpoint is None:  # a fresh run: no metrics of an earlier, unfinished one
            (Path(cfg.output_dir) / METRICS).unlink(missing_ok=True)
        (Path(cfg.output_dir) / "config.yaml").write_text(dump_config(cfg))
        (Path(cfg.output_dir) / RUN_RECORD).write_text(json.dumps(record, indent=2))

    from trl import GRPOTrainer

    trainer = GRPOTrainer(
        model=loaded.model,
        reward_funcs=preset.reward_functions(cfg.rewards.alpha, cfg.rewards.random_sigma, cfg.rewards.random_seed),
        args=args,
        train_dataset=dataset,
        processing_class=loaded.processor,
        peft_config=None if cfg.model.adapter else _lora_config(cfg),
        callbacks=[*_callbacks(cfg, record), *callbacks],
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    agree = _check_ranks(trainer)
    final = Path(cfg.output_dir) / FINAL
    trainer.save_model(str(final))
    if trainer.accelerator.is_main_process:
        loaded.processor.save_pretrained(str(final))
        (final / RUN_RECORD).write_text(json.dumps(record, indent=2))
    history = [h for h in trainer.state.log_history if "loss" in h or any(k.startswith("rewards/") for k in h)]
    return RunResult(
        output_dir=Path(cfg.output_dir),
        final_adapter=final,
        global_step=trainer.state.global_step,
        last_metrics=history[-1] if history else {},
        ranks_agree=agree,
    )
