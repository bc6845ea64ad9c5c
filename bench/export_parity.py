"""How close each exported GGUF type stays to the merged HF model, and what it costs, on the tiny model.

Exports the tiny random Qwen2.5-VL + a LoRA adapter once per type (f32, f16, q8_0, q5_k_m,
q4_k_m) through `export_model`, with the export's own verification (agreement floor 0, so every
type is measured rather than refused), then times greedy answers with GgufVlm. Writes
bench/results/export_parity.json.

The tiny model has random weights: its logits are nearly flat, so quantized agreement here is a
floor for what a trained model keeps, not a forecast. The float rows show the conversion itself.

With --wide the model has Qwen2.5-VL-7B's widths (text hidden 3584, 28 heads, 4 KV heads,
intermediate 18944; vision hidden 1280, 16 heads) but 2 text layers and 4 vision blocks, and only
f16 and q4_k_m are exported (about 10 minutes on 2 cores, 3 GB of RAM).

    python bench/export_parity.py [--work DIR] [--answers N] [--wide]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from adfm.offline import force_offline

force_offline()

TYPES = ("f32", "f16", "q8_0", "q5_k_m", "q4_k_m")
WIDE = {"hidden_size": 3584, "num_layers": 2, "num_heads": 28, "num_kv_heads": 4, "intermediate_size": 18944,
        "vision_depth": 4, "vision_hidden_size": 1280, "vision_heads": 16}
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, help="work directory (default: a temporary one)")
    parser.add_argument("--answers", type=int, default=5, help="timed greedy answers per type (default 5)")
    parser.add_argument("--tokens", type=int, default=32, help="tokens per timed answer (default 32)")
    parser.add_argument("--wide", action="store_true", help="use Qwen2.5-VL-7B widths with 2 layers")
    args = parser.parse_args()

    import numpy as np
    from PIL import Image

    from adfm.export import export_model
    from adfm.export.tiny import make_tiny_adapter
    from adfm.runtime.vlm import GgufVlm
    from adfm.synthetic import make_sample
    from adfm.trainer.tiny_model import build_tiny_qwen25vl

    work = args.work or Path(tempfile.mkdtemp(prefix="adfm-export-bench-"))
    base = work / ("hf-wide" if args.wide else "hf")
    if not (base / "config.json").is_file():
        sizes = WIDE if args.wide else {}
        build_tiny_qwen25vl(base, **sizes)
    adapter = work / ("lora-wide" if args.wide else "lora")
    if not (adapter / "adapter_config.json").is_file():
        make_tiny_adapter(base, adapter)
    image = Image.fromarray(make_sample("washer", "scratch", np.random.default_rng(5), size=(320, 240)).image)

    rows = []
    for quant in ("f16", "q4_k_m") if args.wide else TYPES:
        start = time.perf_counter()
        manifest = export_model(base, work / f"{base.name}-{quant}", adapter_dir=adapter, quant=quant,
                                agreement_floor=0.0, progress=lambda line: None)
        export_s = time.perf_counter() - start
        check = manifest.verification["checks"][-1]  # the shipped pair (the float check for f16/f32)
        with GgufVlm(work / f"{base.name}-{quant}") as vlm:
            grid_image = vlm.grid_for(*image.size).resize(image)
            vlm.generate([grid_image], max_tokens=2)  # first call allocates buffers
            gens = [vlm.generate([grid_image], max_tokens=args.tokens) for _ in range(args.answers)]
        seconds = sorted(g.seconds for g in gens)
        rows.append({
            "type": quant,
            "model_bytes": manifest.file("model").size,
            "mmproj_bytes": manifest.file("mmproj").size,
            "export_seconds_with_verification": round(export_s, 2),
            "token_agreement": check["token_agreement"],
            "decision_agreement": check["decision_agreement"],
            "min_free_running_prefix": check["min_free_running_prefix"],
            "max_relative_logit_error": check["max_relative_logit_error"],
            "max_vision_relative_error": check["max_vision_relative_error"],
            "mismatches": [
                {"case": c["case"], **m} for c in check["cases"] for m in c["mismatches"]
            ],
            "image_tokens_equal": all(c["image_tokens_hf"] == c["image_tokens_gguf"] for c in check["cases"]),
            "answer_seconds_median": round(seconds[len(seconds) // 2], 4),
            "answer_tokens": gens[0].completion_tokens,
            "prompt_tokens": gens[0].prompt_tokens,
        })
        print(json.dumps(rows[-1]), flush=True)

    results = RESULTS_DIR / ("export_parity_wide.json" if args.wide else "export_parity.json")
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(json.dumps({
        "bench": "export_parity",
        "model": ("random Qwen2.5-VL at 7B widths, 2 text layers, 4 vision blocks" if args.wide
                  else "tiny random Qwen2.5-VL (hidden 256, 2 layers)") + " + random LoRA r=8",
        "verify_tokens": 16,
        "cases": 3,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
        "note": "random weights: quantized agreement is a lower bound; shared CPU, timings are rough",
        "rows": rows,
    }, indent=2))
    print(f"wrote {results}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
