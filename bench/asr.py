#!/usr/bin/env python3
"""ASR benchmark: openai-whisper vs faster-whisper, same audio, same model (base), one run.

    .venv/bin/python bench/asr.py [--configs NAME,...] [--threads 2] [--out bench/asr_results.json]

Each configuration runs in its own process (so peak RSS and load time are its own) through the
product's engine interface (``pipeline.asr``): the same VAD, guards and turn grouping for every
engine. Audio: the real recordings with a reference text in ../shared/audio/real and the two
synthetic stereo calls (each channel on its own, as the pipeline does). Prints a Markdown table
and writes the raw numbers to JSON. WER/CER use jiwer on lower-cased text without punctuation
(ё = е); digits are not spelled out, so "10" against "ten" counts as an error for every engine alike.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AUDIO = Path(os.environ.get("CALLQA_SHARED_DIR") or REPO.parent / "shared") / "audio"
sys.path.insert(0, str(REPO))

# (file, language, reference kind)
REAL = [
    ("real/jfk_16k.wav", "en", "txt:real/jfk.txt"),
    ("real/jfk_8k.wav", "en", "txt:real/jfk.txt"),
    ("real/osr_en_8k.wav", "en", "txt:real/osr_en_8k.txt"),
    ("real/callytics_call01_en_8k.wav", "en", "srt:real/callytics_call01_en_8k.srt"),
    ("real/festvox_ru_real_8k.wav", "ru", "txt:real/festvox_ru_real_8k.txt"),
    ("real/pisets_ru.wav", "ru", "txt:real/pisets_ru.txt"),
]
STEREO = [
    ("synthetic/synth_call_en_8k_stereo.wav", "en", "ref:synthetic/synth_call_en_8k_stereo.ref.json"),
    ("synthetic/synth_call_ru_8k_stereo.wav", "ru", "ref:synthetic/synth_call_ru_8k_stereo.ref.json"),
]

CONFIGS = {
    # name: (engine, compute_type, vad)
    "openai-whisper fp32": ("openai-whisper", "float32", False),
    "faster-whisper fp32": ("faster-whisper", "float32", False),
    "faster-whisper fp32 +VAD": ("faster-whisper", "float32", True),
    "faster-whisper int8": ("faster-whisper", "int8", False),
    "faster-whisper int8 +VAD (default)": ("faster-whisper", "int8", True),
}
BASELINE = "openai-whisper fp32"
DEFAULT = "faster-whisper int8 +VAD (default)"


# ----------------------------------------------------------------------------- scoring (also used by tests)

def normalize(text: str) -> str:
    text = text.lower().replace("ё", "е").replace("’", "'")
    text = re.sub(r"\[[^\]]*\]", " ", text)  # speaker tags in the srt reference
    text = re.sub(r"[^\w\s']", " ", text)
    return " ".join(text.split())


def wer(ref: str, hyp: str) -> float:
    import jiwer
    r, h = normalize(ref), normalize(hyp)
    return jiwer.wer(r, h) if r else float(bool(h))


def cer(ref: str, hyp: str) -> float:
    import jiwer
    r, h = normalize(ref), normalize(hyp)
    return jiwer.cer(r, h) if r else float(bool(h))


def reference_text(kind: str) -> str:
    how, rel = kind.split(":", 1)
    raw = (AUDIO / rel).read_text(encoding="utf-8")
    if how == "srt":
        lines = [ln for ln in raw.splitlines() if ln.strip() and "-->" not in ln and not ln.strip().isdigit()]
        return " ".join(lines)
    if how == "ref":
        return " ".join(t["text"] for t in json.loads(raw)["turns"])
    return raw


def attribution(ref_turns: list[dict], segments: list[dict]) -> dict:
    """Speaker attribution of merged segments against the reference turns.

    Each segment goes to the reference turn it overlaps most. A reference turn is *right* when at least one
    segment went to it, every segment that went to it has its speaker, and the turns come out in order
    (the reference index never goes back along the time-sorted segments). Also WER per speaker."""
    assigned: list[int] = []
    wrong = 0
    got: dict[int, list[dict]] = {}
    for seg in sorted(segments, key=lambda s: (s["start"], s["end"])):
        ov = [(min(seg["end"], t["end"]) - max(seg["start"], t["start"]), i) for i, t in enumerate(ref_turns)]
        best, i = max(ov)
        if best <= 0:
            continue
        assigned.append(i)
        got.setdefault(i, []).append(seg)
        wrong += ref_turns[i]["speaker"] != seg["speaker"]
    in_order = all(b >= a for a, b in zip(assigned, assigned[1:]))
    right = [i for i, t in enumerate(ref_turns)
             if got.get(i) and all(s["speaker"] == t["speaker"] for s in got[i])]
    per_speaker = {}
    for spk in sorted({t["speaker"] for t in ref_turns}):
        per_speaker[spk] = wer(" ".join(t["text"] for t in ref_turns if t["speaker"] == spk),
                               " ".join(s["text"] for s in segments if s["speaker"] == spk))
    return {"turns": len(ref_turns), "turns_right": len(right) if in_order else 0, "in_order": in_order,
            "wrong_speaker_segments": wrong, "missing": [i for i in range(len(ref_turns)) if i not in got],
            "wer_per_speaker": per_speaker}


# ----------------------------------------------------------------------------- one configuration (child)

def run_config(name: str, threads: int, files: list[tuple[str, str, str]]) -> dict:
    import resource

    from pipeline.asr import AsrOptions, load_engine, transcribe_array
    from pipeline.audio import decode_channels

    engine, compute, vad = CONFIGS[name]
    model = "base"
    if engine == "openai-whisper":
        from pipeline.asr import _cache_root
        model = str(_cache_root() / "openai-base-fp32.pt")
    opts = AsrOptions(engine=engine, model=model, compute_type=compute, vad=vad, cpu_threads=threads)
    load_s = load_engine(opts)
    out = {"name": name, "load_s": load_s, "files": []}
    for rel, lang, ref in files:
        chans = decode_channels(AUDIO / rel)
        stereo = ref.startswith("ref:")
        entry = {"file": rel, "language": lang, "audio_s": len(chans[0]) / 16000, "wall_s": 0.0, "segments": []}
        for ch, audio in enumerate(chans if stereo else chans[:1]):
            t0 = time.perf_counter()
            r = transcribe_array(audio, lang, opts, mono=not stereo)
            entry["wall_s"] += time.perf_counter() - t0
            spk = ("manager", "client")[ch] if stereo else "unknown"  # the ref calls: manager left
            entry["segments"] += [{"speaker": spk, "start": t.start, "end": t.end, "text": t.text} for t in r.turns]
        if stereo:
            entry["audio_s"] *= len(chans)  # both channels were transcribed
        out["files"].append(entry)
        print(f"  {name}: {rel} {entry['wall_s']:.1f}s", file=sys.stderr, flush=True)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


# ----------------------------------------------------------------------------- table

def score(result: dict) -> dict:
    rows = {}
    for f in result["files"]:
        rel, lang, ref = next(x for x in REAL + STEREO if x[0] == f["file"])
        segs = sorted(f["segments"], key=lambda s: (s["start"], s["end"]))
        hyp = " ".join(s["text"] for s in segs)
        ref_text = reference_text(ref)
        row = {"wer": wer(ref_text, hyp), "cer": cer(ref_text, hyp), "rtf": f["wall_s"] / f["audio_s"],
               "audio_s": f["audio_s"], "wall_s": f["wall_s"], "language": lang}
        if ref.startswith("ref:"):
            row["attribution"] = attribution(json.loads((AUDIO / ref[4:]).read_text())["turns"], segs)
        rows[f["file"]] = row
    return rows


def table(results: list[dict]) -> str:
    scored = {r["name"]: score(r) for r in results}
    base = scored.get(BASELINE)
    lines = []
    head = ("| configuration | load s | peak RSS MB | audio s / wall s (× real time) | × openai | "
            "WER en | WER ru | CER ru | stereo turns right (en, ru) |")
    lines += [head, "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows = scored[r["name"]]
        audio = sum(x["audio_s"] for x in rows.values())
        wall = sum(x["wall_s"] for x in rows.values())
        speed = audio / wall
        ratio = speed / (sum(x["audio_s"] for x in base.values()) / sum(x["wall_s"] for x in base.values())) \
            if base else float("nan")

        def mean(lang: str, key: str) -> float:
            # pooled over the real files with a reference (not the stereo calls, which are scored by turns)
            vals = [x[key] for f, x in rows.items() if x["language"] == lang and "attribution" not in x]
            return 100 * sum(vals) / len(vals) if vals else float("nan")
        att = [rows[f]["attribution"] for f, _, _ in STEREO if f in rows]
        att_s = ", ".join(f"{a['turns_right']}/{a['turns']}" for a in att)
        lines.append(f"| {r['name']} | {r['load_s']:.1f} | {r['peak_rss_mb']:.0f} | {audio:.0f} / {wall:.0f} "
                     f"({speed:.1f}×) | {ratio:.1f} | {mean('en', 'wer'):.1f} | {mean('ru', 'wer'):.1f} | "
                     f"{mean('ru', 'cer'):.1f} | {att_s} |")
    lines.append("")
    lines.append("Per file, WER % (CER % for ru) / × real time:")
    lines.append("")
    names = [r["name"] for r in results]
    lines.append("| file | " + " | ".join(names) + " |")
    lines.append("|---|" + "---|" * len(names))
    for f, lang, _ in REAL + STEREO:
        if f not in scored[names[0]]:
            continue
        cells = []
        for n in names:
            x = scored[n][f]
            e = x["cer"] if lang == "ru" else x["wer"]
            cells.append(f"{100 * e:.1f} / {1 / x['rtf']:.1f}×")
        lines.append(f"| {Path(f).name} ({'CER' if lang == 'ru' else 'WER'}) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated names from: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(REPO / "bench" / "asr_results.json"))
    ap.add_argument("--files", default="", help="only files whose path contains one of these (comma-separated)")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--table-only", action="store_true", help="re-print the table from --out")
    args = ap.parse_args()
    files = REAL + STEREO
    if args.files:
        files = [f for f in files if any(k in f[0] for k in args.files.split(","))]
    if args.child:
        print(json.dumps(run_config(args.child, args.threads, files)))
        return 0
    if args.table_only:
        print(table(json.loads(Path(args.out).read_text())["results"]))
        return 0
    results = []
    for name in [c.strip() for c in args.configs.split(",") if c.strip()]:
        print(f"== {name}", file=sys.stderr, flush=True)
        p = subprocess.run([sys.executable, __file__, "--child", name, "--threads", str(args.threads),
                            "--files", args.files],
                           stdout=subprocess.PIPE, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        results.append(json.loads(p.stdout))
        Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results}, ensure_ascii=False,
                                             indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
