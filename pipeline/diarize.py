"""Who spoke when in one mixed channel: speaker embeddings over the speech Whisper found, clustered.

Windows of 1.6 s (the encoder's length) are laid over the words' time spans, embedded, and clustered into
one to three voices (two is the usual call; a voicemail or an IVR gives one, a transfer three). The
constants hold when word timings move by tens of milliseconds, as they do from one CPU's Whisper kernels
to another's (bench/voices.py). Each word
takes the voice of the windows around it, smoothed so that a voice does not flicker word by word; a
Whisper turn is split where its words change voice.
"""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from pipeline.voice import HOP, PARTIAL_FRAMES, SAMPLE_RATE, get_encoder, mel_frames, normalize_volume

WINDOW_S = PARTIAL_FRAMES * HOP / SAMPLE_RATE  # 1.6
MAX_SPEAKERS = 3
SAME_VOICE = 0.90      # centroids closer than this (cosine) are one voice
# One speaker's windows split in two measured 0.80-0.88, two real speakers on 16 kHz overlapping speech
# 0.87-0.88 (bench/voices.py): between MAYBE_ONE_VOICE and SAME_VOICE the two voices are kept, but the roles
# are not trusted (a monologue or voicemail must not get a confident manager and client).
MAYBE_ONE_VOICE = 0.85
# A third voice must be as far from both others as two parties are: real third parties (a transfer) measured
# 0.60-0.67 from their nearest voice, one party's voice split in two 0.80-0.86 (bench/README, "Voices steady
# across machines").
THIRD_VOICE = 0.75
MIN_SHARE = 0.05       # a voice needs this share of the windows (fewer: outliers of one voice)
# Windows every 0.4 s: at 0.8 s a 30 s two-party sample had about 25 windows, and timings a few tens of ms
# apart (another CPU's Whisper kernels) swung its clustering (bench/README, "Voices steady across machines").
STEP_S = 0.4
KMEANS_STARTS = 20     # 0: one start only, from the most remote window (as before 2026-12-01)
SWITCH_COST = 0.5      # in the smoothing: a change of voice must be earned over a few windows
BATCH = 64


@dataclass
class Diarization:
    labels: list[int]                 # per window
    windows: list[tuple[float, float]]
    speakers: int
    centroid_similarity: Optional[float] = None  # of the two main voices (1.0: one voice)
    scores: Optional[np.ndarray] = None           # window x speaker similarity
    extra: dict = field(default_factory=dict)


def speech_windows(spans: list[tuple[float, float]], step_s: float, min_s: float = 0.3) -> list[tuple[float, float]]:
    """Windows of up to 1.6 s every ``step_s`` over merged speech spans; spans shorter than ``min_s`` give none."""
    merged: list[list[float]] = []
    for s, e in sorted(spans):
        if merged and s - merged[-1][1] < 0.3:
            merged[-1][1] = max(merged[-1][1], e)
        else:
            merged.append([s, e])
    out = []
    for s, e in merged:
        if e - s < min_s:
            continue
        if e - s <= WINDOW_S:
            out.append((s, e))
            continue
        t = s
        while t + WINDOW_S < e:
            out.append((t, t + WINDOW_S))
            t += step_s
        out.append((max(s, e - WINDOW_S), e))
    return out


def embed_windows(audio: np.ndarray, windows: list[tuple[float, float]]) -> np.ndarray:
    enc = get_encoder()
    wav = normalize_volume(audio)
    mels = []
    for s, e in windows:
        seg = wav[int(s * SAMPLE_RATE): int(e * SAMPLE_RATE)]
        m = mel_frames(seg)[:PARTIAL_FRAMES]
        if len(m) < PARTIAL_FRAMES:  # a short span: its frames repeated to the window's length
            m = np.resize(m, (PARTIAL_FRAMES, m.shape[1])) if len(m) else np.zeros((PARTIAL_FRAMES, m.shape[1]), np.float32)
        mels.append(m)
    out = [enc.embed(np.stack(mels[i:i + BATCH])) for i in range(0, len(mels), BATCH)]
    return np.concatenate(out) if out else np.zeros((0, 256), np.float32)


def _kmeans_from(x: np.ndarray, seeds: list[int], iters: int) -> tuple[np.ndarray, np.ndarray, float]:
    cent = x[seeds].copy()
    labels = np.full(len(x), -1)
    for _ in range(iters):
        new = np.argmax(x @ cent.T, axis=1)
        for j in range(len(seeds)):
            if np.any(new == j):
                c = x[new == j].mean(0)
                cent[j] = c / max(np.linalg.norm(c), 1e-9)
        if np.array_equal(new, labels):
            break
        labels = new
    return labels, cent, float(np.max(x @ cent.T, axis=1).sum())


def _kmeans(x: np.ndarray, k: int, iters: int = 30, starts: Optional[int] = None) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means, the best of several deterministic starts (each a window and the windows farthest
    from those chosen). One start from the call's most remote window let a few windows of overlap or noise
    take a cluster of their own, and the two parties share the other."""
    starts = KMEANS_STARTS if starts is None else starts
    # No window x window matrix: an hour-long call has about 9000 windows.
    total = x @ x.sum(0)
    first = [int(np.argmin(total))]
    if starts:
        first += [int(np.argmax(total))] + [int(i) for i in np.linspace(0, len(x) - 1, starts).round().astype(int)]
    best = None
    for s0 in dict.fromkeys(first):
        seeds, nearest = [s0], x @ x[s0]
        while len(seeds) < k:
            seeds.append(int(np.argmin(nearest)))
            nearest = np.maximum(nearest, x @ x[seeds[-1]])
        cur = _kmeans_from(x, seeds, iters)
        if best is None or cur[2] > best[2] + 1e-9:
            best = cur
    return best[0], best[1]


def cluster(emb: np.ndarray, max_speakers: int = MAX_SPEAKERS) -> tuple[np.ndarray, np.ndarray]:
    """Labels and centroids for one to ``max_speakers`` voices."""
    n = len(emb)
    if n < 4:
        c = emb.mean(0, keepdims=True)
        return np.zeros(n, int), c / max(np.linalg.norm(c), 1e-9)
    labels, cent = _kmeans(emb, 2)
    # A call has two parties unless the voices are nearly one; close to that, attribute() leaves the roles
    # uncertain (MAYBE_ONE_VOICE).
    if float(cent[0] @ cent[1]) >= SAME_VOICE or np.bincount(labels, minlength=2).min() < MIN_SHARE * n:
        c = emb.mean(0, keepdims=True)
        return np.zeros(n, int), c / max(np.linalg.norm(c), 1e-9)
    if max_speakers >= 3 and n >= 12:
        l3, c3 = _kmeans(emb, 3)
        shares = np.bincount(l3, minlength=3) / n
        pair = c3 @ c3.T
        if shares.min() >= MIN_SHARE and pair[np.triu_indices(3, 1)].max() < THIRD_VOICE:
            return l3, c3
    return labels, cent


def smooth(scores: np.ndarray, switch_cost: Optional[float] = None) -> np.ndarray:
    """Viterbi over windows: the voice with the best similarity, changing only when it pays."""
    switch_cost = SWITCH_COST if switch_cost is None else switch_cost
    n, k = scores.shape
    if k == 1 or n == 0:
        return np.zeros(n, int)
    s = scores * 10  # similarities differ by tenths; scale them against the cost of a switch
    back = np.zeros((n, k), int)
    cur = s[0].copy()
    for t in range(1, n):
        trans = cur[:, None] - switch_cost * (1 - np.eye(k))
        back[t] = np.argmax(trans, axis=0)
        cur = trans[back[t], np.arange(k)] + s[t]
    path = np.zeros(n, int)
    path[-1] = int(np.argmax(cur))
    for t in range(n - 1, 0, -1):
        path[t - 1] = back[t, path[t]]
    return path


def diarize(audio: np.ndarray, spans: list[tuple[float, float]], step_s: Optional[float] = None,
            max_speakers: int = MAX_SPEAKERS) -> Diarization:
    windows = speech_windows(spans, STEP_S if step_s is None else step_s)
    if not windows:
        return Diarization(labels=[], windows=[], speakers=1 if spans else 0, centroid_similarity=1.0)
    emb = embed_windows(audio, windows)
    labels, cent = cluster(emb, max_speakers)
    scores = emb @ cent.T
    if len(cent) > 1:
        labels = smooth(scores)
    used = sorted(set(labels.tolist()))
    remap = {old: i for i, old in enumerate(used)}
    labels = np.array([remap[v] for v in labels], int)
    cent = cent[used]
    scores = scores[:, used]
    sim = float(cent[0] @ cent[1]) if len(cent) > 1 else 1.0
    return Diarization(labels=labels.tolist(), windows=windows, speakers=len(used),
                       centroid_similarity=round(sim, 4), scores=scores)


def speaker_at(d: Diarization, start: float, end: float) -> int:
    """The voice of the windows that overlap [start, end] most (by overlap); with none, the nearest one."""
    if not d.windows:
        return 0
    # Windows come in time order (speech_windows) and last at most WINDOW_S, so only those starting in
    # [start - WINDOW_S, end) can overlap: a search, not a scan of the call per word (hour-long calls).
    starts = d.extra.get("starts")
    if starts is None:
        starts = d.extra["starts"] = [ws for ws, _ in d.windows]
    votes = np.zeros(d.speakers)
    for i in range(bisect.bisect_left(starts, start - WINDOW_S), bisect.bisect_left(starts, end)):
        (ws, we), lab = d.windows[i], d.labels[i]
        ov = min(end, we) - max(start, ws)
        if ov > 0:
            votes[lab] += ov
    if votes.sum() > 0:
        return int(np.argmax(votes))
    mid = (start + end) / 2
    best_gap, nearest = float("inf"), 0
    for (ws, we), lab in zip(d.windows, d.labels):
        gap = abs((ws + we) / 2 - mid)
        if gap < best_gap:
            best_gap, nearest = gap, lab
    return nearest


def word_spans(turns) -> list[tuple[float, float]]:
    spans = [(w.start, w.end) for t in turns for w in t.words if w.end > w.start]
    return spans or [(t.start, t.end) for t in turns if t.end > t.start]


def split_turns(turns, d: Diarization, min_run_s: float = 0.5) -> list[tuple[object, int]]:
    """Each Whisper turn cut where its words change voice: ``(turn, voice)`` pairs in time order."""
    from pipeline.asr import Turn

    out: list[tuple[object, int]] = []
    for t in turns:
        if not t.words:
            out.append((t, speaker_at(d, t.start, t.end)))
            continue
        labels = [speaker_at(d, w.start, w.end) for w in t.words]
        runs: list[list[int]] = []  # [label, first word, last word]
        for i, lab in enumerate(labels):
            if runs and runs[-1][0] == lab:
                runs[-1][2] = i
            else:
                runs.append([lab, i, i])
        # a blip of a word or two under half a second is the windows' blur, not a reply
        for j, r in enumerate(runs):
            if len(runs) > 1 and t.words[r[2]].end - t.words[r[1]].start < min_run_s:
                r[0] = runs[j - 1][0] if j > 0 else runs[j + 1][0]
        merged: list[list[int]] = []
        for r in runs:
            if merged and merged[-1][0] == r[0]:
                merged[-1][2] = r[2]
            else:
                merged.append(list(r))
        if len(merged) == 1:
            out.append((t, merged[0][0]))
            continue
        for lab, a, b in merged:
            ws = t.words[a:b + 1]
            out.append((Turn(start=ws[0].start, end=ws[-1].end, text="".join(w.word for w in ws).strip(),
                             avg_logprob=t.avg_logprob, words=list(ws)), lab))
    return out


def attribute(audio: np.ndarray, result, direction: Optional[str] = None, min_confidence: float = 0.8):
    """A mono ChannelResult with its turns split by voice and each given a role (manager / client), and how
    sure that is. Without the speaker encoder the turns stay as they are, speaker 'unknown', and the
    reason is recorded."""
    import dataclasses
    import time

    from pipeline import roles
    from pipeline.voice import VoiceEncoderUnavailable

    t0 = time.perf_counter()
    if not result.turns:
        return dataclasses.replace(result, roles={"method": "none", "voices": 0, "reason": "no speech"})
    try:
        d = diarize(audio, word_spans(result.turns))
    except VoiceEncoderUnavailable as e:
        return dataclasses.replace(result, roles={"method": "none", "reason": str(e)})
    pairs = split_turns(result.turns, d)
    texts = [t.text for t, _ in pairs]
    voices = [v for _, v in pairs]
    ra = roles.assign(texts, voices, [roles.turn_weight(x) for x in texts], direction=direction,
                      min_confidence=min_confidence)
    info = {"method": "diarization", "voices": d.speakers, "confidence": round(ra.confidence, 4),
            "uncertain": ra.uncertain, "voice_similarity": d.centroid_similarity}
    if d.speakers >= 2 and d.centroid_similarity >= MAYBE_ONE_VOICE:
        info.update(uncertain=True, reason="the two voices are so alike that they may be one speaker")
    spent = time.perf_counter() - t0
    return dataclasses.replace(
        result, turns=[t for t, _ in pairs], voices=voices, speakers=[ra.roles.get(v, "unknown") for v in voices],
        roles=info,
        wall_s=result.wall_s + spent, diarize_s=round(spent, 3))
