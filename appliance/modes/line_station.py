"""The line's parts assembled from the station config: recipes (model, gate, reference, deadline,
fail-safe), the VLM runner, the line controller, the PLC link and the OPC UA server.

The service builds one LineStation when the config has a `line` section and drives `step()` from
its loop instead of the free-running pipeline.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from adfm.schema import InspectionResult

from ..config.station import StationConfig
from ..inspection.runner import VlmModel, VlmRunner
from ..inspection.worker import BackendSpec
from ..journal.store import Journal, JournalError
from ..system.health import Health
from .freerun import ModelInfo
from .line import DecisionOutput, LineController, LineTrigger, Recipe

if TYPE_CHECKING:
    from ..plc.modbus import ModbusLink
    from ..plc.opcua import StationOpcUa

log = logging.getLogger(__name__)

DEFAULT_MODEL = "default"


class LineStation:
    def __init__(
        self,
        cfg: StationConfig,
        *,
        journal: Journal,
        health: Health,
        publish: Callable[[InspectionResult], None],
        camera: Any,
        model: ModelInfo,
        references: dict[str, np.ndarray],
        gate: Any = None,
        backend: BackendSpec | None = None,
        on_result: Callable[[InspectionResult], None] | None = None,
        load_model: Callable[[Path], ModelInfo] | None = None,
    ) -> None:
        assert cfg.line is not None
        self.cfg = cfg
        self.journal = journal
        self.health = health
        self.publish = publish
        line = cfg.line
        models = {DEFAULT_MODEL: VlmModel(model, backend or self._spec(cfg.model.dir))}
        gates: dict[Path, Any] = {}
        recipes: dict[str, Recipe] = {}
        default_product = cfg.product_for(cfg.line_camera)
        for r in cfg.recipes:
            key = DEFAULT_MODEL
            if r.model_dir is not None and r.model_dir != cfg.model.dir:
                key = str(r.model_dir)
                if key not in models:
                    info = (load_model or _model_info)(r.model_dir)
                    models[key] = VlmModel(info, backend or self._spec(r.model_dir))
            mode = r.gate_mode or cfg.gate.mode
            recipe_gate = gate
            if r.gate_path is not None and mode != "off":
                if r.gate_path not in gates:
                    from adfm.runtime.gate import Gate

                    gates[r.gate_path] = Gate.load(r.gate_path)
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
                                max_tokens=cfg.model.max_tokens, nice=line.vlm_nice)
        self.link: ModbusLink | None = None
        outputs: list[DecisionOutput] = []
        if cfg.plc is not None:
            from ..plc.modbus import ModbusLink

            self.link = ModbusLink(cfg.plc.modbus, self.trigger, health)
            outputs.append(self.link)
        self.opcua: StationOpcUa | None = None
        self.controller = LineController(
            cfg.station, journal, publish, health, camera, cfg.line_camera, self.runner, recipes,
            next(iter(recipes)), {k: (m.info.model_id, m.info.prompt_version) for k, m in models.items()},
            margin_ms=line.margin_ms, outputs=outputs, on_result=self._on_result,
        )
        self._on_result_cb = on_result
        health.recipe = self.controller.active_recipe

    def _spec(self, model_dir: Path) -> BackendSpec:
        m = self.cfg.model
        return BackendSpec(m.backend, m.backend_kwargs(model_dir, m.n_ctx))

    # ---- wiring -------------------------------------------------------------------------------

    def _vlm_done(self, key, inference) -> None:
        self.controller.vlm_done(key, inference)

    def _vlm_skipped(self, key) -> None:
        self.controller.vlm_skipped(key)

    def _on_result(self, result: InspectionResult) -> None:
        if self.opcua is not None:
            self.opcua.result(result)
        if self._on_result_cb is not None:
            self._on_result_cb(result)

    def trigger(self, trigger: LineTrigger) -> None:
        self.controller.trigger(trigger)

    def trigger_now(self, part_id: str | None = None, recipe_code: int | None = None) -> None:
        """A trigger from software (tests, tools) at this instant."""
        self.controller.trigger(LineTrigger(time.monotonic(), time.time(), part_id, recipe_code))

    def select_recipe(self, name: str) -> None:
        self.controller.select_recipe(name)
        self.health.recipe = name

    # ---- lifecycle ----------------------------------------------------------------------------

    def recover(self) -> list[InspectionResult]:
        """Parts a previous run triggered but did not decide: the line has long acted on them (or
        not); they are recorded `review` with the reason, for a person to look at."""
        out = []
        for part in self.journal.pending():
            imaged = "imaged" if part.image_path else "not yet imaged"
            result = InspectionResult(
                station=self.cfg.station, seq=part.seq, part_id=part.part_id, camera=part.camera,
                frame_number=part.frame_number, captured_at=part.captured_at, verdict="review",
                reason=f"the service stopped before deciding this part ({imaged}); the line's action is unknown",
                image_path=part.image_path, image_width=part.image_width, image_height=part.image_height,
                attempts=0,
            )
            try:
                stored = self.journal.complete(result)
            except JournalError as exc:
                log.error("cannot record pending seq %d: %s", part.seq, exc)
                continue
            self.publish(stored)
            out.append(stored)
        self.controller._next_pub = self.journal.last_seq() + 1
        return out

    def start(self) -> None:
        """Everything up before the PLC link: the PLC sees the heartbeat only once the line can decide."""
        if self.cfg.opcua is not None:
            from ..plc.opcua import StationOpcUa

            self.opcua = StationOpcUa(self.cfg.opcua, self)
            self.opcua.start()
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

    def close(self) -> None:
        if self.opcua is not None:
            self.opcua.stop()
        if self.link is not None:
            self.link.stop()
        self.controller.close()
        self.runner.stop()


def _model_info(model_dir: Path) -> ModelInfo:
    from adfm.manifest import load_model_dir

    m = load_model_dir(model_dir, check_hashes=True)
    return ModelInfo(m.model_id, m.prompt_version, m.min_pixels, m.max_pixels)
