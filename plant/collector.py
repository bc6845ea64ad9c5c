"""`adfm-plant collect`: follow every configured station's bus into PostgreSQL.

One thread per station, each with its own bus client and database connection. A station is
resumed from its stored cursor (journal epoch, first seq not stored) less `verdict_lookback`
results: the bus announces operator verdicts live only, so results replayed again bring the
verdicts given while the collector was away (their results are already stored and are dropped by
the key). A station that is down or a database that went away is retried every `reconnect_s`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from adfm.schema import InspectionResult, OperatorVerdict

from .config import PlantConfig, StationSection
from .db import connect, require_current
from .stations import JournalReplaced, ShadowResult, StationError, client_for
from .store import Store

log = logging.getLogger("adfm.plant.collector")


@dataclass
class StationStats:
    results: int = 0
    verdicts: int = 0
    shadow: int = 0
    images: int = 0
    epoch_changes: int = 0
    errors: list[str] = field(default_factory=list)


class StationFollower(threading.Thread):
    """Collects one station until `stop` is set."""

    def __init__(self, config: PlantConfig, station: StationSection, stop: threading.Event) -> None:
        super().__init__(name=f"collect-{station.id}", daemon=True)
        self.config = config
        self.section = station
        self.stop_event = stop
        self.stats = StationStats()

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                self._follow()
            except Exception as exc:  # a station down, a database restart: report, wait, resume from the store
                msg = f"{self.section.id}: {type(exc).__name__}: {exc}"
                self.stats.errors = [*self.stats.errors[-9:], msg]
                log.warning("%s; retrying in %.0f s", msg, self.config.collector.reconnect_s)
                self.stop_event.wait(self.config.collector.reconnect_s)

    def _follow(self) -> None:
        s, opts = self.section, self.config.collector
        with connect(self.config.database) as conn:
            store = Store(conn)
            store.register(s.id, s.line, s.publish, s.control)
            cursor = store.cursor(s.id)
            from_seq = max(1, cursor.next_seq - opts.verdict_lookback)
            client = client_for(s, from_seq=from_seq, epoch=cursor.epoch or None, timeout_s=opts.timeout_s,
                                shadow=True)
            self._shadow_next: tuple[str, int] | None = None  # (epoch, first shadow row id not stored)
            try:
                client.connect()
                log.info("%s: following from seq %d (epoch %s)", s.id, from_seq, cursor.epoch or "new")
                self._shadow(store, client, [])  # shadow results journaled while this collector was away
                while not self.stop_event.is_set():
                    events = client.poll(0.5)
                    if not events:
                        continue
                    results = [e for e in events if isinstance(e, InspectionResult)]
                    verdicts = [e for e in events if isinstance(e, OperatorVerdict)]
                    self.stats.epoch_changes += sum(isinstance(e, JournalReplaced) for e in events)
                    written = store.write(s.id, results, verdicts, client.epoch, client.next_seq)
                    self.stats.results += written.results
                    self.stats.verdicts += written.verdicts
                    shadows = [e for e in events if isinstance(e, ShadowResult)]
                    if shadows:
                        self._shadow(store, client, shadows)
                    if opts.copy_flagged_images:
                        self._copy_images(store, client, results)
            finally:
                client.close()

    def _shadow(self, store: Store, client, live: list[ShadowResult]) -> None:
        """Store shadow results gap-free: live ones in row order, a gap (or a start) filled by replay."""
        epoch = client.epoch or (live[0].result.epoch if live else None) or client.status().epoch
        if not epoch:
            return
        if self._shadow_next is None or self._shadow_next[0] != epoch:
            self._shadow_next = (epoch, store.shadow_cursor(self.section.id, epoch))
        next_id = self._shadow_next[1]
        live = [e for e in live if e.result.epoch in ("", epoch)]
        if live and self._contiguous(live, next_id):
            self.stats.shadow += store.write_shadow(self.section.id, [(e.row_id, e.result) for e in live])
            next_id = max(next_id, max(e.row_id for e in live) + 1)
        else:  # the start, or a gap before these: fetch what the station journaled from next_id on
            while True:
                reply = client.replay_shadow(next_id)
                if reply.epoch and reply.epoch != epoch:
                    break  # the journal was replaced: the next poll starts over in its epoch
                if reply.entries:
                    self.stats.shadow += store.write_shadow(self.section.id,
                                                            [(e.row_id, e.result) for e in reply.entries])
                    next_id = reply.entries[-1].row_id + 1
                if not reply.more:
                    break
        self._shadow_next = (epoch, next_id)

    @staticmethod
    def _contiguous(live: list[ShadowResult], next_id: int) -> bool:
        """The live results continue the stored ones without a hole."""
        ids = sorted({e.row_id for e in live if e.row_id >= next_id})
        return ids == list(range(next_id, next_id + len(ids)))

    def _copy_images(self, store: Store, client, results: list[InspectionResult]) -> None:
        for r in results:
            if r.verdict == "pass" or not r.image_path or store.has_image(r.station, r.epoch, r.seq):
                continue
            try:
                data, media_type = client.fetch_image(r.seq, epoch=r.epoch)
            except StationError as exc:  # pruned, or the journal moved on: the view says so
                log.info("%s seq %d: image not copied: %s", r.station, r.seq, exc)
                continue
            store.put_image(r.station, r.epoch, r.seq, "image", media_type, data)
            self.stats.images += 1


def check_database(config: PlantConfig) -> None:
    """Refuse to start against a database that is unreachable or not migrated."""
    with connect(config.database) as conn:
        require_current(conn)


def run_collector(config: PlantConfig, stop: threading.Event) -> list[StationFollower]:
    """Follow every station until `stop` is set; returns the followers (for their stats)."""
    check_database(config)
    followers = [StationFollower(config, s, stop) for s in config.stations]
    for f in followers:
        f.start()
    stop.wait()
    for f in followers:
        f.join(10)
    return followers
