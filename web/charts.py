"""Charts as server-rendered SVG (no JavaScript, no front-end build): a manager's steps against the
team, the weekly trend of each step, a team's step funnel. Every label is escaped."""
from __future__ import annotations

from typing import Callable, Optional

from markupsafe import Markup, escape

COLORS = {"greeting": "#3b6fd8", "needs_discovery": "#12a150", "presentation": "#e07b12",
          "objection_handling": "#d13b3b", "closing": "#7a4fd6"}
MANAGER, TEAM = "#1849a9", "#c4cbd6"


def _svg(width: int, height: int, body: list[str], title: str) -> Markup:
    return Markup(f'<svg class="chart" role="img" aria-label="{escape(title)}" viewBox="0 0 {width} {height}" '
                  f'width="100%" style="max-width:{width}px" xmlns="http://www.w3.org/2000/svg">'
                  f'<title>{escape(title)}</title>{"".join(body)}</svg>')


def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{round(v * 100)}%"


def steps_vs_team(steps: dict, label: Callable[[str], str], title: str, you: str, team: str) -> Markup:
    """Horizontal bars: per step the manager's score and the team's, 0-100 %."""
    left, bar_w, row_h = 190, 360, 34
    body = [f'<rect x="{left}" y="4" width="10" height="10" fill="{MANAGER}"/>'
            f'<text x="{left + 14}" y="13" font-size="11">{escape(you)}</text>'
            f'<rect x="{left + 120}" y="4" width="10" height="10" fill="{TEAM}"/>'
            f'<text x="{left + 134}" y="13" font-size="11">{escape(team)}</text>']
    for i, (step, v) in enumerate(steps.items()):
        y = 24 + i * row_h
        body.append(f'<text x="{left - 8}" y="{y + 15}" font-size="12" text-anchor="end">{escape(label(step))}</text>')
        for j, (val, color) in enumerate(((v.get("score"), MANAGER), (v.get("team_score"), TEAM))):
            w = 0 if val is None else round(bar_w * val)
            yy = y + 2 + j * 13
            body.append(f'<rect class="bar" data-step="{escape(step)}" x="{left}" y="{yy}" width="{w}" height="11" '
                        f'fill="{color}"><title>{escape(label(step))}: {_pct(val)}</title></rect>'
                        f'<text x="{left + w + 4}" y="{yy + 10}" font-size="10">{_pct(val)}</text>')
    return _svg(left + bar_w + 50, 24 + len(steps) * row_h + 4, body, title)


def weekly_trend(weeks: list[dict], steps: list[str], label: Callable[[str], str], title: str) -> Markup:
    """One line per step: the manager's score week by week."""
    if not weeks:
        return Markup("")
    left, top, w, h = 40, 10, 480, 160
    n = len(weeks)
    x = (lambda i: left + (w / 2 if n == 1 else i * w / (n - 1)))
    y = (lambda v: top + h - v * h)
    body = [f'<line x1="{left}" y1="{y(p / 100)}" x2="{left + w}" y2="{y(p / 100)}" stroke="#e4e7ec"/>'
            f'<text x="{left - 6}" y="{y(p / 100) + 4}" font-size="10" text-anchor="end">{p}%</text>'
            for p in (0, 50, 100)]
    for i, wk in enumerate(weeks):
        body.append(f'<text x="{x(i)}" y="{top + h + 16}" font-size="10" text-anchor="middle">'
                    f'{escape(wk["week"][-3:])}</text>')
    for k, step in enumerate(steps):
        pts = [(x(i), y(wk["steps"][step]["score"])) for i, wk in enumerate(weeks)
               if wk["steps"].get(step, {}).get("score") is not None]
        if not pts:
            continue
        color = COLORS.get(step, "#555")
        body.append(f'<polyline class="trend" data-step="{escape(step)}" fill="none" stroke="{color}" '
                    f'stroke-width="2" points="{" ".join(f"{px:.1f},{py:.1f}" for px, py in pts)}"/>')
        body += [f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{color}"/>' for px, py in pts]
        lx = left + w + 14
        body.append(f'<rect x="{lx}" y="{top + k * 16}" width="10" height="10" fill="{color}"/>'
                    f'<text x="{lx + 14}" y="{top + k * 16 + 9}" font-size="11">{escape(label(step))}</text>')
    return _svg(left + w + 230, top + h + 24, body, title)


def funnel(funnel: dict, label: Callable[[str], str], title: str) -> Markup:
    """Of the team's calls, how many reached each step."""
    total = funnel["calls"] or 1
    left, bar_w, row_h = 190, 360, 26
    body = []
    for i, (step, n) in enumerate(funnel["steps"].items()):
        y = 6 + i * row_h
        wd = round(bar_w * n / total)
        body.append(f'<text x="{left - 8}" y="{y + 14}" font-size="12" text-anchor="end">{escape(label(step))}</text>'
                    f'<rect class="bar" data-step="{escape(step)}" x="{left + (bar_w - wd) / 2:.1f}" y="{y}" '
                    f'width="{wd}" height="18" fill="{COLORS.get(step, "#555")}"/>'
                    f'<text x="{left + bar_w + 6}" y="{y + 14}" font-size="11">{n} ({round(100 * n / total)}%)</text>')
    return _svg(left + bar_w + 90, 10 + len(funnel["steps"]) * row_h, body, title)
