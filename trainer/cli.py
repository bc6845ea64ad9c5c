"""`adfm-train`: GRPO + LoRA training of Qwen2.5-VL (AD-FM), the reward-variance analysis, the gate.

    adfm-train [--config FILE] [--set section.key=value …] [options] [--dry-run] [--resume [CKPT]]
    adfm-train variance …     share of zero-variance reward groups (Fig. 5); see `adfm-train variance -h`
    adfm-train gate …         the screening gate's trainer; see `adfm-train gate -h`
    adfm-train warmstart …    supervised warm start of the tiny model on the synthetic task (cached)

Without --config the embedded default runs: the tiny random model on a synthetic split, on a CPU,
in minutes (configs/tiny-synthetic.yaml spells it out). Multi-GPU: start the same command under
`accelerate launch --config_file configs/accelerate/<ddp|zero2|zero3>.yaml -m adfm.trainer.cli …`.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from .config import ConfigError, TrainConfig, dump_config, load_config
from .presets import PRESETS

SUBCOMMANDS = ("variance", "gate", "warmstart")

EPILOG = """\
config sections (every key: configs/tiny-synthetic.yaml; the paper's 7B run: configs/adfm-qwen25vl-7b.yaml):
  model   local checkpoint, start adapter, dtype, attention (sdpa)
  data    split manifest (none: a synthetic split is built), pixel budget, reference image
  rewards alpha of r_count, sigma/seed of the random reward
  lora    r, alpha, dropout, target linear layers of the language model
  grpo    generations, epochs/steps, batch, learning rate, loss, advantages, KL beta, precision…
  vllm    TRL's vLLM generation (datacenter; untested on CPU-only build machines)

the run directory holds checkpoint-N/ (each with adfm_run.json: preset, prompt version, base model,
pixel budget), metrics.jsonl (every reward function's mean/std, frac_reward_zero_std, loss…),
final/ (the LoRA adapter + processor) and rank_agreement.json (all ranks ended with equal weights).
exit codes: 0 done, 1 ranks disagree, 2 bad configuration or inputs.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-train",
        description=__doc__,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", type=Path, help="YAML run configuration (default: the embedded tiny-synthetic run)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.KEY=VALUE",
        help="override one config value, read as YAML (repeatable), e.g. --set grpo.beta=0.04 "
        "--set lora.target_modules=[q_proj,v_proj]",
    )
    parser.add_argument(
        "--preset",
        choices=list(PRESETS),
        help="reward/prompt preset: " + "; ".join(f"{p.name}: {p.description}" for p in PRESETS.values()),
    )
    parser.add_argument("--model", type=Path, help="local base checkpoint directory (model.path)")
    parser.add_argument("--adapter", type=Path, help="continue from this LoRA adapter (model.adapter)")
    parser.add_argument("--split", type=Path, help="split manifest to train on (data.split); none: a synthetic split")
    parser.add_argument("--output-dir", type=Path, help="run directory for checkpoints, metrics, adapter (output_dir)")
    parser.add_argument(
        "--max-steps", type=int, help="stop after N optimizer steps, -1 for all epochs (grpo.max_steps)"
    )
    parser.add_argument("--epochs", type=float, help="training epochs (grpo.num_train_epochs)")
    parser.add_argument("--num-generations", type=int, help="responses per prompt (grpo.num_generations)")
    parser.add_argument("--learning-rate", type=float, help="learning rate (grpo.learning_rate)")
    parser.add_argument("--beta", type=float, help="KL coefficient (grpo.beta)")
    parser.add_argument("--seed", type=int, help="random seed (grpo.seed)")
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the configuration and print the resolved run; loads no model and trains nothing",
    )
    parser.add_argument(
        "--resume",
        nargs="?",
        const=True,
        default=False,
        metavar="CHECKPOINT",
        help="continue from the last checkpoint in the output directory, or from CHECKPOINT",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log at debug level")
    return parser


_FLAG_KEYS = {
    "preset": "preset",
    "model": "model.path",
    "adapter": "model.adapter",
    "split": "data.split",
    "output_dir": "output_dir",
    "max_steps": "grpo.max_steps",
    "epochs": "grpo.num_train_epochs",
    "num_generations": "grpo.num_generations",
    "learning_rate": "grpo.learning_rate",
    "beta": "grpo.beta",
    "seed": "grpo.seed",
}


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    overrides = list(args.overrides)
    for attr, key in _FLAG_KEYS.items():
        value = getattr(args, attr)
        if value is not None:
            overrides.append(f"{key}={json.dumps(str(value)) if isinstance(value, Path) else value}")
    return load_config(args.config, overrides)


def dry_run(cfg: TrainConfig) -> int:
    """Validate everything that can be checked without loading the model; report missing inputs."""
    from .grpo import _cuda_available, grpo_arguments
    from .presets import get_preset

    preset = get_preset(cfg.preset)
    notes = []
    if not preset.trainable:
        notes.append(f"preset {preset.name} is not trainable ({preset.description})")
    if cfg.grpo.bf16 and not _cuda_available():
        notes.append("grpo.bf16 needs a GPU: TRL arguments were checked as for a CPU run")
    args = grpo_arguments(cfg)
    from .grpo import _lora_config

    lora = _lora_config(cfg)
    model_path = Path(cfg.model.path)
    if not (model_path / "config.json").is_file():
        notes.append(
            f"model directory {model_path} is not here"
            + (" (it will be built: model.build_tiny)" if cfg.model.build_tiny else " — training would stop")
        )
    if cfg.data.split is not None and not Path(cfg.data.split).is_file():
        notes.append(f"split manifest {cfg.data.split} is not here — training would stop")
    if cfg.data.split is None:
        notes.append(f"no split given: a synthetic split will be built under {cfg.data.synthetic.root}")
    print(dump_config(cfg), end="")
    print("# resolved")
    print(f"#   preset {preset.name}: prompt {preset.prompt_version}, rewards "
          + ", ".join(getattr(f, "func", f).__name__ for f in preset.reward_functions()))
    print(f"#   LoRA r={lora.r} alpha={lora.lora_alpha} on {lora.target_modules}")
    print(f"#   TRL: loss {args.loss_type}, scale_rewards {args.scale_rewards}, beta {args.beta}, "
          f"generations {args.num_generations}, "
          f"generation batch {args.generation_batch_size} with {args.world_size} process(es), "
          f"bf16 {args.bf16}, checkpointing {args.activation_checkpointing}, vLLM {args.use_vllm}")
    for note in notes:
        print(f"# note: {note}")
    print("# configuration is valid")
    return 0


def _delegate(argv: list[str]) -> int:
    command, rest = argv[0], argv[1:]
    if command == "gate":
        try:
            from .gate.cli import main as gate_main
        except ImportError as exc:
            print(f"adfm-train gate: the screening-gate trainer is not available: {exc}", file=sys.stderr)
            return 2
        return int(gate_main(rest) or 0)
    if command == "warmstart":
        from . import warmstart

        parser = argparse.ArgumentParser(prog="adfm-train warmstart", description=warmstart.__doc__,
                                         formatter_class=argparse.RawDescriptionHelpFormatter)
        warmstart.add_arguments(parser)
        args = parser.parse_args(rest)
        try:
            return warmstart.run(args)
        except ValueError as exc:
            print(f"adfm-train warmstart: {exc}", file=sys.stderr)
            return 2
    from . import reward_variance

    parser = argparse.ArgumentParser(prog="adfm-train variance", description=reward_variance.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    reward_variance.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return reward_variance.run(args)
    except (ValueError, FileNotFoundError) as exc:
        print(f"adfm-train variance: {exc}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in SUBCOMMANDS:
        return _delegate(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from .data.training_view import TrainingViewError
    from .grpo import TrainingSetupError, train
    from .modeling import ModelLoadError

    try:
        cfg = config_from_args(args)
        if args.dry_run:
            return dry_run(cfg)
        result = train(cfg, resume=args.resume)
    except (ConfigError, TrainingSetupError, TrainingViewError, ModelLoadError) as exc:
        print(f"adfm-train: {exc}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in result.last_metrics.items() if isinstance(v, int | float)}
    print(f"adfm-train: {result.global_step} steps; adapter in {result.final_adapter}")
    if result.ranks_agree is False:
        print("adfm-train: ranks ended with different weights (see rank_agreement.json)", file=sys.stderr)
        return 1
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
