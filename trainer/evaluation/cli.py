"""`adfm-eval`: the paper's evaluation protocols.

    adfm-eval --model MODEL --split test.jsonl --out DIR …   a VLM (HF checkpoint [+ LoRA] or GGUF dir)
    adfm-eval scores SCORES.csv [--split test.jsonl] --out DIR  a score-based model (per-image scores)
    adfm-eval gate …                                           the screening gate's report

`adfm-eval -h` lists the VLM evaluation's options; `adfm-eval scores -h` and `adfm-eval gate -h`
those of the subcommands.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

SUBCOMMANDS = ("scores", "gate")


def _gate(argv: list[str]) -> int:
    try:
        from .gate_report import main as gate_main
    except ImportError as exc:
        print(f"adfm-eval gate: the screening-gate report is not available: {exc}", file=sys.stderr)
        return 2
    return int(gate_main(argv) or 0)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "gate":
        return _gate(argv[1:])
    if argv and argv[0] == "scores":
        from .scores import main as scores_main

        return scores_main(argv[1:])
    from .vlm_cli import main as vlm_main

    return vlm_main(argv)


if __name__ == "__main__":
    sys.exit(main())
