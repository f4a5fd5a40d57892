"""The web pages sales heads and trainers use: weak stages, the review queue, calls, coaching.

Server-rendered HTML (no build step) over the same report functions as the CLI, plus a JSON API.
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.templating import Jinja2Templates
from sqlalchemy import select

from callqa import report as rp
from config.settings import Settings
from models.db import session_factory
from models.events import STEPS
from models.tables import Call, FlagRow, ObjectionRow, SegmentRow
from pipeline.store import current_reviews, record_review, review_of

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
TEMPLATES.env.filters["pct"] = lambda v: "–" if v is None else f"{round(v * 100)}%"
TEMPLATES.env.filters["mmss"] = rp._mmss


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    s = settings or Settings.from_env()
    sessions = session_factory(s.db_url)
    app = FastAPI(title="callqa", docs_url="/api/docs", openapi_url="/api/openapi.json")

    def scope(team: Optional[str], since: Optional[str], until: Optional[str]) -> rp.Scope:
        try:
            return rp.Scope.parse(team, since, until, s.tz)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None

    def page(request: Request, name: str, **ctx) -> HTMLResponse:
        q = dict(request.query_params)
        return TEMPLATES.TemplateResponse(request, name, {"steps": STEPS, "short": rp.SHORT, "q": q,
                                                          "min_calls": s.min_calls_for_rank, **ctx})

    @app.get("/", response_class=HTMLResponse)
    def managers(request: Request, team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            rows = rp.manager_rows(db, s.min_calls_for_rank, scope(team, since, until), s.min_step_calls)
        return page(request, "managers.html", rows=rows)

    @app.get("/managers/{manager_id}", response_class=HTMLResponse)
    def manager(request: Request, manager_id: str, since: str = "", until: str = ""):
        sc = scope("", since, until)
        with sessions() as db:
            rows = [r for r in rp.manager_rows(db, s.min_calls_for_rank, sc, s.min_step_calls) if r["manager_id"] == manager_id]
            if not rows:
                raise HTTPException(404, f"no calls stored for manager {manager_id}")
            calls = db.scalars(sc.calls(select(Call).where(Call.manager_id == manager_id))
                               .order_by(Call.started_at.desc()).limit(200)).all()
            flagged = [f for f in rp.flagged_rows(db, sc) if f["manager_id"] == manager_id]
        return page(request, "manager.html", m=rows[0], calls=calls, flagged=flagged)

    @app.get("/flagged", response_class=HTMLResponse)
    def flagged(request: Request, team: str = "", since: str = "", until: str = "", all: int = 0):
        with sessions() as db:
            rows = rp.flagged_rows(db, scope(team, since, until), include_reviewed=bool(all))
            rules = rp.flag_rule_rows(db, scope(team, since, until))
        return page(request, "flagged.html", rows=rows, rules=rules)

    @app.post("/calls/{call_id}/reviews")
    def review(call_id: str, flag: str = Form(...), verdict: str = Form(...), comment: str = Form(""),
               reviewer: str = Form(""), at: str = Form(""), next: str = Form("/flagged")):
        try:
            with sessions.begin() as db:
                record_review(db, call_id, flag, verdict, comment or None, reviewer or None,
                              at=float(at) if at else None)
        except (LookupError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        if not next.startswith("/"):
            next = "/flagged"  # only local redirects
        return RedirectResponse(next, status_code=303)

    @app.get("/calls/{call_id}", response_class=HTMLResponse)
    def call(request: Request, call_id: str):
        with sessions() as db:
            c = db.get(Call, call_id)
            if c is None:
                raise HTTPException(404, f"no call {call_id}")
            segs = db.scalars(select(SegmentRow).where(SegmentRow.call_id == call_id).order_by(SegmentRow.idx)).all()
            flags = db.scalars(select(FlagRow).where(FlagRow.call_id == call_id).order_by(FlagRow.idx)).all()
            objs = db.scalars(select(ObjectionRow).where(ObjectionRow.call_id == call_id)
                              .order_by(ObjectionRow.idx)).all()
            steps = (c.event or {}).get("steps", {})
            current = current_reviews(db, [call_id])
            reviews = {f.idx: review_of(current, f) for f in flags}
        return page(request, "call.html", c=c, segs=segs, flags=flags, objs=objs, call_steps=steps,
                    reviews=reviews, audio=_local_audio(c.recording_url, s) is not None)

    @app.get("/calls/{call_id}/audio")
    def audio(call_id: str):
        with sessions() as db:
            c = db.get(Call, call_id)
        path = _local_audio(c.recording_url, s) if c else None
        if path is None:
            raise HTTPException(404, "no local recording for this call")
        return FileResponse(path)  # Starlette answers Range requests, so players can seek

    @app.get("/coaching", response_class=HTMLResponse)
    def coaching(request: Request, team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            rows = rp.coaching_rows(db, scope(team, since, until))
        return page(request, "coaching.html", rows=rows)

    @app.get("/coaching.csv")
    def coaching_csv(team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            body = rp.coaching_csv(rp.coaching_rows(db, scope(team, since, until)))
        return PlainTextResponse(body, media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="coaching.csv"'})

    @app.get("/api/managers")
    def api_managers(team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            return JSONResponse({"managers": rp.manager_rows(db, s.min_calls_for_rank, scope(team, since, until), s.min_step_calls)})

    @app.get("/api/flagged")
    def api_flagged(team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            return JSONResponse({"flagged": rp.flagged_rows(db, scope(team, since, until))})

    @app.get("/api/coaching")
    def api_coaching(team: str = "", since: str = "", until: str = ""):
        with sessions() as db:
            return JSONResponse({"coaching": rp.coaching_rows(db, scope(team, since, until))})

    @app.get("/healthz")
    def healthz():
        return {"status": "ok"}

    return app


def _local_audio(url: str, s: Settings) -> Optional[Path]:
    """The file behind a file:// recording, only inside the allowed directories."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme != "file":
        return None
    path = Path(urllib.parse.unquote(parsed.path)).resolve()
    if not path.is_file() or not any(path.is_relative_to(d.resolve()) for d in s.allowed_dirs):
        return None
    return path
