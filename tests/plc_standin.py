"""A PLC stand-in for the line tests and bench: pymodbus's own Modbus/TCP server on 127.0.0.1 plus a
small "PLC program" that presents parts. Test-only code; run as a process so a test can SIGKILL it.

    python -m tests.plc_standin --port 5020 --log plc.jsonl --rate 5 --parts 600

Program: wait for the station's heartbeat (register RESULT_HR+4), then, per part: write the part
id (two holding registers, low word first) and the encoder count, raise the trigger discrete
input and add one to the trigger counter register, drop the input `--high-ms` later. Every event
goes to `--log` as one JSON line with `time.monotonic()` (CLOCK_MONOTONIC, shared by processes on
one machine):
`{"ev": "trigger", "t": …, "part_id": …}` and, for each write the station makes,
`{"ev": "write", "t": …, "fc": …, "address": …, "values": […]}`.
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
ENCODER_HR = 20  # 20, 21
RESULT_HR = 100  # 100..104
WRITE_FCS = {5, 6, 15, 16, 23}


def standin_modbus(port: int, ejector: dict | None = None, recipes: bool = False, counter: bool = False) -> dict:
    """The station config's `plc.modbus` section matching this stand-in's registers."""
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

    async def serve(self, rate: float, parts: int, first_id: int, high_ms: float, recipe: int, start_delay: float):
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
        ctx = server.context
        await ctx.async_setValues(1, 6, RECIPE_HR, [recipe])
        while (await ctx.async_getValues(1, 3, RESULT_HR + 4, 1))[0] == 0:
            await asyncio.sleep(0.02)  # present parts once the station's heartbeat runs
        self.event(ev="station_up")
        await asyncio.sleep(start_delay)
        period = 1.0 / rate if rate > 0 else 0.0
        t_next = time.monotonic()
        encoder = 0
        for i in range(parts):
            part = first_id + i
            t_next += period
            encoder = (encoder + 1000) % (1 << 32)
            # part id and counter in one write, as a PLC scan would: a read never sees one without the other
            await ctx.async_setValues(1, 16, PART_ID_HR, [part & 0xFFFF, part >> 16, (i + 1) % 65536])
            await ctx.async_setValues(1, 16, ENCODER_HR, [encoder & 0xFFFF, encoder >> 16])
            await ctx.async_setValues(1, 2, TRIGGER_DI, [True])
            self.event(ev="trigger", part_id=str(part), encoder=encoder)
            await asyncio.sleep(high_ms / 1000.0)
            await ctx.async_setValues(1, 2, TRIGGER_DI, [False])
            await asyncio.sleep(max(0.0, t_next - time.monotonic()))
        self.event(ev="done")
        while True:  # keep serving (result writes, pulses) until killed
            await asyncio.sleep(3600)


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
    p.add_argument("--die-with-parent", action="store_true", help="end when the process that started it ends")
    a = p.parse_args(argv)
    if a.die_with_parent:  # Linux PR_SET_PDEATHSIG: a test that dies leaves no PLC behind
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)
    standin = Standin(a.port, a.log)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(standin.serve(a.rate, a.parts, a.first_id, a.high_ms, a.recipe, a.start_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
