"""`adfm-plant view`: the plant view, a small read-only web app over the store.

Pages are rendered on the server (Jinja2, inline SVG charts); every route is a GET, and the
database session is read-only (`default_transaction_read_only`), so nothing here can change the
store or command a station. Authentication is the config's `view.auth` (basic against a users
file, or none on a loopback address only). Images stay on the stations: a part's image comes from
the store when the collector copied it, else from its station over the bus, on demand.
"""

from __future__ import annotations

import queue
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from importlib import resources
from typing import Annotated, get_args
from urllib.parse import urlencode

import jinja2
import psycopg
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse, Response

from adfm.schema import OperatorDecision

from . import charts, queries
from .auth import BasicAuth
from .config import PlantConfig
from .db import connect, require_current
from .stations import StationError, fetch_image

DECIDED = ("", "undecided", *get_args(OperatorDecision))


class Pool:
    """A few read-only connections reused across requests (the view is small; no pool library)."""

    def __init__(self, dsn: str, size: int = 4) -> None:
        self.dsn = dsn
        self.free: queue.LifoQueue[psycopg.Connection] = queue.LifoQueue(maxsize=size)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection]:
        try:
            conn = self.free.get_nowait()
        except queue.Empty:
            conn = connect(self.dsn, options="-c default_transaction_read_only=on -c statement_timeout=30000")
        try:
            yield conn
        except psycopg.Error:
            conn.close()
            raise
        if conn.closed or conn.broken:
            return
        try:
            self.free.put_nowait(conn)
        except queue.Full:
            conn.close()


def _templates() -> jinja2.Environment:
    folder = resources.files("adfm.plant.templates")

    def load(name: str) -> str | None:
        entry = folder / name
        return entry.read_text(encoding="utf-8") if entry.is_file() else None

    env = jinja2.Environment(loader=jinja2.FunctionLoader(load), autoescape=True, undefined=jinja2.StrictUndefined)
    env.filters["pct"] = lambda v: "–" if v is None else f"{100 * v:.1f} %"
    env.filters["when"] = lambda t: "" if t is None else f"{t:%Y-%m-%d %H:%M}"
    return env


def _date(name: str, text: str | None, default: datetime) -> datetime:
    if not text:
        return default
    try:
        t = datetime.fromisoformat(text)
    except ValueError:
        raise HTTPException(400, f"{name}: {text!r} is not an ISO date or time (e.g. 2026-03-01)") from None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _choice(name: str, value: str, allowed: tuple[str, ...] | list[str]) -> str:
    if value not in allowed:
        raise HTTPException(400, f"{name}: {value!r} is not one of {', '.join(a or '(any)' for a in allowed)}")
    return value


def _user(request: Request) -> str:
    """The signed-in user ('' without authentication); 401 asks the browser for an account."""
    auth: BasicAuth | None = request.app.state.auth
    if auth is None:
        return ""
    name = auth.check(request.headers.get("authorization"))
    if name is None:
        raise HTTPException(401, "sign in with a plant view account", {"WWW-Authenticate": 'Basic realm="adfm"'})
    return name


def _filters(request: Request) -> queries.Filters:
    """The page's time range and station/line/recipe/model filters; 400 names a bad one."""
    q = request.query_params
    start, end = queries.default_range(request.app.state.now())
    until = _date("until", q.get("until"), end)
    since = _date("since", q.get("since"), until - (end - start))
    if since >= until:
        raise HTTPException(400, f"since ({since:%Y-%m-%d %H:%M}) must be before until ({until:%Y-%m-%d %H:%M})")
    return queries.Filters(since, until, *(q.get(k, "") for k in ("station", "line", "recipe", "model")))


User = Annotated[str, Depends(_user)]
Selected = Annotated[queries.Filters, Depends(_filters)]


def create_app(config: PlantConfig, now=lambda: datetime.now(UTC)) -> FastAPI:
    """The view's app (uvicorn serves it; tests drive it directly). `now` fixes the default range."""
    with connect(config.database) as conn:
        require_current(conn)
    pool = Pool(config.database)
    env = _templates()
    users = config.view.auth.users_file
    auth = BasicAuth(users) if config.view.auth.method == "basic" and users is not None else None
    app = FastAPI(title="adfm plant view", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.auth, app.state.now, app.state.pool = auth, now, pool

    def page(request: Request, template: str, f: queries.Filters, who: str, **ctx) -> HTMLResponse:
        with pool.connection() as conn:
            menus = queries.choices(conn)
        keep = {k: v for k, v in request.query_params.items() if k not in ("before",)}
        html = env.get_template(template).render(
            request=request, f=f, menus=menus, user=who, path=request.url.path, query=urlencode(keep),
            since_value=f"{f.since:%Y-%m-%dT%H:%M}", until_value=f"{f.until:%Y-%m-%dT%H:%M}", **ctx)
        return HTMLResponse(html)

    @app.get("/healthz")
    def healthz() -> dict:
        with pool.connection() as conn:
            conn.execute("SELECT 1")
        return {"ok": True}

    @app.get("/", response_class=HTMLResponse)
    def overview(request: Request, who: User, f: Selected):
        q = request.query_params
        by = _choice("by", q.get("by", "station"), list(queries.GROUPS))
        bucket = _choice("bucket", q.get("bucket", "day"), queries.BUCKETS)
        with pool.connection() as conn:
            rows = queries.yield_over_time(conn, f, by, bucket)
            decisions = queries.line_decisions(conn, f)
        series: dict[str, list] = {}
        totals: dict[str, dict] = {}
        for r in rows:
            series.setdefault(r["g"] or "", []).append((r["t"], r["flagged"] / r["parts"]))
            t = totals.setdefault(r["g"] or "", {"group": r["g"] or "", "parts": 0, "passed": 0, "flagged": 0})
            for k in ("parts", "passed", "flagged"):
                t[k] += r[k]
        chart = charts.line_chart(series, y_label="flagged rate", y_max=None)
        return page(request, "overview.jinja", f, who, by=by, bucket=bucket, chart=chart,
                    totals=sorted(totals.values(), key=lambda t: t["group"]), decisions=decisions)

    @app.get("/gallery", response_class=HTMLResponse)
    def gallery(request: Request, who: User, f: Selected):
        q = request.query_params
        decided = _choice("decided", q.get("decided", ""), DECIDED)
        before = _date("before", q.get("before"), f.until) if q.get("before") else None
        with pool.connection() as conn:
            parts = queries.flagged_parts(conn, f, decided=decided, before=before)
        for p in parts:
            p["overlay"] = charts.boxes_overlay(p["boxes"], p["image_width"], p["image_height"])
        more = ""
        if len(parts) == 24:
            more = urlencode({**dict(q.items()), "before": parts[-1]["captured_at"].isoformat()})
        return page(request, "gallery.jinja", f, who, parts=parts, decided=decided, decided_choices=DECIDED,
                    more=more)

    @app.get("/agreement", response_class=HTMLResponse)
    def agreement(request: Request, who: User, f: Selected):
        with pool.connection() as conn:
            rows = queries.agreement(conn, f)
        for r in rows:
            decided = r["confirmed"] + r["false_alarms"]
            r["agree"] = r["confirmed"] / decided if decided else None
        return page(request, "agreement.jinja", f, who, rows=rows)

    @app.get("/drift", response_class=HTMLResponse)
    def drift(request: Request, who: User, f: Selected):
        if "since" not in request.query_params:  # weeks need a longer default range than a day's yield
            f = queries.Filters(f.until - timedelta(weeks=8), f.until, f.station, f.line, f.recipe, f.model)
        with pool.connection() as conn:
            hist = queries.gate_drift(conn, f)
        width = (hist.hi - hist.lo) / queries.HIST_BINS
        for r in hist.rows:
            r["svg"] = charts.histogram(r["counts"], mark=min(int((r["p95"] - hist.lo) / width) - 1,
                                                              queries.HIST_BINS - 1))
        return page(request, "drift.jinja", f, who, hist=hist)

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request, who: User, f: Selected):
        """Candidates in shadow: agreement with the active model and the operators, and the parts
        where they disagree side by side (both answers, both boxes, the operators' verdict)."""
        from . import shadow_compare

        with pool.connection() as conn:
            found = shadow_compare.candidates(conn, f)
            chosen = request.query_params.get("candidate") or (found[0]["model_id"] if found else "")
            report = shadow_compare.compare(conn, f, chosen) if chosen else None
        figures, pairs = {}, []
        if report is not None:
            figures = report.to_json(max_disagreements=0)
            for p in report.disagreements[-48:][::-1]:
                c, a = p.candidate, p.active
                pairs.append({"part": p, "station": c.station, "epoch": c.epoch,
                              "candidate_overlay": charts.boxes_overlay([b.model_dump() for b in c.boxes],
                                                                        c.image_width, c.image_height),
                              "active_overlay": charts.boxes_overlay([b.model_dump() for b in a.boxes],
                                                                     a.image_width, a.image_height)})
        return page(request, "models.jinja", f, who, found=found, chosen=chosen, figures=figures, pairs=pairs)

    @app.get("/image/{station}/{epoch}/{seq}")
    def image(station: str, epoch: str, seq: int, who: User) -> Response:
        epoch = "" if epoch == "-" else epoch  # a station without journal epochs
        with pool.connection() as conn:
            row = conn.execute("SELECT media_type, data FROM images WHERE station = %s AND epoch = %s AND seq = %s "
                               "AND kind = 'image'", (station, epoch, seq)).fetchone()
        if row is not None:
            return Response(bytes(row[1]), media_type=row[0], headers={"Cache-Control": "private, max-age=86400"})
        try:
            data, media_type = fetch_image(config, station, seq, epoch, timeout_s=config.view.image_timeout_s)
        except StationError as exc:
            raise HTTPException(404, f"image of {station} seq {seq}: {exc}") from None
        return Response(data, media_type=media_type, headers={"Cache-Control": "private, max-age=86400"})

    return app


def serve(config: PlantConfig) -> None:
    """Run the view with uvicorn on the configured address until SIGTERM."""
    import uvicorn

    uvicorn.run(create_app(config), host=config.view.host, port=config.view.port, log_level="info",
                access_log=False)
