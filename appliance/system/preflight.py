"""`adfm-appliance check`: everything `run` would fail on, found before the line starts.

The config's form and the files it names are `config.station.check_resources`' (what `run`
checks too). On top, this checks what only shows when the service starts: that the service user
(not the administrator running `check`) can list its folders and read its model and keys; that
the ports it binds are free; that every model the line may run — model.dir and each recipe's
own — loads with the limits it will get (context and answer length from the config or the
manifest). With `probe`, it also reaches the PLC and takes a frame from each camera, firing a
trigger for a camera that waits for one. Every problem reads `file: key: what is wrong; how to
fix it`.

Access is checked as the service user in a child process running under that user's ids (when
`check` runs as root), so groups and ACLs count as they will for the service; without root it
is checked as the user running `check`.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from ..config.station import StationConfig, model_limits
from .reach import bind_problem, connect_problem

#: the unit's user (`adfm-appliance install --user`)
DEFAULT_SERVICE_USER = "adfm"
#: a probed camera gets this long for its first frame
PROBE_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class ServiceUser:
    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()


@dataclass
class CheckReport:
    """What `check` found: problems (each a line naming file, key, what and how to fix), notes,
    and the summary lines of a station that passed."""

    problems: list[str] = field(default_factory=list)
    probe_problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    summary: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems and not self.probe_problems


def service_user(name: str | None) -> tuple[ServiceUser, str]:
    """The user `run` will run as, and a note when it is not the one asked for or the unit's."""
    def of(entry: pwd.struct_passwd) -> ServiceUser:
        groups = tuple(os.getgrouplist(entry.pw_name, entry.pw_gid))
        return ServiceUser(entry.pw_name, entry.pw_uid, entry.pw_gid, groups)

    wanted = name or DEFAULT_SERVICE_USER
    try:
        return of(pwd.getpwnam(wanted)), ""
    except KeyError:
        me = of(pwd.getpwuid(os.geteuid()))
        if name is not None:
            raise ValueError(f"--user {name}: no such user") from None
        return me, (f"the unit's user {wanted} does not exist yet (README: `useradd --system … {wanted}`); "
                    f"access checked for {me.name}")


# ---- access as the service user ----------------------------------------------------------------

def _owner(st: os.stat_result) -> str:
    try:
        u = pwd.getpwuid(st.st_uid).pw_name
    except KeyError:
        u = str(st.st_uid)
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {u}:{_group(st.st_gid)}"


def _why_not(path: str, need: str) -> str | None:
    """Why this process cannot use `path` as `need` ('r', 'rx', 'rwx'): the first folder on the way
    it cannot enter, or the path's own mode; None when it can (or the path does not exist)."""
    flags = {"r": os.R_OK, "w": os.W_OK, "x": os.X_OK}
    mode = 0
    for c in need:
        mode |= flags[c]
    if os.access(path, mode):
        return None
    parts = os.path.abspath(path).split(os.sep)
    for i in range(2, len(parts)):
        folder = os.sep.join(parts[:i])
        if not os.access(folder, os.X_OK):
            return f"cannot enter {folder} ({_owner(os.stat(folder))})"
    if not os.path.exists(path):
        return None
    return f"has no {need} permission on {path} ({_owner(os.stat(path))})"


def access_problems(user: ServiceUser, needs: list[tuple[Path, str]]) -> list[str | None]:
    """For each (path, 'r' | 'rx' | 'rwx'): why `user` cannot, or None. As root for another user,
    a forked child takes that user's ids (groups included) and asks the kernel, so group rights and
    ACLs count as they will for the service."""
    if user.is_me or os.geteuid() != 0:
        return [_why_not(str(p), n) for p, n in needs]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop to the service user, answer, exit without cleanup
        code = 0
        try:
            os.close(read)
            os.setgroups(list(user.groups))
            os.setgid(user.gid)
            os.setuid(user.uid)
            answer = json.dumps([_why_not(str(p), n) for p, n in needs]).encode()
            with os.fdopen(write, "wb") as out:
                out.write(answer)
        except BaseException:
            code = 1
        os._exit(code)
    os.close(write)
    with os.fdopen(read, "rb") as src:
        data = src.read()
    _, status = os.waitpid(pid, 0)
    if status != 0 or not data:
        raise RuntimeError(f"checking access as {user.name} failed (child status {status})")
    return json.loads(data)


def _access_needs(cfg: StationConfig, config_path: Path) -> list[tuple[str, Path, str, str]]:
    """(key, path, need, what it is for) for everything the service opens."""
    from adfm.manifest import ManifestError, read_manifest

    out: list[tuple[str, Path, str, str]] = [("(the config file)", config_path, "r", "the station config")]
    models = [("model.dir", cfg.model.dir)] + [(f"recipes.{i}.model_dir", r.model_dir)
                                                for i, r in enumerate(cfg.recipes) if r.model_dir is not None]
    for key, d in models:
        assert d is not None
        out.append((key, d, "rx", "the model directory"))
        try:
            manifest = read_manifest(d)
        except (ManifestError, OSError):
            continue
        out.append((key, d / "manifest.json", "r", "the model's manifest"))
        out += [(key, d / e.path, "r", f"the model's {e.role} file") for e in manifest.files]
    if cfg.gate.mode != "off" and cfg.gate.path is not None:
        out.append(("gate.path", cfg.gate.path, "r", "the gate model"))
        learn = cfg.gate.learn
        if learn is not None:
            out.append(("gate.learn.calibration_normal", learn.calibration_normal, "rx", "the calibration images"))
            if learn.calibration_anomalous is not None:
                out.append(("gate.learn.calibration_anomalous", learn.calibration_anomalous, "rx",
                            "the calibration images"))
            store = learn.store or cfg.gate.path.with_suffix(".learning")
            # the store, or the folder it is made in: the gate's versions are written as the line learns
            out.append(("gate.learn.store", store if store.exists() else store.parent, "rwx", "the learning store"))
    out += [(f"recipes.{i}.gate_path", r.gate_path, "r", "the recipe's gate model")
            for i, r in enumerate(cfg.recipes) if r.gate_path is not None]
    out += [(f"products.{i}.reference", p.reference, "r", "the reference image")
            for i, p in enumerate(cfg.products) if p.reference is not None]
    for i, cam in enumerate(cfg.cameras):
        if cam.kind == "folder":
            out.append((f"cameras.{i}.url", cam.path, "rwx", "the camera's folder (listed; files moved out once "
                        "journaled)"))
        elif cam.kind == "replay":
            out.append((f"cameras.{i}.url", cam.path, "rx" if cam.path.is_dir() else "r", "the recording"))
    if cfg.bus.curve is not None:
        out.append(("bus.curve.server_secret", cfg.bus.curve.server_secret, "r", "the station's secret key"))
        out.append(("bus.curve.authorized_clients", cfg.bus.curve.authorized_clients, "rx", "the admitted keys"))
    with contextlib.suppress(ValueError):  # no state directory at all: check_resources says why
        out.append(("state_dir", cfg.journal_dir, "rwx", "the journal and its images"))
    if cfg.health.prometheus_file is not None:
        out.append(("health.prometheus_file", cfg.health.prometheus_file.parent, "rwx", "the metrics file's folder"))
    return out


def _access_fix(user: ServiceUser, path: Path, need: str, why: str) -> str:
    if why.startswith("cannot enter "):
        blocked = why.removeprefix("cannot enter ").split(" (")[0]
        return f"let {user.name} through: `chmod o+x {blocked}` (or g+x with group {_group(user.gid)})"
    rights = ("rwX" if "w" in need else "rX") if path.is_dir() else "r"
    recurse = "-R " if path.is_dir() else ""
    return f"`chgrp {recurse}{_group(user.gid)} {path} && chmod {recurse}g+{rights} {path}`"


def _group(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def check_access(cfg: StationConfig, config_path: Path, user: ServiceUser, source: str) -> list[str]:
    needs = [n for n in _access_needs(cfg, config_path) if n[1].exists()]
    whys = access_problems(user, [(p, need) for _, p, need, _ in needs])
    problems = []
    for (key, path, need, what), why in zip(needs, whys, strict=True):
        if why:
            problems.append(f"{source}: {key}: the service user {user.name} (uid {user.uid}) cannot use {what}: "
                            f"it {why}; {_access_fix(user, path, need, why)}")
    return problems


# ---- ports -------------------------------------------------------------------------------------


def _tcp(endpoint: str) -> tuple[str, int] | None:
    """host, port of a tcp:// ZeroMQ endpoint with a fixed port (None: ipc, inproc or port *)."""
    if not endpoint.startswith("tcp://"):
        return None
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    return (host, int(port)) if port.isdigit() else None


def listening(cfg: StationConfig) -> list[tuple[str, str, int]]:
    """(key, host, port) of every TCP port the service listens on."""
    out: list[tuple[str, str, int]] = []
    for section in ("publish", "control"):
        for i, ep in enumerate(getattr(cfg.bus, section)):
            if (hp := _tcp(ep)) is not None:
                out.append((f"bus.{section}" + (f".{i}" if len(getattr(cfg.bus, section)) > 1 else ""), *hp))
    if cfg.opcua is not None:
        u = urlsplit(cfg.opcua.endpoint)
        out.append(("opcua.endpoint", u.hostname or "0.0.0.0", u.port or 4840))
    if cfg.health.prometheus_port:
        out.append(("health.prometheus_port", cfg.health.prometheus_addr, cfg.health.prometheus_port))
    for i, cam in enumerate(cfg.cameras):
        t = cam.trigger
        if t.mode == "external" and t.bind and t.endpoint and (hp := _tcp(t.endpoint)) is not None:
            out.append((f"cameras.{i}.trigger.endpoint", *hp))
    return out


def check_ports(cfg: StationConfig, source: str) -> list[str]:
    problems = []
    seen: dict[int, str] = {}
    for key, host, port in listening(cfg):
        if port in seen:
            problems.append(f"{source}: {key}: port {port} is also {seen[port]}'s; give each its own port")
            continue
        seen[port] = key
        why = bind_problem(host, port)
        if why:
            problems.append(f"{source}: {key}: cannot listen on {host}:{port}: {why}; stop that program or "
                            f"choose a free port for {key}")
    return problems


# ---- models ------------------------------------------------------------------------------------


@dataclass
class ModelLoad:
    key: str
    model_dir: Path
    recipes: list[str]
    n_ctx: int
    max_tokens: int
    from_manifest: bool
    seconds: float | None = None


def models_to_load(cfg: StationConfig) -> list[ModelLoad]:
    """Every model the station may run with the limits it will run it with (model.dir first); a
    model whose manifest or limits are wrong is left out (check_resources names it)."""
    from adfm.manifest import ManifestError, read_manifest

    loads: dict[Path, ModelLoad | None] = {}
    dirs = [("model.dir", cfg.model.dir, None)] + [
        (f"recipes.{i}.model_dir", r.model_dir or cfg.model.dir, r.name) for i, r in enumerate(cfg.recipes)]
    for key, d, recipe in dirs:
        if d not in loads:
            try:
                limits = model_limits(cfg, read_manifest(d))
            except (ManifestError, OSError):
                limits = None
            loads[d] = None if limits is None or limits.problems else ModelLoad(
                key, d, [], limits.n_ctx, limits.max_tokens, cfg.model.n_ctx is None or cfg.model.max_tokens is None)
        load = loads[d]
        if recipe is not None and load is not None:
            load.recipes.append(recipe)
    return [ld for ld in loads.values() if ld is not None]


def check_model_loads(cfg: StationConfig, source: str, loads: list[ModelLoad]) -> list[str]:
    """Load each model in the inference worker, as `run` will (same backend, same n_ctx)."""
    from ..inspection.worker import BackendSpec, InferenceWorker, WorkerStartError

    problems = []
    for load in loads:
        spec = BackendSpec(cfg.model.backend, cfg.model.backend_kwargs(load.model_dir, load.n_ctx))
        worker = InferenceWorker(spec, load_timeout_s=cfg.model.load_timeout_s)
        t0 = time.monotonic()
        try:
            worker.start()
            load.seconds = time.monotonic() - t0
        except WorkerStartError as exc:
            origin = "sized from the manifest" if cfg.model.n_ctx is None else "set in model.n_ctx"
            who = f" (recipes {', '.join(load.recipes)})" if load.recipes else ""
            problems.append(
                f"{source}: {load.key}: the model in {load.model_dir}{who} does not load with n_ctx {load.n_ctx} "
                f"({origin}) and max_tokens {load.max_tokens}: {exc}; when llama.cpp ran out of memory, set a "
                "smaller model.n_ctx (check says the least one part needs) or free memory; when a file is damaged, "
                "copy the export again")
        finally:
            worker.stop()
    return problems


def check_gates(cfg: StationConfig, source: str) -> list[str]:
    """Every gate the line may use, opened as `run` opens it (graph, metadata, hash)."""
    gates = []
    if cfg.gate.mode != "off" and cfg.gate.path is not None:
        gates.append(("gate.path", cfg.gate.path))
    gates += [(f"recipes.{i}.gate_path", r.gate_path) for i, r in enumerate(cfg.recipes)
              if r.gate_path is not None and (r.gate_mode or cfg.gate.mode) != "off"]
    problems = []
    for key, path in gates:
        if not path.is_file():
            continue  # check_resources said so
        try:
            from adfm.runtime.gate import Gate

            Gate.load(path)
        except Exception as exc:  # ONNX Runtime's own errors are not one type
            problems.append(f"{source}: {key}: cannot load the gate {path}: {exc}; copy the .onnx with its "
                            "metadata file again, or fit the gate again (`adfm-train gate`)")
    return problems


# ---- probes ------------------------------------------------------------------------------------


def probe_plc(cfg: StationConfig, source: str) -> tuple[list[str], str]:
    """The PLC reached and its trigger read; (problems, what the summary says)."""
    assert cfg.plc is not None
    m = cfg.plc.modbus
    why = connect_problem(m.host, m.port, max(m.timeout_s, 2.0))
    fix = f"`adfm-appliance plc-probe --config {source}` tries again and reads every register"
    if why:
        return [f"{source}: plc.modbus.host: cannot reach the PLC at {m.host}:{m.port}: {why}; {fix}"], ""
    try:
        from ..plc.modbus import ModbusClient, PlcError
    except ImportError as exc:
        return [f"{source}: plc: the PLC link needs the `plc` extra (pip install 'adfm[plc]'): {exc}"], ""
    client = ModbusClient(m)
    try:
        t0 = time.perf_counter()
        client.connect()
        level = client.read_trigger()
        ms = (time.perf_counter() - t0) * 1000.0
    except PlcError as exc:
        return [f"{source}: plc.modbus: the PLC at {m.host}:{m.port} answers TCP but not the trigger read: {exc}; "
                f"check plc.modbus.unit ({m.unit}) and trigger ({m.trigger.table} {m.trigger.address}); {fix}"], ""
    finally:
        client.close()
    return [], f"reached in {ms:.0f} ms, trigger {m.trigger.table} {m.trigger.address} = {level}"


def probe_cameras(cfg: StationConfig, source: str, timeout_s: float = PROBE_TIMEOUT_S) -> tuple[list[str], list[str]]:
    """One frame from each camera (a trigger fired for those that wait for one); (problems, notes)."""
    from adfm.camera.probe import probe

    problems, notes = [], []
    for i, cam in enumerate(cfg.cameras):
        report = probe(cam.camera_config(), frames=1, timeout_s=timeout_s)
        fired = f", {report.triggers_fired} trigger(s) fired" if report.triggers_fired else ""
        if report.ok:
            w, h = report.resolution or (0, 0)
            notes.append(f"camera {cam.id}: a {w}x{h} frame after {report.first_frame_s:.2f} s{fired}")
        elif cam.kind == "folder" and report.status.get("connected"):
            notes.append(f"camera {cam.id}: folder open, no file waiting in it (each file dropped there is a part)")
        else:
            problems.append(f"{source}: cameras.{i}.url: camera {cam.id} ({report.url}): {'; '.join(report.problems)}"
                            f"; `adfm-appliance camera-probe --config {source} --camera {cam.id}` shows its "
                            "counters and errors")
    return problems, notes


# ---- the whole check ---------------------------------------------------------------------------


def run_check(cfg: StationConfig, config_path: Path, *, user: str | None = None, load: bool = True,
              probe: bool = False) -> CheckReport:
    """Everything `run` would fail on (the config's form is checked before, by read_config)."""
    from ..config.station import check_resources

    source = str(config_path)
    report = CheckReport()
    report.problems += check_resources(cfg, source)
    try:
        who, note = service_user(user)
    except ValueError as exc:
        report.problems.append(str(exc))
        return report
    if note:
        report.notes.append(note)
    if not who.is_me and os.geteuid() != 0:  # taking another user's ids needs root
        me = pwd.getpwuid(os.geteuid()).pw_name
        report.notes.append(f"access checked as {me}, not as the service user {who.name}: run check as root "
                            "(sudo) to check it as the service user")
        who = ServiceUser(me, os.geteuid(), os.getegid(), tuple(os.getgroups()))
    report.problems += check_access(cfg, config_path, who, source)
    report.problems += check_ports(cfg, source)
    for i, cam in enumerate(cfg.cameras):
        if cam.kind == "v4l2" and not Path(cam.location).exists():
            report.problems.append(f"{source}: cameras.{i}.url: {cam.location} does not exist; `ls /dev/video*` "
                                   "lists the V4L2 devices (`v4l2-ctl --list-devices` says which is which)")
    loads = models_to_load(cfg)
    if load and loads and not report.problems:  # a broken config would only fail the load again
        report.problems += check_model_loads(cfg, source, loads)
    elif load and loads:
        report.notes.append("the model was not loaded: fix the problems below first")
    report.problems += check_gates(cfg, source)
    plc_line = ""
    if probe:
        if cfg.plc is not None:
            found, plc_line = probe_plc(cfg, source)
            report.probe_problems += found
        found, notes = probe_cameras(cfg, source)
        report.probe_problems += found
        report.notes += notes
    report.summary = _summary(cfg, who, loads, load, probe, plc_line)
    return report


def _summary(cfg: StationConfig, who: ServiceUser, loads: list[ModelLoad], loaded: bool, probed: bool,
             plc_line: str) -> list[str]:
    """What the station will do, in the words an integrator checks it against."""
    lines = []
    if cfg.line is not None:
        lines.append(f"line mode: deadline {cfg.line.deadline_ms:g} ms, fail-safe {cfg.line.failsafe}, "
                     f"camera {cfg.line_camera}")
    else:
        lines.append("free-run: every frame is inspected, no deadline")
    for ld in loads:
        t = f", loaded in {ld.seconds:.1f} s" if ld.seconds is not None else (", not loaded (--no-load)"
                                                                              if not loaded else "")
        lines.append(f"model {ld.model_dir}: n_ctx {ld.n_ctx}, max_tokens {ld.max_tokens}"
                     f"{' (from the manifest)' if ld.from_manifest else ''}{t}")
    for r in cfg.recipes:
        line = cfg.line
        assert line is not None
        lines.append(f"recipe {r.name} (code {r.code}): deadline {r.deadline_ms or line.deadline_ms:g} ms, "
                     f"fail-safe {r.failsafe or line.failsafe}, model {r.model_dir or 'model.dir'}, "
                     f"gate {r.gate_mode or cfg.gate.mode}" + (f", product {r.product}" if r.product else ""))
    if cfg.plc is not None:
        m = cfg.plc.modbus
        state = plc_line if plc_line else ("reachable: not probed (--probe)" if not probed else "not reached")
        lines.append(f"PLC {m.host}:{m.port} unit {m.unit}, trigger {m.trigger.table} {m.trigger.address}, "
                     f"result block at {m.result.base}: {state}")
    if cfg.opcua is not None:
        lines.append(f"OPC UA {cfg.opcua.endpoint}")
    ports = ", ".join(f"{k} {h}:{p}" for k, h, p in listening(cfg))
    lines.append(f"listens on {ports or 'no TCP port'} (all free)")
    lines.append(f"files checked as the service user {who.name} (uid {who.uid})")
    return lines
