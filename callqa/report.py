"""The weak-stage report: what sales heads and trainers read."""
from __future__ import annotations

import json
from typing import Optional

from sqlalchemy import select
from sqlalchemy.orm import Session

from models.events import STEPS
from models.tables import Call, Manager
from pipeline import stats
from pipeline.store import load_outcomes

SHORT = {"greeting": "Greet", "needs_discovery": "Needs", "presentation": "Pres",
         "objection_handling": "Object", "closing": "Close"}


def manager_rows(session: Session, min_calls: int) -> list[dict]:
    reports = stats.compute(load_outcomes(session), min_calls)
    names = {m.manager_id: m.name for m in session.scalars(select(Manager))}
    failed: dict[str, int] = {}
    for mid in session.scalars(select(Call.manager_id).where(Call.status == "failed")):
        failed[mid] = failed.get(mid, 0) + 1
    rows = []
    for mid in sorted(set(reports) | set(failed), key=lambda m: (names.get(m) or m)):
        r = reports.get(mid)
        rows.append({
            "manager_id": mid,
            "manager_name": names.get(mid),
            "team_id": r.team_id if r else None,
            "calls": r.calls if r else 0,
            "failed_calls": failed.get(mid, 0),
            "enough_calls": bool(r and r.enough_calls),
            "weak_stage": r.weak_stage if r else None,
            "weak_gap": round(r.weak_gap, 3) if r and r.weak_gap is not None else None,
            "steps": {step: {"share": round(st.share, 3),
                             "pass_rate": None if st.pass_rate is None else round(st.pass_rate, 3),
                             "score": None if st.score is None else round(st.score, 3),
                             "team_score": None if st.team_score is None else round(st.team_score, 3)}
                      for step, st in (r.stages.items() if r else [])},
        })
    return rows


def _pct(v: Optional[float]) -> str:
    return "  –" if v is None else f"{round(v * 100):3d}%"


def render_table(rows: list[dict], min_calls: int) -> str:
    if not rows:
        return "No calls stored yet. Publish some (callqa publish) and keep a worker running (callqa worker)."
    head = ["Manager", "Team", "Calls"] + [SHORT[s] for s in STEPS] + ["Weak stage"]
    body = []
    for r in rows:
        weak = ("(no weak stage)" if r["enough_calls"] and not r["weak_stage"] else
                f"{r['weak_stage']} (-{round(r['weak_gap'] * 100)} pts vs team)" if r["weak_stage"] else
                f"not enough calls (<{min_calls})")
        calls = str(r["calls"]) + (f" +{r['failed_calls']} failed" if r["failed_calls"] else "")
        body.append([r["manager_name"] or r["manager_id"], r["team_id"] or "–", calls]
                    + [_pct(r["steps"].get(s, {}).get("score")) for s in STEPS] + [weak])
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]
    right = {2, 3, 4, 5, 6, 7}
    fmt = lambda row: "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body]
    lines.append("")
    lines.append("Step columns: the manager's score per step (100% = done well on every call; weak = half; "
                 "objection handling only on calls with objections). Weak stage = largest shortfall against the team.")
    return "\n".join(lines)


def render_json(rows: list[dict]) -> str:
    return json.dumps({"managers": rows}, ensure_ascii=False, indent=2)
