"""The plant's one door to the stations: the appliance's bus client (results, replays, images).

Everything in adfm.plant that talks to a station goes through here, so the bus client's module
path is named once.
"""

from __future__ import annotations

from adfm.appliance.bus.client import (
    JournalReplaced,
    ShadowResult,
    StationClient,
    StationError,
    StationUnreachable,
)
from adfm.appliance.bus.keys import load_client_curve

from .config import PlantConfig, StationSection

__all__ = ["JournalReplaced", "ShadowResult", "StationClient", "StationError", "StationUnreachable", "client_for",
           "fetch_image"]


def client_for(station: StationSection, *, from_seq: int | None = 1, epoch: str | None = None,
               timeout_s: float = 5.0, retries: int = 3, page_size: int = 2000, shadow: bool = False) -> StationClient:
    """A bus client following `station` (CURVE keys from its config section when given)."""
    curve = None
    if station.curve is not None:
        curve = load_client_curve(station.curve.server_key, station.curve.client_secret)
    return StationClient(station.publish, station.control, station=station.id, from_seq=from_seq, curve=curve,
                         timeout_s=timeout_s, retries=retries, epoch=epoch, page_size=page_size, shadow=shadow)


def fetch_image(config: PlantConfig, station_id: str, seq: int, epoch: str, kind: str = "image",
                timeout_s: float = 3.0) -> tuple[bytes, str]:
    """A part's image from its station's journal: (bytes, media type). Raises StationError."""
    section = config.station(station_id)
    if section is None:
        raise StationError(f"station {station_id!r} is not in the plant config")
    client = client_for(section, timeout_s=timeout_s, retries=1)
    try:
        return client.fetch_image(seq, kind=kind, epoch=epoch)
    finally:
        client.close()
