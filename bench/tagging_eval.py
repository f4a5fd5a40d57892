"""Evaluate the sales-step tagger on labelled dialogues (shared/eval/dialogues.jsonl format).

Per language:
* per-turn macro-F1 over the 5 steps + null, crediting a prediction that is in the
  turn's ``per_turn_all`` (the guideline's optional credit);
* per-step precision/recall of ``steps_present``;
* ``furthest_step`` accuracy;
* a confusion matrix (gold ``per_turn`` rows x predicted columns, after the credit).

Also (``--full``): the same metrics per source tier (A/B/C, parsed at run time from the
table in ``shared/eval/SOURCES.md``; the hand-written dev set ``tests/data/tagging_dev.jsonl``
is its own tier "dev"; the blind set ``tests/data/tagging_blind.jsonl`` is tier "blind", also split into
its tune half (ids ending 01-10) and holdout half (11-20)), the ASR-vs-reference comparison on the two synthetic stereo calls
(ASR result cached in /tmp) and a throughput figure (tagging a synthetic 10-minute call).

Usage:
  python bench/tagging_eval.py [DIALOGUES.jsonl] [--errors]     one file, per language
  python bench/tagging_eval.py --full [--write-readme]           the whole report
    (--write-readme replaces the "Tagging" section of bench/README.md between
     <!-- tagging:start --> and <!-- tagging:end -->)
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from pipeline.tagging.dialogues import iter_jsonl, tag_dialogue  # noqa: E402
from pipeline.tagging.rules import Rules, default_rules  # noqa: E402

STEPS = ("greeting", "needs_discovery", "presentation", "objection_handling", "closing")
CLASSES = STEPS + ("null",)
SHARED = Path(os.environ.get("CALLQA_SHARED_DIR") or ROOT.parent / "shared")
DEFAULT_DATA = SHARED / "eval" / "dialogues.jsonl"
SOURCES_MD = SHARED / "eval" / "SOURCES.md"
DEV_DATA = ROOT / "tests" / "data" / "tagging_dev.jsonl"
BLIND_DATA = ROOT / "tests" / "data" / "tagging_blind.jsonl"
SYNTH_DIR = SHARED / "audio" / "synthetic"
README = ROOT / "bench" / "README.md"
MARK_START, MARK_END = "<!-- tagging:start -->", "<!-- tagging:end -->"
SHORT = {"greeting": "greet", "needs_discovery": "needs", "presentation": "pres",
         "objection_handling": "objection", "closing": "closing", "null": "null"}


def _c(x: Optional[str]) -> str:
    return x if x is not None else "null"


def load_tiers(path: Path = SOURCES_MD) -> dict[str, str]:
    """Dialogue id -> tier letter, parsed from the markdown table of SOURCES.md.

    The "tier / what" cell starts with the tier ("A: ...", "B: ...", "C: ..."); a hedged
    "A?/C: ..." is counted under its last letter (C)."""
    tiers: dict[str, str] = {}
    if not Path(path).is_file():
        return tiers
    header = None
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            header = None if not line.strip() else header
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if header is None:
            header = [c.lower() for c in cells]
            continue
        if set(line.replace("|", "").strip()) <= set("-: "):
            continue
        row = dict(zip(header, cells))
        tier_cell = next((v for k, v in row.items() if k.startswith("tier")), "")
        m = re.match(r"^([ABC?/]+):", tier_cell)
        if row.get("id") and m:
            letters = re.findall(r"[ABC]", m.group(1))
            if letters:
                tiers[row["id"]] = letters[-1]
    return tiers


def evaluate(path: Path = DEFAULT_DATA, rules: Optional[Rules] = None, group=None) -> dict:
    """Metrics per group; the default group is the dialogue's language.

    ``group(d)`` may return another key (e.g. "en/A") to split the results further."""
    rules = rules or default_rules()
    group = group or (lambda d: d.get("language", "en"))
    by_lang: dict[str, dict] = {}
    for d in iter_jsonl(Path(path)):
        lang = group(d)
        r = by_lang.setdefault(lang, {"pairs": [], "calls": [], "errors": [], "n": 0})
        r["n"] += 1
        pred, _ = tag_dialogue(d, rules)
        lab = d["labels"]
        for i, (turn, g, gall, p) in enumerate(zip(d["turns"], lab["per_turn"], lab["per_turn_all"], pred["per_turn"])):
            credited = p if (p is not None and p in (gall or [])) or p == g else g
            r["pairs"].append((_c(credited), _c(p)))
            if _c(credited) != _c(p):
                r["errors"].append((d["id"], i, turn["speaker"], _c(g), gall, _c(p), turn["text"][:140]))
        r["calls"].append((set(lab["steps_present"]), set(pred["steps_present"]),
                           lab["furthest_step"], pred["furthest_step"], d["id"]))
    results = {}
    for lang, r in sorted(by_lang.items()):
        pairs = r["pairs"]
        per_class = {}
        f1s = []
        for c in CLASSES:
            tp = sum(1 for g, p in pairs if g == c and p == c)
            fp = sum(1 for g, p in pairs if g != c and p == c)
            fn = sum(1 for g, p in pairs if g == c and p != c)
            if tp + fp + fn == 0:
                continue
            prec = tp / (tp + fp) if tp + fp else 0.0
            rec = tp / (tp + fn) if tp + fn else 0.0
            f1 = 2 * prec * rec / (prec + rec) if prec + rec else 0.0
            per_class[c] = {"p": prec, "r": rec, "f1": f1, "support": tp + fn}
            f1s.append(f1)
        step_pr = {}
        for s in STEPS:
            tp = sum(1 for g, p, *_ in r["calls"] if s in g and s in p)
            fp = sum(1 for g, p, *_ in r["calls"] if s not in g and s in p)
            fn = sum(1 for g, p, *_ in r["calls"] if s in g and s not in p)
            step_pr[s] = {"p": tp / (tp + fp) if tp + fp else 1.0, "r": tp / (tp + fn) if tp + fn else 1.0,
                          "support": tp + fn}
        furthest_ok = sum(1 for *_, gf, pf, _id in r["calls"] if gf == pf)
        confusion = {g: {p: 0 for p in CLASSES} for g in CLASSES}
        for g, p in pairs:
            confusion[g][p] += 1
        results[lang] = {
            "dialogues": r["n"], "turns": len(pairs),
            "macro_f1": sum(f1s) / len(f1s) if f1s else 0.0,
            "accuracy": sum(1 for g, p in pairs if g == p) / len(pairs) if pairs else 0.0,
            "per_class": per_class, "steps_present": step_pr,
            "furthest_accuracy": furthest_ok / len(r["calls"]) if r["calls"] else 0.0,
            "furthest_wrong": [(i, gf, pf) for *_, gf, pf, i in r["calls"] if gf != pf],
            "confusion": confusion, "errors": r["errors"],
        }
    return results


def report(results: dict, errors: bool = False, title: Optional[str] = "# Sales-step tagger evaluation",
           level: int = 2) -> str:
    out = [title, ""] if title else []
    h = "#" * level
    for lang, r in results.items():
        out += [f"{h} {lang} ({r['dialogues']} dialogues, {r['turns']} turns)", "",
                f"* per-turn macro-F1 (5 steps + null, per_turn_all credit): **{r['macro_f1']:.3f}**",
                f"* per-turn accuracy: {r['accuracy']:.3f}",
                f"* furthest_step accuracy: **{r['furthest_accuracy']:.3f}**", ""]
        out += ["| class | P | R | F1 | support |", "|---|---|---|---|---|"]
        for c, m in r["per_class"].items():
            out.append(f"| {c} | {m['p']:.2f} | {m['r']:.2f} | {m['f1']:.2f} | {m['support']} |")
        out += ["", "steps_present per step:", "", "| step | P | R | support |", "|---|---|---|---|"]
        for s, m in r["steps_present"].items():
            out.append(f"| {s} | {m['p']:.2f} | {m['r']:.2f} | {m['support']} |")
        out += ["", "Confusion (rows gold, columns predicted):", "",
                "| gold \\ pred | " + " | ".join(SHORT[c] for c in CLASSES) + " |",
                "|---" * (len(CLASSES) + 1) + "|"]
        for g in CLASSES:
            out.append(f"| {SHORT[g]} | " + " | ".join(str(r["confusion"][g][p]) for p in CLASSES) + " |")
        if r["furthest_wrong"]:
            out += ["", "furthest_step wrong: " + "; ".join(f"{i}: gold {g}, pred {p}" for i, g, p in r["furthest_wrong"])]
        if errors and r["errors"]:
            out += ["", "Wrong turns:", ""]
            for did, i, sp, g, gall, p, txt in r["errors"]:
                out.append(f"* {did}#{i} {sp}: gold {g} {gall} pred {p}: {txt}")
        out.append("")
    return "\n".join(out)


def summary_table(groups: dict[str, dict]) -> list[str]:
    """One line per group: sizes, macro-F1, accuracy, furthest accuracy, steps_present P/R."""
    out = ["| set | dialogues | turns | macro-F1 | turn acc. | furthest acc. | steps_present P / R (greet, needs, pres, obj, close) |",
           "|---|---|---|---|---|---|---|"]
    for name, r in groups.items():
        pr = ", ".join(f"{m['p']:.2f}/{m['r']:.2f}" if m["support"] or m["p"] < 1 else "–"
                       for m in r["steps_present"].values())
        out.append(f"| {name} | {r['dialogues']} | {r['turns']} | {r['macro_f1']:.3f} | {r['accuracy']:.3f} | "
                   f"{r['furthest_accuracy']:.3f} | {pr} |")
    return out


# ---- ASR transcripts of the synthetic stereo calls vs their reference turns -----------------

def _segments(items):
    from models.events import Segment
    return [Segment(speaker=x["speaker"], start=float(x["start"]), end=float(x["end"]), text=x["text"])
            for x in items]


def asr_segments(lang: str, cache_dir: Path = Path("/tmp")) -> tuple[list[dict], dict]:
    """Both channels of synth_call_<lang>_8k_stereo.wav transcribed (0 = manager, 1 = client) and
    merged by start time. Cached in /tmp by file size/mtime and ASR options."""
    from dataclasses import asdict

    from pipeline.asr import AsrOptions, transcribe_channel

    wav = SYNTH_DIR / f"synth_call_{lang}_8k_stereo.wav"
    opts = AsrOptions()
    st = wav.stat()
    key = {"wav": str(wav), "size": st.st_size, "mtime": st.st_mtime, "options": asdict(opts)}
    cache = cache_dir / f"callqa_tagging_asr_{lang}.json"
    if cache.is_file():
        try:
            data = json.loads(cache.read_text(encoding="utf-8"))
            if data.get("key") == key:
                return data["segments"], {**data["info"], "cached": True}
        except (ValueError, KeyError):
            pass
    segs, wall, audio_s = [], 0.0, 0.0
    for ch, sp in ((0, "manager"), (1, "client")):
        r = transcribe_channel(str(wav), ch, lang, opts)
        wall += r.wall_s
        audio_s = max(audio_s, r.audio_s)
        segs += [{"speaker": sp, "start": t.start, "end": t.end, "text": t.text} for t in r.turns]
    segs.sort(key=lambda x: (x["start"], x["end"]))
    info = {"model": opts.model, "compute_type": opts.compute_type, "asr_wall_s": round(wall, 2),
            "audio_s": round(audio_s, 2)}
    cache.write_text(json.dumps({"key": key, "segments": segs, "info": info}, ensure_ascii=False, indent=1),
                     encoding="utf-8")
    return segs, {**info, "cached": False}


def _summ(tg) -> dict:
    return {
        "steps_present": [s for s in STEPS if tg.steps[s].present],
        "furthest_step": tg.furthest_step,
        "first_at": {s: tg.steps[s].first_at for s in STEPS},
        "quality": {s: tg.steps[s].quality for s in STEPS},
        "objections": [(o.kind, o.text, o.answered) for o in tg.objections],
        "per_seg": [u.step for u in tg.utterance_tags],
    }


def asr_comparison(langs=("en", "ru")) -> dict:
    from pipeline.tagging import tag_call

    out = {}
    for lang in langs:
        ref_path = SYNTH_DIR / f"synth_call_{lang}_8k_stereo.ref.json"
        if not ref_path.is_file():
            continue
        ref = json.loads(ref_path.read_text(encoding="utf-8"))
        ref_items = sorted(ref["turns"], key=lambda x: (x["start"], x["end"]))
        try:
            asr_items, info = asr_segments(lang)
        except Exception as e:  # no weights / decoder: report it instead of failing the bench
            out[lang] = {"error": f"{type(e).__name__}: {e}"}
            continue
        tr = tag_call(_segments(ref_items), lang, duration_s=ref.get("duration"))
        ta = tag_call(_segments(asr_items), lang, duration_s=ref.get("duration"))
        out[lang] = {"ref": _summ(tr), "asr": _summ(ta), "info": info,
                     "ref_items": ref_items, "asr_items": asr_items}
    return out


def asr_report(cmp: dict) -> list[str]:
    out = []
    for lang, c in cmp.items():
        out += [f"#### {lang}", ""]
        if "error" in c:
            out += [f"ASR not available: {c['error']}", ""]
            continue
        r, a, info = c["ref"], c["asr"], c["info"]
        out += [f"ASR: faster-whisper `{info['model']}` {info['compute_type']}, {info['audio_s']} s of audio, "
                f"{info['asr_wall_s']} s wall for both channels{' (cached)' if info.get('cached') else ''}; "
                f"{len(c['ref_items'])} reference turns, {len(c['asr_items'])} ASR segments.", "",
                "| | reference turns | ASR transcript |", "|---|---|---|",
                f"| steps_present | {', '.join(r['steps_present'])} | {', '.join(a['steps_present'])} |",
                f"| furthest_step | {r['furthest_step']} | {a['furthest_step']} |",
                "| objections | " + ("; ".join(f"{k} ({'answered' if ans else 'unanswered'}): «{t[:60]}»" for k, t, ans in r["objections"]) or "none")
                + " | " + ("; ".join(f"{k} ({'answered' if ans else 'unanswered'}): «{t[:60]}»" for k, t, ans in a["objections"]) or "none") + " |"]
        for s in STEPS:
            fr, fa = r["first_at"][s], a["first_at"][s]
            cell = lambda f, q: "–" if f is None else f"{q}, first at {f:.1f} s"  # noqa: E731
            out.append(f"| {s} | {cell(fr, r['quality'][s])} | {cell(fa, a['quality'][s])} |")
        diffs = [s for s in STEPS if (s in r["steps_present"]) != (s in a["steps_present"])]
        out += ["", "Differences: " + (", ".join(
            f"{s} {'only in the reference' if s in r['steps_present'] else 'only in the ASR'}" for s in diffs)
            if diffs else "same steps_present and furthest_step" if r["furthest_step"] == a["furthest_step"]
            else "furthest_step differs") + ".", ""]
        out += ["<details><summary>per-segment tags</summary>", "", "| ref speaker | ref step | ref text | ASR step | ASR text |",
                "|---|---|---|---|---|"]
        n = max(len(c["ref_items"]), len(c["asr_items"]))
        for i in range(n):
            ri = c["ref_items"][i] if i < len(c["ref_items"]) else None
            ai = c["asr_items"][i] if i < len(c["asr_items"]) else None
            esc = lambda t: t.replace("|", "/")[:90]  # noqa: E731
            out.append(f"| {ri['speaker'] if ri else ''} | {_c(r['per_seg'][i]) if ri else ''} | {esc(ri['text']) if ri else ''} "
                       f"| {_c(a['per_seg'][i]) if ai else ''} | {esc(ai['text']) if ai else ''} |")
        out += ["", "</details>", ""]
    return out


# ---- throughput -------------------------------------------------------------------------------

def throughput(n_segments: int = 200, turn_s: float = 3.0, runs: int = 7) -> dict:
    """Median wall time of tag_call on a synthetic 10-minute call (n_segments turns of turn_s
    seconds, texts cycled from the dev set), one CPU, after one warm-up run."""
    from models.events import Segment
    from pipeline.tagging import tag_call

    try:
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})
    except (AttributeError, OSError):
        pass
    src = DEV_DATA if DEV_DATA.is_file() else DEFAULT_DATA
    turns = {"en": [], "ru": []}
    for d in iter_jsonl(src):
        turns.setdefault(d.get("language", "en"), []).extend(d["turns"])
    out = {}
    for lang, ts in turns.items():
        if not ts:
            continue
        segs = [Segment(speaker=ts[i % len(ts)]["speaker"], start=i * turn_s, end=(i + 1) * turn_s - 0.2,
                        text=ts[i % len(ts)]["text"]) for i in range(n_segments)]
        tag_call(segs, lang)  # warm-up: lexicon compile, lemma caches
        times = []
        for k in range(runs):
            t0 = time.perf_counter()
            tag_call(segs, lang)
            times.append((time.perf_counter() - t0) * 1000)
        out[lang] = {"segments": n_segments, "audio_s": n_segments * turn_s, "median_ms": statistics.median(times),
                     "min_ms": min(times), "max_ms": max(times), "runs": runs,
                     "words": sum(len(s.text.split()) for s in segs)}
    # a cold run: lemma caches emptied, so every word goes through the lemmatizer once
    from pipeline.tagging.nlp import en_lemma, ru_lemma
    for lang, ts in turns.items():
        if lang not in out:
            continue
        segs = [Segment(speaker=ts[i % len(ts)]["speaker"], start=i * turn_s, end=(i + 1) * turn_s - 0.2,
                        text=ts[i % len(ts)]["text"]) for i in range(n_segments)]
        en_lemma.cache_clear()
        ru_lemma.cache_clear()
        t0 = time.perf_counter()
        tag_call(segs, lang)
        out[lang]["cold_ms"] = (time.perf_counter() - t0) * 1000
    return out


# ---- the whole report --------------------------------------------------------------------------

def full_report(errors: bool = False) -> str:
    t0 = time.perf_counter()
    tiers = load_tiers()
    main_res = evaluate(DEFAULT_DATA) if DEFAULT_DATA.is_file() else {}
    tier_res = evaluate(DEFAULT_DATA, group=lambda d: f"{d.get('language', 'en')}/{tiers.get(d['id'], '?')}") \
        if DEFAULT_DATA.is_file() else {}
    dev_res = evaluate(DEV_DATA) if DEV_DATA.is_file() else {}
    groups = {f"dialogues.jsonl {k}": v for k, v in main_res.items()}
    groups.update({f"tier {k}": v for k, v in sorted(tier_res.items())})
    groups.update({f"dev {k}": v for k, v in dev_res.items()})
    blind_res = evaluate(BLIND_DATA) if BLIND_DATA.is_file() else {}
    blind_split = evaluate(BLIND_DATA, group=lambda d: f"{d.get('language', 'en')} "
                           f"{'tune' if int(d['id'].rsplit('-', 1)[1]) <= 10 else 'holdout'}") \
        if BLIND_DATA.is_file() else {}
    groups.update({f"blind {k}": v for k, v in blind_res.items()})
    groups.update({f"blind {k}": v for k, v in sorted(blind_split.items())})
    out = ["## Tagging", "",
           "Sales-step tagger (`pipeline/tagging`) against the labelled dialogues "
           "(`shared/eval/dialogues.jsonl`, guideline `shared/eval/GUIDELINE.md`) and the hand-written "
           "dev set `tests/data/tagging_dev.jsonl` (tier \"dev\"). Produced by "
           "`python bench/tagging_eval.py --full --write-readme`.", "",
           "Metrics: per-turn macro-F1 over the 5 steps + null (a prediction found in `per_turn_all` "
           "counts as correct), per-turn accuracy, `furthest_step` accuracy, and per-step precision/recall "
           "of `steps_present` (P/R over dialogues; \"–\" where the step is in no gold and no predicted set). "
           "Tiers from the table in `SOURCES.md` (A real recording/chat, B written but not recorded, "
           "C developer example; the hedged \"A?/C\" item counts as C). Targets: macro-F1 ≥ 0.85 and "
           "furthest-step accuracy ≥ 0.9 per language on dialogues.jsonl.", "",
           "### Summary", ""] + summary_table(groups) + [""]
    out += ["### dialogues.jsonl per language", "", report(main_res, errors=errors, title=None, level=4)]
    out += ["### dialogues.jsonl per tier", "", report(tier_res, errors=False, title=None, level=4)]
    out += ["### Dev set (tests/data/tagging_dev.jsonl)", "",
            "30 dialogues (15 en, 15 ru) written for this evaluation and labelled by the guideline before the "
            "tagger was run on them: B2B/B2C phone and chat sales, a gatekeeper call per language, ASR-style "
            "lowercase text with fillers, objections of every kind, vague vs concrete next steps and one "
            "support call per language as a negative control. The tagger's general rules and lexicons were "
            "then improved on its failures, so the numbers below are no longer an unbiased estimate. "
            "Before any change, the first 24 scored macro-F1 0.682 (en) / 0.840 (ru) and furthest-step "
            "0.750 / 0.833. After the first round of changes, 6 further dialogues (`*-dev2-*`, 3 per "
            "language) were written and scored untouched: macro-F1 0.722 (en) / 0.702 (ru), furthest-step "
            "0.667 / 1.000, which is the more honest guide to unseen data. A second, smaller round "
            "fixed them as well.", "",
            report(dev_res, errors=errors, title=None, level=4)]
    if blind_res:
        out += ["### Blind set (tests/data/tagging_blind.jsonl, tier \"blind\")", "",
                "40 dialogues (blind-en-01..20, blind-ru-01..20) written from the guideline by someone who had "
                "never seen the tagger's rules; `tests/test_tagging_blind.py` guards the scores below. Protocol: "
                "the set was split into TUNE (ids ending 01-10) and HOLDOUT (11-20). Round 1 studied only the "
                "TUNE errors and fixed them with general rules and lexicon entries (plus self-written probe "
                "phrases for objections, closings, needs and offers); HOLDOUT was then measured once. Round 2 "
                "(\"after seeing holdout\") looked at the HOLDOUT errors and fixed the clear general gaps, so "
                "after it neither half is an unbiased estimate any more: the honest figure for unseen data is the "
                "round-1 HOLDOUT row.", "",
                "| stage | en macro-F1 | en furthest | ru macro-F1 | ru furthest |", "|---|---|---|---|---|",
                "| before, whole blind set | 0.754 | 0.55 | 0.779 | 0.85 |",
                "| before, TUNE | 0.830 | 0.70 | 0.745 | 1.00 |",
                "| before, HOLDOUT | 0.616 | 0.40 | 0.788 | 0.70 |",
                "| round 1 (tuned on TUNE), TUNE | 1.000 | 1.00 | 1.000 | 1.00 |",
                "| **round 1, HOLDOUT (honest estimate)** | **0.616** | **0.40** | **0.781** | **0.70** |",
                "| round 2 (after seeing holdout), HOLDOUT | see summary table (\"blind en holdout\" / \"blind ru holdout\") | | | |",
                "",
                "Round 1 fixed every TUNE error but did not move HOLDOUT at all: the blind author's phrasing varies "
                "more than a lexicon tuned on ten dialogues per language covers. Treat the hidden-set score as "
                "closer to the round-1 HOLDOUT row than to the figures below.", "",
                report(blind_res, errors=errors, title=None, level=4)]
    out += ["### ASR transcript vs reference text (synthetic stereo calls)", "",
            "Both channels transcribed with `pipeline.asr.transcribe_channel(path, channel, language, "
            "AsrOptions())` (0 = manager, 1 = client), merged by start time and tagged with "
            "`pipeline.tagging.tag_call`; the reference turns of `*.ref.json` are tagged the same way.", ""]
    out += asr_report(asr_comparison())
    tp = throughput()
    out += ["### Throughput", "",
            "`tag_call` on a synthetic 10-minute call: 200 segments of 3 s (texts cycled from the dev set), "
            "one CPU (process pinned to one core), median of 7 runs after a warm-up; \"cold\" = first run "
            "with empty lemma caches (pymorphy3 analyses every word once).", "",
            "| language | segments | words | median ms | min–max ms | cold ms |", "|---|---|---|---|---|---|"]
    for lang, t in tp.items():
        out.append(f"| {lang} | {t['segments']} | {t['words']} | {t['median_ms']:.1f} | "
                   f"{t['min_ms']:.1f}–{t['max_ms']:.1f} | {t['cold_ms']:.1f} |")
    out += ["", f"_Report generated in {time.perf_counter() - t0:.1f} s._", ""]
    return "\n".join(out)


def write_readme(section: str, path: Path = README) -> None:
    """Replace (or append) the text between the tagging markers; the rest of the file is kept."""
    block = f"{MARK_START}\n{section.rstrip()}\n{MARK_END}"
    text = path.read_text(encoding="utf-8") if path.is_file() else "# Benchmarks\n"
    if MARK_START in text and MARK_END in text:
        a = text.index(MARK_START)
        b = text.index(MARK_END) + len(MARK_END)
        text = text[:a] + block + text[b:]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("path", nargs="?", default=str(DEFAULT_DATA))
    ap.add_argument("--errors", action="store_true", help="list the wrongly tagged turns")
    ap.add_argument("--tiers", action="store_true", help="also split the file's results by SOURCES.md tier")
    ap.add_argument("--full", action="store_true", help="the whole report: both sets, tiers, ASR, throughput")
    ap.add_argument("--write-readme", action="store_true", help="with --full: update bench/README.md")
    a = ap.parse_args(argv)
    t0 = time.perf_counter()
    if a.full:
        text = full_report(errors=a.errors)
        print(text)
        if a.write_readme:
            write_readme(full_report(errors=False) if a.errors else text)
        return 0
    res = evaluate(Path(a.path))
    print(report(res, errors=a.errors))
    if a.tiers:
        tiers = load_tiers()
        tier_res = evaluate(Path(a.path), group=lambda d: f"{d.get('language', 'en')}/{tiers.get(d['id'], 'dev')}")
        print(report(tier_res, errors=False, title="# Per tier"))
    print(f"_evaluated in {time.perf_counter() - t0:.2f} s_")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
