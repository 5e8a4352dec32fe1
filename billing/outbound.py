"""Outbound HTTP to addresses that users name — webhooks, WeCom, site origins — safely.

A URL a merchant typed must not turn billing into a proxy into its own network.  So an
`OutboundClient`:

- takes ``https`` only, unless its policy allows ``http``; no credentials in the URL;
- before connecting, resolves the host and refuses it if ANY address is loopback, private
  (RFC 1918, IPv6 unique-local), link-local (169.254.0.0/16, fe80::/10), shared (CGNAT,
  100.64.0.0/10), multicast, unspecified, reserved or otherwise not globally routable —
  IPv4 addresses embedded in IPv6 (``::ffff:127.0.0.1``, 6to4, NAT64, Teredo) judged as
  the IPv4 address they carry — unless the address is in the policy's allow list;
- connects to exactly the addresses it checked: the check is the aiohttp resolver
  (`VettingResolver`), so there is no second lookup for a DNS rebinding to slip into, while
  TLS still verifies the certificate against the host name;
- never follows redirects (a 3xx is an answer like any other, nothing is sent to its
  ``Location``), and reads at most ``max_response`` bytes of a response.

Errors::

    BillingError (billing.errors)
    └── OutboundError               the call did not produce a response
        ├── OutboundRefused         the URL or an address it resolves to is not allowed
        └── OutboundFailed          DNS, connect, TLS, timeout or protocol failure
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from multidict import CIMultiDictProxy
from yarl import URL

from billing.errors import BillingError

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_RESPONSE = 64 * 1024

_CGNAT = ipaddress.IPv4Network("100.64.0.0/10")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


class OutboundError(BillingError):
    code = "outbound_failed"
    http_status = 502


class OutboundRefused(OutboundError):
    """The URL, or an address its host resolves to, is not one billing may call."""

    code = "outbound_refused"
    http_status = 400


class OutboundFailed(OutboundError):
    """The call was allowed but produced no response."""


class _RefusedAddress(OSError):
    """Raised by the resolver, through aiohttp, and turned back into `OutboundRefused`."""

    def __init__(self, refusal: OutboundRefused) -> None:
        super().__init__(refusal.message)
        self.refusal = refusal


def parse_networks(values: Iterable[str]) -> tuple[Network, ...]:
    """Addresses (``127.0.0.1``) and networks (``10.0.0.0/8``); ValueError naming a bad one."""
    found: list[Network] = []
    for value in values:
        try:
            found.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ValueError(f"{value!r} is not an IP address or network") from None
    return tuple(found)


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def blocked_reason(address: Address) -> str | None:
    """Why an address is not a public one billing may call, or None if it is."""
    if isinstance(address, ipaddress.IPv6Address):
        inner = _embedded_ipv4(address)
        if inner is not None:
            why = blocked_reason(inner)
            return None if why is None else f"{why} (embedded in {address})"
    checks = (
        (address.is_unspecified, "unspecified"),
        (address.is_loopback, "loopback"),
        (address.is_link_local, "link-local"),
        (isinstance(address, ipaddress.IPv4Address) and address in _CGNAT, "shared (CGNAT)"),
        (address.is_multicast, "multicast"),
        (address.is_reserved, "reserved"),
        (address.is_private, "private"),
        (not address.is_global, "not globally routable"),
    )
    return next((why for hit, why in checks if hit), None)


@dataclass(frozen=True, slots=True, kw_only=True)
class OutboundPolicy:
    """What an `OutboundClient` may call: schemes and the non-public addresses allowed."""

    allow_http: bool = False
    allow: tuple[Network, ...] = ()

    @classmethod
    def build(cls, *, allow_http: bool, allow_addresses: Iterable[str]) -> OutboundPolicy:
        return cls(allow_http=allow_http, allow=parse_networks(allow_addresses))

    def check_address(self, host: str, address: Address) -> None:
        if any(address in network for network in self.allow):
            return
        why = blocked_reason(address)
        if why is not None:
            raise OutboundRefused(f"{host} resolves to {address}, a {why} address")

    def check_url(self, url: str | URL) -> URL:
        """The parsed URL if its scheme and form are allowed; an IP literal is checked here
        (aiohttp connects to one without asking the resolver)."""
        parsed = url if isinstance(url, URL) else URL(url)
        schemes = ("https", "http") if self.allow_http else ("https",)
        if parsed.scheme not in schemes:
            raise OutboundRefused(
                f"scheme {parsed.scheme or '(none)'!r}: use {' or '.join(schemes)}"
            )
        host = parsed.raw_host
        if not host:
            raise OutboundRefused("the URL has no host")
        if parsed.user is not None or parsed.password is not None:
            raise OutboundRefused("credentials in the URL are not allowed")
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            return parsed
        self.check_address(host, literal)
        return parsed


class VettingResolver(AbstractResolver):
    """Resolves, checks every address against the policy, and hands aiohttp only those."""

    def __init__(self, policy: OutboundPolicy) -> None:
        self._policy = policy

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(
                host, port, type=socket.SOCK_STREAM, family=family, flags=socket.AI_ADDRCONFIG
            )
        except socket.gaierror as exc:
            raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
        results: list[ResolveResult] = []
        for fam, _type, proto, _name, sockaddr in infos:
            address = ipaddress.ip_address(str(sockaddr[0]).split("%", 1)[0])
            try:
                self._policy.check_address(host, address)
            except OutboundRefused as refusal:
                raise _RefusedAddress(refusal) from None
            results.append(
                ResolveResult(
                    hostname=host,
                    host=str(address),
                    port=int(sockaddr[1]),
                    family=fam,
                    proto=proto,
                    flags=socket.AI_NUMERICHOST | socket.AI_NUMERICSERV,
                )
            )
        if not results:
            raise OSError(f"cannot resolve {host}: no address")
        return results

    async def close(self) -> None:
        return None


@dataclass(frozen=True, slots=True)
class OutboundResponse:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes  # at most the client's max_response bytes
    elapsed: float  # seconds

    def text(self) -> str:
        return self.body.decode("utf-8", errors="replace")


@dataclass
class OutboundClient:
    """One session for every outbound call under a policy; close it with `close`."""

    policy: OutboundPolicy
    timeout: float = 10.0
    max_response: int = MAX_RESPONSE
    user_agent: str = "pvgate"
    _session: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                resolver=VettingResolver(self.policy), use_dns_cache=False, limit=0
            )
            self._session = aiohttp.ClientSession(
                connector=connector, trust_env=False, headers={"User-Agent": self.user_agent}
            )
        return self._session

    async def request(
        self,
        method: str,
        url: str | URL,
        *,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        params: Mapping[str, str] | None = None,
        within: float | None = None,
    ) -> OutboundResponse:
        """One call, redirects not followed; `OutboundRefused` / `OutboundFailed` if none."""
        parsed = self.policy.check_url(url)
        if params:
            parsed = parsed.update_query(params)
        started = time.monotonic()
        try:
            async with self._client().request(
                method,
                parsed,
                data=body,
                headers=dict(headers or {}),
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=within or self.timeout),
            ) as resp:
                data = await _read_at_most(resp, self.max_response)
                return OutboundResponse(resp.status, resp.headers, data, time.monotonic() - started)
        except aiohttp.ClientConnectorError as exc:
            if isinstance(exc.os_error, _RefusedAddress):
                raise exc.os_error.refusal from None
            raise OutboundFailed(f"cannot connect to {parsed.host}: {exc.os_error}") from exc
        except TimeoutError as exc:
            raise OutboundFailed(
                f"no answer from {parsed.host} within {within or self.timeout:g} s"
            ) from exc
        except (aiohttp.ClientError, ValueError) as exc:
            raise OutboundFailed(f"{parsed.host}: {type(exc).__name__}: {exc}") from exc

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def _read_at_most(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await resp.content.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
