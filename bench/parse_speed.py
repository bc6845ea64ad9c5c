"""Parse time of `adfm.protocol.parse_response` on realistic ~4 kB answers (and a hostile 1 MB one).

Measures wall time per call with time.perf_counter over many repetitions (median and p99 of
per-call times) on this machine's CPU, and writes JSON. Run: python bench/parse_speed.py
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

from adfm.geometry import ModelGrid
from adfm.protocol import parse_response


def _answer_4kb() -> str:
    regions = ", ".join(
        f'{{"bbox_2d": [{10 + i * 7}, {20 + i * 5}, {60 + i * 7}, {90 + i * 5}], "label": "scratch {i}"}}'
        for i in range(12)
    )
    think = ("The part is scanned row by row; the rim shows a bright linear mark and two dark spots. " * 20)
    rethink = ("Each candidate is compared with the surrounding texture and the reference image. " * 20)
    text = f"<think>{think}[{regions}]</think><rethink>{rethink}[{regions}]</rethink><answer>yes</answer>"
    return text


def _time(text: str, grid: ModelGrid, n: int) -> dict:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        parse_response(text, grid)
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "chars": len(text),
        "calls": n,
        "median_ms": statistics.median(times) * 1e3,
        "p99_ms": times[int(0.99 * (n - 1))] * 1e3,
        "max_ms": times[-1] * 1e3,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=5000)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "parse_speed.json")
    args = ap.parse_args(argv)
    grid = ModelGrid.for_image(1024, 768, max_pixels=448 * 448)
    text = _answer_4kb()
    parse_response(text, grid)  # warm up regex caches
    result = {
        "benchmark": "parse_response wall time per call",
        "machine": {"cpu": platform.processor() or platform.machine(), "python": platform.python_version()},
        "realistic_4kb": _time(text, grid, args.calls),
        "hostile_1mb_brackets": _time("<think>" + "[" * 1_000_000 + "</think><answer>no</answer>", grid, 20),
        "target": "4 kB answer well under 1 ms",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
