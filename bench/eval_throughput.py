"""`adfm-eval` throughput on the tiny model: transformers (batch 1 and batched) and the GGUF export.

Builds (or reuses, with --work) the tiny random Qwen2.5-VL, its q4_k_m export and a synthetic
split (MVTec layout + MMAD with questions), then evaluates the same items with each backend and
records items/s, tokens/s and how often the two backends' answers agree. Writes
bench/results/eval_throughput.json.

The tiny model has random weights: answers are noise, so agreement between HF and the 4-bit export
is a floor, and the timings measure the evaluation loop (prompting, image handling, decoding,
storing) at toy model size, not a real model's speed.

    python bench/eval_throughput.py [--work DIR] [--samples N] [--tokens N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from adfm.offline import force_offline

force_offline()

RESULTS = Path(__file__).resolve().parent / "results" / "eval_throughput.json"


def _split(work: Path, n_samples: int) -> Path:
    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.data.records import write_manifest
    from adfm.trainer.data.splits import DatasetSource, SplitConfig, make_split

    mvtec, mmad = work / "mvtec", work / "mmad"
    if not mvtec.exists():
        make_synthetic_dataset(mvtec, layout="mvtec", seed=0)
    if not mmad.exists():
        make_synthetic_dataset(mmad, layout="mmad", seed=0)
    result = make_split([DatasetSource(mvtec), DatasetSource(mmad, "mmad")], SplitConfig(), workers=1)
    return write_manifest(result.test[:n_samples], work / "split.jsonl")


def _run(model: Path, split: Path, out: Path, tokens: int, **kw) -> dict:
    from adfm.trainer.evaluation.vlm_eval import EvalConfig, evaluate

    cfg = EvalConfig(model=model, split=split, out=out, max_new_tokens=tokens, fresh=True, progress=False,
                     plots=False, **kw)
    start = time.perf_counter()
    results = evaluate(cfg)
    inv = results["this_invocation"]
    return {
        "items": results["answers"]["items"],
        "wall_seconds_including_load": round(time.perf_counter() - start, 2),
        "items_per_second": inv["items_per_second"],
        "completion_tokens_per_second": inv["completion_tokens_per_second"],
        "mean_completion_tokens": results["answers"]["mean_completion_tokens"],
        "out": str(out),
    }


def _agreement(a: Path, b: Path, prompt_version: str) -> dict:
    from adfm.protocol import parse_response
    from adfm.trainer.evaluation.responses import read_responses

    ra = {r.key: r for r in read_responses(a / "responses.jsonl")[0]}
    rb = {r.key: r for r in read_responses(b / "responses.jsonl")[0]}
    keys = sorted(ra.keys() & rb.keys())
    same_text = sum(ra[k].response == rb[k].response for k in keys)
    inspect = [k for k in keys if k[1] == "inspect"]
    same_decision = sum(
        parse_response(ra[k].response, version=prompt_version).decision
        == parse_response(rb[k].response, version=prompt_version).decision
        for k in inspect
    )
    same_prompt = sum(ra[k].prompt_tokens == rb[k].prompt_tokens for k in keys)
    return {"items": len(keys), "identical_answers": same_text / len(keys) if keys else None,
            "same_decision": same_decision / len(inspect) if inspect else None,
            "same_prompt_length": same_prompt / len(keys) if keys else None}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--samples", type=int, default=8, help="split samples evaluated (default 8)")
    parser.add_argument("--tokens", type=int, default=32, help="max new tokens per answer (default 32)")
    args = parser.parse_args()

    from adfm.export.tiny import build_tiny_gguf
    from adfm.trainer.tiny_model import build_tiny_qwen25vl

    work = args.work or Path(tempfile.mkdtemp(prefix="adfm-eval-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    hf = work / "hf"
    if not (hf / "config.json").is_file():
        build_tiny_qwen25vl(hf)
    gguf = build_tiny_gguf(work / "gguf", quant="q4_k_m", base_dir=hf, with_adapter=False)
    split = _split(work, args.samples)
    runs = {
        "transformers_batch1": _run(hf, split, work / "out-hf1", args.tokens, batch_size=1, dtype="float32"),
        "transformers_batch4": _run(hf, split, work / "out-hf4", args.tokens, batch_size=4, dtype="float32"),
        "gguf_q4_k_m": _run(gguf, split, work / "out-gguf", args.tokens),
    }
    results = {
        "bench": "eval_throughput",
        "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "model": "tiny random Qwen2.5-VL (hidden 256, 2 layers); GGUF q4_k_m of the same weights (no adapter)",
        "samples": args.samples,
        "max_new_tokens": args.tokens,
        "runs": runs,
        "hf_batch1_vs_batch4": _agreement(work / "out-hf1", work / "out-hf4", "multi-stage-v1"),
        "hf_vs_gguf": _agreement(work / "out-hf1", work / "out-gguf", "multi-stage-v1"),
        "note": "random weights: answers are noise; CPU shared with other jobs, timings are indicative",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
