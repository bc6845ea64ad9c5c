"""A PLC stand-in for the line tests and bench: pymodbus's own Modbus/TCP server on 127.0.0.1 plus a
small "PLC program" that presents parts. Test-only code; run as a process so a test can SIGKILL it.

    python -m tests.plc_standin --port 5020 --log plc.jsonl --rate 5 --parts 600

Program: wait for the station's heartbeat (register RESULT_HR+4), then, per part: write the part
id (two holding registers, low word first) and the encoder count, raise the trigger discrete
input and add one to the trigger counter register, drop the input `--high-ms` later. Every event
goes to `--log` as one JSON line with `time.monotonic()` (CLOCK_MONOTONIC, shared by processes on
one machine):
`{"ev": "trigger", "t": …, "part_id": …, "count": …}` and, for each write the station makes,
`{"ev": "write", "t": …, "fc": …, "address": …, "values": […]}`.

With `--scan-ms` the stand-in also runs the handshake's PLC side (README "The Modbus handshake"):
every scan it reads the station's output block, takes each result slot whose seq is newer than the
last it took (`{"ev": "result", "seq": …, "count": …, "part_id": …, "decision": …, "source": …,
"flags": …, "status": …}`), and `--ack-ms` later writes the last taken seq to the ack registers.
`--recipes 1,2` gives part i recipe code i mod 2, written with its id and count in one write (the
PLC program's contract: the recipe register always belongs to the current count).
`--rogue-after K` adds `--rogue-step` to the counter `--rogue-bursts` times within `--rogue-s`
seconds after part K (a rogue writer on the PLC network). `--no-wait`: present parts at once,
without waiting for the station's heartbeat (a restarted PLC counts parts the station has not
seen yet).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
import time

from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import SimData, SimDevice
from pymodbus.simulator.simdata import DataType

# Register map the tests' station config uses (0-based protocol addresses).
TRIGGER_DI = 0
REJECT_COIL = 8
PART_ID_HR = 10  # 10, 11
COUNTER_HR = 12  # trigger counter, +1 per part: right after the part id, so one read gets both
RECIPE_HR = 13
ACK_HR = 14  # handshake: 14, 15 ack seq; 16 recipe request code; 17 recipe request id
REQUEST_HR = 16
ENCODER_HR = 20  # 20, 21
RESULT_HR = 100  # 100..104; the handshake's output block starts here too (its heartbeat is also at +4)
HANDSHAKE = {"inputs": PART_ID_HR, "outputs": RESULT_HR, "slots": 4}
WRITE_FCS = {5, 6, 15, 16, 23}


def standin_modbus(port: int, ejector: dict | None = None, recipes: bool = False, counter: bool = False,
                   handshake: dict | None = None) -> dict:
    """The station config's `plc.modbus` section matching this stand-in's registers (`handshake`:
    that mode, with these handshake keys over HANDSHAKE; `reject: bit` in it drops the ejector)."""
    if handshake is not None:
        hs = {**HANDSHAKE, **handshake}
        reject = hs.pop("reject", "pulse")
        out = {"host": "127.0.0.1", "port": port, "unit": 1, "poll_ms": 5, "timeout_s": 0.5, "reconnect_min_s": 0.1,
               "reconnect_max_s": 0.5, "mode": "handshake", "handshake": hs, "reject": reject,
               "result": {"heartbeat_ms": 200}}
        if reject == "pulse":
            out["ejector"] = ejector or {"coil": REJECT_COIL, "pulse_ms": 60, "delay_ms": 700}
        return out
    return {
        "host": "127.0.0.1",
        "port": port,
        "unit": 1,
        "poll_ms": 5,
        "timeout_s": 0.5,
        "reconnect_min_s": 0.1,
        "reconnect_max_s": 0.5,
        "trigger": {"table": "counter", "address": COUNTER_HR} if counter else
                   {"table": "discrete_input", "address": TRIGGER_DI},
        "part_id_register": PART_ID_HR,
        "recipe_register": RECIPE_HR if recipes else None,
        "result": {"base": RESULT_HR, "heartbeat_ms": 200},
        "ejector": ejector or {"coil": REJECT_COIL, "pulse_ms": 60, "delay_ms": 700},
    }


class Standin:
    def __init__(self, port: int, log_path: str | None) -> None:
        self.port = port
        self.log = open(log_path, "a", buffering=1) if log_path else None  # noqa: SIM115 - lives as long as the server

    def event(self, **kw) -> None:
        if self.log is not None:
            self.log.write(json.dumps({"t": time.monotonic(), **kw}) + "\n")

    async def action(self, function_code, start_address, address, count, current_registers, set_values):
        if set_values is not None and function_code in WRITE_FCS:
            self.event(ev="write", fc=function_code, address=address, values=[int(v) for v in set_values])
        return None

    async def serve(self, a: argparse.Namespace) -> None:
        device = SimDevice(
            id=1,
            simdata=(
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],  # coils
                [SimData(0, count=64, values=False, datatype=DataType.BITS)],  # discrete inputs
                [SimData(0, count=300, values=0, datatype=DataType.REGISTERS)],  # holding registers
                [SimData(0, count=16, values=0, datatype=DataType.REGISTERS)],  # input registers
            ),
            action=self.action,
        )
        server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
        await server.serve_forever(background=True)
        self.event(ev="listening", port=self.port)
        print("listening", flush=True)
        ctx = self.ctx = server.context
        recipes = [int(x) for x in a.recipes.split(",")] if a.recipes else [a.recipe]
        await ctx.async_setValues(1, 6, RECIPE_HR, [recipes[0]])
        if a.scan_ms:
            self._program = asyncio.create_task(self.handshake_program(a.scan_ms / 1000.0, a.ack_ms / 1000.0))
        if not a.no_wait:
            while (await ctx.async_getValues(1, 3, RESULT_HR + 4, 1))[0] == 0:
                await asyncio.sleep(0.02)  # present parts once the station's heartbeat runs
            self.event(ev="station_up")
        await asyncio.sleep(a.start_delay)
        period = 1.0 / a.rate if a.rate > 0 else 0.0
        t_next = time.monotonic()
        encoder = 0
        self.count = 0
        for i in range(a.parts):
            part = a.first_id + i
            t_next += period
            encoder = (encoder + 1000) % (1 << 32)
            self.count = (self.count + 1) % 65536
            recipe = recipes[i % len(recipes)]
            # part id, counter and recipe in one write, as a PLC scan would: a read never sees one without the other
            await ctx.async_setValues(1, 16, PART_ID_HR, [part & 0xFFFF, part >> 16, self.count, recipe])
            await ctx.async_setValues(1, 16, ENCODER_HR, [encoder & 0xFFFF, encoder >> 16])
            await ctx.async_setValues(1, 2, TRIGGER_DI, [True])
            self.event(ev="trigger", part_id=str(part), encoder=encoder, count=self.count, recipe=recipe)
            if a.rogue_after and i + 1 == a.rogue_after:
                self._rogue = asyncio.create_task(self.rogue(a.rogue_step, a.rogue_bursts, a.rogue_s))
            await asyncio.sleep(a.high_ms / 1000.0)
            await ctx.async_setValues(1, 2, TRIGGER_DI, [False])
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        self.event(ev="done")
        while True:  # keep serving (result writes, pulses) until killed
            await asyncio.sleep(3600)

    async def rogue(self, step: int, bursts: int, seconds: float) -> None:
        """A rogue writer adds `step` counts `bursts` times, evenly over `seconds`."""
        for _ in range(bursts):
            self.count = (self.count + step) % 65536
            await self.ctx.async_setValues(1, 6, COUNTER_HR, [self.count])
            self.event(ev="rogue", count=self.count)
            await asyncio.sleep(seconds / bursts)

    async def handshake_program(self, scan_s: float, ack_s: float) -> None:
        """The PLC side of the handshake: take every result newer than the last taken, ack it later."""
        last = 0
        while True:
            block = await self.ctx.async_getValues(1, 3, RESULT_HR, 8 + 8 * 12)
            status, valid = block[0], block[2]
            took = False
            for k in range(valid):
                w = block[8 + 8 * k: 16 + 8 * k]
                seq = w[0] | w[1] << 16
                if seq > last:
                    self.event(ev="result", seq=seq, count=w[2], part_id=w[3] | w[4] << 16, decision=w[5],
                               source=w[6], flags=w[7], status=status)
                    last, took = seq, True
            if took:
                await asyncio.sleep(ack_s)  # a slow PLC program: the ack comes scans later
                await self.ctx.async_setValues(1, 16, ACK_HR, [last & 0xFFFF, last >> 16])
            await asyncio.sleep(scan_s)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--log")
    p.add_argument("--rate", type=float, default=5.0, help="parts per second")
    p.add_argument("--parts", type=int, default=0)
    p.add_argument("--first-id", type=int, default=1)
    p.add_argument("--high-ms", type=float, default=80.0, help="how long the trigger input stays high")
    p.add_argument("--recipe", type=int, default=0)
    p.add_argument("--start-delay", type=float, default=0.0)
    p.add_argument("--recipes", default="", help="recipe codes for parts in turn, e.g. 1,2")
    p.add_argument("--scan-ms", type=float, default=0.0, help="run the handshake's PLC side, scanning this often")
    p.add_argument("--ack-ms", type=float, default=0.0, help="how long after taking results the PLC acks them")
    p.add_argument("--no-wait", action="store_true", help="present parts without waiting for the station")
    p.add_argument("--rogue-after", type=int, default=0)
    p.add_argument("--rogue-step", type=int, default=64)
    p.add_argument("--rogue-bursts", type=int, default=40)
    p.add_argument("--rogue-s", type=float, default=2.0)
    p.add_argument("--die-with-parent", action="store_true", help="end when the process that started it ends")
    a = p.parse_args(argv)
    if a.die_with_parent:  # Linux PR_SET_PDEATHSIG: a test that dies leaves no PLC behind
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    standin = Standin(a.port, a.log)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(standin.serve(a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
