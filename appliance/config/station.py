"""The station config (`station.yaml`): one validated model; errors name the file, the key and why.

Relative paths are read relative to the config file's folder. Validation has two steps:
`parse_config` checks the form of every value (no file is touched), `check_resources` then checks
what the values point at (model directory and manifest, reference images, gate model, CURVE keys,
camera folders, the state directory). `load_config` does both and raises one ConfigError listing
every problem, so an integrator fixes a config in one go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import yaml
from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator

from adfm.camera.config import CameraConfig
from adfm.config import ConfigError, StrictModel, validation_problems
from adfm.protocol import PROMPT_VERSIONS

from .line import LineSection, OpcUaSection, PlcSection, RecipeSection
from .models import ModelsSection
from .mqtt import MqttSection, mqtt_problems
from .paths import resolve_path

if TYPE_CHECKING:
    from adfm.manifest import ModelManifest

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
#: the unit's StateDirectory=adfm-appliance, where tools run outside systemd find the journal
UNIT_STATE_DIR = "/var/lib/adfm-appliance"
MB = 1024 * 1024


def _invalid(problems: list[str]) -> ConfigError:
    """The station's ConfigError: every problem under one heading, so an integrator fixes them in one go."""
    return ConfigError(problems, "invalid station config")


class _Section(StrictModel):
    """A station config section (validated on assignment too)."""


class ModelSection(_Section):
    """The exported model directory (manifest.json + GGUF + mmproj) and how to run it."""

    dir: Path
    prompt_version: str | None = Field(
        None, description="expected prompt version; must match the manifest's (default: the manifest's)"
    )
    n_ctx: int | None = Field(
        None, ge=512, le=131072,
        description="llama.cpp context; default: what the manifest's model needs (images + prompt + answer)",
    )
    n_threads: int | None = Field(None, ge=1, le=512)
    n_gpu_layers: int = Field(
        0, ge=-1, le=100_000, description="language-model layers on the GPU: 0 none (CPU), -1 all, N the first N"
    )
    mmproj_gpu: bool | None = Field(
        None, description="the vision projector on the GPU; default: when n_gpu_layers is not 0"
    )
    gpu_devices: Literal["nvidia", "dri"] = Field(
        "nvidia", description="device nodes the systemd unit opens for the GPU: nvidia (/dev/nvidia*: CUDA, or "
        "Vulkan on an NVIDIA card) or dri (/dev/dri render nodes: Vulkan on Intel/AMD)",
    )
    check_hashes: bool = Field(True, description="verify GGUF sha256 against the manifest at start")
    max_tokens: int | None = Field(
        None, ge=8, le=8192, description="longest answer; default: the manifest's (as trained), else 256"
    )
    temperature: float = Field(
        0.0, ge=0, le=2, description="0: greedy answers (a line's setting); > 0 samples them (with seed 0)"
    )
    deadline_s: float = Field(120.0, gt=0, description="longest one part may take before the worker is killed")
    load_timeout_s: float = Field(600.0, gt=0)
    backend: str = Field(
        "adfm.appliance.inspection.worker:gguf_backend", description="module:callable building the inference backend"
    )

    _paths = field_validator("dir", mode="before")(resolve_path)

    @property
    def projector_on_gpu(self) -> bool:
        return self.mmproj_gpu if self.mmproj_gpu is not None else self.n_gpu_layers != 0

    @property
    def uses_gpu(self) -> bool:
        return self.n_gpu_layers != 0 or self.projector_on_gpu

    def backend_kwargs(self, model_dir: Path, n_ctx: int | None) -> dict[str, Any]:
        """What the inference worker's backend factory gets (the model hashes are checked once, before)."""
        return {"model_dir": str(model_dir), "n_ctx": n_ctx, "n_threads": self.n_threads, "check_hashes": False,
                "n_gpu_layers": self.n_gpu_layers, "mmproj_gpu": self.projector_on_gpu}

    @field_validator("prompt_version")
    @classmethod
    def _known_prompt(cls, v: str | None) -> str | None:
        if v is not None and v not in PROMPT_VERSIONS:
            raise ValueError(f"unknown prompt version {v!r}; known: {', '.join(sorted(PROMPT_VERSIONS))}")
        return v


class ProductSection(_Section):
    """A product the station inspects; `reference` is a golden normal image of it (optional), sent
    before each part (the single-normal-reference protocol)."""

    name: str = Field(min_length=1, max_length=100)
    reference: Path | None = None

    _paths = field_validator("reference", mode="before")(resolve_path)


class StationCamera(CameraConfig):
    """A camera (see adfm.camera.CameraConfig) plus the product it looks at."""

    product: str | None = Field(None, description="name from `products`; default: the first product")

    @field_validator("url", mode="before")
    @classmethod
    def _relative_paths(cls, v: Any, info: ValidationInfo) -> Any:
        if isinstance(v, str):
            for prefix in ("folder:", "replay:"):
                if v.lower().startswith(prefix) and v[len(prefix):].strip():
                    return prefix + str(resolve_path(v[len(prefix):], info))
        return v

    def camera_config(self) -> CameraConfig:
        """The plain camera config the capture worker takes."""
        return CameraConfig.model_validate(self.model_dump(exclude={"product"}))


class GateLearnSection(_Section):
    """Learning on the line: operators' confirmed false alarms join the gate's memory bank.

    The threshold is re-derived from the commissioning calibration images (the folders the gate was
    trained from: only images its metadata lists by hash are used) plus the reviewed parts."""

    calibration_normal: Path = Field(description="folder of the held-out good images the gate was calibrated on")
    calibration_anomalous: Path | None = Field(None, description="folder of the defective calibration images")
    store: Path | None = Field(None, description="versions and reviewed parts (default: beside the gate, *.learning)")
    max_added_patches: int = Field(2048, ge=1, description="patches the line may add before the gate must be retrained")

    _paths = field_validator("calibration_normal", "calibration_anomalous", "store", mode="before")(resolve_path)


class GateDriftSection(_Section):
    """Drift of the gate's scores per recipe: a two-sample KS test of the latest `window` scores
    against the reference (the trainer's held-out good scores, or the first `reference_size` parts)."""

    enabled: bool = True
    window: int = Field(50, ge=10)
    alpha: float = Field(1e-3, gt=0, lt=1, description="level that raises the alarm (tested at every part)")
    clear_alpha: float = Field(0.05, gt=0, lt=1, description="level below which the alarm clears")
    reference: Literal["holdout", "commissioning"] = "holdout"
    reference_size: int = Field(100, ge=10, description="parts taken as the reference with `commissioning`")

    @model_validator(mode="after")
    def _ordered(self) -> GateDriftSection:
        if self.alpha >= self.clear_alpha:
            raise ValueError(f"alpha ({self.alpha}) must be below clear_alpha ({self.clear_alpha})")
        return self


class GateSection(_Section):
    """The screening gate (ONNX): `screen` sends only suspicious parts to the model (the others
    pass on the gate's word); `annotate` sends every part and attaches the gate score."""

    mode: Literal["off", "screen", "annotate"] = "off"
    path: Path | None = None
    learn: GateLearnSection | None = None
    drift: GateDriftSection = Field(default_factory=GateDriftSection)

    _paths = field_validator("path", mode="before")(resolve_path)

    @field_validator("mode", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return "off" if v is False else v  # YAML reads a bare `off` as false

    @model_validator(mode="after")
    def _needs_path(self) -> GateSection:
        if self.mode != "off" and self.path is None:
            raise ValueError(f"gate mode {self.mode!r} needs path: the gate's .onnx file")
        return self


class RetentionSection(_Section):
    """Image retention; result rows are always kept, only image files are pruned (oldest first)."""

    days: float | None = Field(30.0, gt=0, description="delete images older than this (null: never)")
    max_image_mb: float | None = Field(None, gt=0, description="quota for journal images (null: none)")
    min_free_mb: float = Field(256.0, ge=0, description="keep this much free on the journal's disk")
    image_format: Literal["png", "jpg"] = "png"
    prune_interval_s: float = Field(60.0, gt=0)


class CurveSection(_Section):
    server_secret: Path = Field(description="the station's server.key_secret (from `adfm-appliance keys`)")
    authorized_clients: Path = Field(description="folder of admitted client public keys (*.key)")

    _paths = field_validator("server_secret", "authorized_clients", mode="before")(resolve_path)


class BusSection(_Section):
    """Result bus endpoints. Off-loopback TCP needs `curve` (or an explicit `insecure: true`)."""

    publish: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5560"], min_length=1)
    control: list[str] = Field(default_factory=lambda: ["tcp://127.0.0.1:5561"], min_length=1)
    curve: CurveSection | None = None
    insecure: bool = False
    status_interval_s: float = Field(5.0, gt=0, le=3600)
    send_hwm: int = Field(10_000, ge=1)
    io_threads: int = Field(2, ge=1, le=64, description="ZeroMQ I/O threads (with CURVE they encrypt each "
                            "subscriber's copy of every message)")
    plain_roles: list[Literal["verdict", "recipe", "model"]] = Field(
        default_factory=lambda: ["verdict"],
        description="what clients without a CURVE key (loopback/ipc only) may do; recipe changes need "
                    "`recipe` here, on purpose")
    control_hwm: int = Field(4, ge=1, le=1000, description="replies queued per control client; a client "
                             "that reads none gets no more")

    @field_validator("publish", "control", mode="before")
    @classmethod
    def _one_or_many(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @model_validator(mode="after")
    def _secure(self) -> BusSection:
        from ..bus.server import check_endpoint_security

        for ep in [*self.publish, *self.control]:
            why = check_endpoint_security(ep, self.curve is not None, self.insecure)
            if why:
                raise ValueError(why)
        return self


class HealthSection(_Section):
    prometheus_file: Path | None = Field(None, description="Prometheus text file, rewritten atomically")
    prometheus_port: int | None = Field(None, ge=1, le=65535, description="serve /metrics on this port")
    prometheus_addr: str = Field("127.0.0.1", description="address the metrics endpoint binds")
    prometheus_interval_s: float = Field(15.0, gt=0)
    camera_stall_s: float = Field(
        60.0, gt=0, description="a streaming camera without frames this long is reported as a problem"
    )
    window: int = Field(500, ge=10, le=100_000, description="parts kept for latency percentiles")

    _paths = field_validator("prometheus_file", mode="before")(resolve_path)


class StationConfig(_Section):
    """One station: cameras → (gate) → model → journal → bus."""

    station: str = Field(pattern=ID_PATTERN, description="station id, used in topics and results")
    state_dir: Path | None = Field(None, description="journal and images; default $STATE_DIRECTORY")
    model: ModelSection
    products: list[ProductSection] = Field(default_factory=list)
    cameras: list[StationCamera] = Field(min_length=1)
    gate: GateSection = Field(default_factory=GateSection)
    retention: RetentionSection = Field(default_factory=RetentionSection)
    bus: BusSection = Field(default_factory=BusSection)
    health: HealthSection = Field(default_factory=HealthSection)
    line: LineSection | None = Field(None, description="decisions within a deadline of each trigger")
    recipes: list[RecipeSection] = Field(default_factory=list)
    plc: PlcSection | None = None
    opcua: OpcUaSection | None = None
    models: ModelsSection = Field(default_factory=ModelsSection, description="model store, shadow, promotion guard")
    mqtt: MqttSection | None = Field(None, description="results, state and alarms to the plant's MQTT broker")

    _paths = field_validator("state_dir", mode="before")(resolve_path)

    @model_validator(mode="after")
    def _consistent(self) -> StationConfig:
        ids = [c.id for c in self.cameras]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            where = "; ".join(f"{d} in " + " and ".join(f"cameras.{i}.id" for i, c in enumerate(ids) if c == d)
                              for d in dup)
            raise ValueError(f"cameras: camera ids must be unique; repeated: {where}; give each camera its own id "
                             "(results, status and line.camera name cameras by id)")
        names = [p.name for p in self.products]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"products: product names must be unique; repeated: {', '.join(dup)}")
        for cam in self.cameras:
            if cam.product is not None and cam.product not in names:
                known = ", ".join(names) or "none defined"
                raise ValueError(f"camera {cam.id!r}: product {cam.product!r} is not in products ({known})")
        self._check_line(names)
        return self

    def _check_line(self, products: list[str]) -> None:
        """Recipes, the PLC link and the line section must fit together."""
        for attr in ("name", "code"):
            values = [getattr(r, attr) for r in self.recipes]
            dup = sorted({str(v) for v in values if values.count(v) > 1})
            if dup:
                raise ValueError(f"recipe {attr}s must be unique; repeated: {', '.join(dup)}")
        for r in self.recipes:
            if r.product is not None and r.product not in products:
                raise ValueError(f"recipe {r.name!r}: product {r.product!r} is not in products")
            if (r.gate_mode or self.gate.mode) != "off" and r.gate_path is None and self.gate.path is None:
                raise ValueError(f"recipe {r.name!r}: gate mode {r.gate_mode!r} needs gate_path (or gate.path)")
        if (self.plc is not None or self.recipes) and self.line is None:
            raise ValueError("plc and recipes need a `line` section (deadline and fail-safe)")
        if self.line is None:
            return
        cam = self.line_camera
        if cam not in [c.id for c in self.cameras]:
            raise ValueError(f"line.camera {cam!r} is not one of the cameras")
        if self.plc is not None:
            trigger = next(c for c in self.cameras if c.id == cam).trigger.mode
            if trigger != "link":
                raise ValueError(f"camera {cam!r} is fired by the PLC: its trigger.mode must be 'link', "
                                 f"not {trigger!r}")
            ejector = self.plc.modbus.ejector
            if ejector is not None and ejector.delay_ms is not None:
                for r in [None, *self.recipes]:
                    deadline = (r.deadline_ms if r and r.deadline_ms else None) or self.line.deadline_ms
                    if ejector.delay_ms < deadline:
                        who = f"recipe {r.name!r}" if r else "line"
                        raise ValueError(f"plc.modbus.ejector.delay_ms {ejector.delay_ms:g} is shorter than the "
                                         f"{who} deadline {deadline:g} ms: the part would reach the ejector "
                                         "before its decision")
            if self.plc.modbus.recipe_register is not None and not self.recipes:
                raise ValueError("plc.modbus.recipe_register is set but no recipes are defined")

    @property
    def line_camera(self) -> str:
        """The camera the line's triggers fire."""
        return (self.line.camera if self.line and self.line.camera else None) or self.cameras[0].id

    def product_for(self, camera_id: str) -> ProductSection | None:
        cam = next(c for c in self.cameras if c.id == camera_id)
        name = cam.product or (self.products[0].name if self.products else None)
        return next((p for p in self.products if p.name == name), None)

    @property
    def journal_dir(self) -> Path:
        if self.state_dir is not None:
            return self.state_dir
        env = os.environ.get("STATE_DIRECTORY", "").split(":")[0]
        if env:
            return Path(env)
        if Path(UNIT_STATE_DIR).is_dir():  # the unit's StateDirectory: `sudo adfm-appliance check` outside systemd
            return Path(UNIT_STATE_DIR)
        raise _invalid([f"state_dir: not set, $STATE_DIRECTORY (set by systemd) is not either, and "
                        f"{UNIT_STATE_DIR} does not exist"])


def parse_config(data: Any, source: str = "<config>", base_dir: Path | None = None) -> StationConfig:
    """Validate a config mapping; ConfigError names `source`, each bad key and why."""
    if not isinstance(data, dict):
        raise _invalid([f"{source}: the top level must be a mapping of keys, got {type(data).__name__}"])
    try:
        return StationConfig.model_validate(data, context={"base_dir": base_dir})
    except ValidationError as exc:
        raise _invalid(validation_problems(source, exc, StationConfig)) from None


def read_config(path: str | Path) -> StationConfig:
    """Read and validate a station YAML (form only; see check_resources)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise _invalid([f"{path}: cannot read the config: {exc.strerror or exc}"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise _invalid([f"{path}{where}: not valid YAML: {problem}"]) from None
    return parse_config(data, str(path), path.resolve().parent)


#: Answer length when neither the config nor the manifest says (a manifest from before run records).
FALLBACK_MAX_TOKENS = 256


@dataclass(frozen=True)
class ModelLimits:
    """The model's context and answer length for this station, and why a config cannot run."""

    n_ctx: int
    max_tokens: int
    problems: list[str]
    #: What runs but not as the model was trained (a reference-trained model without a reference).
    warnings: list[str] = field(default_factory=list)


def model_limits(config: StationConfig, manifest: ModelManifest, source: str = "<config>") -> ModelLimits:
    """Context and answer length from the config, defaulting to the manifest's, checked to fit.

    The context one part needs is image tokens × images (two with a product's reference) + the
    prompt + the answer (adfm.manifest.context_needed); an explicit `n_ctx` below it is refused.
    """
    from adfm.manifest import context_needed

    m = config.model
    max_tokens = m.max_tokens or manifest.max_tokens or FALLBACK_MAX_TOKENS
    problems: list[str] = []
    warnings: list[str] = []
    needs = []
    for product in config.products or [None]:
        images = 2 if product is not None and product.reference is not None else 1
        name = product.name if product is not None else None
        needs.append((name, context_needed(manifest, images=images, max_tokens=max_tokens, product=name)))
        if product is not None and product.reference is not None and manifest.use_reference is False:
            problems.append(
                f"{source}: products.{product.name}.reference: the model was trained without a reference "
                "image (manifest use_reference false); remove the reference or export a model trained with one"
            )
        if manifest.use_reference is True and (product is None or product.reference is None):
            where = f"products.{product.name}.reference" if product is not None else "products"
            warnings.append(
                f"{source}: {where}: the model was trained with a normal reference image before each part "
                "(manifest use_reference true) but none is configured, so it sees prompts it was not trained on; "
                "set a reference image of a good part for the product"
            )
    name, worst = max(needs, key=lambda kv: kv[1].total)
    n_ctx = m.n_ctx or max(512, -(-worst.total // 256) * 256)
    if worst.total > n_ctx:
        what = f"product {name!r}" if name else "a part"
        problems.append(
            f"{source}: model.n_ctx: {n_ctx} tokens cannot hold {what}: {worst.describe()}; raise n_ctx to at "
            f"least {worst.total} (or leave it out to size it from the manifest), or lower model.max_tokens"
        )
    return ModelLimits(n_ctx=n_ctx, max_tokens=max_tokens, problems=problems, warnings=warnings)


#: how to fix a model directory that is missing or not an export
MODEL_DIR_FIX = "point it at a model directory written by `adfm-export` (manifest.json, the GGUF model, its mmproj)"


def check_resources(config: StationConfig, source: str = "<config>") -> list[str]:
    """What the config points at, checked: every problem as 'source: key: why; how to fix' (empty: all fine).

    Every model the line may run — model.dir and each recipe's model_dir — is checked with the
    limits (context, answer length) it will run with."""
    from adfm.manifest import ManifestError, read_manifest

    problems: list[str] = []
    try:
        manifest = read_manifest(config.model.dir) if config.model.dir.is_dir() else None
        if manifest is None:
            problems.append(f"{source}: model.dir: {config.model.dir} is not a directory; {MODEL_DIR_FIX}")
        else:
            for role in ("model", "mmproj"):
                entry = manifest.file(role)
                if not (config.model.dir / entry.path).is_file():
                    problems.append(f"{source}: model.dir: {config.model.dir / entry.path} ({role}) is missing; "
                                    "copy the whole exported directory again")
            pv = config.model.prompt_version
            if pv is not None and pv != manifest.prompt_version:
                problems.append(
                    f"{source}: model.prompt_version: {pv!r} differs from {manifest.prompt_version!r}, "
                    "the version this model was trained and exported with"
                )
            problems += model_limits(config, manifest, source).problems
    except ManifestError as exc:
        problems.append(f"{source}: model.dir: {exc}; {MODEL_DIR_FIX}")
    problems += _check_gpu(config.model, source)
    for i, product in enumerate(config.products):
        if product.reference is not None:
            problems += _check_image(product.reference, f"{source}: products.{i}.reference")
    learn = config.gate.learn
    if learn is not None:
        for key in ("calibration_normal", "calibration_anomalous"):
            folder = getattr(learn, key)
            if folder is not None and not folder.is_dir():
                problems.append(f"{source}: gate.learn.{key}: {folder} is not a directory (the gate's calibration "
                                "images, kept from its training, set the threshold again as the line learns)")
    if config.gate.mode != "off" and config.gate.path is not None and not config.gate.path.is_file():
        problems.append(f"{source}: gate.path: {config.gate.path} not found; point it at the .onnx file "
                        "`adfm-train gate` wrote, or set gate.mode: \"off\"")
    for i, recipe in enumerate(config.recipes):
        if recipe.gate_path is not None and not recipe.gate_path.is_file():
            problems.append(f"{source}: recipes.{i}.gate_path: {recipe.gate_path} not found")
        if recipe.model_dir is not None and recipe.model_dir != config.model.dir:
            problems += _check_recipe_model(config, i, source)
    if config.bus.curve is not None:
        from ..bus.keys import CurveKeyError, load_server_curve

        try:
            load_server_curve(config.bus.curve.server_secret, config.bus.curve.authorized_clients)
        except CurveKeyError as exc:
            problems.append(f"{source}: bus.curve: {exc}")
    problems += mqtt_problems(config.mqtt, source)
    for i, cam in enumerate(config.cameras):
        if cam.kind in ("folder", "replay") and not cam.path.exists():
            problems.append(f"{source}: cameras.{i}.url: {cam.path} does not exist; create it or correct the path "
                            "(relative paths are read from the config file's folder)")
        if cam.kind == "aravis":
            from adfm.camera.aravis import aravis_available

            if (missing := aravis_available()) is not None:
                problems.append(f"{source}: cameras.{i}.url: {missing}")
    try:
        state = config.journal_dir
        state.mkdir(parents=True, exist_ok=True)
        if not os.access(state, os.W_OK):
            problems.append(f"{source}: state_dir: {state} is not writable by this user")
    except ConfigError as exc:
        problems += [f"{source}: {p}" for p in exc.problems]
    except OSError as exc:
        problems.append(f"{source}: state_dir: cannot create {config.state_dir}: {exc.strerror or exc}")
    return problems


def _check_recipe_model(config: StationConfig, i: int, source: str) -> list[str]:
    """A recipe's own model: an export, runnable with the limits the config leaves it."""
    from adfm.manifest import ManifestError, read_manifest

    recipe = config.recipes[i]
    assert recipe.model_dir is not None
    key = f"{source}: recipes.{i}.model_dir"
    if not recipe.model_dir.is_dir():
        return [f"{key}: {recipe.model_dir} is not a directory (recipe {recipe.name!r}); {MODEL_DIR_FIX}, "
                "or leave model_dir out to use model.dir"]
    try:
        manifest = read_manifest(recipe.model_dir)
    except ManifestError as exc:
        return [f"{key}: {exc} (recipe {recipe.name!r}); {MODEL_DIR_FIX}, or leave model_dir out to use model.dir"]
    problems = [f"{key}: {recipe.model_dir / manifest.file(role).path} ({role}) is missing; copy the whole "
                "exported directory again" for role in ("model", "mmproj")
                if not (recipe.model_dir / manifest.file(role).path).is_file()]
    limits = model_limits(config, manifest, f"{source}: recipes.{i}.model_dir ({recipe.name})")
    return problems + [p.replace(f"({recipe.name}): model.", f"({recipe.name}): the config's model.")
                       for p in limits.problems]


def _check_gpu(model: ModelSection, source: str) -> list[str]:
    """A config that asks for the GPU where llama.cpp cannot use one is refused, not run on the CPU."""
    if not model.uses_gpu:
        return []
    from adfm.runtime.gpu import gpu_offload_problem

    why = gpu_offload_problem()
    if why is None:
        return []
    field = f"n_gpu_layers: {model.n_gpu_layers}" if model.n_gpu_layers != 0 else "mmproj_gpu: true"
    return [f"{source}: model.{field} asks for the GPU, but {why}; or run on the CPU with model.n_gpu_layers: 0 "
            "and no model.mmproj_gpu"]


def _check_image(path: Path, where: str) -> list[str]:
    if not path.is_file():
        return [f"{where}: {path} not found"]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        return [f"{where}: {path} is not a readable image: {exc}"]
    return []


def load_config(path: str | Path) -> StationConfig:
    """Read, validate and check a station config; ConfigError lists every problem."""
    config = read_config(path)
    problems = check_resources(config, str(path))
    if problems:
        raise _invalid(problems)
    return config
