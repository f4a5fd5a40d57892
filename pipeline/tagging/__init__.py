"""Sales-step tagger: which of the five sales steps each utterance shows, and call-level verdicts.

Public interface (used by the pipeline and the ``callqa tag`` CLI)::

    tag_call(segments, language, duration_s=None, rules=None) -> models.events.Tagging
    load_rules(config_dir=None) -> Rules
    tag_dialogues(input_path, output_path) -> None
"""
from __future__ import annotations

from .call import tag_call
from .dialogues import tag_dialogues
from .rules import LiveRules, Rules, RulesError, load_rules

__all__ = ["tag_call", "load_rules", "tag_dialogues", "LiveRules", "Rules", "RulesError"]
