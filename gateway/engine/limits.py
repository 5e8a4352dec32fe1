"""The engine's limits, copied once from the settings into compiled attributes.

`LimitsSection` (gateway/settings.py) is the settings' frozen dataclass, interpreted; the
engine reads a limit several times per request (per header line, even), so it reads
these instead: a compiled attribute costs a load, an interpreted one a lookup by name
(docs/architecture.md §4 "Compiled").
"""

from __future__ import annotations

from gateway.settings import LimitsSection


class Limits:
    __slots__ = (
        "body_idle_timeout_s",
        "body_timeout_s",
        "header_timeout_s",
        "max_body_bytes",
        "max_head_bytes",
        "max_header_line",
        "max_headers",
        "request_buffer_bytes",
        "send_timeout_s",
        "shutdown_grace_s",
    )

    def __init__(self, section: LimitsSection) -> None:
        self.max_header_line: int = section.max_header_line
        self.max_headers: int = section.max_headers
        self.max_head_bytes: int = section.max_head_bytes
        self.max_body_bytes: int = section.max_body_bytes
        self.request_buffer_bytes: int = section.request_buffer_bytes
        self.header_timeout_s: float = section.header_timeout_s
        self.body_idle_timeout_s: float = section.body_idle_timeout_s
        self.body_timeout_s: float = section.body_timeout_s
        self.send_timeout_s: float = section.send_timeout_s
        self.shutdown_grace_s: float = section.shutdown_grace_s
