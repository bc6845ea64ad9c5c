"""What the appliance costs on top of the model: per-part wall time through the station service
against the same model call made directly, on the same GGUF and the same pre-resized image, in one run.

    python bench/appliance_overhead.py [--model DIR] [--parts 12] [--max-tokens 32]

Direct: `GgufVlm.generate` (llama-cpp-python with llama.cpp's multimodal library — the call the
inference worker makes) in this process, nothing around it. Appliance: the real service — replay
camera, journal (SQLite + PNG, fsync), inference worker process, parse, publish — with a frame
always waiting, so the time between consecutive published results is the per-part wall time.
The appliance's own share is everything on a part's path except the model call: waiting for the
journal (which encodes and writes the image in a helper thread while the model runs), resize onto
the grid, the worker round trip (pipe, pickling), parse, journal completion, publish.

Without --model the tiny demo model is used (built once, like `adfm-appliance demo`); its model
call is short, so the appliance's fixed costs weigh far more than with a real model.
Writes bench/results/appliance_overhead.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from adfm.offline import force_offline

OWN_STAGES = ("journal_wait", "resize", "ipc", "parse", "complete", "publish")
RESULTS = Path(__file__).resolve().parent / "results" / "appliance_overhead.json"


def stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "mean": round(statistics.fmean(values), 3),
        "p50": round(float(np.percentile(values, 50)), 3),
        "p95": round(float(np.percentile(values, 95)), 3),
        "min": round(min(values), 3),
        "max": round(max(values), 3),
    }


def part_image(size: tuple[int, int]) -> np.ndarray:
    from adfm.synthetic import make_sample

    return make_sample("washer", "scratch", np.random.default_rng(7), size).image


class TriggeredCamera:
    """A triggered camera: the benchmark hands it a frame and the pipeline takes it at once."""

    def __init__(self) -> None:
        self.frames: queue.Queue = queue.Queue()

    def get(self, timeout: float):
        try:
            return self.frames.get(timeout=max(timeout, 0.001))
        except queue.Empty:
            return None

    def ack(self, frame) -> None:
        pass

    def status(self):
        from adfm.schema import CameraStatus

        return CameraStatus(camera="cam0", connected=True)

    @property
    def finished(self) -> bool:
        return False


def capture_cost(image: np.ndarray, work: Path, frames: int = 20) -> dict:
    """What the capture thread spends per frame of a replay camera (read, decode, shape): CPU time
    off the part's path, reported for the full account."""
    from adfm.camera import CameraConfig, open_source

    folder = work / "replay"
    folder.mkdir()
    Image.fromarray(image).save(folder / "part.png")
    source = open_source(CameraConfig(id="cam0", url=f"replay:{folder}", fps=1000.0, loop=True))
    source.open()
    times = []
    try:
        while len(times) < frames:
            t0 = time.perf_counter()
            frame = source.read()
            if frame is not None:
                times.append((time.perf_counter() - t0) * 1000)
    finally:
        source.close()
    return stats(times)


def run_paired(model_dir: Path, image: np.ndarray, resized: np.ndarray, n: int, warmup: int, max_tokens: int,
               n_ctx: int, prompt_version: str, work: Path) -> dict:
    """Alternate a direct model call (on `resized`, the image already on its grid) and one part
    through the appliance (which resizes `image` onto the same grid itself), so both see the same
    machine load."""
    from adfm.appliance.config import load_config
    from adfm.appliance.service import Service
    from adfm.camera.frame import Frame
    from adfm.runtime.vlm import GgufVlm

    config_path = work / "station.yaml"
    config_path.write_text(yaml.safe_dump({
        "station": "bench",
        "state_dir": "state",
        "model": {"dir": str(model_dir), "max_tokens": max_tokens, "n_ctx": n_ctx, "check_hashes": False},
        "cameras": [{"id": "cam0", "url": f"replay:{work}"}],  # replaced by the triggered camera
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"},
        "retention": {"min_free_mb": 0},
    }))
    camera = TriggeredCamera()
    service = Service(load_config(config_path), cameras={"cam0": camera})
    done = threading.Event()
    records: list[dict[str, float]] = []
    published_at: list[float] = []

    def on_result(result) -> None:
        published_at.append(time.perf_counter())
        records.append({**result.latency_ms, **service.pipeline.last_record_ms, "attempts": result.attempts})
        done.set()

    service.on_result = on_result
    runner = threading.Thread(target=service.run, kwargs={"max_seconds": 3600}, daemon=True)
    runner.start()
    while service.pipeline is None and runner.is_alive():
        time.sleep(0.05)
    vlm = GgufVlm(model_dir, n_ctx=n_ctx, check_hashes=False)
    direct, model, appliance, tokens = [], [], [], set()
    query = Image.fromarray(resized)
    try:
        for i in range(warmup + n):
            t0 = time.perf_counter()
            gen = vlm.generate([query], prompt_version=prompt_version, max_tokens=max_tokens)
            d = (time.perf_counter() - t0) * 1000
            done.clear()
            t0 = time.perf_counter()
            camera.frames.put(Frame(camera_id="cam0", image=image, frame_number=i, part_id=f"bench-{i}",
                                    captured_mono=time.monotonic(), captured_wall=time.time()))
            if not done.wait(600):
                raise RuntimeError("the appliance published no result within 600 s")
            a = (published_at[-1] - t0) * 1000
            if i >= warmup:
                direct.append(d)
                model.append(gen.seconds * 1000)
                appliance.append(a)
                tokens.add((gen.prompt_tokens, gen.completion_tokens))
    finally:
        vlm.close()
        service.request_stop("benchmark done")
        runner.join(60)
    steady = records[warmup:]
    if any(r["attempts"] != 1 for r in steady):
        raise RuntimeError("a worker failure during the benchmark would distort it")
    for r in steady:
        r["ipc"] = r["vlm"] - r["model"]
        r["own"] = sum(r[s] for s in OWN_STAGES)
    stages = {s: stats([r[s] for r in steady])
              for s in ("capture", "journal", *OWN_STAGES, "vlm", "model", "own", "total")}
    return {
        "direct_wall_ms": stats(direct),
        "direct_model_ms": stats(model),
        "direct_tokens_prompt_completion": sorted(tokens),
        "appliance_wall_ms": stats(appliance),
        "appliance_minus_direct_ms": stats([a - d for a, d in zip(appliance, direct, strict=True)]),
        "appliance_stages_ms": stages,
        "samples": {"direct_ms": [round(x, 2) for x in direct], "appliance_ms": [round(x, 2) for x in appliance]},
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="exported model directory (default: the tiny demo model)")
    p.add_argument("--cache", type=Path, help="tiny model cache (default: the demo's)")
    p.add_argument("--parts", type=int, default=12)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--size", type=int, nargs=2, default=(640, 480), metavar=("W", "H"), help="camera image size")
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--n-ctx", type=int, default=2048)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    force_offline()

    from adfm.appliance.demo import default_cache, ensure_model
    from adfm.manifest import load_model_dir

    model_dir = ensure_model((args.cache or default_cache()).expanduser(), args.model, print)
    manifest = load_model_dir(model_dir, check_hashes=False)
    image = part_image(tuple(args.size))
    from adfm.geometry import ModelGrid

    grid = ModelGrid.for_image(image.shape[1], image.shape[0], manifest.min_pixels, manifest.max_pixels)
    resized = np.asarray(grid.resize(image))
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="adfm-bench-") as tmp:
        print(f"capture cost of a replay camera ({args.size[0]}x{args.size[1]} PNG)…", file=sys.stderr)
        capture = capture_cost(image, Path(tmp))
        print(f"{args.warmup}+{args.parts} paired parts: direct call, then through the appliance…", file=sys.stderr)
        paired = run_paired(model_dir, image, resized, args.parts, args.warmup, args.max_tokens, args.n_ctx,
                            manifest.prompt_version, Path(tmp))
    stages = paired["appliance_stages_ms"]
    own_p50, model_p50 = stages["own"]["p50"], stages["model"]["p50"]
    report = {
        "bench": "appliance_overhead",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/appliance_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in os.getloadavg()]},
        "model": {"dir": str(model_dir), "model_id": manifest.model_id, "prompt_version": manifest.prompt_version,
                  "tiny_untrained": args.model is None},
        "image": {"original": [image.shape[1], image.shape[0]], "grid": [grid.width, grid.height]},
        "max_tokens": args.max_tokens,
        "parts": args.parts,
        "warmup": args.warmup,
        "replay_capture_ms_per_frame": capture,
        **paired,
        "summary": {
            "direct_wall_ms_p50": paired["direct_wall_ms"]["p50"],
            "appliance_wall_ms_p50": paired["appliance_wall_ms"]["p50"],
            "appliance_minus_direct_ms_p50": paired["appliance_minus_direct_ms"]["p50"],
            "appliance_own_ms_p50": own_p50,
            "appliance_model_ms_p50": model_p50,
            "own_share_of_model": round(own_p50 / model_p50, 4) if model_p50 else None,
            "own_stages": list(OWN_STAGES),
            "replay_capture_ms_per_frame_p50": capture.get("p50"),
        },
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["summary"], indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
