"""Trainers editing the rules: `callqa tag` honours CALLQA_RULES_DIR, explanations say which phrase and which
context rule decided a turn, edits are validated when saved, and `callqa rules check` shows the state."""
from __future__ import annotations

import json
import re
import shutil
import time

from callqa.cli import main
from models.db import session_factory
from models.events import CallTranscribed
from pipeline.store import store_tagged
from pipeline.tagging import LiveRules, load_rules
from pipeline.tagging.explain import explain_call
from pipeline.tagging.retag import retag
from pipeline.tagging.rules import DEFAULT_CONFIG_DIR
from pipeline.tagging.tagger import CONTEXT_RULES
from tests.helpers import REPO
from tests.helpers import run_cli as _run_cli

import pytest


@pytest.fixture(autouse=True)
def rules_alone(monkeypatch):
    # these tests are about what the trainer-editable rules do; the learned tagger (the default) takes
    # the rules as inputs, and tests/test_learned.py covers it
    monkeypatch.setenv("CALLQA_TAGGER", "rules")


def run_cli(*args, env=None, **kw):
    return _run_cli(*args, env={"CALLQA_TAGGER": "rules", **(env or {})}, **kw)

PRICE_THEN_BYE = {"id": "see-you", "language": "en", "turns": [
    {"speaker": "manager", "text": "Hello, this is Ann from Acme."},
    {"speaker": "client", "text": "Hi."},
    {"speaker": "manager", "text": "We offer a warehouse platform, it costs 200 a month."},
    {"speaker": "client", "text": "And what does the price include?"},
    {"speaker": "manager", "text": "Great, see you soon."}]}


def rules_copy(tmp_path):
    d = tmp_path / "rules"
    shutil.copytree(DEFAULT_CONFIG_DIR / "lexicon", d / "lexicon")
    shutil.copy(DEFAULT_CONFIG_DIR / "flags.yaml", d / "flags.yaml")
    return d


def add_phrase(d, lang: str, category: str, phrase: str) -> None:
    f = d / "lexicon" / f"{lang}.yaml"
    text = f.read_text()
    head = f"  {category}:\n    phrases: ["
    assert text.count(head) == 1, head
    f.write_text(text.replace(head, f"{head}{phrase}, ", 1))


def write_jsonl(path, *dialogues):
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in dialogues))
    return path


def test_tag_uses_the_rules_in_CALLQA_RULES_DIR(tmp_path):
    d = rules_copy(tmp_path)
    dialogue = {"id": "x", "language": "en", "turns": [
        {"speaker": "manager", "text": "Hello, this is Ann from Acme."},
        {"speaker": "manager", "text": "Zebra protocol engaged."}]}
    src = write_jsonl(tmp_path / "in.jsonl", dialogue)
    packaged = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "a.jsonl"))
    assert packaged.returncode == 0, packaged.stderr
    assert json.loads((tmp_path / "a.jsonl").read_text())["per_turn"] == ["greeting", None]
    add_phrase(d, "en", "presentation", "zebra protocol")
    edited = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "b.jsonl"),
                     env={"CALLQA_RULES_DIR": str(d)})
    assert edited.returncode == 0, edited.stderr
    assert json.loads((tmp_path / "b.jsonl").read_text())["per_turn"] == ["greeting", "presentation"]
    # a broken copy is refused with the file and key, not used half-way
    (d / "flags.yaml").write_text("flags: {long_monologue: {max_s: soon}}\n")
    r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "c.jsonl"), env={"CALLQA_RULES_DIR": str(d)})
    assert r.returncode == 2 and "flags.yaml" in r.stderr and "long_monologue.max_s" in r.stderr
    assert "Traceback" not in r.stderr


def test_tag_explain_names_the_phrase_and_the_context_rule(tmp_path):
    """The issue's case: `see you soon` added to the closing phrases seems to do nothing."""
    d = rules_copy(tmp_path)
    add_phrase(d, "en", "closing", "see you soon")
    src = write_jsonl(tmp_path / "in.jsonl", PRICE_THEN_BYE)
    r = run_cli("tag", "--input", str(src), "--explain", "--output", str(tmp_path / "out.jsonl"),
                env={"CALLQA_RULES_DIR": str(d)})
    assert r.returncode == 0, r.stderr
    last = r.stdout.split("#4 ")[1]
    assert 'cues.closing: "see you soon" matched phrase "see you soon" -> closing' in last
    assert "answer-to-product-question: closing -> presentation" in last
    assert "=> presentation" in last
    ex = json.loads((tmp_path / "out.jsonl").read_text())["explanation"]
    entries = ex["segments"][4]["entries"]
    assert [(e["source"], e["name"]) for e in entries] == [("lexicon", "cues.closing"),
                                                          ("context", "answer-to-product-question")]
    assert entries[0]["data"]["phrase"] == "see you soon" and entries[0]["data"]["file"].endswith("en.yaml")


def test_explanation_of_overruled_and_wrong_speaker_phrases():
    from tests.test_tagging import segs
    ex = explain_call(segs([("client", "I'm not interested in a particular brand, I need a laptop."),
                            ("client", "It includes support?")]), "en")
    first = {(e.name, e.counted) for e in ex.segments[0].entries}
    assert ("objections.no_need", False) in first     # inside the longer needs phrase, which wins
    why = next(e for e in ex.segments[0].entries if e.name == "objections.no_need")
    assert "lies inside the longer" in why.detail and why.data["overruled_by"] == "cues.needs_statement"
    assert any(e.name == "cues.presentation" and not e.counted and "only for the manager" in e.detail
               for e in ex.segments[1].entries)


def test_unanswered_objection_when_the_manager_only_says_keep_in_touch(tmp_path):
    src = write_jsonl(tmp_path / "in.jsonl", {"id": "ru-think", "language": "ru", "turns": [
        {"speaker": "manager", "text": "Здравствуйте, меня зовут Анна, компания Полиграф."},
        {"speaker": "client", "text": "Здравствуйте."},
        {"speaker": "manager", "text": "Мы печатаем каталоги, тираж от ста штук, цена от двухсот рублей."},
        {"speaker": "client", "text": "Я подумаю."},
        {"speaker": "manager", "text": "Хорошо, будем на связи."}]})
    r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "out.jsonl"))
    assert r.returncode == 0, r.stderr
    out = json.loads((tmp_path / "out.jsonl").read_text())
    assert [(o["kind"], o["answered"]) for o in out["objections"]] == [("think", False)]
    assert "unanswered_objection" in {f["code"] for f in out["flags"]}
    assert out["per_turn"][-1] is None


def test_explain_a_stored_call(tmp_path, monkeypatch, capsys):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    monkeypatch.setenv("CALLQA_DATABASE_URL", url)
    d = rules_copy(tmp_path)
    ev = CallTranscribed.model_validate({
        "call_id": "pbx-7", "manager_id": "m-1", "language": "en", "recording_url": "file:///r.wav",
        "asr": {"engine": "faster-whisper", "model": "base", "compute_type": "int8", "audio_s": 20, "wall_s": 2},
        "segments": [{"speaker": ("manager", "client")[i % 2], "start": i * 4.0, "end": i * 4.0 + 3,
                      "text": t["text"]} for i, t in enumerate(PRICE_THEN_BYE["turns"])]})
    with session_factory(url).begin() as s:
        store_tagged(s, retag(ev, load_rules()))
    assert main(["explain", "pbx-7"]) == 0
    out = capsys.readouterr().out
    assert "#2 0:08 manager: We offer" in out and 'cues.presentation: "We offer" matched phrase "we offer"' in out
    assert "differ from the stored tags" not in out
    add_phrase(d, "en", "price", "what does the price include")   # a trainer's edit: now a price objection
    monkeypatch.setenv("CALLQA_RULES_DIR", str(d))
    assert main(["explain", "pbx-7", "--segment", "3"]) == 0
    out = capsys.readouterr().out
    assert re.search("^#3 ", out, re.M) and not re.search("^#2 ", out, re.M)
    assert "=> objection_handling   [stored: presentation; `callqa retag` applies the current rules]" in out
    assert main(["explain", "pbx-7", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["segments"][3]["stored_step"] == "presentation"
    assert data["segments"][3]["step"] == "objection_handling"
    assert main(["explain", "nope"]) == 2
    assert "no call 'nope'" in capsys.readouterr().err


def test_every_context_rule_is_documented_next_to_the_phrase_lists():
    doc = (REPO / "config" / "lexicon" / "CONTEXT_RULES.md").read_text()
    documented = set(re.findall(r"^\| `([a-z-]+)` \|", doc, re.M))
    code = (REPO / "pipeline" / "tagging" / "tagger.py").read_text()
    fired = set(re.findall(r'\.fired\("([a-z-]+)"', code))
    assert fired <= set(CONTEXT_RULES) and documented == set(CONTEXT_RULES)
    for lang in ("en", "ru"):
        header = (REPO / "config" / "lexicon" / f"{lang}.yaml").read_text()[:1500]
        assert "CONTEXT_RULES.md" in header and "callqa rules check" in header
        assert "Restart" not in header and "перезапустите" not in header


def test_live_rules_judge_an_edit_when_it_is_saved_and_log_the_recovery(tmp_path):
    d = rules_copy(tmp_path)
    errors, infos = [], []
    live = LiveRules(d, interval_s=3600, on_error=errors.append, on_info=infos.append)
    good = (d / "flags.yaml").read_text()
    (d / "flags.yaml").write_text("flags: {long_monologue: {max_s: soon}}\n")
    assert live.refresh() is False                     # what the worker's timer calls: no call needed
    assert len(errors) == 1 and "flags.yaml" in errors[0] and "long_monologue.max_s" in errors[0]
    assert "keeping the previous rules" in errors[0] and live.error
    assert live.refresh() is False and len(errors) == 1   # unchanged file: said once, not every tick
    (d / "flags.yaml").write_text(good.replace("max_s: 60", "max_s: 45"))
    assert live.refresh() is True
    assert live.error is None and live.get().flags.flags.long_monologue.max_s == 45
    assert infos and "fixed" in infos[-1]
    # the worker's way: a thread watches the files, nothing has to be tagged
    live.watch(interval_s=0.1)
    try:
        (d / "flags.yaml").write_text("flags: [broken\n")
        deadline = time.monotonic() + 10
        while len(errors) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(errors) == 2 and "flags.yaml" in errors[1]
    finally:
        live.stop()


def test_rules_check(tmp_path):
    d = rules_copy(tmp_path)
    r = run_cli("rules", "check", env={"CALLQA_RULES_DIR": str(d)})
    assert r.returncode == 0 and "OK: the rules validate" in r.stdout and str(d) in r.stdout
    assert re.search(r"en: greeting \d+\+\d+", r.stdout)
    (d / "lexicon" / "ru.yaml").write_text((d / "lexicon" / "ru.yaml").read_text().replace(
        "  closing:\n", "  closing_typo:\n", 1))
    r = run_cli("rules", "check", env={"CALLQA_RULES_DIR": str(d)})
    assert r.returncode == 2 and "NOT VALID" in r.stderr and "ru.yaml: cues.closing_typo" in r.stderr
    assert "Traceback" not in r.stderr
    state = json.loads(run_cli("rules", "check", "--format", "json", env={"CALLQA_RULES_DIR": str(d)}).stdout)
    assert state["ok"] is False and "closing_typo" in state["error"]
