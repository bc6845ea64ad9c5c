"""Learning check: the paper's Table 4 in miniature, on the tiny model and the synthetic task.

From one warm start (`adfm-train warmstart`: the tiny Qwen2.5-VL taught the multi-stage format on
synthetic parts, boxes from the masks), short GRPO runs of each preset with the same data, steps and
seeds. For every run: held-out accuracy, format rate and mean GIoU of the greedy answers before
(the warm start) and after, and the per-step share of groups whose rewards had zero variance
(TRL's `frac_reward_zero_std`). JSON and two plots under bench/results/.

    nice -n 10 python bench/learning_check.py                        # sized for a shared 2-core CPU
    python bench/learning_check.py --seeds 0 1 2 --steps 40          # more, when the machine allows

It is a benchmark, not a test: it reports whatever it measures, including a preset ordering that
differs from the paper's.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from adfm.offline import force_offline

force_offline()
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

RESULTS = Path(__file__).resolve().parent / "results"
PRESETS = ("cls-multi-stage", "cls-count-multi-stage", "adfm")


def evaluate(loaded: Any, dataset: Any, max_new_tokens: int, batch: int = 8) -> dict[str, float]:
    """Greedy answers on held-out rows: accuracy, format rate, mean matched GIoU and r_loc (anomalous).

    The GIoU of an anomalous part is the mean over its <think> boxes Hungarian-matched to the defect's
    boxes; an answer without boxes scores −1, GIoU's floor.
    """
    import torch

    from adfm.geometry import match_boxes
    from adfm.protocol import attach_images
    from adfm.trainer import rewards
    from adfm.trainer.data.training_view import REWARD_COLUMNS
    from adfm.trainer.modeling import vision_token_ids

    model, processor = loaded.model, loaded.processor
    suppress = vision_token_ids(loaded.tokenizer, getattr(model, "config", None))
    answers: list[str] = []
    rows = [dataset[i] for i in range(len(dataset))]
    for start in range(0, len(rows), batch):
        chunk = rows[start:start + batch]
        texts = [processor.apply_chat_template(attach_images(r["prompt"], list(r["images"])), tokenize=False,
                                               add_generation_prompt=True) for r in chunk]
        inputs = processor(text=texts, images=[list(r["images"]) for r in chunk], padding=True,
                           padding_side="left", return_tensors="pt").to(model.device)
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=suppress,
                                 pad_token_id=loaded.tokenizer.pad_token_id)
        answers += processor.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    correct = fmt = 0
    gious: list[float] = []
    loc: list[float] = []
    for row, answer in zip(rows, answers, strict=True):
        cols = {k: [row[k]] for k in REWARD_COLUMNS}
        parsed = rewards.parse_completions([answer], **cols)[0]
        correct += int(rewards.classification_reward([answer], **cols)[0])
        fmt += int(parsed.format_ok)
        if row["label"] == "anomalous":
            matches = match_boxes(parsed.proposed_boxes, row[rewards.GT_BOXES] or [])
            gious.append(sum(g for _, _, g in matches) / len(matches) if matches else -1.0)
            loc.append(rewards.localization_reward([answer], **cols)[0])
    n = len(rows)
    return {
        "accuracy": correct / n,
        "format_rate": fmt / n,
        "mean_giou_anomalous": sum(gious) / len(gious) if gious else 0.0,
        "mean_localization_reward_anomalous": sum(loc) / len(loc) if loc else 0.0,
        "samples": n,
        "example_answer": answers[0] if answers else "",
    }


def grpo_run(preset: str, seed: int, model_dir: Path, split: Path, out: Path, a: argparse.Namespace) -> dict[str, Any]:
    """One short GRPO run from the warm start; its per-step zero-variance share from metrics.jsonl."""
    from adfm.trainer.config import TrainConfig
    from adfm.trainer.grpo import METRICS, train
    from adfm.trainer.warmstart import TASK_PIXELS

    cfg = TrainConfig.model_validate({
        "preset": preset,
        "output_dir": str(out),
        "model": {"path": str(model_dir), "build_tiny": False, "dtype": "float32"},
        "data": {"split": str(split), "synthetic": None, "min_pixels": TASK_PIXELS, "max_pixels": TASK_PIXELS,
                 "use_reference": False},
        "lora": {"r": 16, "alpha": 32},
        "grpo": {
            "num_generations": a.num_generations,
            "per_device_train_batch_size": a.num_generations * a.prompts_per_step,
            "max_steps": a.steps,
            "num_train_epochs": 100,
            "learning_rate": a.learning_rate,
            "max_completion_length": a.max_completion_length,
            "loss_type": "grpo",
            "scale_rewards": "group",
            "logging_steps": 1,
            "save_steps": 10_000,
            "seed": seed,
        },
    })
    start = time.perf_counter()
    result = train(cfg)
    logs = [json.loads(line) for line in (out / METRICS).read_text().splitlines()]
    steps = [m for m in logs if "frac_reward_zero_std" in m]
    zero = [m["frac_reward_zero_std"] for m in steps]
    return {
        "preset": preset,
        "seed": seed,
        "seconds": time.perf_counter() - start,
        "steps": result.global_step,
        "adapter": str(result.final_adapter),
        "frac_reward_zero_std_by_step": zero,
        "frac_reward_zero_std_mean": sum(zero) / len(zero) if zero else None,
        "reward_by_step": [m.get("reward") for m in steps],
    }


def _mean_sd(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "n": len(values)}


def summarise(before: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for preset in dict.fromkeys(r["preset"] for r in runs):
        mine = [r for r in runs if r["preset"] == preset]
        out[preset] = {
            "seeds": [r["seed"] for r in mine],
            **{f"after_{k}": _mean_sd([r["after"][k] for r in mine])
               for k in ("accuracy", "format_rate", "mean_giou_anomalous")},
            "accuracy_change": _mean_sd([r["after"]["accuracy"] - before["accuracy"] for r in mine]),
            "frac_reward_zero_std": _mean_sd([r["frac_reward_zero_std_mean"] for r in mine]),
        }
    return out


def plot(result: dict[str, Any], results_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs, summary, before = result["runs"], result["summary"], result["warm_start"]["before"]
    colors = {"cls-multi-stage": "#8c8c8c", "cls-count-multi-stage": "#5b8fd6", "adfm": "#d6762f"}
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
    for preset in summary:
        series = [r["frac_reward_zero_std_by_step"] for r in runs if r["preset"] == preset]
        n = min(len(s) for s in series)
        mean = [statistics.fmean(s[i] for s in series) for i in range(n)]
        ax.plot(range(1, n + 1), [100 * v for v in mean], marker="o", ms=3, label=preset,
                color=colors.get(preset))
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("zero-variance groups (%)")
    ax.set_ylim(-5, 105)
    ax.legend(fontsize=8)
    ax.set_title(f"per-step zero-variance share, mean over {len(result['settings']['seeds'])} seed(s)", fontsize=9)
    fig.tight_layout()
    p1 = results_dir / "learning_check_zero_variance.png"
    fig.savefig(p1)
    plt.close(fig)

    metrics = ("accuracy", "format_rate", "mean_giou_anomalous")
    fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=120)
    for ax, metric in zip(axes, metrics, strict=True):
        names = ["warm start", *summary]
        vals = [before[metric], *(summary[p][f"after_{metric}"]["mean"] for p in summary)]
        errs = [0.0, *(summary[p][f"after_{metric}"]["sd"] for p in summary)]
        ax.bar(range(len(names)), vals, yerr=errs, capsize=3,
               color=["#cccccc", *(colors.get(p, "#999999") for p in summary)])
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
        ax.set_title(metric.replace("_", " "), fontsize=9)
    fig.tight_layout()
    p2 = results_dir / "learning_check_before_after.png"
    fig.savefig(p2)
    plt.close(fig)
    return [p1, p2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=Path, default=Path(".adfm-cache/warm-start"),
                        help="warm-start directory (built by adfm-train warmstart when missing)")
    parser.add_argument("--work", type=Path, default=Path(".adfm-cache/learning-check"), help="run directories")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=8, help="GRPO steps per run")
    parser.add_argument("--num-generations", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--max-completion-length", type=int, default=144)
    parser.add_argument("--train-per-class", type=int, default=16, help="GRPO training parts per class")
    parser.add_argument("--test-per-class", type=int, default=None,
                        help="held-out parts per class evaluated (default: the warm start's whole test split)")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from adfm.trainer.modeling import load_model
    from adfm.trainer.warmstart import TASK_PIXELS, WarmStartSpec, task_split, task_view, warm_start

    t0 = time.perf_counter()
    load_start = os.getloadavg()
    spec = WarmStartSpec()
    warm = warm_start(args.warm, spec)
    model_dir = Path(warm.model_dir)
    grpo_split = task_split(spec, args.work / "data", "grpo", args.train_per_class, spec.seed + 200)
    test_view = task_view(warm.test_split, spec)
    if args.test_per_class is not None:  # the first n normal and the first n defective parts
        labels = test_view.with_format(None)["label"]
        keep = [i for lab in ("normal", "anomalous") for i in [j for j, v in enumerate(labels) if v == lab][
            : args.test_per_class]]
        test_view = test_view.select(keep)
    budget = {"min_pixels": TASK_PIXELS, "max_pixels": TASK_PIXELS}

    loaded = load_model(model_dir, dtype="float32", **budget)
    before = evaluate(loaded, test_view, args.max_completion_length)
    del loaded
    print(f"warm start: {json.dumps({k: v for k, v in before.items() if k != 'example_answer'})}", flush=True)

    def report(runs: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "learning_check",
            "command": "python bench/learning_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "complete": complete,
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "pixels": TASK_PIXELS, "grpo_train_samples": 2 * args.train_per_class},
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                        "cuda": torch.cuda.is_available(), "platform": platform.platform(),
                        "loadavg_start": load_start, "loadavg_now": os.getloadavg()},
            "warm_start": {"dir": str(args.warm), "digest": warm.digest, "stages": warm.stages,
                           "build_seconds": warm.seconds, "test_split": warm.test_split, "before": before},
            "runs": runs,
            "summary": summarise(before, runs) if runs else {},
            "total_seconds": time.perf_counter() - t0,
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for preset in args.presets:
            out = args.work / f"{preset}-seed{seed}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            run = grpo_run(preset, seed, model_dir, grpo_split, out, args)
            tuned = load_model(model_dir, run["adapter"], dtype="float32", **budget)
            run["after"] = evaluate(tuned, test_view, args.max_completion_length)
            del tuned
            runs.append(run)
            print(f"{preset} seed {seed}: accuracy {before['accuracy']:.3f} → {run['after']['accuracy']:.3f}, "
                  f"format {run['after']['format_rate']:.2f}, GIoU {run['after']['mean_giou_anomalous']:.3f}, "
                  f"zero-variance {run['frac_reward_zero_std_mean']:.3f} ({run['seconds']:.0f} s)", flush=True)
            args.out.write_text(json.dumps(report(runs, complete=False), indent=2))  # what a cut-short run keeps

    result = report(runs, complete=True)
    args.out.write_text(json.dumps(result, indent=2))
    for p in plot(result, args.out.parent):
        print(f"wrote {p}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
