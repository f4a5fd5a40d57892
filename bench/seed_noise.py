"""How far the left-out protocol moves when nothing but the training seed changes.

bench/decoding.py's protocol (each real train family left out in turn and scored by a model trained without
it, and written dev, at the shipped DECODING) run with the same corpus and other values of ``train``'s seed.
The seed only decides which training dialogues get an ASR-style copy's fillers where, and which get a
speaker-less copy; the softmax fit itself is deterministic (L-BFGS). Adding or removing dialogues moves the
same random stream, so a with/without comparison (bench/added_data.py) carries this noise as well as the
effect of the data. Never a blind set, never shared/eval.

    PYTHONPATH=. python bench/seed_noise.py [SEED ...]     # about 6.5 min a seed on 2 cores (13 = shipped)
"""
import json
import sys
from pathlib import Path

# before bench/, whose pipeline.py would shadow the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import decoding as D  # noqa: E402

shipped = D.train
for seed in [int(a) for a in sys.argv[1:]] or [13, 14, 15]:
    D.train = lambda corpus, rules=None, extra=(), log=print, _s=seed: shipped(corpus, rules, extra, seed=_s, log=log)
    print(f"seed {seed}", json.dumps(D.shipped_scores()), flush=True)
