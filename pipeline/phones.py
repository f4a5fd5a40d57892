"""Phone numbers to E.164, so a call's client number and a CRM lead's phones meet on one key.

``8 (912) 345-67-89``, ``+7 912 345 67 89``, ``7-912-345-67-89`` and ``89123456789`` are all
``+79123456789`` (the Russian trunk prefix 8 and a bare country code are understood for the default
region, CALLQA_PHONE_REGION). Extensions (``101``), empty and impossible numbers give None: they
join nothing.
"""
from __future__ import annotations

import re
from typing import Iterable, Optional

import phonenumbers

_JUNK = re.compile(r"(?i)\s*(?:ext\.?|доб\.?|x|#)\s*\d+\s*$")


def normalize_phone(raw: Optional[str], region: str = "RU") -> Optional[str]:
    if raw is None:
        return None
    text = _JUNK.sub("", str(raw)).strip()
    if text.startswith("00"):
        text = "+" + text[2:]
    digits = re.sub(r"\D", "", text)
    if len(digits) < 7:  # an extension or a short service number
        return None
    if not text.startswith("+") and region.upper() in ("RU", "KZ") and len(digits) == 11 and digits[0] in "78":
        text = "+7" + digits[1:]  # 8 912... (trunk prefix) and 7 912... (country code without +)
    try:
        num = phonenumbers.parse(text, region.upper() or None)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_possible_number(num):
        return None
    return phonenumbers.format_number(num, phonenumbers.PhoneNumberFormat.E164)


def normalize_all(raws: Iterable[Optional[str]], region: str = "RU") -> list[str]:
    """The distinct E.164 forms of ``raws``, in order, without the ones that are not numbers."""
    out: list[str] = []
    for r in raws:
        n = normalize_phone(r, region)
        if n and n not in out:
            out.append(n)
    return out
