"""`adfm-review`: the operators' dashboard, and `adfm-review export-labels`.

    adfm-review --connect tcp://station:5560 [--control tcp://station:5561] [--keys DIR]
                [--operator NAME] [--images JOURNAL_DIR]        follow a station live, decide parts
    adfm-review --journal /var/lib/adfm-appliance/journal         browse a journal (read-only)
    adfm-review export-labels --journal DIR --out ROOT [--layout folder|csv] [--product NAME]
                                                                 decisions out as an adfm-data dataset

Exit status: 0 done; 1 export left out parts it should have written (unreadable images);
2 bad arguments, keys, journal or output folder (the message names which).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import os
import sys
from datetime import UTC, datetime
from datetime import time as dt_time
from pathlib import Path

from .export_labels import ExportError, ExportOptions, export_labels, format_report
from .store import DEFAULT_SHIFTS

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2


class UsageError(ValueError):
    """Arguments that cannot work together, or files they name that cannot be used."""


def _default_operator() -> str:
    name = os.environ.get("ADFM_OPERATOR", "")
    if not name:
        try:
            name = getpass.getuser()
        except (KeyError, OSError):
            name = ""
    return name


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-review",
        description="Review flagged parts of an adfm station: live feed, review queue, part detail (image "
                    "with the model's boxes, its think/rethink/answer), station status. Keys for everything; "
                    "press ? inside for the list.",
        epilog="Verdicts are written to a local outbox before they are sent, so none is lost while the station "
               "is unreachable; they are sent on reconnection (or at the next start).",
    )
    src = parser.add_mutually_exclusive_group()
    src.add_argument("--connect", metavar="ENDPOINT",
                     help="the station's PUB endpoint, e.g. tcp://10.0.0.5:5560 (its bus.publish)")
    src.add_argument("--journal", type=Path, metavar="DIR",
                     help="browse a station journal directory read-only (no verdicts)")
    parser.add_argument("--control", metavar="ENDPOINT",
                        help="the station's control endpoint (default: the --connect port + 1)")
    parser.add_argument("--keys", type=Path, metavar="DIR",
                        help="CURVE key folder: the station's server.key and this client's NAME.key_secret "
                             "(from `adfm-appliance client-key`)")
    parser.add_argument("--client-name", default="review", metavar="NAME",
                        help="client key name inside --keys (default: review)")
    parser.add_argument("--server-key", type=Path, metavar="FILE", help="the station's server.key (CURVE)")
    parser.add_argument("--client-key", type=Path, metavar="FILE", help="this client's NAME.key_secret (CURVE)")
    parser.add_argument("--operator", default=_default_operator(), metavar="NAME",
                        help="who decides (journaled with each verdict; default $ADFM_OPERATOR or the login)")
    parser.add_argument("--state-dir", type=Path, metavar="DIR",
                        help="where queued verdicts are kept (default $XDG_STATE_HOME/adfm-review)")
    parser.add_argument("--images", type=Path, metavar="DIR",
                        help="the station's journal directory, to show part images (when on the line PC)")
    parser.add_argument("--history", type=int, default=5000, metavar="N",
                        help="parts loaded at start, newest back (default 5000)")
    parser.add_argument("--image", choices=("auto", "halfblock"), default="auto",
                        help="auto: real pixels where the terminal can (sixel/kitty), else half-blocks")
    parser.add_argument("--utc", action="store_true", help="show times in UTC instead of local time")
    parser.add_argument("--shifts", type=_shifts, default=DEFAULT_SHIFTS, metavar="HH:MM,…",
                        help="when shifts change, local time (default 06:00,14:00,22:00): the run view "
                             "counts parts and yield since the latest")
    parser.add_argument("--timeout", type=float, default=1.5, metavar="S",
                        help="reply timeout of the station's control socket (default 1.5)")

    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    e = sub.add_parser("export-labels", help="operator decisions out as a dataset adfm-data reads",
                       description="Write operator-confirmed parts as the generic station dataset adfm-data reads: "
                                   "confirmed defects → anomalous, false alarms → normal; skipped parts stay out.")
    e.add_argument("--journal", type=Path, required=True, dest="export_journal", metavar="DIR",
                   help="the station's journal directory (read-only)")
    e.add_argument("--out", type=Path, required=True, metavar="ROOT",
                   help="dataset folder (new or empty, or an earlier export to replace)")
    e.add_argument("--layout", choices=("folder", "csv"), default="folder",
                   help="folder: ROOT/normal, ROOT/anomalous (one product); csv: ROOT/labels.csv with a category")
    e.add_argument("--camera", action="append", default=[], metavar="ID", help="only these cameras (repeatable)")
    e.add_argument("--product", metavar="NAME", help="only this product")
    e.add_argument("--since", type=_when, metavar="TIME", help="captured at or after (ISO 8601; local if no zone)")
    e.add_argument("--until", type=_when, metavar="TIME", help="captured before (ISO 8601)")
    e.add_argument("--masks-from-boxes", action="store_true",
                   help="write masks from the model's boxes of confirmed defects (the operator confirmed the part, "
                        "not each box)")
    e.add_argument("--dry-run", action="store_true", help="count only; write nothing")
    e.add_argument("--json", action="store_true", help="print the report as JSON")
    return parser


def _shifts(text: str) -> tuple[dt_time, ...]:
    out = []
    for item in text.split(","):
        try:
            out.append(dt_time.fromisoformat(item.strip()))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item.strip()!r} is not a time of day (HH:MM); "
                                              "give shift changes like 06:00,14:00,22:00") from None
    return tuple(sorted(out))


def _when(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO 8601 time (e.g. 2026-03-02 or 2026-03-02T08:00)") \
            from exc
    return dt.astimezone() if dt.tzinfo is None else dt


def control_for(publish: str) -> str:
    """The control endpoint by the appliance's convention: same host, the publish port + 1."""
    scheme, sep, rest = publish.partition("://")
    host, _, port = rest.rpartition(":")
    if scheme != "tcp" or not sep or not host or not port.isdigit():
        raise UsageError(f"--connect {publish}: cannot derive the control endpoint; pass --control ENDPOINT")
    return f"tcp://{host}:{int(port) + 1}"


def load_curve(args: argparse.Namespace):
    """The client's CURVE keys from --keys DIR or --server-key/--client-key, None without them."""
    from ..bus.keys import CLIENT_SECRETS_DIR, CurveKeyError, load_client_curve

    try:
        if args.keys is not None:
            if args.server_key or args.client_key:
                raise UsageError("give --keys DIR or --server-key/--client-key, not both")
            candidates = [args.keys / CLIENT_SECRETS_DIR / f"{args.client_name}.key_secret",
                          args.keys / f"{args.client_name}.key_secret"]
            secret = next((c for c in candidates if c.is_file()), None)
            if secret is None:
                raise UsageError(f"--keys {args.keys}: no client key {args.client_name!r} (looked for "
                                 f"{' and '.join(map(str, candidates))}); create it on this machine with "
                                 f"`adfm-appliance client-key --dir {args.keys} --name {args.client_name}` "
                                 "and have the station admit the public key")
            return load_client_curve(args.keys / "server.key", secret)
        if args.server_key or args.client_key:
            if not (args.server_key and args.client_key):
                raise UsageError("CURVE needs both --server-key and --client-key")
            return load_client_curve(args.server_key, args.client_key)
    except CurveKeyError as exc:
        raise UsageError(str(exc)) from exc
    return None


def build_app(args: argparse.Namespace):
    """The app for the parsed arguments (not started); raises UsageError."""
    from .app import ReviewApp
    from .outbox import OutboxError, VerdictOutbox, default_state_dir
    from .sources import JournalSource, LiveOptions, LiveSource

    if not args.operator.strip():
        raise UsageError("--operator: no operator name (set it, or $ADFM_OPERATOR)")
    if args.history < 1:
        raise UsageError(f"--history must be ≥ 1, got {args.history}")
    tz = UTC if args.utc else None
    if args.journal is not None:
        from .journal_reader import JournalReader, JournalReadError

        try:
            JournalReader(args.journal).close()  # fail now, with the reason, rather than inside the TUI
        except JournalReadError as exc:
            raise UsageError(f"--journal: {exc}") from exc
        source = JournalSource(args.journal, history=args.history)
    elif args.connect is not None:
        control = args.control or control_for(args.connect)
        curve = load_curve(args)
        try:
            outbox = VerdictOutbox.in_dir(args.state_dir or default_state_dir())
        except OutboxError as exc:
            raise UsageError(f"--state-dir: {exc}") from exc
        source = LiveSource(args.connect, control, outbox, curve=curve, images_dir=args.images,
                            options=LiveOptions(history=args.history, timeout_s=args.timeout))
    else:
        raise UsageError("give --connect ENDPOINT (a live station) or --journal DIR (read-only), "
                         "or a command such as export-labels")
    return ReviewApp(source, operator=args.operator, tz=tz, graphics=False, shifts=args.shifts)


def _detect_graphics() -> bool:
    """Ask the terminal (before Textual owns it) whether it shows real pixels."""
    # A terminal that does not answer textual-image's queries is normal (half-blocks then); its
    # warning, with a traceback, would otherwise land on the screen before the dashboard starts.
    logging.getLogger("textual_image").setLevel(logging.CRITICAL)
    try:
        import textual_image.renderable  # its import queries the terminal
        import textual_image.widget  # noqa: F401  (caches the cell size)

        from .widgets.part_image import graphics_available

        return graphics_available()
    except Exception:
        return False


def cmd_export(args: argparse.Namespace) -> int:
    opts = ExportOptions(journal=args.export_journal, out=args.out, layout=args.layout, cameras=tuple(args.camera),
                         product=args.product, since=args.since, until=args.until,
                         masks_from_boxes=args.masks_from_boxes, dry_run=args.dry_run)
    from .journal_reader import JournalReadError

    try:
        report = export_labels(opts)
    except (ExportError, JournalReadError) as exc:
        print(f"adfm-review export-labels: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        import json

        print(json.dumps(report.to_json(), indent=2))
    else:
        print(format_report(report))
    return EXIT_FAIL if report.errors else EXIT_OK


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "export-labels":
        return cmd_export(args)
    try:
        app = build_app(args)
    except UsageError as exc:
        print(f"adfm-review: {exc}", file=sys.stderr)
        return EXIT_USAGE
    app.graphics = args.image == "auto" and _detect_graphics()
    app.run()
    outbox = getattr(app.source, "outbox", None)
    if outbox is not None:
        queued = len(outbox.queued())
        if queued:
            print(f"adfm-review: {queued} verdict(s) not yet at the station are kept in {outbox.path}; "
                  "they are sent at the next start", file=sys.stderr)
        outbox.close()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
