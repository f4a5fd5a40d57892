"""How many times each real dialogue counts in training (pipeline/tagging/training.py, REAL_WEIGHT), scored
by bench/decoding.py's protocol (each real train family left out in turn, and written dev) at the shipped
DECODING. Never a blind set, never shared/eval.

    PYTHONPATH=. python bench/real_weight.py 2 3 4     # about 4 min a weight on 2 cores
"""
import json
import sys
from pathlib import Path

# before bench/, whose pipeline.py would shadow the package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pipeline.tagging.training as T  # noqa: E402
from bench import decoding as D  # noqa: E402

for arg in sys.argv[1:]:
    T.REAL_WEIGHT = int(arg)
    print(arg, json.dumps(D.shipped_scores()), flush=True)
