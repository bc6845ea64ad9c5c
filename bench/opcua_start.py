"""What the OPC UA for Machine Vision server costs at start, and what of it the line waits for.

Per round, on a fresh temporary journal with 200 decided parts: `StationOpcUa.start()` on a
station-like object (the journal, a health record, two recipes), timed with time.perf_counter:
- `start_call_ms`: how long `start()` itself takes — all the line's start waits for (it only starts
  the `adfm-opcua` thread);
- `nodeset_import_s`: asyncua's `import_xml` of the Machine Vision nodeset, in that thread;
- `listening_s`: from `start()` until the endpoint listens (certificate made on the first round
  only — see `certificate_made`);
- `loop_late_ms_p99` / `_max`, `baseline_loop_late_ms_p99` / `_max`: how late a 5 ms sleep loop in
  another thread of the same process (a stand-in for the deciding loop, which shares the GIL with the
  OPC UA thread) wakes while the server starts, and over the same length of time just before;
- `get_result_list_ms`: one GetResultListFiltered call (a page of 100 of the 200 parts) by a logged-in
  client over Basic256Sha256 SignAndEncrypt, round trip.
Median, min and max over rounds; the
1-minute load average before and after. Writes bench/results/opcua_start.json.

`--compare-thread`: each round also runs the same server in a thread of this process instead of its
own process (the design before: asyncua beside the deciding loop, sharing the GIL, the thread's
priority lowered as the service lowers its helper threads), alternating with the process, so both
see the same load; results under `thread`.
Run: python bench/opcua_start.py [--rounds N] [--compare-thread]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import socket
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from adfm.appliance.config.line import OpcUaSection  # noqa: E402
from adfm.appliance.journal.store import Journal  # noqa: E402
from adfm.appliance.plc.opcua import StationOpcUa  # noqa: E402
from adfm.appliance.plc.opcua.access import write_user  # noqa: E402
from adfm.appliance.plc.opcua.process import Child  # noqa: E402
from adfm.appliance.system.health import Health  # noqa: E402
from adfm.schema import InspectionResult  # noqa: E402

T0 = datetime(2026, 12, 1, tzinfo=UTC)
PARTS = 200


class LoopProbe:
    """A thread that sleeps 5 ms at a time and records how late it wakes: (when, lateness s)."""

    def __init__(self) -> None:
        import threading

        self.samples: list[tuple[float, float]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.perf_counter()
            time.sleep(0.005)
            now = time.perf_counter()
            self.samples.append((now, now - t - 0.005))

    def window(self, start: float, end: float) -> dict:
        late = sorted(x * 1000 for t, x in self.samples if start <= t <= end)
        if not late:
            return {"p99": None, "max": None, "n": 0}
        return {"p99": late[min(len(late) - 1, int(0.99 * len(late)))], "max": late[-1], "n": len(late)}

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class ThreadedOpcUa(StationOpcUa):
    """The same server run in a thread of this process (for comparison only)."""

    def start(self) -> None:
        import multiprocessing as mp
        import threading

        from adfm.appliance.system.priority import lower_this_thread

        parent, child = mp.Pipe(duplex=True)
        line = self.line
        self._conn = parent
        args = (child, self.cfg, line.cfg.station, line.journal.epoch, line.journal.db_path, self._snapshot(),
                time.time())

        def run() -> None:
            lower_this_thread()
            asyncio.run(Child(*args).main())

        self._proc = threading.Thread(target=run, name="adfm-opcua-server", daemon=True)
        self._proc.exitcode = None
        self._proc.kill = lambda: None
        self._proc.start()
        self._thread = threading.Thread(target=self._run, name="adfm-opcua", daemon=True)
        self._thread.start()


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _station(root: Path) -> SimpleNamespace:
    journal = Journal(root / "state", "st1")
    for i in range(1, PARTS + 1):
        part = journal.accept(np.zeros((8, 8, 3), np.uint8), part_id=f"p{i}", camera="cam0", frame_number=i,
                              captured_wall=(T0 + timedelta(seconds=i)).timestamp())
        journal.complete(InspectionResult(
            station="st1", seq=part.seq, part_id=f"p{i}", camera="cam0", frame_number=i,
            captured_at=T0 + timedelta(seconds=i), verdict="pass", decision_source="gate", action="pass",
            recipe="a", model_id="m", decided_at=T0 + timedelta(seconds=i)))
    return SimpleNamespace(
        cfg=SimpleNamespace(station="st1"), journal=journal, health=Health("st1", last_seq=journal.last_seq),
        controller=SimpleNamespace(active_recipe="a"),
        recipes={"a": SimpleNamespace(model="m", product="x"), "b": SimpleNamespace(model="m", product="y")},
        models={"m": SimpleNamespace(info=SimpleNamespace(model_id="m"))}, select_recipe=lambda name: None)


async def _list_call(endpoint: str, cert: Path, key: Path) -> tuple[float, int]:
    from asyncua import Client, ua

    client = Client(endpoint)
    client.application_uri = "urn:adfm:bench:client"
    await client.set_security_string(f"Basic256Sha256,SignAndEncrypt,{cert},{key}")
    client.set_user("bench")
    client.set_password("bench-password")
    async with client:
        await client.load_data_type_definitions()
        mv = await client.get_namespace_index("http://opcfoundation.org/UA/MachineVision")
        idx = await client.get_namespace_index("urn:adfm:station")
        vs = await client.nodes.objects.get_child(f"{idx}:st1")
        results = await vs.get_child(f"{mv}:ResultManagement")
        method = await results.get_child(f"{mv}:GetResultListFiltered")
        args = [ua.Variant(0, ua.VariantType.Int32), ua.MeasIdDataType(Id=""), ua.PartIdDataType(Id=""),
                ua.RecipeIdExternalDataType(Id=""), ua.RecipeIdInternalDataType(Id=""),
                ua.ConfigurationIdDataType(Id=""), ua.ConfigurationIdDataType(Id=""), ua.ProductIdDataType(Id=""),
                ua.JobIdDataType(Id=""), ua.Variant(100, ua.VariantType.UInt32), ua.Variant(0, ua.VariantType.UInt32),
                ua.Variant(1000.0, ua.VariantType.Double)]
        t = time.perf_counter()
        out = await results.call_method(method, *args)
        return (time.perf_counter() - t) * 1000, len(out[3])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--compare-thread", action="store_true", help="also time the server in a thread")
    args = ap.parse_args()
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    rounds = []
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        pki = root / "pki"
        write_user(pki, "bench", password="bench-password")
        cert, key = root / "client.der", root / "client.key.pem"
        asyncio.run(setup_self_signed_certificate(key, cert, "urn:adfm:bench:client", "localhost",
                                                  [ExtendedKeyUsageOID.CLIENT_AUTH], {"commonName": "bench"}))
        (pki / "trusted").mkdir(parents=True, exist_ok=True)
        (pki / "trusted" / "client.der").write_bytes(cert.read_bytes())
        line = _station(root)
        kinds = [("process", StationOpcUa)] + ([("thread", ThreadedOpcUa)] if args.compare_thread else [])
        for i in range(args.rounds):
            for kind, cls in kinds if i % 2 == 0 else kinds[::-1]:
                made = not (pki / "server.der").exists()
                endpoint = f"opc.tcp://127.0.0.1:{_port()}/adfm/"
                opc = cls(OpcUaSection(endpoint=endpoint, pki_dir=pki), line)
                probe = LoopProbe()
                time.sleep(2.0)
                t = time.perf_counter()
                opc.start()
                call_ms = (time.perf_counter() - t) * 1000
                assert opc.ready.wait(60), "the OPC UA server did not come up"
                up = time.perf_counter()
                during, before = probe.window(t, up), probe.window(t - min(2.0, up - t), t)
                probe.stop()
                list_ms, listed = asyncio.run(_list_call(endpoint, cert, key))
                opc.stop()
                rounds.append({"kind": kind, "start_call_ms": call_ms, "nodeset_import_s": opc.load_s,
                               "listening_s": opc.start_s,
                               "loop_late_ms_p99": during["p99"], "loop_late_ms_max": during["max"],
                               "baseline_loop_late_ms_p99": before["p99"], "baseline_loop_late_ms_max": before["max"],
                               "get_result_list_ms": list_ms, "listed": listed, "certificate_made": made,
                               "load_avg_1m": os.getloadavg()[0]})
                print(json.dumps(rounds[-1]), flush=True)
        line.journal.close()

    def stat(key: str, kind: str = "process") -> dict:
        values = [r[key] for r in rounds if r["kind"] == kind]
        return {"median": statistics.median(values), "min": min(values), "max": max(values)}

    keys = ("start_call_ms", "nodeset_import_s", "listening_s", "get_result_list_ms", "loop_late_ms_p99",
            "loop_late_ms_max", "baseline_loop_late_ms_p99", "baseline_loop_late_ms_max")

    out = {
        "what": "OPC UA Machine Vision server start: the line's wait (start() call), nodeset import, time to "
                "listen, lateness of a 5 ms sleep loop in another thread during the start vs just before (the "
                "baseline is 2 s), one GetResultListFiltered round trip (100 of 200 parts, SignAndEncrypt)",
        "when": datetime.now(UTC).isoformat(timespec="seconds"), "machine": platform.node(),
        "cpus": os.cpu_count(), "python": platform.python_version(), "rounds": len(rounds),
        "load_avg_1m_before": load_before, "load_avg_1m_after": os.getloadavg()[0],
        **{k: stat(k) for k in keys},
        **({"thread": {k: stat(k, "thread") for k in keys}} if args.compare_thread else {}),
        "per_round": rounds,
    }
    path = ROOT / "bench" / "results" / "opcua_start.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
