"""``callqa digest``: pipeline/digest.py's evening summary as text or HTML, and the e-mail that carries both.

The HTML is the web page's own partial (web/templates/_digest.html) rendered with autoescape, so a manager's
name or a flag's detail is shown as text, never as markup. The e-mail goes through the SMTP server of
CALLQA_SMTP_*: STARTTLS (the certificate checked) before any login unless CALLQA_SMTP_STARTTLS=0; the password
comes only from the environment.
"""
from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path
from typing import Any, Optional

from config.settings import Settings

TEMPLATES = Path(__file__).resolve().parents[1] / "web" / "templates"


class SendError(Exception):
    """The digest could not be sent; the message says what to check."""


def subject(d: dict) -> str:
    return f"callqa digest: {d['period']}"


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{round(v * 100)}%"


def render_text(d: dict) -> str:
    from callqa.report import plural, table
    lines = [subject(d), f"Period: {d['period']} ({d['timezone']}), from {d['since'][:16]} to {d['until'][:16]}", ""]
    lines.append("Calls and leads per manager")
    if d["managers"]:
        body = [[r["manager_name"] or r["manager_id"] or "(no manager)", r["team_id"] or "–", r["calls"], r["failed"],
                 r["leads"], r["hot_leads"], r["hot_missed"]] for r in d["managers"]]
        t = d["totals"]
        body.append(["all", "", t["calls"], t["failed"], t["leads"], t["hot_leads"], t["hot_missed"]])
        lines.append(table(["Manager", "Team", "Calls", "Failed", "Leads", "Hot", "Hot missed"], body,
                           right={2, 3, 4, 5, 6}))
    else:
        lines.append("No calls and no CRM leads in this period.")
    lines += ["", f"Hot leads not called within {d['hot_lead_minutes']:g} min"]
    for f in d["missed_hot_leads"]:
        when = "not called" if f["first_call_delay_min"] is None else f"called after {f['first_call_delay_min']:g} min"
        lines.append(f"  {f['crm']} {f['lead_id']}, {f['manager_name'] or f['manager_id'] or '(no manager)'}, "
                     f"created {f['created_at'][:16].replace('T', ' ')}: {when}")
    if not d["missed_hot_leads"]:
        lines.append("  None: every hot lead was called in time.")
    if d["flagged"] is not None:
        fl = d["flagged"]
        lines += ["", "Flagged calls waiting for review",
                  f"  {fl['in_period']} flags on {fl['calls']} calls of this period, {fl['in_queue']} in the whole "
                  "review queue (callqa report flagged)."]
        lines += [f"  {r['call_id']}  {r['manager_name'] or r['manager_id']}  {r['flag']}: {r['detail'] or ''}".rstrip()
                  for r in fl["rows"]]
    lines += ["", "The biggest gap"]
    w, g = d["gap"]["weakest"], d["gap"]["drop"]
    if w:
        lines.append(f"  Weakest step: {w['manager_name'] or w['manager_id']}, {w['step']}: {round(w['gap'] * 100)} "
                     f"points below the team over {plural(w['calls'], 'call')}")
    if g:
        lines.append(f"  Biggest drop: {g['from']} -> {g['to']}: {g['to_calls']} of {g['from_calls']} calls went on "
                     f"({_pct(g['lost_share'])} lost)")
    if not w and not g:
        lines.append("  Too few tagged calls to name one.")
    return "\n".join(lines) + "\n"


def render_html(d: dict, web_url: str = "", lang: str = "en") -> str:
    import jinja2

    from web.i18n import Labels
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), autoescape=True)
    env.filters["pct"] = _pct
    return env.get_template("digest_email.html").render(d=d, L=Labels(lang), subject=subject(d),
                                                        links=web_url.rstrip("/") if web_url else None)


def recipients(s: Settings) -> list[str]:
    return [a.strip() for a in s.smtp_to.split(",") if a.strip()]


def check_smtp(s: Settings) -> Optional[str]:
    """What is missing for --send, or None."""
    missing = [name for name, value in (("CALLQA_SMTP_HOST", s.smtp_host), ("CALLQA_SMTP_FROM", s.smtp_from),
                                        ("CALLQA_SMTP_TO", recipients(s))) if not value]
    if missing:
        return (f"--send needs an SMTP server: set {', '.join(missing)} (and CALLQA_SMTP_USER / CALLQA_SMTP_PASSWORD "
                "if it asks for a login); README: Evening digest")
    if s.smtp_user and not s.smtp_password:
        return "CALLQA_SMTP_USER is set without CALLQA_SMTP_PASSWORD: set both (the password in the environment)"
    return None


def send(s: Settings, d: dict, text: str, html: str, context: Optional[ssl.SSLContext] = None) -> list[str]:
    """Mail the digest (text and HTML alternatives) to CALLQA_SMTP_TO; the recipients, or SendError."""
    to = recipients(s)
    msg = EmailMessage()
    msg["Subject"], msg["From"], msg["To"] = subject(d), s.smtp_from, ", ".join(to)
    msg["Date"], msg["Message-ID"] = formatdate(localtime=True), make_msgid("callqa")
    msg.set_content(text)
    msg.add_alternative(html, subtype="html")
    where = f"{s.smtp_host}:{s.smtp_port}"
    try:
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.smtp_timeout_s) as smtp:
            smtp.ehlo()
            if s.smtp_starttls:
                if not smtp.has_extn("starttls"):
                    raise SendError(f"{where} does not offer STARTTLS; use its TLS port, or set CALLQA_SMTP_STARTTLS=0 "
                                    "only for a relay on a network you trust")
                smtp.starttls(context=context or ssl.create_default_context())
                smtp.ehlo()
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password)
            refused = smtp.send_message(msg, to_addrs=to)
    except smtplib.SMTPAuthenticationError as e:
        raise SendError(f"{where} refused the login of CALLQA_SMTP_USER={s.smtp_user!r} ({e.smtp_code}): check "
                        "CALLQA_SMTP_PASSWORD") from None
    except smtplib.SMTPRecipientsRefused as e:
        raise SendError(f"{where} refused every recipient ({', '.join(e.recipients)}): check CALLQA_SMTP_TO") from None
    except smtplib.SMTPException as e:
        raise SendError(f"{where}: {type(e).__name__}: {e}") from None
    except ssl.SSLError as e:
        raise SendError(f"{where}: TLS failed ({e.reason or e}): is the server's certificate valid for "
                        f"{s.smtp_host}?") from None
    except OSError as e:
        raise SendError(f"cannot reach the SMTP server {where} ({type(e).__name__}: {e}): check CALLQA_SMTP_HOST "
                        "and CALLQA_SMTP_PORT") from None
    return [a for a in to if a not in refused]


def digest_for(s: Settings, session: Any, since: str, team: Optional[str] = None) -> dict:
    """The company-wide digest the CLI prints or mails (everything: it runs with the database's rights)."""
    from pipeline.digest import build_digest, window
    return build_digest(session, window(since, s.tz), tz=s.tz, team_id=team or None, hot_minutes=s.hot_lead_minutes,
                        min_calls=s.min_calls_for_rank, min_step_calls=s.min_step_calls)
