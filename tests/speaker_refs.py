"""Reference speaker turns of the shared test audio, and the measures of who-spoke-when (for the tests and
bench/speakers.py). Times in seconds; a reference turn is (start, end, label)."""
from __future__ import annotations

import itertools
import json
import re
from pathlib import Path

Turn = tuple[float, float, str]


def synthetic(shared: Path, lang: str) -> list[Turn]:
    d = json.loads((shared / "audio" / "synthetic" / f"synth_call_{lang}_8k_stereo.ref.json").read_text())
    return [(t["start"], t["end"], t["speaker"]) for t in d["turns"]]


def callytics(shared: Path) -> list[Turn]:
    """The SRT's [CSR] is the agent: the manager's side of the call."""
    txt = (shared / "audio" / "real" / "callytics_call01_en_8k.srt").read_text(encoding="utf-8")
    out = []
    for m in re.finditer(r"(\d+):(\d+):(\d+),(\d+) --> (\d+):(\d+):(\d+),(\d+)\s*\n\[([^\]]+)\]", txt):
        g = [int(x) for x in m.groups()[:8]]
        out.append((g[0] * 3600 + g[1] * 60 + g[2] + g[3] / 1000, g[4] * 3600 + g[5] * 60 + g[6] + g[7] / 1000,
                    "manager" if m.group(9) == "CSR" else "client"))
    return out


def rttm(path: Path) -> list[Turn]:
    out = []
    for line in path.read_text().splitlines():
        p = line.split()
        if p and p[0] == "SPEAKER":
            out.append((float(p[3]), float(p[3]) + float(p[4]), p[7]))
    return out


def _overlap(a: Turn, b: Turn) -> float:
    return max(0.0, min(a[1], b[1]) - max(a[0], b[0]))


def role_accuracy(ref: list[Turn], hyp: list[Turn], collar: float = 0.0) -> dict:
    """Of the reference speech time: the share the transcript gives the right role (``of_speech``), the
    share it covers at all (``coverage``: Whisper's word timing trims turn edges), and the right share of
    what it covers (``of_covered``: the roles' own accuracy). ``collar`` seconds at each end of a reference
    turn are not scored (as in the DER convention: where a turn begins and ends is not the question)."""
    ref = [(s + collar, e - collar, lab) for s, e, lab in ref if e - s > 2 * collar]
    total = sum(e - s for s, e, _ in ref)
    right = covered = 0.0
    for r in ref:
        for h in hyp:
            o = _overlap(r, h)
            covered += o
            right += o if h[2] == r[2] else 0.0
    return {"of_speech": right / total, "coverage": covered / total, "of_covered": right / covered if covered else 0.0}


def der(ref: list[Turn], hyp: list[Turn], step: float = 0.01, collar: float = 0.25) -> dict:
    """Diarization error rate on a 10 ms grid with the best mapping of hypothesis to reference labels;
    ``collar`` seconds around each reference boundary are not scored (the usual 0.25 s)."""
    end = max([e for _, e, _ in ref] + [e for _, e, _ in hyp])
    n = int(end / step) + 1
    rl = sorted({x[2] for x in ref})
    hl = sorted({x[2] for x in hyp})

    def grid(turns, labels):
        g = [set() for _ in range(n)]
        for s, e, lab in turns:
            for i in range(int(s / step), min(n, int(e / step))):
                g[i].add(labels.index(lab))
        return g

    R, H = grid(ref, rl), grid(hyp, hl)
    skip = [False] * n
    for s, e, _ in ref:
        for t in (s, e):
            for i in range(max(0, int((t - collar) / step)), min(n, int((t + collar) / step))):
                skip[i] = True
    best = None
    for perm in itertools.permutations(range(max(len(rl), len(hl))), len(hl)):
        miss = fa = conf = total = 0
        for i in range(n):
            if skip[i]:
                continue
            r, h = R[i], {perm[j] for j in H[i]}
            total += len(r)
            miss += max(0, len(r) - len(h))
            fa += max(0, len(h) - len(r))
            conf += min(len(r), len(h)) - len(r & h)
        cur = {"der": (miss + fa + conf) / total, "missed": miss / total, "false_alarm": fa / total,
               "confusion": conf / total}
        if best is None or cur["der"] < best["der"]:
            best = cur
    return best
