"""Idempotency-Key on POST, on SQLite and PostgreSQL: replay, reuse, in-flight, 5xx."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import sqlalchemy as sa

from billing.api.errors import IdempotencyKeyInProgress, IdempotencyKeyReused
from billing.api.idempotency import IdempotencyStore, StoredResponse, request_hash
from billing.db import Database
from billing.schema import idempotency_records
from tests.api_framework.conftest import Tokens
from tests.api_framework.demo import Gate

ECHO = {"name": "a", "count": 1}


def keyed(tokens: Tokens, key: str, token: str | None = None) -> dict[str, str]:
    return {**tokens.auth(token or tokens.ops), "Idempotency-Key": key}


async def records(db: Database) -> list[tuple[str, str, int]]:
    async with db.engine.connect() as conn:
        rows = await conn.execute(
            sa.select(
                idempotency_records.c.actor, idempotency_records.c.key, idempotency_records.c.status
            ).order_by(idempotency_records.c.key)
        )
        return [tuple(row) for row in rows]


async def test_same_key_same_body_replays_the_same_bytes(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    client = await make_client(ledger, calls=calls)
    first = await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, "k1"))
    assert first.status == 201
    assert "Idempotent-Replayed" not in first.headers
    again = await client.post(
        "/v1/echo",
        data=b'{ "count": 1,\n "name": "a" }',  # same JSON, other bytes
        headers={**keyed(tokens, "k1"), "Content-Type": "application/json"},
    )
    assert again.status == 201
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.content_type == "application/json"
    assert await again.read() == await first.read()
    assert again.headers["X-Request-Id"] != first.headers["X-Request-Id"]
    assert calls["echo"] == 1
    assert await records(ledger) == [("ops", "k1", 201)]


async def test_same_key_other_request_is_409_reused(client, tokens):
    assert (await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, "k"))).status == 201
    for path, body in (("/v1/echo", {**ECHO, "count": 2}), ("/v1/flaky", ECHO)):
        response = await client.post(path, json=body, headers=keyed(tokens, "k"))
        assert response.status == 409
        assert (await response.json())["error"]["code"] == "idempotency_key_reused"


async def test_keys_belong_to_their_tenant(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    client = await make_client(ledger, calls=calls)
    for token in (tokens.merchant1, tokens.merchant2, tokens.ops):
        response = await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, "k", token))
        assert response.status == 201
        assert "Idempotent-Replayed" not in response.headers
    assert calls["echo"] == 3


async def test_a_5xx_is_not_stored_so_a_retry_runs_again(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    client = await make_client(ledger, calls=calls)
    failed = await client.post("/v1/flaky", json=ECHO, headers=keyed(tokens, "f"))
    assert failed.status == 500
    assert await records(ledger) == []
    retried = await client.post("/v1/flaky", json=ECHO, headers=keyed(tokens, "f"))
    assert retried.status == 200
    assert "Idempotent-Replayed" not in retried.headers
    assert calls["flaky"] == 2
    replayed = await client.post("/v1/flaky", json=ECHO, headers=keyed(tokens, "f"))
    assert replayed.headers["Idempotent-Replayed"] == "true"
    assert calls["flaky"] == 2


async def test_a_4xx_from_the_handler_is_stored(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    client = await make_client(ledger, calls=calls)
    headers = keyed(tokens, "n", tokens.merchant1)
    first = await client.post("/v1/enterprises/e2/notes", json={"text": "x"}, headers=headers)
    assert first.status == 404
    again = await client.post("/v1/enterprises/e2/notes", json={"text": "x"}, headers=headers)
    assert again.status == 404
    assert again.headers["Idempotent-Replayed"] == "true"
    assert await again.read() == await first.read()
    assert calls["note"] == 1


async def test_a_request_refused_before_the_handler_stores_nothing(client, ledger, tokens):
    bad = await client.post("/v1/echo", json={"name": "a"}, headers=keyed(tokens, "v"))
    assert bad.status == 400
    fixed = await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, "v"))
    assert fixed.status == 201
    assert "Idempotent-Replayed" not in fixed.headers
    assert await records(ledger) == [("ops", "v", 201)]


@pytest.mark.parametrize("key", ["", "k" * 256, "caf\u00e9", "tab\there"])
async def test_malformed_keys_are_400(client, tokens, key):
    response = await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, key))
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["code"] == "invalid_request"
    assert error["message"].startswith("Idempotency-Key:")


async def test_longest_key_and_get_requests(client, tokens):
    key = "~" + "k" * 254
    assert (await client.post("/v1/echo", json=ECHO, headers=keyed(tokens, key))).status == 201
    # Not a POST: the header means nothing and is not checked.
    assert (await client.get("/v1/things/1", headers=keyed(tokens, ""))).status == 200


async def test_a_duplicate_while_the_first_runs_is_409_in_progress(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    gate = Gate()
    client = await make_client(ledger, calls=calls, gate=gate)
    first = asyncio.create_task(client.post("/v1/slow", json=ECHO, headers=keyed(tokens, "s")))
    await asyncio.wait_for(gate.entered.wait(), 5)
    same = await client.post("/v1/slow", json=ECHO, headers=keyed(tokens, "s"))
    assert same.status == 409
    assert (await same.json())["error"]["code"] == "idempotency_key_in_progress"
    other = await client.post("/v1/slow", json={**ECHO, "count": 9}, headers=keyed(tokens, "s"))
    assert (await other.json())["error"]["code"] == "idempotency_key_reused"
    gate.release.set()
    assert (await first).status == 201
    replay = await client.post("/v1/slow", json=ECHO, headers=keyed(tokens, "s"))
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert calls["slow"] == 1


async def test_concurrent_duplicates_run_the_handler_once(make_client, ledger, tokens):
    calls: Counter[str] = Counter()
    client = await make_client(ledger, calls=calls)
    responses = await asyncio.gather(
        *(client.post("/v1/echo", json=ECHO, headers=keyed(tokens, "c")) for _ in range(10))
    )
    statuses = Counter(r.status for r in responses)
    assert calls["echo"] == 1
    assert set(statuses) <= {201, 409}
    assert statuses[201] >= 1


async def test_two_processes_share_claims_through_the_ledger(ledger: Database):
    """Two stores stand for two processes: only the database connects them."""
    a, b = IdempotencyStore(ledger), IdempotencyStore(ledger)
    fingerprint = request_hash("POST", "/v1/x", [], b'{"a": 1}')
    assert await a.begin("ops", "k", fingerprint) is None
    with pytest.raises(IdempotencyKeyInProgress):
        await b.begin("ops", "k", fingerprint)
    with pytest.raises(IdempotencyKeyReused):
        await b.begin("ops", "k", request_hash("POST", "/v1/x", [], b'{"a": 2}'))
    await a.finish("ops", "k", 201, b'{"ok":true}')
    assert await b.begin("ops", "k", fingerprint) == StoredResponse(201, b'{"ok":true}')


async def test_a_stale_claim_is_taken_over_once(ledger: Database):
    fingerprint = request_hash("POST", "/v1/x", [], b"")
    assert await IdempotencyStore(ledger).begin("ops", "k", fingerprint) is None  # then "dies"
    late = IdempotencyStore(ledger, stale_after=0)
    rival = IdempotencyStore(ledger, stale_after=3600)
    assert await late.begin("ops", "k", fingerprint) is None
    with pytest.raises(IdempotencyKeyInProgress):
        await rival.begin("ops", "k", fingerprint)
    await late.finish("ops", "k", 502, b"")  # released: the next attempt runs
    assert await rival.begin("ops", "k", fingerprint) is None


def test_request_hash_ignores_json_layout_only():
    base = request_hash("POST", "/v1/x", [("a", "1")], b'{"a": 1, "b": [1, 2]}')
    assert base == request_hash("post", "/v1/x", [("a", "1")], b'{"b":[1,2],"a":1}')
    assert base != request_hash("POST", "/v1/y", [("a", "1")], b'{"a": 1, "b": [1, 2]}')
    assert base != request_hash("POST", "/v1/x", [("a", "2")], b'{"a": 1, "b": [1, 2]}')
    assert base != request_hash("POST", "/v1/x", [("a", "1")], b'{"a": 1, "b": [2, 1]}')
