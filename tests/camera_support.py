"""Loopback stream servers, recordings and waiting helpers for the camera tests (127.0.0.1 only).

- an HTTP multipart MJPEG server, run as a child process so a test can kill it mid-stream
  (`python tests/camera_support.py mjpeg PORT SHADE`);
- a minimal RTSP relay: ffmpeg publishes to it (ANNOUNCE/RECORD over TCP), players PLAY from it,
  and the RTP packets pass through unchanged — a stand-in for an IP camera's RTSP server;
- helpers that write a small video and image files, and that wait for frames or conditions.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np

FRAME_SIZE = (64, 48)  # width, height: small frames keep the tests fast


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return
        time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def wait_until(predicate: Callable[[], bool], timeout: float = 10.0, every: float = 0.02) -> bool:
    """Poll `predicate` until it holds or `timeout` passes; returns whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(every)
    return predicate()


def collect(worker: Any, count: int, timeout: float = 10.0) -> list[Any]:
    """Up to `count` frames from a CameraWorker, giving up after `timeout` seconds."""
    frames: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(frames) < count and time.monotonic() < deadline:
        frame = worker.get(timeout=0.05)
        if frame is not None:
            frames.append(frame)
    return frames


def shaded_frame(shade: int, index: int = 0) -> np.ndarray:
    """A BGR test frame: flat `shade` with a bright marker column that moves with `index`."""
    w, h = FRAME_SIZE
    image = np.full((h, w, 3), shade, np.uint8)
    image[:, (index * 4) % w] = 255
    return image


def write_video(path: Path, frames: int, fps: float = 20.0) -> Path:
    """An MJPEG AVI whose frame i has shade 10·i (OpenCV writes it without FFmpeg encoders)."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, FRAME_SIZE)
    if not writer.isOpened():
        raise RuntimeError(f"cannot write {path}")
    for i in range(frames):
        writer.write(shaded_frame(10 * i, i))
    writer.release()
    return path


def encode(image: np.ndarray, ext: str = ".png") -> bytes:
    ok, buf = cv2.imencode(ext, image)
    assert ok
    return buf.tobytes()


# ---- HTTP MJPEG ---------------------------------------------------------------------------------


class MjpegServer:
    """A child process serving multipart/x-mixed-replace JPEG frames of one shade at ~25 fps."""

    def __init__(self, port: int, shade: int, stall_after: int = 0):
        self.port = port
        self.shade = shade
        self.stall_after = stall_after  # > 0: each connection gets this many frames, then silence
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/stream.mjpg"

    def start(self) -> MjpegServer:
        self.proc = subprocess.Popen(
            [sys.executable, __file__, "mjpeg", str(self.port), str(self.shade), str(self.stall_after)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        return self

    def kill(self) -> None:
        """SIGKILL: the connection drops mid-stream, as when a camera loses power."""
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(5)
            self.proc = None

    def __enter__(self) -> MjpegServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.kill()


def _serve_mjpeg(port: int, shade: int, stall_after: int) -> None:
    import http.server
    import socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            index = 0
            with contextlib.suppress(OSError):
                while True:
                    if stall_after and index >= stall_after:
                        time.sleep(0.1)  # connection kept open, nothing sent: a stalled camera
                        continue
                    jpeg = encode(shaded_frame(shade, index), ".jpg")
                    head = f"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: {len(jpeg)}\r\n\r\n"
                    self.wfile.write(head.encode() + jpeg + b"\r\n")
                    index += 1
                    time.sleep(0.04)

        def log_message(self, *args: object) -> None:
            pass

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True
        allow_reuse_address = True

    Server(("127.0.0.1", port), Handler).serve_forever()


# ---- RTSP -----------------------------------------------------------------------------------------


def has_ffmpeg() -> bool:
    return shutil.which("ffmpeg") is not None


class RtspRelay:
    """Just enough RTSP (RFC 2326, RTP interleaved over TCP) to relay one publisher to players."""

    def __init__(self) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self.sdp: bytes | None = None
        self.recording = threading.Event()
        self._players: list[tuple[socket.socket, threading.Lock]] = []
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def close(self) -> None:
        self._closed = True
        self._listener.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        send_lock = threading.Lock()
        reader = conn.makefile("rb")
        publisher = False
        try:
            while True:
                first = reader.read(1)
                if not first:
                    return
                if first == b"$":  # interleaved RTP/RTCP packet
                    header = reader.read(3)
                    payload = reader.read(int.from_bytes(header[1:3], "big"))
                    if publisher:
                        self._forward(first + header + payload)
                    continue
                request = first + reader.readline()
                headers: dict[str, str] = {}
                while (line := reader.readline().strip()) != b"":
                    key, _, value = line.decode().partition(":")
                    headers[key.strip().lower()] = value.strip()
                body = reader.read(int(headers.get("content-length", "0")))
                method = request.split()[0].decode()
                publisher = publisher or method == "ANNOUNCE"
                with send_lock:
                    conn.sendall(self._reply(method, headers, body))
                if method == "PLAY":
                    with self._lock:
                        self._players.append((conn, send_lock))
                elif method == "RECORD":
                    self.recording.set()
                elif method == "TEARDOWN":
                    return
        except OSError:
            return
        finally:
            with self._lock:
                self._players = [(c, lk) for c, lk in self._players if c is not conn]
            conn.close()

    def _reply(self, method: str, headers: dict[str, str], body: bytes) -> bytes:
        extra: list[str] = []
        payload = b""
        status = "200 OK"
        if method == "OPTIONS":
            extra.append("Public: OPTIONS, DESCRIBE, ANNOUNCE, SETUP, PLAY, RECORD, TEARDOWN, GET_PARAMETER")
        elif method == "ANNOUNCE":
            self.sdp = body
        elif method == "DESCRIBE":
            if self.sdp is None:
                status = "404 Not Found"
            else:
                payload = self.sdp
                extra += ["Content-Type: application/sdp", f"Content-Base: {self.url}/"]
        elif method == "SETUP":
            transport = headers.get("transport", "")
            if "interleaved" not in transport:
                status = "461 Unsupported Transport"
            extra += [f"Transport: {transport}", "Session: 4711"]
        elif method in ("PLAY", "RECORD"):
            extra += ["Session: 4711", "Range: npt=0.000-"]
        head = [f"RTSP/1.0 {status}", f"CSeq: {headers.get('cseq', '0')}", *extra]
        head.append(f"Content-Length: {len(payload)}")
        return ("\r\n".join(head) + "\r\n\r\n").encode() + payload

    def _forward(self, packet: bytes) -> None:
        with self._lock:
            players = list(self._players)
        for conn, send_lock in players:
            try:
                with send_lock:
                    conn.sendall(packet)
            except OSError:
                with self._lock:
                    self._players = [(c, lk) for c, lk in self._players if c is not conn]


RTSP_COLOR_RGB = (60, 120, 180)  # the published picture: one flat colour, so RGB order is checkable


def start_rtsp_publisher(url: str, fps: int = 15) -> subprocess.Popen[bytes]:
    """ffmpeg publishing a flat RTSP_COLOR_RGB 64×48 H.264 stream to `url` over RTSP/TCP.

    H.264 as most IP cameras send it; a keyframe every 5 frames so a player joins quickly.
    """
    w, h = FRAME_SIZE
    r, g, b = RTSP_COLOR_RGB
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-re", "-f", "lavfi",
         "-i", f"color=c=0x{r:02x}{g:02x}{b:02x}:size={w}x{h}:rate={fps}", "-an",
         "-c:v", "libx264", "-preset", "ultrafast", "-tune", "zerolatency", "-g", "5",
         "-pix_fmt", "yuv420p", "-f", "rtsp", "-rtsp_transport", "tcp", url],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "mjpeg":
        _serve_mjpeg(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(f"usage: {sys.argv[0]} mjpeg PORT SHADE STALL_AFTER")
