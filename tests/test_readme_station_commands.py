"""Every command the README shows for installing a station, its keys and its line — and every command
the example station config mentions — run in a scratch root, in the README's order.

The commands are read from README.md's code blocks, so the test fails when the README drifts from
what the commands do. What a scratch root cannot do is done the documented way around:
- absolute paths (/etc, /var/lib, /opt) live under the scratch root; `install` gets `--root`;
- the service user is `nobody` (group `nogroup`) instead of `adfm`, and `check` is told so;
- the integrator's edit between `install` and `check` (the example config's model, camera and bus
  ports, then the README's line section with the PLC stand-in's port) is made here;
- `useradd`, `systemctl` and `journalctl` change or read the machine: they are only matched;
- `run` runs in the background until the section's other commands are done; `tail` gets a count;
  `--watch 10` watches 1 s.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from adfm.appliance.cli import build_parser, main
from tests.appliance_fakes import FACTORY, make_model_dir, write_script
from tests.camera_support import free_port, write_video
from tests.line_support import Plc

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
EXAMPLE = REPO / "appliance" / "station.example.yaml"
SECTIONS = ("### Install on a line PC (systemd)", "## The appliance (line PC)",
            "## The line: a decision for every part in time, and the PLC")
#: commands that change or read the machine itself, never run by a test
MACHINE = ("useradd", "systemctl", "journalctl")

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the README's chown/install -o steps need root")


def section(text: str, heading: str) -> str:
    """A section's own text, up to the next heading of any level."""
    rest = text[text.index(heading + "\n") + len(heading):]
    end = re.search(r"^#{2,} ", rest, flags=re.M)
    return rest[:end.start()] if end else rest


def blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.M | re.S)


def commands(block: str) -> list[list[str]]:
    """The block's commands, continuation lines joined, comments dropped, `a && b` split."""
    out = []
    for line in block.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        while words:
            cut = words.index("&&") if "&&" in words else len(words)
            cmd = words[:cut]
            out.append(cmd[1:] if cmd[0] == "sudo" else cmd)
            words = words[cut + 1:]
    return out


def readme_commands() -> dict[str, list[list[str]]]:
    text = README.read_text(encoding="utf-8")
    return {h: [c for b in blocks(section(text, h), "bash") for c in commands(b)] for h in SECTIONS}


class Scratch:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.run: subprocess.Popen | None = None
        self.plc: Plc | None = None
        self.bus = (free_port(), free_port())
        self.config = root / "etc/adfm/station.yaml"

    def path(self, word: str) -> str:
        """A word with its absolute system paths moved under the scratch root."""
        return re.sub(r"(?<![\w.])/(etc|var/lib|opt)/", lambda m: f"{self.root}/{m[1]}/", word)

    def user(self, word: str) -> str:
        return {"adfm": "nobody", "root:adfm": "root:nogroup"}.get(word, word)

    def env(self) -> dict[str, str]:
        return {**os.environ, "PYTHONPATH": str(REPO)}

    # ---- what the integrator edits -------------------------------------------------------------

    def edit_example(self) -> None:
        """Fill in the installed example: its model (placed where it says), a camera, free bus ports."""
        cfg = yaml.safe_load(self.path(self.config.read_text()))
        make_model_dir(Path(cfg["model"]["dir"]))
        cfg["model"]["backend"] = FACTORY
        (self.root / "srv").mkdir()
        video = write_video(self.root / "srv/line.avi", frames=20)
        cfg["cameras"] = [{"id": "cam0", "url": f"replay:{video}", "product": "washer", "fps": 10}]
        cfg["bus"]["publish"], cfg["bus"]["control"] = (f"tcp://127.0.0.1:{p}" for p in self.bus)
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    def edit_line(self, readme_yaml: str) -> None:
        """Add the README's line section, with the PLC stand-in's port and a camera that exists."""
        self.plc = Plc(free_port(), self.root / "plc.jsonl")
        self.plc.start(rate=0, parts=0)
        line = yaml.safe_load(readme_yaml)
        cfg = yaml.safe_load(self.config.read_text())
        cam = {**line["cameras"][0], "url": cfg["cameras"][0]["url"], "product": "housing-a"}
        cfg.update(line, cameras=[cam], products=[*line["products"], *cfg["products"]])
        cfg["plc"]["modbus"].update(host="127.0.0.1", port=self.plc.port)
        self.config.write_text(yaml.safe_dump(cfg, sort_keys=False))

    # ---- running a command ---------------------------------------------------------------------

    def do(self, cmd: list[str], capsys) -> str:
        prog, args = cmd[0], cmd[1:]
        if prog in MACHINE:
            return ""
        if prog in ("chown", "chmod", "install"):
            argv = [prog, *(self.path("nogroup" if a == "adfm" and i and args[i - 1] == "-g" else self.user(a))
                            for i, a in enumerate(args))]
            subprocess.run(argv, check=True)
            return ""
        assert prog == "adfm-appliance", f"README shows a command this test does not know: {cmd}"
        args = [self.path(a) for a in args]
        sub = args[0]
        if sub == "install":
            args += ["--root", str(self.root)]
        if sub == "check":
            args += ["--user", "nobody"]
        if sub == "plc-probe" and "--watch" in args:
            args[args.index("--watch") + 1] = "1"
        if sub == "tail":
            args = [a.replace("tcp://station:5560", f"tcp://127.0.0.1:{self.bus[0]}")
                    .replace("tcp://station:5561", f"tcp://127.0.0.1:{self.bus[1]}") for a in args]
            args += ["--count", "2", "--idle-exit", "30", "--timeout", "10"]
        if sub == "run":
            self.run = subprocess.Popen([sys.executable, "-m", "adfm.appliance.cli", *args], cwd=REPO,
                                        env=self.env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            self.wait_for_station(capsys)
            return ""
        code = main(args)
        out, err = capsys.readouterr()
        assert code == 0, f"{cmd} → exit {code}\n{out}\n{err}"
        return out

    def wait_for_station(self, capsys) -> None:
        deadline = time.monotonic() + 60
        while main(["status", "--control", f"tcp://127.0.0.1:{self.bus[1]}", "--timeout", "1"]) != 0:
            capsys.readouterr()
            assert self.run is not None and self.run.poll() is None, self.run.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the station did not answer status within 60 s"
        capsys.readouterr()

    def stop_run(self) -> None:
        if self.run is not None:
            self.run.send_signal(signal.SIGTERM)
            assert self.run.wait(60) == 0, self.run.stderr.read().decode()[-2000:]
            self.run = None

    def close(self) -> None:
        if self.run is not None:
            self.run.kill()
            self.run.wait(10)
        if self.plc is not None:
            self.plc.kill()


@pytest.fixture
def scratch(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="adfm-readme-"))
    os.chmod(root, 0o755)  # the service user (nobody) must reach what is under it
    s = Scratch(root)
    monkeypatch.setenv("STATE_DIRECTORY", str(root / "var/lib/adfm-appliance"))  # what systemd sets
    monkeypatch.setenv("ADFM_FAKE_SCRIPT", str(write_script(root / "script.json", ["no"])))
    work = root / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the administrator's working directory
    yield s
    s.close()
    shutil.rmtree(root, ignore_errors=True)


def test_readme_install_keys_and_line_commands_run_in_a_scratch_root(scratch, capsys):
    shown = readme_commands()
    install, appliance, line = (shown[h] for h in SECTIONS)
    assert [c[0] for c in install if c[0] in MACHINE] == ["useradd", "systemctl", "systemctl", "journalctl"]

    # Install on a line PC: dry run first (writes nothing), then the files, the edit, keys, rights, check.
    checked = ""
    for cmd in install:
        out = scratch.do(cmd, capsys)
        if cmd[:2] == ["adfm-appliance", "install"] and "--dry-run" in cmd:
            assert "would write" in out and not (scratch.root / "etc").exists()
        elif cmd[:2] == ["adfm-appliance", "install"]:
            assert (scratch.root / "etc/systemd/system/adfm-appliance.service").is_file()
            scratch.edit_example()
        elif cmd[:2] == ["adfm-appliance", "check"]:
            checked = out
    assert "OK — station line1-press3" in checked  # check --probe, as the service user
    assert "files checked as the service user nobody" in checked and "camera cam0: a " in checked

    # The appliance: check, run, admit a client's key (copied into the key folder), journal, tail.
    laptop = scratch.root / "laptop"
    assert main(["client-key", "--dir", str(laptop), "--name", "review1"]) == 0
    shutil.copy(laptop / "review1.key", scratch.root / "etc/adfm/keys/review1.key")
    capsys.readouterr()
    for cmd in appliance:
        out = scratch.do(cmd, capsys)
        if cmd[1] == "keys":
            assert f"admitted client review1: {scratch.root}/etc/adfm/keys/clients/review1.key" in out
        if cmd[1] == "tail":
            assert len(out.splitlines()) == 2 and '"verdict":"pass"' in out
    scratch.stop_run()

    # The line: the README's config section with the PLC stand-in, then its probes.
    text = README.read_text(encoding="utf-8")
    scratch.edit_line(blocks(section(text, SECTIONS[2]), "yaml")[0])
    probes = [scratch.do(cmd, capsys) for cmd in line]
    assert len(probes) >= 3, f"README's line section shows {len(probes)} probe commands, not the three probes"
    assert '"ok": true' in probes[0] and '"watch"' in probes[1] and '"pulsed"' in probes[2]
    assert "fired by the probe (the camera waits for a trigger)" in probes[3]
    assert len(scratch.plc.pulses()) == 1


def test_example_config_commands_parse_and_the_runnable_ones_run(tmp_path, capsys, monkeypatch):
    """Every `adfm-appliance …` the example config's comments show is a command that exists; those
    without placeholders run (keys, client-key, admitting the client's key by its file name)."""
    shown = re.findall(r"`(adfm-appliance [^`]+)`", EXAMPLE.read_text(encoding="utf-8"))
    assert len(shown) >= 6
    parser = build_parser()
    for text in shown:
        parser.parse_args(shlex.split(text)[1:])  # SystemExit (argparse's error) fails the test
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    ran = 0
    for text in shown:
        argv = [a.replace("/etc/", f"{tmp_path}/etc/") for a in shlex.split(text)[1:]]
        if argv[0] not in ("keys", "client-key") or "NAME=FILE" in argv:
            continue
        argv = [os.path.expanduser(a) for a in argv]
        if "--admit" in argv:  # the client's public key, sent to the station's administrator
            shutil.copy(tmp_path / "home/.config/adfm/keys/review.key", tmp_path / "review.key")
        assert main(argv) == 0, capsys.readouterr().err
        ran += 1
    assert ran == 3 and (tmp_path / "etc/adfm/keys/clients/review.key").is_file()
