"""Who said it: channel analysis, the numpy speaker encoder, diarization and roles on real and synthetic
audio; the same-audio stereo file read once; uncertain roles kept out of the metrics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from models.events import Segment
from pipeline import voice
from pipeline.asr import AsrOptions, transcribe_arrays
from pipeline.audio import decode_channels
from pipeline.channels import analyse
from pipeline.diarize import attribute
from pipeline.tagging import tag_call
from tests import speaker_refs as refs
from tests.helpers import run_cli

pytestmark = pytest.mark.slow


def test_weights_read_without_torch_match_torch_load(tmp_path):
    """The legacy-pickle reader gives exactly the tensors torch.load gives, and the numpy LSTM the
    embeddings torch's LSTM gives (torch is in the test install only to check this)."""
    torch = pytest.importorskip("torch")  # the [openai] extra; make test installs it
    src = voice.weights_file()
    ours = voice.read_legacy_state_dict(src)
    theirs = torch.load(src, map_location="cpu", weights_only=False)["model_state"]
    assert set(ours) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(ours[k], v.numpy())
    lstm = torch.nn.LSTM(40, 256, 3, batch_first=True)
    lstm.load_state_dict({k[5:]: torch.from_numpy(v) for k, v in ours.items() if k.startswith("lstm.")})
    lin = torch.nn.Linear(256, 256)
    lin.load_state_dict({"weight": torch.from_numpy(ours["linear.weight"]), "bias": torch.from_numpy(ours["linear.bias"])})
    mels = np.random.default_rng(0).random((3, 160, 40), dtype=np.float32) * 5
    with torch.no_grad():
        _, (h, _) = lstm(torch.from_numpy(mels))
        ref = torch.relu(lin(h[-1]))
        ref = (ref / ref.norm(dim=1, keepdim=True)).numpy()
    np.testing.assert_allclose(voice.VoiceEncoder(ours).embed(mels), ref, atol=1e-5)


def test_weights_file_refuses_code(tmp_path):
    import pickle

    bad = tmp_path / "evil.pt"
    with open(bad, "wb") as f:
        for x in (1, 1001, {}):
            pickle.dump(x, f)
        pickle.dump({"model_state": __import__("os").system}, f)  # a reference to a callable
    with pytest.raises(pickle.UnpicklingError, match="unexpected object"):
        voice.read_legacy_state_dict(bad)


def test_channels_told_apart_from_the_audio(shared_dir):
    syn = shared_dir / "audio" / "synthetic"
    for lang in ("en", "ru"):  # one party per channel, with far-end echo
        assert analyse(decode_channels(syn / f"synth_call_{lang}_8k_stereo.wav")).detected == "stereo"
    assert analyse(decode_channels(shared_dir / "audio/real/stereo_diarization_en_16k.wav")).detected == "stereo"
    mono = decode_channels(syn / "synth_call_en_8k_mono.wav")[0]
    assert analyse([mono]).detected == "mono"
    same = analyse([mono, mono.copy()])
    assert same.detected == "duplicate" and same.correlation > 0.99
    # the same call at half the level, 5 ms late, with noise: still one call on two channels
    late = np.concatenate([np.zeros(80, np.float32), mono[:-80]]) * 0.5
    late += np.random.default_rng(1).normal(0, 0.003, len(late)).astype(np.float32)
    res = analyse([mono, late])
    assert res.detected == "duplicate" and res.correlation < 0.9 and res.envelope_correlation >= 0.85
    quiet = analyse([np.zeros_like(mono), mono])
    assert quiet.detected == "one_channel" and quiet.active_channel == 1


@pytest.fixture(scope="module")
def opts():
    return AsrOptions(cpu_threads=2)


@pytest.mark.parametrize("name,lang", [("synth_call_en_8k_mono", "en"), ("synth_call_ru_8k_mono", "ru"),
                                       ("callytics_call01_en_8k", "en")])
def test_roles_in_mono_calls(shared_dir, opts, name, lang):
    """Role accuracy >= 90 %: of the reference speech the transcript covers (measured 99-100 %), and of all
    reference speech with the usual 0.25 s collar at turn edges (measured 91-99 %)."""
    sub = "real" if name.startswith("callytics") else "synthetic"
    audio = decode_channels(shared_dir / "audio" / sub / f"{name}.wav")[0]
    ref = refs.callytics(shared_dir) if sub == "real" else refs.synthetic(shared_dir, lang)
    out = attribute(audio, transcribe_arrays([audio], lang, opts, mono=True)[0])
    assert out.roles["method"] == "diarization" and out.roles["voices"] == 2
    assert not out.roles["uncertain"], out.roles
    hyp = [(t.start, t.end, s) for t, s in zip(out.turns, out.speakers)]
    acc = refs.role_accuracy(ref, hyp)
    assert acc["of_covered"] >= 0.9, acc
    assert acc["coverage"] >= 0.85, acc
    # of all reference speech, turn edges (0.25 s, the DER convention) aside: measured 0.91-0.99
    assert refs.role_accuracy(ref, hyp, collar=0.25)["of_speech"] >= 0.9
    assert refs.der([(s, e, lab) for s, e, lab in ref], [(t.start, t.end, str(v)) for t, v in
                                                          zip(out.turns, out.voices)])["der"] <= 0.15


def test_a_third_party_is_a_voice_of_its_own(shared_dir, opts):
    """A transfer: someone else takes over after the call (JFK joined on after the callytics call). The
    newcomer is a third voice and none of the first two speaks after the join; the call alone gives two
    (test_roles_in_mono_calls): one party's voice is not split into a third."""
    a = decode_channels(shared_dir / "audio/real/callytics_call01_en_8k.wav")[0]
    b = decode_channels(shared_dir / "audio/real/jfk_8k.wav")[0]
    audio = np.concatenate([a, np.zeros(16000, np.float32), b])
    out = attribute(audio, transcribe_arrays([audio], "en", opts, mono=True)[0])
    assert out.roles["voices"] == 3, out.roles
    cut = (len(a) + 16000) / 16000
    late = {v for t, v in zip(out.turns, out.voices) if t.start >= cut}
    early = {v for t, v in zip(out.turns, out.voices) if t.end <= cut}
    assert len(late) == 1 and not late & early, (late, early)


def test_one_speaker_gets_no_trusted_roles(shared_dir, opts):
    """A monologue (a voicemail, a message) is no conversation: one voice, or two and the roles not trusted.
    (A second reader, osr_en_8k, passes in only 5 of 9 timing draws with AVX-512 kernels: bench/README,
    "Voices steady across machines".)"""
    audio = decode_channels(shared_dir / "audio/real/jfk_8k.wav")[0]
    out = attribute(audio, transcribe_arrays([audio], "en", opts, mono=True)[0])
    assert out.roles["voices"] == 1 or out.roles["uncertain"], out.roles


def test_der_on_the_pyannote_sample(shared_dir, opts):
    audio = decode_channels(shared_dir / "audio/real/pyannote_sample_en_16k.wav")[0]
    out = attribute(audio, transcribe_arrays([audio], "en", opts, mono=True)[0])
    ref = refs.rttm(shared_dir / "audio/real/pyannote_sample_en_16k.rttm")
    assert refs.der(ref, [(t.start, t.end, str(v)) for t, v in zip(out.turns, out.voices)])["der"] <= 0.2


def _stereo_copy(src: Path, dst: Path, fmt: str) -> Path:
    """The mono file as a two-channel file with the same audio on both (as a PBX export gives it)."""
    import av

    mono = decode_channels(src)[0]
    pcm = (np.clip(mono, -1, 1) * 32767).astype(np.int16)
    with av.open(str(dst), "w", format=fmt) as out:
        st = out.add_stream("libmp3lame" if fmt == "mp3" else "pcm_s16le", rate=16000, layout="stereo")
        frame = av.AudioFrame.from_ndarray(np.stack([pcm, pcm], axis=1).reshape(1, -1), format="s16", layout="stereo")
        frame.sample_rate = 16000
        for p in st.encode(frame):
            out.mux(p)
        for p in st.encode(None):
            out.mux(p)
    return dst


def test_same_audio_stereo_file_is_transcribed_once_with_roles(shared_dir, tmp_path):
    """`callqa transcribe` with no channel options: the MP3 with one mixed call on both channels gives each
    sentence once, with manager and client told apart, and says what it found."""
    src = shared_dir / "audio/synthetic/synth_call_ru_8k_mono.wav"
    try:
        dup = _stereo_copy(src, tmp_path / "call.mp3", "mp3")
    except Exception:  # a PyAV build without the MP3 encoder: the same test on WAV
        dup = _stereo_copy(src, tmp_path / "call.wav", "wav")
    res = run_cli("transcribe", str(dup), "--format", "json", "--no-progress", "--language", "ru")
    assert res.returncode == 0, res.stderr
    ev = json.loads(res.stdout)
    assert ev["channels"]["detected"] == "duplicate"
    assert "the same audio on both channels" in res.stderr
    segs = ev["segments"]
    for a, b in zip(segs, segs[1:]):  # nothing said twice: no two segments overlap in time
        assert b["start"] >= a["end"] - 0.05, (a["text"], b["text"])
    assert {s["speaker"] for s in segs} == {"manager", "client"}
    acc = refs.role_accuracy(refs.synthetic(shared_dir, "ru"), [(s["start"], s["end"], s["speaker"]) for s in segs])
    assert acc["of_covered"] >= 0.9, acc
    assert ev["roles"]["method"] == "diarization" and not ev["roles"]["uncertain"]


def test_uncertain_roles_leave_speaker_metrics_out():
    segs = [Segment(speaker="manager", start=0, end=30, text="Добрый день, меня зовут Анна, компания Альфа. "
                    "Расскажите, сколько у вас сотрудников?"),
            Segment(speaker="client", start=31, end=33, text="Десять.")]
    sure = tag_call(segs, "ru", 40)
    assert sure.metrics.talk_ratio is not None and sure.metrics.manager_questions >= 1
    unsure = tag_call(segs, "ru", 40, speakers_reliable=False)
    m = unsure.metrics
    assert (m.talk_ratio, m.manager_questions, m.interruptions, m.longest_monologue_s) == (None, None, None, None)
    assert m.silence_share == sure.metrics.silence_share
    assert not {f.code for f in unsure.flags} & {"long_monologue", "high_talk_ratio"}
    assert unsure.steps["greeting"].present  # the steps are still tagged


def test_without_the_encoder_mono_calls_keep_unknown(monkeypatch, shared_dir, opts):
    def missing():
        raise voice.VoiceEncoderUnavailable("the speaker encoder for mono calls is not installed")
    monkeypatch.setattr(voice, "_ENCODER", None)
    monkeypatch.setattr(voice, "load_weights", missing)
    audio = decode_channels(shared_dir / "audio/real/jfk_16k.wav")[0]
    out = attribute(audio, transcribe_arrays([audio], "en", opts, mono=True)[0])
    assert out.speakers is None and out.roles["method"] == "none" and "not installed" in out.roles["reason"]
