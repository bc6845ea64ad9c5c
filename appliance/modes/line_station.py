"""The line's parts assembled from the station config: recipes (model, gate, reference, deadline,
fail-safe), the VLM runner, the line controller, the PLC link and the OPC UA server.

The service builds one LineStation when the config has a `line` section and drives `step()` from
its loop; free-run builds a FreeRunStation on the same inspection core instead. Every model's
limits (context, answer length) come from its manifest through `model_limits`, the one source the
free-run mode uses too, so a config that leaves `n_ctx`/`max_tokens` to the manifest loads alike.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adfm.schema import InspectionResult

from ..config.station import ModelLimits, StationConfig, model_limits
from ..inspection.core import GenerationOptions, ModelInfo, build_result
from ..inspection.runner import VlmModel, VlmRunner
from ..inspection.worker import BackendSpec
from ..journal.store import Journal, JournalError
from ..journal.writer import JournalWriter
from ..system.health import Health
from ..system.priority import BACKGROUND_NICE
from .line import LineController, LineTrigger, Recipe
from .outputs import Outputs

if TYPE_CHECKING:
    from ..plc.modbus import ModbusLink
    from ..plc.opcua import StationOpcUa

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


class ModelLimitsError(ValueError):
    """A recipe's model cannot run with the limits the config allows (the message says which)."""


class LineStation:
    def __init__(
        self,
        cfg: StationConfig,
        *,
        journal: Journal,
        health: Health,
        outputs: Outputs,
        camera: Any,
        model: ModelInfo,
        limits: ModelLimits,
        references: dict[str, np.ndarray],
        gate: Any = None,
        backend: BackendSpec | None = None,
        load_model: Callable[[Path], tuple[ModelInfo, ModelLimits]] | None = None,
        load_gate: Callable[[Path], Any] | None = None,
    ) -> None:
        assert cfg.line is not None
        self.cfg = cfg
        self.journal = journal
        self.health = health
        self.outputs = outputs
        line = cfg.line
        models = {DEFAULT_MODEL: self._vlm_model(model, limits, backend, cfg.model.dir)}
        gates: dict[Path, Any] = {}
        recipes: dict[str, Recipe] = {}
        default_product = cfg.product_for(cfg.line_camera)
        for r in cfg.recipes:
            key = DEFAULT_MODEL
            if r.model_dir is not None and r.model_dir != cfg.model.dir:
                key = str(r.model_dir)
                if key not in models:
                    info, rlimits = (load_model(r.model_dir) if load_model is not None
                                     else _model_info(cfg, r.model_dir, r.name))
                    models[key] = self._vlm_model(info, rlimits, backend, r.model_dir)
            mode = r.gate_mode or cfg.gate.mode
            recipe_gate = gate
            if r.gate_path is not None and mode != "off":
                if r.gate_path not in gates:
                    from adfm.runtime.gate import Gate

                    gates[r.gate_path] = (load_gate or Gate.load)(r.gate_path)
                recipe_gate = gates[r.gate_path]
            product = r.product or (default_product.name if default_product else None)
            recipes[r.name] = Recipe(
                name=r.name, deadline_ms=r.deadline_ms or line.deadline_ms, failsafe=r.failsafe or line.failsafe,
                model=key, product=product, gate=recipe_gate if mode != "off" else None, gate_mode=mode,
                reference=references.get(product) if product else None, code=r.code,
            )
        if not recipes:
            product = default_product.name if default_product else None
            recipes["default"] = Recipe(
                name="default", deadline_ms=line.deadline_ms, failsafe=line.failsafe, model=DEFAULT_MODEL,
                product=product, gate=gate if cfg.gate.mode != "off" else None, gate_mode=cfg.gate.mode,
                reference=references.get(product) if product else None,
            )
        self.recipes = recipes
        self.models = models
        self.runner = VlmRunner(models, self._vlm_done, self._vlm_skipped, backlog=line.vlm_backlog,
                                hang_s=cfg.model.deadline_s, load_timeout_s=cfg.model.load_timeout_s,
                                nice=line.vlm_nice)
        self.controller = LineController(
            cfg.station, journal, health, camera, cfg.line_camera, self.runner, recipes, next(iter(recipes)),
            {k: m.info for k, m in models.items()}, outputs, margin_ms=line.margin_ms,
        )
        self.link: ModbusLink | None = None
        self._plc_commands: JournalWriter | None = None
        if cfg.plc is not None:
            from ..plc.modbus import ModbusLink

            # the PLC's commands (recipe requests, refused counts) are journaled off the link's
            # thread: a locked database must not hold up trigger polling or a pulse
            self._plc_commands = JournalWriter("plc-commands", nice=BACKGROUND_NICE)
            self.link = ModbusLink(cfg.plc.modbus, self.trigger, health, alive=self.controller.alive,
                                   on_missed=self.controller.missed_ejection, on_refused=self._plc_refused,
                                   on_recipe=self._plc_recipe, recipe_code=self._recipe_code, ready=self._ready)
            outputs.add("plc", decided=self.link.decided)
        self.opcua: StationOpcUa | None = None
        health.recipe = self.controller.active_recipe

    def _vlm_model(self, info: ModelInfo, limits: ModelLimits, backend: BackendSpec | None,
                   model_dir: Path) -> VlmModel:
        m = self.cfg.model
        spec = backend or BackendSpec(m.backend, m.backend_kwargs(model_dir, limits.n_ctx))
        return VlmModel(info, spec, GenerationOptions(max_tokens=limits.max_tokens, temperature=m.temperature))

    # ---- wiring -------------------------------------------------------------------------------

    def _vlm_done(self, key, inference) -> None:
        self.controller.vlm_done(key, inference)

    def _vlm_skipped(self, key) -> None:
        self.controller.vlm_skipped(key)

    def trigger(self, trigger: LineTrigger) -> None:
        self.controller.trigger(trigger)

    def trigger_now(self, part_id: str | None = None, recipe_code: int | None = None) -> None:
        """A trigger from software (tests, tools) at this instant."""
        self.controller.trigger(LineTrigger(time.monotonic(), time.time(), part_id, recipe_code))

    def select_recipe(self, name: str) -> None:
        self.controller.select_recipe(name)
        self.health.recipe = name

    # ---- the PLC's requests (the link's thread) -------------------------------------------------

    @property
    def _plc_client(self) -> str:
        m = self.cfg.plc.modbus  # type: ignore[union-attr]
        return f"plc {m.host}:{m.port}"

    def _plc_recipe(self, code: int) -> tuple[bool, str]:
        """A recipe change the PLC requests by code (handshake): selected for the next parts, or
        failed; journaled either way, like a changeover by command."""
        recipe = next((r for r in self.recipes.values() if r.code == code), None)
        known = ", ".join(f"{r.code} {r.name}" for r in self.recipes.values() if r.code is not None) or "none"
        name = recipe.name if recipe is not None else str(code)
        if recipe is not None:
            self.select_recipe(recipe.name)
            detail = f"recipe {recipe.name} selected for the next parts"
        else:
            detail = f"refused: no recipe has code {code} (known: {known})"
        self._journal_command("recipe", name, recipe is not None, detail)
        return recipe is not None, detail

    def _plc_refused(self, counts: int, why: str) -> None:
        """A trigger counter advance refused as implausible: journaled as a refused command."""
        self._journal_command("parts", str(counts), False, why)

    def _journal_command(self, command: str, argument: str, accepted: bool, detail: str) -> None:
        assert self._plc_commands is not None
        client = self._plc_client
        self._plc_commands.submit(f"PLC command {command} {argument}", lambda: self.journal.record_command(
            command, argument, client=client, operator="", accepted=accepted, detail=detail))

    def _recipe_code(self) -> int:
        recipe = self.recipes.get(self.controller.active_recipe)
        return recipe.code or 0 if recipe is not None else 0

    def _ready(self) -> bool:
        return self.controller.alive() and not self.runner.down

    # ---- lifecycle ----------------------------------------------------------------------------

    def recover(self) -> list[InspectionResult]:
        """Parts a previous run triggered but did not decide: the line has long acted on them (or
        not); they are recorded `review` with the reason, for a person to look at."""
        out = []
        for part in self.journal.pending():
            imaged = "imaged" if part.image_path else "not yet imaged"
            result = build_result(
                station=self.cfg.station, seq=part.seq, part_id=part.part_id, camera=part.camera,
                frame_number=part.frame_number, captured_at=part.captured_at, verdict="review",
                reason=f"the service stopped before deciding this part ({imaged}); the line's action is unknown",
                model=None, image=(part.image_path, part.image_width, part.image_height),
            )
            try:
                stored = self.journal.complete(result)
            except JournalError as exc:
                log.error("cannot record pending seq %d: %s", part.seq, exc)
                continue
            self.outputs.recorded(stored)
            out.append(stored)
        self.controller.resume_publishing(self.journal.last_seq() + 1)
        return out

    def start(self) -> None:
        """Everything up before the PLC link: the PLC sees the heartbeat only once the line can decide."""
        if self.cfg.opcua is not None:
            from ..plc.opcua import StationOpcUa

            self.opcua = StationOpcUa(self.cfg.opcua, self)
            self.opcua.start()
            self.outputs.add("opcua", recorded=self.opcua.result)
        self.runner.start(preload=DEFAULT_MODEL)
        self.controller.start()
        if self.link is not None:
            self.link.start()

    def step(self, timeout_s: float) -> None:
        self.controller.step(timeout_s)
        self.health.recipe = self.controller.active_recipe

    @property
    def decided(self) -> int:
        return self.controller.decided

    def counters(self) -> dict[str, float]:
        """The deciding loop's counters and the PLC link's (status, metrics, OPC UA)."""
        out = self.controller.counters()
        if self.link is not None:
            s = self.link.status()
            out.update(plc_connected=float(s["connected"]), plc_poll_gap_ms_max=s["poll_gap_ms_max"],
                       plc_pulses=s["pulses"], plc_pulse_late_ms_max=s["pulse_late_ms_max"],
                       plc_pulse_late_ms_p99=s["pulse_late_ms_p99"], plc_disconnects=s["disconnects"],
                       plc_results_written=s["results_written"], plc_missed_link_parts=s["missed_link_parts"],
                       plc_refused_counts=s["refused_counts"], plc_fifo=s["fifo"])
        return out

    def worker_state(self) -> tuple[bool, int]:
        return self.runner.alive, self.runner.restarts

    def close(self) -> None:
        if self.opcua is not None:
            self.opcua.stop()
        if self.link is not None:
            self.link.stop()
        if self._plc_commands is not None:
            self._plc_commands.close()
        self.controller.close()
        self.runner.stop()


def _model_info(cfg: StationConfig, model_dir: Path, recipe: str) -> tuple[ModelInfo, ModelLimits]:
    """A recipe's own model: its manifest (hashes checked) and the limits it runs with."""
    from adfm.manifest import load_model_dir

    m = load_model_dir(model_dir, check_hashes=True)
    limits = model_limits(cfg, m, f"recipes.{recipe}.model_dir ({model_dir})")
    if limits.problems:
        raise ModelLimitsError("; ".join(limits.problems))
    for warning in limits.warnings:
        log.warning("%s", warning)
    return ModelInfo(m.model_id, m.prompt_version, m.min_pixels, m.max_pixels), limits
