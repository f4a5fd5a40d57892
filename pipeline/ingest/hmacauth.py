"""Shared-secret request signing for the self-hosted sources (generic, asterisk, freeswitch).

The sender puts ``X-Callqa-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``
on the request (the example scripts in docs/ingest.md do). For FreeSWITCH's
mod_json_cdr, which can only do HTTP auth, ``Authorization: Basic`` with the
secret as the password is accepted as well (``allow_basic``).
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac

from pipeline.ingest.base import RequestParts, SignatureError, consteq

HEADER = "x-callqa-signature"


def body_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify_shared_secret(req: RequestParts, secret: str, env_name: str, allow_basic: bool = False) -> None:
    if not secret:
        raise SignatureError("secret_not_configured", f"set {env_name}")
    sig = req.header(HEADER)
    if sig:
        if consteq(body_signature(secret, req.body), sig.strip().lower()):
            return
        raise SignatureError("bad_signature", "X-Callqa-Signature does not match")
    auth = req.header("authorization")
    if allow_basic and auth.lower().startswith("basic "):
        try:
            user_pass = base64.b64decode(auth[6:].strip(), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise SignatureError("bad_signature", "malformed Basic credentials") from None
        if consteq(user_pass.split(":", 1)[-1], secret):
            return
        raise SignatureError("bad_signature", "wrong Basic credentials")
    raise SignatureError("missing_signature", "X-Callqa-Signature header is missing")
