"""Does test-time flipping pay for the gate? The default gate on every proxy, with and without flips.

For each dataset of bench/gate_compare.py (texture proxy brick/grass/gravel, synthetic station; the
same splits), trains the default gate, calibrates at 95% recall on the known defective parts, and
scores the test folder three ways: the image as is (`plain`), the mean of the scores of the image
and its horizontal and vertical mirror images (`mean-of-3-flips`), and their maximum
(`max-of-3-flips`). Flipping costs one more graph run per flip: the ms column is the plain graph's
median on one thread times the runs. Writes bench/results/gate_flips.json.
Run: python bench/gate_flips.py [--quick]
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
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from adfm.offline import force_offline

force_offline()

RESULTS = Path(__file__).resolve().parent / "results" / "gate_flips.json"
COMBINE = {"plain": None, "mean-of-3-flips": np.mean, "max-of-3-flips": np.max}


def _scores(session, images: np.ndarray, flips: bool) -> np.ndarray:
    views = [images, images[..., ::-1], images[..., ::-1, :]] if flips else [images]
    out = []
    for v in views:
        v = np.ascontiguousarray(v, dtype=np.float32)
        out.append(np.concatenate([session.run(v[i : i + 8])[0] for i in range(0, len(v), 8)]))
    return np.stack(out).astype(np.float64)  # views × N


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)

    from gate_compare import _datasets, _read_split

    from adfm.runtime.gate import GateSession
    from adfm.trainer.evaluation.metrics import auroc, flag_rate, recall_at
    from adfm.trainer.gate import GateTrainConfig, train_gate
    from adfm.trainer.gate.calibrate import calibrate

    load_start = os.getloadavg()
    results: dict[str, dict] = {}
    graph_ms = None
    with tempfile.TemporaryDirectory(prefix="adfm-gate-flips-") as tmp:
        work = Path(tmp)
        for name, fit_root, test_root in _datasets(work, args.quick):
            split = _read_split(name, fit_root, test_root)
            out = work / name / "gate.onnx"
            train_gate(GateTrainConfig(data=fit_root, out=out, progress=False))
            session = GateSession(out, threads=1)
            if graph_ms is None:
                frame = split.test[:1].astype(np.float32)
                times = []
                for i in range(45):
                    t0 = time.perf_counter()
                    session.run(frame)
                    if i >= 5:
                        times.append(time.perf_counter() - t0)
                graph_ms = statistics.median(times) * 1e3
            held, bad, test = (_scores(session, x, flips=True) for x in (split.holdout, split.anomalous, split.test))
            y = split.test_labels
            row = {}
            for method, fn in COMBINE.items():
                pick = (lambda s: s[0]) if fn is None else (lambda s, fn=fn: fn(s, axis=0))
                _, t = calibrate(pick(held), pick(bad), 0.95)
                s = pick(test)
                row[method] = {"image_auroc": round(auroc(y, s), 4), "recall": recall_at(y, s, t),
                               "good_to_vlm": flag_rate(s[~y], t),
                               "graph_ms_1_thread": round(graph_ms * (1 if fn is None else 3), 1)}
            results[name] = row
            print(f"{name}: " + ", ".join(f"{k} {v['image_auroc']:.3f}" for k, v in row.items()), file=sys.stderr)
    report = {
        "bench": "gate_flips",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python bench/gate_flips.py", *(sys.argv[1:] if argv is None else argv)]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": [round(v, 2) for v in load_start],
                    "load_avg_end": [round(v, 2) for v in os.getloadavg()]},
        "results": results,
        "note": "ms on a shared 2-core machine (the plain graph's median, times the runs)",
    }
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
