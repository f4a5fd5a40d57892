#!/usr/bin/env python3
"""Batched decoding with Whisper's timestamp tokens, against the default (without) and sequential decoding.

    .venv/bin/python bench/asr_timestamps.py [--files jfk,callytics,...] [--threads 1] [--out bench/asr_timestamps.json]

Made for issue #17: the batched default decodes its chunks with ``<|notimestamps|>`` in the prompt, the
sequential mode with timestamp tokens, and that is the one difference in decoding between the two (bench/README.md,
"The two en files one word worse"). Here the batched mode is run with the sequential mode's prompt
(``TimestampedEngine``): the same chunks, batches, encoder output and word alignment as the default, the
timestamp rules of the sequential mode (``max_initial_timestamp`` 1 s), the tokens split into segments at
the timestamp tokens as faster-whisper's sequential mode splits them. Nothing is dropped: a last segment
without its closing timestamp is kept (a chunk is cut at a pause and no longer than a window, so it is the
end of the chunk's speech), and where the decoder stopped at the opening timestamp of a segment it did not
write (Whisper's "this goes on in the next window"), the rest of the chunk, from the last word's end (where
the sequential mode would seek to), is decoded again in a batch of its own, as often as that happens.
Every file with a reference (or ``--files``), in one process, the three modes one after another per file.
Prints Markdown tables; transcripts and numbers go to JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.asr import AUDIO, BASELINE, DEFAULT, FILES, _cpu, attribution, cer, options, reference_text, wer  # noqa: E402
from pipeline.asr import SAMPLE_RATE, Chunk, FasterWhisperEngine, RawSegment, WordT  # noqa: E402


def split_at_timestamps(tokens: list[int], ts_begin: int, precision: float, dur: float
                        ) -> list[tuple[list[int], float, float]]:
    """A window's tokens as segments (tokens, start s, end s), split where two timestamp tokens meet (as
    faster-whisper's sequential mode splits them), nothing dropped: text after the last complete segment
    is a last segment ending at ``dur``; a lone opening timestamp at the end (no text) is no segment."""
    cuts = [i for i in range(1, len(tokens)) if tokens[i] >= ts_begin and tokens[i - 1] >= ts_begin]
    bounds = [0] + cuts + [len(tokens)]
    out = []
    for a, b in zip(bounds, bounds[1:]):
        part = tokens[a:b]
        if not any(t < ts_begin for t in part):
            continue
        n_ts = sum(t >= ts_begin for t in part)
        start = (part[0] - ts_begin) * precision if part[0] >= ts_begin else 0.0
        end = (part[-1] - ts_begin) * precision if part[-1] >= ts_begin and n_ts > 1 else dur
        out.append((part, min(start, dur), min(max(end, start), dur)))
    return out


class TimestampedEngine(FasterWhisperEngine):
    """The batched mode, decoding with timestamp tokens (see the module's text)."""

    def _decode_batch(self, batch: list[Chunk], enc, tok, opts) -> list[tuple[list[RawSegment], bool]]:
        from faster_whisper.transcribe import get_compression_ratio

        model = self.model
        res = self._generate(batch, enc, tok, opts, with_timestamps=True,
                             max_initial_timestamp_index=int(round(1.0 / model.time_precision)))
        segs, sizes, heads = [], [], []
        for j, (c, r) in enumerate(zip(batch, res)):  # each chunk on its own 30 s slot of a virtual timeline
            tokens = r.sequences_ids[0]
            dur = len(c.audio) / SAMPLE_RATE
            seek = int(round(30.0 * j * model.frames_per_second))
            parts = split_at_timestamps(tokens, tok.timestamp_begin, model.time_precision, dur)
            segs.append([dict(tokens=t, start=30.0 * j + a, end=30.0 * j + b, seek=seek) for t, a, b in parts])
            heads.append(dict(avg_logprob=r.scores[0] * len(tokens) / (len(tokens) + 1),
                              no_speech_prob=r.no_speech_prob, text=tok.decode([t for t in tokens if t < tok.eot]),
                              open=len(tokens) >= 2 and min(tokens[-2:]) >= tok.timestamp_begin))
            sizes.append(int(np.ceil(dur) * model.frames_per_second))
        model.add_word_timestamps(segs, tok, enc, sizes, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、", 0.0)
        out, rests = [], []
        for j, (c, parts, h) in enumerate(zip(batch, segs, heads)):
            t0 = 30.0 * j
            ratio = get_compression_ratio(h["text"]) if h["text"].strip() else 0.0
            raws = [RawSegment(float(s["start"] - t0), float(s["end"] - t0), text, float(h["avg_logprob"]),
                               float(h["no_speech_prob"]), ratio,
                               [WordT(float(w["start"] - t0), float(w["end"] - t0), w["word"], float(w["probability"]))
                                for w in s.get("words") or []])
                    for s in parts if (text := tok.decode([t for t in s["tokens"] if t < tok.eot])).strip()]
            silent = h["no_speech_prob"] > opts.no_speech_threshold and h["avg_logprob"] < opts.logprob_threshold
            if not silent and (ratio > opts.compression_ratio_threshold or h["avg_logprob"] < opts.logprob_threshold):
                out.append((self.decode(c.audio, tok.language_code, opts)[0], True))
                continue
            out.append((raws, False))
            ends = [w.end for r in raws for w in r.words] or [r.end for r in raws]
            t = max(ends) if ends else 0.0
            if h["open"] and 0.0 < t < len(c.audio) / SAMPLE_RATE - 0.3:
                rests.append((j, t))  # stopped at a segment it did not write: the rest from the last word's end
        if rests:
            sub = [Chunk(batch[j].stream, batch[j].audio[int(round(t * SAMPLE_RATE)):], None, 0.0) for j, t in rests]
            for (j, t), (raws, again) in zip(rests, self._decode_batch(sub, self._encode(sub), tok, opts)):
                moved = [replace(r, start=r.start + t, end=r.end + t,
                                 words=[replace(w, start=w.start + t, end=w.end + t) for w in r.words]) for r in raws]
                out[j] = (out[j][0] + moved, out[j][1] or again)
                self.last_stats["rests"] = self.last_stats.get("rests", 0) + 1
        return out


MODES = {"sequential (before)": BASELINE, "batched, no timestamp tokens (default)": DEFAULT,
         "batched, timestamp tokens": DEFAULT}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", default="", help="only files whose path contains one of these (comma-separated)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(Path(__file__).with_name("asr_timestamps.json")))
    args = ap.parse_args()

    from pipeline.asr import get_engine, load_engine
    from pipeline.audio import decode_channels

    engines = {}
    for mode, cfg in MODES.items():
        opts = options(cfg, args.threads)
        if mode == "batched, timestamp tokens":
            engines[mode] = (TimestampedEngine(opts), opts)
        else:
            load_engine(opts)
            engines[mode] = (get_engine(opts), opts)
    want = [w for w in args.files.split(",") if w]
    files = [f for f in FILES if f[2] and (not want or any(w in f[0] for w in want))]
    results: dict = {m: {} for m in MODES}
    for rel, lang, ref, stereo in files:
        chans = decode_channels(AUDIO / rel)
        streams = chans if stereo else chans[:1]
        ref_text = reference_text(ref)
        for mode, (eng, opts) in engines.items():
            t0, c0 = time.perf_counter(), _cpu()
            res = eng.transcribe_streams(streams, lang, opts, mono=not stereo)
            wall, cpu = time.perf_counter() - t0, _cpu() - c0
            segs = sorted(({"speaker": ("manager", "client")[ch] if stereo else "unknown", "start": t.start,
                            "end": t.end, "text": t.text} for ch, (turns, _l, _s) in enumerate(res) for t in turns),
                          key=lambda s: (s["start"], s["end"]))
            hyp = " ".join(s["text"] for s in segs)
            row = {"audio_s": sum(len(c) for c in streams) / SAMPLE_RATE, "wall_s": wall, "cpu_s": cpu,
                   "error": (cer if lang == "ru" else wer)(ref_text, hyp), "hyp": hyp,
                   "stats": dict(getattr(eng, "last_stats", {})) if opts.batched else {}}
            if ref.startswith("ref:"):
                a = attribution(json.loads((AUDIO / ref[4:]).read_text())["turns"], segs)
                row["turns"] = f"{a['turns_right']}/{a['turns']}"
            results[mode][rel] = row
            print(f"  {mode}: {rel} {100 * row['error']:.1f} % {row['audio_s'] / wall:.1f}x", file=sys.stderr,
                  flush=True)
    Path(args.out).write_text(json.dumps({"threads": args.threads, "results": results}, ensure_ascii=False,
                                         indent=1) + "\n")
    names = list(MODES)
    print("| file | " + " | ".join(names) + " | chunks / stopped early (timestamp tokens) |")
    print("|---|" + "---|" * (len(names) + 1))
    for rel, lang, ref, stereo in files:
        cells = []
        for m in names:
            r = results[m][rel]
            cells.append(f"{100 * r['error']:.1f}{' ' + r['turns'] if 'turns' in r else ''} / {r['audio_s'] / r['wall_s']:.1f}×")
        st = results[names[2]][rel]["stats"]
        print(f"| {Path(rel).name} ({'CER' if lang == 'ru' else 'WER'}) | " + " | ".join(cells)
              + f" | {st.get('chunks', 0)} / {st.get('rests', 0)} |")
    cells = []
    for m in names:
        rows = results[m].values()
        audio, wall, cpu = (sum(r[k] for r in rows) for k in ("audio_s", "wall_s", "cpu_s"))
        cells.append(f"{audio:.0f} s / {wall:.0f} s ({audio / wall:.1f}×), {cpu:.0f} CPU s")
    print("| all (audio / wall, CPU) | " + " | ".join(cells) + " | |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
