"""Admin API tokens, principals and tenant scope (docs/architecture.md §6).

A token is ``pvg_`` + 43 URL-safe characters, shown once when created; the ledger keeps only
its SHA-256 (``api_tokens.token_hash``), so a leaked database leaks no usable token.  Its
role is ``ops``, ``partner:<partner_id>`` or ``merchant:<enterprise_id>``.

Scope rule: a token never reaches another tenant's data, and such data answers 404 exactly
like data that does not exist (`require_enterprise`), so ids cannot be probed.  403 is kept
for a route or action that a role may never use (`require_ops`).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from billing.api.errors import Forbidden
from billing.db import Database
from billing.errors import NotFound
from billing.rows import EnterpriseRow
from billing.schema import api_tokens, enterprises

Kind = Literal["ops", "partner", "merchant"]
KINDS: tuple[Kind, ...] = ("ops", "partner", "merchant")
TOKEN_PREFIX = "pvg_"

# Ids are ledger primary keys (String(64)); no ':' so a role splits in one way only.
_SUBJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_BEARER = re.compile(r"Bearer +(\S+) *", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the token's id and its parsed role."""

    token_id: str
    kind: Kind
    subject_id: str | None  # partner id or enterprise id; None for ops

    @property
    def role(self) -> str:
        return self.kind if self.subject_id is None else f"{self.kind}:{self.subject_id}"

    @property
    def actor(self) -> str:
        """The audit actor: which token, acting as which role."""
        return f"{self.token_id}:{self.role}"


def parse_role(role: str) -> tuple[Kind, str | None]:
    """``ops`` | ``partner:<id>`` | ``merchant:<enterprise_id>`` → (kind, id); ValueError if not."""
    kind, sep, subject = role.partition(":")
    if kind == "ops" and not sep:
        return "ops", None
    if kind in ("partner", "merchant") and sep:
        if not _SUBJECT.fullmatch(subject):
            raise ValueError(
                f"role {role!r}: the {kind} id must be 1-64 characters of A-Z a-z 0-9 . _ -"
            )
        return ("partner" if kind == "partner" else "merchant"), subject
    raise ValueError(
        f"role {role!r}: expected 'ops', 'partner:<partner_id>' or 'merchant:<enterprise_id>'"
    )


def new_token() -> str:
    """A fresh random bearer token (256 bits)."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


async def create_token(db: Database, role: str, label: str = "") -> tuple[str, str]:
    """Store a new token for ``role``; returns (token_id, plaintext) — the only time it exists."""
    parse_role(role)
    if len(label) > 200:
        raise ValueError("token label: at most 200 characters")
    token_id, plaintext = "tok_" + secrets.token_hex(8), new_token()
    async with db.begin() as conn:
        await conn.execute(
            api_tokens.insert().values(
                id=token_id,
                token_hash=hash_token(plaintext),
                role=role,
                label=label,
                created_at=datetime.now(UTC),
            )
        )
    return token_id, plaintext


async def revoke_token(db: Database, token_id: str, cache: PrincipalCache | None = None) -> bool:
    """Revoke a token now; False if no such live token.  Other processes forget it within TTL."""
    async with db.begin() as conn:
        result = await conn.execute(
            api_tokens.update()
            .where(api_tokens.c.id == token_id, api_tokens.c.revoked_at.is_(None))
            .values(revoked_at=datetime.now(UTC))
        )
    if cache is not None:
        cache.forget_token(token_id)
    return result.rowcount == 1


class PrincipalCache:
    """hash → Principal for a few seconds, so each request need not read ``api_tokens``.

    The TTL bounds how long a revoked token keeps working in a process (at most 5 s).  Unknown
    tokens are never cached: random guesses must not be able to fill memory.
    """

    def __init__(self, ttl: float = 2.0, max_entries: int = 4096) -> None:
        if not 0 <= ttl <= 5:
            raise ValueError("token cache ttl must be between 0 and 5 seconds")
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, tuple[float, Principal]] = {}

    def get(self, token_hash: str) -> Principal | None:
        entry = self._entries.get(token_hash)
        if entry is None:
            return None
        if entry[0] <= time.monotonic():
            del self._entries[token_hash]
            return None
        return entry[1]

    def put(self, token_hash: str, principal: Principal) -> None:
        if self.ttl <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._entries.clear()  # rare; a refill costs one query per live token
        self._entries[token_hash] = (time.monotonic() + self.ttl, principal)

    def forget_token(self, token_id: str) -> None:
        for key in [k for k, (_, p) in self._entries.items() if p.token_id == token_id]:
            del self._entries[key]


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, or None."""
    if authorization is None:
        return None
    match = _BEARER.fullmatch(authorization)
    return match.group(1) if match else None


async def authenticate(
    db: Database, bearer: str, cache: PrincipalCache | None = None
) -> Principal | None:
    """The principal of a live token, or None for an unknown, revoked or malformed one."""
    if not bearer.startswith(TOKEN_PREFIX) or len(bearer) > 256:
        return None
    token_hash = hash_token(bearer)
    if cache is not None and (hit := cache.get(token_hash)) is not None:
        return hit
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                sa.select(api_tokens.c.id, api_tokens.c.token_hash, api_tokens.c.role).where(
                    api_tokens.c.token_hash == token_hash, api_tokens.c.revoked_at.is_(None)
                )
            )
        ).first()
    # The index lookup is not constant-time; the comparison of what it found is.
    if row is None or not hmac.compare_digest(row.token_hash, token_hash):
        return None
    try:
        kind, subject = parse_role(row.role)
    except ValueError:
        return None  # a role written by hand into the table; refuse rather than guess
    principal = Principal(token_id=row.id, kind=kind, subject_id=subject)
    if cache is not None:
        cache.put(token_hash, principal)
    return principal


def can_see_enterprise(
    principal: Principal, enterprise_id: str, partner_id_of_enterprise: str | None
) -> bool:
    """ops: every enterprise; partner: those it brought; merchant: its own."""
    if principal.kind == "ops":
        return True
    if principal.kind == "partner":
        return partner_id_of_enterprise is not None and partner_id_of_enterprise == (
            principal.subject_id
        )
    return enterprise_id == principal.subject_id


def require_enterprise(
    principal: Principal, enterprise_id: str, partner_id_of_enterprise: str | None
) -> None:
    """Raise NotFound — the same answer as a missing enterprise — when out of scope."""
    if not can_see_enterprise(principal, enterprise_id, partner_id_of_enterprise):
        raise enterprise_not_found(enterprise_id)


def enterprise_not_found(enterprise_id: str) -> NotFound:
    return NotFound(f"enterprise {enterprise_id!r} not found")


async def fetch_visible_enterprise(
    conn: AsyncConnection, principal: Principal, enterprise_id: str
) -> EnterpriseRow:
    """The ``enterprises`` row, or NotFound if it does not exist or is outside the scope."""
    row = (
        await conn.execute(sa.select(enterprises).where(enterprises.c.id == enterprise_id))
    ).first()
    if row is None:
        raise enterprise_not_found(enterprise_id)
    require_enterprise(principal, enterprise_id, row.partner_id)
    return EnterpriseRow.from_row(row)


def enterprise_scope(principal: Principal, column: sa.ColumnElement[Any]) -> sa.ColumnElement[bool]:
    """A WHERE clause keeping rows whose enterprise id ``column`` is within scope (lists)."""
    if principal.kind == "ops":
        return sa.true()
    if principal.kind == "merchant":
        return column == principal.subject_id
    return column.in_(
        sa.select(enterprises.c.id).where(enterprises.c.partner_id == principal.subject_id)
    )


def require_ops(principal: Principal) -> None:
    """Raise Forbidden unless the caller is ops (for ops-only actions on shared routes)."""
    if principal.kind != "ops":
        raise Forbidden("only an ops token may do this")
