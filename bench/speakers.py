"""Who said it, measured: channel analysis, diarization and roles on the shared real and synthetic audio.

For each file: transcription alone, then (the fastest of three runs) the voices told apart and the roles found (the same code the
worker runs); the diarization error rate where a reference says who spoke when, the role accuracy where it
also says which side is the manager's, and the time diarization adds. Each mono file is also run as a
stereo file with the same audio on both channels (as MP3 exports deliver them): it must be read once.

    python bench/speakers.py [--out bench/speakers_results.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.asr import AsrOptions, transcribe_arrays  # noqa: E402
from pipeline.audio import decode_channels  # noqa: E402
from pipeline.channels import analyse  # noqa: E402
from pipeline.diarize import attribute  # noqa: E402
from tests import speaker_refs as refs  # noqa: E402
from tests.helpers import SHARED  # noqa: E402


def files(shared: Path) -> list[tuple[str, Path, list, str, bool]]:
    """(name, path, reference, language, reference labels are roles)"""
    a = shared / "audio"
    return [
        ("synth_en_mono", a / "synthetic/synth_call_en_8k_mono.wav", refs.synthetic(shared, "en"), "en", True),
        ("synth_ru_mono", a / "synthetic/synth_call_ru_8k_mono.wav", refs.synthetic(shared, "ru"), "ru", True),
        ("callytics_call01", a / "real/callytics_call01_en_8k.wav", refs.callytics(shared), "en", True),
        ("pyannote_sample", a / "real/pyannote_sample_en_16k.wav",
         refs.rttm(a / "real/pyannote_sample_en_16k.rttm"), "en", False),
    ]


def run(name, path, ref, lang, roles_known, opts, duplicate=False) -> dict:
    chans = decode_channels(path)
    if duplicate:
        chans = [chans[0], chans[0].copy()]
    ca = analyse(chans)
    audio = chans[0]
    t0 = time.perf_counter()
    res = transcribe_arrays([audio], lang, opts, mono=True)[0]
    asr_s = time.perf_counter() - t0
    # the fastest of three: the machine is shared, and noise only ever adds time
    runs = [attribute(audio, res, direction="outbound") for _ in range(3)]
    out = min(runs, key=lambda r: r.diarize_s)
    hyp_roles = [(t.start, t.end, s) for t, s in zip(out.turns, out.speakers or [])]
    hyp_voices = [(t.start, t.end, str(v)) for t, v in zip(out.turns, out.voices or [])]
    row = {"file": name + (" (same audio on 2 channels)" if duplicate else ""), "audio_s": round(len(audio) / 16000, 1),
           "channels_detected": ca.detected, "envelope_correlation": ca.envelope_correlation,
           "asr_s": round(asr_s, 2), "diarize_s": out.diarize_s,
           "diarize_share": round(out.diarize_s / asr_s, 3), "voices": out.roles.get("voices"),
           "roles_confidence": out.roles.get("confidence"), "roles_uncertain": out.roles.get("uncertain"),
           "segments": len(out.turns)}
    row.update({f"der_{k}": round(v, 3) for k, v in refs.der(ref, hyp_voices).items()})
    if roles_known:
        row.update({f"role_{k}": round(v, 3) for k, v in refs.role_accuracy(ref, hyp_roles).items()})
        row["role_of_speech_collar"] = round(refs.role_accuracy(ref, hyp_roles, collar=0.25)["of_speech"], 3)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "speakers_results.json"))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    opts = AsrOptions(cpu_threads=args.threads)
    rows = []
    # load Whisper, the speaker encoder and the sentence encoder outside the timings
    warm = decode_channels(SHARED / "audio/synthetic/synth_call_en_8k_mono.wav")[0][:16000 * 15]
    attribute(warm, transcribe_arrays([warm], "en", opts, mono=True)[0])
    for name, path, ref, lang, roles_known in files(SHARED):
        for dup in (False, True):
            row = run(name, path, ref, lang, roles_known, opts, duplicate=dup)
            rows.append(row)
            print(json.dumps(row, ensure_ascii=False), flush=True)
    Path(args.out).write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    hdr = ("| file | detected | segments | voices | DER | role acc. (of speech / covered / coverage) | "
           "of speech, 0.25 s collar | confidence | diarize time / ASR time |")
    print("\n" + hdr + "\n|" + "---|" * 9)
    for r in rows:
        role = (f"{r['role_of_speech']:.3f} / {r['role_of_covered']:.3f} / {r['role_coverage']:.3f}"
                if "role_of_speech" in r else "—")
        collar = f"{r['role_of_speech_collar']:.3f}" if "role_of_speech_collar" in r else "—"
        print(f"| {r['file']} | {r['channels_detected']} | {r['segments']} | {r['voices']} | {r['der_der']:.3f} | "
              f"{role} | {collar} | {r['roles_confidence']} | {r['diarize_s']:.2f} s / {r['asr_s']:.2f} s "
              f"({100 * r['diarize_share']:.0f} %) |")


if __name__ == "__main__":
    main()
