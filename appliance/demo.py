"""`adfm-appliance demo`: the whole station on one machine, with nothing to download.

It builds (once; cached) a tiny random-weight Qwen2.5-VL and exports it to GGUF through the real
`adfm-export` path, writes a synthetic station — a replay camera over synthetic washers, one of
them the product's golden reference — runs the real service loop for a bounded number of parts
with a bus subscriber listening, and summarises what happened and where the results are.

The tiny model is untrained: its verdicts are meaningless. The demo shows the machinery (camera,
journal, model worker, bus, health), not inspection quality. Building the tiny model needs the
trainer and export extras (torch); it runs in a child process, so the appliance itself never
imports torch. `--model DIR` uses an existing exported model directory instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from adfm.offline import offline_env

UNTRAINED_NOTE = (
    "The demo model is a tiny network with random weights that was never trained: its verdicts "
    "are meaningless. The demo shows the appliance's machinery (camera, journal, model worker, bus, "
    "health), not inspection quality. Pass --model DIR with a model exported by adfm-export for real verdicts."
)

class DemoError(RuntimeError):
    """The demo cannot run; the message says what to install or pass."""


def default_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "adfm" / "demo"


def _say(progress: Callable[[str], None] | None, text: str) -> None:
    if progress is not None:
        progress(text)


def ensure_model(cache: Path, model: Path | None, progress: Callable[[str], None] | None = None) -> Path:
    """An exported model directory: `model` checked, or the cached tiny one (built when missing)."""
    from adfm.manifest import ManifestError, load_model_dir

    if model is not None:
        try:
            load_model_dir(model, check_hashes=False)
        except ManifestError as exc:
            raise DemoError(f"--model {model}: {exc}") from exc
        return model
    pointer = cache / "tiny-model-dir.txt"
    if pointer.is_file():
        cached = Path(pointer.read_text().strip())
        try:
            load_model_dir(cached, check_hashes=True)
            _say(progress, f"using the cached tiny model in {cached}")
            return cached
        except ManifestError:
            _say(progress, f"the cached tiny model in {cached} is incomplete; rebuilding it")
    missing = [m for m in ("torch", "transformers", "gguf", "llama_cpp") if importlib.util.find_spec(m) is None]
    if missing:
        raise DemoError(
            f"building the tiny demo model needs the trainer and export extras ({', '.join(missing)} missing): "
            "pip install 'adfm[trainer,export]' — or pass --model DIR with a directory written by adfm-export"
        )
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / "tiny-gguf"
    if out.exists():
        shutil.rmtree(out)
    _say(progress, f"building the tiny model and its GGUF in {cache} (once; about a minute)…")
    env = offline_env(TOKENIZERS_PARALLELISM="false")
    # The build side's own command, in a child process: the appliance never imports torch or export.
    command = [sys.executable, "-m", "adfm.export.tiny", "--out", str(out), "--base", str(cache / "tiny-hf")]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-15:])
        raise DemoError(f"building the tiny model failed:\n{tail}")
    model_dir = Path(proc.stdout.strip().splitlines()[-1])
    pointer.write_text(str(model_dir))
    return model_dir


def write_station(run_dir: Path, model_dir: Path, cache: Path) -> Path:
    """A synthetic station: a looping replay camera over synthetic washers (normal and defective,
    interleaved), a golden reference, loopback bus endpoints. Returns the config path."""
    from adfm.synthetic import make_synthetic_dataset

    data = cache / "parts"
    if not (data / "normal").is_dir():
        make_synthetic_dataset(data, layout="folder", categories=("washer",), n_train=4, n_test_good=4,
                               n_test_defect=2, defects=("scratch", "spot"), size=(256, 256), seed=0)
    normal = sorted((data / "normal").glob("*.png"))
    anomalous = sorted((data / "anomalous").glob("*.png"))
    reference, normal = normal[0], normal[1:]
    camera_dir = run_dir / "camera"
    camera_dir.mkdir(parents=True, exist_ok=True)
    mixed = [p for pair in zip(normal, anomalous + [None] * len(normal), strict=False) for p in pair if p]
    for i, src in enumerate(mixed):
        shutil.copyfile(src, camera_dir / f"part-{i:03d}-{src.parent.name}.png")
    shutil.copyfile(reference, run_dir / "reference-washer.png")
    config = {
        "station": "demo",
        "state_dir": "state",
        "model": {"dir": str(model_dir.resolve()), "max_tokens": 96, "n_ctx": 2048, "deadline_s": 120},
        "products": [{"name": "washer", "reference": "reference-washer.png"}],
        "cameras": [{"id": "cam0", "url": "replay:camera", "fps": 4.0, "loop": True, "product": "washer"}],
        "retention": {"days": 7, "max_image_mb": 200},
        "bus": {"publish": "tcp://127.0.0.1:*", "control": "tcp://127.0.0.1:*", "status_interval_s": 1},
        "health": {"prometheus_file": "state/metrics/adfm.prom"},
    }
    path = run_dir / "station.yaml"
    path.write_text("# written by adfm-appliance demo\n" + yaml.safe_dump(config, sort_keys=False))
    return path


class _Subscriber(threading.Thread):
    """Follows the demo station's bus like an integrator would, counting what arrives."""

    def __init__(self, service) -> None:
        super().__init__(name="demo-subscriber", daemon=True)
        self.service = service
        self.seqs: list[int] = []
        self.error = ""
        self.stop = threading.Event()

    def run(self) -> None:
        from adfm.appliance.bus_client import StationClient, StationError

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


def run_demo(parts: int = 8, model: Path | None = None, cache: Path | None = None,
             progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Build what is missing, run the synthetic station for `parts` parts, return the summary."""
    from adfm.appliance.config import load_config
    from adfm.appliance.service import Service, ServiceError

    if parts < 1:
        raise DemoError(f"--parts must be at least 1, got {parts}")
    cache = (cache or default_cache()).expanduser()
    model_dir = ensure_model(cache, model, progress)
    run_dir = cache / f"station-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    config_path = write_station(run_dir, model_dir, cache)
    config = load_config(config_path)
    service = Service(config)
    subscriber = _Subscriber(service)
    subscriber.start()
    _say(progress, f"running station 'demo' from {config_path} for {parts} parts…")
    t0 = time.monotonic()
    try:
        summary = service.run(max_parts=parts, before_close=lambda: subscriber.wait_for(service.journal.last_seq()))
    except ServiceError as exc:
        raise DemoError(str(exc)) from exc
    finally:
        subscriber.stop.set()
        subscriber.join(5)
    elapsed = time.monotonic() - t0
    out = summary.to_json()
    out.update({
        "seconds": round(elapsed, 2),
        "model_dir": str(model_dir),
        "tiny_untrained_model": model is None,
        "config": str(config_path),
        "images": summary.journal.get("images", ""),
        "metrics_file": str(config.health.prometheus_file),
        "subscriber_received": len(subscriber.seqs),
        "subscriber_in_order": subscriber.seqs == sorted(set(subscriber.seqs)),
        "subscriber_error": subscriber.error,
        "note": UNTRAINED_NOTE if model is None else "",
    })
    return out


def format_summary(s: dict[str, Any]) -> str:
    verdicts = ", ".join(f"{k} {v}" for k, v in sorted(s["verdicts"].items())) or "none"
    stages = [k for k in ("capture", "journal", "resize", "vlm", "parse", "complete", "publish", "total")
              if k in s["latency_ms_p50"]]
    lat = "\n".join(f"    {k:<9}{s['latency_ms_p50'][k]:>10.1f} {s['latency_ms_p95'][k]:>10.1f}" for k in stages)
    lines = [
        f"adfm appliance demo — station {s['station']!r}, {s['parts']} parts in {s['seconds']:.1f} s",
        f"  verdicts: {verdicts}   (worker restarts: {s['worker_restarts']})",
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
    if s.get("note"):
        lines += ["", f"NOTE: {s['note']}"]
    return "\n".join(lines)
