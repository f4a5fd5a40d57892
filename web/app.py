"""The web pages sales heads and trainers use: weak stages, the review queue, calls, coaching.

Server-rendered HTML (no build step) over the same report functions as the CLI, plus a JSON API.
"""
from __future__ import annotations

import urllib.parse
from pathlib import Path
from typing import Optional

from fastapi import FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from pipeline import queries as rp
from config.settings import Settings
from models.db import session_factory
from models.events import STEPS
from models.events import CallTagged
from models.tables import Call, FlagRow, ObjectionRow, SegmentRow
from pipeline.store import current_reviews, record_review, review_of
from pipeline.tagging import LiveRules, RulesError
from pipeline.tagging.explain import explain_stored
from pipeline.tagging.rules import rules_state
from pipeline.tagging.tagger import CONTEXT_RULES

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
TEMPLATES.env.filters["pct"] = lambda v: "–" if v is None else f"{round(v * 100)}%"
TEMPLATES.env.filters["mmss"] = rp._mmss
TEMPLATES.env.filters["plural"] = rp.plural


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    s = settings or Settings.from_env()
    sessions = session_factory(s.db_url)
    # Swagger UI's assets are served from here (the swagger-ui-bundle-v2 package), not a CDN, so the
    # API docs work on a network without internet access; ReDoc would need a CDN, so it is off.
    app = FastAPI(title="callqa", docs_url=None, redoc_url=None, openapi_url="/api/openapi.json")
    try:
        from swagger_ui_bundle import swagger_ui_path
        app.mount("/static/swagger", StaticFiles(directory=str(swagger_ui_path)), name="swagger")
    except ImportError:
        swagger_ui_path = None
    live: list[LiveRules] = []

    def current_rules():
        """The rules a trainer is editing, re-read when a file changes; None (and why) when they do not
        validate (the call page still shows the call, the rules page says what is wrong)."""
        if not live:
            try:
                live.append(LiveRules(Path(s.rules_dir) if s.rules_dir else None, interval_s=2.0))
            except RulesError as e:
                return None, str(e)
        rules = live[0].get()
        return (rules, None) if live[0].error is None else (None, live[0].error)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # people get a page with the way back; programs (the JSON API) get JSON
        if request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        return TEMPLATES.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail},
                                          status_code=exc.status_code)

    @app.get("/api/docs", include_in_schema=False)
    def api_docs():
        if swagger_ui_path is None:
            return HTMLResponse('<p>Interactive docs need the swagger-ui-bundle-v2 package (pip install -e .); '
                                'the API description is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>')
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="callqa API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

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
        sc = scope(team, since, until)
        with sessions() as db:
            rows = rp.manager_rows(db, s.min_calls_for_rank, sc, s.min_step_calls)
            empty = "" if rows else rp.empty_reason(db, sc)
        return page(request, "managers.html", rows=rows, empty=empty)

    @app.get("/managers/{manager_id}", response_class=HTMLResponse)
    def manager(request: Request, manager_id: str, since: str = "", until: str = ""):
        sc = scope("", since, until)
        with sessions() as db:
            rows = [r for r in rp.manager_rows(db, s.min_calls_for_rank, sc, s.min_step_calls) if r["manager_id"] == manager_id]
            if not rows:
                raise HTTPException(404, f"No calls are stored for manager {manager_id!r}"
                                         + (f" in {rp.scope_text(sc)}" if rp.scope_text(sc) else "")
                                         + ". The Managers page lists the managers with calls.")
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
                raise HTTPException(404, f"No call {call_id!r} is stored. The Managers page and the review queue "
                                         "link to the stored calls.")
            segs = db.scalars(select(SegmentRow).where(SegmentRow.call_id == call_id).order_by(SegmentRow.idx)).all()
            flags = db.scalars(select(FlagRow).where(FlagRow.call_id == call_id).order_by(FlagRow.idx)).all()
            objs = db.scalars(select(ObjectionRow).where(ObjectionRow.call_id == call_id)
                              .order_by(ObjectionRow.idx)).all()
            steps = (c.event or {}).get("steps", {})
            current = current_reviews(db, [call_id])
            reviews = {f.idx: review_of(current, f) for f in flags}
        rules, rules_problem = current_rules()
        why, explain_note = {}, None
        if rules is None:
            explain_note = f"The current rules do not validate, so no explanation: {rules_problem}"
        elif c.event and c.event.get("segments") and c.event.get("utterance_tags") is not None:
            try:
                ex = explain_stored(CallTagged.model_validate(c.event), rules)
                why = {e.segment: e for e in ex.segments}
            except ValueError as e:
                explain_note = f"This call cannot be explained: {e}"
        return page(request, "call.html", c=c, segs=segs, flags=flags, objs=objs, call_steps=steps,
                    reviews=reviews, audio=_local_audio(c.recording_url, s) is not None, why=why,
                    explain_note=explain_note, rules_source=str(rules.source) if rules else "")

    @app.get("/rules", response_class=HTMLResponse)
    def rules_page(request: Request):
        state = rules_state(Path(s.rules_dir) if s.rules_dir else None)
        return page(request, "rules.html", state=state, context_rules=CONTEXT_RULES)

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
