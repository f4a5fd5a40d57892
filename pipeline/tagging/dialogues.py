"""Tagging text dialogues in the ``shared/eval/dialogues.jsonl`` format (for ``callqa tag``).

One JSON object per line: ``{"id": "d1", "language": "en" | "ru" | "auto", "turns": [{"speaker":
"manager" | "client", "text": "..."}, ...]}``. Other keys (the eval labels) are ignored; a speaker
other than manager or client is "unknown". Where no turn names its speaker, who said each turn is
inferred from the words and turn-taking (``dialogue_speakers``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import IO, Iterable, Optional, Union

from models.events import Segment, Tagging

from .call import tag_call
from .rules import Rules, default_rules


def dialogue_speakers(turns: list[dict]) -> tuple[list[str], bool]:
    """Each turn's speaker, and whether they were inferred: as given; where no turn names one (a mono
    transcript by turns), inferred from what each turn says and from turn-taking (``roles.turn_roles``),
    "unknown" where that is not sure. Without the sentence encoder they stay unknown."""
    given = [t.get("speaker") if t.get("speaker") in ("manager", "client") else "unknown" for t in turns]
    if len(turns) < 2 or any(s != "unknown" for s in given):
        return given, False
    from pipeline.roles import turn_roles

    from .embed import EncoderMissing
    try:
        return turn_roles([t.get("text", "") or "" for t in turns]), True
    except EncoderMissing:
        return given, False


def dialogue_segments(turns: list[dict], turn_s: float = 3.0,
                      speakers: Optional[list[str]] = None) -> list[Segment]:
    """Turns have no timings: each gets turn_s seconds, back to back. ``speakers``: see dialogue_speakers."""
    speakers = speakers or dialogue_speakers(turns)[0]
    return [Segment(speaker=sp, start=i * turn_s, end=(i + 1) * turn_s, text=t.get("text", ""))
            for i, (t, sp) in enumerate(zip(turns, speakers))]


def tag_dialogue(d: dict, rules: Optional[Rules] = None, model=None) -> tuple[dict, Tagging]:
    rules = rules or default_rules()
    speakers, inferred = dialogue_speakers(d.get("turns", []))
    segs = dialogue_segments(d.get("turns", []), rules.flags.dialogue_turn_s, speakers)
    # roles read from the words are good enough for steps, not for who talked how much
    tg = tag_call(segs, d.get("language") or "auto", duration_s=None, rules=rules, model=model,
                  speakers_reliable=not inferred)
    steps_present = [s for s in ("greeting", "needs_discovery", "presentation", "objection_handling", "closing")
                     if tg.steps[s].present]
    out = {
        "id": d.get("id"),
        "per_turn": [u.step for u in tg.utterance_tags],
        "per_turn_all": [list(u.steps) for u in tg.utterance_tags],
        "per_turn_prob": [u.prob for u in tg.utterance_tags],
        "per_turn_uncertain": [u.uncertain for u in tg.utterance_tags],
        "per_turn_evidence": [u.evidence for u in tg.utterance_tags],
        "per_turn_speaker": speakers,
        "speakers_inferred": inferred,
        "steps_present": steps_present,
        "furthest_step": tg.furthest_step,
        "objections": [o.model_dump(mode="json") for o in tg.objections],
        "flags": [f.model_dump(mode="json") for f in tg.flags],
    }
    return out, tg


class DialogueError(ValueError):
    """A line of the input is not a dialogue; the message names file and line."""


def _lines(f: IO[str], name: str) -> Iterable[dict]:
    for n, line in enumerate(f, 1):
        line = line.strip()
        if not line:
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as e:
            raise DialogueError(f"{name}:{n}: not valid JSON: {e}") from None


def iter_jsonl(path: Path) -> Iterable[dict]:
    with Path(path).open(encoding="utf-8") as f:
        yield from _lines(f, str(path))


def read_dialogues(source: Union[Path, IO[str]]) -> list[dict]:
    """All dialogues of a JSONL file (or an open text stream), checked for the shape tagging needs."""
    name = str(source) if isinstance(source, Path) else "<stdin>"
    if isinstance(source, Path):
        with source.open(encoding="utf-8") as f:
            items = list(_lines(f, name))
    else:
        items = list(_lines(source, name))
    for n, d in enumerate(items, 1):
        where = f"{name}: dialogue {n}" + (f" ({d.get('id')})" if isinstance(d, dict) and d.get("id") else "")
        if not isinstance(d, dict) or not isinstance(d.get("turns"), list):
            raise DialogueError(f"{where}: expected an object with \"turns\": [{{\"speaker\": \"manager\", "
                                "\"text\": \"...\"}, ...]")
        for i, t in enumerate(d["turns"]):
            if not isinstance(t, dict) or not isinstance(t.get("text", ""), str):
                raise DialogueError(f"{where}: turns[{i}]: expected {{\"speaker\": ..., \"text\": \"...\"}}")
        if d.get("language") not in (None, "auto", "en", "ru"):
            raise DialogueError(f"{where}: language {d['language']!r}: use en, ru or auto")
    return items


def tag_dialogues(input_path, output_path, rules: Optional[Rules] = None) -> None:
    """Read dialogues (jsonl; labels ignored), write one tagging result per line (jsonl)."""
    rules = rules or default_rules()
    out_path = Path(output_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with out_path.open("w", encoding="utf-8") as out:
        for d in iter_jsonl(Path(input_path)):
            res, _ = tag_dialogue(d, rules)
            out.write(json.dumps(res, ensure_ascii=False) + "\n")
