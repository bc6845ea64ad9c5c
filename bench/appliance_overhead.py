"""What the appliance costs on top of the model: per-part time through the station service against
the same model call made directly, on the same GGUF and the same images, interleaved in one run.

    python bench/appliance_overhead.py [--model DIR] [--parts 30] [--side 448] [--max-tokens 32]
                                       [--threads N] [--n-ctx 4096] [--reference] [--camera png]

Direct side: `GgufVlm.generate` (llama-cpp-python + llama.cpp's multimodal library), called in this
process exactly as the inference worker calls it (same images already on the model grid, same
prompt, product and reference, greedy, same max_tokens, n_threads and n_ctx, prefix reuse on),
nothing around it.

Appliance side: the real station service (`Service`, as `adfm-appliance run` starts it) with its
real journal (SQLite + image files, fsync), inference worker process and ZeroMQ bus. A part's time
runs from the trigger (its frame handed to the pipeline's camera) to the moment a subscriber here
receives its result on the bus: journal → resize → model → parse → journal → publish.

Identical model work on both sides: random weights stop at random, so both models are loaded with
`min_tokens = max_tokens` (every answer exactly `--max-tokens` tokens); the bench checks that each
part's answer text is the same on both sides. The direct side never runs while the appliance works
on a part (each side waits for the other to finish), so they never share the cores.

Order: warm-up parts on both sides (not counted), then blocks of `--block` parts per side, the order
of the two sides swapped every block (direct, appliance, appliance, direct, …), each image used
once per side, so a drift in machine load hits both sides alike.

Reported (bench/results/appliance_overhead.json, or --out): per-part ms of each side (median, p10,
p90), the ratio of medians appliance/direct with a bootstrap 95 % interval (parts resampled as
pairs: the same image on both sides, measured next to each other), the overhead in ms and as a
percentage of the appliance's per-part time, the appliance's own stage times, command, date,
machine and the load average at start and end.

`--camera`: what the camera delivers. `png`/`jpg`: encoded files, as a folder camera receives them
(the frame carries the decoded pixels and, where the appliance takes them, the file's bytes);
`raw`: pixels only, as a GenICam camera delivers them (the journal encodes the image itself).

Without --model the tiny export is used (built once and cached, `python -m adfm.export.tiny`):
its model call is short, so the appliance's fixed costs weigh far more than with a real model.
Memory: the model is loaded twice (here and in the inference worker).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import queue
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import yaml
from realistic_models import tiny_export

from adfm.offline import force_offline

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results" / "appliance_overhead.json"
STATION = "bench"
PRODUCT = "washer"


# ---- inputs ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CameraImage:
    """One part as the camera delivers it: RGB pixels and, for a file camera, the file's bytes."""

    pixels: np.ndarray
    encoded: bytes | None


def camera_images(n: int, side: int, camera: str, seed: int = 0) -> list[CameraImage]:
    """`n` distinct synthetic parts (good and defective) with sensor noise, as the camera would deliver them."""
    import cv2

    from adfm.camera.images import decode_image
    from adfm.synthetic import make_sample

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        rgb = make_sample(PRODUCT, (None, "spot", "scratch")[i % 3], rng, size=(side, side)).image
        # a camera's sensor noise (σ 2 levels): rendered parts are smoother than any photograph, which
        # flatters PNG encoding
        rgb = np.clip(rgb + rng.normal(0.0, 2.0, rgb.shape), 0, 255).astype(np.uint8)
        if camera == "raw":
            out.append(CameraImage(np.ascontiguousarray(rgb), None))
            continue
        params = [cv2.IMWRITE_JPEG_QUALITY, 90] if camera == "jpg" else []
        ok, buf = cv2.imencode("." + camera, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), params)
        if not ok:
            raise RuntimeError(f"could not encode a test image as {camera}")
        data = buf.tobytes()
        # the pixels the folder camera hands over: its own decode of the file
        pixels = cv2.cvtColor(decode_image(data, f"part-{i}.{camera}"), cv2.COLOR_BGR2RGB)
        out.append(CameraImage(pixels, data))
    return out


class TriggeredCamera:
    """A triggered camera: the bench hands it a part's frame and the pipeline takes it at once."""

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


def process_cpu_s(pid: int | None) -> float:
    """CPU seconds another process has used, all its threads (exited ones too): Linux's per-process
    CPU clock, whose id the kernel derives from the pid (MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED))."""
    if pid is None:
        return 0.0
    try:
        return time.clock_gettime(((~pid) << 3) | 2)
    except OSError:
        return 0.0


# ---- statistics -----------------------------------------------------------------------------------

def spread(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    return {"n": int(a.size), "median": round(float(np.median(a)), 3), "p10": round(float(np.percentile(a, 10)), 3),
            "p90": round(float(np.percentile(a, 90)), 3), "mean": round(float(a.mean()), 3),
            "min": round(float(a.min()), 3), "max": round(float(a.max()), 3)}


def paired_bootstrap(direct: list[float], appliance: list[float], rounds: int = 5000, seed: int = 0) -> dict:
    """Ratio of medians appliance/direct and the overhead, with 95 % intervals from resampling
    the parts as (direct, appliance) pairs."""
    d, a = np.asarray(direct, dtype=float), np.asarray(appliance, dtype=float)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(rounds, len(d)))
    med_d, med_a = np.median(d[idx], axis=1), np.median(a[idx], axis=1)
    ratios = med_a / med_d
    over_ms = med_a - med_d
    over_pct = 100.0 * (1.0 - med_d / med_a)
    diffs = np.median((a - d)[idx], axis=1)

    def ci(x: np.ndarray) -> list[float]:
        return [round(float(np.quantile(x, 0.025)), 4), round(float(np.quantile(x, 0.975)), 4)]

    md, ma = float(np.median(d)), float(np.median(a))
    return {
        "ratio_of_medians": round(ma / md, 4), "ratio_ci95": ci(ratios),
        "overhead_ms": round(ma - md, 3), "overhead_ms_ci95": ci(over_ms),
        "overhead_pct_of_part": round(100.0 * (1.0 - md / ma), 3), "overhead_pct_ci95": ci(over_pct),
        "paired_difference_ms_median": round(float(np.median(a - d)), 3), "paired_difference_ms_ci95": ci(diffs),
        "bootstrap_rounds": rounds,
    }


# ---- the two sides --------------------------------------------------------------------------------

class Appliance:
    """The station service in a thread of this process, fed by a triggered camera, read by a subscriber."""

    def __init__(self, work: Path, model_dir: Path, args: argparse.Namespace, reference: Path | None,
                 first: CameraImage) -> None:
        from adfm.appliance.config.station import load_config
        from adfm.appliance.inspection.worker import BackendSpec
        from adfm.appliance.service import Service

        incoming = work / "incoming"
        incoming.mkdir()
        from PIL import Image

        Image.fromarray(first.pixels).save(incoming / "part-0.png")  # the camera's folder; never read here
        kind = "replay" if args.camera == "raw" else "folder"
        product: dict = {"name": PRODUCT}
        if reference is not None:
            product["reference"] = str(reference)
        journal = args.journal_dir or work / "state"
        config_path = work / "station.yaml"
        config_path.write_text(yaml.safe_dump({
            "station": STATION,
            "state_dir": str(journal),
            "model": {"dir": str(model_dir), "max_tokens": args.max_tokens, "n_ctx": args.n_ctx,
                      "n_threads": args.threads, "check_hashes": False},
            "products": [product],
            "cameras": [{"id": "cam0", "url": f"{kind}:{incoming}", "product": PRODUCT}],
            "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*"},
            "retention": {"min_free_mb": 0},
        }))
        config = load_config(config_path)
        # the service's own backend, with the answer length fixed as on the direct side
        backend = BackendSpec(config.model.backend, {**config.model.backend_kwargs(config.model.dir, args.n_ctx),
                                                     "min_tokens": args.max_tokens})
        self.camera = TriggeredCamera()
        self.done = threading.Event()
        self.service = Service(config, cameras={"cam0": self.camera}, backend=backend, on_result=self._on_result)
        self.journal_dir = journal
        self._runner = threading.Thread(target=self.service.run, kwargs={"max_seconds": 7 * 86400},
                                        name="bench-service", daemon=True)
        self._sub = None

    def _on_result(self, result) -> None:
        self.done.set()

    def start(self, timeout_s: float = 900.0) -> None:
        import zmq

        self._runner.start()
        deadline = time.monotonic() + timeout_s
        while self.service.pipeline is None or self.service.bus is None:
            if not self._runner.is_alive():
                raise RuntimeError("the station service stopped while starting (see its log above)")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the station service did not start within {timeout_s:g} s")
            time.sleep(0.05)
        self._ctx = zmq.Context()
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, b"")
        self._sub.connect(self.service.bus.bound["publish"][0])
        # the first status message proves the subscription is live (no slow-joiner loss)
        self._next("status", timeout_s=30.0)

    def _next(self, kind: str, timeout_s: float) -> tuple[float, dict]:
        assert self._sub is not None
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not self._sub.poll(int(left * 1000)):
                raise RuntimeError(f"no {kind} message on the bus within {timeout_s:g} s")
            topic, _seq, body = self._sub.recv_multipart()
            at = time.perf_counter()
            if topic.decode().startswith(kind + "."):
                return at, json.loads(body)

    def cpu_s(self) -> float:
        """CPU seconds used so far by this process (the service's threads, the direct model) and the
        inference worker: a part's CPU cost on either side is the difference across it."""
        worker = self.service.worker
        return time.process_time() + process_cpu_s(worker.pid if worker is not None else None)

    def part(self, index: int, image: CameraImage, timeout_s: float, raw: bool = False) -> tuple[float, dict, dict]:
        """One part from trigger to the subscriber: (ms, the result, the pipeline's record ms).
        `raw`: the frame comes without the camera's file (the journal encodes the pixels)."""
        from adfm.camera.frame import Frame

        self.done.clear()
        part_id = f"part-{index}" + ("-raw" if raw else "")  # a folder camera's same file is one part
        frame = Frame(camera_id="cam0", image=image.pixels, frame_number=index, part_id=part_id,
                      captured_mono=time.monotonic(), captured_wall=time.time(), source_name=part_id,
                      encoded=None if raw else image.encoded)
        t0 = time.perf_counter()
        self.camera.frames.put(frame)
        while True:
            at, result = self._next("result", timeout_s)
            if result["part_id"] == part_id:
                break
        ms = (at - t0) * 1000.0
        if not self.done.wait(60.0):  # the pipeline has finished with the part before the next side runs
            raise RuntimeError(f"part {index}: published but the pipeline did not finish it")
        record = dict(self.service.pipeline.last_record_ms) if self.service.pipeline else {}
        return ms, result, record

    def stop(self) -> None:
        if self._sub is not None:
            self._sub.close(0)
            self._ctx.term()
        self.service.request_stop("benchmark done")
        self._runner.join(120)


# ---- run ------------------------------------------------------------------------------------------

def schedule(parts: int, block: int, sides: tuple[str, ...] = ("direct", "appliance")) -> list[tuple[str, list[int]]]:
    """Blocks of part indices per side; the sides' order rotates every block (two sides: ABBA…)."""
    out: list[tuple[str, list[int]]] = []
    for b, start in enumerate(range(0, parts, block)):
        idx = list(range(start, min(start + block, parts)))
        turn = b % len(sides)
        out += [(side, idx) for side in sides[turn:] + sides[:turn]]
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", type=Path, help="exported model directory (default: the tiny export)")
    p.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "adfm" / "bench",
                   help="where the tiny export is cached (default %(default)s)")
    p.add_argument("--parts", type=int, default=30, help="parts per side after warm-up (default %(default)s)")
    p.add_argument("--warmup", type=int, default=3, help="parts per side before measuring (default %(default)s)")
    p.add_argument("--block", type=int, default=5, help="parts per side in a row (default %(default)s)")
    p.add_argument("--side", type=int, default=448,
                   help="square camera images of this side, resized onto the model grid (default %(default)s)")
    p.add_argument("--max-tokens", type=int, default=32, help="answer length, fixed on both sides")
    p.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: llama-cpp-python's)")
    p.add_argument("--n-ctx", type=int, default=4096)
    p.add_argument("--reference", action="store_true", help="send a normal reference image before each part")
    p.add_argument("--camera", choices=("png", "jpg", "raw"), default="png",
                   help="what the camera delivers: png/jpg files (a folder camera) or raw pixels (default %(default)s)")
    p.add_argument("--compare-raw", action="store_true",
                   help="a third side: each part also through the appliance without the camera's file (the journal "
                        "encodes the pixels), side by side with it")
    p.add_argument("--journal-dir", type=Path, help="where the station's journal goes (default: a temporary folder)")
    p.add_argument("--part-timeout", type=float, default=1800.0, help="longest one appliance part may take (s)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.parts < 2 or args.block < 1 or args.warmup < 0 or args.max_tokens < 8:
        p.error("need --parts >= 2, --block >= 1, --warmup >= 0, --max-tokens >= 8 (the station's minimum)")
    force_offline()

    from PIL import Image

    from adfm.appliance.inspection.core import ModelInfo, load_reference
    from adfm.manifest import load_model_dir
    from adfm.runtime.vlm import GgufVlm

    model_dir = args.model or tiny_export(args.cache)
    manifest = load_model_dir(model_dir, check_hashes=False)
    info = ModelInfo(manifest.model_id, manifest.prompt_version, manifest.min_pixels, manifest.max_pixels)
    images = camera_images(args.warmup + args.parts, args.side, args.camera)
    grid = info.grid(args.side, args.side)
    on_grid = [Image.fromarray(np.asarray(grid.resize(im.pixels))) for im in images]

    load_start = os.getloadavg()
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="adfm-overhead-") as tmp:
        work = Path(tmp)
        reference_path = ref_image = None
        if args.reference:
            from adfm.synthetic import make_sample

            reference_path = work / "reference.png"
            Image.fromarray(make_sample(PRODUCT, None, np.random.default_rng(999), size=(args.side, args.side)).image
                            ).save(reference_path)
            ref_image = Image.fromarray(load_reference(reference_path, info))  # as the service loads it

        print(f"starting the station service and loading {model_dir} twice…", file=sys.stderr)
        appliance = Appliance(work, model_dir, args, reference_path, images[0])
        appliance.start()
        vlm = GgufVlm(model_dir, n_ctx=args.n_ctx, n_threads=args.threads, check_hashes=False,
                      min_tokens=args.max_tokens)
        threads = vlm._llama.n_threads

        def direct(i: int):
            prompt = [ref_image, on_grid[i]] if ref_image is not None else [on_grid[i]]
            t0 = time.perf_counter()
            gen = vlm.generate(prompt, prompt_version=manifest.prompt_version, product=PRODUCT,
                               max_tokens=args.max_tokens, temperature=0.0, seed=0)
            return (time.perf_counter() - t0) * 1000.0, gen

        rows: dict[int, dict] = {}
        texts: dict[tuple[int, str], str] = {}
        sides = ("direct", "appliance", "appliance_raw") if args.compare_raw else ("direct", "appliance")
        try:
            for w in range(args.warmup):
                print(f"warm-up {w + 1}/{args.warmup}", file=sys.stderr)
                direct(w)
                appliance.part(w, images[w], args.part_timeout)
            for n_block, (side, idx) in enumerate(schedule(args.parts, args.block, sides)):
                print(f"block {n_block + 1}: {side} parts {idx[0]}–{idx[-1]}", file=sys.stderr)
                for k in idx:
                    i = args.warmup + k
                    row = rows.setdefault(k, {"part": k, "block": n_block // len(sides), "order": []})
                    row["order"].append(side)
                    cpu0 = appliance.cpu_s()
                    if side == "direct":
                        ms, gen = direct(i)
                        row.update(direct_ms=round(ms, 3), direct_model_ms=round(gen.seconds * 1000.0, 3),
                                   prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                                   prefix_reused=gen.prefix_reused)
                        texts[(k, side)] = gen.text
                    else:
                        raw = side == "appliance_raw"
                        ms, result, record = appliance.part(i, images[i], args.part_timeout, raw=raw)
                        if result["attempts"] != 1:
                            raise RuntimeError(f"part {i}: the inference worker failed; the figures would be distorted")
                        row[f"{side}_ms"] = round(ms, 3)
                        row[f"{side}_stages"] = {**result["latency_ms"], **record}
                        stored = (appliance.journal_dir / result["image_path"]).read_bytes()
                        row[f"{side}_image"] = {"suffix": Path(result["image_path"]).suffix, "bytes": len(stored),
                                                "camera_file_kept": stored == images[i].encoded}
                        texts[(k, side)] = result["raw_response"]
                    row[f"{side}_cpu_ms"] = round((appliance.cpu_s() - cpu0) * 1000.0, 3)
        finally:
            vlm.close()
            appliance.stop()
    load_end = os.getloadavg()

    parts = [rows[k] for k in sorted(rows)]
    same = sum(all(texts[(r["part"], side)] == texts[(r["part"], "direct")] for side in sides) for r in parts)
    lengths = sorted({r["completion_tokens"] for r in parts})
    wall = {side: [r[f"{side}_ms"] for r in parts] for side in sides}
    cpu = {side: [r[f"{side}_cpu_ms"] for r in parts] for side in sides}
    comparison = paired_bootstrap(wall["direct"], wall["appliance"])
    cpu_comparison = paired_bootstrap(cpu["direct"], cpu["appliance"])
    direct_model = [r["direct_model_ms"] for r in parts]
    stages, model_calls = {}, {"direct": spread(direct_model)}
    for side in sides[1:]:
        records = [r[f"{side}_stages"] for r in parts]
        names = sorted({n for rec in records for n in rec})
        stages[side] = {n: spread([rec[n] for rec in records if n in rec]) for n in names}
        stages[side]["ipc"] = spread([rec["vlm"] - rec["model"] for rec in records])
        in_worker = [rec["model"] for rec in records]
        model_calls[f"in_{side}_worker"] = spread(in_worker)
        ratio = float(np.median(in_worker) / np.median(direct_model))
        model_calls[f"{side}_vs_direct_ratio_of_medians"] = round(ratio, 4)
    raw_side = {}
    if args.compare_raw:
        raw_side = {
            "appliance_raw_ms": spread(wall["appliance_raw"]),
            "appliance_raw_vs_direct": paired_bootstrap(wall["direct"], wall["appliance_raw"]),
            "appliance_vs_appliance_raw": paired_bootstrap(wall["appliance_raw"], wall["appliance"]),
            "cpu_appliance_raw_ms": spread(cpu["appliance_raw"]),
            "cpu_appliance_raw_vs_direct": paired_bootstrap(cpu["direct"], cpu["appliance_raw"]),
            "cpu_appliance_vs_appliance_raw": paired_bootstrap(cpu["appliance_raw"], cpu["appliance"]),
        }
    report = {
        "bench": "appliance_overhead",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python", "bench/appliance_overhead.py", *(argv if argv is not None else sys.argv[1:])]),
        "code": _git_revision(),
        "machine": {"platform": platform.platform(), "cpu": cpu_model(), "cpus": os.cpu_count(),
                    "load_avg_start": [round(x, 2) for x in load_start],
                    "load_avg_end": [round(x, 2) for x in load_end]},
        "wall_s": round(time.perf_counter() - t_start, 1),
        "model": {"dir": str(model_dir), "model_id": manifest.model_id, "prompt_version": manifest.prompt_version,
                  "tiny": args.model is None},
        "settings": {"parts_per_side": args.parts, "warmup_per_side": args.warmup, "block": args.block,
                     "camera": args.camera, "camera_image": [args.side, args.side],
                     "grid": [grid.width, grid.height], "reference": args.reference,
                     "max_tokens": args.max_tokens, "n_threads": threads, "n_ctx": args.n_ctx,
                     "journal_dir": str(args.journal_dir) if args.journal_dir else "temporary",
                     "sides": list(sides)},
        "identical_work": {"answers_identical_on_every_side": f"{same}/{len(parts)}", "completion_tokens": lengths,
                           "prompt_tokens": sorted({r["prompt_tokens"] for r in parts}),
                           "prefix_reused_positions": sorted({r["prefix_reused"] for r in parts})},
        "direct_ms": spread(wall["direct"]),
        "appliance_ms": spread(wall["appliance"]),
        "appliance_vs_direct": comparison,
        "cpu": {"note": "CPU ms per part of this process (service threads, direct model) plus the inference "
                        "worker, measured across each part on either side; less sensitive than wall time to "
                        "other load on a shared machine",
                "direct_ms": spread(cpu["direct"]), "appliance_ms": spread(cpu["appliance"]),
                "appliance_vs_direct": cpu_comparison},
        **raw_side,
        "model_call_ms": model_calls,
        "appliance_stages_ms": stages,
        "parts": parts,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({"direct_ms": report["direct_ms"], "appliance_ms": report["appliance_ms"],
                      "appliance_vs_direct": comparison, "cpu_appliance_vs_direct": cpu_comparison,
                      **{k: v for k, v in raw_side.items() if "_vs_" in k},
                      "identical_work": report["identical_work"],
                      "load_avg": [report["machine"]["load_avg_start"], report["machine"]["load_avg_end"]]}, indent=2))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0 if same == len(parts) and lengths == [args.max_tokens] else 1


def _git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("+changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


if __name__ == "__main__":
    sys.exit(main())
