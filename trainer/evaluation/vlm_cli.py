"""`adfm-eval --model … --split …`: the VLM evaluation's command line.

    adfm-eval --model HF_DIR [--adapter LORA_DIR] --split test.jsonl --out runs/eval-hf
    adfm-eval --model EXPORTED_GGUF_DIR --split test.jsonl --out runs/eval-gguf

The model kind is told by its directory: `manifest.json` → GGUF (llama.cpp), `config.json` → HF
checkpoint, `adapter_config.json` → LoRA adapter whose run record names its base. Prompt version
and pixel budget come from the model (adapter run record, GGUF manifest) unless given.

Exit status: 0 every item answered; 1 results written but some items could not be asked or answered
(they are listed); 2 bad arguments or an input that cannot be used (the message names it); 130
interrupted (answers so far are kept; rerun the same command to continue).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .backends import BackendError
from .mmad import SUBTASKS
from .report import pct
from .responses import ResponsesError
from .vlm_eval import EvalConfig, EvalError, evaluate


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The VLM evaluation's options (also used when `adfm-eval` dispatches to it)."""
    p.add_argument("--model", type=Path, required=True,
                   help="HF checkpoint dir, LoRA adapter dir (its run record names the base), or exported GGUF dir")
    p.add_argument("--adapter", type=Path, help="LoRA adapter on top of the HF checkpoint given as --model")
    p.add_argument("--split", type=Path, required=True, help="split manifest (JSONL) written by adfm-data split")
    p.add_argument("--out", type=Path, required=True,
                   help="output folder: responses.jsonl, results.json, results.md, plots (reused to resume)")
    p.add_argument("--backend", choices=("auto", "transformers", "gguf"), default="auto",
                   help="default: told by the model directory")
    p.add_argument("--prompt-version", help="override the model's recorded prompt version")
    p.add_argument("--min-pixels", type=int, help="grid pixel budget, low (default: the model's)")
    p.add_argument("--max-pixels", type=int, help="grid pixel budget, high (default: the model's)")
    p.add_argument("--reference", choices=("auto", "on", "off"), default="auto",
                   help="single normal reference protocol: auto = when the sample has one and the model was "
                   "trained with references (default), "
                   "on = require it, off = query image only")
    p.add_argument("--no-inspect", dest="inspect", action="store_false",
                   help="skip the inspection prompt (binary + localization)")
    p.add_argument("--no-mmad", dest="mmad", action="store_false", help="skip MMAD's multiple-choice questions")
    p.add_argument("--mmad-subtasks", type=lambda s: [t.strip() for t in s.split(",") if t.strip()],
                   metavar="NAME,NAME", help="only these MMAD subtasks: " + ", ".join(SUBTASKS))
    p.add_argument("--limit", type=int, help="only the first N samples of the split")
    p.add_argument("--batch-size", type=int, default=8, help="queries per generate call (transformers)")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest answer (default: the model's recorded max completion length, else 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument("--dtype", default="auto", help="transformers dtype: auto, bfloat16, float16, float32")
    p.add_argument("--attn-implementation", default="sdpa")
    p.add_argument("--device-map", help="transformers device map, e.g. auto or cuda:0")
    p.add_argument("--n-ctx", type=int,
                   help="llama.cpp context (default: two images + prompt + answer fit; a smaller one is refused)")
    p.add_argument("--n-threads", type=int, help="llama.cpp threads")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="llama.cpp layers on the GPU")
    p.add_argument("--fresh", action="store_true",
                   help="set the folder's earlier answers aside (renamed, not deleted) and start over")
    p.add_argument("--no-plots", dest="plots", action="store_false")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("-v", "--verbose", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-eval", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="other protocols:\n  adfm-eval scores …   score-based models (per-image scores); see -h there\n"
        "  adfm-eval gate …     the screening gate's report; see -h there",
    )
    add_arguments(parser)
    return parser


def config_from_args(args: argparse.Namespace) -> EvalConfig:
    return EvalConfig(
        model=args.model, adapter=args.adapter, split=args.split, out=args.out, backend=args.backend,
        prompt_version=args.prompt_version, min_pixels=args.min_pixels, max_pixels=args.max_pixels,
        reference=args.reference, inspect=args.inspect, mmad=args.mmad, subtasks=args.mmad_subtasks,
        limit=args.limit, batch_size=args.batch_size, max_new_tokens=args.max_new_tokens,
        temperature=args.temperature, top_p=args.top_p, seed=args.seed, dtype=args.dtype,
        attn_implementation=args.attn_implementation, device_map=args.device_map, n_ctx=args.n_ctx,
        n_threads=args.n_threads, n_gpu_layers=args.n_gpu_layers, fresh=args.fresh, plots=args.plots,
        progress=not args.quiet,
    )


def _config_errors(exc: ValidationError) -> str:
    lines = ["adfm-eval: invalid options:"]
    for err in exc.errors():
        where = "--" + "-".join(str(p) for p in err["loc"]).replace("_", "-") if err["loc"] else "(options)"
        lines.append(f"  {where}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def summary_lines(results: dict[str, Any]) -> list[str]:
    lines = [f"{results['model']['model_id']} on {results['split']}"]
    ins = results.get("inspection")
    if ins:
        avg, all_ = ins["average_over_datasets"], ins["overall"]
        lines.append(
            f"  inspection: accuracy {pct(avg['accuracy'])} (average over {len(ins['datasets'])} datasets), "
            f"balanced {pct(avg['balanced_accuracy'])}, F1 {pct(all_['f1'])}, "
            f"parse failures {pct(all_['parse_failure_rate'])}"
        )
    mm = results.get("mmad")
    if mm:
        lines.append(f"  MMAD: average {pct(mm['average_over_sources'].get('Average'))} over "
                     f"{len(mm['by_source'])} sources, {len(mm['subtasks'])} subtasks")
    answers = results["answers"]
    lines.append(f"  answered {answers['answered']}/{answers['items']} items; outputs in "
                 f"{Path(results['outputs']['json']).parent}")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
    except ValidationError as exc:
        print(_config_errors(exc), file=sys.stderr)
        return 2
    try:
        results = evaluate(cfg)
    except (EvalError, BackendError, ResponsesError, ValueError) as exc:
        print(f"adfm-eval: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"adfm-eval: interrupted; the answers so far are in {cfg.out}; run the same command to continue",
              file=sys.stderr)
        return 130
    for line in summary_lines(results):
        print(line)
    for p in results["problems"][:10]:
        print(f"  problem: {p}", file=sys.stderr)
    return 1 if results["answers"]["unanswered"] or results["problems"] else 0


if __name__ == "__main__":
    sys.exit(main())
