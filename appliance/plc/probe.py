"""`adfm-appliance plc-probe CONFIG`: check a station's PLC link from the command line.

Connects to the PLC named in the config's `plc.modbus` section and reads what the station would
read: the trigger input, the part id, recipe and encoder registers and the result block. With
`--watch S` it counts the parts the trigger reports for S seconds (what a part passing the sensor looks like).
Nothing is written unless `--pulse-reject` is given: then the reject coil is pulsed once, for the
configured width — an output that moves a real ejector, so only with the line in a safe state.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", type=Path, nargs="?", metavar="CONFIG", help="station YAML with a plc.modbus section")
    p.add_argument("--config", type=Path, dest="config_file", metavar="FILE", help="the same, as --config")
    p.add_argument("--watch", type=float, default=0.0, metavar="S", help="count trigger edges for S seconds")
    p.add_argument("--pulse-reject", action="store_true",
                   help="pulse the reject coil once (moves the ejector: make the line safe first)")


def probe(args: argparse.Namespace) -> tuple[int, dict[str, Any]]:
    from ..config.station import ConfigError, read_config

    args.config = args.config or args.config_file
    if args.config is None:
        return EXIT_CONFIG, {"ok": False, "error": "give the station file: plc-probe --config FILE"}
    try:
        config = read_config(args.config)
    except ConfigError as exc:
        return EXIT_CONFIG, {"ok": False, "error": str(exc)}
    if config.plc is None:
        return EXIT_CONFIG, {"ok": False, "error": f"{args.config}: no plc section to probe"}
    try:
        from .modbus import ModbusClient, PlcError, new_parts, words_to_u32
    except ImportError as exc:
        return EXIT_FAIL, {"ok": False, "error": f"the PLC link needs the `plc` extra (pip install 'adfm[plc]'): {exc}"}
    cfg = config.plc.modbus
    out: dict[str, Any] = {"ok": False, "plc": f"{cfg.host}:{cfg.port}", "unit": cfg.unit}
    client = ModbusClient(cfg)
    try:
        t0 = time.perf_counter()
        client.connect()
        level = client.read_trigger()
        out["round_trip_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        key = "count" if cfg.trigger.table == "counter" else "level"
        out["trigger"] = {"table": cfg.trigger.table, "address": cfg.trigger.address,
                          key: level if key == "count" else bool(level)}
        if cfg.part_id_register is not None:
            out["part_id"] = words_to_u32(*client.read_registers(cfg.part_id_register, 2))
        if cfg.recipe_register is not None:
            code = client.read_registers(cfg.recipe_register, 1)[0]
            known = {r.code: r.name for r in config.recipes}
            out["recipe"] = {"code": code, "name": known.get(code)}
        ej = cfg.ejector
        if ej is not None and ej.encoder_register is not None:
            out["encoder"] = words_to_u32(*client.read_registers(ej.encoder_register, 2))
        regs = client.read_registers(cfg.result.base, 5)
        out["result"] = {"seq": words_to_u32(regs[0], regs[1]), "decision": regs[2], "source": regs[3],
                         "heartbeat": regs[4]}
        if args.watch > 0:
            parts, last, end = 0, level, time.monotonic() + args.watch
            while time.monotonic() < end:
                now = client.read_trigger()
                parts += new_parts(cfg.trigger.table, last, now)
                last = now
                time.sleep(cfg.poll_ms / 1000.0)
            out["watch"] = {"seconds": args.watch, "parts": parts}
        if args.pulse_reject:
            if ej is None:
                return EXIT_CONFIG, {**out, "error": "--pulse-reject: no plc.modbus.ejector configured"}
            client.write_coil(ej.coil, True)
            time.sleep(ej.pulse_ms / 1000.0)
            client.write_coil(ej.coil, False)
            out["pulsed"] = {"coil": ej.coil, "ms": ej.pulse_ms}
        out["ok"] = True
        return EXIT_OK, out
    except PlcError as exc:
        from ..system.reach import connect_problem

        why = connect_problem(cfg.host, cfg.port, cfg.timeout_s)
        out["error"] = f"{exc}: {why}" if why else f"{exc} (plc.modbus.unit {cfg.unit}: is it the PLC's unit id?)"
        return EXIT_FAIL, out
    finally:
        client.close()


def run(args: argparse.Namespace) -> int:
    code, out = probe(args)
    print(json.dumps(out, indent=2))
    if not out.get("ok"):
        print(f"plc-probe: {out.get('error')}", file=sys.stderr)
    return code
