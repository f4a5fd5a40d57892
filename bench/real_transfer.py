"""Does the step model transfer to real conversations of a source it never saw? Leave one source family
of corpus/real/ out at a time: train on the written corpus alone, and on the written corpus plus the
other real families (each real dialogue repeated 1 or 3 times), and score the left-out family, speakers
known and unknown; the rules alone, for comparison (they were never written against these families).
This is where REAL_WEIGHT (pipeline/tagging/training.py) was chosen; shared/eval plays no part.

    PYTHONPATH=. python bench/real_transfer.py [WEIGHT ...]     # default: 1 3; about 15 min on 2 cores
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pipeline.tagging.embed as embed  # noqa: E402
from pipeline.tagging import training  # noqa: E402
from pipeline.tagging.rules import default_rules  # noqa: E402
from pipeline.tagging.training import evaluate, load_corpus, train, unknown_speakers  # noqa: E402

FAMILIES = ("multiwoz", "camrest", "taskmaster", "casino", "abcd")


def fmt(r: dict) -> str:
    return "; ".join(f"{lang} {v['macro_f1']:.3f} / {v['furthest']:.2f}" for lang, v in r.items())


def rules_scores(dialogues: list[dict], rules) -> dict:
    from bench.learned_tagger import run
    return run(dialogues, rules, None)


def main(argv: list[str]) -> int:
    weights = [int(a) for a in argv] or [1, 3]
    embed._shared._cache_size = 10 ** 6  # every turn is embedded once for all the trainings
    rules = default_rules()
    written = load_corpus(real=False)
    real = [d for d in load_corpus() if d.get("writer") == "real"]
    quiet = lambda m: None  # noqa: E731
    training.REAL_WEIGHT = 1  # the weight is applied here, by repetition, to compare
    base = train(written, rules, log=quiet)
    print("| left out | n | speakers | rules | written corpus | " + " | ".join(f"+ other real ×{w}" for w in weights)
          + " |\n|---|---|---|---|---|" + "---|" * len(weights), flush=True)
    for fam in FAMILIES:
        held = [d for d in real if d.get("family") == fam]
        others = [{**d, "split": "train"} for d in real if d.get("family") != fam]
        models = [train(written, rules, extra=others * w, log=quiet) for w in weights]
        for spk, data in (("known", held), ("unknown", [unknown_speakers(d) for d in held])):
            cells = [fmt(rules_scores(data, rules)), fmt(evaluate(base, data, rules))]
            cells += [fmt(evaluate(m, data, rules)) for m in models]
            print(f"| {fam} | {len(held)} | {spk} | " + " | ".join(cells) + " |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
