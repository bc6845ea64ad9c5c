"""The per-part budget at realistic model sizes: where a part's time goes, and what prefix reuse saves.

For each model size (random-weight exports with released shapes, bench/realistic_models.py) and
image budget (about 256 / 512 / 1,024 visual tokens per image), the inference worker's model call
(`GgufVlm.generate`, q4_k_m + f16 mmproj) answers synthetic parts in three ways, in rounds:
- `no_reference`: the query image alone, evaluated from an empty context;
- `reference_fresh`: the reference image and the query, evaluated from an empty context;
- `reference_reused`: the same, with the system prompt + reference image kept in the KV cache from
  the previous part (`GgufVlm(reuse_prefix=True)`, the worker's default): only the query image and
  the text after it are evaluated.
Each answer's time is split by `Generation`: vision encoder + projector, prompt evaluation (text and
image tokens through the language model), generation. Random weights don't stop, so every answer is
`--max-tokens` long (default 128). Rounds alternate the three ways so load drifts hit them alike;
the saving is the paired ratio reused/fresh within each round. The threads setting is the fastest of
`--threads` in a short probe (one query-only part each) unless only one is given.

    python bench/part_budget.py --size qwen2.5-vl-3b [--budgets 256 512 1024] [--rounds 2]

Writes bench/results/part_budget-<size>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
WAYS = ("no_reference", "reference_fresh", "reference_reused")


def side_for(budget: int) -> int:
    """Square image side on the 28-pixel grid whose visual tokens come closest to `budget`."""
    return 28 * max(2, round(math.sqrt(budget)))


def part_images(side: int, n: int, seed: int) -> list[Image.Image]:
    from adfm.synthetic import make_sample

    rng = np.random.default_rng(seed)
    defects = (None, "scratch", "spot", None)
    return [Image.fromarray(make_sample("washer", defects[i % 4], rng, size=(side, side)).image) for i in range(n)]


def record(gen: Any, wall: float) -> dict[str, Any]:
    evaluated = gen.prompt_tokens - gen.prefix_tokens_reused
    return {
        "seconds": round(wall, 3),
        "vision_s": round(gen.vision_seconds, 3),
        "prompt_eval_s": round(gen.prefill_seconds, 3),
        "generate_s": round(gen.generate_seconds, 3),
        "prompt_tokens": gen.prompt_tokens,
        "prompt_tokens_evaluated": evaluated,
        "image_tokens": list(gen.image_tokens),
        "completion_tokens": gen.completion_tokens,
        "prompt_eval_tokens_per_s": round(evaluated / gen.prefill_seconds, 1) if gen.prefill_seconds else None,
        "generation_tokens_per_s": round(gen.completion_tokens / gen.generate_seconds, 2)
        if gen.generate_seconds else None,
    }


def summarize(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("seconds", "vision_s", "prompt_eval_s", "generate_s", "generation_tokens_per_s",
            "prompt_eval_tokens_per_s")
    out: dict[str, Any] = {"n": len(runs)}
    for key in keys:
        values = [r[key] for r in runs if r[key] is not None]
        if values:
            out[key] = {"median": round(statistics.median(values), 3), "min": min(values), "max": max(values)}
    out["prompt_tokens"] = runs[0]["prompt_tokens"]
    out["prompt_tokens_evaluated"] = runs[0]["prompt_tokens_evaluated"]
    out["image_tokens"] = runs[0]["image_tokens"]
    return out


def probe_threads(model_dir: Path, candidates: list[int], side: int, n_ctx: int) -> dict[str, Any]:
    """Per-part seconds of one query-only part (16 tokens) for each thread count, after a warm-up."""
    from adfm.runtime.vlm import GgufVlm

    image = part_images(side, 1, seed=99)[0]
    seconds = {}
    for n in candidates:
        with GgufVlm(model_dir, n_ctx=n_ctx, n_threads=n, reuse_prefix=False) as vlm:
            query = vlm.grid_for(side, side).resize(image)
            vlm.generate([query], product="washer", max_tokens=4)
            t0 = time.perf_counter()
            vlm.generate([query], product="washer", max_tokens=16)
            seconds[n] = round(time.perf_counter() - t0, 3)
    best = min(seconds, key=lambda k: seconds[k])
    return {"seconds_per_part": seconds, "best": best, "part": f"{side}x{side}, query only, 16 tokens"}


def run_budget(model_dir: Path, budget: int, *, rounds: int, max_tokens: int, threads: int,
               n_ctx: int, log) -> dict[str, Any]:
    from adfm.runtime.vlm import GgufVlm

    side = side_for(budget)
    # reference, then the queries; a fresh reference per round for the fresh side
    refs = part_images(side, rounds + 1, seed=budget)
    queries = part_images(side, rounds + 1, seed=budget + 1)
    runs: dict[str, list[dict[str, Any]]] = {w: [] for w in WAYS}
    with GgufVlm(model_dir, n_ctx=n_ctx, n_threads=threads, reuse_prefix=False) as fresh, \
            GgufVlm(model_dir, n_ctx=n_ctx, n_threads=threads, reuse_prefix=True) as reuse:
        grid = fresh.grid_for(side, side)
        reference = grid.resize(refs[0])
        # warm-up: the reusing instance evaluates the prefix once (and both page the weights in)
        t0 = time.perf_counter()
        warm = reuse.generate([reference, grid.resize(queries[0])], product="washer", max_tokens=max_tokens)
        log(f"  warm-up {time.perf_counter() - t0:.1f} s ({warm.prompt_tokens} prompt tokens; the prefix is now kept)")
        fresh.generate([grid.resize(queries[0])], product="washer", max_tokens=4)
        for r in range(rounds):
            query = grid.resize(queries[r + 1])
            order = WAYS if r % 2 == 0 else tuple(reversed(WAYS))
            for way in order:
                t0 = time.perf_counter()
                if way == "no_reference":
                    gen = fresh.generate([query], product="washer", max_tokens=max_tokens)
                elif way == "reference_fresh":
                    gen = fresh.generate([reference, query], product="washer", max_tokens=max_tokens)
                else:
                    gen = reuse.generate([reference, query], product="washer", max_tokens=max_tokens)
                    if gen.prefix_reused == 0:
                        raise SystemExit("the reusing instance did not reuse its prefix; the bench is broken")
                wall = time.perf_counter() - t0
                runs[way].append(record(gen, wall) | {"round": r, "load1": round(os.getloadavg()[0], 2)})
                log(f"  round {r} {way}: {wall:.1f} s (vision {gen.vision_seconds:.1f}, prompt "
                    f"{gen.prefill_seconds:.1f}, generation {gen.generate_seconds:.1f})")
    ratios = [u["seconds"] / f["seconds"] for u, f in zip(runs["reference_reused"], runs["reference_fresh"],
                                                           strict=True)]
    return {
        "budget_tokens": budget,
        "image": f"{side}x{side}",
        "image_tokens_each": (side // 28) ** 2,
        "ways": {w: summarize(runs[w]) for w in WAYS},
        "runs": runs,
        "reused_over_fresh": {"per_round": [round(x, 3) for x in ratios], "median": round(statistics.median(ratios), 3),
                              "min": round(min(ratios), 3), "max": round(max(ratios), 3)},
        "time_saved_median": round(1 - statistics.median(ratios), 3),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", required=True, help="model size: qwen2.5-vl-3b or qwen2.5-vl-7b")
    p.add_argument("--model", type=Path, help="export directory (default: the cached build of --size)")
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--rounds", type=int, default=2, help="rounds of the three ways per budget (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=128)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1],
                   help="thread counts to probe; the fastest runs the table (default: 1 and all cores)")
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    if args.rounds < 1 or args.max_tokens < 1 or min(args.budgets) < 4:
        p.error("--rounds and --max-tokens must be at least 1, budgets at least 4 tokens")
    from realistic_models import cached_export

    model_dir = args.model or cached_export(args.size)
    if model_dir is None:
        raise SystemExit(f"no export of {args.size}; build it with: "
                         f"python bench/realistic_models.py --size {args.size}")
    out = args.out or ROOT / "bench" / "results" / f"part_budget-{args.size}.json"

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    load_start = os.getloadavg()
    n_ctx = 512 * math.ceil((2 * (max(side_for(b) for b in args.budgets) // 28) ** 2 + 1024 + args.max_tokens) / 512)
    threads = sorted(set(args.threads))
    probe = None
    if len(threads) > 1:
        probe = probe_threads(model_dir, threads, side_for(min(args.budgets)), n_ctx)
        log(f"threads probe: {probe}")
    best = probe["best"] if probe else threads[0]
    from adfm.manifest import read_manifest

    manifest = read_manifest(model_dir)
    budgets: list[dict[str, Any]] = []
    for budget in args.budgets:
        log(f"{args.size}, about {budget} visual tokens per image, {best} threads:")
        budgets.append(run_budget(model_dir, budget, rounds=args.rounds, max_tokens=args.max_tokens,
                                  threads=best, n_ctx=n_ctx, log=log))
        write_result(out, argv, load_start, args, model_dir, manifest, best, n_ctx, probe, budgets)
    for b in budgets:
        log(f"{b['image_tokens_each']} tokens: " + ", ".join(
            f"{w} {b['ways'][w]['seconds']['median']:.1f} s" for w in WAYS) + f"; saved {b['time_saved_median']:.0%}")
    return 0


def write_result(out: Path, argv: list[str] | None, load_start: tuple[float, float, float], args: Any,
                 model_dir: Path, manifest: Any, best: int, n_ctx: int, probe: dict[str, Any] | None,
                 budgets: list[dict[str, Any]]) -> None:
    """Write the JSON so far (after each budget: an interrupted run keeps what it measured)."""
    result = {
        "bench": "part_budget",
        "command": "python " + " ".join(["bench/part_budget.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "cpu": _cpu_name(),
                    "nice": os.nice(0), "loadavg_start_end": [load_start, os.getloadavg()]},
        "model": {"size": args.size, "dir": str(model_dir), "files": [f.path for f in manifest.files],
                  "weights": "random (released shapes)"},
        "setup": {"max_tokens": args.max_tokens, "rounds": args.rounds, "threads": best, "n_ctx": n_ctx,
                  "measured": "GgufVlm.generate wall time per part; stages from Generation"},
        "threads_probe": probe,
        "peak_rss_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9, 2),
        "budgets": budgets,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    raise SystemExit(main())
