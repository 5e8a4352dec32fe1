"""``GET /openapi.json``: the OpenAPI 3.1 document of every registered route.

Built once from the route declarations and the pydantic models' JSON Schemas (JSON Schema
2020-12 is OpenAPI 3.1's dialect, so they are used as they are); nothing is written by hand
that a declaration already says.
"""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from billing.api.auth import KINDS
from billing.api.framework import Api, Route
from billing.api.idempotency import KEY_HEADER

_REF = "#/components/schemas/{model}"
_Refs = dict[tuple[type[BaseModel], JsonSchemaMode], dict[str, Any]]
_PATH_PARAM = re.compile(r"\{(\w+):[^}]*\}")
_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "additionalProperties": False,
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "description": "stable, machine-readable"},
                "message": {"type": "string", "description": "for humans"},
            },
        }
    },
}
_ERRORS = {
    "400": "Invalid request: malformed JSON, a missing, unknown or ill-typed field or parameter",
    "401": "Missing, invalid or revoked bearer token",
    "403": "This token's role may not use this route",
    "404": "Not found, or outside this token's scope",
    "409": "Conflict with the current state, or an Idempotency-Key reused or in progress",
    "413": "Request body too large",
    "414": "Request line (path and query) too long",
    "422": "Refused by a business rule",
    "431": "A request header line too large",
}


def build_openapi(
    api: Api, *, title: str = "pvgate admin API", version: str = "1"
) -> dict[str, Any]:
    """The OpenAPI 3.1.0 document describing ``api``'s routes."""
    refs, schemas = _schemas(api.routes)
    paths: dict[str, dict[str, Any]] = {}
    for route in api.routes:
        operation = _operation(route, refs, schemas)
        paths.setdefault(_openapi_path(route.path), {})[route.method.lower()] = operation
    for route in api.routes:  # parameters were inlined; their models are not components
        for model in (route.path_model, route.query_model):
            if model is not None:
                schemas.pop(_ref_name(refs[(model, "validation")]), None)
    error_ref = {"content": {"application/json": {"schema": {"$ref": _REF.format(model="Error")}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": title, "version": version},
        "paths": paths,
        "components": {
            "schemas": {**schemas, "Error": _ERROR_SCHEMA},
            "responses": {
                f"Error{status}": {"description": text, **error_ref}
                for status, text in _ERRORS.items()
            },
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"bearerAuth": []}],
    }


def _schemas(routes: tuple[Route, ...]) -> tuple[_Refs, dict[str, Any]]:
    """One pass over every model, so shared and nested models get one name each."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for route in routes:
        for model, mode in (
            (route.request_model, "validation"),
            (route.query_model, "validation"),
            (route.path_model, "validation"),
            (route.response_model, "serialization"),
        ):
            if model is not None and (model, mode) not in wanted:
                wanted.append((model, mode))  # type: ignore[arg-type]
    refs, definitions = models_json_schema(wanted, ref_template=_REF)
    if "Error" in definitions.get("$defs", {}):
        raise ValueError("a model named Error would hide the error schema: rename it")
    return {key: ref for key, ref in refs.items() if key in wanted}, dict(
        definitions.get("$defs", {})
    )


def _ref_name(ref: dict[str, Any]) -> str:
    return str(ref["$ref"]).rsplit("/", 1)[-1]


def _openapi_path(path: str) -> str:
    """aiohttp's ``{name:regex}`` becomes OpenAPI's ``{name}``."""
    return _PATH_PARAM.sub(lambda match: "{" + match.group(1) + "}", path)


def _operation(
    route: Route,
    refs: _Refs,
    schemas: dict[str, Any],
) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": route.name,
        "summary": route.summary,
        "tags": [_tag(route.path)],
        "parameters": _parameters(route, refs, schemas),
        "responses": _responses(route, refs),
        "x-roles": [kind for kind in KINDS if kind in route.roles],
    }
    if route.description:
        operation["description"] = route.description
    if route.audit_action:
        operation["x-audit-action"] = route.audit_action
    if route.request_model is not None:
        operation["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": refs[(route.request_model, "validation")]}},
        }
    return operation


def _tag(path: str) -> str:
    parts = [p for p in path.split("/") if p and not p.startswith("{")]
    return parts[1] if len(parts) > 1 and parts[0] == "v1" else (parts[0] if parts else "root")


def _parameters(
    route: Route,
    refs: _Refs,
    schemas: dict[str, Any],
) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for model, where in ((route.path_model, "path"), (route.query_model, "query")):
        if model is None:
            continue
        schema = schemas[_ref_name(refs[(model, "validation")])]
        required = set(schema.get("required", []))
        for name, prop in schema.get("properties", {}).items():
            param: dict[str, Any] = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
                "schema": {k: v for k, v in prop.items() if k != "description"},
            }
            if "description" in prop:
                param["description"] = prop["description"]
            params.append(param)
    if route.method == "POST":
        params.append(
            {
                "name": KEY_HEADER,
                "in": "header",
                "required": False,
                "description": "Same key and same request: the first response is replayed",
                "schema": {"type": "string", "minLength": 1, "maxLength": 255},
            }
        )
    return params


def _responses(route: Route, refs: _Refs) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    if route.response_model is None:
        responses["204" if route.status == 200 else str(route.status)] = {"description": "Done"}
    else:
        responses[str(route.status)] = {
            "description": route.summary,
            "content": {
                "application/json": {"schema": refs[(route.response_model, "serialization")]}
            },
        }
    for status in _ERRORS:
        responses[status] = {"$ref": f"#/components/responses/Error{status}"}
    return responses
