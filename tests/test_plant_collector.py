"""Three real stations (`adfm-appliance run`, scripted model) → the real `adfm-plant collect` process
→ a real PostgreSQL: SIGKILLed and restarted five times, a journal replaced, a station restarted;
every result and every operator verdict is stored exactly once."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from PIL import Image

from adfm.plant.db import connect
from adfm.plant.stations import StationClient  # the bus client, through the plant's one door
from tests.appliance_fakes import FACTORY, frame, station_dict, write_script
from tests.plant_support import rollups_from_results

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
STATIONS = ("st-a", "st-b", "st-c")


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Station:
    """One `adfm-appliance run` process on a folder camera, on fixed loopback ports."""

    def __init__(self, root: Path, name: str) -> None:
        self.root, self.name = root, name
        self.drop = root / "drop"
        self.drop.mkdir(parents=True)
        self.publish, self.control = f"tcp://127.0.0.1:{_port()}", f"tcp://127.0.0.1:{_port()}"
        write_script(root / "script.json", ["yes", "no", "no"], cycle=True)
        cfg = station_dict(root, station=name, model={"backend": FACTORY},
                           cameras=[{"id": "cam0", "url": f"folder:{self.drop}", "folder": {"settle_s": 0.0}}],
                           bus={"publish": self.publish, "control": self.control, "status_interval_s": 0.3})
        (root / "station.yaml").write_text(yaml.safe_dump(cfg))
        self.fed = 0
        self.base = 0  # parts fed before the journal now in use was created
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        env = {**os.environ, "ADFM_FAKE_SCRIPT": str(self.root / "script.json"), "HF_HUB_OFFLINE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "adfm.appliance.cli", "run", "--config", str(self.root / "station.yaml")],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)
        self.proc.wait(30)

    def feed(self, n: int) -> None:
        for _ in range(n):
            Image.fromarray(frame(self.fed, size=(64, 48)).image).save(self.drop / f"p{self.fed:03d}.png")
            self.fed += 1

    def client(self) -> StationClient:
        return StationClient(self.publish, self.control, station=self.name, from_seq=1, timeout_s=3.0)

    def journal(self) -> tuple[str, list]:
        """(epoch, results) as the station's journal holds them now."""
        with self.client() as c:
            results = c.replay(1)
            return c.status().epoch, results

    def wait_done(self, n: int, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            assert self.proc is not None and self.proc.poll() is None, self.proc.stderr.read()
            try:
                with self.client() as c:
                    if c.status().last_seq >= n and not list(self.drop.glob("*.png")):
                        return
            except Exception:
                pass
            assert time.monotonic() < deadline, f"{self.name}: {n} parts not done"
            time.sleep(0.3)


def _collector(cfg: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "adfm.plant.cli", "collect", "--config", str(cfg)],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _stored(dsn: str) -> tuple[set, set, int, int]:
    with connect(dsn) as conn:
        keys = set(conn.execute("SELECT station, epoch, seq, revision FROM results"))
        verdicts = set(conn.execute("SELECT station, verdict_id FROM verdicts"))
        n_results = conn.execute("SELECT count(*) FROM results").fetchone()[0]
        n_verdicts = conn.execute("SELECT count(*) FROM verdicts").fetchone()[0]
    return keys, verdicts, n_results, n_verdicts


def _wait_stored(dsn: str, results: set, verdicts: set, collector: subprocess.Popen, timeout_s: float = 60):
    deadline = time.monotonic() + timeout_s
    while True:
        stored = _stored(dsn)
        if stored[0] >= results and stored[1] >= verdicts:
            return stored
        assert collector.poll() is None, collector.stderr.read()
        assert time.monotonic() < deadline, (
            f"missing results {sorted(results - stored[0])[:5]}, verdicts {verdicts - stored[1]}")
        time.sleep(0.3)


def test_three_stations_into_postgres_exactly_once_across_kills_restarts_and_a_new_journal(tmp_path, plant_db):
    stations = {name: Station(tmp_path / name, name) for name in STATIONS}
    plant = tmp_path / "plant.yaml"
    plant.write_text(yaml.safe_dump({
        "database": plant_db,
        "stations": [{"id": s.name, "line": "line-1" if s.name != "st-c" else "line-2", "publish": s.publish,
                      "control": s.control} for s in stations.values()],
        "collector": {"reconnect_s": 0.3, "timeout_s": 2.0, "verdict_lookback": 100},
        "view": {"auth": {"method": "none"}},
    }))
    expected_results: set = set()
    expected_verdicts: set = set()
    collector = None
    try:
        for s in stations.values():
            s.feed(6)
            s.start()
        collector = _collector(plant)
        for s in stations.values():
            s.wait_done(6)
        kills = 0
        sent = 0
        for wave in range(5):
            for s in stations.values():
                s.feed(4)
            time.sleep(0.2 + 0.15 * wave)  # killed at a different point of each wave
            os.kill(collector.pid, signal.SIGKILL)
            collector.wait()
            kills += 1
            # an operator decides on a flagged part while the collector is down
            s = stations[STATIONS[wave % 3]]
            with s.client() as c:
                flagged = [r for r in c.replay(1) if r.verdict == "fail" and r.operator is None]
                if flagged:
                    vid = f"v-{s.name}-{wave}"
                    c.send_verdict(flagged[0].seq, "false_alarm" if wave % 2 else "confirmed_defect",
                                   operator="anna", verdict_id=vid)
                    sent += 1
            if wave == 1:  # st-b restarted (SIGKILL) while parts wait in its folder
                stations["st-b"].stop(signal.SIGKILL)
                stations["st-b"].start()
            collector = _collector(plant)
            if wave == 2:  # st-c's journal replaced (a new epoch, seqs from 1 again) once collected:
                # results journaled and never collected are gone with a deleted journal
                c_st = stations["st-c"]
                c_st.wait_done(c_st.fed)
                epoch, results = c_st.journal()
                old = {(c_st.name, epoch, r.seq, r.revision) for r in results}
                old_verdicts = {(c_st.name, r.operator.verdict_id) for r in results if r.operator}
                _wait_stored(plant_db, old, old_verdicts, collector)
                expected_results |= old
                expected_verdicts |= old_verdicts
                c_st.stop()
                shutil.rmtree(c_st.root / "state")
                c_st.base = c_st.fed
                c_st.feed(3)
                c_st.start()
        assert kills == 5 and sent >= 3
        for s in stations.values():
            s.wait_done(s.fed - s.base)
        truth = {}
        for s in stations.values():
            epoch, results = s.journal()
            truth[s.name] = epoch
            expected_results |= {(s.name, epoch, r.seq, r.revision) for r in results}
            expected_verdicts |= {(s.name, r.operator.verdict_id) for r in results if r.operator}
        with stations["st-a"].client() as c:  # one more verdict while the collector runs: live on the bus
            flagged = [r for r in c.replay(1) if r.verdict == "fail" and r.operator is None]
            c.send_verdict(flagged[-1].seq, "confirmed_defect", operator="ben", verdict_id="v-live")
            expected_verdicts.add(("st-a", "v-live"))
        keys, verdicts, n_results, n_verdicts = _wait_stored(plant_db, expected_results, expected_verdicts, collector)
        assert keys == expected_results and n_results == len(expected_results)  # nothing extra, nothing twice
        assert verdicts == expected_verdicts and n_verdicts == len(expected_verdicts)
        assert len({e for (st, e, _, _) in keys if st == "st-c"}) == 2  # both of st-c's journals
        with connect(plant_db) as conn:
            cursors = dict(conn.execute("SELECT station, epoch FROM stations").fetchall())
        assert cursors == truth
        with connect(plant_db) as conn:  # the view's counts took each part once across the kills
            kept, recomputed = rollups_from_results(conn)
            unplaced = conn.execute("SELECT count(*) FROM verdicts WHERE captured_at IS NULL").fetchone()[0]
        assert unplaced == 0  # every verdict knows its part's time, model and line verdict
        assert kept == recomputed and sum(h[4] for h in kept[0]) == len({k[:3] for k in expected_results})
    finally:
        if collector is not None and collector.poll() is None:
            collector.send_signal(signal.SIGTERM)
            collector.wait(30)
        for s in stations.values():
            if s.proc is not None and s.proc.poll() is None:
                s.stop()
