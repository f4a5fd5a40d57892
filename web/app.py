"""The web pages sales heads, trainers and managers log into: weak stages, the review queue, calls,
coaching, charts; and a JSON API for BI tools (session cookie or API token).

Server-rendered HTML (no build step) over the same queries as the CLI (pipeline/queries.py). Every page,
API route and recording asks who is asking (``Depends(me)``) and shows only what their role and teams
allow (pipeline/accounts.py: Access); a call outside them is "not found", not "forbidden".
"""
from __future__ import annotations

import hmac
import secrets
import urllib.parse
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Optional

from fastapi import Depends, FastAPI, Form, HTTPException, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, PlainTextResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from starlette.exceptions import HTTPException as StarletteHTTPException

from config.settings import Settings, business_tz
from models.db import session_factory
from models.events import STEPS, CallTagged
from models.tables import Call, Correction, FlagRow, ObjectionRow, SegmentRow, User
from pipeline import accounts, funnel
from pipeline import digest as dg
from pipeline.corrections import CorrectionError, current_corrections, record_correction
from pipeline import queries as qr
from pipeline.accounts import Access
from pipeline.store import current_reviews, record_review, review_of
from pipeline.tagging import LiveRules, RulesError
from pipeline.tagging.explain import explain_stored
from pipeline.tagging.rules import rules_state
from pipeline.tagging.schema import OBJECTION_KINDS
from pipeline.tagging.tagger import CONTEXT_RULES
from web import api_models as am
from web import charts
from web.i18n import Labels, pick_language

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).resolve().parent / "templates"))
TEMPLATES.env.filters["pct"] = lambda v: "–" if v is None else f"{round(v * 100)}%"
TEMPLATES.env.filters["mmss"] = qr._mmss
TEMPLATES.env.filters["plural"] = qr.plural

SESSION_COOKIE = "callqa_session"
LOGIN_COOKIE = "callqa_login"  # the login form's CSRF token (there is no session yet to hold it)
NOT_FOUND_CALL = "No call {!r} is stored. The Managers page and the review queue link to the stored calls."


class NotLoggedIn(Exception):
    pass


@dataclass
class Me:
    """Who is asking: the user, what they may see, their words and time zone, and (in a browser) the
    session's CSRF token every form must send back."""

    user: User
    access: Access
    labels: Labels
    tz: tzinfo
    csrf: Optional[str] = None   # None: an API token (no forms)
    sid: Optional[str] = None

    def need(self, what: str) -> None:
        if not self.access.can(what):
            raise HTTPException(403, f"Your role ({self.user.role}) does not include this page. An admin can change "
                                     "it: callqa users add / list.")

    def dt(self, value: Optional[datetime], fmt: str = "%Y-%m-%d %H:%M") -> str:
        return "–" if value is None else value.astimezone(self.tz).strftime(fmt)


def local_path(target: Optional[str], default: str = "/") -> str:
    """``target`` if it is a path on this site, else ``default``: never another host (//host, /\\host,
    https://host, a control character a browser would drop)."""
    if (not target or not target.startswith("/") or target.startswith("//") or "\\" in target
            or any(ord(ch) < 0x20 or ord(ch) == 0x7f for ch in target)):
        return default
    parts = urllib.parse.urlsplit(target)
    return default if parts.scheme or parts.netloc else target


def create_app(settings: Optional[Settings] = None) -> FastAPI:
    s = settings or Settings.from_env()
    sessions = session_factory(s.db_url)
    key = accounts.signing_key(s.secret_key, s.home_dir)
    # Swagger UI's assets are served from here (the swagger-ui-bundle-v2 package), not a CDN, so the
    # API docs work on a network without internet access; ReDoc would need a CDN, so it is off.
    app = FastAPI(title="callqa", docs_url=None, redoc_url=None, openapi_url=None,
                  description="Call-quality figures for BI tools. Authenticate with `Authorization: Bearer <token>` "
                              "(`callqa users token NAME`); each answer holds only what that user may see.")
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

    # ---- who is asking ---------------------------------------------------------------------------

    def me(request: Request) -> Me:
        auth = request.headers.get("authorization", "")
        with sessions.begin() as db:
            user, csrf, sid = None, None, None
            if auth.lower().startswith("bearer ") and request.url.path.startswith("/api/"):
                user = accounts.token_user(db, auth[7:].strip())
                if user is None:
                    raise HTTPException(401, "This API token is not valid (revoked, or its user is disabled): "
                                             "ask an admin for a new one (callqa users token NAME).",
                                        headers={"WWW-Authenticate": "Bearer"})
            else:
                sid = accounts.unsign(key, request.cookies.get(SESSION_COOKIE, ""))
                found = accounts.session_user(db, sid) if sid else None
                if found is None:
                    raise NotLoggedIn()
                user, row = found
                csrf = row.csrf
            db.expunge(user)
        try:
            tz = business_tz(user.timezone or s.timezone)
        except ValueError:
            tz = s.tz
        return Me(user, Access.of(user), Labels(pick_language(user.language, request.headers.get("accept-language"))),
                  tz, csrf, sid)

    def check_csrf(who: Me, token: str) -> None:
        if who.csrf is None or not hmac.compare_digest(token.encode(), who.csrf.encode()):
            raise HTTPException(403, "This form has expired or did not come from callqa's own pages: reload the page "
                                     "and send it again.")

    @app.exception_handler(NotLoggedIn)
    async def not_logged_in(request: Request, exc: NotLoggedIn):
        if request.url.path.startswith("/api/"):
            return JSONResponse({"detail": "Log in first, or send an API token: Authorization: Bearer <token> "
                                           "(callqa users token NAME)."}, status_code=401,
                                headers={"WWW-Authenticate": "Bearer"})
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        return RedirectResponse("/login?" + urllib.parse.urlencode({"next": target}), status_code=303)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        # people get a page with the way back; programs (the JSON API) get JSON
        if request.url.path.startswith("/api/"):
            return await http_exception_handler(request, exc)
        labels = Labels(pick_language(None, request.headers.get("accept-language")))
        return TEMPLATES.TemplateResponse(request, "error.html", {"status": exc.status_code, "detail": exc.detail,
                                                                  "L": labels, "me": None},
                                          status_code=exc.status_code, headers=getattr(exc, "headers", None))

    def page(request: Request, who: Me, name: str, **ctx) -> HTMLResponse:
        return TEMPLATES.TemplateResponse(request, name, {
            "steps": STEPS, "q": dict(request.query_params), "min_calls": s.min_calls_for_rank, "me": who,
            "L": who.labels, "can": who.access.can, **ctx})

    def scope(who: Me, db, team: Optional[str] = "", since: Optional[str] = "", until: Optional[str] = "") -> qr.Scope:
        """The calls a request covers: the filters asked for, within the teams the user may see."""
        try:
            sc = qr.Scope.parse(team, since, until, who.tz)
        except ValueError as e:
            raise HTTPException(400, str(e)) from None
        return qr.Scope(sc.team_id, sc.since, sc.until, sc.tz, teams=who.access.stats_teams(db))

    def visible_call(db, who: Me, call_id: str) -> Call:
        """The call, if this user may see it; otherwise the same 404 as a call that does not exist."""
        c = db.get(Call, call_id)
        if c is None or not who.access.sees_call(c):
            raise HTTPException(404, NOT_FOUND_CALL.format(call_id))
        return c

    def own(who: Me, rows: list[dict]) -> list[dict]:
        return [r for r in rows if who.access.sees_manager(r["manager_id"])]

    # ---- logging in and out ----------------------------------------------------------------------

    def secure(request: Request) -> bool:
        return s.cookie_secure or request.url.scheme == "https"

    @app.get("/login", response_class=HTMLResponse, include_in_schema=False)
    def login_form(request: Request, next: str = "/", error: str = ""):
        token = secrets.token_urlsafe(32)
        labels = Labels(pick_language(None, request.headers.get("accept-language")))
        resp = TEMPLATES.TemplateResponse(request, "login.html", {"L": labels, "me": None, "csrf": token,
                                                                  "next": local_path(next), "error": error},
                                          status_code=401 if error else 200)
        resp.set_cookie(LOGIN_COOKIE, token, httponly=True, samesite="strict", secure=secure(request), path="/login")
        return resp

    @app.post("/login", include_in_schema=False)
    def login(request: Request, username: str = Form(""), password: str = Form(""), csrf_token: str = Form(""),
              next: str = Form("/")):
        expected = request.cookies.get(LOGIN_COOKIE, "")
        if not expected or not hmac.compare_digest(csrf_token.encode(), expected.encode()):
            raise HTTPException(403, "The login form has expired: open /login again and log in.")
        address = request.client.host if request.client else "unknown"
        labels = Labels(pick_language(None, request.headers.get("accept-language")))
        try:
            with sessions.begin() as db:
                user = accounts.login(db, username.strip(), password, address, max_failures=s.login_max_failures,
                                      lock_s=s.login_lock_s)
                sid = accounts.start_session(db, user, s.session_hours)[0] if user else None
        except accounts.LockedOut as e:
            raise HTTPException(429, f"Too many wrong passwords for this user or from this address: try again in "
                                     f"{max(1, e.retry_after_s // 60)} min, or ask an admin to reset the password "
                                     "(callqa users passwd NAME).",
                                headers={"Retry-After": str(e.retry_after_s)}) from None
        if sid is None:
            return login_form(request, next, labels.t("Wrong user name or password."))
        resp = RedirectResponse(local_path(next), status_code=303)
        resp.set_cookie(SESSION_COOKIE, accounts.sign(key, sid), httponly=True, samesite="lax", secure=secure(request),
                        max_age=int(s.session_hours * 3600), path="/")
        resp.delete_cookie(LOGIN_COOKIE, path="/login")
        return resp

    @app.post("/logout", include_in_schema=False)
    def logout(who: Me = Depends(me), csrf_token: str = Form("")):
        check_csrf(who, csrf_token)
        with sessions.begin() as db:
            accounts.end_session(db, who.sid)
            accounts.audit(db, db.get(User, who.user.id), "logout")
        resp = RedirectResponse("/login", status_code=303)
        resp.delete_cookie(SESSION_COOKIE, path="/")
        return resp

    @app.post("/account", include_in_schema=False)
    def account(who: Me = Depends(me), csrf_token: str = Form(""), language: str = Form(""), next: str = Form("/")):
        check_csrf(who, csrf_token)
        with sessions.begin() as db:
            db.get(User, who.user.id).language = language if language in ("ru", "en") else None
        return RedirectResponse(local_path(next), status_code=303)

    # ---- pages -----------------------------------------------------------------------------------

    @app.get("/api/docs", include_in_schema=False)
    def api_docs(who: Me = Depends(me)):
        if swagger_ui_path is None:
            return HTMLResponse('<p>Interactive docs need the swagger-ui-bundle-v2 package (pip install -e .); '
                                'the API description is at <a href="/api/openapi.json">/api/openapi.json</a>.</p>')
        return get_swagger_ui_html(openapi_url="/api/openapi.json", title="callqa API",
                                   swagger_js_url="/static/swagger/swagger-ui-bundle.js",
                                   swagger_css_url="/static/swagger/swagger-ui.css",
                                   swagger_favicon_url="/static/swagger/favicon-32x32.png")

    @app.get("/api/openapi.json", include_in_schema=False)
    def openapi(who: Me = Depends(me)):
        return JSONResponse(app.openapi())

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def managers(request: Request, team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        who.need("managers")
        with sessions() as db:
            sc = scope(who, db, team, since, until)
            rows = own(who, qr.manager_rows(db, s.min_calls_for_rank, sc, s.min_step_calls))
            empty = "" if rows else qr.empty_reason(db, sc)
            funnel = qr.step_funnel(db, sc) if who.access.manager_id is None else None
        chart = charts.funnel(funnel, who.labels.step, who.labels.t("Step funnel of the team")) \
            if funnel and funnel["calls"] else ""
        return page(request, who, "managers.html", rows=rows, empty=empty, funnel_chart=chart)

    @app.get("/managers/{manager_id}", response_class=HTMLResponse, include_in_schema=False)
    def manager(request: Request, manager_id: str, since: str = "", until: str = "", who: Me = Depends(me)):
        with sessions() as db:
            sc = scope(who, db, "", since, until)
            rows = [r for r in own(who, qr.manager_rows(db, s.min_calls_for_rank, sc, s.min_step_calls))
                    if r["manager_id"] == manager_id]
            if not rows:
                raise HTTPException(404, f"No calls are stored for manager {manager_id!r}"
                                         + (f" in {qr.scope_text(sc)}" if qr.scope_text(sc) else "")
                                         + ". The Managers page lists the managers with calls.")
            calls = db.scalars(sc.calls(select(Call).where(Call.manager_id == manager_id))
                               .order_by(Call.started_at.desc()).limit(200)).all()
            flagged = [f for f in qr.flagged_rows(db, sc) if f["manager_id"] == manager_id]
            trend = qr.weekly_trend(db, sc, manager_id, s.min_calls_for_rank)
        # on the calls listed: steps resting only on the learned tagger's unsure turns (left out of the
        # statistics) of all steps found, and its turns under the probability threshold of all it tagged
        found = [r for c in calls for r in ((c.event or {}).get("steps") or {}).values() if r.get("present")]
        model_tags = [u for c in calls for u in (c.event or {}).get("utterance_tags") or [] if u.get("prob") is not None]
        uncertain = (sum(bool(r.get("uncertain")) for r in found), len(found),
                     sum(bool(u.get("uncertain")) for u in model_tags), len(model_tags))
        L = who.labels
        return page(request, who, "manager.html", m=rows[0], calls=calls, flagged=flagged, uncertain=uncertain,
                    steps_chart=charts.steps_vs_team(rows[0]["steps"], L.step, L.t("Steps against the team"),
                                                     L.t("this manager"), L.t("team")),
                    trend_chart=charts.weekly_trend(trend, list(STEPS), L.step, L.t("Weekly trend")))

    @app.get("/flagged", response_class=HTMLResponse, include_in_schema=False)
    def flagged(request: Request, team: str = "", since: str = "", until: str = "", all: int = 0,
                who: Me = Depends(me)):
        who.need("flagged")
        with sessions() as db:
            sc = scope(who, db, team, since, until)
            rows = qr.flagged_rows(db, sc, include_reviewed=bool(all))
            rules = qr.flag_rule_rows(db, sc)
        return page(request, who, "flagged.html", rows=rows, rules=rules)

    @app.post("/calls/{call_id}/reviews", include_in_schema=False)
    def review(call_id: str, flag: str = Form(...), verdict: str = Form(...), comment: str = Form(""),
               at: str = Form(""), next: str = Form("/flagged"), csrf_token: str = Form(""), who: Me = Depends(me)):
        check_csrf(who, csrf_token)
        try:
            with sessions.begin() as db:
                visible_call(db, who, call_id)
                who.need("review")
                rv = record_review(db, call_id, flag, verdict, comment or None, who.user.username,
                                   at=float(at) if at else None)
                accounts.audit(db, db.get(User, who.user.id), "review", call_id, flag=flag, at=rv.flag_at,
                               verdict=verdict, comment=comment or None, review_id=rv.id)
        except (LookupError, ValueError) as e:
            raise HTTPException(400, str(e)) from None
        return RedirectResponse(local_path(next, "/flagged"), status_code=303)

    @app.post("/calls/{call_id}/corrections", include_in_schema=False)
    def correct(call_id: str, segment: int = Form(...), field: str = Form(...), value: str = Form(""),
                next: str = Form(""), csrf_token: str = Form(""), who: Me = Depends(me)):
        check_csrf(who, csrf_token)
        back = f"/calls/{urllib.parse.quote(call_id)}"
        try:
            with sessions.begin() as db:
                visible_call(db, who, call_id)
                who.need("correct")
                row = record_correction(db, call_id, segment, field, value or None, who.user.username)
                accounts.audit(db, db.get(User, who.user.id), "correction", call_id, segment=segment, field=field,
                               value=row.value, previous=row.previous, correction_id=row.id)
        except CorrectionError as e:
            raise HTTPException(400, str(e)) from None
        return RedirectResponse(local_path(next, back) + f"#seg-{segment}", status_code=303)

    @app.get("/calls/{call_id}", response_class=HTMLResponse, include_in_schema=False)
    def call(request: Request, call_id: str, who: Me = Depends(me)):
        with sessions() as db:
            c = visible_call(db, who, call_id)
            segs = db.scalars(select(SegmentRow).where(SegmentRow.call_id == call_id).order_by(SegmentRow.idx)).all()
            flags = db.scalars(select(FlagRow).where(FlagRow.call_id == call_id).order_by(FlagRow.idx)).all()
            objs = db.scalars(select(ObjectionRow).where(ObjectionRow.call_id == call_id)
                              .order_by(ObjectionRow.idx)).all()
            steps = (c.event or {}).get("steps", {})
            current = current_reviews(db, [call_id])
            reviews = {f.idx: review_of(current, f) for f in flags}
            fixes: dict[tuple[int, str], Correction] = {
                (x.segment, x.field): x for x in current_corrections(db, [call_id]).get(call_id, [])}
        obj_segments = [o.get("segment") for o in (c.event or {}).get("objections") or []]
        # the learned tagger's view of each turn, where it tagged the call (None from the rules)
        model = {u["segment"]: u for u in (c.event or {}).get("utterance_tags") or [] if u.get("prob") is not None}
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
        return page(request, who, "call.html", c=c, segs=segs, flags=flags, objs=objs, call_steps=steps,
                    reviews=reviews, audio=_local_audio(c.recording_url, s) is not None, why=why, model=model,
                    explain_note=explain_note, rules_source=str(rules.source) if rules else "",
                    fixes=fixes, obj_segments=obj_segments, kinds=OBJECTION_KINDS)

    @app.get("/rules", response_class=HTMLResponse, include_in_schema=False)
    def rules_page(request: Request, who: Me = Depends(me)):
        who.need("rules")
        state = rules_state(Path(s.rules_dir) if s.rules_dir else None)
        return page(request, who, "rules.html", state=state, context_rules=CONTEXT_RULES)

    @app.get("/calls/{call_id}/audio", include_in_schema=False)
    def audio(call_id: str, who: Me = Depends(me)):
        with sessions() as db:
            c = visible_call(db, who, call_id)
        path = _local_audio(c.recording_url, s)
        if path is None:
            raise HTTPException(404, "This call's recording is not in the recordings directories "
                                     "(CALLQA_RECORDINGS_DIR), so it cannot be played here.")
        # Starlette answers Range requests (206, suffix and multiple ranges), so every player can seek
        return FileResponse(path, headers={"Cache-Control": "private, no-store"})

    @app.get("/coaching", response_class=HTMLResponse, include_in_schema=False)
    def coaching(request: Request, team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        who.need("coaching")
        with sessions() as db:
            rows = own(who, qr.coaching_rows(db, scope(who, db, team, since, until)))
        return page(request, who, "coaching.html", rows=rows)

    @app.get("/coaching.csv", include_in_schema=False)
    def coaching_csv(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        who.need("coaching")
        with sessions() as db:
            body = qr.coaching_csv(own(who, qr.coaching_rows(db, scope(who, db, team, since, until))))
        return PlainTextResponse(body, media_type="text/csv",
                                 headers={"Content-Disposition": 'attachment; filename="coaching.csv"'})

    # ---- JSON API --------------------------------------------------------------------------------

    errors = {401: {"model": am.Problem, "description": "no session and no valid API token"},
              400: {"model": am.Problem, "description": "a filter that is not a date"}}

    @app.get("/api/managers", response_model=am.Managers, responses=errors)
    def api_managers(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        """Weak stage and per-step figures per manager (only the managers this user may see)."""
        with sessions() as db:
            return {"managers": own(who, qr.manager_rows(db, s.min_calls_for_rank, scope(who, db, team, since, until),
                                                         s.min_step_calls))}

    @app.get("/api/flagged", response_model=am.Flagged, responses=errors)
    def api_flagged(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        """Every flag of the calls this user may see, with its current verdict."""
        with sessions() as db:
            return {"flagged": own(who, qr.flagged_rows(db, scope(who, db, team, since, until)))}

    @app.get("/api/coaching", response_model=am.Coaching, responses=errors)
    def api_coaching(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        """Managers by objection-handling shortfall, with the moments to coach on."""
        with sessions() as db:
            return {"coaching": own(who, qr.coaching_rows(db, scope(who, db, team, since, until)))}

    @app.get("/api/funnel", response_model=am.Funnel, responses=errors)
    def api_funnel(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        """CRM leads per manager and team (created in the dates asked): hot leads called in time, activity per
        lead, conversion to won deals, revenue (a manager sees only their own leads)."""
        who.need("managers")
        with sessions() as db:
            return {"funnel": funnel.funnel_rows(db, scope(who, db, team, since, until), s.hot_lead_minutes,
                                                 manager_id=who.access.manager_id)}

    @app.get("/api/step-impact", response_model=am.StepImpact, responses=errors)
    def api_step_impact(team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        """Per step: conversion of the closed leads whose calls did it well against those whose calls did not,
        with counts, a 90% interval and a verdict (too few leads, unclear, costs deals), team-wide and per
        manager."""
        who.need("managers")
        with sessions() as db:
            return {"step_impact": funnel.step_impact(db, scope(who, db, team, since, until), s.min_leads,
                                                      manager_id=who.access.manager_id)}

    @app.get("/funnel", response_class=HTMLResponse, include_in_schema=False)
    def funnel_page(request: Request, team: str = "", since: str = "", until: str = "", who: Me = Depends(me)):
        who.need("managers")
        with sessions() as db:
            sc = scope(who, db, team, since, until)
            data = funnel.funnel_rows(db, sc, s.hot_lead_minutes, manager_id=who.access.manager_id)
            impact = funnel.step_impact(db, sc, s.min_leads, manager_id=who.access.manager_id)
        L = who.labels
        total = data["total"]
        conv = {m["manager_name"] or m["manager_id"] or "–": {"score": m["conversion"], "team_score": total["conversion"]}
                for m in data["managers"]}
        hot = {m["manager_name"] or m["manager_id"] or "–": {"score": m["hot_in_time_share"],
                                                              "team_score": total["hot_in_time_share"]}
               for m in data["managers"] if m["hot_due"]}
        steps = {r["step"]: {"score": r["conversion_well"], "team_score": r["conversion_not_well"]}
                 for r in impact["team"]["steps"]}
        charts_html = [charts.steps_vs_team(hot, str, L.t("Hot leads called in time"), L.t("manager"), L.t("all"))
                       if hot else "",
                       charts.steps_vs_team(conv, str, L.t("Lead to deal conversion"), L.t("manager"), L.t("all"))
                       if conv else "",
                       charts.steps_vs_team(steps, L.step, L.t("Conversion by step done well"), L.t("done well"),
                                            L.t("not well")) if impact["team"]["closed_leads"] else ""]
        return page(request, who, "funnel.html", data=data, impact=impact, charts=charts_html)

    @app.get("/digest", response_class=HTMLResponse, include_in_schema=False)
    def digest_page(request: Request, team: str = "", since: str = "yesterday", who: Me = Depends(me)):
        """What `callqa digest` mails, for this user: their teams (a manager: their own rows), in their time zone;
        the review queue only for those who review."""
        who.need("managers")
        with sessions() as db:
            try:
                win = dg.window(since or "yesterday", who.tz)
            except ValueError as e:
                raise HTTPException(400, str(e)) from None
            data = dg.build_digest(db, win, tz=who.tz, team_id=team or None, teams=who.access.stats_teams(db),
                                   manager_id=who.access.manager_id, include_flagged=who.access.can("flagged"),
                                   hot_minutes=s.hot_lead_minutes, min_calls=s.min_calls_for_rank,
                                   min_step_calls=s.min_step_calls)
        return page(request, who, "digest.html", d=data, links="")

    @app.get("/healthz", include_in_schema=False)
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
