"""Frames per second of the ONNX screening gate on this CPU, at the default input size (256×256).

Trains a gate with default settings on a synthetic station (or takes `--model gate.onnx`), then
times, with time.perf_counter over `--frames` calls after a warm-up:
- `graph`: ONNX Runtime on one preprocessed frame (the graph alone);
- `score_256`: `Gate.score` on 256×256 RGB frames (preprocess + graph + heat map), what the
  line pays per part at the input size;
- `score_1280x960`: the same on camera-sized frames (adds the area resize and the heat map
  resized back to 1280×960);
each with ONNX Runtime's default threads and with 1 thread (the line shares cores with llama.cpp).
Writes bench/results/gate_throughput.json. Run: python bench/gate_throughput.py
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


def _time(fn: Callable[[], object], frames: int, warmup: int = 5) -> dict:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(frames):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "frames": frames,
        "frames_per_s": frames / sum(times),
        "median_ms": statistics.median(times) * 1e3,
        "p95_ms": times[int(0.95 * (frames - 1))] * 1e3,
    }


def _train_default_gate(workdir: Path) -> tuple[Path, float]:
    from adfm.synthetic import make_synthetic_dataset
    from adfm.trainer.gate import GateTrainConfig, train_gate

    station = make_synthetic_dataset(workdir / "station", layout="folder", seed=1)
    t0 = time.perf_counter()
    result = train_gate(GateTrainConfig(data=station, out=workdir / "gate.onnx", progress=False))
    return result.onnx_path, time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, help="a trained gate (default: train one on a synthetic station)")
    ap.add_argument("--frames", type=int, default=200, help="timed calls per measurement (default 200)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "gate_throughput.json")
    args = ap.parse_args(argv)
    if args.frames < 1:
        ap.error("--frames must be ≥ 1")

    import onnxruntime

    from adfm.runtime.gate import Gate, preprocess

    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adfm-gate-bench-") as tmp:
        train_s = None
        model = args.model
        if model is None:
            model, train_s = _train_default_gate(Path(tmp))
        rng = np.random.default_rng(0)
        measurements: dict[str, dict] = {}
        for threads in (None, 1):
            gate = Gate.load(model, threads=threads)
            w, h = gate.metadata.input_size
            frame = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            camera = rng.integers(0, 256, (960, 1280, 3), dtype=np.uint8)
            batch = preprocess(frame, w, h)[None]
            key = "default_threads" if threads is None else "1_thread"
            measurements[key] = {
                "graph": _time(lambda b=batch, g=gate: g.session.run(b), args.frames),
                f"score_{w}" if w == h else f"score_{w}x{h}": _time(lambda f=frame, g=gate: g.score(f), args.frames),
                "score_1280x960": _time(lambda c=camera, g=gate: g.score(c), max(1, args.frames // 2)),
            }
        meta = gate.metadata
    result = {
        "bench": "gate_throughput",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/gate_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "load_avg_start": [round(v, 2) for v in load_start],
            "load_avg_end": [round(v, 2) for v in os.getloadavg()],
            "onnxruntime": onnxruntime.__version__,
        },
        "gate": {
            "model": str(args.model) if args.model else "default settings, trained on a synthetic station",
            "input_size": [meta.input_width, meta.input_height],
            "method": meta.method,
            "bank_size": meta.model.get("bank_size"),
            "width": meta.model.get("width"),
            "train_seconds": None if train_s is None else round(train_s, 2),
        },
        "measurements": measurements,
        "note": "wall time on a shared machine: compare runs only with their load averages",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
