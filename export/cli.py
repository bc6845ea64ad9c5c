"""`adfm-export`: turn a trained Qwen2.5-VL (base + LoRA adapter) into a verified GGUF model directory.

Prompt version, pixel budget, reference use and answer length are read from the adapter's
adfm_run.json (written by adfm-train); a flag that differs from the record overrides it with a
warning. Steps, each reported as it runs: check inputs; merge the LoRA into the base weights (peft); write
the language model and the vision projector (mmproj) as GGUF; quantize the language model with
llama.cpp; verify the GGUF pair against the merged HF model on fixture images; write manifest.json
(sha256 and size of each file, base and adapter identity, quant types, prompt version, pixel budget).

Works offline: every path is local. Nothing is left under the final names when a step fails.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from adfm.offline import force_offline
from adfm.protocol import DEFAULT_PROMPT_VERSION, PROMPT_VERSIONS

from .errors import ExportError
from .pipeline import DEFAULT_AGREEMENT_FLOOR, MMPROJ_CHOICES, ExportConfig, Progress, run_export
from .quantize import QUANT_TYPES

DTYPE_CHOICES = ("float32", "bfloat16", "float16")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="adfm-export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--base", required=True, type=Path, metavar="DIR",
                   help="base Qwen2.5-VL checkpoint directory (config, weights, tokenizer, processor)")
    p.add_argument("--adapter", type=Path, metavar="DIR",
                   help="LoRA adapter directory (PEFT) to merge; without it the base is exported as it is")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output model directory (created; files of a previous export there are replaced)")
    p.add_argument("--quant", choices=QUANT_TYPES, default="q4_k_m",
                   help="language model type: f16, q8_0, q4_k_m, q5_k_m (f32: float reference; default %(default)s)")
    p.add_argument("--mmproj-type", choices=MMPROJ_CHOICES, default="f16",
                   help="vision projector type (default %(default)s)")
    p.add_argument("--prompt-version", choices=sorted(PROMPT_VERSIONS),
                   help="prompt the model was trained with (default: the adapter's adfm_run.json, else "
                        f"{DEFAULT_PROMPT_VERSION}); overriding the record prints a warning")
    p.add_argument("--min-pixels", type=int, metavar="N",
                   help="model-grid pixel budget, lower bound (default: the adapter's adfm_run.json, else the "
                        "base processor's)")
    p.add_argument("--max-pixels", type=int, metavar="N",
                   help="model-grid pixel budget, upper bound (default: as --min-pixels)")
    p.add_argument("--use-reference", action=argparse.BooleanOptionalAction, default=None,
                   help="whether the model was trained with a normal reference image (default: the record's)")
    p.add_argument("--max-tokens", type=int, metavar="N",
                   help="longest answer the model gives, in tokens (default: the record's max completion length)")
    p.add_argument("--no-verify", dest="verify", action="store_false",
                   help="skip the comparison with the merged HF model (not recommended)")
    p.add_argument("--verify-tokens", type=int, default=16, metavar="N",
                   help="tokens generated freely per fixture image when verifying (default %(default)s); "
                        "decisions are read from a fixed answer fed to both models, whatever N")
    p.add_argument("--agreement-floor", type=float, default=DEFAULT_AGREEMENT_FLOOR, metavar="F",
                   help="quantized exports fail when decision agreement with HF, over the cases where HF "
                        "decides clearly (near ties within the float file's noise left out), is below F "
                        "(0..1, default %(default)s); KL divergence bounds per quant type are relative to the "
                        "float file within fixed absolute ones (adfm.export.verify)")
    p.add_argument("--verify-images", nargs="+", type=Path, default=[], metavar="PATH",
                   help="image files or directories to verify on (default: built-in synthetic parts)")
    p.add_argument("--dtype", choices=DTYPE_CHOICES, default="float32",
                   help="dtype the HF model is loaded and merged in (default %(default)s)")
    p.add_argument("--device", default="cpu", metavar="DEV",
                   help="torch device for the HF side of the verification, e.g. cuda (default %(default)s)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="CPU threads for llama.cpp quantization and inference (default: llama.cpp's choice)")
    p.add_argument("--save-merged", type=Path, metavar="DIR",
                   help="also save the merged HF checkpoint (with processor and chat template) to DIR")
    p.add_argument("--json", action="store_true", help="print the written manifest as JSON on stdout")
    p.add_argument("--verbose", action="store_true", help="also show llama.cpp's own log lines")
    return p


@contextmanager
def _llama_log(verbose: bool) -> Iterator[None]:
    """llama.cpp's load reports and advice are noise during an export (its errors reach our
    exceptions anyway): hide them unless --verbose, and restore the logger afterwards."""
    log = logging.getLogger("adfm.llama")
    level, handler = log.level, None
    log.setLevel(logging.DEBUG if verbose else logging.ERROR)
    if verbose:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("llama.cpp: %(message)s"))
        log.addHandler(handler)
    try:
        yield
    finally:
        log.setLevel(level)
        if handler is not None:
            log.removeHandler(handler)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    force_offline()
    try:
        cfg = ExportConfig.from_values(
            base_dir=args.base,
            out_dir=args.out,
            adapter_dir=args.adapter,
            quant=args.quant,
            mmproj_type=args.mmproj_type,
            prompt_version=args.prompt_version,
            min_pixels=args.min_pixels,
            max_pixels=args.max_pixels,
            use_reference=args.use_reference,
            max_tokens=args.max_tokens,
            verify=args.verify,
            verify_tokens=args.verify_tokens,
            agreement_floor=args.agreement_floor,
            verify_images=list(args.verify_images),
            dtype=args.dtype,
            device=args.device,
            n_threads=args.threads,
            save_merged=args.save_merged,
        )
        with _llama_log(args.verbose):
            manifest = run_export(cfg, Progress())
    except ExportError as exc:
        print(f"adfm-export: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("adfm-export: interrupted; nothing was kept under the final names", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(json.loads(manifest.model_dump_json()), indent=2))
    else:
        print(f"exported {manifest.model_id} to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
