"""The route layer over real HTTP: validation, JSON errors, request ids, OpenAPI."""

from __future__ import annotations

import logging
import re

import pytest
from openapi_spec_validator import validate
from pydantic import BaseModel, Field, StrictInt, ValidationError

from billing.api import audit_routes
from billing.api.fields import loose_fields
from billing.api.framework import Api, ApiModel, Id, ParamBool, ParamInt, Text
from billing.db import Database
from tests.api_framework import demo
from tests.api_framework.conftest import ClientFactory, Tokens
from tests.api_framework.demo import EchoIn, EchoOut


@pytest.fixture
def ops(sqlite_tokens: Tokens) -> dict[str, str]:
    return sqlite_tokens.auth(sqlite_tokens.ops)


async def error_of(response) -> dict[str, str]:
    assert response.content_type == "application/json"
    body = await response.json()
    assert set(body) == {"error"}
    error: dict[str, str] = body["error"]
    assert set(error) == {"code", "message"}
    return error


async def test_a_valid_body_reaches_the_handler(sqlite_client, ops):
    response = await sqlite_client.post("/v1/echo", json={"name": "a", "count": 2}, headers=ops)
    assert response.status == 201
    assert await response.json() == {"name": "a", "count": 2, "tags": [], "role": "ops"}


@pytest.mark.parametrize(
    ("body", "names"),
    [
        (b'{"name": "a", "count": ', "body"),
        (b'{"name": "a", "count": 1, "extra": true}', "body.extra"),
        (b'{"name": "a", "count": "many"}', "body.count"),
        (b'{"count": 1}', "body.name"),
        (b'{"name": "' + b"x" * 51 + b'", "count": 1}', "body.name"),
        (b'["name", "count"]', "body"),
        (b"null", "body"),
        (b'{"name": "a", "count": 1, "tags": [1]}', "body.tags.0"),
        (b"\xff\xfe", "body"),
        (b"", "body"),
    ],
)
async def test_bad_bodies_are_400_naming_the_field(sqlite_client, ops, body, names):
    response = await sqlite_client.post(
        "/v1/echo", data=body, headers={**ops, "Content-Type": "application/json"}
    )
    assert response.status == 400
    error = await error_of(response)
    assert error["code"] == "invalid_request"
    assert error["message"].startswith(f"{names}:"), error["message"]


async def test_several_bad_fields_are_all_named(sqlite_client, ops):
    response = await sqlite_client.post("/v1/echo", json={"extra": 1}, headers=ops)
    message = (await error_of(response))["message"]
    assert "body.name: field required" in message
    assert "body.count: field required" in message
    assert "body.extra: unknown field" in message


async def test_wrong_content_type_is_400(sqlite_client, ops):
    response = await sqlite_client.post(
        "/v1/echo", data=b'{"name": "a", "count": 1}', headers={**ops, "Content-Type": "text/plain"}
    )
    assert response.status == 400
    assert "Content-Type" in (await error_of(response))["message"]


async def test_a_body_on_a_route_without_one_is_400(sqlite_client, ops):
    assert (await sqlite_client.post("/v1/ops-only", json={"x": 1}, headers=ops)).status == 400
    assert (await sqlite_client.post("/v1/ops-only", json={}, headers=ops)).status == 200


async def test_path_parameters_are_typed(sqlite_client, ops):
    assert await (await sqlite_client.get("/v1/things/7", headers=ops)).json() == {
        "id": 7,
        "label": "thing 7",
    }
    response = await sqlite_client.get("/v1/things/seven", headers=ops)
    assert response.status == 400
    assert (await error_of(response))["message"].startswith("path.thing_id:")
    missing = await sqlite_client.get("/v1/things/101", headers=ops)
    assert missing.status == 404
    assert await error_of(missing) == {"code": "not_found", "message": "thing 101 not found"}


async def test_query_parameters_are_validated(sqlite_client, ops):
    ok = await sqlite_client.get("/v1/search?q=x&limit=5&tag=a&tag=b", headers=ops)
    assert await ok.json() == {"q": "x", "limit": 5, "tag": ["a", "b"], "color": None}
    one = await sqlite_client.get("/v1/search?q=x&tag=a&color=red", headers=ops)
    assert await one.json() == {"q": "x", "limit": 10, "tag": ["a"], "color": ["red"]}
    for query, field in (
        ("limit=5", "query.q"),
        ("q=x&limit=0", "query.limit"),
        ("q=x&limit=ten", "query.limit"),
        ("q=x&other=1", "query.other"),
        ("q=x&q=y", "query.q"),
    ):
        response = await sqlite_client.get(f"/v1/search?{query}", headers=ops)
        assert response.status == 400, query
        assert (await error_of(response))["message"].startswith(f"{field}:"), query
    response = await sqlite_client.get("/v1/things/1?unexpected=1", headers=ops)
    assert response.status == 400


async def test_unknown_route_and_wrong_method_are_json(sqlite_client, ops):
    response = await sqlite_client.get("/v1/nothing-here", headers=ops)
    assert response.status == 404
    assert (await error_of(response))["code"] == "not_found"
    response = await sqlite_client.put("/v1/echo", json={}, headers=ops)
    assert response.status == 405
    assert (await error_of(response))["code"] == "method_not_allowed"
    assert response.headers["Allow"] == "POST"
    assert (await sqlite_client.get("/", headers={"Accept": "text/html"})).status == 404


async def test_a_bug_is_a_logged_500_json_without_details(sqlite_client, ops, caplog):
    with caplog.at_level(logging.ERROR, logger="pvgate.billing.api"):
        response = await sqlite_client.get(
            "/v1/boom", headers={**ops, "X-Request-Id": "req-boom-1"}
        )
    assert response.status == 500
    error = await error_of(response)
    assert error["code"] == "internal_error"
    assert "req-boom-1" in error["message"]
    assert "secret" not in await response.text()
    assert any(
        r.exc_info and "secret internal detail" in str(r.exc_info[1]) for r in caplog.records
    )


async def test_a_handler_returning_the_wrong_model_is_a_500(sqlite_client, ops):
    response = await sqlite_client.get("/v1/wrong-type", headers=ops)
    assert response.status == 500
    assert (await error_of(response))["code"] == "internal_error"


async def test_an_audited_route_that_writes_no_audit_row_is_logged(sqlite_client, ops, caplog):
    with caplog.at_level(logging.ERROR, logger="pvgate.billing.api"):
        assert (await sqlite_client.post("/v1/forgetful", headers=ops)).status == 200
    assert "wrote no audit row" in caplog.text


async def test_tuple_status_and_no_content(sqlite_client, ops):
    assert (await sqlite_client.post("/v1/accepted", headers=ops)).status == 202
    response = await sqlite_client.delete("/v1/things/3", headers=ops)
    assert response.status == 204
    assert await response.read() == b""


async def test_oversized_body_is_413_json(make_client: ClientFactory, sqlite_ledger, ops):
    client = await make_client(sqlite_ledger, client_max_size=1024)
    response = await client.post(
        "/v1/echo", json={"name": "a", "count": 1, "tags": ["x" * 2000]}, headers=ops
    )
    assert response.status == 413
    assert (await error_of(response))["code"] == "payload_too_large"


@pytest.mark.parametrize(
    ("given", "echoed"),
    [
        ("abc-123", "abc-123"),
        ("trace:1.2_3", "trace:1.2_3"),
        (None, None),
        ("x" * 65, None),
        ("bad id", None),
        ("<script>", None),
    ],
)
async def test_every_response_has_a_request_id(sqlite_client, ops, given, echoed):
    headers = {} if given is None else {"X-Request-Id": given}
    for path, auth in (("/v1/things/1", ops), ("/v1/nothing", ops), ("/v1/things/1", {})):
        response = await sqlite_client.get(path, headers={**auth, **headers})
        request_id = response.headers["X-Request-Id"]
        if echoed is None:
            assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        else:
            assert request_id == echoed


async def test_healthz(sqlite_client):
    response = await sqlite_client.get("/healthz")
    assert response.status == 200
    assert await response.json() == {"status": "ok", "db": "ok"}


async def test_healthz_is_503_when_the_ledger_is_gone(make_client: ClientFactory):
    # Nothing listens on port 1.  (Not a SQLite file that cannot be opened: aiosqlite then
    # finishes its worker thread after the test's event loop has closed.)
    db = Database("postgresql://pvgate@127.0.0.1:1/ledger")
    client = await make_client(db, check_schema=False)
    response = await client.get("/healthz")
    assert response.status == 503
    # A route needs the ledger to authenticate: a retryable 503, not a 500.
    token = "pvg_" + "x" * 43
    response = await client.get("/v1/things/1", headers={"Authorization": f"Bearer {token}"})
    assert response.status == 503
    assert response.headers["Retry-After"] == "1"
    assert (await error_of(response))["code"] == "unavailable"
    await db.dispose()


async def test_openapi_document_is_valid_and_lists_the_routes(sqlite_client):
    response = await sqlite_client.get("/openapi.json")  # no token needed
    assert response.status == 200
    spec = await response.json()
    validate(spec)
    assert spec["openapi"] == "3.1.0"
    paths = spec["paths"]
    assert {"/v1/echo", "/v1/things/{thing_id}", "/v1/audit", "/v1/search"} <= set(paths)
    echo = paths["/v1/echo"]["post"]
    assert echo["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EchoIn"
    }
    assert echo["responses"]["201"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/EchoOut"
    }
    assert echo["responses"]["409"] == {"$ref": "#/components/responses/Error409"}
    assert {"name": "Idempotency-Key", "in": "header"}.items() <= echo["parameters"][0].items()
    thing = paths["/v1/things/{thing_id}"]
    assert thing["get"]["parameters"][0]["schema"]["type"] == "integer"
    assert thing["delete"]["x-roles"] == ["ops"]
    assert "204" in thing["delete"]["responses"]
    audit = {p["name"]: p for p in paths["/v1/audit"]["get"]["parameters"]}
    assert set(audit) == {"enterprise_id", "since", "until", "limit"}
    assert audit["limit"]["schema"]["maximum"] == 1000
    assert paths["/v1/enterprises/{enterprise_id}/notes"]["post"]["x-audit-action"] == "note.add"
    assert spec["components"]["securitySchemes"]["bearerAuth"]["scheme"] == "bearer"
    assert "get_thing_path" not in spec["components"]["schemas"]
    assert "Color" in spec["components"]["schemas"]  # nested models become components


def test_declarations_are_checked_when_made():
    api = Api()

    class Loose(BaseModel):
        x: int

    with pytest.raises(TypeError, match="extra"):
        api.route("POST", "/v1/a", summary="a", request_model=Loose, response_model=EchoOut)(
            _handler
        )
    with pytest.raises(TypeError, match="path parameter 'id'"):
        api.route("GET", "/v1/a/{id}", summary="a", response_model=EchoOut)(_handler)
    with pytest.raises(ValueError, match="roles"):
        api.route("GET", "/v1/a", summary="a", response_model=EchoOut, roles=("root",))(  # type: ignore[arg-type]
            _handler
        )
    api.route("POST", "/v1/a", summary="a", request_model=EchoIn, response_model=EchoOut)(_handler)
    with pytest.raises(ValueError, match="twice"):
        api.route("POST", "/v1/a", summary="b", request_model=EchoIn, response_model=EchoOut)(
            _other
        )


async def _handler(ctx, body):
    return None


async def _other(ctx, body):
    return None


async def test_an_api_that_already_includes_the_built_in_routes_is_fine(
    make_client: ClientFactory, sqlite_ledger, ops
):
    combined = Api()
    combined.include(audit_routes.api)
    combined.include(demo.api)
    combined.include(demo.api)  # the same routes again are skipped, not doubled
    assert len(combined.routes) == len(demo.api.routes) + len(audit_routes.api.routes)
    client = await make_client(sqlite_ledger)
    assert (await client.get("/v1/audit", headers=ops)).status == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "a", "count": True}, "body.count"),
        ({"name": "a", "count": "3"}, "body.count"),
        ({"name": "a", "count": 3.0}, "body.count"),
        ({"name": "a\u0000", "count": 3}, "body.name"),
        ({"name": "a", "count": 3, "tags": ["ok", "line\nbreak"]}, "body.tags.1"),
    ],
)
async def test_bodies_are_strict(sqlite_client, ops, body, field):
    response = await sqlite_client.post("/v1/echo", json=body, headers=ops)
    assert response.status == 400
    assert (await error_of(response))["message"].startswith(f"{field}:")


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/things/7", 200),
        ("/v1/things/007", 200),
        ("/v1/things/7.0", 400),
        ("/v1/things/%2B7", 400),
        ("/v1/things/1_0", 400),
        ("/v1/things/true", 400),
        ("/v1/search?q=x&limit=5.5", 400),
        ("/v1/search?q=x&limit=%205", 400),
        ("/v1/search?q=x%00", 400),
    ],
)
async def test_parameters_are_read_strictly_from_text(sqlite_client, ops, path, status):
    assert (await sqlite_client.get(path, headers=ops)).status == status


def test_param_types_take_only_plain_text_forms():
    class Flags(BaseModel):
        n: ParamInt = 0
        on: ParamBool = False

    assert Flags.model_validate({"n": "-12", "on": "true"}) == Flags(n=-12, on=True)
    assert Flags.model_validate({"on": "false"}).on is False
    for bad in ({"n": "1.5"}, {"n": "true"}, {"n": "１"}, {"n": True}, {"on": "yes"},
                {"on": "1"}, {"on": "True"}, {"on": 1}):  # fmt: skip
        with pytest.raises(ValidationError):
            Flags.model_validate(bad)


def test_loose_fields_fail_the_declaration():
    class LooseBody(ApiModel):
        n: int
        flag: bool | None = None
        words: list[str] = Field(default_factory=list)

    class LooseQuery(ApiModel):
        limit: StrictInt = 1  # strict refuses every query string: it must read text

    class Good(ApiModel):
        n: StrictInt
        note: Text = ""
        ids: list[Id] = Field(default_factory=list)

    api = Api()
    with pytest.raises(TypeError, match=r"\['n', 'flag', 'words'\] accept too much"):
        api.route("POST", "/v1/a", summary="a", request_model=LooseBody, response_model=EchoOut)(
            _handler
        )
    with pytest.raises(TypeError, match=r"\['limit'\] accept too much"):
        api.route("GET", "/v1/a", summary="a", query_model=LooseQuery, response_model=EchoOut)(
            _query_handler
        )
    with pytest.raises(TypeError, match=r"\['n'\] accept too much"):
        api.route("GET", "/v1/b/{n}", summary="b", response_model=EchoOut)(_int_path_handler)
    assert loose_fields(Good, params=False) == []
    assert loose_fields(Good, params=True) == ["n"]  # a body type in the query


async def _query_handler(ctx, body, query):
    return None


async def _int_path_handler(ctx, body, n: int):
    return None
