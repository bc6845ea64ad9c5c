"""Model commands on a running station: promote a stored candidate, roll back, start or stop a shadow.

Commands come from the bus's control socket (a key with the `model` role; the bus journals every
command, accepted or refused, with its key and operator). A promotion or rollback is applied by the
deciding loop itself between two events, so every part triggered before it is decided with the model
it was triggered under and every part after it with the new one: the switch falls on a part
boundary, no part is lost or decided twice, and each result names the model that decided it
(`model_id`). The store's state is saved after the switch, so a restart keeps the active model.

The guard (config `models.guard`): a promotion is refused unless the candidate, in shadow on parts the
active model decided, agrees with the operators' verdicts on at least `guard_min_parts` of them as
often as the active model does. A refused command changes nothing.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from adfm.manifest import ManifestError, load_model_dir
from adfm.schema import InspectionResult, ModelRequest

from ..config.station import StationConfig, model_limits
from ..inspection.core import GenerationOptions, ModelInfo
from ..inspection.runner import VlmModel
from ..inspection.worker import BackendSpec
from ..journal.store import Journal
from .compare import promotion_guard
from .shadow import Publish, ShadowRun
from .store import ModelStore, ModelStoreError

if TYPE_CHECKING:
    from ..modes.line_station import LineStation

log = logging.getLogger(__name__)

#: how long a command waits for the deciding loop to apply a switch
SWITCH_WAIT_S = 5.0


class ModelCommandRefused(ValueError):
    """A model command that cannot be carried out; the message says why (nothing was changed)."""


def with_store_model(cfg: StationConfig) -> StationConfig:
    """The config with `model.dir` set to the store's active model, when the store has one (a
    promotion outlives a restart); the config as it is otherwise."""
    store = ModelStore.for_state_dir(cfg.journal_dir)
    try:
        active = store.state().active
    except ModelStoreError as exc:
        log.error("%s; using model.dir from the config", exc)
        return cfg
    if not active or not store.has(active):
        return cfg
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"dir": store.path(active)})})


class ModelControl:
    """The station's model commands and its shadow run. Commands arrive on the bus thread."""

    def __init__(self, cfg: StationConfig, journal: Journal, store: ModelStore, *, active: ModelInfo,
                 line: LineStation | None, backend: BackendSpec | None = None, publish: Publish | None = None,
                 health: Any = None, config_model_dir: Path | None = None) -> None:
        self.cfg = cfg
        #: the model the config names (rollback may return to it though it is not in the store)
        self.config_model_dir = config_model_dir
        self.journal = journal
        self.store = store
        self.line = line
        self.backend = backend
        self.publish = publish
        self.health = health
        self.active = active
        self.shadow: ShadowRun | None = None
        self._lock = threading.Lock()  # one command at a time
        # the runner's key of each model the line knows (the station's own model under its start key)
        self._keys: dict[str, str] = {}
        if line is not None:
            from ..modes.line_station import DEFAULT_MODEL

            self._keys[active.model_id] = DEFAULT_MODEL
            line.controller.on_decided = self._offer

    # ---- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Resume the shadow run the store names (a candidate that cannot load is reported, not fatal)."""
        try:
            state = self.store.state()
        except ModelStoreError as exc:
            log.error("%s", exc)
            return
        if state.shadow and self.line is not None:
            try:
                self._start_shadow(state.shadow)
            except ModelCommandRefused as exc:
                log.error("shadow model %s not started: %s", state.shadow, exc)

    def close(self) -> None:
        if self.shadow is not None:
            self.shadow.stop()
            self.shadow = None

    def counters(self) -> dict[str, float]:
        return self.shadow.counters() if self.shadow is not None else {}

    # ---- commands (the bus thread) ------------------------------------------------------------

    def handle(self, request: ModelRequest) -> str:
        """Carry out a model command; returns what was done, raises ModelCommandRefused (nothing changed)."""
        with self._lock:
            try:
                if request.action == "promote":
                    return self._promote(request.model_id)
                if request.action == "rollback":
                    return self._rollback()
                if request.action == "shadow":
                    return self._shadow(request.model_id)
                return self._shadow_stop()
            except ModelStoreError as exc:
                raise ModelCommandRefused(str(exc)) from exc

    def _need_line(self, what: str) -> LineStation:
        if self.line is None:
            raise ModelCommandRefused(f"{what} on a running station needs line mode; this station runs free-run "
                                      "(it loads the store's active model at start)")
        return self.line

    def _load(self, model_id: str) -> VlmModel:
        """A stored model as the runner runs it: manifest (sizes checked; hashes were checked on
        `models add`), limits, backend."""
        path = self._path(model_id)
        try:
            manifest = load_model_dir(path, check_hashes=False)
        except ManifestError as exc:
            raise ModelCommandRefused(f"stored model {model_id}: {exc}") from exc
        limits = model_limits(self.cfg, manifest, f"stored model {model_id}")
        if limits.problems:
            raise ModelCommandRefused("; ".join(limits.problems))
        info = ModelInfo(manifest.model_id, manifest.prompt_version, manifest.min_pixels, manifest.max_pixels)
        m = self.cfg.model
        spec = self.backend or BackendSpec(m.backend, m.backend_kwargs(Path(path), limits.n_ctx))
        return VlmModel(info, spec, GenerationOptions(max_tokens=limits.max_tokens, temperature=m.temperature))

    def _path(self, model_id: str) -> Path:
        """A model's directory: from the store, or the config's own model.dir for its model id."""
        if not self.store.has(model_id) and self.config_model_dir is not None:
            try:
                if load_model_dir(self.config_model_dir, check_hashes=False).model_id == model_id:
                    return self.config_model_dir
            except ManifestError:
                pass
        return self.store.require(model_id)

    def _known(self, model_id: str) -> bool:
        try:
            self._path(model_id)
            return True
        except (ModelStoreError, ModelCommandRefused):
            return False

    def _promote(self, model_id: str) -> str:
        line = self._need_line("promote")
        if not model_id:
            raise ModelCommandRefused("promote needs a model id")
        if model_id == self.active.model_id:
            raise ModelCommandRefused(f"{model_id} is already the active model")
        vlm = self._load(model_id)
        guard = ""
        if self.cfg.models.guard:
            outcome = promotion_guard(self.journal.db_path, model_id, self.active.model_id,
                                      self.cfg.models.guard_min_parts)
            if not outcome.allowed:
                raise ModelCommandRefused(outcome.detail)
            guard = f"; {outcome.detail}"
        old = self.active.model_id
        first = self._switch(line, vlm)
        state = self.store.state()
        state.previous = [m for m in state.previous if m != old] + [old]
        state.active = model_id
        stopped = ""
        if state.shadow == model_id:
            state.shadow = None
            self._stop_shadow_run()
            stopped = "; its shadow run ended"
        self.store.save(state)
        return f"promoted {model_id} (was {old}) from seq {first}{guard}{stopped}"

    def _rollback(self) -> str:
        line = self._need_line("rollback")
        state = self.store.state()
        while state.previous and not self._known(state.previous[-1]):
            state.previous.pop()  # an earlier model removed from the store by hand
        if not state.previous:
            raise ModelCommandRefused("no earlier active model to roll back to")
        target = state.previous[-1]
        vlm = self._load(target)
        old = self.active.model_id
        first = self._switch(line, vlm)
        state.previous.pop()
        state.active = target
        self.store.save(state)
        return f"rolled back to {target} (was {old}) from seq {first}"

    def _switch(self, line: LineStation, vlm: VlmModel) -> int:
        """Make `vlm` the model of every recipe on the active model, inside the deciding loop; returns
        the seq of the first part it decides."""
        model_id = vlm.info.model_id
        old_key = self._keys.get(self.active.model_id)
        key = self._keys.setdefault(model_id, model_id)
        line.runner.models[key] = vlm  # known to the runner before any part can name it
        controller = line.controller
        done = threading.Event()
        gate = threading.Lock()
        first: list[int] = []
        cancelled: list[bool] = []

        def apply() -> None:  # runs in the deciding loop, between two events
            from dataclasses import replace

            with gate:
                if cancelled:
                    return
                controller.models[key] = vlm.info
                line.runner.retired.discard(key)
                if old_key is not None and old_key != key:  # its late parts no longer reload it
                    line.runner.retired.add(old_key)
                controller.recipes = {n: (replace(r, model=key) if r.model == old_key else r)
                                      for n, r in controller.recipes.items()}
                controller.by_code = {r.code: r for r in controller.recipes.values() if r.code is not None}
                first.append(controller.next_seq)
                done.set()

        controller.call_in_loop(apply)
        if not done.wait(SWITCH_WAIT_S):
            with gate:
                if not done.is_set():
                    cancelled.append(True)
                    raise ModelCommandRefused(f"the deciding loop did not take the switch within {SWITCH_WAIT_S:g} s "
                                              "(stopping or stalled); nothing changed")
        self.active = vlm.info
        if self.health is not None:
            self.health.model_id = model_id
        log.warning("model %s active from seq %d", model_id, first[0])
        return first[0]

    def _shadow(self, model_id: str) -> str:
        self._need_line("shadow")
        if not model_id:
            raise ModelCommandRefused("shadow needs a model id")
        if model_id == self.active.model_id:
            raise ModelCommandRefused(f"{model_id} is the active model; shadow runs a candidate beside it")
        self._start_shadow(model_id)
        state = self.store.state()
        state.shadow = model_id
        self.store.save(state)
        s = self.cfg.models
        share = f"every {s.shadow_every_n}th part" if s.shadow_share == "every_n" else f"{s.shadow_share} parts"
        return f"shadow run of {model_id} started on {share} beside {self.active.model_id}"

    def _shadow_stop(self) -> str:
        state = self.store.state()
        if self.shadow is None and state.shadow is None:
            raise ModelCommandRefused("no shadow run to stop")
        was = self.shadow.model_id if self.shadow is not None else state.shadow
        self._stop_shadow_run()
        state.shadow = None
        self.store.save(state)
        return f"shadow run of {was} stopped"

    def _start_shadow(self, model_id: str) -> None:
        vlm = self._load(model_id)
        run = ShadowRun(self.cfg.station, self.journal, vlm, self.cfg.models, publish=self.publish,
                        hang_s=self.cfg.model.deadline_s, load_timeout_s=self.cfg.model.load_timeout_s)
        run.start()
        self._stop_shadow_run()
        self.shadow = run

    def _stop_shadow_run(self) -> None:
        run, self.shadow = self.shadow, None
        if run is not None:
            threading.Thread(target=run.stop, name="adfm-shadow-stop", daemon=True).start()

    # ---- the deciding loop --------------------------------------------------------------------

    def _offer(self, seq: int, part_id: str, camera: str, frame: Any, result: InspectionResult, recipe: Any) -> None:
        run = self.shadow
        if run is not None:
            run.offer(seq, part_id, camera, frame, result, recipe)
