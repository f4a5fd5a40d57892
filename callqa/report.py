"""What sales heads and trainers read in a terminal: text, JSON and CSV renderings of the queries in
pipeline/queries.py (which the web pages use too).
"""
from __future__ import annotations

import csv
import io
import json
from typing import Any, Optional

from models.events import STEPS
from pipeline.queries import (  # noqa: F401  (re-exported: the CLI and the tests use them through here)
    SHORT, Scope, _mmss, activity, coaching_csv, coaching_rows, empty_reason, find_manager, flag_rule_rows,
    flagged_rows, has_calls, manager_rows, parse_day, plural, scope_text, until_day)

# ---- managers and their weak stages -------------------------------------------------------------

def _pct(v: Optional[float]) -> str:
    return "–" if v is None else f"{round(v * 100)}%"


def _gap(gap: float, margin: Optional[float]) -> str:
    """'-19 ±12 pts': the shortfall and the half-width of its 90 % interval."""
    return f"-{round(gap * 100)}" + (f" ±{round(margin * 100)}" if margin is not None else "") + " pts"


def table(head: list[str], body: list[list[Any]], right: set[int] = frozenset()) -> str:
    widths = [max(len(str(x[i])) for x in [head] + body) for i in range(len(head))]

    def fmt(row):
        return "  ".join(str(c).rjust(w) if i in right else str(c).ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    return "\n".join([fmt(head), "  ".join("-" * w for w in widths)] + [fmt(b) for b in body])


def render_managers(rows: list[dict], min_calls: int, empty: str = "") -> str:
    if not rows:
        return empty or "No calls stored yet. Publish some (callqa publish) and keep a worker running (callqa worker)."
    head = ["Manager", "Id", "Team", "Calls"] + [SHORT[s] for s in STEPS] + ["Weak stage"]
    body = []
    for r in rows:
        if r["weak_stage"]:
            weak = f"{r['weak_stage']} ({_gap(r['weak_gap'], r['weak_margin'])} vs team, {plural(r['weak_calls'], 'call')})"
        elif r["enough_calls"]:
            weak = "(none: at or above the team)"
        else:
            weak = f"not enough calls (<{min_calls})"
        calls = str(r["calls"]) + (f" +{r['failed_calls']} failed" if r["failed_calls"] else "")
        body.append([r["manager_name"] or r["manager_id"], r["manager_id"], r["team_id"] or "–", calls]
                    + [_pct(r["steps"].get(s, {}).get("score")) for s in STEPS] + [weak])
    return (table(head, body, right={3, 4, 5, 6, 7, 8}) + "\n\n"
            "Step columns: the manager's score per step (100% = done well on every call, a weak step counts half; "
            "objection handling only on calls with objections).\nWeak stage = the largest shortfall against the "
            "team's pooled score, named once a manager has enough calls.\n"
            "One manager in detail: callqa report manager ID (or the name in quotes).")


def render_manager(row: dict, min_calls: int) -> str:
    head = ["Step", "Occurred", "Quality ok", "Next step", "Score", "Team", "vs team"]
    # the closing step has no next step to convert to: "–", not 0 %
    body = [[s, _pct(v["share"]), _pct(v["pass_rate"]), "–" if s == STEPS[-1] else _pct(v["conversion"]),
             _pct(v["score"]),
             _pct(v["team_score"]), "–" if v["gap"] is None else f"{round(-v['gap'] * 100):+d} pts"]
            for s, v in row["steps"].items()]
    lines = [f"{row['manager_name'] or row['manager_id']} ({row['manager_id']}), team {row['team_id'] or '–'}: "
             f"{plural(row['calls'], 'call')}" + (f", {row['failed_calls']} failed" if row["failed_calls"] else ""),
             "", table(head, body, right={1, 2, 3, 4, 5, 6}), ""]
    if row["weak_stage"]:
        lines.append(f"Weak stage: {row['weak_stage']} ({_gap(row['weak_gap'], row['weak_margin'])} below the "
                     f"team, {plural(row['weak_calls'], 'call')}; ± is a 90% interval)")
    elif not row["enough_calls"]:
        lines.append(f"Weak stage: not enough calls yet (needs {min_calls})")
    if row["objections"]:
        lines.append("Objections: " + ", ".join(f"{k} {v['answered']}/{v['raised']} answered"
                                                for k, v in sorted(row["objections"].items())))
    k = row["kpi"]
    if k:
        lines.append(f"Activity: {k['calls_per_day']} calls/day, {k['talk_time_min']} min talking"
                     + (f"; hot leads called within 15 min: {_pct(k['hot_leads_within_15min'])} of {k['hot_leads']}"
                        if k.get("hot_leads") else "")
                     + (f"; median lead response {k['lead_response_median_min']} min"
                        if k.get("lead_response_median_min") is not None else ""))
    return "\n".join(lines)


# ---- flagged calls and reviews ------------------------------------------------------------------

def render_flagged(rows: list[dict]) -> str:
    if not rows:
        return "No flagged calls."
    body = [[r["started_at"][:16].replace("T", " "), r["manager_name"] or r["manager_id"], r["call_id"], r["flag"],
             _mmss(r["at"]), r["review"] or "to review", r["detail"][:70]] for r in rows]
    return (table(["Started", "Manager", "Call", "Flag", "At", "Review", "Why"], body, right={4}) +
            "\n\nMark one reviewed: callqa review CALL_ID FLAG --agree|--disagree [--at SECONDS] [--comment TEXT]")


def render_flag_rules(rows: list[dict]) -> str:
    if not rows:
        return "No flags yet."
    return table(["Flag rule", "Fired", "Reviewed", "Agree", "Disagree", "Disagree %"],
                 [[d["flag"], d["flagged"], d["reviewed"], d["agree"], d["disagree"], _pct(d["disagree_share"])]
                  for d in rows], right={1, 2, 3, 4, 5})


# ---- coaching -----------------------------------------------------------------------------------

def render_coaching(rows: list[dict]) -> str:
    if not rows:
        return "No objections recorded yet."
    out = [table(["Manager", "Objections", "Answered", "Team", "Shortfall", "Missed most"],
                 [[r["manager_name"] or r["manager_id"], r["objections"], _pct(r["answer_rate"]),
                   _pct(r["team_answer_rate"]), f"{round(r['shortfall'] * 100):+d} pts",
                   ", ".join(f"{k} ×{n}" for k, n in r["missed_kinds"].items()) or "–"] for r in rows],
                 right={1, 2, 3, 4})]
    for r in rows:
        if r["moments"]:
            out.append(f"\n{r['manager_name'] or r['manager_id']}: moments to coach on")
            for m in r["moments"]:
                out.append(f"  {m['call_id']} at {_mmss(m['at'])} [{m['kind']}] client: \"{m['objection']}\"")
                out.append(f"      manager: \"{m['manager_said']}\"")
    return "\n".join(out)


def _flatten(value: Any, prefix: str, out: dict) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _flatten(v, f"{prefix}_{k}" if prefix else str(k), out)
    elif isinstance(value, list):
        out[prefix] = "; ".join(str(v) for v in value)
    else:
        out[prefix] = value


def rows_csv(rows: list[dict]) -> str:
    """One column per value: nested figures become columns like ``steps_closing_score`` or
    ``objections_price_raised``, so a spreadsheet can sum and sort them."""
    if not rows:
        return ""
    flat = []
    for r in rows:
        out: dict = {}
        _flatten(r, "", out)
        flat.append(out)
    fields = list(dict.fromkeys(k for f in flat for k in f))  # a column any row has (objection kinds differ)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, restval="")
    w.writeheader()
    w.writerows(flat)
    return buf.getvalue()


def render_json(key: str, rows: Any) -> str:
    return json.dumps({key: rows}, ensure_ascii=False, indent=2, default=str)


# ---- the CRM funnel and step impact -------------------------------------------------------------

def _money(revenue: dict) -> str:
    return ", ".join(f"{v:,.0f} {k}".strip().replace(",", " ") for k, v in revenue.items()) or "–"


def _min(v: Optional[float]) -> str:
    return "–" if v is None else f"{v:g} min"


def _funnel_line(r: dict) -> list:
    hot = f"{r['hot_called_in_time']}/{r['hot_due']} {_pct(r['hot_in_time_share'])}" if r["hot_due"] else "–"
    return [r["leads"], r["hot_leads"], hot, _min(r["hot_median_delay_min"]), r["hot_missed"],
            "–" if r["calls_per_lead"] is None else f"{r['calls_per_lead']:g}",
            "–" if r["proposals_per_lead"] is None else f"{r['proposals_per_lead']:g}",
            r["won"], r["lost"], r["open"], _pct(r["conversion"]), _money(r["revenue"])]


FUNNEL_HEAD = ["Leads", "Hot", "Hot called in time", "Hot median", "Missed", "Calls/lead", "KP/lead", "Won", "Lost",
               "Open", "Conversion", "Revenue"]


def render_funnel(out: dict, empty: str = "") -> str:
    if not out["managers"]:
        return empty or ("No CRM leads stored yet. Point your CRM's webhooks at `callqa ingest` (README: CRM) and "
                         "keep a worker running.")
    minutes = f"{out['hot_lead_minutes']:g}"
    right = set(range(2, 14))
    managers = table(["Manager", "Team"] + FUNNEL_HEAD,
                     [[r["manager_name"] or r["manager_id"] or "(no manager)", r["team_id"] or "–"] + _funnel_line(r)
                      for r in out["managers"]], right=right)
    teams = table(["Team"] + FUNNEL_HEAD, [[r["team_id"] or "(no team)"] + _funnel_line(r) for r in out["teams"]]
                  + [["all"] + _funnel_line(out["total"])], right={i - 1 for i in right})
    return (managers + "\n\n" + teams + "\n\n"
            f"Hot called in time: hot leads whose first call came within {minutes} min of the lead entering the CRM, "
            f"of the hot leads called or older than {minutes} min; Hot median: the median delay to the first call; "
            "Missed: hot leads not called in time.\nCalls/lead and KP/lead (proposals) are the activity per lead; "
            "Conversion: won deals of all leads; Revenue: the won deals' amounts.")


def funnel_csv(out: dict) -> str:
    return rows_csv([{"level": "manager", **r} for r in out["managers"]] +
                    [{"level": "team", **r} for r in out["teams"]] + [{"level": "total", **out["total"]}])


def _impact_table(block: dict) -> str:
    cur = block.get("currency") or ""
    body = []
    for r in block["steps"]:
        diff = "–" if r["difference"] is None else (
            f"{round(r['difference'] * 100):+d} pts [{round(r['interval'][0] * 100):+d}, {round(r['interval'][1] * 100):+d}]")
        lost = "–" if r["deals_lost"] is None else f"{r['deals_lost']:g}" + (
            f" ({r['money_lost']:,.0f} {cur})".replace(",", " ") if r["money_lost"] else "")
        body.append([r["step"], f"{r['won_well']}/{r['leads_well']} {_pct(r['conversion_well'])}",
                     f"{r['won_not_well']}/{r['leads_not_well']} {_pct(r['conversion_not_well'])}", diff, lost,
                     r["note"]])
    return table(["Step", "Done well: won", "Not well: won", "Difference [90%]", "Deals lost", "Verdict"], body,
                 right={1, 2, 3, 4})


def render_step_impact(out: dict, empty: str = "") -> str:
    team = out["team"]
    if not out["managers"]:
        return empty or "No CRM leads stored yet, so no step can be weighed against deals."
    lines = [f"All managers: {team['closed_leads']} closed leads with a recorded call ({team['won']} won)", "",
             _impact_table(team), "", team["conclusion"]]
    for m in out["managers"]:
        lines += ["", f"{m['manager_name'] or m['manager_id']}: {m['closed_leads']} closed leads ({m['won']} won). "
                  f"{m['conclusion']}", _impact_table(m)]
    lines += ["", f"Conversion of closed leads (won or lost; open leads left out) whose calls did the step well in at "
              f"least one call, against those whose calls did not. A conclusion needs {out['min_leads']} leads a side "
              "(CALLQA_MIN_LEADS) and a 90% interval clear of zero. Deals lost: what the weaker side would have won at "
              "the stronger side's rate (money: at the average won deal). Correlation, not proof: check the calls."]
    return "\n".join(lines)


def step_impact_csv(out: dict) -> str:
    rows = [{"scope": "team", "manager_id": "", **r} for r in out["team"]["steps"]]
    rows += [{"scope": "manager", "manager_id": m["manager_id"], **r} for m in out["managers"] for r in m["steps"]]
    for r in rows:
        r["interval"] = r["interval"] and f"{r['interval'][0]}..{r['interval'][1]}"
    return rows_csv(rows)
