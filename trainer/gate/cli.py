"""`adfm-train gate`: fit the screening gate on a station's normal images and export it to ONNX.

    adfm-train gate --data SPLIT_OR_FOLDER --out gate.onnx [options]

`--data` is a split manifest (.jsonl) or a dataset root: the generic layout (`ROOT/normal`,
`ROOT/anomalous`, optional `ROOT/masks`) or any layout `adfm-data` reads. Commissioning a station:
the gate is fitted on good parts (ImageNet EfficientNet-Lite0 features by default), holding some
out; known defective parts (`ROOT/anomalous`) set the threshold that still catches
`--target-recall` of them (default 95%). Without any, it warns loudly and takes a low
`--normal-quantile` of the held-out good parts' scores (default 0.90). Either way it prints the cost:
the share of good parts that will go to the VLM. Writes gate.onnx, gate.json (metadata: input
size, threshold, calibration, weights provenance, hashes of the fit and calibration images) and
gate.train.jsonl (the images fitted on). Uses the GPU when there is one (`--device`).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from pydantic import ValidationError


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x256; got {text!r}") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="adfm-train gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help="split manifest (.jsonl) or dataset root")
    p.add_argument("--out", type=Path, required=True, help="the gate's .onnx file (metadata goes beside it)")
    p.add_argument("--layout", help="force the dataset layout (default: detected)")
    p.add_argument("--category", dest="categories", action="append", default=[], metavar="NAME",
                   help="fit on this category only (repeatable; default: every category in --data)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--long-side", type=int, help="input long side in pixels (default 256; aspect from the images)")
    size.add_argument("--input-size", type=_size, metavar="WxH", help="exact input size, multiples of 8")
    p.add_argument("--backbone", choices=["pretrained", "random"],
                   help="patch features: ImageNet EfficientNet-Lite0 (default) or seeded random convolutions")
    p.add_argument("--width", type=int, help="random backbone: channels of its first layer (default 16)")
    p.add_argument("--bank-size", type=int, help="normal patch features kept (default 4096)")
    p.add_argument("--max-candidates", type=int, help="patches sampled for the coreset (default 200000)")
    p.add_argument("--smoothing-sigma", type=float, help="heat map smoothing in feature cells (default 1.0)")
    p.add_argument("--holdout", type=float, help="share of normal images held out for calibration (default 0.2)")
    p.add_argument("--target-recall", type=float, help="recall kept on the anomalous images (default 0.95)")
    p.add_argument("--normal-quantile", type=float,
                   help="without anomalous images: threshold at this quantile of held-out normal scores (default 0.90)")
    p.add_argument("--seed", type=int, help="hold-out, coreset and random-backbone seed (default 0)")
    p.add_argument("--batch-size", type=int, help="images per batch (default 16)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="fitting device (default: auto)")
    p.add_argument("--threads", type=int, help="ONNX Runtime threads for calibration (default: all cores)")
    p.add_argument("--json", action="store_true", help="print the gate's metadata as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


_FIELDS = ("layout", "backbone", "long_side", "input_size", "width", "bank_size", "max_candidates",
           "smoothing_sigma", "holdout", "target_recall", "normal_quantile", "seed", "batch_size", "device", "threads")


def _config(args: argparse.Namespace):
    from adfm.trainer.gate.config import GateTrainConfig

    values = {k: getattr(args, k) for k in _FIELDS if getattr(args, k) is not None}
    return GateTrainConfig(data=args.data, out=args.out, categories=args.categories,
                           progress=not args.quiet, **values)


def _rate(rate: float, n: int) -> str:
    from adfm.trainer.gate.calibrate import wilson_interval

    lo, hi = wilson_interval(round(rate * n), n)
    return f"{rate:.0%} (95% interval {lo:.0%}–{hi:.0%}, {n} parts)"


def _summary(result) -> str:
    m = result.metadata
    c = m.calibration
    lines = [
        f"gate written: {result.onnx_path} ({m.method}, {m.input_width}x{m.input_height} input, "
        f"{result.fit.bank_size} normal patches from {result.fit.n_images} images, "
        f"fitted in {result.fit.seconds:.1f} s on {result.fit.device})",
        f"metadata: {result.metadata_path}; fitted on: {result.train_manifest}",
    ]
    if c.method == "recall":
        lines.append(f"threshold {m.threshold:.4g}: catches {_rate(c.recall, c.n_anomalous)} of the known defective "
                     f"parts (target {c.target:.0%})")
    else:
        lines.append(f"threshold {m.threshold:.4g}: the {c.target:.0%} quantile of {c.n_normal} held-out good parts' "
                     "scores (no defective parts to calibrate on; see the warning)")
    if c.normal_flag_rate is not None:
        lines.append(f"cost: good parts that will go to the VLM: {_rate(c.normal_flag_rate, c.n_normal)}")
    if result.calibration_auroc is not None:
        lines.append(f"AUROC on the calibration images (held-out normal vs anomalous): {result.calibration_auroc:.3f}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from adfm.appliance.gate import GateError
    from adfm.trainer.gate.config import GateConfigError
    from adfm.trainer.gate.export import GateExportError
    from adfm.trainer.gate.train import train_gate

    try:
        cfg = _config(args)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'value'}: {e['msg']}" for e in exc.errors())
        print(f"adfm-train gate: invalid settings: {problems}", file=sys.stderr)
        return 2
    try:
        result = train_gate(cfg)
    except (GateConfigError, GateExportError, GateError, OSError) as exc:
        print(f"adfm-train gate: {exc}", file=sys.stderr)
        return 2
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    for warning in result.warnings:
        print(f"\n{'!' * 78}\nWARNING: {warning}\n{'!' * 78}\n", file=sys.stderr)
    if args.json:
        print(json.dumps(result.metadata.model_dump(mode="json"), indent=2))
    else:
        print(_summary(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
