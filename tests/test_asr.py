"""Speech recognition on real audio, both engines through one interface, guards, failures, the CLI."""
from __future__ import annotations

import asyncio
import importlib.util
import json
import wave
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from pipeline import asr
from pipeline.asr import (AsrError, AsrOptions, ModelNotFound, RawSegment, TimeMap, WordT, chunk_regions,
                          collapse_loops, compact, group_turns, is_hallucination, options_from_settings,
                          spans_at_pauses, transcribe_array, transcribe_call, transcribe_channel)
from pipeline.audio import SAMPLE_RATE, decode_channels

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_asr", REPO / "bench" / "asr.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)  # scoring helpers shared with the benchmark (jiwer WER/CER, attribution)

FW = AsrOptions(cpu_threads=2)  # the default configuration (base, int8, batched, beam 5, VAD), 2 threads
FW_SEQ = replace(FW, batched=False)  # sequential decoding (CALLQA_ASR_BATCHED=0)


def hold_music(seconds: float = 20.0, seed: int = 0) -> np.ndarray:
    """Synthetic hold music: plucked three-note chords on a beat."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    out = np.zeros_like(t)
    notes = [261.63, 293.66, 329.63, 349.23, 392.0, 440.0, 493.88]
    for i in range(int(seconds / 0.5)):
        a, b = int(i * 0.5 * SAMPLE_RATE), int((i + 1) * 0.5 * SAMPLE_RATE)
        seg = t[a:b] - t[a]
        env = np.minimum(seg / 0.02, 1) * np.exp(-seg * 3)
        for f in rng.choice(notes, 3, replace=False) * rng.choice([0.5, 1, 2]):
            out[a:b] += env * (np.sin(2 * np.pi * f * seg) + 0.3 * np.sin(4 * np.pi * f * seg))
    return (out / np.abs(out).max() * 0.5).astype(np.float32)


def write_wav(path: Path, audio: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(audio, -1, 1) * 32767).astype(np.int16).tobytes())
    return path


def text_of(result) -> str:
    return " ".join(t.text for t in result.turns)


# ----------------------------------------------------------------------------- units (no model)

def test_group_turns_splits_at_pauses_and_sentence_ends():
    def w(a, b, text):
        return (WordT(a, b, text, 0.9), -0.1)
    words = [w(0.0, 0.4, " Hello."), w(1.0, 1.2, " Yes"), w(1.3, 1.5, " sure"), w(2.6, 3.0, " next")]
    turns = group_turns(words, gap_s=0.8, sentence_gap_s=0.5)
    assert [t.text for t in turns] == ["Hello.", "Yes sure", "next"]
    assert group_turns(words, gap_s=0.8, sentence_gap_s=None)[0].text == "Hello. Yes sure"


def test_loops_are_collapsed_but_real_repeats_kept():
    ws = [WordT(i, i + 0.5, f" {x}", 0.9) for i, x in enumerate(
        "thank you thank you thank you thank you for calling".split())]
    assert "".join(w.word for w in collapse_loops(ws)).split() == "thank you thank you for calling".split()
    no = [WordT(i, i + 0.5, " no,", 0.9) for i in range(3)]
    assert len(collapse_loops(no)) == 3  # "no, no, no" is speech


def test_hallucination_rules():
    opts = AsrOptions()
    ok = RawSegment(0, 1, " Hello there.", -0.3, 0.1, 1.2)
    assert not is_hallucination(ok, opts)
    assert is_hallucination(replace(ok, no_speech_prob=0.9, avg_logprob=-1.2), opts)
    assert is_hallucination(replace(ok, compression_ratio=3.1), opts)
    assert is_hallucination(replace(ok, text=" Thank you for watching!", no_speech_prob=0.4), opts)
    assert is_hallucination(replace(ok, text=" Продолжение следует...", avg_logprob=-0.8), opts)
    assert not is_hallucination(replace(ok, text=" Thank you.", no_speech_prob=0.01, avg_logprob=-0.2), opts)


def test_compact_keeps_short_gaps_and_maps_times_back():
    audio = np.ones(10 * SAMPLE_RATE, np.float32)
    regions = [(1 * SAMPLE_RATE, 2 * SAMPLE_RATE), (6 * SAMPLE_RATE, 7 * SAMPLE_RATE)]
    out, tmap = compact(audio, regions, gap_s=1.0)
    assert len(out) == 3 * SAMPLE_RATE and not out[SAMPLE_RATE:2 * SAMPLE_RATE].any()
    assert tmap.to_original(0.5) == pytest.approx(1.5)
    assert tmap.to_original(2.5) == pytest.approx(6.5)
    # inside the inserted gap: a start belongs to the next region, an end to the previous one
    assert tmap.to_original(1.6, "start") == pytest.approx(6.0)
    assert tmap.to_original(1.6, "end") == pytest.approx(2.0)
    assert TimeMap([]).to_original(3.0) == 3.0


def test_chunks_hold_whole_regions_up_to_one_window():
    sr = SAMPLE_RATE
    regions = [(0, 10 * sr), (12 * sr, 22 * sr), (40 * sr, 49 * sr), (50 * sr, 95 * sr)]
    groups = chunk_regions(regions, max_s=30.0, gap_s=1.0)
    # 10 s + 1 s (2 s pause, shortened) + 10 s = 21 s; the next 9 s region would need 1 s more than 30 s
    assert groups[0] == [(0, 10 * sr), (12 * sr, 22 * sr)]
    assert groups[1] == [(40 * sr, 49 * sr)]
    assert groups[2:] == [[(50 * sr, 80 * sr)], [(80 * sr, 95 * sr)]]  # over a window: cut (the VAD avoids it)
    for g in groups:
        audio, tmap = compact(np.ones(100 * sr, np.float32), g, 1.0)
        assert len(audio) <= 30 * sr and tmap.to_original(0.0) == g[0][0] / sr
    assert chunk_regions([], 30.0, 1.0) == []


def test_mono_is_decoded_whole_in_spans_cut_in_the_middle_of_pauses():
    sr = SAMPLE_RATE
    regions = [(1 * sr, 12 * sr), (14 * sr, 26 * sr), (27 * sr, 45 * sr), (46 * sr, 72 * sr), (80 * sr, 85 * sr)]
    spans = spans_at_pauses(regions, 90 * sr, max_s=30.0)
    assert spans[:3] == [(0, 13 * sr), (13 * sr, 26 * sr + sr // 2), (26 * sr + sr // 2, 45 * sr + sr // 2)]
    # 26 s of speech with 0.5 s of pause before and 4 s after is over a window: 0.5 s of silence left out
    h = sr // 2
    assert spans[3:] == [(45 * sr + h, 75 * sr + h), (76 * sr, 90 * sr)]
    # a long pause: its silence is decoded too, in spans of its own
    assert spans_at_pauses([(0, 29 * sr), (60 * sr, 70 * sr)], 70 * sr, 30.0) == \
        [(0, 30 * sr), (30 * sr, 44 * sr + h), (44 * sr + h, 70 * sr)]
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])) and spans[0][0] == 0 and spans[-1][1] == 90 * sr
    assert all(e - s <= 30 * sr for s, e in spans)
    groups = chunk_regions(spans, 30.0, 1.0)  # packed whole: windows cut only where the spans meet
    assert [g[0][0] for g in groups] == [0, 26 * sr + h, 45 * sr + h, 76 * sr]
    assert spans_at_pauses([(0, 100 * sr)], 100 * sr, 30.0)[0] == (0, 30 * sr)  # over a window: cut (VAD avoids it)
    assert spans_at_pauses([(2 * sr, 5 * sr)], 20 * sr, 30.0) == [(0, 20 * sr)]


def test_lenient_vad_retry_when_the_vad_misses_loud_speech(monkeypatch):
    import faster_whisper.vad as fv
    calls = []

    def fake(audio, opts):
        calls.append(opts.threshold)
        if opts.threshold >= 0.5:  # like Silero on steeply band-passed audio: most turns missed
            return [{"start": 0, "end": SAMPLE_RATE}]
        return [{"start": 0, "end": SAMPLE_RATE}, {"start": 3 * SAMPLE_RATE, "end": 5 * SAMPLE_RATE}]
    monkeypatch.setattr(fv, "get_speech_timestamps", fake)
    audio = np.zeros(6 * SAMPLE_RATE, np.float32)
    audio[: SAMPLE_RATE] = 0.3 * np.sin(np.arange(SAMPLE_RATE) / 5)
    audio[3 * SAMPLE_RATE: 5 * SAMPLE_RATE] = 0.3 * np.sin(np.arange(2 * SAMPLE_RATE) / 5)
    assert asr.speech_regions(audio, AsrOptions()) == [(0, SAMPLE_RATE), (3 * SAMPLE_RATE, 5 * SAMPLE_RATE)]
    assert calls == [0.5, 0.2]


def test_model_resolution_errors_are_clear(tmp_path):
    with pytest.raises(ModelNotFound, match="does not exist"):
        asr.resolve_model(str(tmp_path / "nope"))
    with pytest.raises(ModelNotFound, match="no model.bin"):
        asr.resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFound, match="CALLQA_ASR_ALLOW_DOWNLOAD"):
        asr.resolve_model("large-v3")  # never reaches a hub unless allowed
    with pytest.raises(ModelNotFound, match="checkpoint"):
        asr.resolve_openai_checkpoint("large-v3")
    with pytest.raises(AsrError, match="unknown ASR engine"):
        asr.get_engine(AsrOptions(engine="whisper.cpp"))


def test_options_from_settings():
    from config.settings import Settings
    s = Settings(asr_hotwords="Brightline, Технопарк", asr_initial_prompt="Sales call.")
    o = options_from_settings(s)
    assert (o.engine, o.compute_type, o.vad, o.hotwords, o.initial_prompt) == \
        ("faster-whisper", "int8", True, "Brightline, Технопарк", "Sales call.")
    assert (o.batched, o.batch_size, o.beam_size) == (True, 4, 5)
    o = options_from_settings(s, engine="openai-whisper")
    assert o.compute_type == "float32"  # int8 is faster-whisper's default, not PyTorch's
    o = options_from_settings(s, engine="openai-whisper", compute_type=None)  # the CLI passes None when not set
    assert o.compute_type == "float32"
    o = options_from_settings(Settings(asr_device="cuda", asr_batch_size=16, asr_batched=False))
    assert (o.device, o.compute_type, o.batch_size, o.batched) == ("cuda", "float16", 16, False)
    assert options_from_settings(Settings(asr_device="cuda"), compute_type="int8").compute_type == "int8"


# ----------------------------------------------------------------------------- real audio (base, default settings)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batched", "sequential"])
@pytest.mark.parametrize("name,ref,lang,metric,limit", [
    ("jfk_16k.wav", "jfk.txt", "en", "wer", 0.05),
    ("osr_en_8k.wav", "osr_en_8k.txt", "en", "wer", 0.08),
    ("festvox_ru_real_8k.wav", "festvox_ru_real_8k.txt", "ru", "cer", 0.10),
])
def test_accuracy_on_real_audio(shared_dir, name, ref, lang, metric, limit, mode):
    real = shared_dir / "audio" / "real"
    r = transcribe_channel(str(real / name), None, lang, FW if mode == "batched" else FW_SEQ)
    err = getattr(bench, metric)((real / ref).read_text(), text_of(r))
    assert err <= limit, (name, metric, err, text_of(r))
    words = [w for t in r.turns for w in t.words]
    assert words and all(a.start <= b.start + 1e-3 for a, b in zip(words, words[1:]))
    assert all(0 <= w.start <= w.end <= r.audio_s + 0.5 for w in words)


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["batched, channels together", "batched, one channel a job", "sequential"])
@pytest.mark.parametrize("lang", ["en", "ru"])
def test_stereo_calls_every_turn_right_speaker_in_order(shared_dir, lang, mode):
    from models.events import CallRecorded
    from pipeline.audio import probe
    from pipeline.transcribe import merge, plan_channels

    path = shared_dir / "audio" / "synthetic" / f"synth_call_{lang}_8k_stereo.wav"
    ev = CallRecorded(call_id=f"t-{lang}", manager_id="m", recording_url=path.as_uri(), language=lang,
                      started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                      channels={"layout": "stereo", "manager_channel": 0})
    jobs = plan_channels(ev, probe(path))
    if mode == "batched, channels together":  # callqa transcribe, and the worker on a GPU
        results = transcribe_call(str(path), [j.channel for j in jobs], lang, FW)
    else:  # the worker on the CPU: each channel a job of its own
        results = [transcribe_channel(str(path), j.channel, lang, FW if mode.startswith("batched") else FW_SEQ)
                   for j in jobs]
    out = merge(ev, jobs, results, FW, 1.0)
    ref = json.loads(path.with_suffix(".ref.json").read_text())["turns"]
    segs = [s.model_dump() for s in out.segments]
    att = bench.attribution(ref, segs)
    assert att["in_order"] and att["wrong_speaker_segments"] == 0, (att, [(s["speaker"], s["text"]) for s in segs])
    assert att["turns_right"] == len(ref), att
    assert max(att["wer_per_speaker"].values()) < (0.35 if lang == "ru" else 0.2), att
    assert all(s.words for s in out.segments)


@pytest.mark.slow
def test_batched_chunk_that_fails_whisper_checks_is_decoded_again(shared_dir):
    """A chunk over the log-prob threshold (here: every chunk) is decoded again sequentially; words stay."""
    audio = decode_channels(shared_dir / "audio" / "real" / "jfk_16k.wav")[0]
    engine = asr.get_engine(FW)
    [(turns, lang, _)] = engine.transcribe_streams([audio], None, replace(FW, logprob_threshold=-0.001), mono=True)
    assert engine.last_stats == {"chunks": 1, "fallbacks": 1} and lang == "en"  # detected from the first batch
    assert bench.wer((shared_dir / "audio" / "real" / "jfk.txt").read_text(), " ".join(t.text for t in turns)) <= 0.05
    assert all(t.words for t in turns)


@pytest.mark.slow
def test_batched_decoding_holds_only_the_batches_in_flight(shared_dir, monkeypatch):
    """Chunks are cut and their features computed batch by batch, so a long call never holds all of them."""
    audio = decode_channels(shared_dir / "audio" / "real" / "festvox_ru_real_8k.wav")[0]
    long = np.tile(audio, 3)  # ~7 minutes, ~20 chunks
    engine = asr.get_engine(FW)
    made, encoded = [], []
    real_compact, real_encode = asr.compact, engine.model.encode
    monkeypatch.setattr(asr, "compact", lambda *a: made.append(1) or real_compact(*a))

    class Enough(Exception):
        pass

    def encode(features):
        encoded.append((len(features), len(made)))
        if len(encoded) == 3:
            raise Enough  # seen enough; skip decoding the rest
        return real_encode(features)
    monkeypatch.setattr(engine.model, "encode", encode)
    with pytest.raises(Enough):
        engine.transcribe_streams([long], "ru", replace(FW, batch_size=4), mono=True)
    per = 4 // engine.workers  # batch_size counts the chunks in flight over all workers
    assert engine.workers == FW.cpu_threads and all(n == per for n, _ in encoded)
    # when the k-th batch is encoded, at most the batches of the workers ahead of it have been cut
    assert all(m <= per * (k + engine.workers) for k, (_, m) in enumerate(encoded, 1)), encoded


# ----------------------------------------------------------------------------- both engines, one interface

@pytest.fixture(scope="module", params=["faster-whisper", "openai-whisper"])
def engine_opts(request):
    if request.param == "faster-whisper":
        return FW
    ckpt = request.getfixturevalue("openai_checkpoint")
    return AsrOptions(engine="openai-whisper", model=str(ckpt), compute_type="float32", cpu_threads=2)


@pytest.mark.slow
def test_engine_interface_on_real_speech(engine_opts, shared_dir):
    audio = decode_channels(shared_dir / "audio" / "real" / "jfk_16k.wav")[0]
    engine = asr.get_engine(engine_opts)
    assert engine.name == engine_opts.engine
    turns, lang = engine.transcribe(audio, None, engine_opts)  # language detection
    assert lang == "en"
    text = " ".join(t.text for t in turns)
    assert bench.wer((shared_dir / "audio" / "real" / "jfk.txt").read_text(), text) <= 0.05, text
    for t in turns:
        assert t.words and t.start == t.words[0].start and t.end == t.words[-1].end
        assert t.avg_logprob < 0
    assert asr.get_engine(engine_opts) is engine  # loaded once per process


@pytest.mark.slow
def test_engine_returns_nothing_for_music_and_silence(engine_opts):
    rng = np.random.default_rng(1)
    quiet = (rng.normal(0, 0.002, 8 * SAMPLE_RATE)).astype(np.float32)
    r = transcribe_array(quiet, None, replace(engine_opts, vad=False))  # no VAD: the guards alone
    assert r.turns == [], text_of(r)
    r = transcribe_array(hold_music(), None, engine_opts)
    assert r.turns == [], text_of(r)


def test_openai_engine_refuses_int8(openai_checkpoint):
    with pytest.raises(AsrError, match="float32"):
        asr.OpenAIWhisperEngine(AsrOptions(engine="openai-whisper", model=str(openai_checkpoint),
                                           compute_type="int8"))


# ----------------------------------------------------------------------------- the pipeline's transcriber

def _settings(tmp_path, **kw):
    from config.settings import Settings
    return Settings(home=str(tmp_path), recordings_dir=str(tmp_path), asr_workers=1, asr_cpu_threads=2, **kw)


def _event(path: Path, layout="mono"):
    from models.events import CallRecorded
    return CallRecorded(call_id=path.stem, manager_id="m", recording_url=path.as_uri(), language="auto",
                        started_at=datetime(2026, 1, 1, tzinfo=timezone.utc),
                        channels={"layout": layout, "manager_channel": 0 if layout == "stereo" else None})


@pytest.mark.slow
def test_transcriber_typed_failures_and_timeout(tmp_path, shared_dir):
    import shutil

    from pipeline.audio import DecodeError, EmptyAudioError, NoSpeechError, SilentAudioError
    music = write_wav(tmp_path / "music.wav", hold_music(15))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(SAMPLE_RATE * 5))
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    junk = tmp_path / "junk.mp3"
    junk.write_bytes(b"\x00\x01not audio" * 500)
    jfk = Path(shutil.copy(shared_dir / "audio" / "real" / "jfk_8k.wav", tmp_path / "jfk_8k.wav"))

    tr = __import__("pipeline.transcribe", fromlist=["CallTranscriber"]).CallTranscriber(
        _settings(tmp_path, asr_call_timeout_s=60.0))
    try:
        for path, exc in [(music, NoSpeechError), (silent, SilentAudioError), (empty, EmptyAudioError),
                          (junk, DecodeError)]:
            with pytest.raises(exc):
                asyncio.run(tr(_event(path)))
        out = asyncio.run(tr(_event(jfk)))
        assert "country" in " ".join(s.text for s in out.segments).lower()
        assert out.language_detected == "en" and out.channels.detected == "mono"
        assert out.roles.method == "diarization"  # a mono file: voices told apart in the pool
    finally:
        tr.close()

    # a per-call limit: a clear TimeoutError, and the pool is replaced so the next call still runs
    tr = __import__("pipeline.transcribe", fromlist=["CallTranscriber"]).CallTranscriber(
        _settings(tmp_path, asr_call_timeout_s=0.2))
    try:
        with pytest.raises(TimeoutError, match="CALLQA_ASR_CALL_TIMEOUT_S"):
            asyncio.run(tr(_event(jfk)))
        assert tr._pool is None
    finally:
        tr.close()


# ----------------------------------------------------------------------------- CLI

@pytest.mark.slow
def test_cli_transcribe_formats(shared_dir, capsys):
    from callqa.cli import main
    wav = str(shared_dir / "audio" / "real" / "jfk_8k.wav")
    assert main(["transcribe", wav, "--manager-channel", "none", "--language", "en", "--format", "srt",
                 "--no-diarize"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("1\n00:00:0") and "-->" in out and "[unknown]" in out and "country" in out.lower()
    assert main(["transcribe", wav, "--manager-channel", "none", "--format", "json", "--no-vad"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["language_detected"] == "en" and data["segments"][0]["words"]


def test_cli_transcribe_bad_file_is_a_clear_error(tmp_path, capsys):
    from callqa.cli import main
    bad = tmp_path / "x.wav"
    bad.write_bytes(b"nope" * 100)
    assert main(["transcribe", str(bad)]) == 2
    assert "DecodeError" in capsys.readouterr().err


def test_second_engine_ready_out_of_the_box(openai_checkpoint, shared_dir):
    """`--engine openai-whisper` alone: its own compute type, and the checkpoint the product made from the
    installed weights (the fixture runs the same prepare step as `callqa models prepare`)."""
    from tests.helpers import run_cli

    res = run_cli("transcribe", str(shared_dir / "audio/real/jfk_16k.wav"), "--engine", "openai-whisper",
                  "--no-progress", "--language", "en", "--no-diarize", timeout=300)
    assert res.returncode == 0, res.stderr
    assert "openai-whisper base float32" in res.stderr
    assert "ask not what your country can do for you" in res.stdout.lower().replace(",", "")
    prep = run_cli("models", "prepare", "--engine", "openai-whisper")
    assert prep.returncode == 0 and f"openai-whisper base: {openai_checkpoint}" in prep.stdout, prep.stderr


def test_transcribe_on_cuda_without_a_gpu_says_what_to_do(shared_dir):
    """CTranslate2's CUDA failure was a raw traceback; now an error naming the driver, the libraries and --device cpu."""
    import ctranslate2
    if ctranslate2.get_cuda_device_count() > 0:
        pytest.skip("this machine has a GPU")
    from tests.helpers import run_cli
    res = run_cli("transcribe", str(shared_dir / "audio/real/jfk_16k.wav"), "--device", "cuda")
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "no usable GPU" in res.stderr and "--device cpu" in res.stderr
