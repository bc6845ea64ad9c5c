"""`adfm-data`: inspect datasets in their native layouts, preview pseudo-boxes, write split manifests.

    adfm-data inspect ROOT [--layout L] [--json] [--quick]
    adfm-data boxes ROOT [--preview DIR] [--out FILE.jsonl] [--kernel-size N] [--min-area N]
    adfm-data split --protocol multi-domain --dataset ROOT [--dataset ROOT …] --out DIR [--seed N]

Exit status: 0 done; 1 refused by --strict (files would be left out); 2 bad arguments or a
dataset that cannot be read (the message names the file).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from .boxes import DEFAULT_MIN_AREA, BoxConfig
from .cache import ResultCache
from .check import check_samples, default_workers
from .imageio import DataFileError
from .layouts import LAYOUTS, scan_dataset
from .preview import write_preview
from .records import write_manifest
from .references import REFERENCE_MODES
from .report import inspect_dataset
from .splits import PROTOCOLS, DatasetSource, SplitConfig, SplitError, make_split

#: How many names per group the text output prints (`--all` prints every one; --json always does).
SHOWN = 20


def _err(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _progress(quiet: bool, what: str):
    def report(i: int, n: int) -> None:
        if not quiet and (i == n or i % 500 == 0):
            _err(f"  {what} {i}/{n}")

    return report


def _limited(items: list[str], show_all: bool) -> list[str]:
    if show_all or len(items) <= SHOWN:
        return items
    return [*items[:SHOWN], f"… and {len(items) - SHOWN} more (--all lists them, --json too)"]


# --- inspect -------------------------------------------------------------------------------------

def cmd_inspect(args: argparse.Namespace) -> int:
    cache = ResultCache(args.cache) if args.cache else None
    report = inspect_dataset(
        args.root, layout=args.layout, decode=not args.quick, workers=args.workers, cache=cache,
        progress=_progress(args.json or args.quiet, "opened"),
    )
    if cache is not None:
        cache.save()
    data = report.to_json()
    if args.json:
        print(json.dumps(data, indent=2))
    else:
        print(f"root:    {data['root']}")
        print(f"layout:  {data['layout']}  ({data['reason']})")
        print(f"images:  {data['totals']['images']} ({data['totals']['normal']} normal, "
              f"{data['totals']['anomalous']} anomalous); native splits "
              + ", ".join(f"{k} {v}" for k, v in data["splits"].items()))
        width = max([8, *(len(c) for c in data["categories"])])
        print(f"\n{'category':<{width}}  {'normal':>7}  {'anomalous':>9}  {'total':>6}")
        for cat, c in data["categories"].items():
            print(f"{cat:<{width}}  {c['normal']:>7}  {c['anomalous']:>9}  {c['normal'] + c['anomalous']:>6}")
        for note in data["notes"]:
            print(f"\nnote: {note}")
        skipped = data["skipped"]
        print(f"\nskipped files: {skipped['count']}")
        for reason, paths in sorted(skipped["by_reason"].items()):
            print(f"  {reason}: {len(paths)}")
            for p in _limited(paths, args.all):
                print(f"    {p}")
        probs = data["problems"]
        print(f"\nproblems: {probs['count']}"
              + ("  (" + ", ".join(f"{k} {v}" for k, v in probs["by_kind"].items()) + ")" if probs["count"] else ""))
        for kind in probs["by_kind"]:
            items = [p for p in probs["items"] if p["kind"] == kind]
            excluded = sum(p["excluded"] for p in items)
            effect = "left out of splits" if excluded == len(items) else (
                "kept, boxes unknown" if kind == "missing_mask" else "kept")
            print(f"  {kind} ({len(items)}, {effect}):")
            for line in _limited([p["message"] for p in items], args.all):
                print(f"    {line}")
    if args.strict and data["problems"]["count"]:
        return 1
    return 0


# --- boxes ---------------------------------------------------------------------------------------

def cmd_boxes(args: argparse.Namespace) -> int:
    box = BoxConfig(kernel_size=args.kernel_size, min_area=args.min_area)
    scan, detection = scan_dataset(args.root, args.layout)
    usable = scan.usable_samples()
    anomalous = [s for s in usable if s.anomalous and s.masks]
    without_mask = [s.image for s in usable if s.anomalous and not s.masks]
    if args.limit is not None:
        anomalous = anomalous[: args.limit]
    cache_path = args.cache or (Path(args.out).with_suffix(".cache.json") if args.out else None)
    cache = ResultCache(cache_path)
    if not args.quiet:
        _err(f"{args.root}: {detection.layout}; computing boxes for {len(anomalous)} anomalous images ({box.key})")
    checked = check_samples(
        anomalous, cache=cache, decode=False, box_config=box, workers=args.workers,
        progress=_progress(args.quiet, "boxes"),
    )
    cache.save()
    ok = [c.sample for c in checked if not c.excluded]
    problems = [p for c in checked for p in c.problems]
    per_cat: dict[str, Counter] = {}
    for s in ok:
        c = per_cat.setdefault(s.category, Counter())
        c["images"] += 1
        c["boxes"] += len(s.boxes or [])
        c["max"] = max(c["max"], len(s.boxes or []))
    if args.out:
        write_manifest(ok, args.out)
    previews = 0
    if args.preview:
        for s in ok:
            write_preview(s, args.preview, max_side=args.preview_size)
            previews += 1
    summary = {
        "root": str(args.root),
        "layout": detection.layout,
        "box_config": {"kernel_size": box.kernel_size, "min_area": box.min_area},
        "categories": {
            k: {"images": v["images"], "boxes": v["boxes"], "max_per_image": v["max"],
                "mean_per_image": round(v["boxes"] / v["images"], 3) if v["images"] else 0.0}
            for k, v in sorted(per_cat.items())
        },
        "problems": [p.message for p in problems],
        "without_mask": without_mask,
        "previews": previews,
        "preview_dir": str(args.preview) if args.preview else None,
        "out": str(args.out) if args.out else None,
        "cache": {"path": str(cache_path) if cache_path else None, "hits": cache.hits, "misses": cache.misses},
    }
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"layout: {detection.layout}   boxes: {box.key}")
        print(f"{'category':<20}  {'images':>6}  {'boxes':>6}  {'mean':>5}  {'max':>4}")
        for k, v in summary["categories"].items():
            print(f"{k:<20}  {v['images']:>6}  {v['boxes']:>6}  {v['mean_per_image']:>5.2f}  {v['max_per_image']:>4}")
        if problems:
            print(f"\nproblems: {len(problems)} (left out)")
            for m in _limited(summary["problems"], args.all):
                print(f"  {m}")
        if without_mask:
            print(f"\nanomalous images without mask (no boxes): {len(without_mask)}")
            for m in _limited(without_mask, args.all):
                print(f"  {m}")
        if args.preview:
            print(f"\n{previews} previews written to {args.preview}")
        if args.out:
            print(f"samples with boxes written to {args.out}")
    return 1 if args.strict and problems else 0


# --- split ---------------------------------------------------------------------------------------

def cmd_split(args: argparse.Namespace) -> int:
    config = SplitConfig(
        protocol=args.protocol,
        train_fraction=args.train_fraction,
        seed=args.seed,
        reference=args.reference,
        source=args.source,
        box=BoxConfig(kernel_size=args.kernel_size, min_area=args.min_area),
    )
    sources = [DatasetSource.parse(d) for d in args.dataset]
    log = None if args.quiet else _err
    try:
        result = make_split(sources, config, out_dir=args.out, workers=args.workers, log=log, strict=args.strict)
    except SplitError as exc:
        _err(f"adfm-data split: refused (--strict): {exc}")
        return 1
    s = result.summary
    print(f"{s['protocol']} split, seed {s['seed']}, {s['reference']} references -> {args.out}")
    print(f"{'dataset/category':<32}  {'train n/a':>11}  {'test n/a':>11}")
    keys = sorted({(d, c) for part in ("train", "test") for d, cats in s["counts"][part].items() for c in cats})
    for d, c in keys:
        tr = s["counts"]["train"].get(d, {}).get(c, {"normal": 0, "anomalous": 0})
        te = s["counts"]["test"].get(d, {}).get(c, {"normal": 0, "anomalous": 0})
        print(f"{d + '/' + c:<32}  {tr['normal']:>5}/{tr['anomalous']:<5}  {te['normal']:>5}/{te['anomalous']:<5}")
    print(f"train: {len(result.train)} samples, test: {len(result.test)} samples")
    if s["excluded"]:
        print(f"\nleft out: {len(s['excluded'])} file(s) (listed in split.json)")
        for m in _limited([e["message"] for e in s["excluded"]], args.all):
            print(f"  {m}")
    if s["problems"]:
        print(f"\nwarnings: {len(s['problems'])} (samples kept; listed in split.json)")
        for m in _limited([e["message"] for e in s["problems"]], args.all):
            print(f"  {m}")
    if s["reference_warnings"]:
        print(f"\nreferences: {len(s['reference_warnings'])} warning(s)")
        for m in _limited(s["reference_warnings"], args.all):
            print(f"  {m}")
    return 0


# --- parser --------------------------------------------------------------------------------------

def _positive_int(text: str) -> int:
    v = int(text)
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {v}")
    return v


def _fraction(text: str) -> float:
    v = float(text)
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1 (exclusive), got {v}")
    return v


def _non_negative_int(text: str) -> int:
    v = int(text)
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be ≥ 0, got {v}")
    return v


def _common(p: argparse.ArgumentParser, strict_help: str) -> None:
    p.add_argument("--workers", type=_positive_int, default=default_workers(),
                   help="threads that open images and masks (default: %(default)s, the CPU count up to 8)")
    p.add_argument("--all", action="store_true", help="list every file in the text output, not the first 20 per group")
    p.add_argument("--quiet", action="store_true", help="no progress messages on stderr")
    p.add_argument("--strict", action="store_true", help=strict_help)


def _box_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--kernel-size", type=_positive_int, default=None,
                   help="side in pixels of the dilation kernel that merges mask fragments closer than it "
                        "(default: one model-grid cell of each image, about 2.9%% of a side)")
    p.add_argument("--min-area", type=_non_negative_int, default=DEFAULT_MIN_AREA,
                   help="drop mask components of fewer pixels than this beside a larger one "
                        "(default: %(default)s)")


def _layout_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--layout", choices=sorted(LAYOUTS), default=None,
                   help="read ROOT as this layout instead of detecting it (MVTec AD, MPDD, GoodsAD and DTD "
                        "share one structure and are told apart by category names)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-data",
        description="Datasets for adfm: read the benchmarks and station images in their native layouts, "
                    "derive pseudo-boxes from masks, write the paper's split manifests.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("inspect", help="name the layout of ROOT, count its images, list problems and skipped files",
                       description="Name the layout of ROOT, count images per category and label, open every "
                                   "image and mask, and list every problem and every skipped file by name.")
    p.add_argument("root", type=Path, metavar="ROOT", help="dataset folder (or a path,label CSV)")
    _layout_option(p)
    p.add_argument("--json", action="store_true", help="print the full report as JSON (every file listed)")
    p.add_argument("--quick", action="store_true",
                   help="read image headers only (fast; a truncated image body goes unnoticed)")
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON cache of file checks, so a re-run reopens only changed files")
    _common(p, "exit with status 1 when any problem is found (warnings such as a missing mask included)")
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("boxes", help="compute pseudo-boxes from the masks of ROOT; write previews or a manifest",
                       description="Compute the pseudo-boxes (dilate, connected components, enclosing boxes) of "
                                   "every anomalous image of ROOT that has a mask.")
    p.add_argument("root", type=Path, metavar="ROOT", help="dataset folder (or a path,label CSV)")
    _layout_option(p)
    _box_options(p)
    p.add_argument("--preview", type=Path, metavar="DIR", default=None,
                   help="write one PNG per image into DIR: mask tinted red, boxes in green")
    p.add_argument("--preview-size", type=_positive_int, default=1024, metavar="PX",
                   help="longest side of preview images (default: %(default)s)")
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N anomalous images")
    p.add_argument("--out", type=Path, default=None, metavar="FILE",
                   help="write the anomalous samples with their boxes as a JSONL manifest")
    p.add_argument("--cache", type=Path, default=None,
                   help="JSON box cache (default: next to --out as <name>.cache.json; none without --out)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    _common(p, "exit with status 1 when any mask cannot be used (unreadable, or not the image's size)")
    p.set_defaults(func=cmd_boxes)

    p = sub.add_parser("split", help="write the paper's train/test manifests (JSONL), reproducible by seed",
                       description="Draw the multi-domain or cross-dataset split and write train.jsonl, "
                                   "test.jsonl and split.json into --out, with pseudo-boxes and one normal "
                                   "reference per query. A cache next to them makes a re-run recompute nothing.")
    p.add_argument("--protocol", choices=PROTOCOLS, required=True,
                   help="multi-domain: a fraction of each dataset for training (stratified per category and "
                        "label), the rest for testing; cross-dataset: train on a fraction of --source, test "
                        "on the native test split of every other --dataset")
    p.add_argument("--dataset", action="append", required=True, metavar="[LAYOUT=]ROOT",
                   help="a dataset root, repeatable; prefix LAYOUT= to force its layout "
                        f"({', '.join(sorted(LAYOUTS))})")
    p.add_argument("--out", type=Path, required=True, metavar="DIR", help="folder for the manifests")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default: %(default)s)")
    p.add_argument("--train-fraction", type=_fraction, default=0.2,
                   help="share of each category drawn for training (default: %(default)s, as in the paper)")
    p.add_argument("--reference", choices=REFERENCE_MODES, default="similar",
                   help="normal reference per query: similar (colour histogram + SSIM, as MMAD), random, "
                        "or none (default: %(default)s)")
    p.add_argument("--source", default="mvtec", choices=sorted(LAYOUTS),
                   help="cross-dataset: the dataset trained on (default: %(default)s)")
    _box_options(p)
    _common(p, "exit with status 1 and write no manifest when any file would be left out of the split "
               "(unreadable image, unusable mask); warnings such as a missing mask do not count")
    p.set_defaults(func=cmd_split)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (DataFileError, FileNotFoundError, ValueError) as exc:
        _err(f"adfm-data {args.command}: error: {exc}")
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
