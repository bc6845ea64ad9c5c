"""Station config sections for the line: decision deadline and fail-safe, product recipes, the PLC's
Modbus/TCP register map and the OPC UA server. Part of `station.yaml` (see appliance/config/station.py);
README "The line: a decision for every part in time, and the PLC" documents every key.

Register addresses are 0-based protocol addresses (what goes on the wire), not the 1-based
"40001"-style numbers of some PLC manuals.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from adfm.config import StrictModel

from .paths import resolve_path

FailSafe = Literal["reject", "hold", "pass"]

#: Decision codes written to the PLC's decision register.
DECISION_CODES: dict[str, int] = {"pass": 1, "reject": 2, "hold": 3}
#: Decision-source codes written to the PLC's source register.
SOURCE_CODES: dict[str, int] = {
    "gate": 1,
    "vlm": 2,
    "failsafe_timeout": 3,
    "failsafe_model_down": 4,
    "failsafe_missed_frame": 5,
    "failsafe_disk_full": 6,
    "missed_link": 7,
}


class _Section(StrictModel):
    """A line config section (unknown keys are errors)."""


class LineSection(_Section):
    """Decisions in time: every triggered part is decided within `deadline_ms` of its trigger.

    The gate passes confidently good parts at once; the VLM's verdict counts when it comes in time;
    otherwise `failsafe` is the part's decision (published `margin_ms` before the deadline, so the
    PLC has it by then) and the VLM's later verdict is journaled as a revision.
    """

    camera: str | None = Field(None, description="camera the PLC trigger fires (default: the first)")
    deadline_ms: float = Field(1000.0, gt=0, le=600_000)
    failsafe: FailSafe = Field("reject", description="decision when the VLM cannot decide in time")
    margin_ms: float = Field(50.0, ge=0, description="the fail-safe goes out this long before the deadline")
    vlm_backlog: int = Field(16, ge=0, le=10_000, description="late parts the VLM still inspects for revisions")
    vlm_nice: int = Field(10, ge=0, le=19, description="the model process runs this much nicer than the service")


class RecipeSection(_Section):
    """A product recipe; the PLC's recipe register (or a control command) selects it by `code`."""

    name: str = Field(min_length=1, max_length=64)
    code: int = Field(ge=1, le=65535, description="value of plc.modbus.recipe_register selecting this recipe "
                      "(0 there: the PLC selects none, the recipe chosen by command applies)")
    product: str | None = Field(None, description="name from `products` (reference image, prompt product)")
    model_dir: Path | None = Field(None, description="this product's exported model (default: model.dir)")
    deadline_ms: float | None = Field(None, gt=0, le=600_000, description="default: line.deadline_ms")
    failsafe: FailSafe | None = Field(None, description="default: line.failsafe")
    gate_mode: Literal["off", "screen", "annotate"] | None = Field(None, description="default: gate.mode")
    gate_path: Path | None = Field(None, description="this product's gate model (default: gate.path)")

    _paths = field_validator("gate_path", "model_dir", mode="before")(resolve_path)


class TriggerInput(_Section):
    """The PLC's part-present signal: a rising edge (0 → 1) of a coil or discrete input is one part;
    or (`counter`) a holding register the PLC increments by one per part — no part is lost when a
    poll comes late, where an edge must stay high longer than the polling gap, and the parts counted
    while the link was down are recorded on reconnect (`missed_link`).

    A counter that advances faster than the line can present parts is implausible (a rogue writer,
    a PLC program fault): an advance of more than `max_parts_per_s` × the time since the previous
    read + `max_burst` is refused whole — journaled as refused, alarmed (`plc.trigger`), not decided
    as parts."""

    table: Literal["coil", "discrete_input", "counter"] = "discrete_input"
    address: int = Field(0, ge=0, le=65535)
    max_parts_per_s: float = Field(50.0, gt=0, le=10_000, description="the fastest the line presents parts")
    max_burst: int = Field(4, ge=1, le=10_000, description="parts one read may add beyond that rate")

    def plausible(self, step: int, elapsed_s: float) -> int:
        """The most parts a counter may advance by in `elapsed_s` (beyond: refused)."""
        return int(self.max_parts_per_s * max(0.0, elapsed_s)) + self.max_burst


class ResultRegisters(_Section):
    """Holding registers the station writes after each decision, in one write:
    base+0/+1 seq (low word, high word), +2 decision code, +3 decision source code; base+4 holds a
    heartbeat counter the station increments every `heartbeat_ms`."""

    base: int = Field(100, ge=0, le=65530)
    heartbeat_ms: float = Field(500.0, gt=0)


class EjectorSection(_Section):
    """When a rejected part reaches the ejector: `delay_ms` after its trigger, or — on a conveyor
    with an encoder — `distance_counts` encoder counts after it (the count read from
    `encoder_register`, two registers low/high word, wrapping at 2**32)."""

    coil: int = Field(ge=0, le=65535, description="reject output coil")
    pulse_ms: float = Field(100.0, gt=0, le=10_000)
    delay_ms: float | None = Field(None, ge=0)
    encoder_register: int | None = Field(None, ge=0, le=65534)
    distance_counts: int | None = Field(None, ge=1)
    window_ms: float = Field(50.0, ge=0, le=10_000, description="a pulse starts at most this long after its "
                             "part reached the ejector; later, the part has gone by: a missed ejection, not a pulse")
    window_counts: int | None = Field(None, ge=0, description="the same window in encoder counts "
                                      "(default: 5 % of distance_counts, at least 1)")

    @property
    def late_counts(self) -> int:
        if self.window_counts is not None:
            return self.window_counts
        return max(1, int(self.distance_counts or 0) // 20)

    @model_validator(mode="after")
    def _one_way(self) -> EjectorSection:
        by_time = self.delay_ms is not None
        by_encoder = self.encoder_register is not None or self.distance_counts is not None
        if by_time == by_encoder:
            raise ValueError("set either delay_ms, or encoder_register with distance_counts")
        if by_encoder and (self.encoder_register is None or self.distance_counts is None):
            raise ValueError("an encoder ejector needs both encoder_register and distance_counts")
        return self


class HandshakeSection(_Section):
    """The handshake (`mode: handshake`): two blocks of holding registers, each moved in one request.

    PLC → station, `inputs` + 0..7 (read in one request every poll, so a part's id, count and
    recipe always belong together): part id (u32, low word first), trigger counter, recipe code,
    ack (u32: the seq of the newest result the PLC has taken), recipe request code, recipe request
    id (the PLC increments it to ask).
    Station → PLC, `outputs` + 0..7 header, then `slots` result slots of 8 registers (written in one
    request): status word, results waiting beyond the slots, valid slots, active recipe code,
    heartbeat, recipe answer id, recipe answer (1 done, 2 failed), 0. A slot: seq (u32), trigger
    count, part id (u32), decision code, source code, flags (bit 0 reject, bit 1 missed by the link).
    README "The Modbus handshake" has the full map and a PLC program."""

    inputs: int = Field(10, ge=0, le=65528, description="first of the 8 registers the PLC writes")
    outputs: int = Field(100, ge=0, le=65535, description="first of the registers the station writes")
    slots: int = Field(4, ge=1, le=12, description="results shown to the PLC at once, oldest first")
    fifo_alarm: int = Field(32, ge=1, le=65535, description="more results than this waiting for the PLC's "
                            "ack raise the plc.fifo alarm (they are held, never dropped)")

    @property
    def output_count(self) -> int:
        return 8 + 8 * self.slots


class ModbusSection(_Section):
    """The PLC over Modbus/TCP (the station is the client). `mode: simple` is the original register
    map (trigger in, the newest result and a heartbeat out); `mode: handshake` adds a status word,
    a result FIFO the PLC acknowledges and recipe requests (HandshakeSection)."""

    mode: Literal["simple", "handshake"] = Field("simple", description="simple | handshake")
    handshake: HandshakeSection = Field(default_factory=HandshakeSection)
    reject: Literal["pulse", "bit"] = Field("pulse", description="pulse: the station times the reject coil "
                                            "(`ejector`); bit: the PLC times its ejector from each result's "
                                            "reject bit (handshake mode)")

    host: str = Field(min_length=1)
    port: int = Field(502, ge=1, le=65535)
    unit: int = Field(1, ge=0, le=247, description="Modbus unit (device) id")
    poll_ms: float = Field(10.0, gt=0, le=1000, description="how often the trigger input is read")
    timeout_s: float = Field(0.5, gt=0, le=30)
    reconnect_min_s: float = Field(0.2, gt=0)
    reconnect_max_s: float = Field(5.0, gt=0)
    trigger: TriggerInput = Field(default_factory=TriggerInput)
    part_id_register: int | None = Field(None, ge=0, le=65534, description="two holding registers (low, high)")
    recipe_register: int | None = Field(None, ge=0, le=65535, description="holding register with the recipe code")
    result: ResultRegisters = Field(default_factory=ResultRegisters)
    ejector: EjectorSection | None = None

    @model_validator(mode="before")
    @classmethod
    def _handshake_trigger(cls, data: object) -> object:
        """In handshake mode the trigger is the counter in the inputs block unless set otherwise."""
        if isinstance(data, dict) and data.get("mode") == "handshake":
            hs = data.get("handshake") or {}
            inputs = hs.get("inputs", 10) if isinstance(hs, dict) else 10
            trigger = dict(data.get("trigger") or {})
            trigger.setdefault("table", "counter")
            if isinstance(inputs, int):
                trigger.setdefault("address", inputs + 2)
            data = {**data, "trigger": trigger}
        return data

    @model_validator(mode="after")
    def _no_overlap(self) -> ModbusSection:
        if self.reconnect_max_s < self.reconnect_min_s:
            raise ValueError("reconnect_max_s must be >= reconnect_min_s")
        if self.reject == "bit" and self.mode != "handshake":
            raise ValueError("reject: bit needs mode: handshake (the PLC takes each result, with its reject bit, "
                             "from the result FIFO)")
        if self.reject == "bit" and self.ejector is not None:
            raise ValueError("reject: bit leaves the ejector to the PLC: remove the ejector section (the "
                             "station-timed pulse)")
        if self.mode == "handshake":
            return self._handshake_map()
        regs: dict[str, range] = {"result": range(self.result.base, self.result.base + 5)}
        if self.trigger.table == "counter":
            regs["trigger"] = range(self.trigger.address, self.trigger.address + 1)
        if self.part_id_register is not None:
            regs["part_id_register"] = range(self.part_id_register, self.part_id_register + 2)
        if self.recipe_register is not None:
            regs["recipe_register"] = range(self.recipe_register, self.recipe_register + 1)
        if self.ejector is not None and self.ejector.encoder_register is not None:
            regs["ejector.encoder_register"] = range(self.ejector.encoder_register, self.ejector.encoder_register + 2)
        _no_overlap(regs)
        if (self.ejector is not None and self.trigger.table == "coil" and self.ejector.coil == self.trigger.address):
            raise ValueError(f"ejector.coil {self.ejector.coil} is also the trigger coil")
        return self

    def _handshake_map(self) -> ModbusSection:
        """In handshake mode the two blocks are the map: the simple mode's own addresses must not be set."""
        hs = self.handshake
        if self.trigger.table != "counter":
            raise ValueError("mode: handshake needs trigger.table: counter (inputs + 2), which accounts for "
                             "every part across an outage")
        if self.trigger.address != hs.inputs + 2:
            raise ValueError(f"mode: handshake reads the trigger counter at handshake.inputs + 2 = {hs.inputs + 2}; "
                             f"trigger.address is {self.trigger.address}")
        for key in ("part_id_register", "recipe_register"):
            if getattr(self, key) is not None:
                raise ValueError(f"mode: handshake: {key} is part of handshake.inputs; remove it")
        regs = {"handshake.inputs": range(hs.inputs, hs.inputs + 8),
                "handshake.outputs": range(hs.outputs, hs.outputs + hs.output_count)}
        if hs.outputs + hs.output_count > 65536:
            raise ValueError(f"handshake.outputs {hs.outputs} + {hs.output_count} registers runs past 65535")
        if self.ejector is not None and self.ejector.encoder_register is not None:
            regs["ejector.encoder_register"] = range(self.ejector.encoder_register, self.ejector.encoder_register + 2)
        _no_overlap(regs)
        return self

    @property
    def heartbeat_register(self) -> int:
        """The station's heartbeat register (+1 every result.heartbeat_ms while the line decides)."""
        return (self.handshake.outputs if self.mode == "handshake" else self.result.base) + 4


def _no_overlap(regs: dict[str, range]) -> None:
    """Refuse two register blocks of the map that share an address, naming both."""
    names = list(regs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if set(regs[a]) & set(regs[b]):
                raise ValueError(f"holding registers overlap: {a} {_span(regs[a])} and {b} {_span(regs[b])}")


def _span(r: range) -> str:
    return f"{r.start}..{r.stop - 1}"


class PlcSection(_Section):
    modbus: ModbusSection


#: OPC UA security policies the station offers (asyncua's names); only signed-and-encrypted ones
#: besides `None`, which serves anonymous reading on loopback (or off it with `insecure`)
OPCUA_POLICIES = ("None", "Basic256Sha256_SignAndEncrypt", "Aes128Sha256RsaOaep_SignAndEncrypt",
                  "Aes256Sha256RsaPss_SignAndEncrypt")
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


class OpcUaSection(_Section):
    """An OPC UA server for SCADA/MES (needs the `plc` extra): a `VisionSystemType` instance of the
    OPC UA for Machine Vision companion specification, and the older `Station` tree as an alias.

    `pki_dir` holds the server's certificate (made at first start), the client application
    certificates it trusts (`trusted/`), and the users allowed to call methods (`users/`); README
    "OPC UA for SCADA and MES" describes it. Without it the server offers policy None only, which
    is allowed on loopback alone."""

    endpoint: str = Field("opc.tcp://127.0.0.1:4840/adfm/", description="opc.tcp://host:port/path")
    namespace: str = Field("urn:adfm:station")
    last_results: int = Field(10, ge=1, le=1000)
    pki_dir: Path | None = Field(None, description="server certificate, trusted/ client certificates, users/")
    security: list[str] | None = Field(None, description="security policies offered; default: None (loopback "
                                       "only) and every signed-and-encrypted policy when pki_dir is set")
    allow_anonymous: bool = Field(True, description="anonymous sessions may browse, read and subscribe")
    result_page: int = Field(100, ge=1, le=1000, description="most results one GetResultListFiltered call returns")
    insecure: bool = Field(False, description="also offer policy None on an endpoint reachable off this machine "
                                              "(anonymous reading only; never passwords)")

    _paths = field_validator("pki_dir", mode="before")(resolve_path)

    @property
    def loopback(self) -> bool:
        from urllib.parse import urlsplit

        return (urlsplit(self.endpoint).hostname or "") in _LOOPBACK

    @property
    def policies(self) -> list[str]:
        """The security policies the server offers."""
        if self.security is not None:
            return list(self.security)
        secure = list(OPCUA_POLICIES[1:]) if self.pki_dir is not None else []
        return (["None"] if self.loopback or self.insecure else []) + secure

    @model_validator(mode="after")
    def _opc_tcp(self) -> OpcUaSection:
        v = self.endpoint
        if not v.startswith("opc.tcp://"):
            raise ValueError(f"opcua.endpoint {v!r} must start with opc.tcp://")
        for p in self.security or []:
            if p not in OPCUA_POLICIES:
                raise ValueError(f"opcua.security: {p!r} is not offered; choose from {', '.join(OPCUA_POLICIES)} "
                                 "(signed-only policies are not: results and passwords travel encrypted)")
        if self.security is not None and not self.security:
            raise ValueError("opcua.security: empty; name at least one policy")
        secure = [p for p in self.policies if p != "None"]
        if secure and self.pki_dir is None:
            raise ValueError(f"opcua.security: {', '.join(secure)} need a server certificate: set opcua.pki_dir")
        if not self.loopback:
            if self.pki_dir is None:
                raise ValueError(f"opcua.endpoint {v!r} is reachable off this machine: set opcua.pki_dir (the "
                                 "server then offers signed-and-encrypted policies with certificate trust), or "
                                 "bind 127.0.0.1 (and tunnel)")
            if "None" in self.policies and not self.insecure:
                raise ValueError(f"opcua.security: policy None on {v!r}, reachable off this machine: remove it, or "
                                 "set insecure: true explicitly (anonymous reading only)")
        return self
