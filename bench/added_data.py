"""Whether added training dialogues help on what they were not chosen on: bench/decoding.py's protocol
(each real train family left out in turn and scored by a model trained without it, and written dev, at
the shipped DECODING) run with and without the dialogues of the given files. The added dialogues' own
families are left out of the pooled figures in both runs, so the two runs score the same dialogues.
Never a blind set, never shared/eval.

    PYTHONPATH=. python bench/added_data.py corpus/real/en-redial-train.jsonl     # about 8 min on 2 cores
"""
import json
import sys
from pathlib import Path

# before bench/, whose pipeline.py would shadow the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import decoding as D  # noqa: E402

added = [json.loads(x) for f in sys.argv[1:] for x in Path(f).read_text().splitlines() if x.strip()]
ids = {d["id"] for d in added}
D.FAMILIES = tuple(f for f in D.FAMILIES if f not in {d.get("family") for d in added})
full = D.load_corpus
for name, corpus in (("without", lambda: [d for d in full() if d["id"] not in ids]), ("with", full)):
    D.load_corpus = corpus
    print(name, f"({len(added)} dialogues)" if name == "with" else "", json.dumps(D.shipped_scores()), flush=True)
