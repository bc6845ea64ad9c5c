"""The inference worker's supervision: answers, crashes, hangs, backend errors, start failures."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from adfm.appliance.inspection.worker import BackendSpec, InferenceWorker, WorkerFailure, WorkerStartError
from tests.appliance_fakes import calls, write_script

FACTORY = "tests.appliance_fakes:make_backend"
IMG = np.zeros((56, 84, 3), np.uint8)


def _worker(script, deadline_s=20.0, **kw) -> InferenceWorker:
    return InferenceWorker(BackendSpec(FACTORY, {"script": str(script), **kw}), deadline_s=deadline_s,
                           load_timeout_s=60)


def test_answers_and_keeps_one_process(tmp_path):
    script = write_script(tmp_path / "s.json", ["yes", "no"])
    w = _worker(script)
    try:
        w.start()
        pid = w.pid
        a = w.generate([IMG], prompt_version="multi-stage-v1", product="washer")
        b = w.generate([IMG])
        assert "<answer>yes</answer>" in a.text and "<answer>no</answer>" in b.text
        assert w.pid == pid and w.restarts == 0
        log = calls(script)
        assert [c["pid"] for c in log] == [pid, pid]
        assert log[0]["sizes"] == [[84, 56]] and log[0]["product"] == "washer"
    finally:
        w.stop()
    assert not w.alive


def test_crash_is_reported_and_next_request_restarts(tmp_path):
    script = write_script(tmp_path / "s.json", ["crash", "no"])
    w = _worker(script)
    try:
        w.start()
        first_pid = w.pid
        with pytest.raises(WorkerFailure) as info:
            w.generate([IMG])
        assert info.value.kind == "crash" and "SIGKILL" in str(info.value)
        reply = w.generate([IMG])
        assert "<answer>no</answer>" in reply.text
        assert w.pid != first_pid and w.restarts == 1
    finally:
        w.stop()


def test_hang_past_deadline_is_killed(tmp_path):
    script = write_script(tmp_path / "s.json", ["hang", "yes"])
    ticks = []
    w = _worker(script, deadline_s=1.5)
    w.on_wait = lambda: ticks.append(time.monotonic())
    w.wait_slice_s = 0.2
    try:
        w.start()
        hung_pid = w.pid
        with pytest.raises(WorkerFailure) as info:
            w.generate([IMG])
        assert info.value.kind == "hang" and "1.5 s" in str(info.value)
        with pytest.raises(ProcessLookupError):
            os.kill(hung_pid, 0)  # the hung child is gone (killed and reaped)
        assert len(ticks) >= 3  # the caller kept beating while it waited
        assert "<answer>yes</answer>" in w.generate([IMG]).text
    finally:
        w.stop()


def test_backend_exception_keeps_the_process(tmp_path):
    script = write_script(tmp_path / "s.json", ["error", "no"])
    w = _worker(script)
    try:
        w.start()
        pid = w.pid
        with pytest.raises(WorkerFailure) as info:
            w.generate([IMG])
        assert info.value.kind == "error" and "llama_decode failed" in str(info.value)
        w.generate([IMG])
        assert w.pid == pid and w.restarts == 0
    finally:
        w.stop()


def test_sigkill_from_outside_mid_part(tmp_path):
    script = write_script(tmp_path / "s.json", ["hang", "no"])
    w = _worker(script, deadline_s=60)
    try:
        w.start()
        pid = w.pid
        threading.Timer(0.5, os.kill, args=(pid, signal.SIGKILL)).start()
        t0 = time.monotonic()
        with pytest.raises(WorkerFailure) as info:
            w.generate([IMG])
        assert info.value.kind == "crash" and time.monotonic() - t0 < 30
        assert "<answer>no</answer>" in w.generate([IMG]).text
    finally:
        w.stop()


@pytest.mark.parametrize("load, words", [("fail", "model file is corrupt"), ("crash", "SIGKILL")])
def test_start_failure_is_explained(tmp_path, load, words):
    script = write_script(tmp_path / "s.json", ["no"])
    w = _worker(script, load=load)
    with pytest.raises(WorkerStartError, match=words):
        w.start()
    assert not w.alive


def test_unknown_factory_is_explained(tmp_path):
    w = InferenceWorker(BackendSpec("tests.appliance_fakes:nope", {}), load_timeout_s=60)
    with pytest.raises(WorkerStartError, match="has no 'nope'"):
        w.start()
