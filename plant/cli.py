"""`adfm-plant`: the plant server's command. Subcommands import their parts lazily.

    adfm-plant migrate --config /etc/adfm/plant.yaml      create or upgrade the database schema
    adfm-plant collect --config /etc/adfm/plant.yaml      follow every station into PostgreSQL (systemd)
    adfm-plant view --config /etc/adfm/plant.yaml         the plant view in the browser (systemd)
    adfm-plant passwd --users FILE --name anna            add or change a view user (asks the password)
    adfm-plant export-labels --config … --out DIR [--since … --until … --station … --recipe …]
    adfm-plant deploy MODEL_DIR --config … --station A [--station B | --line L]   copy, start shadow
    adfm-plant promote MODEL_ID --config … --station A --station B            canary A first, then B
    adfm-plant rollback --config … --station A [--line L]                     back to the previous model
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import os
import signal
import sys
import threading
from datetime import UTC, datetime
from pathlib import Path

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2  # the units' RestartPreventExitStatus: 2


def _setup_logging(level: str) -> None:
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), format=fmt, stream=sys.stderr)


def _when(text: str) -> datetime:
    """An ISO date or time; without a zone it is UTC."""
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an ISO date or time (e.g. 2026-03-01 or "
                                         "2026-03-01T06:00)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="adfm-plant", description="every station's results in PostgreSQL, "
                                     "a plant view in the browser, labels for the next training run")
    parser.add_argument("--log-level", default="INFO")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (("migrate", "create or upgrade the database schema"),
                       ("collect", "follow every configured station's bus into the database"),
                       ("view", "serve the plant view (read-only)")):
        p = sub.add_parser(name, help=text, description=text)
        p.add_argument("--config", required=True, type=Path, metavar="FILE", help="plant YAML")
    p = sub.add_parser("passwd", help="add a view user or change a password (basic authentication)")
    p.add_argument("--users", required=True, type=Path, metavar="FILE", help="the view's users_file")
    p.add_argument("--name", required=True)
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin (scripts)")
    p = sub.add_parser("export-labels", help="operators' decisions as a dataset adfm-data reads")
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="plant YAML")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="a new or empty folder")
    p.add_argument("--since", type=_when, help="captured at or after (ISO; UTC unless a zone is given)")
    p.add_argument("--until", type=_when, help="captured before")
    p.add_argument("--station", action="append", default=[], help="only these stations (repeatable)")
    p.add_argument("--recipe", help="only this recipe (the dataset's category)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    for name, text in (("deploy", "copy an exported model to stations (hashes checked) and start its shadow run"),
                       ("promote", "make a stored model active: the first station (canary) first, then the rest"),
                       ("rollback", "return stations to their previous active model")):
        p = sub.add_parser(name, help=text, description=text)
        if name == "deploy":
            p.add_argument("model", type=Path, metavar="MODEL_DIR", help="an exported model directory")
            p.add_argument("--no-shadow", action="store_true", help="copy only; start no shadow run")
        elif name == "promote":
            p.add_argument("model", metavar="MODEL_ID", help="the model id (as `adfm-appliance models` lists it)")
            p.add_argument("--canary-parts", type=int, default=20, metavar="N",
                           help="parts the canary decides with the new model before the others follow (default 20)")
            p.add_argument("--canary-timeout", type=float, default=600.0, metavar="S",
                           help="longest wait for those parts (default 600 s)")
        p.add_argument("--config", required=True, type=Path, metavar="FILE", help="plant YAML")
        p.add_argument("--station", action="append", default=[], help="a station id (repeatable; in this order)")
        p.add_argument("--line", help="every station of this line instead")
        p.add_argument("--operator", default="", help="who gives the command (journaled by each station)")
        p.add_argument("--json", action="store_true", help="print the steps as JSON")
    return parser


def _config(path: Path):
    from adfm.config import ConfigError

    from .config import load_config

    try:
        return load_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


def cmd_migrate(args) -> int:
    from .db import PlantDBError, connect, migrate

    config = _config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        with connect(config.database) as conn:
            done = migrate(conn)
    except PlantDBError as exc:
        print(f"adfm-plant migrate: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print("applied: " + ", ".join(done) if done else "the schema is up to date")
    return EXIT_OK


def cmd_collect(args) -> int:
    from .collector import run_collector
    from .db import PlantDBError

    config = _config(args.config)
    if config is None:
        return EXIT_CONFIG
    if not config.stations:
        print(f"{args.config}: stations: none configured; nothing to collect", file=sys.stderr)
        return EXIT_CONFIG
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        followers = run_collector(config, stop)
    except PlantDBError as exc:
        print(f"adfm-plant collect: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for f in followers:
        logging.getLogger("adfm.plant").info("%s: %d results, %d verdicts stored", f.section.id,
                                             f.stats.results, f.stats.verdicts)
    return EXIT_OK


def cmd_view(args) -> int:
    from .db import PlantDBError
    from .view import serve

    config = _config(args.config)
    if config is None:
        return EXIT_CONFIG
    try:
        serve(config)
    except PlantDBError as exc:
        print(f"adfm-plant view: {exc}", file=sys.stderr)
        return EXIT_FAIL
    return EXIT_OK


def cmd_passwd(args) -> int:
    from .auth import AuthError, set_password

    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = getpass.getpass(f"password for {args.name}: ")
        if getpass.getpass("again: ") != password:
            print("the passwords differ", file=sys.stderr)
            return EXIT_FAIL
    try:
        set_password(args.users, args.name, password)
    except AuthError as exc:
        print(f"adfm-plant passwd: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"{args.users}: {args.name} set")
    return EXIT_OK


def cmd_export_labels(args) -> int:
    from .db import PlantDBError
    from .export_labels import ExportError, ExportOptions, export_labels, format_report

    config = _config(args.config)
    if config is None:
        return EXIT_CONFIG
    opts = ExportOptions(out=args.out, since=args.since, until=args.until, stations=tuple(args.station),
                         recipe=args.recipe)
    try:
        report = export_labels(config, opts)
    except (ExportError, PlantDBError) as exc:
        print(f"adfm-plant export-labels: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(report.to_json(), indent=2) if args.json else format_report(report))
    return EXIT_FAIL if report.errors else EXIT_OK


def cmd_rollout(args) -> int:
    from . import rollout

    config = _config(args.config)
    if config is None:
        return EXIT_CONFIG
    say = None if args.json else print
    try:
        sections = rollout.select(config, args.station, args.line)
        if args.command == "deploy":
            done = rollout.deploy(config, args.model, sections, shadow=not args.no_shadow, operator=args.operator,
                                  say=say)
        elif args.command == "promote":
            done = rollout.promote(config, args.model, sections, operator=args.operator,
                                   canary_parts=args.canary_parts, canary_timeout_s=args.canary_timeout, say=say)
        else:
            done = rollout.rollback(config, sections, operator=args.operator, say=say)
    except rollout.RolloutError as exc:
        print(f"adfm-plant {args.command}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(done.to_json(), indent=2))
    return EXIT_OK if done.ok else EXIT_FAIL


COMMANDS = {"migrate": cmd_migrate, "deploy": cmd_rollout, "promote": cmd_rollout, "rollback": cmd_rollout,
            "collect": cmd_collect, "view": cmd_view, "passwd": cmd_passwd,
            "export-labels": cmd_export_labels}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.log_level)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
