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
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefinedType

from adfm.offline import force_offline


def _size(text: str) -> tuple[int, int]:
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, e.g. 320x256; got {text!r}") from None
    return w, h


#: Fields set by their own options (or not from the command line at all).
_SPECIAL = {"data", "out", "categories", "long_side", "input_size", "progress"}


def _option_type(annotation: Any) -> Any:
    """The argparse type of a config field: its scalar type, with `| None` removed."""
    args = [a for a in get_args(annotation) if a is not type(None)]
    if len(args) == 1:
        return args[0]
    return annotation


def _help(field: FieldInfo) -> str:
    text = field.description or ""
    if field.default is None:
        return text or "(default: none)"
    if not isinstance(field.default, PydanticUndefinedType):
        return f"{text} (default {field.default})".strip()
    return text


def build_parser() -> argparse.ArgumentParser:
    """Options and defaults come from GateTrainConfig, so help text and behaviour cannot drift apart."""
    from .config import GateTrainConfig

    fields = GateTrainConfig.model_fields
    p = argparse.ArgumentParser(prog="adfm-train gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True, help=fields["data"].description)
    p.add_argument("--out", type=Path, required=True, help=fields["out"].description)
    p.add_argument("--category", dest="categories", action="append", default=[], metavar="NAME",
                   help="fit on this category only (repeatable; default: every category in --data)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--long-side", type=int, help=_help(fields["long_side"]))
    size.add_argument("--input-size", type=_size, metavar="WxH", help=_help(fields["input_size"]))
    for name, field in fields.items():
        if name in _SPECIAL:
            continue
        flag = "--" + name.replace("_", "-")
        annotation = field.annotation
        if get_origin(annotation) is Literal:
            p.add_argument(flag, choices=list(get_args(annotation)), help=_help(field))
        else:
            p.add_argument(flag, type=_option_type(annotation), help=_help(field))
    p.add_argument("--json", action="store_true", help="print the gate's metadata as JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def _config(args: argparse.Namespace):
    from .config import GateTrainConfig

    names = set(GateTrainConfig.model_fields) - {"data", "out", "categories", "progress"}
    values = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    return GateTrainConfig(data=args.data, out=args.out, categories=args.categories,
                           progress=not args.quiet, **values)


def _rate(rate: float, n: int) -> str:
    from .calibrate import wilson_interval

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
    force_offline()
    from adfm.runtime.gate import GateError

    from .config import GateConfigError
    from .export import GateExportError
    from .train import train_gate

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
