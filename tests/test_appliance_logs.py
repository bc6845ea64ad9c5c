"""The station's log, as an operator following `journalctl -f` reads it: one line per part, state
changes and alarms once, repeated failures backing off with a count, library noise kept down, and
no traceback when the reader of a command's output goes away.

The log budget runs the real `adfm-appliance run` (a line station with the PLC stand-in and OPC UA
on) for 40 parts at 4 parts/s — the bound is per part plus a fixed number of state changes, so a
run of 10 s proves what 60 s would, start-up (where the OPC UA node set used to print a thousand
lines) included.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from adfm.appliance.system.health import Health
from adfm.appliance.system.logs import part_line, restate
from adfm.camera.capture_thread import CameraWorker
from adfm.camera.config import CameraConfig
from adfm.camera.errors import SourceError
from adfm.camera.source import FrameSource
from tests.appliance_fakes import FACTORY, BusStation, frame, write_script
from tests.camera_support import write_video
from tests.line_support import Plc, free_port, line_config

REPO = Path(__file__).resolve().parents[1]


def test_one_line_per_part_names_seq_part_verdict_source_and_latency():
    from adfm.appliance.inspection.core import build_result

    r = build_result(station="s", seq=12, part_id="4711", camera="cam0", frame_number=1,
                     captured_at=frame(1).captured_wall, verdict="fail", reason="scratch", model=None,
                     latency={"trigger_to_decision": 640.4})
    r = r.model_copy(update={"decision_source": "vlm", "action": "reject", "recipe": "a"})
    assert part_line(r) == "seq 12 part 4711: fail → reject (vlm) in 640 ms, recipe a"


def test_alarms_are_logged_once_then_at_growing_counts_and_cleared_once(caplog):
    health = Health("s")
    with caplog.at_level(logging.INFO, logger="adfm.appliance.system.health"):
        for i in range(150):
            health.problem("plc", f"PLC link down (127.0.0.1:502): refused; retrying in {min(5, 0.2 * 2 ** i):.1f} s")
        health.clear("plc")
        health.clear("plc")  # not raised: nothing to say
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 4, lines
    assert lines[0].startswith("alarm plc: PLC link down")
    assert lines[1].startswith("alarm plc still raised (10 reports in") and "(100 reports in" in lines[2]
    assert lines[3].startswith("alarm plc cleared after") and "150 report(s)" in lines[3]
    assert [n for n in range(1, 10_001) if restate(n)] == [1, 10, 100, 1000, 10000]


class _ListsButCannotRead(FrameSource):
    """A folder that opens but cannot be listed (the service user lacks read permission)."""

    streaming = False

    def __init__(self, config):
        super().__init__(config)
        self.opens: list[float] = []

    def open(self):
        self.opens.append(time.monotonic())

    def read(self):
        raise SourceError(f"watched folder {self.config.url}: cannot list (Permission denied)")

    def close(self):
        pass


def test_a_folder_failing_after_open_backs_off_and_logs_with_a_count(caplog, tmp_path):
    config = CameraConfig.model_validate({"id": "drop", "url": f"folder:{tmp_path}", "reconnect_min_s": 0.05,
                                          "reconnect_max_s": 1.0})
    source = _ListsButCannotRead(config)
    worker = CameraWorker(config, source=source)
    with caplog.at_level(logging.INFO, logger="adfm.camera"):
        worker.start()
        time.sleep(3.0)
        worker.stop()
    gaps = [b - a for a, b in zip(source.opens, source.opens[1:], strict=False)]
    # 0.05 s doubling to 1 s (jittered to half): a handful of tries in 3 s, not 60, the gaps growing
    assert 4 <= len(source.opens) <= 12, source.opens
    assert max(gaps[-2:]) > 4 * min(gaps[:2])
    infos = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert infos == [f"camera drop: opened folder:{tmp_path}"]  # no "reconnected" per retry
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot list (Permission denied)" in warnings[0]


def test_library_noise_is_routed_and_v_brings_it_back():
    from adfm.appliance.system.logs import quiet_libraries

    quiet_libraries(0)
    assert logging.getLogger("asyncua").getEffectiveLevel() == logging.WARNING
    assert logging.getLogger("pymodbus").getEffectiveLevel() == logging.CRITICAL
    quiet_libraries(1)
    assert logging.getLogger("asyncua.server.address_space").getEffectiveLevel() == logging.INFO
    quiet_libraries(0)


def test_llama_cpp_qwen_vl_image_token_advice_is_debug_not_a_warning(caplog):
    """The warning every Qwen-VL mmproj load prints is routed to DEBUG: adfm sizes images itself."""
    import ctypes

    from adfm.runtime import vlm

    vlm.route_llama_logs()
    callback = vlm._log_callback
    with caplog.at_level(logging.DEBUG, logger="adfm.llama"):
        callback(3, b"clip_model_loader: Qwen-VL models require at minimum 1024 image tokens to function "
                    b"correctly on grounding tasks\n", ctypes.c_void_p(0))
        callback(3, b"llama_context: n_ctx_per_seq (512) < n_ctx_train (32768)\n", ctypes.c_void_p(0))
    levels = [(r.levelno, r.getMessage()[:20]) for r in caplog.records]
    assert levels == [(logging.DEBUG, "clip_model_loader: Q"), (logging.WARNING, "llama_context: n_ctx")]


def test_status_piped_to_a_reader_that_leaves_ends_without_a_traceback(tmp_path):
    """`adfm-appliance status | head`: the reader closes the pipe before the status is printed."""
    station = BusStation(tmp_path)
    try:
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        proc = subprocess.Popen([sys.executable, "-m", "adfm.appliance.cli", "status", "--control", station.control_ep],
                                cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # `| head` that has read enough (here: before anything came)
        err = proc.stderr.read().decode()
        assert proc.wait(30) == 0, err
    finally:
        station.close()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_log_budget_of_a_line_station_with_opc_ua(tmp_path):
    """INFO and above: at most one line per part plus the state changes of a start and a stop."""
    parts, rate = 40, 4.0
    write_video(tmp_path / "line.avi", frames=20)
    plc = Plc(free_port(), tmp_path / "plc.jsonl")
    # the trigger as a part counter: a poll that comes late on a busy machine loses no part
    cfg = line_config(tmp_path, plc.port, deadline_ms=800, delay_ms=1000, counter=True,
                      opcua={"endpoint": f"opc.tcp://127.0.0.1:{free_port()}/adfm/"})
    cfg["cameras"][0].update(url=f"replay:{tmp_path / 'line.avi'}", fps=30)
    cfg["model"]["backend"] = FACTORY
    path = tmp_path / "station.yaml"
    path.write_text(yaml.safe_dump(cfg))
    env = {**os.environ, "PYTHONPATH": str(REPO), "ADFM_FAKE_SCRIPT": str(write_script(tmp_path / "s.json", ["no"]))}
    plc.start(rate=rate, parts=parts, start_delay=0.5)
    station = subprocess.Popen([sys.executable, "-m", "adfm.appliance.cli", "run", "--config", str(path)], cwd=REPO,
                               env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not plc.done() or len(plc.result_writes()) < parts:
            assert station.poll() is None, station.stderr.read() if station.stderr else ""
            assert time.monotonic() < deadline, f"{len(plc.result_writes())} of {parts} results written"
            time.sleep(0.2)
        time.sleep(1.0)  # the last parts' journal rows and results
    finally:
        station.send_signal(signal.SIGTERM)
        _, err = station.communicate(timeout=60)
        plc.kill()
    lines = [x for x in err.splitlines() if x.strip()]
    part_lines = [x for x in lines if re.search(r"INFO adfm\.appliance\.service: seq \d+ part ", x)]
    other = [x for x in lines if x not in part_lines]
    assert len(part_lines) == parts, "\n".join(lines)
    assert len({re.search(r"seq (\d+)", x)[1] for x in part_lines}) == parts  # one line per part
    # start and stop: model loaded, OPC UA up, PLC link up, running, stopped — and nothing from asyncua
    assert len(other) <= 8, "\n".join(other)
    assert not [x for x in lines if "asyncua" in x or "pymodbus" in x], "\n".join(lines)
