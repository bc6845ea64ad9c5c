"""The `mqtt:` section of `station.yaml`: results, state and alarms to the plant's MQTT broker (README "MQTT").

Secrets never sit in the station file: the password comes from `password_file`, the TLS key from
`tls.key`. A plain TCP connection to a broker off this machine is refused unless `tls` is set or
`insecure: true` says so explicitly, as for the bus and OPC UA.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator, model_validator

from adfm.config import StrictModel

from .paths import resolve_path

#: a topic level: no separator, no wildcard, no NUL (MQTT 3.1.1 §4.7), not empty
TOPIC_LEVEL = r"^[^/+#\x00]{1,64}$"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class _Section(StrictModel):
    """An MQTT config section (unknown keys are errors)."""


class MqttTlsSection(_Section):
    """TLS to the broker: the CA that signed the broker's certificate, and optionally this station's
    own certificate and key (brokers that authenticate clients by certificate)."""

    ca: Path = Field(description="CA certificate(s) (PEM) the broker's certificate must chain to")
    cert: Path | None = Field(None, description="the station's client certificate (PEM)")
    key: Path | None = Field(None, description="the client certificate's private key (PEM, unencrypted)")

    _paths = field_validator("ca", "cert", "key", mode="before")(resolve_path)

    @model_validator(mode="after")
    def _pair(self) -> MqttTlsSection:
        if (self.cert is None) != (self.key is None):
            raise ValueError("cert and key go together: set both (a client certificate) or neither")
        return self


class MqttSection(_Section):
    """Where and how the station publishes. Topics: `<site>/<area>/<line>/<station>/{result,revision,
    state,status,alarm}` (ISA-95: enterprise site, area, line, work cell = the station id)."""

    host: str = Field(min_length=1, max_length=255, description="the broker's host name or address")
    port: int | None = Field(None, ge=1, le=65535, description="default 8883 with tls, 1883 without")
    site: str = Field(pattern=TOPIC_LEVEL, description="first topic level (the plant)")
    area: str = Field(pattern=TOPIC_LEVEL, description="second topic level (the shop or hall)")
    line: str = Field(pattern=TOPIC_LEVEL, description="third topic level (the production line)")
    client_id: str | None = Field(None, min_length=1, max_length=128, description="default adfm-<station>")
    username: str | None = Field(None, min_length=1, max_length=256)
    password_file: Path | None = Field(None, description="file holding the password (first line); needs username")
    tls: MqttTlsSection | None = None
    insecure: bool = Field(False, description="allow plain TCP (no TLS) to a broker off this machine")
    keepalive_s: int = Field(30, ge=5, le=3600, description="the broker declares the station gone (last will) "
                             "after 1.5 × this without a packet")
    status_interval_s: float = Field(10.0, gt=0, le=3600, description="how often the retained status is renewed")
    max_inflight: int = Field(100, ge=1, le=65535, description="results sent and not yet acknowledged (PUBACK)")
    batch: int = Field(200, ge=1, le=5000, description="results read from the journal per turn of the publisher")
    reconnect_max_s: float = Field(30.0, ge=0.5, le=3600, description="longest wait between connection attempts")

    _paths = field_validator("password_file", mode="before")(resolve_path)

    @model_validator(mode="before")
    @classmethod
    def _no_inline_secret(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in ("password", "pass", "passwd", "secret", "token"):
                if key in data:
                    raise ValueError(f"{key}: passwords are never written in the station file; put it in a file "
                                     "only the service can read and set password_file to its path")
        return data

    @model_validator(mode="after")
    def _consistent(self) -> MqttSection:
        if self.password_file is not None and self.username is None:
            raise ValueError("password_file needs username")
        if self.tls is None and not self.insecure and self.host not in LOOPBACK_HOSTS:
            raise ValueError(f"host {self.host!r} is off this machine and tls is not set: results and "
                             "the password would cross the network in clear; set tls.ca (and port 8883), or "
                             "insecure: true explicitly")
        return self

    @property
    def broker_port(self) -> int:
        return self.port or (8883 if self.tls is not None else 1883)

    @property
    def broker(self) -> str:
        return f"{self.host}:{self.broker_port}"

    def topic_prefix(self, station: str) -> str:
        return f"{self.site}/{self.area}/{self.line}/{station}"


def read_password(path: Path) -> str:
    """The password in `path`: its first line, without the line end. Raises OSError or ValueError."""
    text = path.read_text(encoding="utf-8")
    password = text.splitlines()[0] if text else ""
    if not password:
        raise ValueError(f"{path}: empty, the first line must hold the password")
    return password


def mqtt_problems(section: MqttSection | None, source: str) -> list[str]:
    """What the `mqtt:` section points at, checked: the paho-mqtt library, the TLS files, the password file."""
    if section is None:
        return []
    problems: list[str] = []
    import importlib.util

    if importlib.util.find_spec("paho") is None or importlib.util.find_spec("paho.mqtt") is None:
        problems.append(f"{source}: mqtt: needs the paho-mqtt library: pip install 'adfm[mqtt]'")
    files: list[tuple[str, Path | None]] = [("mqtt.password_file", section.password_file)]
    if section.tls is not None:
        files += [("mqtt.tls.ca", section.tls.ca), ("mqtt.tls.cert", section.tls.cert),
                  ("mqtt.tls.key", section.tls.key)]
    for key, path in files:
        if path is None:
            continue
        if not path.is_file():
            problems.append(f"{source}: {key}: {path} not found")
        elif not os.access(path, os.R_OK):
            problems.append(f"{source}: {key}: {path} is not readable by this user")
        elif key == "mqtt.password_file":
            try:
                read_password(path)
            except (OSError, ValueError, UnicodeDecodeError) as exc:
                problems.append(f"{source}: {key}: {exc}")
    return problems
