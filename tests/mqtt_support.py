"""MQTT tests' helpers: a real mosquitto broker on a free loopback port (restartable, with persistence),
TLS files made with openssl, a password file made with mosquitto_passwd, and a recording subscriber.
Test-only code."""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or ("/usr/sbin/mosquitto" if Path("/usr/sbin/mosquitto").exists() else None)
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd")
OPENSSL = shutil.which("openssl")


def missing_reason() -> str | None:
    if MOSQUITTO is None:
        return "needs the mosquitto broker (Debian package mosquitto)"
    try:
        import paho.mqtt  # noqa: F401
    except ImportError:
        return "needs paho-mqtt (the mqtt extra)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Mosquitto:
    """mosquitto on 127.0.0.1:`port` with its own config, persistence folder and log under `root`.
    `stop()` is a clean broker shutdown (SIGTERM: it saves its sessions and retained messages)."""

    def __init__(self, root: Path, *, extra: str = "", anonymous: bool = True) -> None:
        assert MOSQUITTO is not None
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.log = root / "mosquitto.log"
        self.conf = root / "mosquitto.conf"
        self.conf.write_text(
            f"user {getpass.getuser()}\n"  # run as root, mosquitto would otherwise drop to user mosquitto
            f"persistence true\npersistence_location {root}/\nautosave_interval 0\n"
            f"log_dest file {self.log}\nlog_type error\nlog_type warning\nlog_type notice\n"
            f"listener {self.port} 127.0.0.1\nallow_anonymous {'true' if anonymous else 'false'}\n" + extra)
        self.proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> Mosquitto:
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mosquitto exited: {self.proc.stderr.read() if self.proc.stderr else ''} "
                                   f"{self.log.read_text() if self.log.exists() else ''}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mosquitto did not listen on {self.port}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None


@dataclass
class Recorded:
    topic: str
    payload: dict
    retain: bool
    dup: bool = False
    at: float = 0.0  # time.monotonic() on arrival (the clock the PLC stand-in logs with)


@dataclass
class Subscriber:
    """A paho client on `topic` (QoS 1) that records every message. `persistent`: a broker-side session
    (clean_session false) that keeps its subscription and queued messages across disconnects and restarts."""

    port: int
    topic: str
    client_id: str = "test-subscriber"
    persistent: bool = False
    username: str | None = None
    password: str | None = None
    tls_ca: Path | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    messages: list[Recorded] = field(default_factory=list)
    connects: int = 0

    def __post_init__(self) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self._lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=mqtt.MQTTv311,
                                  clean_session=not self.persistent)
        if self.username is not None:
            self.client.username_pw_set(self.username, self.password)
        if self.tls_ca is not None:
            self.client.tls_set(ca_certs=str(self.tls_ca), certfile=str(self.tls_cert) if self.tls_cert else None,
                                keyfile=str(self.tls_key) if self.tls_key else None)
        self.client.reconnect_delay_set(0.1, 0.5)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message

    def _on_connect(self, client, _userdata, _flags, reason_code, _props) -> None:
        if not reason_code.is_failure:
            self.connects += 1
            client.subscribe(self.topic, qos=1)

    def _on_message(self, _client, _userdata, msg) -> None:
        with self._lock:
            self.messages.append(Recorded(msg.topic, json.loads(msg.payload), bool(msg.retain), bool(msg.dup),
                                          time.monotonic()))

    def start(self, timeout_s: float = 10.0) -> Subscriber:
        self.client.connect("127.0.0.1", self.port, keepalive=10)
        self.client.loop_start()
        wait_for(lambda: self.connects > 0, timeout_s, "the subscriber did not connect")
        time.sleep(0.2)  # SUBACK
        return self

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def on(self, suffix: str) -> list[Recorded]:
        with self._lock:
            return [m for m in self.messages if m.topic.endswith("/" + suffix)]


def wait_for(predicate, timeout_s: float, message: str, poll_s: float = 0.05) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(message)
        time.sleep(poll_s)


def make_tls_files(root: Path) -> dict[str, Path]:
    """A CA, and a broker certificate it signed for 127.0.0.1/localhost (openssl CLI)."""
    assert OPENSSL is not None
    root.mkdir(parents=True, exist_ok=True)
    f = {n: root / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt", "san.cnf")}

    def run(*args: str) -> None:
        subprocess.run([OPENSSL, *args], check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["ca.key"]), "-out", str(f["ca.crt"]),
        "-days", "2", "-subj", "/CN=adfm test CA")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(f["server.key"]), "-out", str(f["server.csr"]),
        "-subj", "/CN=localhost")
    f["san.cnf"].write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    run("x509", "-req", "-in", str(f["server.csr"]), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
        "-CAcreateserial", "-out", str(f["server.crt"]), "-days", "2", "-extfile", str(f["san.cnf"]))
    for client in ("st1", "mes"):  # client certificates for brokers that require one
        key, csr, crt = root / f"{client}.key", root / f"{client}.csr", root / f"{client}.crt"
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={client}")
        run("x509", "-req", "-in", str(csr), "-CA", str(f["ca.crt"]), "-CAkey", str(f["ca.key"]),
            "-CAcreateserial", "-out", str(crt), "-days", "2")
        f[f"{client}.key"], f[f"{client}.crt"] = key, crt
    for key in ("ca.key", "server.key"):
        f[key].chmod(0o644)  # mosquitto may read them as another user
    return f


def make_password_file(path: Path, users: dict[str, str]) -> Path:
    """A mosquitto password file (hashed) made by mosquitto_passwd."""
    assert MOSQUITTO_PASSWD is not None
    for i, (user, password) in enumerate(users.items()):
        subprocess.run([MOSQUITTO_PASSWD, "-b", *(["-c"] if i == 0 else []), str(path), user, password],
                       check=True, capture_output=True)
    return path
