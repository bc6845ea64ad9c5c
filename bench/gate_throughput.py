"""Frames per second of the ONNX screening gate on this CPU, the previous graph and the faster ones
side by side in one run, with their accuracy on every proxy.

Variants (each a real `train_gate` artefact; they differ only in bank size and search space):
- `exact-4096`: bank 4,096, the nearest bank row searched in all 152 feature channels — the
  previous default graph, the reference;
- `pca64-4096`, `exact-2048`, `pca64-2048` (the default now): a smaller bank (the greedy coreset's
  first 2,048 picks) and/or the nearest row searched in the bank's 64 leading principal directions (the
  distance to the row found is exact in all channels). A 32-direction search lost 0.021 AUROC on the
  synthetic station in a smoke run (`--quick`) and is not measured here.
All are float32 graphs: ONNX Runtime's static int8 quantization of the backbone, calibrated on the fit
images, made the features useless here (see README, "Screening gate"), so no int8 variant is timed.

Accuracy: every variant is trained and calibrated (95% recall on the known defective parts) on the
same fitting splits as bench/gate_compare.py (texture proxy brick/grass/gravel, synthetic station) and
scored on larger test folders than gate_compare's (textures 120 good / 90 defective tiles, station 96 / 32
parts; `--quick` keeps the small ones), so that one test pair moves AUROC by at most 0.0002 (textures)
and 0.0003 (station): image AUROC, recall, share of good parts sent to the VLM, and the AUROC difference
to the reference with its 95% paired bootstrap interval (2,000 resamples of the test images).
Speed: on the synthetic station's gates, with time.perf_counter, round-robin (every round times every
variant, so they share the machine's load), median over rounds with min/max:
- `graph`: ONNX Runtime on one preprocessed 256×256 frame;
- `score_256`: `Gate.score` on a 256×256 RGB frame (preprocess + graph + heat map);
- `score_1280x960`: `Gate.score` on a camera-sized frame (adds the area resize and the map resized back);
each on 2 threads and on 1. The 1-minute load average is recorded before and after every round.
`*_cpu_ms`: this process's CPU time per call (all its threads), median over rounds: on a loaded
machine wall time measures the other work too; on one thread 1000 / cpu_ms is what an idle core gives.
Writes bench/results/gate_throughput.json. Run: python bench/gate_throughput.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from adfm.offline import force_offline

force_offline()

RESULTS = Path(__file__).resolve().parent / "results" / "gate_throughput.json"
REFERENCE = "exact-4096"
VARIANTS: dict[str, dict] = {
    "exact-4096": {"bank_size": 4096, "search_dim": 0},
    "pca64-4096": {"bank_size": 4096, "search_dim": 64},
    "exact-2048": {"bank_size": 2048, "search_dim": 0},
    "pca64-2048": {"bank_size": 2048, "search_dim": 64},
}


def _time(fn: Callable[[], object], frames: int, warmup: int = 3) -> list[float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _accuracy(split, onnx: Path) -> dict:
    from adfm.runtime.gate import GateSession
    from adfm.trainer.evaluation.metrics import auroc, flag_rate, recall_at
    from adfm.trainer.gate.calibrate import calibrate

    session = GateSession(onnx, threads=2)

    def scores(images: np.ndarray) -> np.ndarray:
        return np.concatenate([session.run(images[i : i + 8].astype(np.float32))[0]
                               for i in range(0, len(images), 8)]).astype(np.float64)

    _, threshold = calibrate(scores(split.holdout), scores(split.anomalous), 0.95)
    s, y = scores(split.test), split.test_labels
    return {"image_auroc": auroc(y, s), "recall": recall_at(y, s, threshold),
            "good_to_vlm": flag_rate(s[~y], threshold), "n_test_normal": int((~y).sum()),
            "n_test_anomalous": int(y.sum()), "_scores": s}


def _delta_interval(y: np.ndarray, s: np.ndarray, ref: np.ndarray, n: int = 2000) -> list[float]:
    """95% paired bootstrap interval of AUROC(s) − AUROC(ref): the same resampled test images (normal and
    defective resampled apart) score both graphs, so the interval is about the graphs, not the draw."""
    from adfm.trainer.evaluation.metrics import auroc

    rng = np.random.default_rng(0)
    pos, neg = np.flatnonzero(y), np.flatnonzero(~y)
    deltas = []
    for _ in range(n):
        idx = np.concatenate([rng.choice(pos, len(pos)), rng.choice(neg, len(neg))])
        deltas.append(auroc(y[idx], s[idx]) - auroc(y[idx], ref[idx]))
    lo, hi = np.percentile(deltas, [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def _speed(models: dict[str, Path], rounds: int, frames: int) -> tuple[dict, list]:
    from adfm.runtime.gate import Gate, preprocess

    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (256, 256, 3), dtype=np.uint8)
    camera = rng.integers(0, 256, (960, 1280, 3), dtype=np.uint8)
    batch = preprocess(frame, 256, 256)[None]
    gates = {(k, t): Gate.load(p, threads=t) for k, p in models.items() for t in (2, 1)}
    raw: dict[tuple[str, int, str], list[float]] = {}
    loads = []
    for _ in range(rounds):
        before = os.getloadavg()[0]
        for (k, t), g in gates.items():
            for what, fn, n in (("graph", lambda g=g: g.session.run(batch), frames),
                                ("score_256", lambda g=g: g.score(frame), frames),
                                ("score_1280x960", lambda g=g: g.score(camera), max(1, frames // 2))):
                c0 = time.process_time()
                times = _time(fn, n)
                cpu_ms = (time.process_time() - c0) / (n + 3) * 1e3  # warm-up calls included
                raw.setdefault((k, t, what), []).append(n / sum(times))
                raw.setdefault((k, t, what + "_cpu_ms"), []).append(cpu_ms)
                raw.setdefault((k, t, what + "_median_ms"), []).append(statistics.median(times) * 1e3)
        loads.append([round(before, 2), round(os.getloadavg()[0], 2)])
    out: dict[str, dict] = {}
    for (k, t, what), v in raw.items():
        cell = out.setdefault(k, {}).setdefault(f"{t}_threads" if t > 1 else "1_thread", {})
        if what.endswith(("_median_ms", "_cpu_ms")):
            cell[what] = round(statistics.median(v), 2)
        else:
            cell[what] = {"frames_per_s_median": round(statistics.median(v), 1),
                          "frames_per_s_min": round(min(v), 1), "frames_per_s_max": round(max(v), 1)}
    return out, loads


def markdown_tables(report: dict) -> str:
    """The README's two tables of a results file: accuracy per proxy, then frames/s per variant."""
    names = list(report["variants"])
    lines = ["| data | " + " | ".join(f"{n} AUROC (Δ) · good to VLM" for n in names) + " |",
             "| --- |" + " --- |" * len(names)]
    for data, row in report["accuracy"].items():
        cells = [f"{r['image_auroc']:.3f} ({r['auroc_minus_reference']:+.3f}) · {100 * r['good_to_vlm']:.0f}%"
                 for r in (row[n] for n in names)]
        lines.append(f"| {data} | " + " | ".join(cells) + " |")
    lines += ["", "| variant | threads | graph fps | `Gate.score` 256² fps | `Gate.score` 1280×960 fps "
              "| CPU ms per call: graph · 256² · 1280×960 |", "| --- | --- | --- | --- | --- | --- |"]
    for n in names:
        for t, cell in report["speed_synthetic_station_256"][n].items():
            f = {k: cell[k] for k in ("graph", "score_256", "score_1280x960")}
            lines.append(f"| {n} | {t.split('_')[0]} | " + " | ".join(
                f"{v['frames_per_s_median']:.0f} ({v['frames_per_s_min']:.0f}–{v['frames_per_s_max']:.0f})"
                for v in f.values()) + " | " + " · ".join(
                f"{cell.get(k + '_cpu_ms', float('nan')):.1f}" for k in f) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller proxy splits (a smoke run)")
    ap.add_argument("--rounds", type=int, default=5, help="timing rounds (default 5)")
    ap.add_argument("--frames", type=int, default=40, help="timed calls per measurement per round (default 40)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--table", type=Path, metavar="RESULTS_JSON", help="print the README tables of a results file")
    args = ap.parse_args(argv)
    if args.table:
        print(markdown_tables(json.loads(args.table.read_text())))
        return 0
    if args.frames < 1 or args.rounds < 1:
        ap.error("--frames and --rounds must be ≥ 1")

    import onnxruntime
    import torch
    from gate_compare import _datasets, _read_split

    from adfm.trainer.gate import GateTrainConfig, train_gate

    torch.set_num_threads(2)
    load_start = os.getloadavg()
    accuracy: dict[str, dict] = {}
    fit_s: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="adfm-gate-bench-") as tmp:
        work = Path(tmp)
        timing_models: dict[str, Path] = {}
        for name, fit_root, test_root in _datasets(work, args.quick, large_test=True):
            split = _read_split(name, fit_root, test_root)
            row = {}
            for variant, settings in VARIANTS.items():
                out = work / name / variant / "gate.onnx"
                t0 = time.perf_counter()
                train_gate(GateTrainConfig(data=fit_root, out=out, progress=False, **settings))
                fit_s.setdefault(name, {})[variant] = round(time.perf_counter() - t0, 1)
                row[variant] = _accuracy(split, out)
                if name == "synthetic-station":
                    timing_models[variant] = out
            ref = row[REFERENCE]["image_auroc"]
            ref_scores = row[REFERENCE]["_scores"]
            for r in row.values():
                r["auroc_minus_reference"] = round(r["image_auroc"] - ref, 4)
                r["auroc_minus_reference_95"] = _delta_interval(split.test_labels, r["_scores"], ref_scores)
            for r in row.values():
                del r["_scores"]
            accuracy[name] = row
            print(f"{name}: " + ", ".join(f"{k} {v['image_auroc']:.3f}" for k, v in row.items()),
                  file=sys.stderr, flush=True)
        load_timing_start = os.getloadavg()
        speed, round_loads = _speed(timing_models, args.rounds, args.frames)
    result = {
        "bench": "gate_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/gate_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_start": [round(v, 2) for v in load_start],
            "load_avg_timing_start": [round(v, 2) for v in load_timing_start],
            "load_avg_1min_per_timing_round": round_loads,
            "load_avg_end": [round(v, 2) for v in os.getloadavg()],
            "onnxruntime": onnxruntime.__version__,
        },
        "reference": REFERENCE,
        "variants": VARIANTS,
        "accuracy": accuracy,
        "train_gate_seconds": fit_s,
        "speed_synthetic_station_256": speed,
        "timing": {"rounds": args.rounds, "frames_per_measurement": args.frames,
                   "camera_frames_per_measurement": max(1, args.frames // 2)},
        "note": "wall time on a shared 2-core machine: compare variants only within this run, with its load",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
