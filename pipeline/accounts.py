"""Accounts of the web app and the JSON API: users and their roles, password hashes (argon2), login
sessions, API tokens, lock-out after wrong passwords, the audit log, and what each user may see.

The CLI (`callqa users ...`) and the web app both work through these functions.
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Optional

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from models.tables import ApiToken, AuditEntry, Call, LoginFailure, User, UserSession, utcnow

ROLES = ("admin", "head", "trainer", "manager")
LANGUAGES = ("ru", "en")
MIN_PASSWORD = 8
_HASHER = PasswordHasher()
_DUMMY_HASH = _HASHER.hash("not a password anyone has")  # unknown users cost the same time as known ones


class AccountError(ValueError):
    """A user that does not exist, a role or team that does not fit, a weak password: the message says
    what to do."""


class LockedOut(Exception):
    def __init__(self, retry_after_s: int):
        super().__init__(f"too many wrong passwords: try again in {max(1, retry_after_s // 60)} min, or ask an "
                         "admin to reset the password (callqa users passwd NAME)")
        self.retry_after_s = retry_after_s


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def random_password() -> str:
    return secrets.token_urlsafe(12)


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
    return _HASHER.hash(password)


def check_password(password_hash: Optional[str], password: str) -> bool:
    try:
        return _HASHER.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


# ---- users --------------------------------------------------------------------------------------

def find_user(session: Session, username: str) -> User:
    user = session.scalar(select(User).where(User.username == username))
    if user is None:
        known = session.scalars(select(User.username).order_by(User.username).limit(20)).all()
        raise AccountError(f"no user {username!r}; users: {', '.join(known) or 'none yet (callqa users add)'}")
    return user


def _check_fields(role: str, teams: list[str], manager_id: Optional[str], language: Optional[str],
                  tz: Optional[str]) -> None:
    if role not in ROLES:
        raise AccountError(f"role {role!r}: use one of {', '.join(ROLES)}")
    if role in ("head", "trainer") and not teams:
        raise AccountError(f"a {role} sees the calls of their teams: give at least one --team TEAM")
    if role == "manager" and not manager_id:
        raise AccountError("a manager sees their own calls: give --manager-id (the manager_id of their calls)")
    if language is not None and language not in LANGUAGES:
        raise AccountError(f"language {language!r}: use ru or en")
    if tz:
        from config.settings import business_tz
        business_tz(tz)


def add_user(session: Session, username: str, role: str, password: str, *, teams: list[str] = (),
             manager_id: Optional[str] = None, language: Optional[str] = None,
             timezone: Optional[str] = None) -> User:
    username = username.strip()
    if not username or len(username) > 100 or any(c.isspace() for c in username):
        raise AccountError(f"user name {username!r}: 1-100 characters, no spaces")
    _check_fields(role, list(teams), manager_id, language, timezone)
    if session.scalar(select(User.id).where(User.username == username)) is not None:
        raise AccountError(f"user {username!r} exists already (callqa users passwd {username} sets a new password)")
    user = User(username=username, password_hash=hash_password(password), role=role, teams=sorted(set(teams)),
                manager_id=manager_id if role == "manager" else None, language=language, timezone=timezone or None,
                disabled=False, created_at=utcnow())
    session.add(user)
    session.flush()
    return user


def set_password(session: Session, username: str, password: str) -> User:
    """A new password; the user's sessions end and a lock-out is lifted."""
    user = find_user(session, username)
    user.password_hash = hash_password(password)
    session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    session.execute(delete(LoginFailure).where(LoginFailure.username == user.username))
    return user


def set_disabled(session: Session, username: str, disabled: bool = True) -> User:
    """A disabled user cannot log in; their sessions and API tokens stop working at once."""
    user = find_user(session, username)
    user.disabled = disabled
    if disabled:
        session.execute(delete(UserSession).where(UserSession.user_id == user.id))
    return user


def audit(session: Session, user: Optional[User], action: str, call_id: Optional[str] = None,
          **detail: Any) -> None:
    session.add(AuditEntry(at=utcnow(), user_id=user.id if user else None, username=user.username if user else None,
                           action=action, call_id=call_id, detail=detail or None))


# ---- logging in ---------------------------------------------------------------------------------

def login(session: Session, username: str, password: str, address: str, *, max_failures: int,
          lock_s: float) -> Optional[User]:
    """The user, or None on a wrong name or password (which is counted). Raises LockedOut when the user
    (or the address) has had too many wrong passwords lately: the right password is refused too."""
    now = utcnow()
    since = now - timedelta(seconds=lock_s)
    recent = select(func.count(), func.min(LoginFailure.at)).where(LoginFailure.at >= since)
    n_user, first_user = session.execute(recent.where(LoginFailure.username == username)).one()
    n_addr, first_addr = session.execute(recent.where(LoginFailure.address == address)).one()
    if n_user >= max_failures or n_addr >= 4 * max_failures:
        first = first_user if n_user >= max_failures else first_addr
        raise LockedOut(int(lock_s - (now - first).total_seconds()) if first else int(lock_s))
    user = session.scalar(select(User).where(User.username == username))
    ok = check_password(user.password_hash if user else None, password)
    if not ok or user is None or user.disabled:
        session.add(LoginFailure(username=username[:100], address=address[:64], at=now))
        audit(session, user, "login_failed", username=username[:100], address=address[:64])
        return None
    session.execute(delete(LoginFailure).where(LoginFailure.username == username))
    session.execute(delete(LoginFailure).where(LoginFailure.at < since))
    audit(session, user, "login", address=address[:64])
    return user


def start_session(session: Session, user: User, hours: float) -> tuple[str, str]:
    """A new login session: (its id, for the signed cookie; its CSRF token, for the forms)."""
    sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(UserSession(id_hash=_sha256(sid), user_id=user.id, csrf=csrf, created_at=utcnow(),
                            expires_at=utcnow() + timedelta(hours=hours)))
    session.execute(delete(UserSession).where(UserSession.expires_at < utcnow()))
    return sid, csrf


def session_user(session: Session, sid: str) -> Optional[tuple[User, UserSession]]:
    row = session.get(UserSession, _sha256(sid))
    if row is None or row.expires_at < utcnow():
        return None
    user = session.get(User, row.user_id)
    return None if user is None or user.disabled else (user, row)


def end_session(session: Session, sid: str) -> None:
    session.execute(delete(UserSession).where(UserSession.id_hash == _sha256(sid)))


def new_api_token(session: Session, username: str, label: Optional[str] = None) -> str:
    """A token for the JSON API (``Authorization: Bearer ...``), shown once: only its hash is kept."""
    user = find_user(session, username)
    token = "cqa_" + secrets.token_urlsafe(32)
    session.add(ApiToken(user_id=user.id, token_hash=_sha256(token), label=label, created_at=utcnow()))
    return token


def revoke_api_tokens(session: Session, username: str) -> int:
    user = find_user(session, username)
    return session.execute(delete(ApiToken).where(ApiToken.user_id == user.id)).rowcount or 0


def token_user(session: Session, token: str) -> Optional[User]:
    digest = _sha256(token)
    row = session.scalar(select(ApiToken).where(ApiToken.token_hash == digest))
    if row is None or not hmac.compare_digest(row.token_hash, digest):
        return None
    user = session.get(User, row.user_id)
    if user is None or user.disabled:
        return None
    row.last_used_at = utcnow()
    return user


# ---- signing (cookies) --------------------------------------------------------------------------

def signing_key(secret: str, home: Path) -> bytes:
    """CALLQA_SECRET_KEY, else a key generated once into CALLQA_HOME/secret_key (readable by the owner only),
    so every web process on this home signs alike and a restart keeps people logged in."""
    if secret:
        if len(secret) < 32:
            raise AccountError("CALLQA_SECRET_KEY is too short: use 32 or more random characters "
                               "(python -c 'import secrets; print(secrets.token_urlsafe(48))')")
        return secret.encode()
    path = home / "secret_key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48))
    return path.read_text().strip().encode()


def sign(key: bytes, value: str) -> str:
    return value + "." + hmac.new(key, value.encode(), hashlib.sha256).hexdigest()


def unsign(key: bytes, signed: str) -> Optional[str]:
    value, _, sig = (signed or "").rpartition(".")
    good = hmac.new(key, value.encode(), hashlib.sha256).hexdigest()
    return value if value and hmac.compare_digest(sig, good) else None


# ---- what a user may see ------------------------------------------------------------------------

@dataclass(frozen=True)
class Access:
    """What one user sees: every call (admin), their teams' calls (head, trainer), their own (manager)."""

    role: str
    teams: Optional[frozenset] = None          # None: all teams
    manager_id: Optional[str] = None           # set for a manager: only their own calls and rows

    @classmethod
    def of(cls, user: User) -> "Access":
        if user.role == "admin":
            return cls("admin")
        if user.role == "manager":
            return cls("manager", manager_id=user.manager_id or "")
        return cls(user.role, teams=frozenset(user.teams or ()))

    def call_condition(self):
        """A WHERE clause on calls (None: no restriction)."""
        if self.manager_id is not None:
            return Call.manager_id == self.manager_id
        if self.teams is not None:
            return Call.team_id.in_(sorted(self.teams)) if self.teams else Call.call_id.is_(None)
        return None

    def sees_call(self, call: Call) -> bool:
        if self.manager_id is not None:
            return call.manager_id == self.manager_id
        return self.teams is None or call.team_id in self.teams

    def sees_manager(self, manager_id: str) -> bool:
        return self.manager_id is None or manager_id == self.manager_id

    def stats_teams(self, session: Session) -> Optional[frozenset]:
        """The teams whose calls a user's statistics are computed over: a manager is compared with the
        teams they made calls in (they see only their own rows of it)."""
        if self.manager_id is not None:
            return frozenset(t for t in session.scalars(select(Call.team_id).where(
                Call.manager_id == self.manager_id).distinct()) if t is not None)
        return self.teams

    def can(self, what: str) -> bool:
        return what in PERMISSIONS[self.role]


PERMISSIONS = {
    "admin": {"managers", "flagged", "review", "coaching", "rules", "users", "calls"},
    "head": {"managers", "flagged", "review", "coaching", "rules", "calls", "correct"},
    "trainer": {"managers", "flagged", "coaching", "rules", "calls", "correct"},
    "manager": {"managers", "coaching", "calls"},
}
PERMISSIONS["admin"] |= PERMISSIONS["trainer"]


def list_users(session: Session) -> list[User]:
    return list(session.scalars(select(User).order_by(User.username)))
