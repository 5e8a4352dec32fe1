"""Reading the metering scripts' replies (compiled: the Meter reads one per round).

A reply arrives as bytes from a client without ``decode_responses`` and as str from one
with it (the Meter's own connection decodes); `text` takes either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from metering.buckets import Debit, Refusal


def text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def debit_takes(reply: Sequence[Any]) -> tuple[list[tuple[str, int]], str]:
    """What a reply of ``debit_pv.lua`` ({granted, reason, now, id_1, n_1, ...}) took, as
    (bucket, PV) in order, and why it took no more ('' if it took all it was asked)."""
    takes: list[tuple[str, int]] = []
    for i in range(3, len(reply), 2):
        takes.append((text(reply[i]), int(reply[i + 1])))
    return takes, text(reply[1])


def parse_debit(reply: Sequence[Any]) -> Debit:
    """Parse the reply of ``debit_pv.lua`` (the Meter reads only `debit_takes`)."""
    takes, reason = debit_takes(reply)
    return Debit(int(reply[0]), Refusal(reason) if reason else None, int(reply[2]), tuple(takes))
