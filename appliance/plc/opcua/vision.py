"""The station as an OPC UA for Machine Vision `VisionSystemType` instance (OPC 40100-1).

Built from the official nodeset (nodesets/Opc.Ua.MachineVision.NodeSet2.xml, loaded at start) under
Objects, browse name `<namespace index>:<station id>`:

- `VisionStateMachine` (mandatory): its `CurrentState` follows the station — `Preoperational` while
  the server starts, `Operational` while the line decides with no standing problem, `Error` while one
  stands (the alarms are in `SystemState`), `Halted` when the service stops. `Halt` and `Reset`
  answer `BadNotSupported`: the line's PLC and the service (systemd) run the station, not OPC UA.
- `SystemState` (`SystemStateDescriptionDataType`): PRD_1 productive, UDT_5 unscheduled downtime
  with the standing problems as description, SBY_2 starting, NST_6 stopped.
- `RecipeManagement`: the station's recipes from its config. `GetRecipeListFiltered` lists them
  (prepared = the active one); `PrepareRecipe` selects one for the next parts, like the bus's recipe
  command (the `recipe` role; journaled with the user); `UnprepareRecipe` of another recipe changes
  nothing, of the active one is refused (`BadInvalidState`: the line always runs a recipe).
- `ResultManagement`: `GetResultById`, `GetResultComponentsById` and `GetResultListFiltered` over the
  journal (results.py); handles are 0 (nothing is held between calls: page with StartIndex).
- a `ResultReadyEvent` from the vision system object for every journaled decision and revision.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asyncua import Node, Server, ua

from adfm.schema import InspectionResult

from .access import current_user
from .results import (
    MV,
    Ids,
    ResultFilter,
    ResultIdError,
    ResultStore,
    identifier,
    parse_result_id,
    result_content,
    result_state,
    results_variant,
    to_result,
)

log = logging.getLogger(__name__)

MV_URI = "http://opcfoundation.org/UA/MachineVision"
NODESET = Path(__file__).resolve().parents[1] / "nodesets" / "Opc.Ua.MachineVision.NodeSet2.xml"
#: numeric ids in the nodeset's own namespace (MV_URI)
VISION_SYSTEM_TYPE = 1003
RECIPE_MANAGEMENT_TYPE = 1004
RESULT_MANAGEMENT_TYPE = 1007
RESULT_READY_EVENT_TYPE = 1024
SYSTEM_STATE_DESCRIPTION = 3024
#: BinaryIdBaseDataType: its subtypes (recipe and configuration ids) come with empty definitions
BINARY_ID_BASE = 3019
STATES = {"Preoperational": 5028, "Halted": 5029, "Error": 5030, "Operational": 5031}
SYSTEM_STATES = {"Preoperational": "SBY_2", "Halted": "NST_6", "Error": "UDT_5", "Operational": "PRD_1"}
#: the methods that change what the line does, and the role each needs (access.py)
CHANGING = {"PrepareRecipe": "recipe", "UnprepareRecipe": "recipe", "Halt": "recipe", "Reset": "recipe"}

V = ua.VariantType


def _status(code: int, bad_argument: int | None = None, n_args: int = 0) -> ua.CallMethodResult:
    res = ua.CallMethodResult(StatusCode=ua.StatusCode(code))
    if bad_argument is not None:
        res.InputArgumentResults = [ua.StatusCode(ua.StatusCodes.BadInvalidArgument if i == bad_argument
                                                  else ua.StatusCodes.Good) for i in range(n_args)]
    return res


def _ok() -> ua.Variant:
    return ua.Variant(0, V.Int32)


def _value(args: tuple[Any, ...], i: int, default: Any = None) -> Any:
    if i >= len(args):
        return default
    v = args[i]
    v = v.Value if isinstance(v, ua.Variant) else v
    return default if v is None else v


@dataclass
class Station:
    """What the vision system knows of the station: the service's latest state snapshot (recipes,
    active recipe, model ids, health; process.py keeps it current), its journal, and `prepare`,
    which asks the service to select a recipe (the service journals the command) and says why it
    refused, or None."""

    name: str
    epoch: str
    db_path: Path
    prepare: Callable[[str, str], Awaitable[str | None]]
    snapshot: dict = field(default_factory=dict)
    result_page: int = 100
    _store: ResultStore | None = field(default=None, repr=False)

    @property
    def store(self) -> ResultStore:
        if self._store is None:
            self._store = ResultStore(self.db_path, self.epoch)
        return self._store

    def recipes(self) -> dict[str, str]:
        """recipe → product"""
        return dict(self.snapshot.get("recipes", {}))

    def model_ids(self) -> dict[str, str]:
        """recipe → model id"""
        return dict(self.snapshot.get("model_ids", {}))

    def active_recipe(self) -> str:
        return str(self.snapshot.get("active_recipe", ""))

    def ids(self) -> Ids:
        return Ids(self.name, self.epoch, self.recipes(), self.model_ids())


async def complete_id_definitions(server: Server, mv: int) -> list[str]:
    """Give the subtypes of BinaryIdBaseDataType their fields. The published nodeset gives
    RecipeIdExternalDataType, RecipeIdInternalDataType and ConfigurationIdDataType an empty
    definition (they only inherit), so a client that builds its classes from the server's
    DataTypeDefinition attributes (asyncua's `load_data_type_definitions` does) cannot decode them,
    nor ResultDataType, which holds them. OPC UA lists inherited fields in a subtype's definition;
    the server writes them there after loading (the file stays as published). asyncua's import
    binds these names to the base class: each gets its own class here, registered under its own
    encoding, so what the server sends and decodes is the subtype. Returns the names."""
    base = server.get_node(ua.NodeId(BINARY_ID_BASE, mv))
    fields = (await base.read_attribute(ua.AttributeIds.DataTypeDefinition)).Value.Value.Fields
    done = []
    for sub in await base.get_children(refs=ua.ObjectIds.HasSubtype):
        have = (await sub.read_attribute(ua.AttributeIds.DataTypeDefinition)).Value
        if have is not None and have.Value is not None and have.Value.Fields:
            continue
        encodings = await sub.get_referenced_nodes(refs=ua.ObjectIds.HasEncoding)
        binary = [e for e in encodings if (await e.read_browse_name()).Name == "Default Binary"]
        sdef = ua.StructureDefinition(DefaultEncodingId=binary[0].nodeid if binary else ua.NodeId(),
                                      BaseDataType=base.nodeid,
                                      StructureType=ua.StructureType.StructureWithOptionalFields, Fields=fields)
        await server.write_attribute_value(sub.nodeid, ua.DataValue(ua.Variant(sdef, V.ExtensionObject)),
                                           ua.AttributeIds.DataTypeDefinition)
        name = (await sub.read_browse_name()).Name
        if binary:
            cls = type(name, (MV.BinaryIdBaseDataType,), {"data_type": sub.nodeid})
            if hasattr(ua, name):
                delattr(ua, name)  # the import's alias of the base class
            ua.register_extension_object(name, binary[0].nodeid, cls, sub.nodeid)
        done.append(name)
    return done


class VisionSystem:
    """The instance and its methods; `update` and `result_ready` run on the server's event loop."""

    def __init__(self, server: Server, station: Station) -> None:
        self.server = server
        self.station = station
        self.mv = 0
        self.node: Node | None = None
        self.method_roles: dict[ua.NodeId, str] = {}
        self.method_names: dict[ua.NodeId, str] = {}
        self._state = ""
        self._description = ""
        self._events: Any = None
        self._current: Node | None = None
        self._current_id: Node | None = None
        self._system_state: Node | None = None

    async def build(self, idx: int) -> None:
        s, name = self.server, self.station.name
        self.mv = mv = await s.get_namespace_index(MV_URI)
        await complete_id_definitions(s, mv)
        vs = await s.nodes.objects.add_object(ua.NodeId(name, idx), ua.QualifiedName(name, idx),
                                              ua.NodeId(VISION_SYSTEM_TYPE, mv), instantiate_optional=False)
        self.node = vs
        recipes = await vs.add_object(ua.NodeId(f"{name}.RecipeManagement", idx),
                                      ua.QualifiedName("RecipeManagement", mv),
                                      ua.NodeId(RECIPE_MANAGEMENT_TYPE, mv), instantiate_optional=False)
        results = await vs.add_object(ua.NodeId(f"{name}.ResultManagement", idx),
                                      ua.QualifiedName("ResultManagement", mv),
                                      ua.NodeId(RESULT_MANAGEMENT_TYPE, mv), instantiate_optional=False)
        self._system_state = await vs.add_variable(
            ua.NodeId(f"{name}.SystemState", idx), ua.QualifiedName("SystemState", mv),
            ua.Variant(self._system_state_value("Preoperational", ""), V.ExtensionObject),
            datatype=ua.NodeId(SYSTEM_STATE_DESCRIPTION, mv))
        machine = await vs.get_child(f"{mv}:VisionStateMachine")
        self._current = await machine.get_child("0:CurrentState")
        self._current_id = await self._current.get_child("0:Id")
        handlers: dict[tuple[Node, str], Callable[..., Awaitable[Any]]] = {
            (recipes, "GetRecipeListFiltered"): self.get_recipe_list,
            (recipes, "PrepareRecipe"): self.prepare_recipe,
            (recipes, "UnprepareRecipe"): self.unprepare_recipe,
            (results, "GetResultById"): self.get_result_by_id,
            (results, "GetResultComponentsById"): self.get_result_components,
            (results, "GetResultListFiltered"): self.get_result_list,
            (machine, "Halt"): self.not_supported,
            (machine, "Reset"): self.not_supported,
        }
        for (parent, method), fn in handlers.items():
            node = await parent.get_child(f"{mv}:{method}")
            s.link_method(node, fn)
            self.method_names[node.nodeid] = method
            if method in CHANGING:
                self.method_roles[node.nodeid] = CHANGING[method]
        # Emitted by the vision system, and again by the Server object for clients that subscribe
        # to all of a server's events there (asyncua delivers an event to its emitting node's
        # subscribers only); the source is the vision system either way.
        etype = ua.NodeId(RESULT_READY_EVENT_TYPE, mv)
        self._events = [await s.get_event_generator(etype, vs),
                        await s.get_event_generator(etype, ua.ObjectIds.Server)]
        self._events[1].event.SourceNode = vs.nodeid
        self._events[1].event.SourceName = name
        await s.nodes.server.add_reference(vs.nodeid, ua.ObjectIds.HasNotifier, forward=True, bidirectional=True)
        await self.set_state("Preoperational", "")

    # ---- state -------------------------------------------------------------------------------

    def _system_state_value(self, state: str, description: str) -> Any:
        return MV.SystemStateDescriptionDataType(State=getattr(MV.SystemStateDataType, SYSTEM_STATES[state]),
                                                 StateDescription=description[:1000] or None)

    async def set_state(self, state: str, description: str) -> None:
        if (state, description) == (self._state, self._description):
            return
        assert self._current is not None and self._current_id is not None and self._system_state is not None
        if state != self._state:
            await self._current.write_value(ua.LocalizedText(state))
            await self._current_id.write_value(ua.Variant(ua.NodeId(STATES[state], self.mv), V.NodeId))
        await self._system_state.write_value(
            ua.Variant(self._system_state_value(state, description), V.ExtensionObject))
        self._state, self._description = state, description

    # ---- results -----------------------------------------------------------------------------

    async def result_ready(self, r: InspectionResult) -> None:
        """One ResultReadyEvent. Every property is given with its data type: asyncua sends a
        property the event type gives no default value as null otherwise."""
        ids = self.station.ids()
        res = to_result(r, ids)
        props: list[tuple[str, Any, ua.VariantType]] = [
            ("ResultId", res.ResultId, V.ExtensionObject),
            ("IsPartial", False, V.Boolean),
            ("IsSimulated", False, V.Boolean),
            ("ResultState", result_state(r), V.Int32),
            ("PartId", res.PartId, V.ExtensionObject),
            ("InternalRecipeId", res.InternalRecipeId, V.ExtensionObject),
            ("ExternalRecipeId", res.ExternalRecipeId or MV.RecipeIdExternalDataType(Id=""), V.ExtensionObject),
            ("ProductId", res.ProductId or MV.ProductIdDataType(Id=""), V.ExtensionObject),
            ("InternalConfigurationId", res.InternalConfigurationId, V.ExtensionObject),
            ("JobId", res.JobId, V.ExtensionObject),
            ("CreationTime", res.CreationTime, V.DateTime),
            ("ProcessingTimes", res.ProcessingTimes, V.ExtensionObject),
            ("ResultContent", result_content(r), V.Variant),
        ]
        severity = 500 if r.action in ("reject", "hold") or r.verdict in ("fail", "review") else 100
        what = f"part {r.part_id} seq {r.seq}" + (f" revision {r.revision}" if r.revision else "")
        message = f"{what}: {r.verdict}, {r.action or '-'} ({r.decision_source or '-'})"
        for gen in self._events:
            for name, value, vtype in props:
                gen.event.add_property(name, value, vtype)
            gen.event.Severity = severity
            await gen.trigger(time_attr=res.CreationTime, message=message)

    def _find(self, text: str) -> InspectionResult | None:
        seq, revision = parse_result_id(text, self.station.name, self.station.epoch)
        return self.station.store.get(seq, revision)

    def _lookup(self, method_name: str, args: tuple) -> InspectionResult | ua.CallMethodResult:
        """The result a method's first argument names, or the status outputs that say why not."""
        try:
            r = self._find(identifier(_value(args, 0)))
        except ResultIdError as exc:
            log.warning("OPC UA %s: %s", method_name, exc)
            return _status(ua.StatusCodes.BadInvalidArgument, 0, len(args))
        return _status(ua.StatusCodes.BadNotFound, 0, len(args)) if r is None else r

    async def get_result_by_id(self, parent: ua.NodeId, *args: Any) -> Any:
        r = self._lookup("GetResultById", args)
        if not isinstance(r, InspectionResult):
            return r
        return [ua.Variant(0, V.UInt32), ua.Variant(to_result(r, self.station.ids()), V.ExtensionObject), _ok()]

    async def get_result_components(self, parent: ua.NodeId, *args: Any) -> Any:
        r = self._lookup("GetResultComponentsById", args)
        if not isinstance(r, InspectionResult):
            return r
        x = to_result(r, self.station.ids())

        def ext(v: Any) -> ua.Variant:
            return ua.Variant(v, V.ExtensionObject)

        return [ua.Variant(False, V.Boolean), ua.Variant(0, V.UInt32), ua.Variant(x.IsPartial, V.Boolean),
                ua.Variant(False, V.Boolean), ua.Variant(x.ResultState, V.Int32), ext(None), ext(x.PartId),
                ext(x.ExternalRecipeId), ext(x.InternalRecipeId), ext(x.ProductId), ext(None),
                ext(x.InternalConfigurationId), ext(x.JobId), ua.Variant(x.CreationTime, V.DateTime),
                ext(x.ProcessingTimes), ua.Variant(x.ResultContent, V.Variant), _ok()]

    async def get_result_list(self, parent: ua.NodeId, *args: Any) -> Any:
        """Inputs: ResultState, MeasId, PartId, ExternalRecipeId, InternalRecipeId,
        ExternalConfigurationId, InternalConfigurationId, ProductId, JobId, MaxResults, StartIndex, Timeout."""
        meas = identifier(_value(args, 1))
        if meas:  # the station never gets a MeasId (jobs are not started over OPC UA): nothing matches
            return [ua.Variant(True, V.Boolean), ua.Variant(0, V.UInt32), ua.Variant(0, V.UInt32),
                    results_variant([]), _ok()]
        ext_recipe, int_recipe = identifier(_value(args, 3)), identifier(_value(args, 4))
        if ext_recipe and int_recipe and ext_recipe != int_recipe:
            return [ua.Variant(True, V.Boolean), ua.Variant(0, V.UInt32), ua.Variant(0, V.UInt32),
                    results_variant([]), _ok()]
        flt = ResultFilter(result_state=int(_value(args, 0, 0)), part_id=identifier(_value(args, 2)),
                           recipe=ext_recipe or int_recipe,
                           configuration=identifier(_value(args, 5)) or identifier(_value(args, 6)),
                           product=identifier(_value(args, 7)), job=identifier(_value(args, 8)))
        limit = int(_value(args, 9, 0)) or self.station.result_page
        limit = min(limit, self.station.result_page)
        start = int(_value(args, 10, 0))
        ids = self.station.ids()
        page, total = self.station.store.find(flt, ids, start, limit)
        complete = start + len(page) >= total
        return [ua.Variant(complete, V.Boolean), ua.Variant(total, V.UInt32), ua.Variant(0, V.UInt32),
                results_variant([to_result(r, ids) for r in page]), _ok()]

    # ---- recipes -----------------------------------------------------------------------------

    def _recipe_id(self, name: str) -> Any:
        return MV.RecipeIdInternalDataType(Id=name, Version=self.station.model_ids().get(name) or None)

    async def get_recipe_list(self, parent: ua.NodeId, *args: Any) -> Any:
        """Inputs: ExternalId, ProductId, IsPrepared (0 false, 1 true, 2 don't care), MaxResults,
        StartIndex, Timeout."""
        want, product = identifier(_value(args, 0)), identifier(_value(args, 1))
        prepared = int(_value(args, 2, 2))
        active = self.station.active_recipe()
        names = [n for n, p in self.station.recipes().items()
                 if (not want or n == want) and (not product or p == product)
                 and (prepared == 2 or (n == active) == (prepared == 1))]
        start, limit = int(_value(args, 4, 0)), int(_value(args, 3, 0)) or len(names)
        page = names[start:start + limit]
        return [ua.Variant(start + len(page) >= len(names), V.Boolean), ua.Variant(len(names), V.UInt32),
                ua.Variant(0, V.UInt32), ua.Variant([self._recipe_id(n) for n in page], V.ExtensionObject), _ok()]

    def _recipe_arg(self, args: tuple[Any, ...]) -> tuple[str, int]:
        """The recipe named by ExternalId or InternalIdIn, and which argument named it."""
        ext, internal = identifier(_value(args, 0)), identifier(_value(args, 1))
        return (ext, 0) if ext else (internal, 1)

    async def prepare_recipe(self, parent: ua.NodeId, *args: Any) -> Any:
        name, which = self._recipe_arg(args)
        user = current_user.get()
        who = user.name if user is not None and user.name else "anonymous"
        why = await self.station.prepare(name, who)
        if why is not None:
            return _status(ua.StatusCodes.BadInvalidArgument, which, len(args))
        self.station.snapshot = {**self.station.snapshot, "active_recipe": name}
        return [ua.Variant(self._recipe_id(name), V.ExtensionObject), ua.Variant(True, V.Boolean), _ok()]

    async def unprepare_recipe(self, parent: ua.NodeId, *args: Any) -> Any:
        name, which = self._recipe_arg(args)
        if name not in self.station.recipes():
            return _status(ua.StatusCodes.BadInvalidArgument, which, len(args))
        if name == self.station.active_recipe():
            log.warning("OPC UA UnprepareRecipe %r refused: it is the active recipe (prepare another)", name)
            return _status(ua.StatusCodes.BadInvalidState)
        return [ua.Variant(self._recipe_id(name), V.ExtensionObject), _ok()]

    async def not_supported(self, parent: ua.NodeId, *args: Any) -> Any:
        return _status(ua.StatusCodes.BadNotSupported)
