"""The tagger meets its accuracy targets on the labelled dialogues (shared/eval/dialogues.jsonl)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.helpers import SHARED  # noqa: E402

DATA = SHARED / "eval" / "dialogues.jsonl"
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.tagging_eval import evaluate, report  # noqa: E402


MACRO_F1_MIN = 0.85
FURTHEST_ACC_MIN = 0.90


@pytest.fixture(scope="module")
def results():
    return evaluate(DATA)


def test_both_languages_present(results):
    assert {"en", "ru"} <= set(results)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_per_turn_macro_f1(results, lang):
    r = results[lang]
    assert r["macro_f1"] >= MACRO_F1_MIN, report({lang: r}, errors=True)


@pytest.mark.parametrize("lang", ["en", "ru"])
def test_furthest_step_accuracy(results, lang):
    r = results[lang]
    assert r["furthest_accuracy"] >= FURTHEST_ACC_MIN, report({lang: r})


def test_report_renders(results):
    text = report(results)
    assert "## en" in text and "## ru" in text and "macro-F1" in text
    assert "| gold \\ pred |" in text
