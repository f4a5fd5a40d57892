"""Where the step model's second-label threshold (pipeline/tagging/learned.py, SECOND_LABEL) comes from.

A turn the decoder gives a step may carry a second one: every other step whose probability reaches the
threshold. Second steps count only at call level (which steps a call reached, its furthest step), which
bench/decoding.py's protocol did not score. Here the same protocol (each real source family of the train
split left out in turn, scored by a model that never saw it; the written dev split by the shipped recipe;
speakers known and unknown; never a blind test or shared/eval) scores each threshold by furthest-step
accuracy and by the F1 of the steps each call reached. Per-turn macro-F1 does not move: the turn's own
step is unchanged. The pick: the sum of macro-F1, furthest-step accuracy and the steps-reached F1 (real
families pooled, plus written dev, speakers known and unknown), averaged with the neighbouring
thresholds; of those within 0.01 of the best, the one nearest the threshold before. The steps-reached F1
is in the sum because that is what second steps decide; furthest-step accuracy alone rewards marking
every step reached (its pick is printed too). Also tried: second steps on turns the decoder leaves
without a step.

    PYTHONPATH=. python bench/second_label.py     # about 7 min on 2 cores (six trainings)
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import decoding as D  # noqa: E402
from pipeline.tagging.learned import CLASSES, NONE, STEPS  # noqa: E402
from pipeline.tagging.training import DECODING, score  # noqa: E402

THRESHOLDS = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.5, 1.01)
BEFORE = 0.35


def presence_f1(dialogues: list[dict], per_all: list[list[list[str]]]) -> float:
    """F1 of the steps each call reached (any turn), against the labels' steps of any turn."""
    tp = fp = fn = 0
    for d, turns in zip(dialogues, per_all):
        gold = {s for ss in d["labels"]["per_turn_all"] for s in ss if s}
        pred = {s for ss in turns for s in ss}
        tp, fp, fn = tp + len(gold & pred), fp + len(pred - gold), fn + len(gold - pred)
    return 2 * tp / max(1, 2 * tp + fp + fn)


def scored(sets: dict, tau: float, anywhere: bool) -> tuple[dict, dict]:
    res, pres = {}, {}
    for key, (data, probs, model) in sets.items():
        model.meta.update(DECODING)
        per_turn, per_all = [], []
        for p in probs:
            path = [None if k == NONE else CLASSES[k] for k in model.decode(p)]
            turns = []
            for i, st in enumerate(path):
                steps = [st] if st else []
                if st or anywhere:
                    steps += [c for c in STEPS if c != st and p[i][CLASSES.index(c)] >= tau]
                turns.append(steps)
            per_turn.append(path)
            per_all.append(turns)
        res[key] = score(data, per_turn, per_all)
        pres[key] = (presence_f1(data, per_all), len(data))
    return res, pres


def pooled_presence(pres: dict, speakers: str) -> float:
    keys = [k for k in pres if k[0] in D.FAMILIES and k[1] == speakers]
    return sum(pres[k][0] * pres[k][1] for k in keys) / sum(pres[k][1] for k in keys)


def main() -> int:
    sets = D.held_out_probabilities()
    rows, sums = [], {}
    for anywhere in (False, True):
        for tau in THRESHOLDS:
            res, pres = scored(sets, tau, anywhere)
            real, dev = D.objective(res)
            presence = (pooled_presence(pres, "known") + pooled_presence(pres, "unknown")
                        + pres[("written dev (w5)", "known")][0] + pres[("written dev (w5)", "unknown")][0])
            if not anywhere:
                sums[tau] = (real + dev, real + dev + presence)
            rows.append((("any turn" if anywhere else "turns with a step"), tau, real, dev,
                         D.pooled(res, "known")[1], D.pooled(res, "unknown")[1],
                         res[("written dev (w5)", "known")]["furthest"], res[("written dev (w5)", "unknown")]["furthest"],
                         pooled_presence(pres, "known"), pooled_presence(pres, "unknown"),
                         pres[("written dev (w5)", "known")][0], pres[("written dev (w5)", "unknown")][0]))
    def pick(which: int) -> tuple[float, dict]:
        smooth = {}
        for i, t in enumerate(THRESHOLDS):
            near = [sums[THRESHOLDS[j]][which] for j in range(max(0, i - 1), min(len(THRESHOLDS), i + 2))]
            smooth[t] = sum(near) / len(near)
        top = max(smooth.values())
        return min((t for t in THRESHOLDS if smooth[t] >= top - 0.01 - 1e-9),
                   key=lambda t: (abs(t - BEFORE), -smooth[t])), smooth

    pick_f, _ = pick(0)
    chosen, smooth = pick(1)
    print("| second steps on | threshold | sum real / dev | furthest real k / u | furthest dev k / u | "
          "steps reached F1 real k / u | steps reached F1 dev k / u | smoothed sum of all |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        sm = f"{smooth[r[1]]:.3f}" if r[0] == "turns with a step" else ""
        print(f"| {r[0]} | {'off' if r[1] > 1 else r[1]} | {r[2]:.3f} / {r[3]:.3f} | {r[4]:.3f} / {r[5]:.3f} | "
              f"{r[6]:.2f} / {r[7]:.2f} | {r[8]:.3f} / {r[9]:.3f} | {r[10]:.3f} / {r[11]:.3f} | {sm} |")
    print(f"\npicked: {chosen} (before: {BEFORE}); by macro-F1 and furthest alone: {pick_f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
