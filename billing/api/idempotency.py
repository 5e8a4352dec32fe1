"""``Idempotency-Key`` on POST, with Stripe's semantics (docs/architecture.md §6).

A key belongs to one actor (the token's role: a tenant, or ops).  The first request with a
key claims it by inserting a placeholder row (status 0) in ``idempotency_records`` — the
primary key (actor, key) makes the claim exclusive across processes; a per-process map
answers duplicates of an in-flight request without a query.  When the handler has answered:

- 2xx or 4xx: status and body bytes are stored; the same request again gets them back
  byte for byte with ``Idempotent-Replayed: true``;
- 5xx or an exception: the claim is released, so a retry runs the handler again.

The same key with another request (method, path, query or canonical JSON body differ) is
refused with 409 ``idempotency_key_reused``; the same request while the first still runs
with 409 ``idempotency_key_in_progress``.  A placeholder older than ``stale_after`` (its
process died mid-request) may be taken over by a retry.

Requests refused before the handler runs (bad token, invalid body, bad key) store nothing:
nothing was executed, so the client may fix the request and reuse its key.

The handler's writes and the stored response are separate transactions: a process that dies
between the two leaves a placeholder, and a retry after ``stale_after`` runs the handler
again.  Handlers whose effects must happen once also use their own unique keys.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy import exc as sa_exc

from billing.api.errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from billing.db import Database
from billing.errors import ValidationFailed
from billing.schema import idempotency_records

log = logging.getLogger("pvgate.billing.api")

KEY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"
_KEY = re.compile(r"[\x20-\x7e]{1,255}")
_PENDING = 0  # status of a claimed key whose response does not exist yet


@dataclass(frozen=True, slots=True)
class StoredResponse:
    status: int
    body: bytes


class _Record(NamedTuple):
    request_hash: str
    status: int
    body: bytes
    created_at: datetime


def validate_key(raw: str | None) -> str | None:
    """The key from the header value (None if absent); ValidationFailed if malformed."""
    if raw is None:
        return None
    if not _KEY.fullmatch(raw):
        raise ValidationFailed(
            KEY_HEADER, "must be 1-255 printable ASCII characters (a UUID is a good choice)"
        )
    return raw


def request_hash(method: str, path: str, query: list[tuple[str, str]], body: bytes) -> str:
    """Fingerprint of a request: key order and whitespace of a JSON body do not matter."""
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except orjson.JSONDecodeError:
        canonical = body
    digest = hashlib.sha256()
    for part in (method.upper().encode(), path.encode(), orjson.dumps(sorted(query)), canonical):
        digest.update(len(part).to_bytes(8, "big"))  # length-prefixed: no ambiguous joins
        digest.update(part)
    return digest.hexdigest()


def storable(status: int) -> bool:
    return 200 <= status < 300 or 400 <= status < 500


class IdempotencyStore:
    """Claims, stores and replays responses by (actor, key)."""

    def __init__(self, db: Database, *, stale_after: float = 60.0) -> None:
        self.db = db
        self.stale_after = timedelta(seconds=stale_after)
        self._in_flight: dict[tuple[str, str], str] = {}

    async def begin(self, actor: str, key: str, fingerprint: str) -> StoredResponse | None:
        """Claim the key (None: run the handler, then `finish`) or return the stored response.

        Raises IdempotencyKeyReused or IdempotencyKeyInProgress.
        """
        running = self._in_flight.get((actor, key))
        if running is not None:
            raise IdempotencyKeyReused() if running != fingerprint else IdempotencyKeyInProgress()
        self._in_flight[(actor, key)] = fingerprint  # before any await: closes the local race
        try:
            stored = await self._claim(actor, key, fingerprint)
        except BaseException:
            del self._in_flight[(actor, key)]
            raise
        if stored is not None:
            del self._in_flight[(actor, key)]
        return stored

    async def finish(self, actor: str, key: str, status: int, body: bytes) -> None:
        """Store a 2xx/4xx response under the claimed key, or release the claim for a 5xx."""
        try:
            async with self.db.begin() as conn:
                row = sa.and_(
                    idempotency_records.c.actor == actor,
                    idempotency_records.c.key == key,
                    idempotency_records.c.status == _PENDING,
                )
                if storable(status):
                    await conn.execute(
                        idempotency_records.update().where(row).values(status=status, body=body)
                    )
                else:
                    await conn.execute(idempotency_records.delete().where(row))
        finally:
            self._in_flight.pop((actor, key), None)

    async def release(self, actor: str, key: str) -> None:
        """Give the key back after a failure, so that a retry runs the handler."""
        await self.finish(actor, key, 500, b"")

    async def _claim(self, actor: str, key: str, fingerprint: str) -> StoredResponse | None:
        # Two rounds: an insert that loses a race is followed by a read of the winner.
        for _ in range(2):
            row = await self._load(actor, key)
            if row is None:
                if await self._insert(actor, key, fingerprint):
                    return None
                continue
            if row.request_hash != fingerprint:
                raise IdempotencyKeyReused()
            if row.status != _PENDING:
                return StoredResponse(status=row.status, body=bytes(row.body))
            if await self._take_over_stale(actor, key, row.created_at):
                return None
            raise IdempotencyKeyInProgress()
        raise IdempotencyKeyInProgress()

    async def _load(self, actor: str, key: str) -> _Record | None:
        async with self.db.engine.connect() as conn:
            result = await conn.execute(
                sa.select(
                    idempotency_records.c.request_hash,
                    idempotency_records.c.status,
                    idempotency_records.c.body,
                    idempotency_records.c.created_at,
                ).where(idempotency_records.c.actor == actor, idempotency_records.c.key == key)
            )
            row = result.first()
        return None if row is None else _Record(*row)

    async def _insert(self, actor: str, key: str, fingerprint: str) -> bool:
        try:
            async with self.db.begin() as conn:
                await conn.execute(
                    idempotency_records.insert().values(
                        actor=actor,
                        key=key,
                        request_hash=fingerprint,
                        status=_PENDING,
                        body=b"",
                        created_at=datetime.now(UTC),
                    )
                )
        except sa_exc.IntegrityError:
            return False
        return True

    async def _take_over_stale(self, actor: str, key: str, claimed_at: datetime) -> bool:
        now = datetime.now(UTC)
        if now - claimed_at < self.stale_after:
            return False
        # Compare-and-set on created_at: of several retries, exactly one takes over.
        async with self.db.begin() as conn:
            result = await conn.execute(
                idempotency_records.update()
                .where(
                    idempotency_records.c.actor == actor,
                    idempotency_records.c.key == key,
                    idempotency_records.c.status == _PENDING,
                    idempotency_records.c.created_at == claimed_at,
                )
                .values(created_at=now)
            )
        if result.rowcount == 1:
            log.warning("idempotency key %r of %s: took over a stale claim", key, actor)
        return result.rowcount == 1
