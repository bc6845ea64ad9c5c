"""Peak memory of an export with and without releasing the merged HF model before verification.

The export verifies llama.cpp's GGUF files against the merged HF model. Its HF answers are computed
first; the HF weights are then released (adfm.export.pipeline._release_hf_model) before llama.cpp
maps the f16 and quantized files, so the peak is the larger of the two, not their sum. This bench
exports one random-weight model (hidden 1024, 8 layers: ~120 M language-model parameters) in child
processes, alternating the two variants, and reports each child's peak RSS (ru_maxrss). Writes
bench/results/export_memory.json.

    nice -n 10 python bench/export_memory.py [--repeats 2] [--work DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results" / "export_memory.json"
SHAPE = {"hidden_size": 1024, "num_layers": 8, "num_heads": 8, "num_kv_heads": 2, "intermediate_size": 4096}

CHILD = """
import json, resource, sys
from pathlib import Path
import adfm.export.pipeline as pipeline
from adfm.export import export_model
if sys.argv[3] == "keep":
    pipeline._release_hf_model = lambda merged: None  # the earlier behaviour: HF weights held throughout
start = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
export_model(Path(sys.argv[1]), Path(sys.argv[2]), quant="q4_k_m", progress=lambda line: None)
print(json.dumps({"peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, "before_export_kib": start}))
"""


def _loadavg() -> list[float]:
    return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--work", type=Path)
    args = parser.parse_args()
    load_start = _loadavg()
    from adfm.trainer.tiny_model import build_tiny_qwen25vl

    work = args.work or Path(tempfile.mkdtemp(prefix="adfm-export-memory-"))
    base = work / "model"
    if not (base / "config.json").is_file():
        build_tiny_qwen25vl(base, **SHAPE)
    weights = sum(f.stat().st_size for f in base.glob("*.safetensors"))
    runs: dict[str, list[dict]] = {"release": [], "keep": []}
    for i in range(args.repeats):
        for variant in (("release", "keep") if i % 2 == 0 else ("keep", "release")):
            t0 = time.perf_counter()
            out = subprocess.run([sys.executable, "-c", CHILD, str(base), str(work / f"out-{variant}-{i}"), variant],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            row["seconds"] = round(time.perf_counter() - t0, 1)
            runs[variant].append(row)
            print(variant, row, flush=True)
    peaks = {v: [r["peak_rss_kib"] / 1024 for r in rows] for v, rows in runs.items()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({
        "bench": "export_memory",
        "command": "nice -n 10 python bench/export_memory.py " + " ".join(sys.argv[1:]),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "load_average_start": load_start,
        "load_average_end": _loadavg(),
        "model": {"shape": SHAPE, "random_weights": True, "safetensors_mib": round(weights / 2**20, 1)},
        "export": "q4_k_m + mmproj f16, --dtype float32, verification on",
        "peak_rss_mib": {v: [round(p, 1) for p in ps] for v, ps in peaks.items()},
        "release_over_keep_ratio": [round(r / k, 3) for r, k in zip(peaks["release"], peaks["keep"], strict=True)],
        "runs": runs,
    }, indent=2))
    print(f"wrote {RESULTS}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
