"""Camera config validation and the small pure parts: shaping, decoding, backoff, pacing, queue, ids."""

from __future__ import annotations

import random
import threading

import cv2
import numpy as np
import pytest
from pydantic import ValidationError

from adfm.camera import CameraConfig, Frame, FrameError, TriggerConfig
from adfm.camera.backoff import Backoff
from adfm.camera.capture_thread import FrameQueue, RateMeter
from adfm.camera.config import redact_url, source_kind
from adfm.camera.images import decode_image, image_format, natural_key
from adfm.camera.pacing import Pacer
from adfm.camera.shaping import FrameShaper
from adfm.camera.source import default_part_id
from adfm.camera.triggers import FreeRunTrigger, parse_part_id
from tests.camera_support import encode


@pytest.mark.parametrize(
    ("url", "kind"),
    [
        ("v4l2:/dev/video0", "v4l2"),
        ("usb:2", "usb"),
        ("rtsp://10.0.0.5:554/stream1", "rtsp"),
        ("RTSP://cam.local/s", "rtsp"),
        ("http://10.0.0.6/mjpg/video.mjpg", "http"),
        ("folder:/srv/in", "folder"),
        ("replay:/data/line.mp4", "replay"),
    ],
)
def test_url_kinds(url, kind):
    config = CameraConfig(id="cam1", url=url)
    assert config.kind == kind == source_kind(url)


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("file:/tmp/x.mp4", "unsupported camera url 'file:/tmp/x.mp4'"),
        ("usb:front", "usb:N"),
        ("folder:", "needs a path"),
        ("rtsp:///nohost", "has no host"),
    ],
)
def test_bad_urls_name_the_url(url, needle):
    with pytest.raises(ValidationError) as info:
        CameraConfig(id="cam1", url=url)
    assert needle in str(info.value)


def test_password_never_shown():
    config = CameraConfig(id="cam1", url="rtsp://admin:s3cret@10.0.0.5:554/s1")
    assert "s3cret" not in config.display_url
    assert config.display_url == "rtsp://admin:***@10.0.0.5:554/s1"
    assert redact_url("http://10.0.0.5/x") == "http://10.0.0.5/x"


def test_trigger_mode_follows_the_url():
    assert CameraConfig(id="a", url="folder:/in").trigger.mode == "folder"
    assert CameraConfig(id="a", url="usb:0").trigger.mode == "free-run"


@pytest.mark.parametrize(
    ("fields", "needle"),
    [
        ({"url": "folder:/in", "trigger": {"mode": "free-run"}}, "triggered by file arrival"),
        ({"url": "usb:0", "trigger": {"mode": "folder"}}, "needs a folder: url"),
        ({"url": "usb:0", "trigger": {"mode": "external"}}, "needs an endpoint"),
        ({"url": "usb:0", "trigger": {"mode": "external", "endpoint": "tcp://0.0.0.0:5601"}}, "insecure"),
        ({"url": "usb:0", "trigger": {"mode": "external", "endpoint": "udp://x:1"}}, "must be tcp://"),
        ({"url": "usb:0", "trigger": {"mode": "external", "endpoint": "ipc:///t", "parts_per_s": 2}},
         "parts_per_s applies"),
        ({"url": "usb:0", "roi": [0, 0, 0, 10]}, "roi [0, 0, 0, 10]"),
        ({"url": "usb:0", "rotate": 45}, "rotate"),
        ({"url": "usb:0", "reconnect_min_s": 5, "reconnect_max_s": 1}, "reconnect_min_s 5.0"),
        ({"url": "replay:/x.mp4", "fps": 0.05}, "stall_timeout_s"),
        ({"url": "usb:0", "exposure": 3}, "exposure"),
        ({"url": "folder:/in", "folder": {"done_action": "delete"}}, "done_action"),
    ],
)
def test_bad_settings_say_what_is_wrong(fields, needle):
    with pytest.raises(ValidationError) as info:
        CameraConfig(id="cam1", **fields)
    assert needle in str(info.value)


def test_loopback_and_explicitly_insecure_binds_are_allowed():
    TriggerConfig(mode="external", endpoint="tcp://127.0.0.1:5601")
    TriggerConfig(mode="external", endpoint="tcp://0.0.0.0:5601", insecure=True)
    TriggerConfig(mode="external", endpoint="tcp://plc.local:5601", bind=False)


def test_shaper_crops_then_converts_then_rotates_clockwise():
    bgr = np.zeros((4, 6, 3), np.uint8)
    bgr[1, 2] = (255, 0, 0)  # blue in BGR, inside the ROI at its top-left
    shaped = FrameShaper(roi=(2, 1, 3, 2), rotate=90)(bgr)
    assert shaped.shape == (3, 2, 3)  # 3 wide × 2 high ROI, rotated
    # rotating clockwise moves the top-left pixel to the top-right
    assert shaped[0, 1].tolist() == [0, 0, 255]
    assert shaped.sum() == 255


def test_shaper_handles_gray_and_rejects_a_roi_that_does_not_fit():
    gray = np.full((4, 6), 7, np.uint8)
    assert FrameShaper()(gray).shape == (4, 6, 3)
    with pytest.raises(FrameError, match=r"cam\.png: roi \[4, 0, 3, 2\] does not fit the 6x4 frame"):
        FrameShaper(roi=(4, 0, 3, 2))(gray, "cam.png")


def test_decode_tells_not_an_image_from_truncated():
    image = np.random.default_rng(0).integers(0, 255, (48, 64, 3), np.uint8)
    png, jpeg = encode(image, ".png"), encode(image, ".jpg")
    assert decode_image(png, "ok.png").shape == (48, 64, 3)
    assert image_format(jpeg) == "jpeg"
    with pytest.raises(FrameError, match=r"half\.png: truncated or corrupt png"):
        decode_image(png[: len(png) // 2], "half.png")
    with pytest.raises(FrameError, match=r"half\.jpg: truncated jpeg"):
        decode_image(jpeg[: len(jpeg) // 2], "half.jpg")
    with pytest.raises(FrameError, match=r"notes\.txt: not an image"):
        decode_image(b"lot 42 passed inspection\n", "notes.txt")


def test_natural_order():
    names = ["f10.png", "f2.png", "F1.png"]
    assert sorted(names, key=natural_key) == ["F1.png", "f2.png", "f10.png"]


def test_backoff_doubles_up_to_the_cap_with_jitter():
    backoff = Backoff(0.5, 4.0, rng=random.Random(1))
    ceilings = []
    for _ in range(6):
        ceiling = backoff.ceiling()
        delay = backoff.next()
        assert ceiling / 2 <= delay <= ceiling
        ceilings.append(ceiling)
    assert ceilings == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    backoff.reset()
    assert backoff.ceiling() == 0.5
    delays = {round(Backoff(1, 1, rng=random.Random(seed)).next(), 6) for seed in range(5)}
    assert len(delays) == 5  # jittered: cameras that dropped together do not retry in step


def test_pacer_spaces_events_and_restarts_after_a_pause():
    pacer = Pacer(10.0)  # one event per 0.1 s
    assert pacer.take(0.0)
    assert not pacer.take(0.05)
    assert pacer.wait_s(0.05) == pytest.approx(0.05)
    assert pacer.take(0.1)
    assert pacer.take(1.0)  # long pause: due at once …
    assert not pacer.take(1.01)  # … without a burst of make-up events
    every = Pacer(None)
    assert all(every.take(t) for t in (0.0, 0.0, 0.001))


def _frame(mono: float, number: int = 0) -> Frame:
    return Frame("cam1", np.zeros((2, 2, 3), np.uint8), number, f"p{number}", mono, 1e9 + mono)


def test_free_run_samples_at_parts_per_second():
    trigger = FreeRunTrigger(parts_per_s=5.0)
    taken = [trigger.take(_frame(i / 30.0, i)) for i in range(60)]  # 2 s of a 30 fps stream
    ids = [t for t in taken if t is not None]
    assert len(ids) == 10
    assert ids[0] == "p0"


@pytest.mark.parametrize(
    ("message", "part_id"),
    [([b"P-0001"], "P-0001"), ([b"  lot7:42 \n"], "lot7:42"), ([b'{"part_id": "A17"}'], "A17"),
     ([b"trigger", b"B-3"], "B-3")],
)
def test_trigger_messages(message, part_id):
    assert parse_part_id(message) == part_id


@pytest.mark.parametrize(
    ("message", "needle"),
    [([b""], "empty part id"), ([b"\xff\xfe"], "not UTF-8"), ([b'{"part": 1}'], "string 'part_id'"),
     ([b"{oops"], "not valid JSON"), ([b"../etc/passwd"], "path separator"), ([b"x" * 200], "longer than")],
)
def test_bad_trigger_messages_are_named(message, needle):
    with pytest.raises(ValueError, match=needle):
        parse_part_id(message)


def test_queue_drops_the_oldest_and_waits_when_asked():
    queue = FrameQueue(2)
    assert queue.put_drop_oldest(_frame(0, 0)) is None
    assert queue.put_drop_oldest(_frame(1, 1)) is None
    dropped = queue.put_drop_oldest(_frame(2, 2))
    assert dropped is not None and dropped.frame_number == 0
    assert [queue.get(0).frame_number, queue.get(0).frame_number] == [1, 2]
    assert queue.get(0.01) is None

    stop = threading.Event()
    assert queue.put_wait(_frame(3, 3), stop) and queue.put_wait(_frame(4, 4), stop)
    stop.set()
    assert queue.put_wait(_frame(5, 5), stop) is False  # full and stopping: not queued, not lost
    assert len(queue) == 2


def test_rate_meter_over_its_window():
    meter = RateMeter(window_s=2.0)
    for i in range(21):
        meter.add(10.0 + i * 0.1)
    assert meter.rate(12.0) == pytest.approx(10.0)
    assert meter.rate(20.0) == 0.0  # nothing recent


def test_default_part_id_is_readable_and_unique_per_frame():
    first = default_part_id("cam1", 1_800_000_000.123, 7)
    assert first == "cam1-20270115T080000.123Z-7"
    assert default_part_id("cam1", 1_800_000_000.123, 8) != first


def test_opencv_reads_the_png_we_encode():  # guards the helpers the other tests rely on
    image = np.arange(48 * 64 * 3, dtype=np.uint8).reshape(48, 64, 3)
    assert np.array_equal(cv2.imdecode(np.frombuffer(encode(image), np.uint8), cv2.IMREAD_COLOR), image)
