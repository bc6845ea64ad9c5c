"""The folder source: file = part, partial writes waited out, bad files rejected, ack before move."""

from __future__ import annotations

import logging
import time

import numpy as np
import pytest

from adfm.camera import CameraConfig, CameraWorker, FrameError, open_source
from tests.camera_support import collect, encode, shaded_frame, wait_until

QUICK = {"settle_s": 0.05, "corrupt_after_s": 0.3, "poll_interval_s": 0.02}


def _config(folder, queue_size: int = 4, **folder_options) -> CameraConfig:
    return CameraConfig(
        id="scan1",
        url=f"folder:{folder}",
        queue_size=queue_size,
        reconnect_min_s=0.01,
        reconnect_max_s=0.05,
        folder={**QUICK, **folder_options},
    )


def _drop(folder, name: str, shade: int, mtime: float | None = None) -> None:
    import os

    path = folder / name
    path.write_bytes(encode(shaded_frame(shade), path.suffix or ".png"))
    if mtime is not None:
        os.utime(path, (mtime, mtime))


def _files(folder) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def worker_for():
    workers: list[CameraWorker] = []

    def make(config: CameraConfig, **kwargs) -> CameraWorker:
        worker = CameraWorker(config, **kwargs)
        workers.append(worker)
        worker.start()
        return worker

    yield make
    for worker in workers:
        assert worker.stop(timeout=5)


def test_files_become_parts_oldest_first_and_move_only_after_ack(tmp_path, worker_for):
    now = time.time()
    _drop(tmp_path, "B-200.png", 50, mtime=now - 20)
    _drop(tmp_path, "A-100.jpg", 100, mtime=now - 10)
    worker = worker_for(_config(tmp_path))
    frames = collect(worker, 2, timeout=10)
    assert [f.part_id for f in frames] == ["B-200", "A-100"]
    assert [f.source_name for f in frames] == ["B-200.png", "A-100.jpg"]
    assert abs(int(np.median(frames[0].image)) - 50) <= 1
    # delivered but not journaled yet: both files still in place, and not delivered twice
    assert collect(worker, 1, timeout=0.3) == []
    assert _files(tmp_path) == {"B-200.png", "A-100.jpg"}
    worker.ack(frames[0])
    assert _files(tmp_path) == {"done/B-200.png", "A-100.jpg"}
    worker.ack(frames[0])  # a second ack changes nothing
    worker.ack(frames[1])
    assert _files(tmp_path) == {"done/B-200.png", "done/A-100.jpg"}
    _drop(tmp_path, "C-300.png", 150)
    assert [f.part_id for f in collect(worker, 1, timeout=10)] == ["C-300"]
    status = worker.status()
    assert (status.captured, status.errors, status.dropped) == (3, 0, 0) and status.connected


def test_unacked_part_is_delivered_again_after_a_restart(tmp_path, worker_for):
    _drop(tmp_path, "P1.png", 10)
    first = worker_for(_config(tmp_path))
    assert [f.part_id for f in collect(first, 1, timeout=10)] == ["P1"]
    assert first.stop(timeout=5)  # "crash" before the part was journaled
    second = worker_for(_config(tmp_path))
    again = collect(second, 1, timeout=10)
    assert [f.part_id for f in again] == ["P1"]
    second.ack(again[0])
    assert _files(tmp_path) == {"done/P1.png"}


def test_mark_renames_in_place_and_never_redelivers(tmp_path, worker_for):
    _drop(tmp_path, "lot7.png", 10)
    worker = worker_for(_config(tmp_path, done_action="mark"))
    frame = collect(worker, 1, timeout=10)[0]
    worker.ack(frame)
    assert _files(tmp_path) == {"lot7.png.done"}
    _drop(tmp_path, "lot7.png", 20)  # the same name again is a new part
    again = collect(worker, 1, timeout=10)
    assert [f.part_id for f in again] == ["lot7"]
    worker.ack(again[0])
    assert _files(tmp_path) == {"lot7.png.done", "lot7-1.png.done"}
    assert collect(worker, 1, timeout=0.3) == []


def test_truncated_file_and_non_image_are_counted_named_and_kept(tmp_path, worker_for, caplog):
    caplog.set_level(logging.WARNING, logger="adfm.camera")
    png = encode(shaded_frame(90))
    (tmp_path / "cut.png").write_bytes(png[: len(png) // 2])
    (tmp_path / "notes.txt").write_text("shift report: all good\n" * 4)
    _drop(tmp_path, "good.png", 30)
    worker = worker_for(_config(tmp_path))
    frames = collect(worker, 1, timeout=10)
    assert [f.part_id for f in frames] == ["good"]
    assert wait_until(lambda: worker.status().errors == 2, timeout=10)
    assert _files(tmp_path) == {"good.png", "errors/cut.png", "errors/notes.txt"}  # moved, not deleted
    messages = " ".join(r.getMessage() for r in caplog.records)
    assert "cut.png: truncated or corrupt png" in messages
    assert "notes.txt: not an image" in messages
    assert (tmp_path / "errors" / "cut.png").read_bytes() == png[: len(png) // 2]
    assert worker.status().captured == 1


def test_partial_write_is_waited_out(tmp_path, worker_for):
    image = shaded_frame(120, index=3)
    data = encode(image)
    path = tmp_path / "slow.png"
    worker = worker_for(_config(tmp_path, corrupt_after_s=5.0))
    with path.open("wb") as f:
        f.write(data[: len(data) // 3])
        f.flush()
        time.sleep(0.3)  # the writer pauses longer than settle_s: the half file is tried and waited on
        f.write(data[len(data) // 3 :])
    frames = collect(worker, 1, timeout=10)
    assert len(frames) == 1 and worker.status().errors == 0
    assert np.array_equal(frames[0].image, image[:, :, ::-1])  # the whole image, as RGB


def test_temp_names_are_ignored_until_renamed(tmp_path, worker_for):
    worker = worker_for(_config(tmp_path))
    (tmp_path / "P9.png.tmp").write_bytes(encode(shaded_frame(10)))
    assert collect(worker, 1, timeout=0.4) == []
    (tmp_path / "P9.png.tmp").rename(tmp_path / "P9.png")
    assert [f.part_id for f in collect(worker, 1, timeout=10)] == ["P9"]
    assert worker.status().errors == 0


def test_full_queue_holds_files_instead_of_dropping_them(tmp_path, worker_for):
    for i in range(6):
        _drop(tmp_path, f"n{i}.png", 10 * i, mtime=time.time() - 60 + i)
    worker = worker_for(_config(tmp_path, queue_size=1))
    assert wait_until(lambda: worker.status().captured == 1, timeout=10)
    time.sleep(0.2)  # a slow consumer
    frames = collect(worker, 6, timeout=10)
    assert [f.part_id for f in frames] == [f"n{i}" for i in range(6)]
    assert worker.status().dropped == 0


def test_missing_folder_is_retried_until_it_appears(tmp_path, worker_for):
    folder = tmp_path / "share"
    worker = worker_for(_config(folder))
    assert wait_until(lambda: worker.status().errors >= 2, timeout=10)
    assert "does not exist" in worker.status().last_error and not worker.status().connected
    folder.mkdir()
    _drop(folder, "X1.png", 10)
    assert [f.part_id for f in collect(worker, 1, timeout=10)] == ["X1"]
    assert worker.status().connected


def test_failed_move_is_counted_and_the_part_not_redelivered(tmp_path, worker_for):
    (tmp_path / "blocker").write_text("a file where the done folder's parent should be")
    inbox = tmp_path / "in"
    inbox.mkdir()
    _drop(inbox, "Q1.png", 10)
    worker = worker_for(_config(inbox, done_dir=str(tmp_path / "blocker" / "done")))
    frame = collect(worker, 1, timeout=10)[0]
    worker.ack(frame)
    status = worker.status()
    assert status.errors == 1 and "Q1.png: journaled, but could not be moved" in status.last_error
    assert collect(worker, 1, timeout=0.4) == []
    assert _files(inbox) == {"Q1.png"}
    # Once the move can succeed (the folder is back, the blocker gone), a later scan finishes it.
    (tmp_path / "blocker").unlink()
    assert wait_until(lambda: _files(inbox) == set(), timeout=10)
    assert (tmp_path / "blocker" / "done" / "Q1.png").is_file()


def test_keep_files_touches_nothing(tmp_path):
    _drop(tmp_path, "K1.png", 10)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    config = _config(tmp_path, corrupt_after_s=0.05)
    source = open_source(config, keep_files=True)
    source.open()
    seen, errors = [], []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and (len(seen) < 1 or len(errors) < 1):
        try:
            frame = source.read()
        except FrameError as exc:
            errors.append(str(exc))
            continue
        if frame is not None:
            seen.append(frame)
            source.ack(frame)
    source.close()
    assert [f.part_id for f in seen] == ["K1"]
    assert len(errors) == 1 and "bad.png" in errors[0] and "left in place" in errors[0]
    assert _files(tmp_path) == {"K1.png", "bad.png"}


def test_a_part_carries_its_file_for_the_journal_unless_its_pixels_were_changed(tmp_path):
    import cv2

    for name in ("P1.png", "P2.jpg"):
        _drop(tmp_path, name, 90)
    plain = open_source(_config(tmp_path), keep_files=True)
    turned = open_source(CameraConfig(id="scan2", url=f"folder:{tmp_path}", rotate=90, folder=QUICK),
                         keep_files=True)
    for source, keeps in ((plain, True), (turned, False)):
        source.open()
        frames, deadline = [], time.monotonic() + 5
        while len(frames) < 2 and time.monotonic() < deadline:
            frame = source.read()
            if frame is not None:
                frames.append(frame)
        source.close()
        assert sorted(f.source_name for f in frames) == ["P1.png", "P2.jpg"]
        for frame in frames:
            data = (tmp_path / frame.source_name).read_bytes()
            if keeps:  # the bytes decode to exactly the frame's pixels
                assert frame.encoded == data
                decoded = cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR),
                                       cv2.COLOR_BGR2RGB)
                assert np.array_equal(decoded, frame.image)
            else:  # rotated pixels are not the file's: the journal must encode them
                assert frame.encoded is None


def test_only_files_every_reader_decodes_alike_are_storable_as_is():
    import cv2

    from adfm.camera.images import storable_as_is

    bgr = shaded_frame(70)
    gray = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    assert storable_as_is(encode(bgr, ".png")) == "png"
    assert storable_as_is(encode(gray, ".png")) == "png"
    assert storable_as_is(encode(bgr, ".jpg")) == "jpg"
    assert storable_as_is(encode(gray, ".jpg")) == "jpg"
    assert storable_as_is(encode(cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA), ".png")) is None  # alpha
    assert storable_as_is(encode(bgr.astype(np.uint16) * 257, ".png")) is None  # 16-bit
    assert storable_as_is(encode(bgr, ".bmp")) is None
    jpeg = encode(bgr, ".jpg")
    assert storable_as_is(jpeg[:-200]) is None  # truncated: no end marker
    exif = b"\xff\xe1" + (16).to_bytes(2, "big") + b"Exif\x00\x00" + b"\x00" * 8
    assert storable_as_is(jpeg[:2] + exif + jpeg[2:]) is None  # an orientation OpenCV would apply
    assert storable_as_is(b"\xff\xd8\xff\xda" + b"\x00" * 40 + b"\xff\xd9") is None  # no frame header
