"""Random-weight Qwen2.5-VL exports with the released 3B and 7B shapes, built offline and cached
(and `tiny_export`, the tiny test export the smaller benches run on).

Speed does not depend on weight values, so a random-weight model with a released model's shapes
(bench/model_configs.py) does the released model's work per part. Each size is built once:
1. a random-weight HF checkpoint in bfloat16 (`model_configs.build_random_checkpoint`);
2. `adfm-export --quant q4_k_m --dtype bfloat16 --no-verify` in a child process, with its peak RSS
   (quantized verification does not apply to random weights; loading in bfloat16 instead of the
   export's float32 default halves what the export holds: the 7B checkpoint is 16.6 GB in bfloat16);
3. the HF checkpoint is deleted afterwards unless `--keep-checkpoint` (the mmproj bench needs the
   3B one for its reference embeddings).

    python bench/realistic_models.py --size qwen2.5-vl-3b [qwen2.5-vl-7b] [--keep-checkpoint]

Exports land in ~/.cache/adfm/bench/models/<size>-q4_k_m (outside the repository); the image budget
is up to 1,024 visual tokens (896×896). Writes bench/results/realistic_models.json (one entry per size).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from adfm.offline import offline_env

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path.home() / ".cache" / "adfm" / "bench" / "models"
RESULTS = ROOT / "bench" / "results" / "realistic_models.json"
#: up to 1,024 visual tokens (32×32 merged 28-pixel cells) and down to 4
MIN_PIXELS, MAX_PIXELS = 4 * 28 * 28, 1024 * 28 * 28
QUANT = "q4_k_m"
MARKER = "adfm_bench_export.json"


def tiny_export(cache: Path) -> Path:
    """The tiny export (adfm's test model), built once under `cache` by the build-side command."""
    out = cache / "tiny-gguf"
    proc = subprocess.run([sys.executable, "-m", "adfm.export.tiny", "--out", str(out)],
                          capture_output=True, text=True, env=offline_env(), check=False)
    if proc.returncode != 0:
        raise SystemExit(f"building the tiny export failed:\n{proc.stderr[-2000:]}")
    return Path(proc.stdout.strip().splitlines()[-1])


def hf_dir(size: str, cache: Path = CACHE) -> Path:
    return cache / f"{size}-hf"


def export_dir(size: str, cache: Path = CACHE, quant: str = QUANT) -> Path:
    return cache / f"{size}-{quant}"


def _params(size: str, quant: str) -> dict[str, Any]:
    from model_configs import get_spec

    return {"size": size, "digest": get_spec(size).digest(), "quant": quant, "min_pixels": MIN_PIXELS,
            "max_pixels": MAX_PIXELS, "random_weights": True}


def cached_export(size: str, cache: Path = CACHE, quant: str = QUANT) -> Path | None:
    """The export directory when it was built with today's shapes and budget, else None."""
    out = export_dir(size, cache, quant)
    try:
        return out if json.loads((out / MARKER).read_text()) == _params(size, quant) else None
    except (OSError, json.JSONDecodeError):
        return None


def _run_measured(cmd: list[str], log: Path) -> tuple[int, float, int]:
    """Run `cmd` with its output in `log`; (exit status, seconds, the child's peak RSS in bytes)."""
    t0 = time.perf_counter()
    with log.open("w") as sink:
        proc = subprocess.Popen(cmd, stdout=sink, stderr=subprocess.STDOUT, env=offline_env())
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss * 1024


def build(size: str, *, cache: Path = CACHE, quant: str = QUANT, keep_checkpoint: bool = False,
          threads: int | None = None) -> dict[str, Any]:
    """Build (or find) the export for `size`; what it took, as a JSON-ready dict."""
    from model_configs import build_random_checkpoint, get_spec

    spec = get_spec(size)
    out = export_dir(size, cache, quant)
    if cached_export(size, cache, quant):
        return {"size": size, "export": str(out), "cached": True}
    hf = hf_dir(size, cache)
    cache.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    build_random_checkpoint(spec, hf, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, dtype="bfloat16")
    checkpoint_s = time.perf_counter() - t0
    log = cache / f"{size}-{quant}.export.log"
    cmd = [sys.executable, "-m", "adfm.export.cli", "--base", str(hf), "--out", str(out), "--quant", quant,
           "--dtype", "bfloat16", "--no-verify"]
    if threads:
        cmd += ["--threads", str(threads)]
    rc, export_s, peak = _run_measured(cmd, log)
    if rc != 0:
        raise SystemExit(f"{size}: adfm-export failed (exit {rc}); its output is in {log}:\n"
                         + log.read_text()[-3000:])
    (out / MARKER).write_text(json.dumps(_params(size, quant), indent=2))
    files = {p.name: p.stat().st_size for p in sorted(out.glob("*.gguf"))}
    if not keep_checkpoint:
        shutil.rmtree(hf)
    return {
        "size": size, "export": str(out), "cached": False, "spec_source": spec.source,
        "published_parameters": spec.published_parameters,
        "checkpoint_seconds": round(checkpoint_s, 1), "export_seconds": round(export_s, 1),
        "export_peak_rss_gb": round(peak / 1e9, 2), "files_bytes": files,
        "export_command": " ".join(["adfm-export", *cmd[3:]]), "checkpoint_kept": keep_checkpoint,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", nargs="+", default=["qwen2.5-vl-3b", "qwen2.5-vl-7b"],
                   help="model sizes from bench/model_configs.py (default: %(default)s)")
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--keep-checkpoint", action="store_true", help="keep the random-weight HF checkpoint")
    p.add_argument("--threads", type=int, help="quantization threads (default: llama.cpp's)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    load_start = os.getloadavg()
    command = "python " + " ".join(["bench/realistic_models.py", *(argv if argv is not None else sys.argv[1:])])
    entries = {}
    if args.out.is_file():
        entries = {e["size"]: e for e in json.loads(args.out.read_text()).get("models", [])}
    for size in args.size:
        entry = build(size, cache=args.cache, keep_checkpoint=args.keep_checkpoint, threads=args.threads)
        print(json.dumps(entry), flush=True)
        if not entry["cached"]:
            entry.update(command=command, date=datetime.now(UTC).isoformat(timespec="seconds"),
                         loadavg_start_end=[load_start, os.getloadavg()])
            entries[size] = entry
    result = {
        "bench": "realistic_models",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1)},
        "models": list(entries.values()),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
