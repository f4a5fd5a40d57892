#!/usr/bin/env python3
"""ASR benchmark: sequential against batched decoding (faster-whisper, base int8), beam 1 and 5, one run.

    .venv/bin/python bench/asr.py [--configs NAME,...] [--threads 2] [--long-minutes 10] [--out bench/asr_results.json]

Every file in ../shared/audio (real and synthetic, stereo and mono) goes through the product's engine
interface (``pipeline.asr``: same VAD, guards and turn grouping), a stereo file with both channels at once
as ``callqa transcribe`` does. Each configuration runs in its own process (so peak RSS is its own), all of
them side by side, file by file, so that the load of a shared machine falls on all of them alike; CPU
seconds are reported beside wall time for the same reason. Reported: real-time factor, WER/CER against the
reference where a file has one (where it has none, the difference to the sequential beam-5 transcript,
marked ≠), peak memory, and the turn order of the stereo calls. ``--long-minutes`` adds two long calls
built by repeating shared ru calls (stereo, and mono), run through ``callqa transcribe`` itself, one
subprocess per configuration (``--long-configs``). Prints Markdown tables and writes the raw numbers to
JSON. WER/CER use jiwer on lower-cased text without punctuation (ё = е); digits are not spelled out, so
"10" against "ten" counts as an error for every configuration alike.
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

# (file, language, reference kind or None, stereo)
FILES = [
    ("real/jfk_16k.wav", "en", "txt:real/jfk.txt", False),
    ("real/jfk_8k.wav", "en", "txt:real/jfk.txt", False),
    ("real/osr_en_8k.wav", "en", "txt:real/osr_en_8k.txt", False),
    ("real/callytics_call01_en_8k.wav", "en", "srt:real/callytics_call01_en_8k.srt", False),
    ("real/pyannote_sample_en_16k.wav", "en", None, False),
    ("real/stereo_diarization_en_16k.wav", "en", None, True),
    ("real/festvox_ru_real_16k.wav", "ru", "txt:real/festvox_ru_real_16k.txt", False),
    ("real/festvox_ru_real_8k.wav", "ru", "txt:real/festvox_ru_real_8k.txt", False),
    ("real/pisets_ru.wav", "ru", "txt:real/pisets_ru.txt", False),
    ("real/silero_ru_lecture_16k.wav", "ru", None, False),
    ("real/tone_ru_8k_long.flac", "ru", None, False),
    ("real/tone_ru_8k_short.flac", "ru", None, False),
    ("synthetic/synth_call_en_8k_mono.wav", "en", "txt:synthetic/synth_call_en_8k_mono.txt", False),
    ("synthetic/synth_call_ru_8k_mono.wav", "ru", "txt:synthetic/synth_call_ru_8k_mono.txt", False),
    ("synthetic/synth_call_en_8k_stereo.wav", "en", "ref:synthetic/synth_call_en_8k_stereo.ref.json", True),
    ("synthetic/synth_call_ru_8k_stereo.wav", "ru", "ref:synthetic/synth_call_ru_8k_stereo.ref.json", True),
]
# the files of the earlier tables (kept for the tests, which import this module)
REAL = [(f, lang, ref) for f, lang, ref, st in FILES if f.startswith("real/") and ref]
STEREO = [(f, lang, ref) for f, lang, ref, st in FILES if st and ref]

CONFIGS = {
    # name: AsrOptions fields (faster-whisper base int8, VAD, unless set)
    "sequential beam 5 (before)": dict(batched=False, beam_size=5),
    "sequential beam 1": dict(batched=False, beam_size=1),
    "batched beam 5 batch 4 (default)": dict(batched=True, beam_size=5, batch_size=4),
    "batched beam 1 batch 4": dict(batched=True, beam_size=1, batch_size=4),
    "batched beam 5 batch 8": dict(batched=True, beam_size=5, batch_size=8),
    "batched beam 5 batch 16": dict(batched=True, beam_size=5, batch_size=16),
    "openai-whisper fp32": dict(engine="openai-whisper", compute_type="float32"),
}
DEFAULT_RUN = list(CONFIGS)[:6]  # openai-whisper (slow) only when asked for with --configs
BASELINE = "sequential beam 5 (before)"
DEFAULT = "batched beam 5 batch 4 (default)"


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

def options(name: str, threads: int):
    from pipeline.asr import AsrOptions, _cache_root

    kw = dict(CONFIGS[name])
    if kw.get("engine") == "openai-whisper":
        kw["model"] = str(_cache_root() / "openai-base-fp32.pt")
    return AsrOptions(cpu_threads=threads, **kw)


def serve_config(name: str, threads: int) -> None:
    """Child: load the configuration's model, then transcribe the files the parent names on stdin, one at a
    time, answering each with a JSON line on stdout; at the end, the process's peak RSS."""
    import resource

    from pipeline.asr import get_engine, load_engine
    from pipeline.audio import decode_channels

    opts = options(name, threads)
    load_s = load_engine(opts)
    engine = get_engine(opts)
    print(json.dumps({"load_s": load_s}), flush=True)
    for line in sys.stdin:
        if not line.strip():
            break
        rel, lang, ref, stereo = FILES[int(line)]
        chans = decode_channels(AUDIO / rel)
        streams = chans if stereo else chans[:1]
        t0, c0 = time.perf_counter(), _cpu()
        results = engine.transcribe_streams(streams, lang, opts, mono=not stereo)
        wall, cpu = time.perf_counter() - t0, _cpu() - c0
        segs = []
        for ch, (turns, _lang, _speech) in enumerate(results):
            spk = ("manager", "client")[ch] if stereo else "unknown"  # the ref calls: manager left
            segs += [{"speaker": spk, "start": t.start, "end": t.end, "text": t.text} for t in turns]
        stats = getattr(engine, "last_stats", {}) if opts.batched and opts.engine == "faster-whisper" else {}
        print(json.dumps({"file": rel, "language": lang, "audio_s": sum(len(c) for c in streams) / 16000,
                          "wall_s": wall, "cpu_s": cpu, "segments": segs, "fallbacks": stats.get("fallbacks", 0),
                          "chunks": stats.get("chunks", 0)}, ensure_ascii=False), flush=True)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}), flush=True)


def _cpu() -> float:
    import resource
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def run_configs(names: list[str], threads: int, files: list, on_result=None) -> list[dict]:
    """All configurations side by side: one child process each (its own model, its own peak RSS), fed the
    files in turn, file by file, so that a change in the machine's load falls on every configuration alike
    (the order of the configurations rotates from file to file)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    kids = [subprocess.Popen([sys.executable, __file__, "--child", n, "--threads", str(threads)], env=env,
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for n in names]
    results = []
    for n, k in zip(names, kids):  # one loading at a time
        results.append({"name": n, "files": [], **json.loads(k.stdout.readline())})
    for i, f in enumerate(files):
        order = list(range(len(names)))
        order = order[i % len(order):] + order[:i % len(order)]
        for j in order:
            kids[j].stdin.write(f"{FILES.index(f)}\n")
            kids[j].stdin.flush()
            entry = json.loads(kids[j].stdout.readline())
            results[j]["files"].append(entry)
            print(f"  {names[j]}: {f[0]} {entry['wall_s']:.1f}s", file=sys.stderr, flush=True)
        if on_result:
            on_result(results)
    for j, k in enumerate(kids):
        k.stdin.write("\n")
        k.stdin.flush()
        results[j].update(json.loads(k.stdout.readline()))
        k.wait()
    for r in results:
        r["files"].sort(key=lambda e: [x[0] for x in FILES].index(e["file"]))
    return results


# ----------------------------------------------------------------------------- long calls through the CLI

def _write_wav(path: Path, channels: list) -> None:
    import wave

    import numpy as np
    data = np.stack(channels, 1) if len(channels) > 1 else channels[0][:, None]
    with wave.open(str(path), "wb") as w:
        w.setnchannels(data.shape[1]), w.setsampwidth(2), w.setframerate(16000)
        w.writeframes((np.clip(data, -1, 1) * 32767).astype("<i2").tobytes())


def build_long_calls(minutes: float, folder: Path) -> list[dict]:
    """A long stereo call (the ru synthetic call over and over) and a long mono recording (festvox ru 8 kHz
    and the ru synthetic call mixed down, in turn), each with its reference."""
    import numpy as np

    from pipeline.audio import decode_channels

    folder.mkdir(parents=True, exist_ok=True)
    need = minutes * 60 * 16000
    out = []
    st = "synthetic/synth_call_ru_8k_stereo.wav"
    chans = decode_channels(AUDIO / st)
    ref_turns = json.loads((AUDIO / "synthetic/synth_call_ru_8k_stereo.ref.json").read_text())["turns"]
    reps = int(np.ceil(need / len(chans[0])))
    n = len(chans[0]) / 16000
    turns = [dict(t, start=t["start"] + k * n, end=t["end"] + k * n) for k in range(reps) for t in ref_turns]
    path = folder / "long_ru_stereo.wav"
    _write_wav(path, [np.tile(c, reps) for c in chans])
    out.append({"file": path, "stereo": True, "language": "ru", "ref_turns": turns,
                "ref_text": " ".join(t["text"] for t in turns), "audio_s": reps * n * 2})
    parts, texts, total = [], [], 0
    srcs = [("real/festvox_ru_real_8k.wav", "real/festvox_ru_real_8k.txt"),
            ("synthetic/synth_call_ru_8k_mono.wav", "synthetic/synth_call_ru_8k_mono.txt")]
    k = 0
    while total < need:
        wav, txt = srcs[k % len(srcs)]
        a = decode_channels(AUDIO / wav)[0]
        parts += [a, np.zeros(16000, np.float32)]
        texts.append((AUDIO / txt).read_text())
        total += len(a) + 16000
        k += 1
    path = folder / "long_ru_mono.wav"
    _write_wav(path, [np.concatenate(parts)])
    out.append({"file": path, "stereo": False, "language": "ru", "ref_text": " ".join(texts),
                "audio_s": total / 16000})
    return out


def run_cli(call: dict, name: str, threads: int) -> dict:
    """``callqa transcribe`` on one long call in a subprocess with the configuration's settings."""
    kw = CONFIGS[name]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO),
           "CALLQA_ASR_BATCHED": "1" if kw.get("batched") else "0",
           "CALLQA_ASR_BEAM_SIZE": str(kw.get("beam_size", 5)),
           "CALLQA_ASR_BATCH_SIZE": str(kw.get("batch_size", 4))}
    # peak RSS from VmHWM: ru_maxrss survives fork and exec, so it would start at this (large) process's size
    code = ("import re, resource, sys; from callqa.cli import main; rc = main(sys.argv[1:]); "
            "r = resource.getrusage(resource.RUSAGE_SELF); "
            "hwm = re.search(r'VmHWM:\\s*(\\d+)', open('/proc/self/status').read()).group(1); "
            "print('PEAK_RSS_KB', hwm, 'CPU_S', r.ru_utime + r.ru_stime, file=sys.stderr); sys.exit(rc)")
    cmd = [sys.executable, "-c", code,
           "transcribe", str(call["file"]), "--language", call["language"], "--format", "json", "--no-progress",
           "--threads", str(threads), "--manager-channel", "0" if call["stereo"] else "none"]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, env=env)
    wall = time.perf_counter() - t0
    if p.returncode:
        raise RuntimeError(f"callqa transcribe failed: {p.stderr.decode()[-2000:]}")
    data = json.loads(p.stdout)
    segs = [{"speaker": s["speaker"], "start": s["start"], "end": s["end"], "text": s["text"]}
            for s in data["segments"]]
    hyp = " ".join(s["text"] for s in sorted(segs, key=lambda s: (s["start"], s["end"])))
    row = {"name": name, "file": Path(call["file"]).name, "audio_s": call["audio_s"], "wall_s": wall,
           "asr_wall_s": data["asr"]["wall_s"], "wer": wer(call["ref_text"], hyp), "cer": cer(call["ref_text"], hyp)}
    rss, cpu = re.findall(rb"PEAK_RSS_KB (\d+) CPU_S ([\d.]+)", p.stderr)[-1]
    row["peak_rss_mb"], row["cpu_s"] = int(rss) / 1024, float(cpu)
    if call["stereo"]:
        a = attribution(call["ref_turns"], segs)
        row["turns"] = f"{a['turns_right']}/{a['turns']}"
    return row


# ----------------------------------------------------------------------------- tables

def score(result: dict) -> dict:
    rows = {}
    for f in result["files"]:
        rel, lang, ref, stereo = next(x for x in FILES if x[0] == f["file"])
        segs = sorted(f["segments"], key=lambda s: (s["start"], s["end"]))
        hyp = " ".join(s["text"] for s in segs)
        row = {"rtf": f["wall_s"] / f["audio_s"], "audio_s": f["audio_s"], "wall_s": f["wall_s"], "language": lang,
               "hyp": hyp, "ref": bool(ref), "fallbacks": f.get("fallbacks", 0), "cpu_s": f.get("cpu_s", 0.0)}
        if ref:
            ref_text = reference_text(ref)
            row.update(wer=wer(ref_text, hyp), cer=cer(ref_text, hyp))
        if ref and ref.startswith("ref:"):
            row["attribution"] = attribution(json.loads((AUDIO / ref[4:]).read_text())["turns"], segs)
        rows[f["file"]] = row
    return rows


def table(results: list[dict]) -> str:
    scored = {r["name"]: score(r) for r in results}
    base = scored.get(BASELINE)

    def speed(rows):
        return sum(x["audio_s"] for x in rows.values()) / sum(x["wall_s"] for x in rows.values())

    lines = []
    lines += ["| configuration | peak RSS MB | audio s / wall s (× real time) | × sequential beam 5 (wall) | "
              "CPU s (× sequential beam 5) | WER en | WER ru | CER ru | stereo turns right (en, ru) | "
              "chunks decoded again |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rows = scored[r["name"]]
        audio = sum(x["audio_s"] for x in rows.values())
        wall = sum(x["wall_s"] for x in rows.values())
        ratio = speed(rows) / speed(base) if base else float("nan")
        cpu = sum(x["cpu_s"] for x in rows.values())
        cpu_ratio = sum(x["cpu_s"] for x in base.values()) / cpu if base else float("nan")

        def mean(lang: str, key: str) -> float:
            # over the files of that language with a text reference (the stereo calls are scored by turns)
            vals = [x[key] for x in rows.values() if x["language"] == lang and key in x and "attribution" not in x]
            return 100 * sum(vals) / len(vals) if vals else float("nan")
        att = [rows[f]["attribution"] for f, _, ref, st in FILES if st and ref and f in rows]
        att_s = ", ".join(f"{a['turns_right']}/{a['turns']}" for a in att)
        lines.append(f"| {r['name']} | {r['peak_rss_mb']:.0f} | {audio:.0f} / {wall:.0f} ({audio / wall:.1f}×) | "
                     f"{ratio:.2f} | {cpu:.0f} ({cpu_ratio:.2f}) | {mean('en', 'wer'):.1f} | {mean('ru', 'wer'):.1f} | "
                     f"{mean('ru', 'cer'):.1f} | "
                     f"{att_s} | {sum(x['fallbacks'] for x in rows.values())} |")
    lines += ["", "Per file: WER % (CER % for ru; ≠ = no reference, difference to the sequential beam-5 "
              "transcript) / × real time:", ""]
    names = [r["name"] for r in results]
    lines.append("| file | audio s | " + " | ".join(names) + " |")
    lines.append("|---|---|" + "---|" * len(names))
    for f, lang, ref, stereo in FILES:
        if f not in scored[names[0]]:
            continue
        cells = []
        for n in names:
            x = scored[n][f]
            if ref:
                e = f"{100 * (x['cer'] if lang == 'ru' else x['wer']):.1f}"
            elif base and f in base:
                d = (cer if lang == "ru" else wer)(base[f]["hyp"], x["hyp"])
                e = f"≠{100 * d:.1f}"
            else:
                e = "–"
            cells.append(f"{e} / {1 / x['rtf']:.1f}×")
        kind = ("CER" if lang == "ru" else "WER") if ref else "–"
        lines.append(f"| {Path(f).name}{' (stereo)' if stereo else ''} ({kind}) | {base[f]['audio_s'] if base else 0:.0f} | "
                     + " | ".join(cells) + " |")
    return "\n".join(lines)


def long_table(rows: list[dict]) -> str:
    lines = ["| call | configuration | audio s | wall s (× real time) | CPU s | peak RSS MB | WER | CER | turns right |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['file']} | {r['name']} | {r['audio_s']:.0f} | {r['wall_s']:.0f} "
                     f"({r['audio_s'] / r['wall_s']:.1f}×) | {r.get('cpu_s', 0):.0f} | {r['peak_rss_mb']:.0f} | {100 * r['wer']:.1f} | "
                     f"{100 * r['cer']:.1f} | {r.get('turns', '–')} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default=",".join(DEFAULT_RUN), help="comma-separated names from: " + ", ".join(CONFIGS))
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--out", default=str(REPO / "bench" / "asr_results.json"))
    ap.add_argument("--files", default="", help="only files whose path contains one of these (comma-separated)")
    ap.add_argument("--long-minutes", type=float, default=0.0,
                    help="also run `callqa transcribe` on long calls of about this length (0: not)")
    ap.add_argument("--long-configs", default=f"{BASELINE},{DEFAULT}")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--table-only", action="store_true", help="re-print the tables from --out")
    args = ap.parse_args()
    files = FILES
    if args.files:
        files = [f for f in files if any(k in f[0] for k in args.files.split(","))]
    if args.child:
        serve_config(args.child, args.threads)
        return 0
    if args.table_only:
        data = json.loads(Path(args.out).read_text())
        print(table(data["results"]))
        if data.get("long"):
            print("\n" + long_table(data["long"]))
        return 0
    results, long_rows = [], []

    def save():
        Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results, "long": long_rows},
                                             ensure_ascii=False, indent=1))
    names = [c.strip() for c in args.configs.split(",") if c.strip()]
    if names:
        results = run_configs(names, args.threads, files)
        save()
    if args.long_minutes:
        import tempfile
        with tempfile.TemporaryDirectory() as tmp:
            calls = build_long_calls(args.long_minutes, Path(tmp))
            for call in calls:
                for name in [c.strip() for c in args.long_configs.split(",") if c.strip()]:
                    print(f"== long: {call['file'].name} {name}", file=sys.stderr, flush=True)
                    long_rows.append(run_cli(call, name, args.threads))
                    save()
    if results:
        print(table(results))
    if long_rows:
        print("\n" + long_table(long_rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
