"""Outbound safety (`billing.outbound`): non-public addresses refused unless allowed, the
connection made to the address that was checked, redirects not followed, replies capped.

"Nothing sent" is checked on real servers: a receiver on 127.0.0.1 (refused unless the allow
list has it) and one on 127.0.0.2 that a redirect points to.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from typing import Any

import pytest

from billing import review
from billing.alerts.kinds import SETTINGS, USAGE
from billing.outbound import (
    MAX_RESPONSE,
    OutboundClient,
    OutboundPolicy,
    OutboundRefused,
    blocked_reason,
)
from metering.sites import Site, SiteStatus
from tests.alerts.conftest import RigFactory
from tests.alerts.rig import alert_settings, webhook
from tests.alerts.servers import Answer, Receiver

OPEN = OutboundPolicy.build(allow_http=True, allow_addresses=())
LOOPBACK_OK = OutboundPolicy.build(allow_http=True, allow_addresses=("127.0.0.1",))


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.1", "private"),
        ("172.16.5.4", "private"),
        ("192.168.1.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "shared (CGNAT)"),
        ("224.0.0.251", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("240.0.0.1", "reserved"),
        ("::1", "loopback"),
        ("::", "unspecified"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("ff02::1", "multicast"),
        ("::ffff:127.0.0.1", "loopback (embedded in"),
        ("::ffff:10.0.0.1", "private (embedded in"),
        ("2002:7f00:1::", "loopback (embedded in"),
        ("64:ff9b::a9fe:a9fe", "link-local (embedded in"),
        ("8.8.8.8", None),
        ("2001:4860:4860::8888", None),
        ("::ffff:8.8.8.8", None),
    ],
)
def test_what_is_not_public(address: str, why: str | None):
    found = blocked_reason(ipaddress.ip_address(address))
    if why is None:
        assert found is None
    else:
        assert found is not None
        assert found.startswith(why), found


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8081/hook",
        "https://10.0.0.1/hook",
        "https://169.254.169.254/latest/meta-data/",
        "https://[::1]/hook",
        "https://[::ffff:127.0.0.1]/hook",
        "https://[::ffff:7f00:1]/hook",
        "ftp://example.com/hook",
        "https://user:pw@example.com/hook",
        "https:///hook",
    ],
)
async def test_refused_before_any_connection(url: str):
    client = OutboundClient(OPEN)
    try:
        with pytest.raises(OutboundRefused):
            await client.request("POST", url, body=b"{}")
    finally:
        await client.close()


def test_https_only_unless_allowed():
    strict = OutboundPolicy.build(allow_http=False, allow_addresses=())
    with pytest.raises(OutboundRefused, match="use https"):
        strict.check_url("http://example.com/hook")
    assert str(strict.check_url("https://example.com/hook")) == "https://example.com/hook"
    assert LOOPBACK_OK.check_url("http://127.0.0.1:9/x").host == "127.0.0.1"


async def test_loopback_without_the_allow_list_is_refused_and_nothing_sent(
    make_rig: RigFactory, receiver: Receiver
):
    # Stored while 127.0.0.1 was allowed; delivered by a billing whose allow list is empty.
    allowed = make_rig()
    await allowed.enterprise()
    await allowed.credit(150)
    await allowed.configure(webhook(receiver.hook), threshold=100)
    await allowed.evaluate(SETTINGS)
    await allowed.spend(51)
    await allowed.evaluate(USAGE)
    strict = make_rig(alert_settings(allow_addresses=()))
    assert await strict.deliver() == 1
    [delivery] = await strict.deliveries()
    assert delivery.status == "failed"
    assert "loopback" in delivery.last_error
    assert receiver.received == []


async def test_a_name_resolving_to_loopback_is_refused(receiver: Receiver):
    client = OutboundClient(OPEN)
    try:
        with pytest.raises(OutboundRefused, match="loopback"):
            await client.request("POST", f"http://localhost:{receiver.port}/hook", body=b"{}")
    finally:
        await client.close()
    assert receiver.received == []


async def test_the_connection_goes_to_the_address_that_was_checked(
    receiver: Receiver, monkeypatch: pytest.MonkeyPatch
):
    """A name answering 127.0.0.1 first and 10.0.0.1 after (DNS rebinding) is looked up
    once, by the check, and the connection goes where the check said."""
    loop = asyncio.get_running_loop()
    answers = iter(["127.0.0.1", "10.0.0.1", "10.0.0.1"])
    lookups: list[str] = []

    async def rebinding(host: str, port: Any, **kwargs: Any) -> list[Any]:
        lookups.append(host)
        address = next(answers)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, int(port)))]

    monkeypatch.setattr(loop, "getaddrinfo", rebinding)
    client = OutboundClient(LOOPBACK_OK)
    try:
        reply = await client.request(
            "POST", f"http://hooks.example:{receiver.port}/hook", body=b"{}"
        )
    finally:
        await client.close()
    assert reply.status == 200
    assert lookups == ["hooks.example"]
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["Host"] == f"hooks.example:{receiver.port}"


async def test_a_redirect_to_a_private_address_is_not_followed(
    make_rig: RigFactory, receiver: Receiver
):
    inside = Receiver(host="127.0.0.2")  # loopback too, and not in the allow list
    await inside.start()
    try:
        receiver.script.append(Answer(302, b"", {"Location": f"{inside.hook}?stolen=1"}))
        rig = make_rig()
        await rig.enterprise()
        saved = await rig.configure(webhook(receiver.hook), threshold=0)
        _event, finished = await rig.alerts.send_test("ent-alerts", saved.channels[0].id)
        assert (finished.outcome.result, finished.outcome.status_code) == ("retry", 302)
        assert len(receiver.received) == 1
        assert inside.received == []
    finally:
        await inside.stop()


async def test_a_reply_is_read_at_most_64_kib(receiver: Receiver):
    receiver.script.append(Answer(200, b"x" * (3 * MAX_RESPONSE)))
    client = OutboundClient(LOOPBACK_OK)
    try:
        reply = await client.request("POST", receiver.hook, body=b"{}")
    finally:
        await client.close()
    assert reply.status == 200
    assert len(reply.body) == MAX_RESPONSE


async def test_the_reviewer_fetches_origins_only_at_allowed_addresses(receiver: Receiver):
    site = Site(
        host="shop.test", enterprise_id="e1", origin=receiver.url, status=SiteStatus.PENDING
    )
    assert await review.fetch_page(site, 2.0) is None  # 127.0.0.1 is not public
    assert receiver.received == []
    assert await review.fetch_page(site, 2.0, allow=("127.0.0.0/8",)) == "ok"
    assert len(receiver.received) == 1


def test_allow_list_entries_are_checked():
    with pytest.raises(ValueError, match="'nope' is not an IP address"):
        OutboundPolicy.build(allow_http=False, allow_addresses=("nope",))
    assert OutboundPolicy.build(allow_http=False, allow_addresses=("10.0.0.0/8",)).allow == (
        ipaddress.ip_network("10.0.0.0/8"),
    )
