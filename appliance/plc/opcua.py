"""An OPC UA server on the station for SCADA/MES (asyncua, the `plc` extra).

Node set, under Objects/Station in namespace `opcua.namespace` (browse names; all read-only):

| node | type | what |
| --- | --- | --- |
| State | String | `running`, `degraded` (a standing problem) or `stopped` |
| Healthy | Boolean | no standing problem |
| Station | String | station id |
| ModelId | String | model of the active recipe |
| Recipe | String | active product recipe |
| LastSeq | Int64 | newest journal seq with every part before it decided |
| Counters/Decided, Pass, Reject, Hold, Revisions | UInt64 | since the service started |
| Counters/Gate, Vlm, FailSafeTimeout, FailSafeModelDown, | UInt64 | decisions by source |
| Counters/FailSafeMissedFrame, FailSafeDiskFull | UInt64 | decisions by source |
| Line/DeadlineMisses, MissedEjections, VlmDropped | Double | the deciding loop's counters since start |
| Line/LoopStallMsMax, LoopStallMsP99 | Double | how long one event held the deciding loop (ms) |
| Line/PlcPollGapMsMax, PlcPulses, PlcPulseLateMsMax | Double | the PLC link's poll gap and pulses |
| LastResults | String[] | the newest `opcua.last_results` decisions and revisions, newest first, |
| | | one JSON object each (seq, part_id, revision, action, verdict, source, recipe, decided_at) |
| Alarms | String[] | the standing problems (PLC link down, camera, journal, …) |

Values are refreshed by the server's own thread, woken at every decision and once a second: the
deciding loop only counts, it never waits on OPC UA. Like the result bus, the server binds
only loopback unless `opcua.insecure` is set (it offers no OPC UA security policy).
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from typing import Any

from adfm.schema import InspectionResult

from ..config.line import OpcUaSection
from ..system.priority import lower_this_thread

log = logging.getLogger(__name__)

SOURCE_NODES = {
    "gate": "Gate",
    "vlm": "Vlm",
    "failsafe_timeout": "FailSafeTimeout",
    "failsafe_model_down": "FailSafeModelDown",
    "failsafe_missed_frame": "FailSafeMissedFrame",
    "failsafe_disk_full": "FailSafeDiskFull",
}
ACTION_NODES = {"pass": "Pass", "reject": "Reject", "hold": "Hold"}
#: status counters (StationStatus.counters) → Line/<node>
LINE_NODES = {
    "deadline_misses": "DeadlineMisses", "missed_ejections": "MissedEjections", "vlm_dropped": "VlmDropped",
    "loop_stall_ms_max": "LoopStallMsMax", "loop_stall_ms_p99": "LoopStallMsP99",
    "plc_poll_gap_ms_max": "PlcPollGapMsMax", "plc_pulses": "PlcPulses", "plc_pulse_late_ms_max": "PlcPulseLateMsMax",
}


class StationOpcUa:
    """Publishes a LineStation's state; `result()` is called for every decision and revision."""

    def __init__(self, cfg: OpcUaSection, line: Any) -> None:
        self.cfg = cfg
        self.line = line
        self._server: Any = None
        self._nodes: dict[str, Any] = {}
        self._counts: dict[str, int] = {}
        self._recent: list[str] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        from asyncua import ua
        from asyncua.sync import Server

        server = Server()
        server.set_endpoint(self.cfg.endpoint)
        server.set_server_name(f"adfm station {self.line.cfg.station}")
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = server.register_namespace(self.cfg.namespace)
        station = server.nodes.objects.add_object(idx, "Station")
        counters = station.add_object(idx, "Counters")
        n = self._nodes
        n["State"] = station.add_variable(idx, "State", "starting")
        n["Healthy"] = station.add_variable(idx, "Healthy", False)
        n["Station"] = station.add_variable(idx, "Station", self.line.cfg.station)
        n["ModelId"] = station.add_variable(idx, "ModelId", "")
        n["Recipe"] = station.add_variable(idx, "Recipe", "")
        n["LastSeq"] = station.add_variable(idx, "LastSeq", 0, varianttype=ua.VariantType.Int64)
        for name in ["Decided", "Revisions", *ACTION_NODES.values(), *SOURCE_NODES.values()]:
            n[f"Counters/{name}"] = counters.add_variable(idx, name, 0, varianttype=ua.VariantType.UInt64)
        line = station.add_object(idx, "Line")
        for name in LINE_NODES.values():
            n[f"Line/{name}"] = line.add_variable(idx, name, 0.0, varianttype=ua.VariantType.Double)
        n["LastResults"] = station.add_variable(idx, "LastResults", [], varianttype=ua.VariantType.String)
        n["Alarms"] = station.add_variable(idx, "Alarms", [], varianttype=ua.VariantType.String)
        server.start()
        self._server = server
        self.refresh()
        self._thread = threading.Thread(target=self._refresh_loop, name="adfm-opcua", daemon=True)
        self._thread.start()
        log.info("OPC UA server on %s", self.cfg.endpoint)

    def result(self, r: InspectionResult) -> None:
        with self._lock:
            if r.revision == 0:
                self._counts["Decided"] = self._counts.get("Decided", 0) + 1
                for key in (ACTION_NODES.get(r.action or ""), SOURCE_NODES.get(r.decision_source or "")):
                    if key:
                        self._counts[key] = self._counts.get(key, 0) + 1
            else:
                self._counts["Revisions"] = self._counts.get("Revisions", 0) + 1
            entry = json.dumps({"seq": r.seq, "part_id": r.part_id, "revision": r.revision, "action": r.action,
                                "verdict": r.verdict, "source": r.decision_source, "recipe": r.recipe,
                                "decided_at": r.decided_at.isoformat() if r.decided_at else None})
            self._recent = [entry, *self._recent][: self.cfg.last_results]
        self._wake.set()

    def refresh(self) -> None:
        if self._server is None:
            return
        status = self.line.health.snapshot()
        recipe = self.line.recipes.get(self.line.controller.active_recipe)
        model_id = self.line.models[recipe.model].info.model_id if recipe is not None else ""
        with self._lock:
            counts, recent = dict(self._counts), list(self._recent)
        n = self._nodes
        try:
            n["State"].write_value("running" if status.healthy else "degraded")
            n["Healthy"].write_value(status.healthy)
            n["ModelId"].write_value(model_id)
            n["Recipe"].write_value(self.line.controller.active_recipe)
            n["LastSeq"].write_value(status.last_seq, n["LastSeq"].read_data_type_as_variant_type())
            for key, node in n.items():
                if key.startswith("Counters/"):
                    node.write_value(counts.get(key.split("/", 1)[1], 0), node.read_data_type_as_variant_type())
            n["LastResults"].write_value(recent, n["LastResults"].read_data_type_as_variant_type())
            n["Alarms"].write_value(list(status.problems), n["Alarms"].read_data_type_as_variant_type())
            for key, name in LINE_NODES.items():
                n[f"Line/{name}"].write_value(float(status.counters.get(key, 0.0)))
        except Exception as exc:  # SCADA visibility must never stop the line
            log.warning("OPC UA update failed: %s", exc)

    def _refresh_loop(self) -> None:
        lower_this_thread()
        while not self._stop.is_set():
            self._wake.wait(1.0)
            self._wake.clear()
            if not self._stop.is_set():
                self.refresh()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(3.0)
        if self._server is not None:
            with contextlib.suppress(Exception):
                self._nodes["State"].write_value("stopped")
            self._server.stop()
            self._server = None
