"""The tiny random Qwen2.5-VL, with a small LoRA adapter, exported through the real `adfm-export` path.

Tests, the demo station and benchmarks get a model directory (GGUF language model + mmproj +
manifest.json) that llama.cpp runs, built offline in seconds. Needs the export extra (torch,
transformers, peft, gguf, llama-cpp-python). `python -m adfm.export.tiny --out DIR` is the build-side
command the appliance demo runs in a child process, so the line side never imports torch or export.
`--warm-start DIR` exports the warm-started tiny model instead (`adfm-train warmstart`: trained on
the synthetic task, so it answers in format), built in DIR when missing, without a random adapter.

The export verifies itself as always. Its quantized agreement floor is lowered for this model only:
random weights give near-flat logits, so 4-bit rounding flips many near-ties (q4_k_m keeps about
70 % of HF's top tokens here) while the f16 parity check stays exact.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

#: Quantized token/decision agreement the tiny model's export must keep (see the module note).
TINY_AGREEMENT_FLOOR = 0.5
#: The low end of the warm-started model's exported pixel budget (56×56: 4 visual tokens).
WARM_MIN_PIXELS = 56 * 56


def make_tiny_adapter(base_dir: str | Path, out_dir: str | Path, *, seed: int = 0, rank: int = 8) -> Path:
    """Save a small random LoRA adapter for `base_dir` (as a trained adapter would be saved).

    B starts non-zero (N(0, 0.01)) so merging visibly changes the weights; same seed, same adapter.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    out = Path(out_dir)
    model = AutoModelForImageTextToText.from_pretrained(str(base_dir), dtype=torch.float32, local_files_only=True)
    config = LoraConfig(
        r=rank,
        lora_alpha=2 * rank,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
    )
    torch.manual_seed(seed)
    with warnings.catch_warnings():  # transformers' deprecation notes about peft's own calls
        warnings.simplefilter("ignore", FutureWarning)
        peft_model = get_peft_model(model, config)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in peft_model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.01)
    peft_model.save_pretrained(str(out))
    return out


def build_tiny_gguf(
    out_dir: str | Path,
    quant: str = "q4_k_m",
    base_dir: str | Path | None = None,
    *,
    with_adapter: bool = True,
    verify: bool = True,
    min_pixels: int | None = None,
) -> Path:
    """Export the tiny model to `out_dir` with `adfm-export` and return the model directory.

    `base_dir`: an existing tiny HF checkpoint to reuse; None builds one next to `out_dir`
    (`<out_dir>-hf`, reused when present). A LoRA adapter is made next to it (`<out_dir>-lora`)
    and merged. An `out_dir` that already holds a valid export of this quant is returned as is.
    """
    from adfm.manifest import ManifestError, load_model_dir

    from . import cli

    out = Path(out_dir)
    with contextlib.suppress(ManifestError):
        if load_model_dir(out).file("model").quant == quant:
            return out
    if base_dir is None:
        base = out.with_name(out.name + "-hf")
        if not (base / "config.json").is_file():
            from adfm.trainer.tiny_model import build_tiny_qwen25vl

            build_tiny_qwen25vl(base)
    else:
        base = Path(base_dir)
    argv = ["--base", str(base), "--out", str(out), "--quant", quant,
            "--agreement-floor", str(TINY_AGREEMENT_FLOOR)]
    if with_adapter:
        adapter = out.with_name(out.name + "-lora")
        if not (adapter / "adapter_config.json").is_file():
            make_tiny_adapter(base, adapter)
        argv += ["--adapter", str(adapter)]
    if not verify:
        argv.append("--no-verify")
    if min_pixels is not None:
        argv += ["--min-pixels", str(min_pixels)]
    log = io.StringIO()
    with contextlib.redirect_stderr(log):
        rc = cli.main(argv)
    if rc != 0:
        raise RuntimeError(f"adfm-export of the tiny model failed (exit {rc}):\n{log.getvalue()}")
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Build (or reuse) the tiny export; print the model directory on the last line of stdout."""
    from adfm.offline import force_offline

    p = argparse.ArgumentParser(prog="python -m adfm.export.tiny", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="model directory to write")
    p.add_argument("--base", type=Path, metavar="DIR",
                   help="tiny HF checkpoint to reuse or build (default: <out>-hf)")
    p.add_argument("--quant", default="q4_k_m", help="language model type (default %(default)s)")
    p.add_argument("--warm-start", type=Path, metavar="DIR",
                   help="export the warm-started tiny model, built (or reused) in DIR by adfm-train warmstart")
    args = p.parse_args(argv)
    force_offline()
    if args.warm_start is not None:
        import logging

        from adfm.trainer.warmstart import warm_start

        # the warm start's progress lines, on stderr (the demo passes them on)
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

        model_dir = Path(warm_start(args.warm_start, evaluate=False).model_dir)
        try:
            # The warm start trained on one fixed grid (min = max pixels); the export's budget starts lower
            # so images of other aspects (its verification cases, other cameras) still fit it.
            out = build_tiny_gguf(args.out, quant=args.quant, base_dir=model_dir, with_adapter=False,
                                  min_pixels=WARM_MIN_PIXELS)
        except RuntimeError as exc:
            print(f"adfm.export.tiny: {exc}", file=sys.stderr)
            return 1
        print(out)
        return 0
    base = args.base
    if base is not None and not (base / "config.json").is_file():
        from adfm.trainer.tiny_model import build_tiny_qwen25vl

        build_tiny_qwen25vl(base)
    try:
        out = build_tiny_gguf(args.out, quant=args.quant, base_dir=base)
    except RuntimeError as exc:
        print(f"adfm.export.tiny: {exc}", file=sys.stderr)
        return 1
    print(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
