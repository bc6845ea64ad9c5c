"""The older `Station` tree, kept as an alias beside the Machine Vision instance for clients written
against it (read-only, under Objects/Station in namespace `opcua.namespace`):

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
| LastResults | String[] | the newest `opcua.last_results` decisions and revisions, newest first, one JSON object each |
| Alarms | String[] | the standing problems |

New clients use the vision system (vision.py): typed results through methods and events.
"""

from __future__ import annotations

import json
from typing import Any

from asyncua import Node, ua

from adfm.schema import InspectionResult

SOURCE_NODES = {
    "gate": "Gate",
    "vlm": "Vlm",
    "failsafe_timeout": "FailSafeTimeout",
    "failsafe_model_down": "FailSafeModelDown",
    "failsafe_missed_frame": "FailSafeMissedFrame",
    "failsafe_disk_full": "FailSafeDiskFull",
    "missed_link": "MissedLink",
}
ACTION_NODES = {"pass": "Pass", "reject": "Reject", "hold": "Hold"}
#: status counters (StationStatus.counters) → Line/<node>
LINE_NODES = {
    "deadline_misses": "DeadlineMisses", "missed_ejections": "MissedEjections", "vlm_dropped": "VlmDropped",
    "loop_stall_ms_max": "LoopStallMsMax", "loop_stall_ms_p99": "LoopStallMsP99",
    "plc_poll_gap_ms_max": "PlcPollGapMsMax", "plc_pulses": "PlcPulses", "plc_pulse_late_ms_max": "PlcPulseLateMsMax",
}
V = ua.VariantType


class Counts:
    """Decisions and revisions counted as they are recorded (the deciding loop's thread)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.counts: dict[str, int] = {}
        self.recent: list[str] = []

    def add(self, r: InspectionResult) -> None:
        if r.revision == 0:
            for key in ("Decided", ACTION_NODES.get(r.action or ""), SOURCE_NODES.get(r.decision_source or "")):
                if key:
                    self.counts[key] = self.counts.get(key, 0) + 1
        else:
            self.counts["Revisions"] = self.counts.get("Revisions", 0) + 1
        entry = json.dumps({"seq": r.seq, "part_id": r.part_id, "revision": r.revision, "action": r.action,
                            "verdict": r.verdict, "source": r.decision_source, "recipe": r.recipe,
                            "decided_at": r.decided_at.isoformat() if r.decided_at else None})
        self.recent = [entry, *self.recent][: self.keep]


class StationTree:
    """The alias tree's nodes and their refresh."""

    def __init__(self) -> None:
        self.nodes: dict[str, tuple[Node, ua.VariantType]] = {}

    async def build(self, objects: Node, idx: int, station: str) -> None:
        root = await objects.add_object(idx, "Station")
        counters = await root.add_object(idx, "Counters")
        line = await root.add_object(idx, "Line")

        async def var(parent: Node, key: str, name: str, value: Any, vtype: ua.VariantType) -> None:
            self.nodes[key] = (await parent.add_variable(idx, name, ua.Variant(value, vtype)), vtype)

        await var(root, "State", "State", "starting", V.String)
        await var(root, "Healthy", "Healthy", False, V.Boolean)
        await var(root, "Station", "Station", station, V.String)
        await var(root, "ModelId", "ModelId", "", V.String)
        await var(root, "Recipe", "Recipe", "", V.String)
        await var(root, "LastSeq", "LastSeq", 0, V.Int64)
        for name in ["Decided", "Revisions", *ACTION_NODES.values(), *SOURCE_NODES.values()]:
            await var(counters, f"Counters/{name}", name, 0, V.UInt64)
        for name in LINE_NODES.values():
            await var(line, f"Line/{name}", name, 0.0, V.Double)
        await var(root, "LastResults", "LastResults", [], V.String)
        await var(root, "Alarms", "Alarms", [], V.String)

    async def write(self, key: str, value: Any) -> None:
        node, vtype = self.nodes[key]
        await node.write_value(ua.Variant(value, vtype))

    async def refresh(self, state: str, snapshot: dict, counts: dict[str, int], recent: list[str]) -> None:
        """`snapshot`: the service's state as server.py sends it."""
        await self.write("State", state)
        await self.write("Healthy", bool(snapshot.get("healthy")))
        await self.write("ModelId", snapshot.get("model_id", ""))
        await self.write("Recipe", snapshot.get("active_recipe", ""))
        await self.write("LastSeq", int(snapshot.get("last_seq", 0)))
        for key in self.nodes:
            if key.startswith("Counters/"):
                await self.write(key, counts.get(key.split("/", 1)[1], 0))
        await self.write("LastResults", recent)
        await self.write("Alarms", list(snapshot.get("problems", [])))
        line = snapshot.get("counters", {})
        for key, name in LINE_NODES.items():
            await self.write(f"Line/{name}", float(line.get(key, 0.0)))
