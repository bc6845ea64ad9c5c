"""`adfm-appliance plc-probe CONFIG`: check a station's PLC link from the command line.

Connects to the PLC named in the config's `plc.modbus` section and reads what the station would
read: the trigger input, the part id, recipe and encoder registers and the result block — in
handshake mode the PLC's inputs block (count, part id, recipe, ack, recipe request) and the
station's output block (status word decoded, the result slots). With `--watch S` it counts the
parts the trigger reports for S seconds (what a part passing the sensor looks like), and how
many of those reads advanced the counter further than `trigger.max_parts_per_s` allows (the
station would refuse them).
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
        from .modbus import ModbusClient, PlcError, decode_status, new_parts, words_to_u32
    except ImportError as exc:
        return EXIT_FAIL, {"ok": False, "error": f"the PLC link needs the `plc` extra (pip install 'adfm[plc]'): {exc}"}
    cfg = config.plc.modbus
    out: dict[str, Any] = {"ok": False, "plc": f"{cfg.host}:{cfg.port}", "unit": cfg.unit}
    client = ModbusClient(cfg)
    try:
        t0 = time.perf_counter()
        client.connect()
        inputs = client.read_inputs()
        level = inputs.level
        out["round_trip_ms"] = round((time.perf_counter() - t0) * 1000.0, 2)
        out["mode"] = cfg.mode
        key = "count" if cfg.trigger.table == "counter" else "level"
        out["trigger"] = {"table": cfg.trigger.table, "address": cfg.trigger.address,
                          key: level if key == "count" else bool(level)}
        part_id = inputs.part_id
        if part_id is None and cfg.part_id_register is not None:
            part_id = str(words_to_u32(*client.read_registers(cfg.part_id_register, 2)))
        if part_id is not None or cfg.part_id_register is not None:
            out["part_id"] = int(part_id or 0)
        recipe = inputs.recipe
        if recipe is None and cfg.recipe_register is not None:
            recipe = client.read_registers(cfg.recipe_register, 1)[0]
        if recipe is not None:
            known = {r.code: r.name for r in config.recipes}
            out["recipe"] = {"code": recipe, "name": known.get(recipe)}
        ej = cfg.ejector
        if ej is not None and ej.encoder_register is not None:
            out["encoder"] = words_to_u32(*client.read_registers(ej.encoder_register, 2))
        if cfg.mode == "handshake":
            hs = cfg.handshake
            regs = client.read_registers(hs.outputs, hs.output_count)
            out["plc_side"] = {"ack": inputs.ack, "recipe_request": {"code": inputs.request_code,
                                                                     "id": inputs.request_id}}
            slots = [regs[8 + 8 * k: 16 + 8 * k] for k in range(min(regs[2], hs.slots))]
            out["station_side"] = {
                "status": decode_status(regs[0]), "waiting_beyond_slots": regs[1], "active_recipe_code": regs[3],
                "heartbeat": regs[4], "recipe_answer": {"id": regs[5], "answer": regs[6]},
                "slots": [{"seq": words_to_u32(w[0], w[1]), "count": w[2], "part_id": words_to_u32(w[3], w[4]),
                           "decision": w[5], "source": w[6], "flags": w[7]} for w in slots]}
        else:
            regs = client.read_registers(cfg.result.base, 5)
            out["result"] = {"seq": words_to_u32(regs[0], regs[1]), "decision": regs[2], "source": regs[3],
                             "heartbeat": regs[4]}
        if args.watch > 0:
            parts = implausible = 0
            last, read_at, end = level, time.monotonic(), time.monotonic() + args.watch
            while time.monotonic() < end:
                now = client.read_trigger()
                step = new_parts(cfg.trigger.table, last, now)
                if cfg.trigger.table == "counter" and step > cfg.trigger.plausible(step, time.monotonic() - read_at):
                    implausible += 1
                else:
                    parts += step
                last, read_at = now, time.monotonic()
                time.sleep(cfg.poll_ms / 1000.0)
            out["watch"] = {"seconds": args.watch, "parts": parts, "implausible_advances": implausible}
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
