"""The plant server's configuration (`/etc/adfm/plant.yaml`): database, stations, collector, view.

Validated whole before anything starts; every problem is reported as `file: key.path: why (got …)`.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, ValidationError, field_validator, model_validator

from adfm.config import ConfigError, StrictModel, validation_problems


class CurveSection(StrictModel):
    """The station's public key and this collector's own secret key (made with `adfm-appliance client-key`)."""

    server_key: Path
    client_secret: Path


class StationSection(StrictModel):
    id: str = Field(min_length=1, max_length=64, description="the station's id (its `station` config key)")
    line: str = Field("", max_length=64, description="the production line it belongs to, for the plant view")
    publish: str = Field(description="the station's PUB endpoint as reachable from this server")
    control: str = Field(description="the station's ROUTER endpoint as reachable from this server")
    curve: CurveSection | None = None
    model_store: Path | None = Field(
        None, description="the station's model store (its state_dir/models) as this server reaches it, e.g. a "
        "mounted share: where `adfm-plant deploy` copies models")

    @field_validator("publish", "control")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        if not v.startswith(("tcp://", "ipc://")):
            raise ValueError("must be a tcp://host:port or ipc:// endpoint")
        return v


class CollectorSection(StrictModel):
    copy_flagged_images: bool = Field(
        False, description="copy the image of every flagged part into the database (else fetched on demand)")
    verdict_lookback: int = Field(
        2000, ge=0, le=1_000_000,
        description="results replayed again on start, to pick up operator verdicts given while it was down")
    reconnect_s: float = Field(2.0, gt=0, le=300)
    timeout_s: float = Field(5.0, gt=0, le=120)


class AuthSection(StrictModel):
    """How the view's users sign in: `basic` (a users file), or `none` (only on a loopback address,
    e.g. behind a reverse proxy on the same host that authenticates)."""

    method: Literal["basic", "none"] = "none"
    users_file: Path | None = Field(None, description="basic: `name:pbkdf2_sha256$…` lines (adfm-plant passwd)")

    @model_validator(mode="after")
    def _users(self) -> AuthSection:
        if self.method == "basic" and self.users_file is None:
            raise ValueError("method basic needs users_file (create it with `adfm-plant passwd`)")
        return self


class ViewSection(StrictModel):
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=1, le=65535)
    auth: AuthSection = Field(default_factory=AuthSection)
    image_timeout_s: float = Field(3.0, gt=0, le=60)

    @model_validator(mode="after")
    def _open_only_on_loopback(self) -> ViewSection:
        if self.auth.method == "none" and not _loopback(self.host):
            raise ValueError(f"auth method none is only allowed on a loopback host, not {self.host!r}")
        return self


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class PlantConfig(StrictModel):
    database: str = Field(min_length=1, description="libpq connection string, e.g. 'host=/run/postgresql dbname=adfm'")
    stations: list[StationSection] = Field(default_factory=list)
    collector: CollectorSection = Field(default_factory=CollectorSection)
    view: ViewSection = Field(default_factory=ViewSection)

    @model_validator(mode="after")
    def _unique(self) -> PlantConfig:
        ids = [s.id for s in self.stations]
        dup = sorted({i for i in ids if ids.count(i) > 1})
        if dup:
            raise ValueError(f"station ids must be unique; repeated: {', '.join(dup)}")
        return self

    def station(self, station_id: str) -> StationSection | None:
        return next((s for s in self.stations if s.id == station_id), None)


def parse_config(data: object, source: str = "plant config", base_dir: Path | None = None) -> PlantConfig:
    if not isinstance(data, dict):
        raise ConfigError([f"{source}: expected a mapping of settings, got {type(data).__name__}"],
                          "invalid plant config")
    try:
        config = PlantConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(source, exc), "invalid plant config") from None
    if base_dir is not None:  # key and users files relative to the config's folder
        for s in config.stations:
            if s.model_store is not None:
                s.model_store = base_dir / s.model_store
            if s.curve is not None:
                s.curve = CurveSection(server_key=base_dir / s.curve.server_key,
                                       client_secret=base_dir / s.curve.client_secret)
        if config.view.auth.users_file is not None:
            config.view.auth = AuthSection(method=config.view.auth.method,
                                           users_file=base_dir / config.view.auth.users_file)
    return config


def load_config(path: str | Path) -> PlantConfig:
    """Read and validate a plant YAML; ConfigError names the file, the key and the value."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the config: {exc.strerror or exc}"], "invalid plant config") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}:{mark.column + 1}" if mark is not None else ""
        raise ConfigError([f"{path}{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"],
                          "invalid plant config") from None
    return parse_config(data, str(path), path.resolve().parent)
