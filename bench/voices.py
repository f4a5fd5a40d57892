"""How steady the voices are: diarization of the labelled mono calls when word timings move a little.

Whisper's word timings differ from machine to machine (its kernels: AVX2, AVX-512, AMX) by tens of
milliseconds, and the windows the speaker encoder embeds are laid over them. This runs each labelled mono
call through Whisper once, then diarizes it with its own timings and with timings moved by up to
``--jitter`` seconds (``--runs`` draws), with the clustering of today and the one before 2026-12-01 side by
side, and counts how often each passes the bar the tests set: two voices, roles trusted, role accuracy and
DER as in tests/test_speakers.py. Added: single-speaker recordings (roles must not be trusted) and calls
with a third party who takes over (a transfer, made by joining two recordings).

    python bench/voices.py [--runs 8] [--jitter 0.08]
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.speakers import files  # noqa: E402
from pipeline import diarize as D  # noqa: E402
from pipeline.asr import AsrOptions, transcribe_arrays  # noqa: E402
from pipeline.audio import decode_channels  # noqa: E402
from tests import speaker_refs as refs  # noqa: E402
from tests.helpers import SHARED  # noqa: E402

SINGLE = [("jfk", "real/jfk_8k.wav", "en"), ("osr", "real/osr_en_8k.wav", "en"),
          ("festvox_ru", "real/festvox_ru_real_8k.wav", "ru")]
TRANSFERS = [("callytics + jfk", "real/callytics_call01_en_8k.wav", "real/jfk_8k.wav", None, "en"),
             ("synth_en + osr", "synthetic/synth_call_en_8k_mono.wav", "real/osr_en_8k.wav", 20, "en"),
             ("synth_ru + festvox_ru", "synthetic/synth_call_ru_8k_mono.wav", "real/festvox_ru_real_8k.wav", 30, "ru")]


@contextlib.contextmanager
def before():
    """The clustering before 2026-12-01: windows every 0.8 s, one k-means start, a third voice below 0.90,
    roles trusted however alike the two voices."""
    saved = D.STEP_S, D.KMEANS_STARTS, D.THIRD_VOICE, D.MAYBE_ONE_VOICE
    D.STEP_S, D.KMEANS_STARTS, D.THIRD_VOICE, D.MAYBE_ONE_VOICE = 0.8, 0, D.SAME_VOICE, 1.01
    try:
        yield
    finally:
        D.STEP_S, D.KMEANS_STARTS, D.THIRD_VOICE, D.MAYBE_ONE_VOICE = saved


def moved(turns, rng, jitter):
    """The turns with every word's start and end moved by up to ``jitter`` seconds."""
    if not jitter:
        return turns
    out = []
    for t in turns:
        ws = []
        for w in t.words:
            a, b = rng.uniform(-jitter, jitter, 2)
            s = max(0.0, w.start + a)
            ws.append(dataclasses.replace(w, start=s, end=max(s + 0.02, w.end + b)))
        out.append(dataclasses.replace(t, words=ws))
    return out


def verdict(kind, out, ref) -> tuple[bool, str]:
    v, unc = out.roles.get("voices"), out.roles.get("uncertain")
    if kind == "roles":
        hyp = [(t.start, t.end, s) for t, s in zip(out.turns, out.speakers)]
        acc = refs.role_accuracy(ref, hyp)
        col = refs.role_accuracy(ref, hyp, collar=0.25)["of_speech"]
        der = refs.der(ref, [(t.start, t.end, str(x)) for t, x in zip(out.turns, out.voices)])["der"]
        ok = (v == 2 and not unc and acc["of_covered"] >= 0.9 and acc["coverage"] >= 0.85 and col >= 0.9
              and der <= 0.15)
        return ok, f"v{v}{'?' if unc else ''} {col:.2f}/{der:.2f}"
    if kind == "der":
        der = refs.der(ref, [(t.start, t.end, str(x)) for t, x in zip(out.turns, out.voices)])["der"]
        return der <= 0.2, f"v{v} {der:.2f}"
    if kind == "single":
        return v == 1 or bool(unc), f"v{v}{'?' if unc else ''}"
    # a transfer: the joined-on speaker is a voice of its own, and no other voice speaks after the join
    cut, turns, voices = ref, out.turns, out.voices
    late = {x for t, x in zip(turns, voices) if t.start >= cut}
    early = {x for t, x in zip(turns, voices) if t.end <= cut}
    return v == 3 and len(late) == 1 and not late & early, f"v{v}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=8)
    ap.add_argument("--jitter", type=float, default=0.08)
    args = ap.parse_args()
    opts = AsrOptions(cpu_threads=2)
    cases = []  # (name, kind, audio, asr result, reference)
    for name, path, ref, lang, roles_known in files(SHARED):
        audio = decode_channels(path)[0]
        cases.append((name, "roles" if roles_known else "der", audio,
                      transcribe_arrays([audio], lang, opts, mono=True)[0], ref))
    for name, rel, lang in SINGLE:
        audio = decode_channels(SHARED / "audio" / rel)[0]
        cases.append((name, "single", audio, transcribe_arrays([audio], lang, opts, mono=True)[0], None))
    for name, first, second, secs, lang in TRANSFERS:
        a = decode_channels(SHARED / "audio" / first)[0]
        b = decode_channels(SHARED / "audio" / second)[0]
        b = b[:16000 * secs] if secs else b
        audio = np.concatenate([a, np.zeros(16000, np.float32), b])
        cases.append((name, "transfer", audio, transcribe_arrays([audio], lang, opts, mono=True)[0],
                      (len(a) + 16000) / 16000))
    print(f"\n{args.runs} draws of word timings moved by up to {args.jitter * 1000:.0f} ms, and the timings "
          "as Whisper gave them; passes of the bar / draws (the unmoved run's voices, ? where the roles are "
          "not trusted, role accuracy with collar / DER; the two main voices' similarity over the draws)\n")
    print("| recording | kind | before 2026-12-01 | now |\n|---|---|---|---|")
    totals = {"before": 0, "now": 0}
    for name, kind, audio, res, ref in cases:
        cells = []
        for label, ctx in (("before", before), ("now", contextlib.nullcontext)):
            passed, first, sims = 0, "", []
            with ctx():
                for i in range(args.runs + 1):
                    rng = np.random.default_rng(i)
                    r = dataclasses.replace(res, turns=moved(res.turns, rng, args.jitter if i else 0))
                    out = D.attribute(audio, r)
                    ok, what = verdict(kind, out, ref)
                    sims.append(out.roles.get("voice_similarity") or 1.0)
                    passed += ok
                    first = first or what
            totals[label] += passed
            cells.append(f"{passed}/{args.runs + 1} ({first}; {min(sims):.2f}–{max(sims):.2f})")
        print(f"| {name} | {kind} | {cells[0]} | {cells[1]} |", flush=True)
    print(f"| all | | {totals['before']} | {totals['now']} |")


if __name__ == "__main__":
    main()
