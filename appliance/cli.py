"""`adfm-appliance`: the line PC's command. Subcommands import their heavy parts lazily.

    adfm-appliance run --config /etc/adfm/station.yaml     the station service (systemd runs this)
    adfm-appliance check --config station.yaml            validate a config and what it points at
    adfm-appliance demo [--parts N] [--json]              a synthetic station with a tiny model
    adfm-appliance keys --dir /etc/adfm/keys [--admit review=review.key]   station CURVE keys, admit clients
    adfm-appliance client-key --dir ~/.config/adfm/keys --name review   a client's own key pair
    adfm-appliance journal check|recover --config station.yaml   verify / mend the journal
    adfm-appliance install [--dry-run] [--root DIR]       the systemd unit and an example config
    adfm-appliance tail | status | verdict                follow a station's bus, ask its health,
                                                          record an operator's decision
    adfm-appliance camera-probe URL                       try a camera the way the service opens it
    adfm-appliance gate history|undo --config station.yaml   the gate's lessons from operators; undo
    adfm-appliance models [list|add|compare|shadow|promote|rollback]   the station's models (see models/cli.py)
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, get_args

from adfm.schema import OperatorDecision

if TYPE_CHECKING:
    from .config.station import ModelSection

EXIT_OK, EXIT_FAIL, EXIT_CONFIG, EXIT_JOURNAL = 0, 1, 2, 3  # the unit's RestartPreventExitStatus: 2 3


class RedactingFormatter(logging.Formatter):
    """Log lines (tracebacks included) with URL passwords replaced: a camera URL inside an
    exception must not reach the system log."""

    def format(self, record: logging.LogRecord) -> str:
        from adfm.config import redact_secrets

        return redact_secrets(super().format(record))


def _setup_logging(level: str, verbose: int = 0) -> None:
    """The station's log: `level` for adfm's own lines (DEBUG with -v), the chatty libraries
    (asyncua, pymodbus) kept to what a station's log needs unless -v/-vv (system.logs)."""
    from .system.logs import quiet_libraries

    # Under systemd, journald stamps each line itself.
    fmt = "%(levelname)s %(name)s: %(message)s" if os.environ.get("JOURNAL_STREAM") else (
        "%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(RedactingFormatter(fmt))
    chosen = "DEBUG" if verbose else level
    logging.basicConfig(level=getattr(logging, chosen.upper(), logging.INFO), handlers=[handler])
    quiet_libraries(verbose)


def _add_client_args(p: argparse.ArgumentParser, publish: bool) -> None:
    if publish:
        p.add_argument("--publish", required=True, metavar="ENDPOINT", help="the station's PUB endpoint")
    p.add_argument("--control", required=True, metavar="ENDPOINT", help="the station's control endpoint")
    p.add_argument("--server-key", type=Path, metavar="FILE", help="the station's server.key (CURVE)")
    p.add_argument("--client-key", type=Path, metavar="FILE", help="this client's NAME.key_secret (CURVE)")
    p.add_argument("--timeout", type=float, default=5.0, metavar="S", help="reply timeout per try (default 5)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="adfm-appliance",
        description="adfm inspection appliance: run the station service and its tools.",
    )
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="more log: -v adfm's debug lines and the libraries' (asyncua, pymodbus) INFO, -vv all")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    from adfm.camera import probe

    probe.add_arguments(
        sub.add_parser(
            "camera-probe",
            help="open a camera source the way the service would and report what it delivers",
            description=probe.__doc__,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
    )

    from .plc import probe as plc_probe

    plc_probe.add_arguments(sub.add_parser(
        "plc-probe", help="check a station's PLC link: read the trigger (pulse the reject only when asked)",
        description=plc_probe.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    from .models import cli as models_cli

    models_cli.add_arguments(sub.add_parser(
        "models", help="the station's model store: list, add, compare a shadowed candidate, promote, roll back",
        description=models_cli.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter))

    p = sub.add_parser("run", help="run the station service", description=(
        "Run the station: cameras → gate → model → journal → result bus, until SIGTERM/SIGINT. "
        "Under systemd (Type=notify) it reports READY and feeds the watchdog while healthy."))
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="station YAML")
    p.add_argument("--max-parts", type=int, metavar="N", help="stop after N parts (testing)")
    p.add_argument("--until-sources-end", action="store_true",
                   help="stop when every camera source is finished (non-looping replays)")

    p = sub.add_parser("check", help="check a station before `run`: config, files, access, ports, model load; "
                       "--probe: PLC and cameras", description=(
        "Everything `run` would fail on, without starting the line: the config's form, the files it names, "
        "that the service user can read and list them, that the ports are free, that every model (model.dir "
        "and each recipe's) loads with the context and answer length it will get. With --probe, also the "
        "PLC (connect, read the trigger) and one frame from each camera (a trigger fired for a camera that "
        "waits for one). Each problem names the file, the key, what is wrong and how to fix it. Exit 0: "
        "ready to run; 2: the config or what it names; 1: only a probe failed."))
    p.add_argument("--config", required=True, type=Path, metavar="FILE")
    p.add_argument("--user", metavar="NAME", help="the service user whose access is checked "
                   "(default: the unit's user adfm where it exists, else the one running check)")
    p.add_argument("--probe", action="store_true", help="also reach the PLC and take a frame from each camera")
    p.add_argument("--no-load", action="store_true", help="skip loading the model (quick; hashes still checked)")
    p.add_argument("--json", action="store_true", help="print the resolved config as JSON")

    p = sub.add_parser("demo", help="run a synthetic station with a tiny model trained on synthetic parts",
                       description=(
        "Builds (once, cached) a tiny Qwen2.5-VL warm-started on synthetic parts and its GGUF, fits the "
        "screening gate, writes a synthetic station (a folder camera over held-out synthetic washers), runs "
        "the real service for N parts and prints a summary: verdicts, accuracy against the synthetic ground "
        "truth, one part's reasoning and boxes. The model is a toy trained on synthetic parts."))
    p.add_argument("--parts", type=int, default=8, metavar="N", help="parts to inspect (default 8)")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    p.add_argument("--model", type=Path, metavar="DIR", help="an exported model directory to use instead")
    p.add_argument("--cache", type=Path, metavar="DIR", help="where the tiny model and runs are kept "
                   "(default $XDG_CACHE_HOME/adfm/demo)")

    p = sub.add_parser("keys", help="the station's CURVE keys; admit clients' public keys", description=(
        "Creates the station's key pair (once) and admits clients: each client makes its own pair "
        "with `adfm-appliance client-key` on its machine and sends only NAME.key here."))
    p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="key directory (e.g. /etc/adfm/keys)")
    p.add_argument("--admit", action="append", default=[], metavar="NAME=FILE",
                   help="admit a client's public key file (repeatable), e.g. review=review.key: a relative FILE is "
                   "looked for in the working directory, then in --dir")
    p.add_argument("--operators", metavar="A,B", help="with one --admit: the operator names that key may sign "
                   "verdicts as (default: any, recorded with the key's name)")
    p.add_argument("--roles", metavar="A,B", help="with one --admit: what that key may do: verdict, recipe, "
                   "model (default: verdict; a line controller needs recipe)")
    p.add_argument("--force", action="store_true", help="replace existing keys (locks out old clients)")

    p = sub.add_parser("client-key", help="create this client's CURVE key pair (run on the client)")
    p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="this client's key folder")
    p.add_argument("--name", required=True, help="the client's name, e.g. review")
    p.add_argument("--force", action="store_true", help="replace an existing pair")

    p = sub.add_parser("opcua-user", help="add or change an OPC UA user (password, roles, certificate)",
                       description="Writes DIR/users/NAME.password (a scrypt hash), NAME.roles and NAME.der|pem "
                       "in the station's opcua.pki_dir; restart the service after changes.")
    p.add_argument("--dir", required=True, type=Path, metavar="DIR", help="the station's opcua.pki_dir")
    p.add_argument("--name", required=True, help="the user's name, e.g. mes")
    p.add_argument("--roles", metavar="A,B", help="what the user may change: recipe (default: nothing, "
                   "reading results through methods only)")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin "
                   "(default: ask for it)")
    p.add_argument("--no-password", action="store_true", help="log in with a certificate only")
    p.add_argument("--cert", type=Path, metavar="FILE", help="the user's X509 identity certificate (.der or .pem)")

    p = sub.add_parser("journal", help="check or recover the station journal (service stopped)")
    p.add_argument("action", choices=["check", "recover"])
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--config", type=Path, metavar="FILE", help="station YAML (its state_dir)")
    where.add_argument("--dir", type=Path, metavar="DIR", help="the journal directory")
    p.add_argument("--station", help="station id, when a damaged journal no longer says")

    from .system import gate_cli

    gate_cli.add_arguments(sub.add_parser(
        "gate", help="what the line taught the screening gate; undo the last change",
        description="The gate's versions learned from operator verdicts (gate.learn), and undo."))

    p = sub.add_parser("install", help="install the systemd unit and an example station config",
                       description="Writes the systemd unit (/etc/systemd/system/adfm-appliance.service) and, "
                       "when none is there, an example station config (/etc/adfm/station.yaml; an existing one is "
                       "kept and the example written beside it), then verifies the unit and prints the next steps. "
                       "See what it would do first with --dry-run.")
    p.add_argument("--dry-run", action="store_true", help="say what would be written or removed, write nothing")
    p.add_argument("--print", action="store_true", dest="print_only", help="print the unit (and GPU drop-in), "
                   "write nothing")
    p.add_argument("--root", type=Path, default=Path("/"), metavar="DIR",
                   help="write under DIR instead of / (a system image, a scratch tree); the unit names the paths "
                   "as the installed system sees them")
    p.add_argument("--unit-dir", type=Path, default=Path("/etc/systemd/system"), metavar="DIR",
                   help="where the unit goes (default /etc/systemd/system)")
    p.add_argument("--config-path", type=Path, default=Path("/etc/adfm/station.yaml"), metavar="FILE",
                   help="the station config the unit runs (default /etc/adfm/station.yaml)")
    p.add_argument("--user", default="adfm", help="system user the service runs as (default adfm)")
    p.add_argument("--bin-dir", metavar="DIR", help="folder holding adfm-appliance (default: this install's)")
    p.add_argument("--force", action="store_true", help="overwrite an existing station config")
    p.epilog = ("With a station config in place that asks for the GPU (model.n_gpu_layers, model.mmproj_gpu), "
                "install also writes the drop-in adfm-appliance.service.d/gpu.conf opening the GPU's device "
                "nodes; otherwise it removes it. Run it again after changing those fields.")

    p = sub.add_parser("tail", help="follow a station's results (JSON lines), gap-free")
    _add_client_args(p, publish=True)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--from-seq", type=int, default=None, metavar="SEQ", help="start at SEQ (default: new only)")
    start.add_argument("--all", action="store_true", help="start at seq 1")
    p.add_argument("--count", type=int, metavar="N", help="exit after N results")
    p.add_argument("--idle-exit", type=float, metavar="S", help="exit after S seconds without a result")

    p = sub.add_parser("status", help="print a station's status (JSON)")
    _add_client_args(p, publish=False)

    p = sub.add_parser("verdict", help="record an operator's decision on a result")
    _add_client_args(p, publish=False)
    p.add_argument("--seq", type=int, required=True)
    p.add_argument("--decision", required=True, choices=list(get_args(OperatorDecision)),
                   help="defect_wrong_box needs --box")
    p.add_argument("--operator", required=True)
    p.add_argument("--note", default="")
    p.add_argument("--part-id", help="the part judged (default: the part the station holds under --seq now)")
    p.add_argument("--box", action="append", default=[], metavar="X1,Y1,X2,Y2",
                   help="the corrected box in image pixels (defect_wrong_box; repeat for several)")
    return parser


# ---- commands ------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from .bus.server import BusError
    from .config.station import ConfigError, load_config
    from .inspection.worker import WorkerStartError
    from .journal.store import JournalCorrupt, JournalError
    from .modes.freerun import PipelineFatal
    from .service import Service, ServiceError

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    log = logging.getLogger("adfm.appliance")
    try:
        summary = Service(config).run(max_parts=args.max_parts, stop_when_finished=args.until_sources_end)
    except ServiceError as exc:
        log.error("%s", exc)
        return exc.exit_code
    except JournalCorrupt as exc:
        log.error("%s", exc)
        return EXIT_JOURNAL
    except (PipelineFatal, WorkerStartError, BusError, JournalError) as exc:
        log.error("%s", exc)
        return EXIT_FAIL
    logging.getLogger("adfm.appliance").info(
        "stopped (%s): %d parts this run, journal last seq %d", summary.stopped_because, summary.parts,
        summary.last_seq)
    return EXIT_OK


def cmd_check(args: argparse.Namespace) -> int:
    from .config.station import ConfigError, read_config

    try:
        config = read_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    if args.json:
        from adfm.config import redact_secrets

        print(redact_secrets(config.model_dump_json(indent=2)))  # camera URLs name passwords
        return EXIT_OK
    from adfm.manifest import ManifestError

    from .inspection.model_check import CACHE_NAME, verify_model_dir
    from .system.preflight import run_check

    report = run_check(config, args.config, user=args.user, load=not args.no_load, probe=args.probe)
    hashed = 0
    if not report.problems:
        try:  # the full check: every file hashed, and the start-up cache refreshed
            manifest, hashed = verify_model_dir(config.model.dir, config.journal_dir / CACHE_NAME, full=True)
        except ManifestError as exc:
            report.problems.append(f"{args.config}: model.dir: {exc}; copy the exported directory again")
    for note in report.notes:
        print(f"note: {note}")
    if not report.ok:
        problems = report.problems + report.probe_problems
        print(f"{args.config}: {len(problems)} problem(s) `run` would fail on:", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return EXIT_CONFIG if report.problems else EXIT_FAIL
    print(f"{args.config}: OK — station {config.station}, model {manifest.model_id} "
          f"({manifest.prompt_version}) on {_placement(config.model)}, {len(config.cameras)} camera(s), "
          f"journal in {config.journal_dir}, "
          f"bus {', '.join(config.bus.publish)} / {', '.join(config.bus.control)}; "
          + (f"MQTT to {config.mqtt.broker}{' (TLS)' if config.mqtt.tls else ''} under "
             f"{config.mqtt.topic_prefix(config.station)}/; " if config.mqtt is not None else "")
          + f"{hashed} model file(s) hashed and matching")
    for line in report.summary:
        print(f"  {line}")
    return EXIT_OK


def _placement(model: ModelSection) -> str:
    """Where the model runs, as `check` reports it."""
    if not model.uses_gpu:
        return "the CPU"
    layers = "all layers" if model.n_gpu_layers == -1 else f"{model.n_gpu_layers} layers"
    return f"the GPU ({layers}, projector on the {'GPU' if model.projector_on_gpu else 'CPU'})"


def _is_station_file(path: Path) -> bool:
    """A station file (with `cameras`) rather than one camera's settings."""
    import yaml

    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False  # the camera probe's own reader says what is wrong
    return isinstance(data, dict) and isinstance(data.get("cameras"), list)


def _station_camera(path: Path, camera: str | None) -> dict | None:
    """One camera of a station file, as the service would build it (relative paths from the file's
    folder), or None after saying what is wrong."""
    from .config.station import ConfigError, read_config

    try:
        config = read_config(path)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return None
    ids = [c.id for c in config.cameras]
    if camera is None and len(ids) > 1:
        print(f"{path}: cameras: the station has {len(ids)} cameras ({', '.join(ids)}); choose one with --camera ID",
              file=sys.stderr)
        return None
    if camera is not None and camera not in ids:
        print(f"{path}: cameras: no camera with id {camera!r}; the station's cameras: {', '.join(ids)}",
              file=sys.stderr)
        return None
    cam = next(c for c in config.cameras if c.id == (camera or ids[0]))
    return cam.camera_config().model_dump()


def cmd_keys(args: argparse.Namespace) -> int:
    from .bus.keys import CurveKeyError, admit_client, generate_server_keys

    for flag in ("operators", "roles"):
        if getattr(args, flag) is not None and len(args.admit) != 1:
            print(f"adfm-appliance keys: --{flag} goes with exactly one --admit", file=sys.stderr)
            return EXIT_FAIL
    try:
        made = generate_server_keys(args.dir, force=args.force and not args.admit)
        admitted = []
        for item in args.admit:
            name, sep, file = item.partition("=")
            if not sep:
                raise ValueError(f"--admit {item!r}: use NAME=FILE (the client's public NAME.key)")
            operators = [o.strip() for o in args.operators.split(",")] if args.operators is not None else None
            roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles is not None else None
            admitted.append((name, admit_client(args.dir, name, file, operators, force=args.force, roles=roles)))
    except (FileExistsError, ValueError, OSError, CurveKeyError) as exc:
        print(f"adfm-appliance keys: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"station key pair: {made.server_secret} (secret, stays here), {made.server_public} (give to clients)")
    for name, path in admitted:
        print(f"admitted client {name}: {path}")
    print(f"admitted client keys: {made.authorized_clients}/*.key (restart the service after changes)")
    print("station.yaml:\n  bus:\n    curve:\n"
          f"      server_secret: {made.server_secret}\n      authorized_clients: {made.authorized_clients}")
    return EXIT_OK


def cmd_client_key(args: argparse.Namespace) -> int:
    from .bus.keys import generate_client_keys

    try:
        public, secret = generate_client_keys(args.dir, args.name, force=args.force)
    except (FileExistsError, ValueError, OSError) as exc:
        print(f"adfm-appliance client-key: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(f"secret key: {secret} (mode 0600; never copy it off this machine)")
    print(f"public key: {public} — send it to the station's administrator, who runs\n"
          f"  adfm-appliance keys --dir /etc/adfm/keys --admit {args.name}={public.name}")
    print(f"and copy the station's server.key into {args.dir}")
    return EXIT_OK


def cmd_opcua_user(args: argparse.Namespace) -> int:
    try:
        from .plc.opcua.access import write_user
    except ImportError as exc:
        print(f"adfm-appliance opcua-user: needs the plc extra (asyncua): {exc}", file=sys.stderr)
        return EXIT_FAIL
    password = None
    if not args.no_password:
        if args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        else:
            import getpass

            password = getpass.getpass(f"password for {args.name}: ")
            if getpass.getpass("again: ") != password:
                print("adfm-appliance opcua-user: the passwords differ", file=sys.stderr)
                return EXIT_FAIL
    roles = [r.strip() for r in args.roles.split(",") if r.strip()] if args.roles is not None else []
    try:
        written = write_user(args.dir, args.name, password=password, roles=roles, certificate=args.cert)
    except (ValueError, OSError) as exc:
        print(f"adfm-appliance opcua-user: {exc}", file=sys.stderr)
        return EXIT_FAIL
    for path in written:
        print(f"wrote {path}")
    print(f"user {args.name}: roles {', '.join(roles) or 'none (reading only)'}; restart the service to apply")
    return EXIT_OK


def cmd_journal(args: argparse.Namespace) -> int:
    from .journal.repair import check_journal, recover_journal
    from .journal.store import JournalError

    station = args.station
    root = args.dir
    if args.config is not None:
        from .config.station import ConfigError, read_config

        try:
            config = read_config(args.config)
            root, station = config.journal_dir, station or config.station
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    try:
        if args.action == "check":
            report = check_journal(root)
            print(json.dumps(report.to_json(), indent=2))
            return EXIT_OK if report.ok else EXIT_FAIL
        done = recover_journal(root, station)
    except JournalError as exc:
        print(f"adfm-appliance journal {args.action}: {exc}", file=sys.stderr)
        return EXIT_FAIL
    print(json.dumps(done.to_json(), indent=2))
    return EXIT_OK


def cmd_install(args: argparse.Namespace) -> int:
    from .config.station import ConfigError
    from .system import install

    try:  # the GPU drop-in follows the station config in place
        p = install.plan(args.unit_dir, args.config_path, args.user, args.bin_dir, force=args.force, root=args.root)
    except ConfigError as exc:
        print(f"adfm-appliance install: {exc}\n(fix the config, then run install again)", file=sys.stderr)
        return EXIT_CONFIG
    if args.print_only:
        print(p.unit_text, end="")
        if p.gpu_dropin_text is not None:
            print(f"\n# {p.gpu_dropin_path}\n{p.gpu_dropin_text}", end="")
        return EXIT_OK
    try:
        done = install.install(p, force=args.force, dry_run=args.dry_run)
    except OSError as exc:
        print(f"adfm-appliance install: {exc} (run as root, see what it would do with --dry-run, or write "
              "under a folder of yours with --root DIR)", file=sys.stderr)
        return EXIT_FAIL
    for line in done:
        print(line)
    if args.dry_run:
        print("dry run: nothing written")
        return EXIT_OK
    ok, out = install.verify_unit(p.on_disk(p.unit_path))
    print(f"systemd-analyze verify: {'clean' if ok else 'PROBLEMS'}" + (f"\n{out}" if out else ""))
    print("next steps:")
    for step in p.steps():
        print(f"  {step}")
    return EXIT_OK if ok else EXIT_FAIL


def _client(args: argparse.Namespace, from_seq: int | None = None):
    from .bus.client import StationClient
    from .bus.keys import CurveKeyError, client_curve_from_options

    try:
        curve = client_curve_from_options(args.server_key, args.client_key)
    except CurveKeyError as exc:
        raise SystemExit(f"adfm-appliance: {exc}") from None
    return StationClient(getattr(args, "publish", "") or "", args.control, curve=curve,
                         timeout_s=args.timeout, from_seq=from_seq)


def cmd_tail(args: argparse.Namespace) -> int:
    from .bus.client import StationError

    from_seq = 1 if args.all else args.from_seq
    n = 0
    try:
        with _client(args, from_seq) as client:
            for result in client.results(idle_timeout_s=args.idle_exit):
                print(result.model_dump_json(), flush=True)
                n += 1
                if args.count is not None and n >= args.count:
                    break
    except StationError as exc:
        print(f"adfm-appliance tail: {exc}", file=sys.stderr)
        return EXIT_FAIL
    except KeyboardInterrupt:
        pass
    return EXIT_OK


def cmd_status(args: argparse.Namespace) -> int:
    from .bus.client import StationError

    client = _client(args)
    try:
        print(client.status().model_dump_json(indent=2))
    except StationError as exc:
        print(f"adfm-appliance status: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()
    return EXIT_OK


def cmd_verdict(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from adfm.schema import Box

    from .bus.client import StationError

    boxes = []
    for text in args.box:
        try:
            boxes.append(Box.from_xyxy([float(v) for v in text.split(",")]))
        except ValueError:
            print(f"adfm-appliance verdict: --box {text!r}: give four numbers X1,Y1,X2,Y2 in image pixels",
                  file=sys.stderr)
            return EXIT_FAIL
    client = _client(args)
    try:
        ack = client.send_verdict(args.seq, args.decision, args.operator, note=args.note, part_id=args.part_id,
                                  boxes=boxes)
        print(ack.detail)
    except ValidationError as exc:
        print(f"adfm-appliance verdict: {exc.errors()[0]['msg']}", file=sys.stderr)
        return EXIT_FAIL
    except StationError as exc:
        print(f"adfm-appliance verdict: {exc}", file=sys.stderr)
        return EXIT_FAIL
    finally:
        client.close()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from . import demo

    try:
        summary = demo.run_demo(parts=args.parts, model=args.model, cache=args.cache,
                                progress=None if args.json else print)
    except demo.DemoError as exc:
        print(f"adfm-appliance demo: {exc}", file=sys.stderr)
        return EXIT_FAIL
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(demo.format_summary(summary))
    return EXIT_OK if summary["parts"] >= args.parts else EXIT_FAIL


COMMANDS = {
    "run": cmd_run, "check": cmd_check, "keys": cmd_keys, "install": cmd_install, "tail": cmd_tail,
    "status": cmd_status, "verdict": cmd_verdict, "demo": cmd_demo, "client-key": cmd_client_key,
    "journal": cmd_journal, "opcua-user": cmd_opcua_user,
}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except BrokenPipeError:  # `adfm-appliance status | head`: the reader has gone, nothing is wrong
        from .system.logs import stdout_closed_quietly

        stdout_closed_quietly()
        return EXIT_OK


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "camera-probe":
        from adfm.camera import probe

        base = None
        if args.config is not None and _is_station_file(args.config):
            base = _station_camera(args.config, args.camera)
            if base is None:
                return EXIT_CONFIG
        elif args.camera is not None:
            print("camera-probe: --camera ID picks a camera of a station file (--config station.yaml)", file=sys.stderr)
            return EXIT_CONFIG
        return probe.run(args, base)
    if args.command == "gate":
        from .system import gate_cli

        _setup_logging("WARNING", args.verbose)
        return gate_cli.run(args)
    if args.command == "models":
        from .models import cli as models_cli

        _setup_logging("WARNING" if args.log_level == "INFO" else args.log_level)
        return models_cli.run(args)
    if args.command == "plc-probe":
        from .plc import probe as plc_probe

        _setup_logging("ERROR", args.verbose)
        return plc_probe.run(args)
    _setup_logging("WARNING" if args.command in ("demo", "tail", "status", "verdict") and args.log_level == "INFO"
                   else args.log_level, args.verbose)
    return COMMANDS[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
