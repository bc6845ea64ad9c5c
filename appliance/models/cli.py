"""`adfm-appliance models`: the station's model store, shadow comparison, promotion and rollback.

    adfm-appliance models [list] --config station.yaml           stored models: active, shadow, candidates
    adfm-appliance models add DIR --config station.yaml          copy an exported model in (hashes checked)
    adfm-appliance models compare [MODEL] --config station.yaml  a shadowed candidate vs the active model
                                                                 and the operators' verdicts
    adfm-appliance models shadow MODEL --control EP …            run a stored candidate in shadow
    adfm-appliance models shadow-stop --control EP …             stop the shadow run
    adfm-appliance models promote MODEL --control EP …           make a candidate the active model
    adfm-appliance models rollback --control EP …                back to the previous active model

`list`, `add` and `compare` work on the station's files (its state_dir), with the service running
or not. The others are commands to the running station over its control socket and need a key
with the `model` role (`adfm-appliance keys --admit NAME=FILE --roles model`); the station applies
them between two parts and journals each one, accepted or refused, with the key and operator.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ACTIONS = ("list", "add", "compare", "shadow", "shadow-stop", "promote", "rollback")
REMOTE = {"shadow": "shadow", "shadow-stop": "shadow_stop", "promote": "promote", "rollback": "rollback"}
EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", nargs="?", default="list", choices=ACTIONS, help="what to do (default: list)")
    p.add_argument("target", nargs="?", metavar="DIR|MODEL", help="add: the exported model directory; "
                   "compare (optional), shadow, promote: the model id")
    p.add_argument("--config", type=Path, metavar="FILE", help="station YAML (list, add, compare)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--active", metavar="MODEL", help="compare: only parts decided with this model")
    p.add_argument("--control", metavar="ENDPOINT", help="the station's control endpoint (shadow, promote, rollback)")
    p.add_argument("--server-key", type=Path, metavar="FILE", help="the station's server.key (CURVE)")
    p.add_argument("--client-key", type=Path, metavar="FILE", help="this client's NAME.key_secret (CURVE)")
    p.add_argument("--operator", default="", help="who gives the command (journaled with the key)")
    p.add_argument("--timeout", type=float, default=30.0, metavar="S", help="reply timeout (default 30; sent once)")


def _fail(msg: str, code: int = EXIT_FAIL) -> int:
    print(f"adfm-appliance models: {msg}", file=sys.stderr)
    return code


def run(args: argparse.Namespace) -> int:
    if args.action in REMOTE:
        return _remote(args)
    if args.config is None:
        return _fail(f"{args.action} needs --config (the station's YAML)", EXIT_CONFIG)
    from ..config.station import ConfigError, read_config

    try:
        config = read_config(args.config)
        state_dir = config.journal_dir
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    from .store import ModelStore, ModelStoreError

    store = ModelStore.for_state_dir(state_dir)
    try:
        if args.action == "add":
            if not args.target:
                return _fail("add needs the exported model directory")
            model_id, added = store.add(Path(args.target))
            print(f"{model_id}: {'added, every file hashed and matching' if added else 'already in the store'} "
                  f"({store.path(model_id)})")
            return EXIT_OK
        if args.action == "list":
            return _list(store, config.model.dir, args.json)
        return _compare(store, state_dir, args)
    except ModelStoreError as exc:
        return _fail(str(exc))


def _list(store, config_dir: Path, as_json: bool) -> int:
    from adfm.manifest import ManifestError, read_manifest

    models = store.models()
    state = store.state()
    try:
        configured = read_manifest(config_dir).model_id
    except ManifestError:
        configured = None
    if as_json:
        print(json.dumps({"store": str(store.root), "state": state.to_json(), "config_model": configured,
                          "models": [m.to_json() for m in models]}, indent=2))
        return EXIT_OK
    active = state.active or configured
    print(f"store {store.root}: {len(models)} model(s); active {active or 'none'}"
          f"{'' if state.active else ' (the config model.dir)'}")
    for m in models:
        size = sum(f.size for f in m.manifest.files) / 1e6
        print(f"  {m.role:<9} {m.model_id:<40} {m.manifest.prompt_version:<16} {size:8.1f} MB  "
              f"exported {m.manifest.created_at:%Y-%m-%d %H:%M}")
    if state.previous:
        print(f"rollback goes back to {state.previous[-1]}")
    return EXIT_OK


def _compare(store, state_dir: Path, args: argparse.Namespace) -> int:
    from ..journal.store import DB_NAME
    from .compare import compare, comparison_json, format_comparison, shadow_models

    db = Path(state_dir) / DB_NAME
    try:
        candidate = args.target or store.state().shadow
        if not candidate:
            shadowed = shadow_models(db)
            if not shadowed:
                return _fail(f"{db}: no shadow results yet (start one with `adfm-appliance models shadow MODEL`)")
            candidate = shadowed[-1]
        c = compare(db, candidate, active=args.active)
    except (FileNotFoundError, OSError) as exc:
        return _fail(str(exc))
    print(comparison_json(c) if args.json else format_comparison(c))
    return EXIT_OK


def _remote(args: argparse.Namespace) -> int:
    from adfm.schema import Ack, ModelRequest

    from ..bus.client import StationClient, StationError
    from ..bus.keys import CurveKeyError, client_curve_from_options

    if not args.control:
        return _fail(f"{args.action} is a command to the running station: give --control ENDPOINT")
    if args.action in ("shadow", "promote") and not args.target:
        return _fail(f"{args.action} needs the model id (see `adfm-appliance models list`)")
    try:
        curve = client_curve_from_options(args.server_key, args.client_key)
    except CurveKeyError as exc:
        return _fail(str(exc))
    request = ModelRequest(action=REMOTE[args.action], model_id=args.target or "", operator=args.operator)
    # Sent once: a command that takes longer than the timeout must not be given twice.
    client = StationClient("", args.control, curve=curve, timeout_s=args.timeout, retries=1)
    try:
        reply = client.request(request)
    except StationError as exc:
        return _fail(str(exc))
    finally:
        client.close()
    if not isinstance(reply, Ack):
        return _fail(f"unexpected reply {reply.type!r}")
    print(reply.detail)
    return EXIT_OK
