"""`adfm-appliance gate history|undo`: what the line taught the gate, and taking the last lesson back.

Undo works while the station runs: it puts the previous version's files back (byte for byte, under
the learner's lock) and the station swaps to them between two parts (system/gate_watch.py).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["history", "undo"], help="list the gate's versions, or undo the last change")
    p.add_argument("--config", required=True, type=Path, metavar="FILE", help="station YAML (gate.learn set)")
    p.add_argument("--recipe", metavar="NAME", help="the recipe whose gate (default: gate.path)")
    p.add_argument("--operator", metavar="NAME", help="who undoes it (recorded; required for undo)")


def run(args: argparse.Namespace) -> int:
    from adfm.runtime.gate import GateError

    from ..config.station import ConfigError, read_config
    from .gate_watch import open_learner

    try:
        config = read_config(args.config)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    path = config.gate.path
    if args.recipe is not None:
        recipe = next((r for r in config.recipes if r.name == args.recipe), None)
        if recipe is None:
            names = ", ".join(r.name for r in config.recipes) or "none"
            print(f"{args.config}: recipes: no recipe {args.recipe!r} (the config has: {names})", file=sys.stderr)
            return 2
        path = recipe.gate_path or path
    if path is None:
        print(f"{args.config}: gate.path: not set, so there is no gate to {args.action}", file=sys.stderr)
        return 2
    if args.action == "undo" and not args.operator:
        print("adfm-appliance gate undo: --operator NAME is required (recorded in the gate's history)",
              file=sys.stderr)
        return 2
    try:
        learner = open_learner(config.gate, path)
        with learner.locked():
            if args.action == "history":
                print(json.dumps(learner.history(), indent=2))
                return 0
            change = learner.undo(operator=args.operator)
    except GateError as exc:
        print(f"adfm-appliance gate {args.action}: {exc}", file=sys.stderr)
        return 1
    print(f"gate {path}: back to bank {change.bank_sha256_after[:12]} ({change.bank_size_after} patches, "
          f"threshold {change.threshold_after:.4f}); a running station takes it between two parts")
    return 0
