"""The vision side at a released shape: image encoding with the mmproj in f16 against q8_0.

For one size (default the 3B shape; the 3B and 7B vision towers share every shape but the
merger's output width), this bench
1. writes a q8_0 mmproj beside the cached f16 one, with the export's own writer, from the kept
   random-weight HF checkpoint (bench/realistic_models.py --keep-checkpoint);
2. computes the HF vision tower's output in float32 for one part image per budget (the reference);
3. times `GgufVlm.image_embeddings` (vision encoder + projector, what every part pays per image)
   with each mmproj and each thread count, interleaved, `--reps` times after a warm-up, and reports
   the error of each against the reference: max |Δ| / std (the export's vision check) and
   ‖Δ‖ / ‖reference‖.

    python bench/mmproj_types.py [--size qwen2.5-vl-3b] [--budgets 256 1024] [--reps 3]

Writes bench/results/mmproj_types.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from part_budget import part_images, side_for
from realistic_models import CACHE, cached_export, hf_dir

ROOT = Path(__file__).resolve().parents[1]


def reference_embeddings(hf: Path, images: dict[int, Any], q8_path: Path) -> dict[int, np.ndarray]:
    """The HF vision tower's float32 output per budget; writes the q8_0 mmproj on the way if missing."""
    import torch

    from adfm.export.gguf_mmproj import write_mmproj
    from adfm.export.merge import load_merged

    merged = load_merged(hf, None, dtype="bfloat16")
    if not q8_path.is_file():
        tmp = q8_path.with_suffix(".partial")
        write_mmproj(merged, tmp, "q8_0")
        tmp.rename(q8_path)
    model = merged.model
    model.model.visual.to(torch.float32)
    out = {}
    with torch.inference_mode():
        for budget, image in images.items():
            inputs = merged.processor.image_processor(images=[image], return_tensors="pt", do_resize=False)
            feats = model.get_image_features(inputs["pixel_values"].to(torch.float32), inputs["image_grid_thw"])
            out[budget] = feats.pooler_output[0].float().numpy()
    del merged, model
    gc.collect()
    return out


def errors(embd: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    if embd.shape != ref.shape:
        return {"shape_mismatch": True}
    delta = embd - ref
    return {"max_abs_over_std": round(float(np.abs(delta).max() / ref.std()), 5),
            "relative_l2": round(float(np.linalg.norm(delta) / np.linalg.norm(ref)), 6)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="qwen2.5-vl-3b")
    p.add_argument("--budgets", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "mmproj_types.json")
    args = p.parse_args(argv)
    from adfm.manifest import read_manifest
    from adfm.runtime.vlm import GgufVlm

    export = cached_export(args.size, args.cache)
    hf = hf_dir(args.size, args.cache)
    if export is None or not (hf / "config.json").is_file():
        raise SystemExit(f"needs the {args.size} export and its HF checkpoint: "
                         f"python bench/realistic_models.py --size {args.size} --keep-checkpoint")
    manifest = read_manifest(export)
    model_path = export / manifest.file("model").path
    mmprojs = {"f16": export / manifest.file("mmproj").path,
               "q8_0": args.cache / f"{args.size}-mmproj" / "mmproj-q8_0.gguf"}
    mmprojs["q8_0"].parent.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    images = {}
    for budget in args.budgets:
        side = side_for(budget)
        images[budget] = part_images(side, 1, seed=budget + 7)[0]
    t0 = time.perf_counter()
    refs = reference_embeddings(hf, images, mmprojs["q8_0"])
    print(f"reference embeddings in {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    n_ctx = 4096
    timings: dict[str, dict[str, dict[str, list[float]]]] = {}
    errs: dict[str, dict[str, Any]] = {}
    embds: dict[tuple[str, int], np.ndarray] = {}
    for threads in sorted(set(args.threads)):
        vlms = {kind: GgufVlm.from_files(model_path, path, manifest, n_ctx=n_ctx, n_threads=threads)
                for kind, path in mmprojs.items()}
        try:
            for budget, image in images.items():
                for vlm in vlms.values():  # warm-up
                    vlm.image_embeddings(image)
                for rep in range(args.reps):
                    order = list(vlms.items()) if rep % 2 == 0 else list(reversed(vlms.items()))
                    for kind, vlm in order:
                        t = time.perf_counter()
                        embd = vlm.image_embeddings(image)
                        timings.setdefault(kind, {}).setdefault(f"{threads}", {}).setdefault(
                            str(budget), []).append(round(time.perf_counter() - t, 3))
                        embds[(kind, budget)] = embd
                print(f"{threads} threads, {budget} tokens: " + ", ".join(
                    f"{k} {statistics.median(timings[k][str(threads)][str(budget)]):.2f} s" for k in vlms),
                    file=sys.stderr, flush=True)
        finally:
            for vlm in vlms.values():
                vlm.close()
    for kind in mmprojs:
        errs[kind] = {str(b): errors(embds[(kind, b)], refs[b]) for b in args.budgets}
    errs["q8_0_vs_f16"] = {str(b): errors(embds[("q8_0", b)], embds[("f16", b)]) for b in args.budgets}
    ratio = {}
    for t in sorted(set(args.threads)):
        for b in args.budgets:
            q8, f16 = timings["q8_0"][str(t)][str(b)], timings["f16"][str(t)][str(b)]
            ratio[f"{t} threads, {b} tokens"] = {
                "median_q8_0_over_f16": round(statistics.median(q8) / statistics.median(f16), 3),
                "paired": [round(a / c, 3) for a, c in zip(q8, f16, strict=True)]}
    best = {str(b): min(((k, t) for k in mmprojs for t in sorted(set(args.threads))),
                        key=lambda kt: statistics.median(timings[kt[0]][str(kt[1])][str(b)]))
            for b in args.budgets}
    result = {
        "bench": "mmproj_types",
        "command": "python " + " ".join(["bench/mmproj_types.py", *(argv if argv is not None else sys.argv[1:])]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start_end": [load_start, os.getloadavg()]},
        "model": {"size": args.size, "weights": "random (released shapes)",
                  "mmproj_bytes": {k: v.stat().st_size for k, v in mmprojs.items()}},
        "measured": "GgufVlm.image_embeddings wall time (vision encoder + projector, one image); error against "
                    "the HF vision tower in float32 on the same grid image",
        "images": {str(b): f"{side_for(b)}x{side_for(b)} ({(side_for(b) // 28) ** 2} tokens)" for b in args.budgets},
        "seconds": timings,
        "q8_0_over_f16": ratio,
        "error_vs_hf_float32": errs,
        "fastest": {b: {"mmproj": k, "threads": t} for b, (k, t) in best.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({"q8_0_over_f16": ratio, "errors": errs}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
