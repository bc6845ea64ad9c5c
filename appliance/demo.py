"""`adfm-appliance demo`: the whole station on one machine, with nothing to download.

It builds (once; cached) a tiny Qwen2.5-VL warm-started on synthetic parts (`adfm-train warmstart`:
a few minutes of supervised training on washers with large drawn defects, boxes from their masks)
and exports it to GGUF through the real `adfm-export` path, fits the screening gate on synthetic
normal washers (`adfm-train gate`), writes a synthetic station — a folder camera over held-out
synthetic washers, normal and defective — runs the real service loop for a bounded number of parts
with a bus subscriber listening, and summarises what happened. The parts go through it twice: once
with the gate off, so every part reaches the model and its own accuracy (greedy, temperature 0, the
GGUF export through llama.cpp as the station runs it) is what the headline says, and once as the
station runs with the gate on. A contact sheet (PNG) shows each part with the model's boxes (red)
and the true defect's box (green).

The model is a toy trained on synthetic parts: it shows the machinery and the answer format, not
inspection quality on real parts. Building it needs the trainer and export extras (torch); it
runs in child processes (the build side's own commands), so the appliance never imports torch.
`--model DIR` uses an existing exported model directory instead.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from adfm.offline import offline_env
from adfm.synthetic import TASK_DEFECT_SCALES, TASK_DEFECTS, make_sample, make_synthetic_dataset

DEMO_NOTE = (
    "The demo model is a tiny Qwen2.5-VL (2 layers, hidden width 256) trained for a few minutes on synthetic "
    "washers (adfm-train warmstart: a perception stage on the vision tower, then short answers with boxes). "
    "The model's accuracy above is its own, greedy, on every part with the gate off; the station's adds the "
    "screening gate, which passes the parts it finds normal before the model sees them. A toy trained on "
    "synthetic parts, not a model for real inspection; pass --model DIR with a model exported by adfm-export "
    "for your own."
)
#: The demo answers greedily, as a station does.
DEMO_TEMPERATURE = 0.0
#: Bump when what the demo builds changes in a way the builder's sources do not show.
DEMO_MODEL_VERSION = 2
#: The build side's modules whose sources decide the demo model (hashed into the cache key).
BUILDER_MODULES = ("adfm.trainer.warmstart", "adfm.trainer.tiny_model", "adfm.export.tiny", "adfm.synthetic")
MODEL_POINTER = "warm-model-dir.txt"
PRODUCT = "washer"
#: The quantization of the demo's export: q8_0 keeps a 256-wide model's answers close to HF's.
DEMO_QUANT = "q8_0"


class DemoError(RuntimeError):
    """The demo cannot run; the message says what to install or pass."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adfm" / "demo"


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def _missing_build_side() -> list[str]:
    return [m for m in ("torch", "transformers", "gguf", "llama_cpp") if importlib.util.find_spec(m) is None]


def _build(command: list[str], what: str, progress: Callable[[str], None] | None = None) -> str:
    """Run a build-side command in a child process (the appliance never imports torch); its stdout.

    The child's progress lines (its log on stderr) are passed on as they come."""
    import tempfile

    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.PIPE, text=True,
                                env=offline_env(TOKENIZERS_PARALLELISM="false"))
        err: list[str] = []
        assert proc.stderr is not None
        for line in proc.stderr:
            err.append(line.rstrip())
            if progress is not None and " INFO adfm." in line:
                progress("  " + line.split(": ", 1)[-1].rstrip())
        rc = proc.wait()
        out.seek(0)
        stdout = out.read()
    if rc != 0:
        tail = "\n".join((err or stdout.splitlines())[-15:])
        raise DemoError(f"building {what} failed:\n{tail}")
    return stdout


def builder_key() -> str:
    """The demo model's cache key: the demo's model version and the builder modules' sources.

    Found by file, not imported, so the appliance never loads the build side; a module that is not
    installed counts as absent (a cached model is then kept while it loads)."""
    import hashlib

    digest = hashlib.sha256(f"adfm-demo-model-v{DEMO_MODEL_VERSION}".encode())
    for name in BUILDER_MODULES:
        try:
            spec = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            spec = None
        origin = Path(spec.origin) if spec is not None and spec.origin else None
        digest.update(name.encode() + (origin.read_bytes() if origin is not None and origin.is_file() else b"-"))
    return digest.hexdigest()[:16]


def ensure_model(cache: Path, model: Path | None, progress: Callable[[str], None] | None = None) -> Path:
    """An exported model directory: `model` checked, or the cached warm-started tiny one (built when missing)."""
    from adfm.manifest import ManifestError, load_model_dir

    if model is not None:
        try:
            load_model_dir(model, check_hashes=False)
        except ManifestError as exc:
            raise DemoError(f"--model {model}: {exc}") from exc
        return model
    pointer = cache / MODEL_POINTER
    key = builder_key()
    if pointer.is_file():
        lines = pointer.read_text().split()
        cached = Path(lines[0]) if lines else cache / "missing"
        if lines[1:2] != [key]:
            _say(progress, f"the cached demo model in {cached} was built by another version of the builder; "
                           "rebuilding it")
        else:
            try:
                load_model_dir(cached, check_hashes=True)
                _say(progress, f"using the cached demo model in {cached}")
                return cached
            except ManifestError:
                _say(progress, f"the cached demo model in {cached} is incomplete; rebuilding it")
    if missing := _missing_build_side():
        raise DemoError(
            f"building the tiny demo model needs the trainer and export extras ({', '.join(missing)} missing): "
            "pip install 'adfm[trainer,export]' — or pass --model DIR with a directory written by adfm-export"
        )
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "warm-gguf"
    for stale in (out, cache / "warm-start"):
        if stale.exists():
            shutil.rmtree(stale)
    _say(progress, f"training the tiny demo model on synthetic parts and exporting it in {cache} "
                   "(once; about six minutes on a 2-core CPU)…")
    stdout = _build([sys.executable, "-m", "adfm.export.tiny", "--out", str(out), "--warm-start",
                     str(cache / "warm-start"), "--quant", DEMO_QUANT], "the tiny demo model", progress)
    model_dir = Path(stdout.strip().splitlines()[-1])
    pointer.write_text(f"{model_dir}\n{key}\n")
    return model_dir


def ensure_gate(cache: Path, progress: Callable[[str], None] | None = None) -> Path | None:
    """The screening gate fitted on synthetic normal washers (cached); None when torch is missing."""
    gate = cache / "gate" / "gate.onnx"
    if gate.is_file() and gate.with_suffix(".json").is_file():
        return gate
    if importlib.util.find_spec("torch") is None:
        _say(progress, "no gate: fitting it needs the trainer extra (torch); every part goes to the model")
        return None
    data = cache / "gate-parts"
    if not (data / "normal").is_dir():
        make_synthetic_dataset(data, layout="folder", categories=(PRODUCT,), n_train=16, n_test_good=4,
                               n_test_defect=4, defects=TASK_DEFECTS, size=(256, 256), seed=0,
                               defect_scale=TASK_DEFECT_SCALES[-1])
    _say(progress, f"fitting the screening gate on synthetic normal washers in {gate.parent}…")
    gate.parent.mkdir(parents=True, exist_ok=True)
    _build([sys.executable, "-m", "adfm.trainer.cli", "gate", "--data", str(data), "--out", str(gate), "-q"],
           "the screening gate")
    return gate


def _mask_box(mask: np.ndarray) -> list[float] | None:
    ys, xs = np.nonzero(mask)
    return None if len(xs) == 0 else [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def write_parts(folder: Path, parts: int, seed: int = 1) -> dict[str, dict[str, Any]]:
    """Held-out synthetic washers, normal and defective alternating, named `part-NNN-<label>.png`.

    Returns the ground truth by part id (the file's stem, which the folder camera uses as part id):
    label, defect kind and the defect's box from its mask, in image pixels.
    """
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    truth: dict[str, dict[str, Any]] = {}
    for i in range(parts):
        defect = TASK_DEFECTS[(i // 2) % len(TASK_DEFECTS)] if i % 2 else None
        s = make_sample(PRODUCT, defect, rng, (256, 256), TASK_DEFECT_SCALES[-1])
        part_id = f"part-{i:03d}-{'anomalous' if defect else 'normal'}"
        Image.fromarray(s.image).save(folder / f"{part_id}.png")
        truth[part_id] = {"label": "anomalous" if defect else "normal", "defect": defect, "box": _mask_box(s.mask)}
    return truth


def write_station(run_dir: Path, model_dir: Path, parts: int, gate: Path | None) -> tuple[Path, dict[str, Any]]:
    """A synthetic station: a folder camera over held-out synthetic washers, the gate in front (when
    there is one), loopback bus endpoints, greedy answers. Returns the config path and the parts' ground truth."""
    truth = write_parts(run_dir / "camera", parts)
    (run_dir / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    config = {
        "station": "demo",
        "state_dir": "state",
        "model": {"dir": str(model_dir.resolve()), "max_tokens": 160, "n_ctx": 2048, "deadline_s": 120,
                  "temperature": DEMO_TEMPERATURE},
        "products": [{"name": PRODUCT}],
        "cameras": [{"id": "cam0", "url": "folder:camera", "product": PRODUCT, "folder": {"settle_s": 0.05}}],
        "gate": {"mode": "screen", "path": str(gate.resolve())} if gate is not None else {"mode": "off"},
        "retention": {"days": 7, "max_image_mb": 200},
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 1},
        "health": {"prometheus_file": "state/metrics/adfm.prom"},
    }
    path = run_dir / "station.yaml"
    path.write_text("# written by adfm-appliance demo\n" + yaml.safe_dump(config, sort_keys=False))
    return path, truth


_BOX_RE = re.compile(r'"bbox_2d"\s*:\s*\[\s*([^\]]*)\]')


def malformed_boxes(text: str) -> list[dict[str, Any]]:
    """Boxes written with their corners out of order or not four numbers (`[67, 75, 96, 52]`: y2 < y1).

    The parser reads such a box with its corners put in order; the demo shows that it did."""
    found = []
    for m in _BOX_RE.finditer(text):
        try:
            coords = [float(v) for v in m.group(1).split(",")]
        except ValueError:
            found.append({"written": f"[{m.group(1)}]", "why": "not four numbers"})
            continue
        if len(coords) != 4:
            found.append({"written": f"[{m.group(1)}]", "why": f"{len(coords)} numbers, not four"})
            continue
        x1, y1, x2, y2 = coords
        why = [w for w, bad in (("x2 < x1", x2 < x1), ("y2 < y1", y2 < y1), ("x2 = x1", x2 == x1),
                                ("y2 = y1", y2 == y1)) if bad]
        if why:
            found.append({"written": f"[{m.group(1)}]", "why": ", ".join(why)})
    return found


def _decided_by_model(r: Any) -> bool:
    return r.decision is not None


def score_model(results: list[Any], truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The model's own answers (the gate off) against the ground truth: its yes/no on every part, the
    format, the best IoU of its boxes to the true defect's box, and the malformed boxes it wrote."""
    from adfm.geometry import iou

    scored = [r for r in results if r.part_id in truth]
    per_part = []
    for r in scored:
        t = truth[r.part_id]
        boxes = [[b.x1, b.y1, b.x2, b.y2] for b in r.boxes]
        best = float(iou(boxes, [t["box"]]).max()) if boxes and t["box"] else None
        per_part.append({"part_id": r.part_id, "truth": t["label"], "decision": r.decision,
                         "right": r.decision is not None and r.decision == (t["label"] == "anomalous"),
                         "format_ok": r.format_ok, "boxes": [[round(v, 1) for v in b] for b in boxes],
                         "truth_box": t["box"], "best_iou": None if best is None else round(best, 3),
                         "malformed": malformed_boxes(r.raw_response or f"{r.think} {r.rethink}")})
    defective = [p for p in per_part if p["truth"] == "anomalous"]
    n = len(per_part)
    return {
        "parts": n,
        "answered": sum(p["decision"] is not None for p in per_part),
        "accuracy": sum(p["right"] for p in per_part) / n if n else None,
        "format_rate": sum(p["format_ok"] for p in per_part) / n if n else None,
        "defective": len(defective),
        "iou50_defective": (sum((p["best_iou"] or 0) >= 0.5 for p in defective) / len(defective)
                            if defective else None),
        "malformed_boxes": sum(len(p["malformed"]) for p in per_part),
        "per_part": per_part,
    }


def score_against_truth(results: list[Any], truth: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Verdicts against the synthetic ground truth: `fail` is right on a defective part, `pass` on a
    normal one, `review` is counted apart (a person decides). Also the model's own yes/no, where it answered."""
    from adfm.geometry import iou

    scored = [r for r in results if r.part_id in truth]
    right = sum((r.verdict == "fail") == (truth[r.part_id]["label"] == "anomalous")
                for r in scored if r.verdict != "review")
    asked = [r for r in scored if _decided_by_model(r)]
    model_right = sum(r.decision == (truth[r.part_id]["label"] == "anomalous") for r in asked)
    example = None
    with_boxes = [r for r in scored if r.boxes]
    pick = next((r for r in with_boxes if truth[r.part_id]["label"] == "anomalous"), None) or (
        with_boxes[0] if with_boxes else next((r for r in scored if r.think), None))
    if pick is not None:
        gt = truth[pick.part_id]["box"]
        boxes = [[b.x1, b.y1, b.x2, b.y2] for b in pick.boxes]
        example = {
            "part_id": pick.part_id, "truth": truth[pick.part_id]["label"], "verdict": pick.verdict,
            "think": pick.think, "rethink": pick.rethink, "answer": pick.answer,
            "boxes": [{"xyxy": [round(v, 1) for v in b], "label": lab.label} for b, lab in zip(boxes, pick.boxes,
                                                                                                  strict=True)],
            "malformed": malformed_boxes(pick.raw_response or f"{pick.think} {pick.rethink}"),
            "truth_box": gt,
            "best_iou": round(float(iou(boxes, [gt]).max()), 3) if boxes and gt else None,
        }
    return {
        "parts_scored": len(scored),
        "accuracy": right / len(scored) if scored else None,
        "reviewed": sum(r.verdict == "review" for r in scored),
        "by_gate": sum(r.decision is None and r.verdict == "pass" for r in scored),
        "model_answers": len(asked),
        "model_accuracy": model_right / len(asked) if asked else None,
        "with_boxes": len(with_boxes),
        "example": example,
    }


def contact_sheet(images: Path, model: dict[str, Any], out: Path, columns: int = 4) -> Path:
    """A PNG of every part: the model's boxes in red, the true defect's box in green, its answer below."""
    from PIL import Image, ImageDraw

    tiles = []
    for p in model["per_part"]:
        img = Image.open(images / f"{p['part_id']}.png").convert("RGB")
        d = ImageDraw.Draw(img)
        if p["truth_box"]:
            d.rectangle(p["truth_box"], outline=(40, 220, 60), width=2)
        for b in p["boxes"]:
            d.rectangle(b, outline=(235, 40, 40), width=2)
        tile = Image.new("RGB", (img.width, img.height + 34), (255, 255, 255))
        tile.paste(img, (0, 0))
        said = {True: "yes", False: "no", None: "unread"}[p["decision"]]
        mark = "right" if p["right"] else "WRONG"
        td = ImageDraw.Draw(tile)
        td.text((4, img.height + 2), f"{p['part_id']}", fill=(0, 0, 0))
        iou_text = f", IoU {p['best_iou']:.2f}" if p["best_iou"] is not None else ""
        td.text((4, img.height + 17), f"model: {said} ({mark}){iou_text}"
                + (" MALFORMED BOX" if p["malformed"] else ""), fill=(0, 0, 0) if p["right"] else (200, 0, 0))
        tiles.append(tile)
    if not tiles:
        raise DemoError("no parts to draw on the contact sheet")
    w, h = tiles[0].size
    rows = -(-len(tiles) // columns)
    sheet = Image.new("RGB", (columns * (w + 6) + 6, rows * (h + 6) + 6), (200, 200, 200))
    for i, tile in enumerate(tiles):
        sheet.paste(tile, (6 + (i % columns) * (w + 6), 6 + (i // columns) * (h + 6)))
    sheet.save(out)
    return out


class _Subscriber(threading.Thread):
    """Follows the demo station's bus like an integrator would, counting what arrives."""

    def __init__(self, service) -> None:
        super().__init__(name="demo-subscriber", daemon=True)
        self.service = service
        self.seqs: list[int] = []
        self.error = ""
        self.stop = threading.Event()

    def run(self) -> None:
        from .bus.client import StationClient, StationError

        while not self.stop.is_set() and not (self.service.bus is not None and self.service.bus.bound):
            time.sleep(0.05)
        if self.stop.is_set():
            return
        bound = self.service.bus.bound
        try:
            with StationClient(bound["publish"][0], bound["control"][0], station="demo", from_seq=1) as c:
                while not self.stop.is_set():
                    self.seqs += [r.seq for r in c.receive(0.2)]
        except StationError as exc:
            self.error = str(exc)

    def wait_for(self, last_seq: int, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while (not self.seqs or self.seqs[-1] < last_seq) and time.monotonic() < deadline and self.is_alive():
            time.sleep(0.05)


def _run_station(run_dir: Path, model_dir: Path, parts: int, gate: Path | None,
                 progress: Callable[[str], None] | None, what: str) -> tuple[Any, Any, Any, dict, _Subscriber, float]:
    from .config.station import load_config
    from .service import Service, ServiceError

    config_path, truth = write_station(run_dir, model_dir, parts, gate)
    shutil.copytree(run_dir / "camera", run_dir / "parts")  # the folder camera takes its files away
    config = load_config(config_path)
    service = Service(config)
    subscriber = _Subscriber(service)
    subscriber.start()
    _say(progress, f"running station 'demo' from {config_path} for {parts} parts ({what})…")
    t0 = time.monotonic()
    try:
        summary = service.run(max_parts=parts, before_close=lambda: subscriber.wait_for(service.journal.last_seq()))
    except ServiceError as exc:
        raise DemoError(str(exc)) from exc
    finally:
        subscriber.stop.set()
        subscriber.join(5)
    return config_path, config, summary, truth, subscriber, time.monotonic() - t0


def run_demo(parts: int = 8, model: Path | None = None, cache: Path | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build what is missing; run the parts through the model alone (gate off) and through the station
    (gate on); return the summary."""
    if parts < 1:
        raise DemoError(f"--parts must be at least 1, got {parts}")
    cache = (cache or default_cache()).expanduser()
    model_dir = ensure_model(cache, model, progress)
    gate = ensure_gate(cache, progress)
    stamp = datetime.now().strftime('%Y%m%d-%H%M%S-%f')
    alone_dir = cache / f"model-{stamp}"
    _, _, alone, truth, _, _ = _run_station(alone_dir, model_dir, parts, None, progress,
                                            "the model alone: gate off")
    model_score = score_model(alone.results, truth)
    sheet = contact_sheet(alone_dir / "parts", model_score, alone_dir / "contact_sheet.png")
    run_dir = cache / f"station-{stamp}"
    config_path, config, summary, truth, subscriber, elapsed = _run_station(
        run_dir, model_dir, parts, gate, progress, "the station: gate on" if gate is not None else "the station")
    out = summary.to_json()
    out.update({
        "seconds": round(elapsed, 2),
        "model_dir": str(model_dir),
        "demo_model": model is None,
        "gate": str(gate) if gate is not None else None,
        "config": str(config_path),
        "ground_truth": str(run_dir / "ground_truth.json"),
        "images": summary.journal.get("images", ""),
        "metrics_file": str(config.health.prometheus_file),
        "subscriber_received": len(subscriber.seqs),
        "subscriber_in_order": subscriber.seqs == sorted(set(subscriber.seqs)),
        "subscriber_error": subscriber.error,
        "model_alone": {**model_score, "temperature": DEMO_TEMPERATURE, "contact_sheet": str(sheet),
                        "run_dir": str(alone_dir)},
        "against_truth": score_against_truth(summary.results, truth),
        "note": DEMO_NOTE if model is None else "",
    })
    return out


def _format_example(e: dict[str, Any]) -> list[str]:
    boxes = ", ".join(f"{[round(v) for v in b['xyxy']]} {b['label']}".strip() for b in e["boxes"]) or "none"
    lines = [f"  one part: {e['part_id']} (truth: {e['truth']}, verdict: {e['verdict']})",
             f"    <think>   {e['think']}", f"    <rethink> {e['rethink']}", f"    <answer>  {e['answer']}"]
    lines += [f"    MALFORMED box written as {m['written']} ({m['why']}): read with its corners put in order"
              for m in e.get("malformed") or []]
    lines.append(f"    boxes (image pixels): {boxes}")
    if e.get("truth_box"):
        lines.append(f"    defect's box from its mask: {[round(v) for v in e['truth_box']]}"
                     + (f", best IoU {e['best_iou']:.2f}" if e.get("best_iou") is not None else ""))
    return lines


def _format_model(m: dict[str, Any] | None) -> list[str]:
    if not m or not m["parts"]:
        return []
    boxes = (f"; a box with IoU ≥ 0.5 on {m['iou50_defective']:.0%} of the {m['defective']} defective parts"
             if m["defective"] else "")
    malformed = f"; {m['malformed_boxes']} MALFORMED box(es)" if m["malformed_boxes"] else ""
    return [f"  the model (gate off, greedy): {m['accuracy']:.0%} of {m['parts']} parts right, answers in "
            f"format {m['format_rate']:.0%}{boxes}{malformed}",
            f"  contact sheet (model boxes red, true boxes green): {m['contact_sheet']}"]


def format_summary(s: dict[str, Any]) -> str:
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items())) or "none"
    stages = [k for k in ("capture", "journal", "resize", "vlm", "parse", "complete", "publish", "total")
              if k in s["latency_ms_p50"]]
    lat = "\n".join(f"    {k:<9}{s['latency_ms_p50'][k]:>10.1f} {s['latency_ms_p95'][k]:>10.1f}" for k in stages)
    lines = [
        f"adfm appliance demo — station {s['station']!r}, {s['parts']} parts in {s['seconds']:.1f} s",
        *_format_model(s.get("model_alone")),
        *_format_truth(s.get("against_truth"), gate=bool(s.get("gate"))),
        f"  station verdicts: {verdicts}   (worker restarts: {s['worker_restarts']})",
        "  latency (ms)      p50        p95",
        lat,
        f"  bus: results on {', '.join(s['bus'].get('publish', []))}, control on "
        f"{', '.join(s['bus'].get('control', []))}",
        f"       a subscriber received {s['subscriber_received']} of {s['parts']} results"
        + (" in seq order" if s["subscriber_in_order"] else " OUT OF ORDER")
        + (f" ({s['subscriber_error']})" if s["subscriber_error"] else ""),
        f"  journal: {s['journal'].get('db', '')} (last seq {s['last_seq']})",
        f"  images:  {s['images']}",
        f"  metrics: {s['metrics_file']}",
        f"  config:  {s['config']}  (run it yourself: adfm-appliance run --config {s['config']})",
        f"  model:   {s['model_dir']}",
    ]
    if s.get("against_truth", {}).get("example"):
        lines += _format_example(s["against_truth"]["example"])
    if s.get("note"):
        lines += ["", f"NOTE: {s['note']}"]
    return "\n".join(lines)


def _format_truth(t: dict[str, Any] | None, gate: bool = True) -> list[str]:
    if not t or not t["parts_scored"]:
        return []
    acc = f"{t['accuracy']:.0%}" if t["accuracy"] is not None else "n/a"
    where = "gate on" if gate else "no gate"
    return [f"  the station ({where}): {acc} of {t['parts_scored']} parts right ({t['by_gate']} passed by the gate, "
            f"{t['model_answers']} answered by the model, {t['reviewed']} sent to review)"]
