"""The labelled corpus is consistent with the labelling guideline's format: one label per turn, the
primary label first among the turn's functions (a turn whose primary is null may still list one, as a
support caller's "Hello, my card is blocked" does), steps present the union of them, and the furthest step
the latest of those in the canonical order. A broken line would train the model on wrong targets."""
import json
from pathlib import Path

import pytest

from models.events import STEPS

ROOT = Path(__file__).resolve().parents[1] / "corpus"
FILES = sorted([ROOT / "dialogues.jsonl", *ROOT.glob("real/*.jsonl"), *ROOT.glob("real/not-used/*.jsonl"),
                *ROOT.glob("not-used/*.jsonl")])


def problems(d: dict) -> list[str]:
    out = []
    turns, lab = d["turns"], d["labels"]
    if not turns:
        out.append("no turns")
    if len(lab["per_turn"]) != len(turns) or len(lab["per_turn_all"]) != len(turns):
        return out + [f"{len(turns)} turns, {len(lab['per_turn'])} labels, {len(lab['per_turn_all'])} label lists"]
    for i, (p, every) in enumerate(zip(lab["per_turn"], lab["per_turn_all"])):
        if p is not None and p not in STEPS or any(s not in STEPS for s in every):
            out.append(f"turn {i}: a label that is no step ({p!r}, {every!r})")
        elif p is not None and (not every or every[0] != p):  # a null turn may still carry a greeting
            out.append(f"turn {i}: primary {p!r} is not first of {every!r}")
    present = {s for every in lab["per_turn_all"] for s in every}
    if "steps_present" in lab and set(lab["steps_present"]) != present:
        out.append(f"steps_present {lab['steps_present']} is not the union of the turns' {sorted(present)}")
    if "furthest_step" in lab and lab["furthest_step"] != max(present, key=STEPS.index, default=None):
        out.append(f"furthest_step {lab['furthest_step']!r} is not the latest of {sorted(present)}")
    return out


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_corpus_labels_are_consistent(path):
    bad, ids = {}, set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        d = json.loads(line)
        assert d["id"] not in ids, f"{path.name}:{n}: id {d['id']} twice"
        ids.add(d["id"])
        if p := problems(d):
            bad[d["id"]] = p
    assert ids and not bad, bad


def test_the_check_finds_a_broken_label():
    d = {"turns": [{"speaker": "manager", "text": "Hello"}, {"speaker": "client", "text": "I'll take it"}],
         "labels": {"per_turn": ["greeting", "closing"], "per_turn_all": [["greeting"], ["closing"]],
                    "steps_present": ["greeting", "closing"], "furthest_step": "closing"}}
    assert problems(d) == []
    assert problems({**d, "labels": {**d["labels"], "furthest_step": "greeting"}})
    assert problems({**d, "labels": {**d["labels"], "per_turn_all": [["greeting"], []]}})
    assert problems({**d, "labels": {**d["labels"], "per_turn": ["greeting"]}})
