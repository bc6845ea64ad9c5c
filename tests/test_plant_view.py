"""The plant view over a real PostgreSQL, served by uvicorn on a loopback port: pages, filters,
authentication, read-only, images fetched from a real station's bus on demand."""

from __future__ import annotations

import base64
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime, timedelta

import pytest
import yaml

from adfm.plant.auth import set_password
from adfm.plant.config import load_config
from adfm.plant.db import connect
from adfm.plant.store import Store
from adfm.schema import OperatorVerdict
from tests.plant_support import synthetic_results
from tests.review_support import LoopbackStation

NOW = datetime(2026, 3, 1, tzinfo=UTC)


class Served:
    """The view in a uvicorn server thread on a free loopback port."""

    def __init__(self, app) -> None:
        import uvicorn

        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "the view did not start"
            time.sleep(0.05)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    def close(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def get(url: str, auth: tuple[str, str] | None = ("quality", "s3cret-pass"), method: str = "GET"):
    req = urllib.request.Request(url, method=method)
    if auth:
        req.add_header("Authorization", "Basic " + base64.b64encode(":".join(auth).encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=20) as resp:
            return resp.status, resp.read(), resp.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), exc.headers


@pytest.fixture(scope="module")
def plant(tmp_path_factory, pg_cluster):
    """A store holding four weeks of three made-up stations plus one real loopback station whose
    flagged parts (with images on the station) were collected; the view served with basic auth."""
    from adfm.plant.collector import StationFollower
    from adfm.plant.db import migrate

    root = tmp_path_factory.mktemp("plant")
    dsn = pg_cluster.create_database("view")
    with connect(dsn) as conn:
        migrate(conn)
        store = Store(conn)
        for s, line in (("st1", "line-1"), ("st2", "line-1"), ("st3", "line-2")):
            store.register(s, line, "tcp://127.0.0.1:1", "tcp://127.0.0.1:2")
        history = synthetic_results(6000)
        flagged = [r for r in history if r.verdict != "pass"]
        judged = [OperatorVerdict(station=r.station, seq=r.seq, epoch=r.epoch, part_id=r.part_id, operator="anna",
                                  decision="false_alarm" if i % 6 == 0 else "confirmed_defect",
                                  verdict_id=f"h{r.station}-{r.seq}", at=r.captured_at + timedelta(minutes=3))
                  for i, r in enumerate(flagged) if i % 2 == 0]
        store.write("st1", history, judged, None, None)
    station = LoopbackStation(root / "real", station="live")
    for verdict in ("fail", "pass", "fail", "review", "fail"):
        station.part(verdict)
    users = root / "users"
    set_password(users, "quality", "s3cret-pass")
    cfg = root / "plant.yaml"
    cfg.write_text(yaml.safe_dump({
        "database": dsn, "view": {"auth": {"method": "basic", "users_file": "users"}},
        "stations": [{"id": "live", "line": "line-2", "publish": station.publish_ep, "control": station.control_ep}],
        "collector": {"reconnect_s": 0.2}}))
    config = load_config(cfg)
    with _client(station) as c:
        c.send_verdict(1, "false_alarm", operator="anna", note="glare on the rim", verdict_id="va1")
    stop = threading.Event()
    follower = StationFollower(config, config.stations[0], stop)
    follower.start()
    deadline = time.monotonic() + 20
    while follower.stats.results < 5 or follower.stats.verdicts < 1:
        assert time.monotonic() < deadline, follower.stats
        time.sleep(0.1)
    stop.set()
    follower.join(10)
    from adfm.plant.view import create_app

    served = Served(create_app(config, now=lambda: NOW))
    yield served, config, station
    served.close()
    station.close()


def _client(station):
    from adfm.plant.stations import StationClient

    return StationClient(station.publish_ep, station.control_ep, station=station.station, timeout_s=3.0)


def test_pages_need_a_valid_account(plant):
    served, _, _ = plant
    status, _, headers = get(served.url + "/", auth=None)
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert get(served.url + "/", auth=("quality", "wrong-password"))[0] == 401
    assert get(served.url + "/", auth=("nobody", "s3cret-pass"))[0] == 401
    assert get(served.url + "/healthz", auth=None)[0] == 200


def test_the_view_is_read_only(plant):
    served, _, _ = plant
    for path in ("/", "/gallery", "/image/live/x/1"):
        assert get(served.url + path, method="POST")[0] == 405
    pool = served.server.config.app.state.pool  # the view's own database sessions
    with pool.connection() as conn, pytest.raises(Exception, match="read-only transaction"):
        conn.execute("DELETE FROM results")


def test_overview_counts_yield_per_group_and_filters(plant):
    served, _, _ = plant
    status, body, _ = get(served.url + "/?since=2026-02-01&until=2026-03-01&by=line")
    html = body.decode()
    assert status == 200 and "<polyline" in html and 'data-series="line-1"' in html
    status, body, _ = get(served.url + "/?since=2026-02-01&until=2026-03-01&station=st3")
    assert status == 200 and 'data-series="st3"' in body.decode() and 'data-series="st1"' not in body.decode()
    status, body, _ = get(served.url + "/?since=yesterday")
    assert status == 400 and b"since: 'yesterday' is not an ISO date" in body
    status, body, _ = get(served.url + "/?by=colour")
    assert status == 400 and b"by: 'colour' is not one of" in body


def test_gallery_shows_boxes_reasoning_verdicts_and_images_from_the_station(plant):
    served, _, station = plant
    status, body, _ = get(served.url + "/gallery?since=2026-01-01&until=2100-01-01&station=live")
    html = body.decode()
    assert status == 200 and html.count('class="part"') == 4  # 3 fails + 1 review; the pass is not flagged
    assert html.count('class="box"') == 3 and "false_alarm by anna: glare on the rim" in html
    epoch = station.journal.epoch
    status, png, headers = get(f"{served.url}/image/live/{epoch}/1")
    assert status == 200 and headers["Content-Type"] == "image/png" and png.startswith(b"\x89PNG")
    status, body, _ = get(f"{served.url}/image/live/{epoch}/99")
    assert status == 404 and b"seq 99" in body


def test_agreement_and_drift_pages(plant):
    served, _, _ = plant
    status, body, _ = get(served.url + "/agreement?since=2026-01-01&until=2100-01-01&station=live")
    html = body.decode()
    # 4 flagged, 1 judged: 0 confirmed, 1 false alarm → 0 % agreement
    assert status == 200 and "<td>4</td><td>1</td><td>0</td><td>1</td><td>0.0 %</td>" in html.replace("\n", "")
    status, body, _ = get(served.url + "/drift?since=2026-02-01&until=2026-03-01")
    html = body.decode()
    assert status == 200 and html.count('class="bin mark"') >= 12  # 3 stations × 4+ weeks
    status, body, _ = get(served.url + "/agreement?since=2026-02-01&until=2026-03-01&station=st2")
    cells = [c.split("</td>")[0] for c in body.decode().replace("\n", "").split("<td>")[1:]]
    flagged, judged, confirmed, false_alarms = (int(c) for c in cells[1:5])  # st2, washer-v1@q4
    assert judged == confirmed + false_alarms and 0 < false_alarms < confirmed < judged < flagged



# ---- a real browser: Debian's chromium driven headless through its chromium-driver ---------------


def _chromium_missing() -> str | None:
    import shutil

    for name in ("chromium", "chromedriver"):
        if shutil.which(name) is None:
            return f"{name} not found (apt-get install chromium chromium-driver)"
    return None


@pytest.fixture(scope="module")
def browser():
    why = _chromium_missing()
    if why:
        pytest.skip(why)
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service as DriverService

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,1000", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=DriverService(executable_path=shutil.which("chromedriver")))
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


def test_the_pages_in_a_real_browser(plant, browser, tmp_path):
    """Every page loads signed in, the gallery draws the model's boxes over images that loaded from
    the station, and a filter narrows what a page shows. Screenshots go to ADFM_PLANT_SCREENSHOTS."""
    import os
    from pathlib import Path

    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    served, _, _ = plant
    signed_in = served.url.replace("http://", "http://quality:s3cret-pass@")
    shots = Path(os.environ.get("ADFM_PLANT_SCREENSHOTS") or tmp_path)
    shots.mkdir(parents=True, exist_ok=True)
    wide = "since=2026-02-01T00:00&until=2026-03-01T00:00"

    browser.get(f"{signed_in}/?{wide}&by=line")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Yield and flagged rate"
    assert len(browser.find_elements(By.CSS_SELECTOR, "svg.chart polyline")) == 2  # line-1 (st1, st2) and line-2 (st3)
    rows = browser.find_elements(By.CSS_SELECTOR, "#yield tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in rows[1:]] == ["line-1", "line-2"]
    browser.save_screenshot(str(shots / "plant-yield.png"))

    # a filter: station st3 only, chosen in the menu and applied
    Select(browser.find_element(By.ID, "filter-station")).select_by_value("st3")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, 10).until(lambda d: "station=st3" in d.current_url)
    decisions = browser.find_elements(By.CSS_SELECTOR, "#decisions tr")
    assert [r.find_elements(By.TAG_NAME, "td")[0].text for r in decisions[1:]] == ["st3"]

    browser.get(f"{signed_in}/gallery?since=2026-01-01T00:00&until=2100-01-01T00:00&station=live")
    parts = browser.find_elements(By.CSS_SELECTOR, ".part")
    assert len(parts) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, ".part svg.overlay rect.box")) == 3
    WebDriverWait(browser, 15).until(lambda d: all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in d.find_elements(By.CSS_SELECTOR, ".part img")))
    box = browser.find_element(By.CSS_SELECTOR, ".part svg.overlay rect.box").rect
    assert box["width"] > 0 and box["height"] > 0  # drawn, over the image
    Select(browser.find_element(By.ID, "filter-decided")).select_by_value("false_alarm")
    browser.find_element(By.ID, "apply").click()
    WebDriverWait(browser, 10).until(lambda d: "decided=false_alarm" in d.current_url)
    assert len(browser.find_elements(By.CSS_SELECTOR, ".part")) == 1
    browser.get(f"{signed_in}/gallery?since=2026-01-01T00:00&until=2100-01-01T00:00&station=live")
    WebDriverWait(browser, 15).until(lambda d: all(
        d.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", img)
        for img in d.find_elements(By.CSS_SELECTOR, ".part img")))
    browser.save_screenshot(str(shots / "plant-gallery.png"))

    browser.get(f"{signed_in}/agreement?since=2026-01-01T00:00&until=2100-01-01T00:00")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#agreement tr")) > 2
    browser.save_screenshot(str(shots / "plant-agreement.png"))

    browser.get(f"{signed_in}/drift?{wide}")
    assert len(browser.find_elements(By.CSS_SELECTOR, "#drift svg.hist")) >= 12
    browser.save_screenshot(str(shots / "plant-drift.png"))
    assert all((shots / f"plant-{p}.png").stat().st_size > 5000 for p in ("yield", "gallery", "agreement", "drift"))
