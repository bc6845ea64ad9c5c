"""Per-part time with and without prefix reuse in `GgufVlm`, side by side in one run.

With the paper's one-shot protocol every part's prompt starts with the same system prompt and the
same normal reference image. `GgufVlm` keeps that prefix in llama.cpp's KV cache and evaluates only
the query image and the text after it. This bench loads the same export twice (one instance with
reuse, one without), answers the same parts with both in alternating order, and reports:
- per-part seconds of each side (median, p10, p90) and the paired ratio reuse/fresh (median with a
  bootstrap 95 % interval over parts);
- whether every greedy answer was token for token the same on both sides.
Random-weight models don't stop, so the answer length is fixed (`--max-tokens`).

Run: python bench/prefix_reuse.py [--model DIR] [--parts 30] [--side 448]
Without --model it builds (once, cached) the tiny export with `python -m adfm.export.tiny`.
Writes bench/results/prefix_reuse.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image
from realistic_models import tiny_export

ROOT = Path(__file__).resolve().parents[1]


def _bootstrap_median(values: list[float], rounds: int = 2000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    arr = np.asarray(values)
    meds = np.median(rng.choice(arr, size=(rounds, len(arr)), replace=True), axis=1)
    return float(np.quantile(meds, 0.025)), float(np.quantile(meds, 0.975))


def _summary(seconds: list[float]) -> dict:
    s = sorted(seconds)
    return {"median_s": statistics.median(s), "p10_s": s[int(0.1 * (len(s) - 1))], "p90_s": s[int(0.9 * (len(s) - 1))]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="exported model directory (default: the tiny export)")
    p.add_argument("--parts", type=int, default=30, help="parts per side after warm-up (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--side", type=int, default=448, help="square part images of this side before the grid resize")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "adfm" / "bench")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "prefix_reuse.json")
    args = p.parse_args(argv)

    from adfm.runtime.vlm import GgufVlm
    from adfm.synthetic import make_sample

    model_dir = args.model or tiny_export(args.cache)
    rng = np.random.default_rng(0)
    size = (args.side, args.side)
    images = [Image.fromarray(make_sample("washer", "spot" if i % 2 else None, rng, size=size).image)
              for i in range(args.parts + args.warmup + 1)]
    with GgufVlm(model_dir, n_ctx=args.n_ctx, n_threads=args.threads) as reuse, \
            GgufVlm(model_dir, n_ctx=args.n_ctx, n_threads=args.threads, reuse_prefix=False) as fresh:
        grid = reuse.grid_for(*size)
        reference, *queries = [grid.resize(im) for im in images]
        times: dict[str, list[float]] = {"reuse": [], "fresh": []}
        same, reused_positions, prompt_tokens = 0, set(), set()
        for i, query in enumerate(queries):
            order = (("reuse", reuse), ("fresh", fresh)) if i % 2 == 0 else (("fresh", fresh), ("reuse", reuse))
            answers = {}
            for name, vlm in order:
                t0 = time.perf_counter()
                gen = vlm.generate([reference, query], product="washer", max_tokens=args.max_tokens)
                elapsed = time.perf_counter() - t0
                answers[name] = gen
                if i >= args.warmup:
                    times[name].append(elapsed)
            if i >= args.warmup:
                same += answers["reuse"].token_ids == answers["fresh"].token_ids
                reused_positions.add(answers["reuse"].prefix_reused)
                prompt_tokens.add(answers["reuse"].prompt_tokens)
    ratios = [r / f for r, f in zip(times["reuse"], times["fresh"], strict=True)]
    lo, hi = _bootstrap_median(ratios)
    result = {
        "bench": "prefix_reuse",
        "command": "python " + " ".join([str(Path(__file__).relative_to(ROOT)), *(argv or sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "loadavg_start_end": None},
        "model": {"dir": str(model_dir), "model_id": reuse.manifest.model_id},
        "setup": {"parts_per_side": args.parts, "warmup": args.warmup, "image": f"{grid.width}x{grid.height}",
                  "image_tokens_each": (grid.width // 28) * (grid.height // 28), "images_per_prompt": 2,
                  "max_tokens": args.max_tokens, "threads": args.threads or "llama.cpp default",
                  "prompt_tokens": sorted(prompt_tokens), "prefix_positions_reused": sorted(reused_positions)},
        "reuse": _summary(times["reuse"]),
        "fresh": _summary(times["fresh"]),
        "ratio_reuse_over_fresh": {"median": statistics.median(ratios), "ci95": [lo, hi]},
        "time_saved_median": 1 - statistics.median(ratios),
        "greedy_answers_identical": f"{same}/{len(ratios)}",
    }
    result["machine"]["loadavg_start_end"] = [LOAD_START, os.getloadavg()]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("reuse", "fresh", "ratio_reuse_over_fresh", "greedy_answers_identical")},
                     indent=2))
    return 0


LOAD_START = os.getloadavg()

if __name__ == "__main__":
    raise SystemExit(main())
