"""Part images and gate heat maps for the views, loaded once each and kept for recent parts.

A live source may fetch a file over the network, so loading runs on a worker thread: a view asks
`get()`, shows "loading…" while it is None, and is refreshed when `load()` finishes. Decoding goes
through the journal's own image decoder.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Literal

from PIL import Image

from adfm.schema import InspectionResult

from ..journal.store import JournalError, decode_image

Kind = Literal["image", "gate_map"]
#: an image, or None and why it cannot be shown
Loaded = tuple[Image.Image | None, str]


def _key(result: InspectionResult, kind: Kind) -> tuple:
    return (result.station, result.epoch, result.seq, result.image_path, result.gate_map_path, kind)


def load_file(result: InspectionResult, kind: Kind, path: Path | None) -> Loaded:
    """The part's image (or heat map) from `path`, or None and why it cannot be shown."""
    rel = result.image_path if kind == "image" else result.gate_map_path
    if not rel:
        if kind == "gate_map":
            return None, ("no gate heat map stored for this part" if result.gate_score is not None
                          else "no gate heat map: the gate did not score this part")
        pruned = any("pruned" in p for p in result.problems)
        return None, "image pruned by the retention policy" if pruned else "no image stored for this part"
    if path is None:
        return None, ("image not available here: run adfm-review on the line PC, or pass --images "
                      "with the station's journal directory")
    try:
        return Image.fromarray(decode_image(path)), ""
    except JournalError as exc:
        return None, str(exc)


class PartImages:
    """A bounded cache of loaded images by part and kind; thread-safe."""

    def __init__(self, locate: Callable[[InspectionResult, Kind], Path | None], max_items: int = 48) -> None:
        self._locate = locate
        self._max = max_items
        self._items: OrderedDict[tuple, Loaded] = OrderedDict()
        self._pending: set[tuple] = set()
        self._lock = threading.Lock()

    def get(self, result: InspectionResult, kind: Kind = "image") -> Loaded | None:
        """The loaded image (or why none), None while it has not been loaded."""
        key = _key(result, kind)
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def claim(self, result: InspectionResult, kind: Kind = "image") -> bool:
        """True when the caller should load it now (not loaded and nobody loading it)."""
        key = _key(result, kind)
        with self._lock:
            if key in self._items or key in self._pending:
                return False
            self._pending.add(key)
            return True

    def load(self, result: InspectionResult, kind: Kind = "image") -> Loaded:
        """Load (blocking) and keep it; for a worker thread."""
        key = _key(result, kind)
        try:
            try:
                path = self._locate(result, kind)
            except OSError as exc:
                loaded: Loaded = (None, f"image not available: {exc}")
            else:
                loaded = load_file(result, kind, path)
            with self._lock:
                self._items[key] = loaded
                while len(self._items) > self._max:
                    self._items.popitem(last=False)
            return loaded
        finally:
            with self._lock:
                self._pending.discard(key)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
