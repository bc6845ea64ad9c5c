"""Learning check: does GRPO move the tiny model, and does AD-FM's reward keep more groups informative?

On synthetic parts: build the tiny random Qwen2.5-VL, warm-start it (supervised) on the answer
format, then run GRPO from that checkpoint with `cls-multi-stage` (binary reward) and with `adfm`
(classification + localization). Reports held-out accuracy before and after each run, format
rate, localization score, and each run's `frac_reward_zero_std` (the share of groups that gave no
learning signal), as JSON under bench/results/.

    python bench/learning_check.py                 # sized for ≤30 min on a 2-core CPU
    python bench/learning_check.py --scale gpu     # more data, steps and pixels (default when CUDA is there)

It is a benchmark, not a test: it reports whatever it measures.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from adfm.offline import force_offline

force_offline()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("cls-multi-stage", "adfm")


@dataclass(frozen=True)
class Scale:
    """How big the check is; `cpu` is sized for ≤30 min on the 2-core build machine."""

    categories: tuple[str, ...]
    train_per_class: int
    test_per_class: int
    image_size: int
    max_pixels: int
    use_reference: bool
    warm_steps: int
    grpo_steps: int
    num_generations: int
    max_completion_length: int


SCALES = {
    "cpu": Scale(("washer", "tile"), 8, 6, 128, 112 * 112, False, 80, 24, 4, 112),
    "gpu": Scale(("washer", "tile", "pill", "fabric"), 32, 16, 256, 224 * 224, True, 400, 200, 6, 160),
}


def evaluate(loaded: Any, dataset: Any, max_new_tokens: int) -> dict[str, float]:
    """Greedy answers on held-out rows: accuracy, format rate, unreadable rate, mean r_loc (anomalous)."""
    from tqdm import tqdm

    from adfm.trainer import rewards
    from adfm.trainer.data.training_view import REWARD_COLUMNS
    from adfm.trainer.generation import generate

    correct = fmt = unreadable = 0
    loc: list[float] = []
    for i in tqdm(range(len(dataset)), desc="evaluating", unit="sample"):
        row = dataset[i]
        answer = generate(loaded, row, 1, max_new_tokens, temperature=0)[0]
        cols = {k: [row[k]] for k in REWARD_COLUMNS}
        parsed = rewards.parse_completions([answer], **cols)[0]
        correct += int(rewards.classification_reward([answer], **cols)[0])
        fmt += int(parsed.format_ok)
        unreadable += int(parsed.decision is None)
        if row["label"] == "anomalous":
            loc.append(rewards.localization_reward([answer], **cols)[0])
    n = len(dataset)
    return {
        "accuracy": correct / n,
        "format_rate": fmt / n,
        "unreadable_rate": unreadable / n,
        "mean_localization_reward_anomalous": sum(loc) / len(loc) if loc else 0.0,
        "samples": n,
    }


def grpo_run(preset: str, model_dir: Path, split: Path, out: Path, scale: Scale) -> dict[str, Any]:
    from adfm.trainer.config import TrainConfig
    from adfm.trainer.grpo import METRICS, train

    cfg = TrainConfig.model_validate(
        {
            "preset": preset,
            "output_dir": str(out),
            "model": {"path": str(model_dir), "build_tiny": False, "dtype": "float32"},
            "data": {"split": str(split), "synthetic": None, "min_pixels": 112 * 112,
                     "max_pixels": scale.max_pixels, "use_reference": scale.use_reference},
            "lora": {"r": 16, "alpha": 32},
            "grpo": {
                "num_generations": scale.num_generations,
                "per_device_train_batch_size": scale.num_generations,
                "max_steps": scale.grpo_steps,
                "num_train_epochs": 100,
                "learning_rate": 5e-4,
                "max_completion_length": scale.max_completion_length,
                "loss_type": "grpo",
                "scale_rewards": "group",
                "save_steps": 10_000,
                "seed": 0,
            },
        }
    )
    start = time.perf_counter()
    result = train(cfg)
    seconds = time.perf_counter() - start
    logs = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    steps = [m for m in logs if "frac_reward_zero_std" in m]
    zero = [m["frac_reward_zero_std"] for m in steps]
    reward_keys = sorted({k for m in steps for k in m if k.startswith("rewards/") and k.endswith("/mean")})
    return {
        "seconds": seconds,
        "steps": result.global_step,
        "adapter": str(result.final_adapter),
        "frac_reward_zero_std_mean": sum(zero) / len(zero) if zero else None,
        "frac_reward_zero_std_by_step": zero,
        "reward_means": {k: sum(m[k] for m in steps) / len(steps) for k in reward_keys},
        "reward_mean_first_last": [steps[0]["reward"], steps[-1]["reward"]] if steps else None,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=["auto", *SCALES], default="auto", help="auto: gpu when CUDA is there")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_check.json", help="result JSON path")
    parser.add_argument("--work", type=Path, help="working directory (default: a temporary one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from adfm.trainer.config import SyntheticSection
    from adfm.trainer.data.training_view import ViewOptions, training_view
    from adfm.trainer.modeling import load_model
    from adfm.trainer.synthetic_split import build_synthetic_split
    from adfm.trainer.tiny_model import build_tiny_qwen25vl
    from adfm.trainer.warmstart import supervised_warm_start

    scale_name = args.scale if args.scale != "auto" else ("gpu" if torch.cuda.is_available() else "cpu")
    scale = SCALES[scale_name]
    work = args.work or Path(tempfile.mkdtemp(prefix="adfm-learning-check-"))
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    budget = {"min_pixels": 112 * 112, "max_pixels": scale.max_pixels}

    base = build_tiny_qwen25vl(work / "tiny", **budget)
    spec = dict(root=work / "synthetic", categories=list(scale.categories), image_size=scale.image_size)
    train_split = build_synthetic_split(SyntheticSection(**spec, normal_per_category=scale.train_per_class,
                                                         anomalous_per_category=scale.train_per_class), "train")
    test_split = build_synthetic_split(SyntheticSection(**spec, normal_per_category=scale.test_per_class,
                                                        anomalous_per_category=scale.test_per_class), "test")
    view = ViewOptions(use_reference=scale.use_reference, **budget)
    train_view, test_view = training_view(train_split, view), training_view(test_split, view)

    loaded = load_model(base, dtype="float32", **budget)
    before_warm = evaluate(loaded, test_view, scale.max_completion_length)
    warm = supervised_warm_start(loaded, train_view, work / "warm", steps=scale.warm_steps)
    after_warm = evaluate(loaded, test_view, scale.max_completion_length)
    del loaded

    runs: dict[str, Any] = {}
    for preset in PRESETS:
        run = grpo_run(preset, work / "warm", train_split, work / preset, scale)
        tuned = load_model(work / "warm", run["adapter"], dtype="float32", **budget)
        run["after"] = evaluate(tuned, test_view, scale.max_completion_length)
        run["accuracy_change"] = run["after"]["accuracy"] - after_warm["accuracy"]
        runs[preset] = run
        del tuned

    result = {
        "benchmark": "learning_check",
        "scale": scale_name,
        "settings": asdict(scale),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                    "cuda": torch.cuda.is_available(), "platform": platform.platform()},
        "train_samples": len(train_view),
        "test_samples": len(test_view),
        "random_model": before_warm,
        "warm_start": {**asdict(warm), "after": after_warm},
        "grpo": runs,
        "total_seconds": time.perf_counter() - t0,
        "work_dir": str(work),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(json.dumps({k: result[k] for k in ("scale", "random_model", "total_seconds")}, indent=2))
    for preset, run in runs.items():
        print(f"{preset:>16}: accuracy {after_warm['accuracy']:.3f} → {run['after']['accuracy']:.3f}, "
              f"frac_reward_zero_std {run['frac_reward_zero_std_mean']:.3f}, {run['seconds']:.0f} s")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
