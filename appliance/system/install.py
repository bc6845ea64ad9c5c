"""`adfm-appliance install`: put the systemd unit and an example station config in place.

The unit is rendered from one template (`systemd/adfm-appliance.service` in the repository is this
template rendered with the defaults; a test keeps the two identical). The service runs as the
dedicated system user `adfm` (video group for cameras), keeps its journal in systemd's
StateDirectory (/var/lib/adfm-appliance), reads its config from /etc/adfm (root-owned, group
readable by the service user), and sees the rest of the file system read-only. ExecStart goes
through /usr/bin/env with the virtual environment first on PATH, so one unit text works for any
install location and `systemd-analyze verify` can check it on a machine where adfm is not installed.

The unit opens no device but cameras. When the station config asks for the GPU (model.n_gpu_layers
not 0, or model.mmproj_gpu), `install` adds the drop-in adfm-appliance.service.d/gpu.conf that opens
the GPU's device nodes, and removes it when the config no longer does: the device policy follows
the config each time `install` runs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config.station import ModelSection

UNIT_NAME = "adfm-appliance.service"
DEFAULT_BIN_DIR = "/opt/adfm/venv/bin"
DEFAULT_CONFIG = "/etc/adfm/station.yaml"
DEFAULT_USER = "adfm"

UNIT_TEMPLATE = """\
# adfm inspection appliance: cameras -> screening gate -> llama.cpp VLM -> journal -> result bus.
# Installed by `adfm-appliance install`; edit {config} for the station, not this file.
[Unit]
Description=adfm inspection appliance (station service)
Wants=network-online.target
After=network-online.target
# A service that keeps failing stops being restarted after 5 starts in 10 minutes (systemctl
# status says so) instead of reloading the model every few seconds forever.
StartLimitIntervalSec=600
StartLimitBurst=5

[Service]
Type=notify
NotifyAccess=main
Environment=PATH={bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin
Environment=HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1
ExecStart=/usr/bin/env adfm-appliance run --config {config}
# The main loop pings the watchdog only while the pipeline is sound; a wedged service is restarted.
WatchdogSec=60
Restart=on-failure
RestartSec=5
# Exit 2: the config is wrong; exit 3: the journal is damaged (`adfm-appliance journal recover`).
# A restart cannot fix either: the unit stays failed with the reason in its log.
RestartPreventExitStatus=2 3
# Loading and hash-checking a large model takes a while; a stop abandons the part in hand (it is
# journaled and finished on the next start), so stopping is quick.
TimeoutStartSec=900
TimeoutStopSec=30
# The line's deadlines first: the deciding loop, the PLC link and the capture threads run above
# ordinary load; background threads (journal rows, OPC UA, housekeeping) lower themselves by 5 and
# the model process by line.vlm_nice (10), so llama.cpp runs at ordinary priority.
Nice=-10

User={user}
Group={user}
SupplementaryGroups=video
# Journal, images, metrics and models live here (/var/lib/adfm-appliance), owned by the user; the
# rest of the file system is read-only. The config and keys stay root-owned (group {user}).
StateDirectory=adfm-appliance
StateDirectoryMode=0750
UMask=0027
# A folder: camera moves each file once journaled: allow its folder in a drop-in
# (`systemctl edit adfm-appliance`): [Service] ReadWritePaths=/srv/adfm/drop

# Cameras only: /dev/video* (V4L2), USB3 Vision (libusb: /dev/bus/usb) plus the standard pseudo
# devices; GigE Vision and RTSP cameras are sockets. A station configured for the GPU gets
# {gpu_dropin} from `adfm-appliance install`.
DevicePolicy=closed
DeviceAllow=char-video4linux rw
DeviceAllow=char-usb_device rw

ProtectSystem=strict
ProtectHome=yes
PrivateTmp=yes
NoNewPrivileges=yes
CapabilityBoundingSet=
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
ProtectProc=invisible
RestrictSUIDSGID=yes
RestrictRealtime=yes
RestrictNamespaces=yes
LockPersonality=yes
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native
# System calls: what a service needs (llama.cpp's threads, mmap of the model, sockets), without
# the privileged ones (mount, module loading, reboot, swap, raw I/O …); refused calls fail with EPERM.
SystemCallFilter=@system-service
SystemCallFilter=~@privileged
SystemCallErrorNumber=EPERM
RemoveIPC=yes
PrivateMounts=yes
ProcSubset=pid
KeyringMode=private
# Plant networks only: loopback, link-local (GigE Vision cameras) and the private ranges (PLC,
# cameras, review terminals); no public address. Narrow it in a drop-in for a given plant.
IPAddressDeny=any
IPAddressAllow=localhost link-local multicast 10.0.0.0/8 172.16.0.0/12 192.168.0.0/16 fc00::/7

[Install]
WantedBy=multi-user.target
"""


GPU_DROPIN = f"{UNIT_NAME}.d/gpu.conf"

#: The device nodes each kind of GPU needs (`model.gpu_devices`). `char-NAME` opens every device of
#: a group in /proc/devices; the NVIDIA groups (nvidia, nvidia-uvm, nvidia-caps …) cover
#: /dev/nvidia0…, /dev/nvidiactl, /dev/nvidia-uvm and /dev/nvidia-uvm-tools. Groups are looked up
#: when the service starts: the driver's modules must be loaded by then.
GPU_DEVICE_RULES = {
    "nvidia": [
        "# NVIDIA: /dev/nvidia0…, /dev/nvidiactl, /dev/nvidia-uvm, /dev/nvidia-uvm-tools, /dev/nvidia-caps/*",
        "DeviceAllow=char-nvidia* rw",
    ],
    "dri": [
        "# Vulkan on Intel/AMD: the DRM render nodes /dev/dri/renderD* (group render)",
        "DeviceAllow=char-drm rw",
        "SupplementaryGroups=render",
    ],
}


def render_unit(bin_dir: str = DEFAULT_BIN_DIR, config: str = DEFAULT_CONFIG, user: str = DEFAULT_USER) -> str:
    return UNIT_TEMPLATE.format(bin_dir=bin_dir, config=config, user=user, gpu_dropin=GPU_DROPIN)


def render_gpu_dropin(model: ModelSection, config: str = DEFAULT_CONFIG) -> str | None:
    """The drop-in that opens the GPU's device nodes, or None when the config keeps to the CPU."""
    if not model.uses_gpu:
        return None
    asks = [f"n_gpu_layers {model.n_gpu_layers}"] if model.n_gpu_layers != 0 else []
    asks += ["the projector on the GPU"] if model.projector_on_gpu else []
    lines = [
        f"# Written by `adfm-appliance install` because {config} asks for the GPU ({', '.join(asks)});",
        "# removed by it when the config no longer does. Edit the config and rerun install, not this file.",
        "[Service]",
        *GPU_DEVICE_RULES[model.gpu_devices],
    ]
    return "\n".join(lines) + "\n"


def example_config() -> str:
    """The commented example station config shipped with the package."""
    return resources.files("adfm.appliance").joinpath("station.example.yaml").read_text(encoding="utf-8")


def current_bin_dir() -> str:
    """The folder holding this installation's `adfm-appliance` (the virtual environment's bin)."""
    found = shutil.which("adfm-appliance", path=str(Path(sys.executable).parent))
    return str(Path(found).parent if found else Path(sys.executable).parent)


@dataclass(frozen=True)
class InstallPlan:
    unit_path: Path
    unit_text: str
    config_path: Path
    config_text: str
    user: str
    #: the GPU drop-in's text; None: the station config keeps to the CPU (the drop-in is removed)
    gpu_dropin_text: str | None = None
    #: files are written under this folder (a system image being built, a test's scratch root); the
    #: unit names the paths as the installed system will see them
    root: Path = Path("/")

    @property
    def gpu_dropin_path(self) -> Path:
        return self.unit_path.parent / GPU_DROPIN

    def on_disk(self, path: Path) -> Path:
        """Where `path` of the installed system is written."""
        return self.root / path.relative_to(path.anchor) if self.root != Path("/") else path

    def steps(self) -> list[str]:
        """What an administrator runs after the files are in place."""
        return [
            f"getent passwd {self.user} >/dev/null || useradd --system --user-group --groups video "
            f"--home-dir /var/lib/adfm-appliance --shell /usr/sbin/nologin {self.user}",
            f"adfm-appliance keys --dir {self.config_path.parent}/keys   # if the bus leaves loopback; admit "
            "clients' public keys with --admit NAME=FILE",
            f"chown -R root:{self.user} {self.config_path.parent} && chmod -R g+rX,o-rwx {self.config_path.parent}",
            f"install -d -o {self.user} -g {self.user} -m 0750 /var/lib/adfm-appliance",
            f"$EDITOR {self.config_path}   # station id, cameras, model.dir, bus",
            f"adfm-appliance check --config {self.config_path} --user {self.user}",
            f"adfm-appliance install --unit-dir {self.unit_path.parent} --config-path {self.config_path}"
            + (f" --user {self.user}" if self.user != DEFAULT_USER else "")
            + "   # again after changing model.n_gpu_layers / mmproj_gpu: opens or closes the GPU",
            "systemctl daemon-reload",
            f"systemctl enable --now {self.unit_path.name}",
            f"journalctl -u {self.unit_path.name} -f",
        ]


def plan(
    unit_dir: Path, config_path: Path, user: str = DEFAULT_USER, bin_dir: str | None = None, force: bool = False,
    root: Path = Path("/"),
) -> InstallPlan:
    """What `install` writes. The GPU drop-in follows the station config that will be in place: the
    existing one (read and checked for form; a ConfigError names what is wrong), or the example
    (CPU) when there is none or `force` replaces it."""
    p = InstallPlan(
        unit_path=unit_dir / UNIT_NAME,
        unit_text=render_unit(bin_dir or current_bin_dir(), str(config_path), user),
        config_path=config_path,
        config_text=example_config(),
        user=user,
        root=root,
    )
    existing = p.on_disk(config_path)
    if existing.exists() and not force:
        from ..config.station import read_config

        dropin = render_gpu_dropin(read_config(existing).model, str(config_path))
        p = replace(p, gpu_dropin_text=dropin)
    return p


def install(p: InstallPlan, force: bool = False, dry_run: bool = False) -> list[str]:
    """Write the unit (replacing an older one) and the example config (never over an existing
    config unless `force`); returns what was done — with `dry_run`, what would be, writing nothing."""
    would = "would write" if dry_run else "wrote"
    done = []
    writes: list[tuple[Path, str]] = []
    unit = p.on_disk(p.unit_path)
    writes.append((unit, p.unit_text))
    done.append(f"{would} {unit}")
    config = p.on_disk(p.config_path)
    if config.exists() and not force:
        example = config.with_name(config.stem + ".example.yaml")
        writes.append((example, p.config_text))
        done.append(f"{'would keep' if dry_run else 'kept'} the existing {config}; {would} the example to {example}")
    else:
        writes.append((config, p.config_text))
        done.append(f"{would} {config} (an example: edit it)")
    dropin = p.on_disk(p.gpu_dropin_path)
    if p.gpu_dropin_text is not None:
        writes.append((dropin, p.gpu_dropin_text))
        done.append(f"{would} {dropin} (the config asks for the GPU: its device nodes are opened)")
    elif dropin.exists():
        done.append(f"{'would remove' if dry_run else 'removed'} {dropin} (the config keeps to the CPU: the GPU "
                    "stays closed)")
    if dry_run:
        return done
    for path, text in writes:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    if p.gpu_dropin_text is None and dropin.exists():
        dropin.unlink()
        with contextlib.suppress(OSError):
            dropin.parent.rmdir()  # only when nothing else is in it
    return done


def verify_unit(unit_path: Path) -> tuple[bool, str]:
    """Run `systemd-analyze verify` on a unit file when available: (clean, what it printed).

    The unit's folder goes first on the unit path, so its drop-ins (gpu.conf) are verified with it."""
    tool = shutil.which("systemd-analyze")
    if tool is None:
        return True, "systemd-analyze not found; unit not verified"
    env = {**os.environ, "SYSTEMD_UNIT_PATH": f"{unit_path.parent}:"}  # trailing ':' keeps the default paths
    proc = subprocess.run([tool, "verify", str(unit_path)], capture_output=True, text=True, check=False, env=env)
    out = (proc.stdout + proc.stderr).strip()
    return proc.returncode == 0 and not proc.stderr.strip(), out
