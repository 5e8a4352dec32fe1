"""A site definition is servable or refused at once, naming the part at fault (docs/rules.md §5)."""

from __future__ import annotations

import pytest

from metering.errors import InvalidSite
from metering.sites import Site


def site(**fields: object) -> Site:
    given = {"host": "shop.test", "enterprise_id": "ent1", "origin": "http://o.test", **fields}
    return Site(**given)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "origin",
    [
        "http://127.0.0.1:9",
        "https://origin.test/landing/",
        "http://origin.test:1",
        "http://origin.test:65535/x?y=1",
        "http://[::1]:8080/",
    ],
)
def test_servable_origins(origin: str):
    assert site(origin=origin).origin == origin


@pytest.mark.parametrize(
    ("origin", "why"),
    [
        ("http://127.0.0.1:99999", "port"),
        ("http://127.0.0.1:65536", "port"),
        ("http://127.0.0.1:0", "port"),
        ("http://127.0.0.1:", "port"),
        ("http://127.0.0.1:-1", "port"),
        ("http://127.0.0.1:8o", "port"),
        ("http://user@127.0.0.1", "credentials"),
        ("http://user:pw@127.0.0.1:9", "credentials"),
        ("http://:pw@127.0.0.1:9", "credentials"),
        ("ftp://127.0.0.1/", "http(s)"),
        ("file:///etc/passwd", "http(s)"),
        ("http://", "http(s)"),
        ("127.0.0.1:9", "http(s)"),
        ("http://[::1", "IPv6"),
        ("http://exa\nmple.test/", "control"),  # urlsplit would drop the line break
        ("http://example.test/\t", "control"),
        ("http://example.test/a b", "whitespace"),
        ("http://example.test/\x00", "control"),
    ],
)
def test_unservable_origins_are_refused_naming_origin(origin: str, why: str):
    with pytest.raises(InvalidSite) as info:
        site(origin=origin)
    assert info.value.field == "origin"
    assert why in info.value.problem
    assert isinstance(info.value, ValueError)  # config files report it as any bad value


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"host": "Shop.test"}, "host"),
        ({"host": "shop.test/x"}, "host"),
        ({"path_prefix": "/a/"}, "path_prefix"),
        ({"include": ("a/*",)}, "include"),
        ({"exclude": ("/ok", "bad")}, "exclude"),
    ],
)
def test_other_parts_are_named_too(fields: dict[str, object], field: str):
    with pytest.raises(InvalidSite) as info:
        site(**fields)
    assert info.value.field == field
