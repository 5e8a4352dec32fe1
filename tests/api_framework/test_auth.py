"""Tokens, principals and scope: hashed storage, revocation, roles, 401/403/404."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
import sqlalchemy as sa

from billing.api.auth import (
    Principal,
    PrincipalCache,
    authenticate,
    bearer_token,
    can_see_enterprise,
    create_token,
    new_token,
    parse_role,
    require_enterprise,
    require_ops,
    revoke_token,
)
from billing.api.errors import Forbidden
from billing.db import Database
from billing.errors import NotFound
from billing.schema import api_tokens
from tests.api_framework.conftest import ClientFactory, Tokens

OPS = Principal(token_id="tok_o", kind="ops", subject_id=None)
PARTNER = Principal(token_id="tok_p", kind="partner", subject_id="p1")
MERCHANT = Principal(token_id="tok_m", kind="merchant", subject_id="e1")


@pytest.mark.parametrize(
    ("role", "parsed"),
    [
        ("ops", ("ops", None)),
        ("partner:p1", ("partner", "p1")),
        ("merchant:ww_corp-1.x", ("merchant", "ww_corp-1.x")),
    ],
)
def test_valid_roles_parse(role, parsed):
    assert parse_role(role) == parsed


@pytest.mark.parametrize(
    "role",
    [
        "",
        "admin",
        "ops:x",
        "partner",
        "partner:",
        "merchant:",
        "merchant:a:b",
        "merchant:" + "e" * 65,
        "Ops",
        "partner:-p",
        "merchant:e 1",
    ],
)
def test_invalid_roles_are_refused_with_a_clear_message(role):
    with pytest.raises(ValueError, match="role"):
        parse_role(role)


def test_principal_role_and_actor_round_trip():
    assert PARTNER.role == "partner:p1"
    assert PARTNER.actor == "tok_p:partner:p1"
    assert OPS.role == "ops"


def test_tokens_are_long_and_random():
    tokens = {new_token() for _ in range(100)}
    assert len(tokens) == 100
    assert all(t.startswith("pvg_") and len(t) >= 40 for t in tokens)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        (None, None),
        ("Bearer abc", "abc"),
        ("bearer  abc", "abc"),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
    ],
)
def test_bearer_header_parsing(header, token):
    assert bearer_token(header) == token


def test_scope_rules():
    assert can_see_enterprise(OPS, "e2", "p2")
    assert can_see_enterprise(OPS, "e3", None)
    assert can_see_enterprise(PARTNER, "e1", "p1")
    assert not can_see_enterprise(PARTNER, "e2", "p2")
    assert not can_see_enterprise(PARTNER, "e3", None)
    assert can_see_enterprise(MERCHANT, "e1", "p1")
    assert not can_see_enterprise(MERCHANT, "e2", "p1")


def test_out_of_scope_is_not_found_and_non_ops_is_forbidden():
    with pytest.raises(NotFound, match="e2"):
        require_enterprise(PARTNER, "e2", "p2")
    require_enterprise(PARTNER, "e1", "p1")
    require_ops(OPS)
    with pytest.raises(Forbidden):
        require_ops(MERCHANT)


def test_cache_ttl_is_bounded():
    with pytest.raises(ValueError, match="ttl"):
        PrincipalCache(ttl=6)


async def test_only_the_hash_is_stored(sqlite_ledger: Database):
    token_id, plaintext = await create_token(sqlite_ledger, "merchant:e1", "shop")
    async with sqlite_ledger.engine.connect() as conn:
        row = (await conn.execute(sa.select(api_tokens))).one()
    assert row.id == token_id
    assert row.token_hash == hashlib.sha256(plaintext.encode()).hexdigest()
    assert plaintext not in {str(v) for v in row}
    principal = await authenticate(sqlite_ledger, plaintext)
    assert principal == Principal(token_id=token_id, kind="merchant", subject_id="e1")


async def test_create_token_refuses_a_bad_role(sqlite_ledger: Database):
    with pytest.raises(ValueError, match="role"):
        await create_token(sqlite_ledger, "root")


async def test_unknown_and_revoked_tokens_do_not_authenticate(sqlite_ledger: Database):
    token_id, plaintext = await create_token(sqlite_ledger, "ops")
    cache = PrincipalCache(ttl=5)
    assert await authenticate(sqlite_ledger, plaintext, cache) is not None
    assert await authenticate(sqlite_ledger, new_token(), cache) is None
    assert await authenticate(sqlite_ledger, "not-a-token", cache) is None
    assert await revoke_token(sqlite_ledger, token_id, cache)
    assert await authenticate(sqlite_ledger, plaintext, cache) is None
    assert not await revoke_token(sqlite_ledger, token_id)


async def test_missing_token_is_401_json(sqlite_client):
    response = await sqlite_client.get("/v1/things/1")
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await response.json())["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "authorization", ["Bearer pvg_unknown", "Basic dXNlcjpwYXNz", "Bearer ", "pvg_x"]
)
async def test_bad_token_is_401_json(sqlite_client, authorization):
    response = await sqlite_client.get("/v1/things/1", headers={"Authorization": authorization})
    assert response.status == 401
    assert response.content_type == "application/json"
    assert (await response.json())["error"]["code"] == "unauthorized"


async def test_revoked_token_stops_working_within_the_cache_ttl(
    make_client: ClientFactory, sqlite_ledger: Database, sqlite_tokens: Tokens
):
    client = await make_client(sqlite_ledger, auth_cache_ttl=0.3)
    auth = sqlite_tokens.auth(sqlite_tokens.ops)
    assert (await client.get("/v1/things/1", headers=auth)).status == 200
    # Revoked from elsewhere (another process): this app's cache cannot be told.
    await revoke_token(sqlite_ledger, sqlite_tokens.ids["ops"])
    await asyncio.sleep(0.4)
    response = await client.get("/v1/things/1", headers=auth)
    assert response.status == 401
    assert (await response.json())["error"]["message"] == "invalid or revoked token"


async def test_a_route_a_role_may_never_use_is_403(sqlite_client, sqlite_tokens: Tokens):
    for token in (sqlite_tokens.merchant1, sqlite_tokens.partner1):
        response = await sqlite_client.post("/v1/ops-only", headers=sqlite_tokens.auth(token))
        assert response.status == 403
        assert (await response.json())["error"]["code"] == "forbidden"
    ops = await sqlite_client.post("/v1/ops-only", headers=sqlite_tokens.auth(sqlite_tokens.ops))
    assert ops.status == 200


@pytest.mark.parametrize(
    ("who", "enterprise", "status"),
    [
        ("ops", "e2", 201),
        ("ops", "e3", 201),
        ("partner1", "e1", 201),
        ("partner1", "e2", 404),
        ("partner1", "e3", 404),
        ("merchant1", "e1", 201),
        ("merchant1", "e2", 404),
        ("merchant1", "nope", 404),
    ],
)
async def test_another_tenants_enterprise_is_404_like_a_missing_one(
    sqlite_client, sqlite_tokens: Tokens, who, enterprise, status
):
    response = await sqlite_client.post(
        f"/v1/enterprises/{enterprise}/notes",
        json={"text": "hi"},
        headers=sqlite_tokens.auth(getattr(sqlite_tokens, who)),
    )
    assert response.status == status
    if status == 404:
        assert await response.json() == {
            "error": {"code": "not_found", "message": f"enterprise {enterprise!r} not found"}
        }
