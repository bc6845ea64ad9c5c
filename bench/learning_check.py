"""Learning check: the paper's Fig. 5 and Table 4 in miniature, on the tiny model and the synthetic task.

From one warm start that sees the defects (`adfm-train warmstart`), on parts of mixed difficulty —
defects drawn at 1.4×, 1.0× and 0.8× their usual size, so some groups are solved and some are not:

- **Fig. 5**: for each seed, G answers sampled (temperature 1) for every prompt of a mixed split, and
  the share of prompts whose rewards all agree (zero variance: GRPO learns nothing from them) under
  each reward scheme — r_cls, r_cls + r_count, r_cls + r_giou, r_cls + r_loc (AD-FM's full reward) —
  overall and per defect size; mean and a 95 % t-interval over the seeds.
- **Table 4**: short GRPO runs of each preset and seed from the warm start on mixed prompts; greedy
  held-out accuracy, F1, format rate and matched GIoU before and after (overall and per size), the
  change with a 95 % t-interval over seeds, and the per-step zero-variance share TRL logs.

Answers are read through `adfm.protocol` and scored with `adfm.geometry`
(`adfm.trainer.warmstart_eval`). JSON and plots under bench/results/.

    nice -n 10 python bench/learning_check.py --seeds 0 1 2 --steps 6      # sized for a shared 2-core CPU
    python bench/learning_check.py --seeds 0 1 2 --steps 0                 # Fig. 5 only (no GRPO)

It is a benchmark, not a test: it reports whatever it measures, including a preset ordering that
differs from the paper's.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
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
METRICS = ("accuracy", "f1", "format_rate", "mean_matched_giou_defective", "iou50_defective")
#: two-sided 95 % Student t quantiles by degrees of freedom (n − 1)
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}


def interval(values: list[float]) -> dict[str, float]:
    """Mean, sample sd and a 95 % t-interval of the mean over `values` (seeds)."""
    n = len(values)
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if n > 1 else 0.0
    half = T95.get(n - 1, 1.96) * sd / math.sqrt(n) if n > 1 else 0.0
    return {"mean": mean, "sd": sd, "n": n, "ci95": [mean - half, mean + half]}


def scale_of(row_id: str) -> str:
    return row_id.rsplit("@", 1)[-1] if "@" in row_id else "?"


def evaluate(loaded: Any, rows: list[dict[str, Any]], max_new_tokens: int) -> dict[str, Any]:
    """Greedy held-out scores, overall and per defect size (the split's `@x<scale>` id suffix)."""
    from adfm.trainer.warmstart_eval import greedy_answers, score_answers

    answers = greedy_answers(loaded, rows, max_new_tokens)
    out = score_answers(rows, answers)
    out["by_scale"] = {}
    for scale in dict.fromkeys(scale_of(r["id"]) for r in rows):
        pick = [i for i, r in enumerate(rows) if scale_of(r["id"]) == scale]
        scored = score_answers([rows[i] for i in pick], [answers[i] for i in pick])
        out["by_scale"][scale] = {k: v for k, v in scored.items() if k != "example_answers"}
    return out


def zero_variance(loaded: Any, view: Any, seed: int, a: argparse.Namespace) -> dict[str, Any]:
    """Fig. 5 for one seed: G sampled answers per prompt; zero-variance share per scheme, overall and per size."""
    from adfm.trainer import reward_variance as rv

    records = rv.sample_records(loaded, view, len(view), a.num_generations, a.max_completion_length,
                                1.0, 1.0, seed)
    overall = rv.analyse(records)
    by_scale = {}
    for scale in dict.fromkeys(scale_of(r.id) for r in records):
        mine = [r for r in records if scale_of(r.id) == scale]
        by_scale[scale] = {k: v["zero_variance_share"] for k, v in rv.analyse(mine)["schemes"].items()}
    answers = [x for r in records for x in r.responses]
    return {"seed": seed, "samples": len(records),
            "schemes": {k: v["zero_variance_share"] for k, v in overall["schemes"].items()},
            "presets": {k: v["zero_variance_share"] for k, v in overall["presets"].items()},
            "by_scale": by_scale,
            "yes_share": sum("<answer>yes" in x for x in answers) / len(answers)}


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


def summarise(before: dict[str, Any], runs: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for preset in dict.fromkeys(r["preset"] for r in runs):
        mine = [r for r in runs if r["preset"] == preset]
        out[preset] = {
            "seeds": [r["seed"] for r in mine],
            **{f"after_{k}": interval([r["after"][k] for r in mine]) for k in METRICS},
            **{f"change_{k}": interval([r["after"][k] - before[k] for r in mine]) for k in METRICS},
            "frac_reward_zero_std": interval([r["frac_reward_zero_std_mean"] for r in mine]),
        }
    return out


def plot(result: dict[str, Any], results_dir: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = []
    fig5 = result["fig5"]["summary"]
    if fig5:
        names = list(fig5)
        means = [100 * fig5[n]["mean"] for n in names]
        errs = [[100 * (fig5[n]["mean"] - fig5[n]["ci95"][0]) for n in names],
                [100 * (fig5[n]["ci95"][1] - fig5[n]["mean"]) for n in names]]
        fig, ax = plt.subplots(figsize=(6, 3.6), dpi=120)
        bars = ax.bar(range(len(names)), means, yerr=errs, capsize=4,
                      color=["#8c8c8c", "#5b8fd6", "#6bb36b", "#d6762f"][: len(names)])
        for bar, m in zip(bars, means, strict=True):
            ax.annotate(f"{m:.1f}%", (bar.get_x() + bar.get_width() / 2, 0.5), ha="center", va="bottom", fontsize=8)
        ax.set_xticks(range(len(names)), names, fontsize=8)
        ax.set_ylabel("zero-variance prompts (%)")
        ax.set_ylim(0, 105)
        n = len(result["fig5"]["seeds"])
        ax.set_title(f"Fig. 5 in miniature: {result['fig5']['seeds'][0]['samples']} mixed prompts × "
                     f"{result['settings']['num_generations']} answers, mean and 95 % CI over {n} seeds", fontsize=8)
        fig.tight_layout()
        paths.append(results_dir / "learning_check_zero_variance.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    summary, before = result["summary"], result["warm_start"]["before"]
    if summary:
        colors = {"cls-multi-stage": "#8c8c8c", "cls-count-multi-stage": "#5b8fd6", "adfm": "#d6762f"}
        metrics = ("accuracy", "f1", "mean_matched_giou_defective")
        fig, axes = plt.subplots(1, 3, figsize=(9, 3.2), dpi=120)
        for ax, metric in zip(axes, metrics, strict=True):
            names = ["warm start", *summary]
            vals = [before[metric], *(summary[p][f"after_{metric}"]["mean"] for p in summary)]
            lo = [0.0, *(summary[p][f"after_{metric}"]["mean"] - summary[p][f"after_{metric}"]["ci95"][0]
                         for p in summary)]
            ax.bar(range(len(names)), vals, yerr=[lo, lo], capsize=3,
                   color=["#cccccc", *(colors.get(p, "#999999") for p in summary)])
            ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=7)
            ax.set_title(metric.replace("_", " "), fontsize=9)
        fig.tight_layout()
        paths.append(results_dir / "learning_check_before_after.png")
        fig.savefig(paths[-1])
        plt.close(fig)
    return paths


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--warm", type=Path, default=Path(".adfm-cache/warm-start"),
                        help="warm-start directory (built by adfm-train warmstart when missing)")
    parser.add_argument("--model", type=Path, default=None,
                        help="a warm-started model directory to use as is (default: the warm start in --warm)")
    parser.add_argument("--work", type=Path, default=Path(".adfm-cache/learning-check"), help="run directories")
    parser.add_argument("--presets", nargs="+", default=list(PRESETS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=6, help="GRPO steps per run (0: Fig. 5 only)")
    parser.add_argument("--num-generations", type=int, default=6)
    parser.add_argument("--prompts-per-step", type=int, default=2)
    parser.add_argument("--learning-rate", type=float, default=5e-4)
    parser.add_argument("--max-completion-length", type=int, default=96)
    parser.add_argument("--train-per-class", type=int, default=8, help="GRPO parts per class and size")
    parser.add_argument("--variance-per-class", type=int, default=4, help="Fig. 5 prompts per class and size")
    parser.add_argument("--test-per-class", type=int, default=16, help="held-out parts per class and size")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_check.json")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    import torch

    from adfm.trainer.modeling import load_model
    from adfm.trainer.warmstart import MIXED_SCALES, TASK_PIXELS, WarmStartSpec, mixed_split, task_view, warm_start

    t0, c0 = time.perf_counter(), time.process_time()
    load_start = os.getloadavg()
    spec = WarmStartSpec()
    warm = None if args.model is not None else warm_start(args.warm, spec)
    model_dir = args.model if args.model is not None else Path(warm.model_dir)
    data = args.work / "data"
    grpo_split = mixed_split(spec, data, "grpo", args.train_per_class, spec.seed + 200)
    var_view = task_view(mixed_split(spec, data, "variance", args.variance_per_class, spec.seed + 300), spec)
    test_view = task_view(mixed_split(spec, data, "held-out", args.test_per_class, spec.seed + 400), spec)
    test_rows = [test_view[i] for i in range(len(test_view))]
    budget = {"min_pixels": TASK_PIXELS, "max_pixels": TASK_PIXELS}

    loaded = load_model(model_dir, dtype="float32", **budget)
    before = evaluate(loaded, test_rows, args.max_completion_length)
    print(f"warm start, held-out ({len(test_rows)} parts, sizes {MIXED_SCALES}): "
          f"{json.dumps({k: v for k, v in before.items() if k not in ('example_answers', 'by_scale')})}", flush=True)
    fig5_seeds = []
    for seed in args.seeds:
        fig5_seeds.append(zero_variance(loaded, var_view, seed, args))
        print(f"Fig. 5 seed {seed}: {fig5_seeds[-1]['schemes']}", flush=True)
    del loaded
    fig5 = {"seeds": fig5_seeds,
            "summary": {k: interval([s["schemes"][k] for s in fig5_seeds]) for k in fig5_seeds[0]["schemes"]},
            "by_scale": {sc: {k: interval([s["by_scale"][sc][k] for s in fig5_seeds])
                              for k in fig5_seeds[0]["by_scale"][sc]} for sc in fig5_seeds[0]["by_scale"]}}

    def report(runs: list[dict[str, Any]], complete: bool) -> dict[str, Any]:
        return {
            "benchmark": "learning_check",
            "command": "python bench/learning_check.py " + " ".join(sys.argv[1:] if argv is None else argv),
            "complete": complete,
            "settings": {**{k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                         "pixels": TASK_PIXELS, "defect_scales": list(MIXED_SCALES),
                         "held_out_parts": len(test_rows), "variance_prompts": len(var_view)},
            "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": os.cpu_count(),
                        "cuda": torch.cuda.is_available(), "platform": platform.platform(),
                        "loadavg_start": load_start, "loadavg_now": os.getloadavg()},
            "warm_start": {"model_dir": str(model_dir), "digest": warm.digest if warm else None,
                           "stages": warm.stages if warm else None,
                           "build_seconds": warm.seconds if warm else None, "before": before},
            "fig5": fig5,
            "runs": runs,
            "summary": summarise(before, runs) if runs else {},
            "total_seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report([], complete=args.steps == 0), indent=2))
    runs: list[dict[str, Any]] = []
    for seed in args.seeds if args.steps > 0 else []:
        for preset in args.presets:
            out = args.work / f"{preset}-seed{seed}"
            if out.exists():
                import shutil

                shutil.rmtree(out)
            run = grpo_run(preset, seed, model_dir, grpo_split, out, args)
            tuned = load_model(model_dir, run["adapter"], dtype="float32", **budget)
            run["after"] = evaluate(tuned, test_rows, args.max_completion_length)
            del tuned
            runs.append(run)
            print(f"{preset} seed {seed}: accuracy {before['accuracy']:.3f} → {run['after']['accuracy']:.3f}, "
                  f"F1 {before['f1']:.3f} → {run['after']['f1']:.3f}, GIoU "
                  f"{before['mean_matched_giou_defective']:.3f} → {run['after']['mean_matched_giou_defective']:.3f}, "
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
