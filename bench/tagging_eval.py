"""Evaluate the sales-step tagger on labelled dialogues (shared/eval/dialogues.jsonl format).

Per language:
* per-turn macro-F1 over the 5 steps + null, crediting a prediction that is in the
  turn's ``per_turn_all`` (the guideline's optional credit);
* per-step precision/recall of ``steps_present``;
* ``furthest_step`` accuracy;
* a confusion matrix (gold ``per_turn`` rows x predicted columns, after the credit).

Usage: python bench/tagging_eval.py [DIALOGUES.jsonl] [--errors]
Prints a markdown report; --errors also lists the turns that were wrong.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.tagging.dialogues import iter_jsonl, tag_dialogue  # noqa: E402
from pipeline.tagging.rules import Rules, default_rules  # noqa: E402

STEPS = ("greeting", "needs_discovery", "presentation", "objection_handling", "closing")
CLASSES = STEPS + ("null",)
DEFAULT_DATA = ROOT.parent / "shared" / "eval" / "dialogues.jsonl"
SHORT = {"greeting": "greet", "needs_discovery": "needs", "presentation": "pres",
         "objection_handling": "objection", "closing": "closing", "null": "null"}


def _c(x: Optional[str]) -> str:
    return x if x is not None else "null"


def evaluate(path: Path = DEFAULT_DATA, rules: Optional[Rules] = None) -> dict:
    rules = rules or default_rules()
    by_lang: dict[str, dict] = {}
    for d in iter_jsonl(Path(path)):
        lang = d.get("language", "en")
        r = by_lang.setdefault(lang, {"pairs": [], "calls": [], "errors": [], "n": 0})
        r["n"] += 1
        pred, _ = tag_dialogue(d, rules)
        lab = d["labels"]
        for i, (turn, g, gall, p) in enumerate(zip(d["turns"], lab["per_turn"], lab["per_turn_all"], pred["per_turn"])):
            credited = p if (p is not None and p in (gall or [])) or p == g else g
            r["pairs"].append((_c(credited), _c(p)))
            if _c(credited) != _c(p):
                r["errors"].append((d["id"], i, turn["speaker"], _c(g), gall, _c(p), turn["text"][:140]))
        r["calls"].append((set(lab["steps_present"]), set(pred["steps_present"]),
                           lab["furthest_step"], pred["furthest_step"], d["id"]))
    results = {}
    for lang, r in sorted(by_lang.items()):
        pairs = r["pairs"]
        per_class = {}
        f1s = []
        for c in CLASSES:
            tp = sum(1 for g, p in pairs if g == c and p == c)
            fp = sum(1 for g, p in pairs if g != c and p == c)
            fn = sum(1 for g, p in pairs if g == c and p != c)
            if tp + fp + fn == 0:
                continue
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            per_class[c] = {"p": prec, "r": rec, "f1": f1, "support": tp + fn}
            f1s.append(f1)
        step_pr = {}
        for s in STEPS:
            tp = sum(1 for g, p, *_ in r["calls"] if s in g and s in p)
            fp = sum(1 for g, p, *_ in r["calls"] if s not in g and s in p)
            fn = sum(1 for g, p, *_ in r["calls"] if s in g and s not in p)
            step_pr[s] = {"p": tp / (tp + fp) if tp + fp else 1.0, "r": tp / (tp + fn) if tp + fn else 1.0,
                          "support": tp + fn}
        furthest_ok = sum(1 for *_, gf, pf, _id in r["calls"] if gf == pf)
        confusion = {g: {p: 0 for p in CLASSES} for g in CLASSES}
        for g, p in pairs:
            confusion[g][p] += 1
        results[lang] = {
            "dialogues": r["n"], "turns": len(pairs),
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "accuracy": sum(1 for g, p in pairs if g == p) / len(pairs) if pairs else 0.0,
            "per_class": per_class, "steps_present": step_pr,
            "furthest_accuracy": furthest_ok / len(r["calls"]) if r["calls"] else 0.0,
            "furthest_wrong": [(i, gf, pf) for *_, gf, pf, i in r["calls"] if gf != pf],
            "confusion": confusion, "errors": r["errors"],
        }
    return results


def report(results: dict, errors: bool = False) -> str:
    out = ["# Sales-step tagger evaluation", ""]
    for lang, r in results.items():
        out += [f"## {lang} ({r['dialogues']} dialogues, {r['turns']} turns)", "",
                f"* per-turn macro-F1 (5 steps + null, per_turn_all credit): **{r['macro_f1']:.3f}**",
                f"* per-turn accuracy: {r['accuracy']:.3f}",
                f"* furthest_step accuracy: **{r['furthest_accuracy']:.3f}**", ""]
        out += ["| class | P | R | F1 | support |", "|---|---|---|---|---|"]
        for c, m in r["per_class"].items():
            out.append(f"| {c} | {m['p']:.2f} | {m['r']:.2f} | {m['f1']:.2f} | {m['support']} |")
        out += ["", "steps_present per step:", "", "| step | P | R | support |", "|---|---|---|---|"]
        for s, m in r["steps_present"].items():
            out.append(f"| {s} | {m['p']:.2f} | {m['r']:.2f} | {m['support']} |")
        out += ["", "Confusion (rows gold, columns predicted):", "",
                "| gold \\ pred | " + " | ".join(SHORT[c] for c in CLASSES) + " |",
                "|---" * (len(CLASSES) + 1) + "|"]
        for g in CLASSES:
            out.append(f"| {SHORT[g]} | " + " | ".join(str(r["confusion"][g][p]) for p in CLASSES) + " |")
        if r["furthest_wrong"]:
            out += ["", "furthest_step wrong: " + "; ".join(f"{i}: gold {g}, pred {p}" for i, g, p in r["furthest_wrong"])]
        if errors and r["errors"]:
            out += ["", "Wrong turns:", ""]
            for did, i, sp, g, gall, p, txt in r["errors"]:
                out.append(f"* {did}#{i} {sp}: gold {g} {gall} pred {p}: {txt}")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--errors", action="store_true", help="list the wrongly tagged turns")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = evaluate(Path(a.path))
    print(report(res, errors=a.errors))
    print(f"_evaluated in {time.perf_counter() - t0:.2f} s_")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
