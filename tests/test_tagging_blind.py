"""Regression guard on the blind tagging set (tests/data/tagging_blind.jsonl).

40 dialogues (blind-en-01..20, blind-ru-01..20) written from shared/eval/GUIDELINE.md by someone who
had not seen the tagger's rules. The tagger was tuned on ids 01-10 and, after one honest holdout
measurement, on ids 11-20 too (see the Tagging section of bench/README.md), so these thresholds guard
against regressions; they are not an estimate of accuracy on unseen data.

Thresholds: final measured macro-F1 minus 0.05 and furthest-step accuracy minus 0.10, rounded down to
0.05 (measured: en 1.000 / 1.000, ru 0.964 / 0.950).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tagging_eval import evaluate, report  # noqa: E402

DATA = Path(__file__).parent / "data" / "tagging_blind.jsonl"
MACRO_F1_MIN = {"en": 0.95, "ru": 0.90}
FURTHEST_ACC_MIN = {"en": 0.90, "ru": 0.85}


@pytest.fixture(scope="module")
def results():
    return evaluate(DATA)


def test_both_languages_present(results):
    assert {"en", "ru"} <= set(results)
    assert results["en"]["dialogues"] == 20 and results["ru"]["dialogues"] == 20


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_blind_macro_f1(results, lang):
    r = results[lang]
    assert r["macro_f1"] >= MACRO_F1_MIN[lang], report({lang: r}, errors=True)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_blind_furthest_step_accuracy(results, lang):
    r = results[lang]
    assert r["furthest_accuracy"] >= FURTHEST_ACC_MIN[lang], report({lang: r})
