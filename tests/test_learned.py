"""The learned step tagger: its model file, how a worker follows a new one, `callqa tag` and
`callqa train`, and its scores on the corpus's blind test split (written by a writer it never saw)."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest

from pipeline.tagging.dialogues import dialogue_segments
from pipeline.tagging.call import tag_call
from pipeline.tagging.learned import PACKAGED, LiveModel, ModelError, StepModel
from pipeline.tagging.rules import default_rules
from pipeline.tagging.training import CORPUS, evaluate, load_corpus, score
from tests.helpers import run_cli

DIALOGUE = {"id": "x", "language": "en", "turns": [
    {"speaker": "manager", "text": "Hi, this is Ann from Acme Freight, do you have a minute?"},
    {"speaker": "client", "text": "Sure, go ahead."},
    {"speaker": "manager", "text": "How many pallets do you ship a month, and where to?"},
    {"speaker": "client", "text": "Around two hundred, mostly to Chicago."},
    {"speaker": "client", "text": "Honestly, that is too expensive for us, we pay less now."},
    {"speaker": "manager", "text": "I hear you. Our rates include insurance and tracking, so most clients save overall."},
    {"speaker": "manager", "text": "Can I send you a quote today and call you Thursday at ten to go through it?"},
    {"speaker": "client", "text": "Okay, Thursday at ten works."}]}


def test_the_packaged_model_tags_a_call_with_probabilities_and_evidence():
    model = StepModel.load(PACKAGED)
    tg = tag_call(dialogue_segments(DIALOGUE["turns"]), "en", None, default_rules(), model)
    steps = [u.step for u in tg.utterance_tags]
    assert steps[0] == "greeting" and steps[2] == "needs_discovery" and steps[6] == "closing"
    assert all(u.prob is not None and 0 <= u.prob <= 1 for u in tg.utterance_tags)
    assert tg.furthest_step == "closing"
    assert [o.kind for o in tg.objections] == ["price"]  # the rules still name the kind
    assert all(u.evidence for u in tg.utterance_tags if u.step)  # a phrase, or "like: <example>"


def test_an_unanswered_objection_right_before_a_closing_stays_an_objection():
    """The demo's Anna: the client says it is too expensive, the manager goes straight to closing. With the
    transition priors at the weight chosen on written dev alone, the decoder made the objection closing and
    the weak stage a head should see (objection handling) vanished."""
    turns = [("manager", "Здравствуйте! Меня зовут Анна Петрова, компания Вектор. Вам удобно сейчас говорить?"),
             ("client", "Да, здравствуйте, слушаю вас."),
             ("manager", "Какой у вас объём заказов в месяц?"),
             ("client", "Около тысячи заказов в месяц."),
             ("manager", "У нас есть система учёта для склада. Стоимость сто двадцать тысяч рублей в год."),
             ("client", "Честно говоря, это дорого."),
             ("manager", "Хорошо. Я вышлю коммерческое предложение на почту. Давайте созвонимся в четверг, "
                         "в одиннадцать часов."),
             ("client", "Ладно, давайте.")]
    segs = dialogue_segments([{"speaker": sp, "text": t} for sp, t in turns])
    model = StepModel.load(PACKAGED)
    tg = tag_call(segs, "ru", None, default_rules(), model)
    assert [u.step for u in tg.utterance_tags][5:7] == ["objection_handling", "closing"]
    assert [(o.kind, o.answered) for o in tg.objections] == [("price", False)]
    model.meta.update(prior_weight=0.5, transition_weight=1.5)  # the old setting: the regression this guards
    assert tag_call(segs, "ru", None, default_rules(), model).utterance_tags[5].step != "objection_handling"


def test_the_clients_reply_to_an_answered_objection_is_not_another_objection():
    """Client turns take the step of their exchange (the guideline's rule 4), so the model tags "Good to
    know." after the manager's answer objection handling; it was counted as a second objection, of kind
    "other", left unanswered, and the manager's objection score halved."""
    turns = [("manager", "Hello, this is Ivan Sokolov from Vector, is now a good time to talk?"),
             ("client", "Yes, I have a few minutes."),
             ("manager", "How many orders do you ship per day, and what budget do you have for new software?"),
             ("client", "About 500 orders a day. Our budget is around $3,000 a year."),
             ("manager", "We offer a warehouse system with barcode scanning. It costs $2,400 a year."),
             ("client", "I see. I'll think about it."),
             ("manager", "Just remember there is a free trial, so there is no risk at all."),
             ("client", "Good to know."),
             ("manager", "Okay, let's keep in touch. Have a nice day!")]
    segs = dialogue_segments([{"speaker": sp, "text": t} for sp, t in turns])
    tg = tag_call(segs, "en", None, default_rules(), StepModel.load(PACKAGED))
    assert tg.utterance_tags[7].step == "objection_handling"  # the exchange's step, as the guideline says
    assert [(o.kind, o.answered, o.segment) for o in tg.objections] == [("think", True, 5)]
    assert tg.steps["objection_handling"].quality == "good"


def test_a_broken_model_file_is_refused_with_advice(tmp_path):
    bad = tmp_path / "m.npz"
    bad.write_bytes(PACKAGED.read_bytes()[:5000])  # truncated
    with pytest.raises(ModelError, match="callqa train"):
        StepModel.load(bad)
    np.savez(tmp_path / "other.npz", weights=np.zeros(3))
    with pytest.raises(ModelError):
        StepModel.load(tmp_path / "other.npz")
    with pytest.raises(ModelError, match="no step model"):
        StepModel.load(tmp_path / "missing.npz")


def test_a_running_worker_keeps_its_model_when_a_new_file_is_broken_and_takes_a_good_one(tmp_path):
    path = tmp_path / "step_model.npz"
    shutil.copy(PACKAGED, path)
    errors, infos = [], []
    live = LiveModel([path], interval_s=0, on_error=errors.append, on_info=infos.append)
    first = live.get()
    path.write_bytes(b"not a model")
    assert live.get() is first and errors and "previous model stays" in errors[-1]
    m = StepModel.load(PACKAGED)
    m.meta["version"] = "retrained"
    m.save(path)
    assert live.get().meta["version"] == "retrained" and live.error is None and infos


def test_callqa_tag_with_the_learned_tagger_or_the_rules(tmp_path):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(DIALOGUE) + "\n")
    r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "a.jsonl"))  # the default: learned
    assert r.returncode == 0, r.stderr
    learned = json.loads((tmp_path / "a.jsonl").read_text())
    assert all(p is not None for p in learned["per_turn_prob"])
    for args, env in ((["--tagger", "rules"], None), ([], {"CALLQA_TAGGER": "rules"})):
        r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "b.jsonl"), *args, env=env)
        assert r.returncode == 0, r.stderr
        assert all(p is None for p in json.loads((tmp_path / "b.jsonl").read_text())["per_turn_prob"])
    r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "c.jsonl"), "--tagger", "learned",
                env={"CALLQA_TAGGER_MODEL": str(tmp_path / "nope.npz")})
    assert r.returncode == 2 and "no step model" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.slow
def test_on_the_blind_test_split_the_model_beats_the_rules():
    """Dialogues by a writer the model never saw (split test); the figures are in bench/README.md."""
    test = [d for d in load_corpus() if d["split"] == "test"]
    rules = default_rules()
    learned = evaluate(StepModel.load(PACKAGED), test, rules)
    from pipeline.tagging.dialogues import tag_dialogue
    for lang in ("en", "ru"):
        ds = [d for d in test if d["language"] == lang]
        res = [tag_dialogue(d, rules)[0] for d in ds]
        by_rules = score(ds, [r["per_turn"] for r in res], [r["per_turn_all"] for r in res])
        assert learned[lang]["macro_f1"] >= 0.75, learned
        assert learned[lang]["macro_f1"] > by_rules["macro_f1"] + 0.05, (learned, by_rules)


@pytest.mark.slow
def test_callqa_train_installs_a_model_and_refuses_a_worse_one(tmp_path):
    corpus = load_corpus(CORPUS)
    small = ([d for d in corpus if d["split"] == "train"][::12] + [d for d in corpus if d["split"] == "dev"][::10]
             + [d for d in corpus if d["split"] == "test"][::10])
    src = tmp_path / "small.jsonl"
    src.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in small))
    home = tmp_path / "home"
    env = {"CALLQA_HOME": str(home)}
    r = run_cli("train", "--corpus", str(src), env=env, timeout=900)
    # on a twelfth of the corpus it scores below the packaged model: refused, then installed with --force
    assert r.returncode == 2 and "scores worse" in r.stderr, r.stdout + r.stderr
    r = run_cli("train", "--corpus", str(src), "--force", env=env, timeout=900)
    assert r.returncode == 0, r.stderr + r.stdout
    installed = home / "models" / "step_model.npz"
    assert installed.is_file() and "blind test split" in r.stdout
    assert StepModel.load(installed).meta["corpus_dialogues"] == len(small)
    # a model trained on one dialogue scores worse than the installed one
    one = tmp_path / "one.jsonl"
    one.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in
                           [small[0]] + [d for d in small if d["split"] == "test"]))
    before = installed.read_bytes()
    r = run_cli("train", "--corpus", str(one), env=env, timeout=900)
    assert r.returncode == 2 and "scores worse" in r.stderr, r.stdout + r.stderr
    assert installed.read_bytes() == before


def test_the_sentence_cache_stays_bounded_and_a_batch_larger_than_it_is_encoded_whole():
    from pipeline.tagging.embed import Encoder
    texts = [f"turn number {i} of a long call" for i in range(12)]
    small, big = Encoder(cache_size=4), Encoder(cache_size=100)
    a, b = small.encode(texts), big.encode(texts)
    assert a.shape == (12, 512) and np.allclose(a, b, atol=1e-5)
    assert len(small._cache) == 4 and len(big._cache) == 12
    assert np.allclose(small.encode(texts[-2:] + texts[:1]), b[[10, 11, 0]], atol=1e-5)


def test_training_reaches_the_same_model_whatever_the_row_order():
    """The fit is solved to the optimum of a convex objective, so the order of the rows (like the BLAS
    thread count, which changes the order of float sums) does not change the model: `callqa train` on
    the same corpus gives the same model on any machine. 400 steps of Adam did not: its normalised steps
    turn rounding on near-zero gradients into full moves."""
    from pipeline.tagging.training import fit_softmax

    rng = np.random.default_rng(7)
    n, d, k = 3000, 120, 6
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, :k] + 0.8 * rng.normal(size=(n, k))).argmax(axis=1)  # 6 informative features, the rest noise
    w = rng.uniform(0.5, 2.0, n).astype(np.float32)
    perm = rng.permutation(n)
    W1, b1, _, _ = fit_softmax(x, y, w)
    W2, b2, _, _ = fit_softmax(x[perm], y[perm], w[perm], seed=99)
    assert np.abs(W1 - W2).max() < 1e-4 and np.abs(b1 - b2).max() < 1e-4
    assert (np.abs(W1[:k]).max(axis=1) > 5 * np.abs(W1[k:]).max()).all()  # it learned the informative ones


def test_callqa_train_on_the_projects_corpus_gives_the_shipped_model(tmp_path):
    """The loop a trainer relies on: corrections join the corpus and `callqa train` retrains. Retraining
    the shipped recipe must give the shipped model (else the gate compares a random draw with another
    and refuses good retrains), and it must not be refused. It also fails when the rules' cues, the corpus
    or the features change without the packaged model being retrained."""
    home = tmp_path / "home"
    r = run_cli("train", "--no-corrections", env={"CALLQA_HOME": str(home)}, timeout=1500)
    assert r.returncode == 0, r.stdout + r.stderr
    # the blind test split's written and real sets, each with the new and the current model's figures
    for name in ("written (100 dialogues)", "real, camrest (35 dialogues)", "real, redial (47 dialogues)"):
        assert f"  {name}:\n    new " in r.stdout and r.stdout.split(f"  {name}:\n", 1)[1].split("\n")[1].startswith(
            "    current "), r.stdout
    new, shipped = StepModel.load(home / "models" / "step_model.npz"), StepModel.load(PACKAGED)
    assert np.abs(new.weights - shipped.weights).max() < 1e-3
    assert np.abs(new.bias - shipped.bias).max() < 1e-3
    assert np.allclose(new.transitions, shipped.transitions) and new.cue_names == shipped.cue_names
    assert new.meta["corpus"] == "corpus/dialogues.jsonl"
    assert abs(new.meta["dev"]["macro_f1"] - shipped.meta["dev"]["macro_f1"]) < 0.005


def test_who_said_each_turn_of_a_dialogue_without_speakers_is_read_from_the_words_and_turn_taking():
    """The written dev split (the role model never trained on it), speakers removed: most turns get a
    speaker back, nearly all of them right; what is not sure stays unknown (bench/speaker_inference.py)."""
    from pipeline.roles import turn_roles
    dev = [d for d in load_corpus(real=False) if d["split"] == "dev"]
    given = right = turns = 0
    for d in dev:
        inferred = turn_roles([t["text"] for t in d["turns"]])
        turns += len(inferred)
        for a, t in zip(inferred, d["turns"]):
            if a != "unknown":
                given += 1
                right += a == t["speaker"]
    assert given / turns > 0.5 and right / given > 0.93, (given, right, turns)
    assert turn_roles(["Hello?"]) == ["unknown"]  # one turn: no turn-taking to go by


def test_callqa_tag_infers_speakers_only_where_no_turn_names_one(tmp_path):
    bare = {**DIALOGUE, "id": "bare", "turns": [{"text": t["text"]} for t in DIALOGUE["turns"]]}
    some = {**DIALOGUE, "id": "some", "turns": [{"text": t["text"]} for t in DIALOGUE["turns"]]}
    some["turns"][0]["speaker"] = "manager"
    src = tmp_path / "in.jsonl"
    src.write_text("".join(json.dumps(d) + "\n" for d in (DIALOGUE, bare, some)))
    r = run_cli("tag", "--input", str(src), "--output", str(tmp_path / "out.jsonl"), "--explain")
    assert r.returncode == 0, r.stderr
    named, inferred, partial = [json.loads(x) for x in (tmp_path / "out.jsonl").read_text().splitlines()]
    for res in (named, inferred, partial):  # --explain reads the speakers and steps the tags were made with
        segs = res["explanation"]["segments"]
        assert [s["speaker"] for s in segs] == res["per_turn_speaker"]
        assert [s["step"] for s in segs] == res["per_turn"]
    assert not named["speakers_inferred"] and named["per_turn_speaker"] == [t["speaker"] for t in DIALOGUE["turns"]]
    assert inferred["speakers_inferred"]
    assert inferred["per_turn_speaker"][:4] == ["manager", "client", "manager", "client"]
    # the client's two turns in a row (a question, then the price objection): turn-taking alone would give
    # the objection to the manager; not sure, they stay unknown rather than wrong
    assert all(a in ("unknown", t["speaker"]) for a, t in zip(inferred["per_turn_speaker"], DIALOGUE["turns"]))
    assert set(inferred["per_turn_speaker"]) <= {"manager", "client", "unknown"}
    assert not partial["speakers_inferred"] and partial["per_turn_speaker"][1:] == ["unknown"] * 7


@pytest.mark.slow
def test_without_speakers_the_inferred_ones_tag_better_than_none(monkeypatch):
    """The written dev split, speakers removed: tagged through `callqa tag`'s reading (speakers inferred)
    against every turn unknown (as before)."""
    import pipeline.tagging.training as training
    dev = [d for d in load_corpus(real=False) if d["split"] == "dev"]
    model, rules = StepModel.load(PACKAGED), default_rules()
    inferred = evaluate(model, dev, rules, speakers_known=False)
    monkeypatch.setattr(training, "dialogue_speakers", lambda turns: (["unknown"] * len(turns), False))
    unknown = evaluate(model, dev, rules, speakers_known=False)
    gain = sum(inferred[lang]["macro_f1"] - unknown[lang]["macro_f1"] for lang in ("en", "ru"))
    assert gain > 0.03, (inferred, unknown)
    assert all(inferred[lang]["macro_f1"] > unknown[lang]["macro_f1"] - 0.01 for lang in ("en", "ru")), (inferred, unknown)


def test_a_model_file_from_before_the_call_context_still_loads_and_tags(tmp_path):
    """A model a trainer installed before the call's mean embedding was a feature (no "call_context" in its
    header, DIM columns fewer) must keep working after an upgrade: a worker refuses to start without one."""
    from pipeline.tagging.embed import DIM
    m = StepModel.load(PACKAGED)
    assert m.call_context
    meta = {k: v for k, v in m.meta.items() if k != "call_context"}
    old = StepModel(m.weights[:-DIM], m.bias, m.mean[:-DIM], m.scale[:-DIM], m.transitions, m.cue_names, meta,
                    m.ex_emb, m.ex_text, m.ex_label, m.ex_lang)
    old.save(tmp_path / "old.npz")
    loaded = StepModel.load(tmp_path / "old.npz")
    assert not loaded.call_context
    tg = tag_call(dialogue_segments(DIALOGUE["turns"]), "en", None, default_rules(), loaded)
    assert len(tg.utterance_tags) == len(DIALOGUE["turns"]) and tg.utterance_tags[0].step == "greeting"
    # a header that claims the call context over arrays without it is a damaged file, not a model
    StepModel(old.weights, old.bias, old.mean, old.scale, old.transitions, old.cue_names,
              {**meta, "call_context": True}).save(tmp_path / "bad.npz")
    with pytest.raises(ModelError, match="do not fit together"):
        StepModel.load(tmp_path / "bad.npz")
