"""Redis with a password and TLS for the tests: a throwaway CA made with trustme, the
servers' and a client's certificates, and the settings that reach such servers."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trustme

from metering.connection import RedisSettings
from pvgate.embedded import RedisClusterServers, RedisServer, Security, Tls

PASSWORD = "data-secret"


@dataclass(frozen=True, slots=True)
class Pki:
    ca: Path
    cert: Path  # the servers', for 127.0.0.1
    key: Path
    client_cert: Path
    client_key: Path

    @classmethod
    def make(cls, where: Path) -> Pki:
        ca = trustme.CA()
        server = ca.issue_cert("127.0.0.1", "localhost")
        client = ca.issue_cert("pvgate-gateway")
        pki = cls(*(where / name for name in ("ca.pem", "s.pem", "s.key", "c.pem", "c.key")))
        ca.cert_pem.write_to_path(str(pki.ca))
        server.cert_chain_pems[0].write_to_path(str(pki.cert))
        server.private_key_pem.write_to_path(str(pki.key))
        client.cert_chain_pems[0].write_to_path(str(pki.client_cert))
        client.private_key_pem.write_to_path(str(pki.client_key))
        return pki

    def security(self, *, client_certs: bool = False) -> Security:
        """TLS only, and a password."""
        tls = Tls(cert=self.cert, key=self.key, ca=self.ca)
        return Security(password=PASSWORD, tls=tls, client_certs=client_certs)


def redis_section(servers: RedisServer | RedisClusterServers, pki: Pki) -> dict[str, Any]:
    """The ``[redis]`` settings (TOML data) that reach these TLS servers."""
    where: dict[str, Any]
    if isinstance(servers, RedisServer):
        where = {"url": f"rediss://127.0.0.1:{servers.port}/0"}
    else:
        where = {"cluster_nodes": [f"{h}:{p}" for h, p in servers.startup_nodes], "tls": True}
    return {**where, "password": PASSWORD, "tls_ca_file": str(pki.ca)}


def settings(servers: RedisServer | RedisClusterServers, pki: Pki, **extra: Any) -> RedisSettings:
    section = redis_section(servers, pki)
    if "cluster_nodes" in section:
        section["cluster_nodes"] = tuple(section["cluster_nodes"])
    return RedisSettings(**section, **extra)
