"""Speakers inferred from the words for text dialogues without them (pipeline/roles.py, turn_roles): where
its settings come from, and what it gains. bench/README.md, "Speakers inferred from the words".

bench/decoding.py's protocol, at the shipped decoding settings: each real source family of the train split
left out in turn and scored by a model trained without it, and the written dev split (w5); never a blind
test, never shared/eval. Each set three ways: speakers as labelled, speakers unknown (every turn
"unknown", as before), and inferred (the speakers removed, then turn_roles at each setting: the chance
of a change of speaker between turns, and the posterior a turn needs to be given a speaker). Also how
many turns got a speaker and how many of those are right.

    PYTHONPATH=. python bench/speaker_inference.py     # about 6 min on 2 cores (five trainings)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # before bench/, whose pipeline.py would shadow the package

from bench import decoding as D  # noqa: E402
from pipeline import roles as R  # noqa: E402
from pipeline.tagging.learned import CLASSES, NONE, cue_names_of  # noqa: E402
from pipeline.tagging.rules import default_rules  # noqa: E402
from pipeline.tagging.training import DECODING, prepare, score, unknown_speakers  # noqa: E402

SETTINGS = [(0.8, 0.8), (0.9, 0.8), (0.9, 0.9), (0.95, 0.7), (0.95, 0.8), (0.98, 0.7), (0.98, 0.8), (0.99, 0.8),
            (1.0, 0.5)]  # (switch, min posterior); 1.0 / 0.5: strict alternation, the likelier of its two readings


def with_speakers(d: dict, speakers: list[str]) -> dict:
    return {**d, "turns": [{**t, "speaker": s} for t, s in zip(d["turns"], speakers)]}


def main() -> int:
    rules = default_rules()
    cues = cue_names_of(rules)
    sets = D.held_out_probabilities()
    rows = {}
    for (name, spk), (data, _probs, model) in sets.items():
        if spk != "known":
            continue
        model.meta.update(DECODING)
        variants = {"labelled": data, "unknown": [unknown_speakers(d) for d in data]}
        coverage = {}
        for sw, mp in SETTINGS:
            sp = [R.turn_roles([t.get("text", "") for t in d["turns"]], switch=min(sw, 1 - 1e-9), min_posterior=mp)
                  for d in data]
            given = [(a, t["speaker"]) for d, s in zip(data, sp) for a, t in zip(s, d["turns"]) if a != "unknown"]
            turns = sum(len(d["turns"]) for d in data)
            coverage[(sw, mp)] = (len(given) / turns, sum(a == b for a, b in given) / max(1, len(given)))
            variants[(sw, mp)] = [with_speakers(d, s) for d, s in zip(data, sp)]
        res = {}
        for key, ds in variants.items():
            prep = prepare(ds, rules, cues)
            preds = [[None if k == NONE else CLASSES[k] for k in model.decode(model.probabilities(x))] for x in prep.x]
            res[key] = score(ds, preds)
        rows[name] = (len(data), res, coverage)
        print(f"  {name} done", file=sys.stderr, flush=True)

    def pooled(key, fams):
        n = sum(rows[f][0] for f in fams)
        return tuple(sum(rows[f][1][key][m] * rows[f][0] for f in fams) / n for m in ("macro_f1", "furthest"))

    fams = [f for f in rows if f in D.FAMILIES]
    dev = "written dev (w5)"
    lines = ["| speakers | real families pooled | written dev | turns given a speaker (dev) | of them right (dev) "
             "| sum |", "|---|---|---|---|---|---|"]
    for key in ["labelled", "unknown"] + SETTINGS:
        r, w = pooled(key, fams), pooled(key, [dev])
        cov = rows[dev][2].get(key)
        label = key if isinstance(key, str) else f"inferred, switch {key[0]}, posterior ≥ {key[1]}"
        if key == (R.SWITCH, R.MIN_POSTERIOR):
            label += " (shipped)"
        lines.append(f"| {label} | {r[0]:.3f} / {r[1]:.2f} | {w[0]:.3f} / {w[1]:.2f} | "
                     f"{'%.0f %%' % (100 * cov[0]) if cov else '–'} | {'%.0f %%' % (100 * cov[1]) if cov else '–'} | "
                     f"{sum(r) + sum(w):.3f} |")
    lines += ["", "Per family at the shipped setting (macro-F1 / furthest: unknown → inferred; turns given a speaker, "
              "right): " + "; ".join(
                  f"{f} {rows[f][1]['unknown']['macro_f1']:.3f} / {rows[f][1]['unknown']['furthest']:.2f} → "
                  f"{rows[f][1][(R.SWITCH, R.MIN_POSTERIOR)]['macro_f1']:.3f} / "
                  f"{rows[f][1][(R.SWITCH, R.MIN_POSTERIOR)]['furthest']:.2f} "
                  f"({100 * rows[f][2][(R.SWITCH, R.MIN_POSTERIOR)][0]:.0f} %, "
                  f"{100 * rows[f][2][(R.SWITCH, R.MIN_POSTERIOR)][1]:.0f} %)" for f in fams + [dev]) + "."]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
